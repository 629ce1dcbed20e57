//! Counters of what the VM does, for the `/metrics` endpoint and `berth status --json`:
//! vCPU exits by reason, disk operations (count, bytes, latency), NIC packets and bytes.
//!
//! They are prometheus-client metrics registered once per process in a [`Registry`]; the
//! devices get clones of the individual counters (shared atomics), so counting costs one atomic
//! add and nothing locks on the I/O path except a histogram's observation. Counters survive
//! guest reboots (the devices are rebuilt, the counters are not).
//!
//! Disks and NICs are counted by wrapping their backends ([`CountingDisk`], [`CountingNet`]):
//! the device models stay untouched, and what is counted is what reaches the host (bytes read
//! from and written to the image, frames to and from the tap).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use vm_memory::VolatileSlice;

use crate::block::iov::{self, PartialIo};
use crate::block::BlockBackend;
use crate::linkstats::{LinkCounters, LinkStats};
use crate::virtio::net::tap::NetBackend;

/// Labels: (name, value) pairs.
pub type Labels = Vec<(String, String)>;

type Counters = Family<Labels, Counter>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Disk operation latency buckets, in seconds: 16 µs to ~4 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(16e-6, 2.0, 19))
}

/// The reasons a vCPU leaves KVM_RUN that berth counts.
pub const EXIT_REASONS: [&str; 7] = [
    "io_in",
    "io_out",
    "mmio_read",
    "mmio_write",
    "interrupted",
    "system_event",
    "other",
];

/// Index into [`EXIT_REASONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Port read.
    IoIn = 0,
    /// Port write.
    IoOut = 1,
    /// MMIO read.
    MmioRead = 2,
    /// MMIO write.
    MmioWrite = 3,
    /// A signal kicked the vCPU out (KVM_EXIT_INTR or EINTR).
    Interrupted = 4,
    /// Shutdown, reset, crash.
    SystemEvent = 5,
    /// Anything else.
    Other = 6,
}

/// One vCPU's exit counters, by [`ExitKind`].
#[derive(Clone, Debug, Default)]
pub struct ExitCounters(Vec<Counter>);

impl ExitCounters {
    /// Counts one exit.
    pub fn count(&self, kind: ExitKind) {
        if let Some(c) = self.0.get(kind as usize) {
            c.inc();
        }
    }
}

/// What a disk counts: per operation, how many, how many bytes, how long.
#[derive(Clone, Debug)]
pub struct DiskCounters {
    ops: [Counter; 4],
    bytes: [Counter; 2],
    errors: Counter,
    latency: [Histogram; 3],
}

const READ: usize = 0;
const WRITE: usize = 1;
const FLUSH: usize = 2;
const DISCARD: usize = 3;
const OPS: [&str; 4] = ["read", "write", "flush", "discard"];

/// What a NIC counts.
#[derive(Clone, Debug)]
pub struct NetCounters {
    rx_packets: Counter,
    rx_bytes: Counter,
    tx_packets: Counter,
    tx_bytes: Counter,
    tx_drops: Counter,
    rx_drops: Counter,
}

/// A NIC counted by the kernel: its tap's counters, and their values when berth took the tap.
struct KernelNic {
    name: String,
    m: NetCounters,
    link: LinkCounters,
    base: LinkStats,
}

/// The VM's counters, registered in a registry.
pub struct VmMetrics {
    exits: Counters,
    disk_ops: Counters,
    disk_bytes: Counters,
    disk_errors: Counters,
    disk_latency: Histograms,
    net_packets: Counters,
    net_bytes: Counters,
    net_drops: Counters,
    kernel_nics: Mutex<Vec<KernelNic>>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl VmMetrics {
    /// Registers the counters (names prefixed `berth_`) in `registry`.
    pub fn register(registry: &mut Registry) -> VmMetrics {
        let m = VmMetrics {
            exits: Counters::default(),
            disk_ops: Counters::default(),
            disk_bytes: Counters::default(),
            disk_errors: Counters::default(),
            disk_latency: Histograms::new_with_constructor(latency_histogram),
            net_packets: Counters::default(),
            net_bytes: Counters::default(),
            net_drops: Counters::default(),
            kernel_nics: Mutex::new(Vec::new()),
        };
        registry.register(
            "berth_vcpu_exits",
            "vCPU exits from KVM_RUN by vCPU and reason",
            m.exits.clone(),
        );
        registry.register(
            "berth_disk_operations",
            "Disk operations that reached the image, by disk and operation",
            m.disk_ops.clone(),
        );
        registry.register(
            "berth_disk_bytes",
            "Bytes read from and written to the disk image, by disk and operation",
            m.disk_bytes.clone(),
        );
        registry.register(
            "berth_disk_errors",
            "Disk operations that failed, by disk",
            m.disk_errors.clone(),
        );
        registry.register(
            "berth_disk_operation_seconds",
            "Latency of disk operations on the image, by disk and operation",
            m.disk_latency.clone(),
        );
        registry.register(
            "berth_net_packets",
            "Frames between the guest and the tap, by NIC and direction (rx: to the guest)",
            m.net_packets.clone(),
        );
        registry.register(
            "berth_net_bytes",
            "Bytes of Ethernet frames between the guest and the tap, by NIC and direction",
            m.net_bytes.clone(),
        );
        registry.register(
            "berth_net_drops",
            "Frames dropped between the guest and the tap, by NIC and direction (tx: sent by \
             the guest, rx: to the guest, which did not take them in time)",
            m.net_drops.clone(),
        );
        m
    }

    /// Exit counters of vCPU `id`.
    pub fn vcpu(&self, id: u8) -> ExitCounters {
        let id = id.to_string();
        ExitCounters(
            EXIT_REASONS
                .iter()
                .map(|r| {
                    self.exits
                        .get_or_create_owned(&labels(&[("vcpu", &id), ("reason", r)]))
                })
                .collect(),
        )
    }

    /// Counters of the disk called `disk` (e.g. vda).
    pub fn disk(&self, disk: &str) -> DiskCounters {
        let op =
            |f: &Counters, o: &str| f.get_or_create_owned(&labels(&[("disk", disk), ("op", o)]));
        let lat = |o: &str| {
            self.disk_latency
                .get_or_create_owned(&labels(&[("disk", disk), ("op", o)]))
        };
        DiskCounters {
            ops: OPS.map(|o| op(&self.disk_ops, o)),
            bytes: [op(&self.disk_bytes, "read"), op(&self.disk_bytes, "write")],
            errors: self
                .disk_errors
                .get_or_create_owned(&labels(&[("disk", disk)])),
            latency: [lat("read"), lat("write"), lat("flush")],
        }
    }

    /// Counters of the NIC called `nic` (e.g. eth0).
    pub fn nic(&self, nic: &str) -> NetCounters {
        let dir = |f: &Counters, d: &str| {
            f.get_or_create_owned(&labels(&[("nic", nic), ("direction", d)]))
        };
        NetCounters {
            rx_packets: dir(&self.net_packets, "rx"),
            rx_bytes: dir(&self.net_bytes, "rx"),
            tx_packets: dir(&self.net_packets, "tx"),
            tx_bytes: dir(&self.net_bytes, "tx"),
            tx_drops: dir(&self.net_drops, "tx"),
            rx_drops: dir(&self.net_drops, "rx"),
        }
    }

    /// Counts the NIC `nic` from the kernel's counters of its tap (`link`) from now on, instead
    /// of in berth's datapath: the only way that sees the frames vhost-net moves. The counters
    /// start from the tap's values now (a tap may have carried traffic before).
    pub fn count_nic_in_kernel(&self, nic: &str, mut link: LinkCounters) -> io::Result<()> {
        let base = link.read()?;
        self.kernel_nics
            .lock()
            .expect("metrics lock poisoned")
            .push(KernelNic {
                name: nic.to_owned(),
                m: self.nic(nic),
                link,
                base,
            });
        Ok(())
    }

    /// Whether the kernel counts the NIC `nic` (then its backend must not count it again).
    pub fn nic_in_kernel(&self, nic: &str) -> bool {
        self.kernel_nics
            .lock()
            .expect("metrics lock poisoned")
            .iter()
            .any(|k| k.name == nic)
    }

    /// Brings the kernel-counted NICs' counters up to date (call before exporting them). A tap
    /// that cannot be read leaves its counters as they were.
    pub fn refresh(&self) {
        for k in self
            .kernel_nics
            .lock()
            .expect("metrics lock poisoned")
            .iter_mut()
        {
            let Ok(now) = k.link.read() else { continue };
            let b = &k.base;
            // The tap receives what the guest sends, and sends what the guest receives.
            catch_up(&k.m.tx_packets, now.rx_packets.saturating_sub(b.rx_packets));
            catch_up(&k.m.tx_bytes, now.rx_bytes.saturating_sub(b.rx_bytes));
            catch_up(&k.m.tx_drops, now.rx_dropped.saturating_sub(b.rx_dropped));
            catch_up(&k.m.rx_packets, now.tx_packets.saturating_sub(b.tx_packets));
            catch_up(&k.m.rx_bytes, now.tx_bytes.saturating_sub(b.tx_bytes));
            catch_up(&k.m.rx_drops, now.tx_dropped.saturating_sub(b.tx_dropped));
        }
    }
}

/// Raises a counter to `value` (counters only go up; the kernel's are monotonic).
fn catch_up(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

/// A disk backend that counts what passes through it.
pub struct CountingDisk {
    inner: Box<dyn BlockBackend>,
    m: DiskCounters,
}

impl CountingDisk {
    /// Counts the operations on `inner` in `m`.
    pub fn new(inner: Box<dyn BlockBackend>, m: DiskCounters) -> Self {
        CountingDisk { inner, m }
    }

    fn timed<T, E>(
        &self,
        op: usize,
        bytes: u64,
        f: impl FnOnce(&dyn BlockBackend) -> Result<T, E>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let r = f(self.inner.as_ref());
        match &r {
            Ok(_) => {
                self.m.ops[op].inc();
                if let Some(b) = self.m.bytes.get(op) {
                    b.inc_by(bytes);
                }
                if let Some(h) = self.m.latency.get(op) {
                    h.observe(start.elapsed().as_secs_f64());
                }
            }
            Err(_) => {
                self.m.errors.inc();
            }
        }
        r
    }
}

impl BlockBackend for CountingDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = buf.len() as u64;
        self.timed(READ, n, |d| d.read_at(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.timed(WRITE, buf.len() as u64, |d| d.write_at(buf, offset))
    }
    // The vectored calls go to the inner backend's (zero-copy for raw disks); a failed one
    // counts as an error, like a failed read_at/write_at.
    fn read_vectored_at(
        &self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<(), PartialIo> {
        let n = iov::total_len(bufs).map_err(PartialIo::none)? as u64;
        self.timed(READ, n, |d| d.read_vectored_at(bufs, offset, bounce))
    }
    fn write_vectored_at(
        &self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<(), PartialIo> {
        let n = iov::total_len(bufs).map_err(PartialIo::none)? as u64;
        self.timed(WRITE, n, |d| d.write_vectored_at(bufs, offset, bounce))
    }
    fn flush(&self) -> io::Result<()> {
        self.timed(FLUSH, 0, |d| d.flush())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.timed(DISCARD, 0, |d| d.discard(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        self.timed(DISCARD, 0, |d| d.write_zeroes(offset, len, may_unmap))
    }
    fn take_notes(&mut self) -> Vec<String> {
        self.inner.take_notes()
    }
}

/// A NIC backend that counts the frames passing through it.
pub struct CountingNet {
    inner: Box<dyn NetBackend>,
    m: NetCounters,
}

impl CountingNet {
    /// Counts the frames of `inner` in `m`.
    pub fn new(inner: Box<dyn NetBackend>, m: NetCounters) -> Self {
        CountingNet { inner, m }
    }

    fn sent(&self, r: &io::Result<()>, bytes: u64) {
        match r {
            Ok(()) => {
                self.m.tx_packets.inc();
                self.m.tx_bytes.inc_by(bytes);
            }
            Err(_) => {
                self.m.tx_drops.inc();
            }
        }
    }
}

impl AsRawFd for CountingNet {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl NetBackend for CountingNet {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.inner.read_frame(buf);
        if let Ok(n) = r {
            self.m.rx_packets.inc();
            self.m.rx_bytes.inc_by(n as u64);
        }
        r
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let r = self.inner.write_frame(frame);
        self.sent(&r, frame.len() as u64);
        r
    }
    fn write_frame_gather(&mut self, parts: &[VolatileSlice<'_>]) -> io::Result<()> {
        let r = self.inner.write_frame_gather(parts);
        self.sent(&r, parts.iter().map(|p| p.len() as u64).sum());
        r
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.inner.set_offload(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    struct Mem(std::sync::Mutex<Vec<u8>>, bool);
    impl BlockBackend for Mem {
        fn size(&self) -> u64 {
            self.0.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], o: u64) -> io::Result<()> {
            if self.1 {
                return Err(io::Error::other("fail"));
            }
            buf.copy_from_slice(&self.0.lock().unwrap()[o as usize..o as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], o: u64) -> io::Result<()> {
            self.0.lock().unwrap()[o as usize..o as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
            Ok(())
        }
    }

    fn text(r: &Registry) -> String {
        let mut s = String::new();
        encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn disk_operations_are_counted_with_their_bytes() {
        let mut reg = Registry::default();
        let m = VmMetrics::register(&mut reg);
        let d = CountingDisk::new(
            Box::new(Mem(std::sync::Mutex::new(vec![0; 8192]), false)),
            m.disk("vda"),
        );
        d.write_at(&[1; 4096], 0).unwrap();
        d.write_at(&[1; 512], 4096).unwrap();
        let mut b = [0u8; 1000];
        d.read_at(&mut b, 0).unwrap();
        d.flush().unwrap();
        let t = text(&reg);
        for line in [
            r#"berth_disk_operations_total{disk="vda",op="write"} 2"#,
            r#"berth_disk_operations_total{disk="vda",op="read"} 1"#,
            r#"berth_disk_operations_total{disk="vda",op="flush"} 1"#,
            r#"berth_disk_bytes_total{disk="vda",op="write"} 4608"#,
            r#"berth_disk_bytes_total{disk="vda",op="read"} 1000"#,
            r#"berth_disk_operation_seconds_count{disk="vda",op="write"} 2"#,
        ] {
            assert!(t.contains(line), "{line} missing in\n{t}");
        }
        // A failing backend counts an error, not an operation.
        let f = CountingDisk::new(
            Box::new(Mem(std::sync::Mutex::new(vec![0; 512]), true)),
            m.disk("vdb"),
        );
        assert!(f.read_at(&mut b[..10], 0).is_err());
        let t = text(&reg);
        assert!(
            t.contains(r#"berth_disk_errors_total{disk="vdb"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"berth_disk_operations_total{disk="vdb",op="read"} 0"#),
            "{t}"
        );
    }

    /// The vectored calls reach the inner backend's own (a raw disk's `preadv`/`pwritev`, no
    /// bounce buffer) and are counted like read_at/write_at.
    #[test]
    fn vectored_disk_io_is_forwarded_and_counted() {
        use std::io::Write as _;
        use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

        let mut reg = Registry::default();
        let m = VmMetrics::register(&mut reg);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[7u8; 8192]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(file.path())
            .unwrap();
        let raw = crate::block::raw::RawDisk::from_file(f, false).unwrap();
        let d = CountingDisk::new(Box::new(raw), m.disk("vda"));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let bufs = [
            mem.get_slice(GuestAddress(0x100), 512).unwrap(),
            mem.get_slice(GuestAddress(0x2000), 1024).unwrap(),
        ];
        let mut bounce = Vec::new();
        d.read_vectored_at(&bufs, 4096, &mut bounce).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x23ff)).unwrap(), 7);
        mem.write_slice(&[9u8; 0x4000], GuestAddress(0)).unwrap();
        d.write_vectored_at(&bufs, 0, &mut bounce).unwrap();
        assert!(d.read_vectored_at(&bufs, 8192 - 512, &mut bounce).is_err());
        assert_eq!(bounce.capacity(), 0);
        let mut back = [0u8; 1537];
        d.read_at(&mut back, 0).unwrap();
        assert_eq!(back[..1536], [9u8; 1536]);
        assert_eq!(back[1536], 7);
        let t = text(&reg);
        for line in [
            r#"berth_disk_operations_total{disk="vda",op="write"} 1"#,
            r#"berth_disk_operations_total{disk="vda",op="read"} 2"#,
            r#"berth_disk_bytes_total{disk="vda",op="write"} 1536"#,
            r#"berth_disk_bytes_total{disk="vda",op="read"} 3073"#,
            r#"berth_disk_errors_total{disk="vda"} 1"#,
        ] {
            assert!(t.contains(line), "{line} missing in\n{t}");
        }
    }

    /// A tap that delivers `rx` frames, then WouldBlock; refuses writes when `full`.
    struct FakeTap {
        rx: Vec<Vec<u8>>,
        full: bool,
    }
    impl AsRawFd for FakeTap {
        fn as_raw_fd(&self) -> RawFd {
            -1
        }
    }
    impl NetBackend for FakeTap {
        fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let f = self.rx.pop().ok_or(io::ErrorKind::WouldBlock)?;
            buf[..f.len()].copy_from_slice(&f);
            Ok(f.len())
        }
        fn write_frame(&mut self, _: &[u8]) -> io::Result<()> {
            if self.full {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        }
        fn set_offload(&mut self, _: u32) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn nic_frames_bytes_and_drops_are_counted() {
        let mut reg = Registry::default();
        let m = VmMetrics::register(&mut reg);
        let tap = FakeTap {
            rx: vec![vec![0; 100], vec![0; 1514]],
            full: false,
        };
        let mut n = CountingNet::new(Box::new(tap), m.nic("eth0"));
        let mut buf = [0u8; 2048];
        while n.read_frame(&mut buf).is_ok() {}
        n.write_frame(&[0; 60]).unwrap();
        let mut dropping = CountingNet::new(
            Box::new(FakeTap {
                rx: vec![],
                full: true,
            }),
            m.nic("eth0"),
        );
        assert!(dropping.write_frame(&[0; 60]).is_err());
        let t = text(&reg);
        for line in [
            r#"berth_net_packets_total{nic="eth0",direction="rx"} 2"#,
            r#"berth_net_bytes_total{nic="eth0",direction="rx"} 1614"#,
            r#"berth_net_packets_total{nic="eth0",direction="tx"} 1"#,
            r#"berth_net_bytes_total{nic="eth0",direction="tx"} 60"#,
            r#"berth_net_drops_total{nic="eth0",direction="tx"} 1"#,
        ] {
            assert!(t.contains(line), "{line} missing in\n{t}");
        }
    }

    /// A NIC counted from its tap's kernel counters: what is written to the tap's fd (what the
    /// guest sends, whichever datapath writes it) is tx, what the kernel hands the tap is rx,
    /// and frames the reader did not take in time are rx drops. Needs root (a tap in a network
    /// namespace of this test thread); elsewhere it says so and returns.
    #[test]
    fn nic_counted_from_the_taps_kernel_counters() {
        use crate::linkstats::LinkCounters;
        use crate::virtio::net::vhost_tests::{eth_frame, sock_send, tap_and_socket};
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: no /dev/net/tun");
            return;
        }
        // SAFETY: unshare affects this test thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!("skipped: cannot create a network namespace (not root?)");
            return;
        }
        let (tun, sock) = tap_and_socket();
        let mut reg = Registry::default();
        let m = VmMetrics::register(&mut reg);
        assert!(!m.nic_in_kernel("eth0"));
        m.count_nic_in_kernel("eth0", LinkCounters::for_tap(&tun).unwrap())
            .unwrap();
        assert!(m.nic_in_kernel("eth0"));
        // The guest sends 3 frames (virtio-net header first, as both datapaths write them;
        // Tap::new sets the tap's header size to 12 bytes as berth does).
        let mut tap = crate::virtio::net::tap::Tap::new(tun.try_clone().unwrap()).unwrap();
        let frame = eth_frame(1);
        let mut with_hdr = vec![0u8; 12];
        with_hdr.extend_from_slice(&frame);
        for _ in 0..3 {
            // SAFETY: the buffer is valid for the call.
            let n =
                unsafe { libc::write(tun.as_raw_fd(), with_hdr.as_ptr().cast(), with_hdr.len()) };
            assert_eq!(n as usize, with_hdr.len());
        }
        // The host sends 1100 frames the guest does not read in time: the tap queues 1000 (its
        // txqueuelen) and drops the rest; then the guest takes the 1000 (the kernel counts a
        // frame sent when its reader takes it).
        for _ in 0..1100 {
            sock_send(&sock, &frame);
        }
        let mut buf = [0u8; 2048];
        let mut taken = 0;
        while tap.read_frame(&mut buf).is_ok() {
            taken += 1;
        }
        assert!(taken >= 1000, "{taken} frames read");
        m.refresh();
        let t = text(&reg);
        let value = |name: &str| -> u64 {
            t.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in\n{t}"))
        };
        let f = frame.len() as u64;
        assert_eq!(
            value(r#"berth_net_packets_total{nic="eth0",direction="tx"}"#),
            3
        );
        assert_eq!(
            value(r#"berth_net_bytes_total{nic="eth0",direction="tx"}"#),
            3 * f
        );
        // The kernel may add frames of its own (IPv6 neighbour discovery on a link that is up).
        let rx = value(r#"berth_net_packets_total{nic="eth0",direction="rx"}"#);
        let rx_drops = value(r#"berth_net_drops_total{nic="eth0",direction="rx"}"#);
        assert!(rx + rx_drops >= 1100 && rx + rx_drops < 1120, "{t}");
        assert_eq!(rx, taken, "{t}");
        assert!(value(r#"berth_net_bytes_total{nic="eth0",direction="rx"}"#) >= rx * f - 20 * f);
        assert_eq!(
            value(r#"berth_net_drops_total{nic="eth0",direction="tx"}"#),
            0
        );
    }

    #[test]
    fn vcpu_exits_are_counted_by_reason() {
        let mut reg = Registry::default();
        let m = VmMetrics::register(&mut reg);
        let e = m.vcpu(1);
        e.count(ExitKind::IoOut);
        e.count(ExitKind::IoOut);
        e.count(ExitKind::MmioWrite);
        // The same vCPU's counters after a reboot are the same counters.
        m.vcpu(1).count(ExitKind::IoOut);
        let t = text(&reg);
        assert!(
            t.contains(r#"berth_vcpu_exits_total{vcpu="1",reason="io_out"} 3"#),
            "{t}"
        );
        assert!(t.contains(r#"berth_vcpu_exits_total{vcpu="1",reason="mmio_write"} 1"#));
    }
}
