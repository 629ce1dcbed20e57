//! Fuzzing harnesses for everything a guest controls: virtio-blk requests, the virtio-net
//! datapath, and PCI configuration / BAR accesses to a virtio-pci function.
//!
//! Each harness takes arbitrary bytes, builds the device state they describe, drives the real
//! device code, and panics when the code panics or breaks an invariant. The same functions run
//! under libFuzzer (`vmm/fuzz`, nightly) and on stable in `vmm/tests/fuzz_corpus.rs`, which
//! replays the committed corpus and a few thousand pseudo-random inputs. Input formats are
//! described on each harness and in `docs/fuzzing.md`; the [`seeds`] module builds
//! well-formed inputs.
//!
//! Not part of berth's API: it exists for the fuzz crate and the tests.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout;
use crate::block::BlockBackend;
use crate::bus::Bus;
use crate::irq::{MsiMessage, MsiRouter};
use crate::pci::access::{PciConfigIo, PciConfigMmio, CONFIG_IO_BASE, CONFIG_IO_LEN};
use crate::pci::config::{self as pcicfg, CONFIG_SIZE};
use crate::pci::{PciBus, PciDevice};
use crate::virtio::block::process_queue;
use crate::virtio::block::request::{Disk, S_IOERR, S_OK, S_UNSUPP};
use crate::virtio::net::datapath::{self, Delivery, MAX_FRAME};
use crate::virtio::net::tap::{NetBackend, VNET_HDR_LEN};
use crate::virtio::pci::{IoEvents, VirtioPci, BAR_SIZE};
use crate::virtio::{
    features, read_config_bytes, status, ActivateContext, ActivateError, VirtioDevice,
    VirtioInterrupt,
};

/// Guest memory the queue harnesses use: two adjacent regions, so buffers may straddle them.
pub const MEM_SIZE: u64 = 0x1_0000;
/// Largest queue the harnesses build (what berth's devices offer).
pub const MAX_QUEUE: u16 = 256;

/// Descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Reads fuzz input front to back; exhausted input reads as zeroes.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.0.len());
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        b
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Where a split virtqueue lives in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue size (a power of two up to [`MAX_QUEUE`]).
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

impl QueueLayout {
    /// The default layout: the descriptor table at 0 and the rings right after it.
    pub fn packed(size: u16) -> Self {
        let s = u64::from(size);
        let avail = 16 * s;
        let used = (avail + 6 + 2 * s).next_multiple_of(4);
        QueueLayout {
            size,
            desc: 0,
            avail,
            used,
        }
    }

    /// First byte after the used ring, rounded up to 16: where buffers can start.
    pub fn end(&self) -> u64 {
        (self.used + 6 + 8 * u64::from(self.size)).next_multiple_of(16)
    }

    /// (address, length) of the descriptor table, available ring and used ring.
    fn regions(&self) -> [(u64, u64); 3] {
        let s = u64::from(self.size);
        [
            (self.desc, 16 * s),
            (self.avail, 6 + 2 * s),
            (self.used, 6 + 8 * s),
        ]
    }
}

/// The queue header shared by the blk and net inputs.
struct QueueSpec {
    layout: QueueLayout,
    event_idx: bool,
    start: u16,
}

/// Flag bits of byte 0 of a queue harness input.
pub mod queue_flags {
    /// log2 of the queue size (capped at 8).
    pub const SIZE_LOG2: u8 = 0x0f;
    /// Negotiate EVENT_IDX.
    pub const EVENT_IDX: u8 = 0x10;
    /// The input carries its own ring addresses instead of [`super::QueueLayout::packed`].
    pub const CUSTOM_LAYOUT: u8 = 0x20;
}

fn queue_size(flags: u8) -> u16 {
    1 << (flags & queue_flags::SIZE_LOG2).min(8)
}

fn parse_layout(flags: u8, input: &mut Input<'_>) -> QueueLayout {
    let size = queue_size(flags);
    if flags & queue_flags::CUSTOM_LAYOUT != 0 {
        QueueLayout {
            size,
            desc: u64::from(input.u16()),
            avail: u64::from(input.u16()),
            used: u64::from(input.u16()),
        }
    } else {
        QueueLayout::packed(size)
    }
}

fn guest_memory(image: &[u8]) -> GuestMemoryMmap {
    let half = (MEM_SIZE / 2) as usize;
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), half), (GuestAddress(half as u64), half)])
            .expect("guest memory");
    let n = image.len().min(MEM_SIZE as usize);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("image fits in guest memory");
    mem
}

/// A ready queue as the transport would hand it to a device, or None if the transport would
/// refuse it (misaligned or outside memory).
fn build_queue(mem: &GuestMemoryMmap, spec: &mut QueueSpec) -> Option<Queue> {
    let mut q = Queue::new(MAX_QUEUE).ok()?;
    q.try_set_size(spec.layout.size).ok()?;
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(spec.layout.desc);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(spec.layout.avail);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(spec.layout.used);
    q.set_used_ring_address(lo, hi);
    q.set_event_idx(spec.event_idx);
    q.set_ready(true);
    q.set_next_avail(spec.start);
    q.set_next_used(spec.start);
    // virtio-queue keeps the previous address when refusing a misaligned one: the rings are
    // where the queue says, not where the input asked.
    spec.layout.desc = q.desc_table();
    spec.layout.avail = q.avail_ring();
    spec.layout.used = q.used_ring();
    q.is_valid(mem).then_some(q)
}

/// One descriptor chain as virtio-queue walks it before the device runs.
#[derive(Debug)]
struct ChainInfo {
    head: u16,
    readable: Vec<(u64, u64)>,
    writable: Vec<(u64, u64)>,
}

impl ChainInfo {
    fn writable_bytes(&self) -> u64 {
        self.writable.iter().map(|r| r.1).sum()
    }
    fn readable_bytes(&self) -> u64 {
        self.readable.iter().map(|r| r.1).sum()
    }
    /// Every buffer lies in guest memory (so Reader/Writer construction succeeds).
    fn in_memory(&self, mem: &GuestMemoryMmap) -> bool {
        let ok = |regions: &[(u64, u64)], p: Permissions| {
            regions
                .iter()
                .all(|&(a, l)| l == 0 || mem.check_range(GuestAddress(a), l as usize, p))
        };
        ok(&self.readable, Permissions::Read) && ok(&self.writable, Permissions::Write)
    }
    /// Every readable buffer lies in guest memory (so Reader construction succeeds).
    fn readable_in_memory(&self, mem: &GuestMemoryMmap) -> bool {
        self.readable.iter().all(|&(a, l)| {
            l == 0 || mem.check_range(GuestAddress(a), l as usize, Permissions::Read)
        })
    }
    /// Address of the last device-writable byte, where virtio-blk puts the status.
    fn last_writable_byte(&self) -> Option<u64> {
        self.writable
            .iter()
            .rev()
            .find(|r| r.1 > 0)
            .map(|&(a, l)| a + l - 1)
    }
}

/// Walks every available chain of a copy of `queue` (virtio-queue's own iteration, so the
/// chains are exactly those the device will see if memory does not change under it).
fn survey(queue: &Queue, mem: &GuestMemoryMmap) -> Vec<ChainInfo> {
    let Ok(mut q) = Queue::try_from(queue.state()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let mut info = ChainInfo {
            head: chain.head_index(),
            readable: Vec::new(),
            writable: Vec::new(),
        };
        for d in chain {
            let r = (d.addr().0, u64::from(d.len()));
            if d.is_write_only() {
                info.writable.push(r);
            } else {
                info.readable.push(r);
            }
        }
        out.push(info);
    }
    out
}

/// The rings plus every indirect table the descriptor table points at: memory whose change
/// while the device runs would change the chains.
fn metadata(layout: &QueueLayout, mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut m = layout.regions().to_vec();
    for i in 0..u64::from(layout.size) {
        let mut d = [0u8; 16];
        if mem
            .read_slice(&mut d, GuestAddress(layout.desc + 16 * i))
            .is_ok()
        {
            let flags = u16::from_le_bytes([d[12], d[13]]);
            if flags & F_INDIRECT != 0 {
                let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
                let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
                m.push((addr, u64::from(len)));
            }
        }
    }
    m
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 > 0 && b.1 > 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Whether the device's writes cannot change what it reads: the writable buffers of all
/// chains are disjoint from each other and from `fixed` (the [`metadata`]), and the used ring
/// (`fixed[2]`) is disjoint from the rest of it. Only then are exact checks sound.
fn writes_are_isolated(chains: &[ChainInfo], fixed: &[(u64, u64)]) -> bool {
    let used_ring = fixed[2];
    let others = fixed.iter().enumerate().filter(|&(i, _)| i != 2);
    if others.map(|(_, &f)| f).any(|f| overlaps(f, used_ring)) {
        return false;
    }
    let mut w: Vec<(u64, u64)> = chains
        .iter()
        .flat_map(|c| c.writable.iter().copied())
        .filter(|r| r.1 > 0)
        .collect();
    if w.iter().any(|&r| fixed.iter().any(|&f| overlaps(r, f))) {
        return false;
    }
    w.sort_unstable();
    w.windows(2)
        .all(|p| p[0].0.saturating_add(p[0].1) <= p[1].0)
}

fn used_elem(mem: &GuestMemoryMmap, layout: &QueueLayout, index: u16) -> (u32, u32) {
    let slot = u64::from(index % layout.size);
    let mut e = [0u8; 8];
    mem.read_slice(&mut e, GuestAddress(layout.used + 4 + 8 * slot))
        .expect("used ring is in memory");
    (
        u32::from_le_bytes(e[0..4].try_into().unwrap()),
        u32::from_le_bytes(e[4..8].try_into().unwrap()),
    )
}

fn used_idx(mem: &GuestMemoryMmap, layout: &QueueLayout) -> u16 {
    mem.read_obj::<u16>(GuestAddress(layout.used + 2))
        .expect("used ring is in memory")
}

fn read_regions(mem: &GuestMemoryMmap, regions: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(a, l) in regions {
        let start = out.len();
        out.resize(start + l as usize, 0);
        mem.read_slice(&mut out[start..], GuestAddress(a))
            .expect("region checked in memory");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// virtio-blk

/// Byte 3 of a virtio-blk input.
pub mod blk_flags {
    /// The disk is read-only.
    pub const READ_ONLY: u8 = 1;
    /// Every backend operation fails.
    pub const FAILING: u8 = 2;
}

/// Accesses the request engine made that it must never make.
type Violations = Arc<Mutex<Vec<String>>>;

/// A Vec-backed disk that records out-of-range or forbidden accesses instead of trusting the
/// request engine's checks.
struct MemDisk {
    data: Vec<u8>,
    read_only: bool,
    failing: bool,
    violations: Violations,
}

impl MemDisk {
    fn check(&self, what: &str, offset: u64, len: u64, writes: bool) -> io::Result<usize> {
        let end = offset.checked_add(len);
        let bad = match end {
            Some(e) if e <= self.data.len() as u64 => None,
            _ => Some(format!("{what} {offset:#x}+{len:#x} past the end")),
        };
        let bad = bad
            .or_else(|| (writes && self.read_only).then(|| format!("{what} on a read-only disk")));
        if let Some(v) = bad {
            self.violations.lock().unwrap().push(v);
            return Err(io::Error::other("refused"));
        }
        if self.failing {
            return Err(io::Error::other("injected failure"));
        }
        Ok(offset as usize)
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let o = self.check("read", offset, buf.len() as u64, false)?;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let o = self.check("write", offset, buf.len() as u64, true)?;
        self.data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.failing {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _may_unmap: bool) -> io::Result<()> {
        let o = self.check("write-zeroes/discard", offset, len, true)?;
        self.data[o..o + len as usize].fill(0);
        Ok(())
    }
}

/// What a virtio-blk run did, so tests can tell that seeds reach the request engine.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BlkReport {
    /// Whether the queue was valid (otherwise nothing ran).
    pub ran: bool,
    /// Used entries added.
    pub used: u16,
    /// Status bytes of the answered requests, when they could be checked exactly.
    pub statuses: Vec<u8>,
}

/// virtio-blk: `process_queue` over a queue described by `data`.
///
/// Input: byte 0 queue flags ([`queue_flags`]); bytes 1-2 the starting ring index (LE);
/// byte 3 [`blk_flags`]; byte 4 disk size in sectors; byte 5 extra disk bytes (a size that is
/// not a multiple of 512); with [`queue_flags::CUSTOM_LAYOUT`] three LE u16 ring addresses
/// (descriptor table, avail, used); then the guest memory image from address 0.
///
/// Checks: no panic; the backend is never asked for I/O past the disk's end or for a write on
/// a read-only disk; every popped chain but a last invalid one is used; the used index in
/// memory matches; a notification only follows used buffers. When the device's writes cannot
/// alter the chains (writable buffers disjoint from each other and from the rings and indirect
/// tables) also: used entries name the chains' heads in order, lengths stay within the
/// writable bytes, every chain with valid buffers and a writable byte is answered, and every
/// status byte written is 0, 1 or 2.
pub fn virtio_blk_request(data: &[u8]) -> BlkReport {
    let mut input = Input(data);
    let flags = input.u8();
    let start = input.u16();
    let blk = input.u8();
    let sectors = input.u8();
    let extra = input.u8();
    let mut spec = QueueSpec {
        layout: parse_layout(flags, &mut input),
        event_idx: flags & queue_flags::EVENT_IDX != 0,
        start,
    };
    let mem = guest_memory(input.rest());
    let Some(mut queue) = build_queue(&mem, &mut spec) else {
        return BlkReport::default();
    };
    let layout = spec.layout;
    let read_only = blk & blk_flags::READ_ONLY != 0;
    let violations = Violations::default();
    let backend = MemDisk {
        data: (0..u64::from(sectors) * 512 + u64::from(extra))
            .map(|i| (i % 251) as u8)
            .collect(),
        read_only,
        failing: blk & blk_flags::FAILING != 0,
        violations: violations.clone(),
    };
    let mut disk = Disk::new(Box::new(backend), read_only, "fuzz-serial");

    let chains = survey(&queue, &mem);
    let isolated = writes_are_isolated(&chains, &metadata(&layout, &mem));

    let notify = process_queue(&mut queue, &mem, &mut disk);

    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "backend misuse: {v:?}");
    let popped = queue.next_avail().wrapping_sub(start);
    let used = queue.next_used().wrapping_sub(start);
    assert!(
        used <= popped && popped - used <= 1,
        "popped {popped} chains but used {used}"
    );
    assert!(!notify || used > 0, "notification without used buffers");
    if used > 0 && used == popped {
        assert_eq!(used_idx(&mem, &layout), queue.next_used(), "used.idx");
    }
    let mut report = BlkReport {
        ran: true,
        used,
        statuses: Vec::new(),
    };
    if !isolated {
        return report;
    }
    assert!(
        usize::from(popped) <= chains.len(),
        "popped {popped} chains, only {} available",
        chains.len()
    );
    for (k, chain) in chains.iter().take(usize::from(used)).enumerate() {
        let (id, len) = used_elem(&mem, &layout, start.wrapping_add(k as u16));
        assert_eq!(
            id,
            u32::from(chain.head),
            "used entry {k} names another chain"
        );
        assert!(
            u64::from(len) <= chain.writable_bytes(),
            "used length {len} > {} writable bytes",
            chain.writable_bytes()
        );
        if chain.in_memory(&mem) && chain.writable_bytes() > 0 {
            assert!(len > 0, "well-formed chain {k} left unanswered: {chain:?}");
        }
        if len > 0 {
            let at = chain.last_writable_byte().expect("len > 0: writable");
            let s: u8 = mem.read_obj(GuestAddress(at)).expect("status in memory");
            assert!(
                matches!(s, S_OK | S_IOERR | S_UNSUPP),
                "status byte {s} for chain {k}"
            );
            report.statuses.push(s);
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------
// virtio-net

/// Byte 3 of a virtio-net input.
pub mod net_flags {
    /// Receive (deliver frames into the queue) instead of transmit.
    pub const RX: u8 = 1;
    /// Mergeable receive buffers.
    pub const MERGEABLE: u8 = 2;
    /// The backend fails every write.
    pub const FAILING: u8 = 4;
    /// Number of frames to receive: `(byte >> FRAMES_SHIFT) & 7`.
    pub const FRAMES_SHIFT: u8 = 3;
}

/// A Vec-backed [`NetBackend`]: frames to receive, and a record of frames sent.
struct FakeNet {
    rx: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    failing: bool,
}

impl AsRawFd for FakeNet {
    fn as_raw_fd(&self) -> RawFd {
        // The datapath functions never poll the backend; only the device worker does.
        -1
    }
}

impl NetBackend for FakeNet {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.rx.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sent.push(frame.to_vec());
        if self.failing {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// The `i`th received frame of length `len`: a recognisable pattern, `num_buffers` set to
/// garbage the device must overwrite.
fn rx_frame(i: usize, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8))
        .collect();
    f[10..12].copy_from_slice(&[0xee, 0xee]);
    f
}

/// What a virtio-net run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NetReport {
    /// Whether the queue was valid (otherwise nothing ran).
    pub ran: bool,
    /// Frames handed to the backend (TX).
    pub sent: usize,
    /// Frames delivered to the guest (RX).
    pub delivered: usize,
    /// Frames dropped because the guest's buffers could not take them (RX).
    pub dropped: usize,
}

/// virtio-net: `transmit`, or `deliver` then `receive`, over a queue described by `data`.
///
/// Input: byte 0 queue flags ([`queue_flags`]); bytes 1-2 the starting ring index (LE);
/// byte 3 [`net_flags`]; for RX, one LE u16 per frame (frame length minus the 12-byte
/// header); with [`queue_flags::CUSTOM_LAYOUT`] three LE u16 ring addresses; then the guest
/// memory image from address 0.
///
/// TX checks: no panic; every popped chain but a last invalid one is used, with length 0;
/// every frame sent is between a header and [`MAX_FRAME`] long; when the chains cannot change
/// under the device, the frames sent are exactly the chains' readable bytes.
/// RX checks: no panic; `NoBuffers` consumes nothing; `Dropped` returns buffers empty;
/// `Delivered` uses exactly one chain without mergeable buffers and its lengths add up to the
/// frame; when the device's writes are isolated, guest memory holds the frame with
/// `num_buffers` set to the number of chains; `receive` keeps a frame pending exactly when it
/// reports the backend not drained.
pub fn virtio_net_datapath(data: &[u8]) -> NetReport {
    let mut input = Input(data);
    let flags = input.u8();
    let start = input.u16();
    let net = input.u8();
    let rx = net & net_flags::RX != 0;
    let nframes = if rx {
        usize::from((net >> net_flags::FRAMES_SHIFT) & 7)
    } else {
        0
    };
    let frames: Vec<Vec<u8>> = (0..nframes)
        .map(|i| rx_frame(i, VNET_HDR_LEN + usize::from(input.u16())))
        .collect();
    let mut spec = QueueSpec {
        layout: parse_layout(flags, &mut input),
        event_idx: flags & queue_flags::EVENT_IDX != 0,
        start,
    };
    let mem = guest_memory(input.rest());
    let Some(mut queue) = build_queue(&mem, &mut spec) else {
        return NetReport::default();
    };
    let mut backend = FakeNet {
        rx: VecDeque::new(),
        sent: Vec::new(),
        failing: net & net_flags::FAILING != 0,
    };
    let mut report = NetReport {
        ran: true,
        ..NetReport::default()
    };
    if rx {
        rx_checks(
            &mut queue,
            &mem,
            &spec.layout,
            frames,
            net & net_flags::MERGEABLE != 0,
            &mut backend,
            &mut report,
        );
    } else {
        tx_checks(
            &mut queue,
            &mem,
            &spec.layout,
            start,
            &mut backend,
            &mut report,
        );
    }
    report
}

fn tx_checks(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    layout: &QueueLayout,
    start: u16,
    backend: &mut FakeNet,
    report: &mut NetReport,
) {
    let chains = survey(queue, mem);
    // TX writes only the used ring: exact checks hold when nothing the device reads is there.
    let used_ring = layout.regions()[2];
    let mut fixed = metadata(layout, mem);
    fixed.remove(2);
    let stable = !fixed.iter().any(|&r| overlaps(r, used_ring))
        && !chains
            .iter()
            .flat_map(|c| &c.readable)
            .any(|&r| overlaps(r, used_ring));

    let mut buf = Vec::new();
    let notify = datapath::transmit(queue, mem, backend, &mut buf);

    let popped = queue.next_avail().wrapping_sub(start);
    let used = queue.next_used().wrapping_sub(start);
    assert!(
        used <= popped && popped - used <= 1,
        "popped {popped} chains but used {used}"
    );
    assert!(!notify || used > 0, "notification without used buffers");
    assert!(
        backend.sent.len() <= usize::from(popped),
        "more frames than chains"
    );
    for f in &backend.sent {
        assert!(
            (VNET_HDR_LEN..=MAX_FRAME).contains(&f.len()),
            "sent a {}-byte frame",
            f.len()
        );
    }
    report.sent = backend.sent.len();
    if !stable {
        return;
    }
    assert!(
        usize::from(popped) <= chains.len(),
        "popped more than available"
    );
    let mut expected = Vec::new();
    for (k, chain) in chains.iter().take(usize::from(used)).enumerate() {
        let (id, len) = used_elem(mem, layout, start.wrapping_add(k as u16));
        assert_eq!(
            id,
            u32::from(chain.head),
            "used entry {k} names another chain"
        );
        assert_eq!(len, 0, "TX used entries carry no length");
        let n = chain.readable_bytes();
        // TX reads the readable buffers only: bad writable ones do not stop a frame.
        if chain.readable_in_memory(mem) && (VNET_HDR_LEN as u64..=MAX_FRAME as u64).contains(&n) {
            expected.push(read_regions(mem, &chain.readable));
        }
    }
    assert!(
        expected == backend.sent,
        "frames sent ({}) differ from the chains' contents ({})",
        backend.sent.len(),
        expected.len()
    );
}

fn rx_checks(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    layout: &QueueLayout,
    frames: Vec<Vec<u8>>,
    mergeable: bool,
    backend: &mut FakeNet,
    report: &mut NetReport,
) {
    let chains = survey(queue, mem);
    let isolated = writes_are_isolated(&chains, &metadata(layout, mem));
    let first = queue.next_avail();
    let mut rest = frames.into_iter();
    for frame in rest.by_ref() {
        let (avail0, used0) = (queue.next_avail(), queue.next_used());
        let result = datapath::deliver(queue, mem, &frame, mergeable);
        let popped = queue.next_avail().wrapping_sub(avail0);
        let used = queue.next_used().wrapping_sub(used0);
        assert!(used <= popped, "used {used} of {popped} chains");
        match result {
            Delivery::NoBuffers => {
                assert_eq!((popped, used), (0, 0), "NoBuffers consumed buffers");
                backend.rx.push_back(frame);
                break;
            }
            Delivery::Dropped => {
                assert!(popped > 0, "dropped without a chain");
                report.dropped += 1;
                if isolated {
                    for k in 0..used {
                        let (_, len) = used_elem(mem, layout, used0.wrapping_add(k));
                        assert_eq!(len, 0, "dropped frame left bytes in a used buffer");
                    }
                }
            }
            Delivery::Delivered => {
                assert_eq!(used, popped, "delivered through an invalid chain");
                assert!(mergeable || used == 1, "{used} chains without mergeable");
                let mut total = 0u64;
                let mut got = Vec::new();
                for k in 0..used {
                    let (id, len) = used_elem(mem, layout, used0.wrapping_add(k));
                    total += u64::from(len);
                    if isolated {
                        let c = &chains[usize::from(avail0.wrapping_sub(first).wrapping_add(k))];
                        assert_eq!(id, u32::from(c.head), "used entry names another chain");
                        let mut bytes = read_regions(mem, &c.writable);
                        bytes.truncate(len as usize);
                        got.extend_from_slice(&bytes);
                    }
                }
                assert_eq!(total, frame.len() as u64, "used lengths vs frame length");
                if isolated {
                    let mut want = frame.clone();
                    want[10..12].copy_from_slice(&used.to_le_bytes());
                    assert!(got == want, "guest buffers do not hold the frame");
                }
                report.delivered += 1;
            }
        }
    }
    backend.rx.extend(rest);
    // The worker's loop over the same frames: whatever is left is delivered or kept pending.
    let mut pending = None;
    let (_irq, drained) = datapath::receive(queue, mem, backend, mergeable, &mut pending);
    assert_eq!(drained, pending.is_none(), "pending frame vs drained");
    assert!(
        pending.is_some() || backend.rx.is_empty(),
        "frames left behind"
    );
}

// ---------------------------------------------------------------------------------------------
// PCI

/// An [`MsiRouter`] that records routes instead of programming KVM.
#[derive(Default)]
struct FakeRouter {
    next_gsi: Mutex<u32>,
    routes: Mutex<Vec<(u32, MsiMessage)>>,
}

impl MsiRouter for FakeRouter {
    fn allocate_gsi(&self) -> io::Result<u32> {
        let mut n = self.next_gsi.lock().unwrap();
        *n += 1;
        Ok(23 + *n)
    }
    fn set_msi(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        self.routes.lock().unwrap().push((gsi, msg));
        Ok(())
    }
    fn register_irqfd(&self, _fd: &EventFd, _gsi: u32) -> io::Result<()> {
        Ok(())
    }
}

/// KVM's ioeventfd table, shared by all devices: (device, fd, address).
type IoEventTable = Arc<Mutex<Vec<(usize, RawFd, u64)>>>;

/// [`IoEvents`] with KVM's rules: one registration per address, unregistering needs the
/// same fd and address.
struct FakeIoEvents {
    device: usize,
    table: IoEventTable,
}

impl IoEvents for FakeIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        let mut t = self.table.lock().unwrap();
        if t.iter().any(|e| e.2 == addr) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        t.push((self.device, fd.as_raw_fd(), addr));
        Ok(())
    }
    fn unregister(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        let mut t = self.table.lock().unwrap();
        let before = t.len();
        t.retain(|e| !(e.1 == fd.as_raw_fd() && e.2 == addr));
        if t.len() == before {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(())
    }
}

type InterruptSlot = Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>;

/// Features the fake device offers.
const FAKE_FEATURES: u64 = features::VERSION_1 | features::RING_EVENT_IDX | 1;

/// A virtio device that checks what the transport hands it.
struct FakeDevice {
    tag: u8,
    queue_sizes: Vec<u16>,
    config: [u8; 16],
    fail_activate: bool,
    active: bool,
    interrupt: InterruptSlot,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        0x20 + u32::from(self.tag)
    }
    fn pci_class(&self) -> (u8, u8, u8) {
        (0xff, 0, 0)
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        FAKE_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Bytes 0-3 are the device's tag and stay; the rest is writable.
        for (i, b) in data.iter().enumerate() {
            if let Some(o) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|o| (4..16).contains(o))
            {
                self.config[o] = *b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        assert!(!self.active, "activated twice without a reset");
        assert_eq!(ctx.queues.len(), self.queue_sizes.len(), "queue count");
        assert_eq!(
            ctx.queue_events.len(),
            self.queue_sizes.len(),
            "event count"
        );
        assert_eq!(ctx.acked_features & !FAKE_FEATURES, 0, "unoffered feature");
        assert_ne!(ctx.acked_features & features::VERSION_1, 0, "legacy driver");
        for (q, max) in ctx.queues.iter().zip(&self.queue_sizes) {
            assert!(q.size() <= *max, "queue larger than offered");
            if q.ready() {
                assert!(q.is_valid(&ctx.mem), "invalid ready queue handed over");
            }
        }
        if self.fail_activate {
            return Err(ActivateError("injected".into()));
        }
        self.active = true;
        *self.interrupt.lock().unwrap() = Some(ctx.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.active = false;
        *self.interrupt.lock().unwrap() = None;
    }
}

/// Offsets inside BAR 0 (mirroring `virtio::pci`).
const DEVICE_CFG: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;

struct Rig {
    pci: Arc<PciBus>,
    mmio: Arc<Bus>,
    pio: Bus,
    devices: Vec<(usize, Arc<Mutex<VirtioPci>>, InterruptSlot, usize)>,
    ioevents: IoEventTable,
    header: Vec<[u32; 16]>,
    caps: Vec<Vec<(usize, u8)>>,
    bar_history: BTreeSet<u64>,
}

/// Bits of each header dword that must never change (command bits and BAR address bits are
/// the guest's to write).
fn header_ro_mask(reg: usize) -> u32 {
    let cmd = u32::from(pcicfg::CMD_MEMORY | pcicfg::CMD_BUS_MASTER | pcicfg::CMD_INTX_DISABLE);
    match reg {
        pcicfg::COMMAND => !cmd,
        pcicfg::BAR0 => (BAR_SIZE as u32) - 1,
        pcicfg::INTERRUPT_LINE => 0xffff_ff00,
        _ => 0xffff_ffff,
    }
}

/// The capability list as (offset, id), read from the device's config space.
fn cap_list(dev: &mut dyn PciDevice) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut p = (dev.read_config(pcicfg::CAP_PTR) & 0xff) as usize;
    while p != 0 && p < CONFIG_SIZE && out.len() < 48 {
        let d = dev.read_config(p & !3) >> (8 * (p & 3));
        out.push((p, d as u8));
        p = ((d >> 8) & 0xff) as usize;
    }
    out
}

impl Rig {
    fn new(ndev: usize, nqueues: usize, fail_activate: bool) -> Rig {
        let mmio = Arc::new(Bus::new());
        let pio = Bus::new();
        let pci = Arc::new(PciBus::new(mmio.clone()));
        mmio.insert(
            layout::ECAM_BASE,
            layout::ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(Arc::downgrade(&pci)))),
        )
        .expect("ECAM");
        pio.insert(
            CONFIG_IO_BASE,
            CONFIG_IO_LEN,
            Arc::new(Mutex::new(PciConfigIo::new(Arc::downgrade(&pci)))),
        )
        .expect("config ports");
        let mem = guest_memory(&[]);
        let router = Arc::new(FakeRouter::default());
        let ioevents = IoEventTable::default();
        let mut devices = Vec::new();
        for i in 0..ndev {
            let slot: InterruptSlot = Arc::default();
            let dev = FakeDevice {
                tag: 0xa0 + i as u8,
                queue_sizes: (0..nqueues).map(|q| 256 >> q).collect(),
                config: [0xa0 + i as u8; 16],
                fail_activate,
                active: false,
                interrupt: slot.clone(),
            };
            let vp = VirtioPci::new(
                Box::new(dev),
                mem.clone(),
                &pci,
                router.clone(),
                Arc::new(FakeIoEvents {
                    device: i,
                    table: ioevents.clone(),
                }),
            )
            .expect("virtio-pci device");
            let vp = Arc::new(Mutex::new(vp));
            let pci_slot = pci.add(vp.clone()).expect("slot");
            devices.push((pci_slot, vp, slot, nqueues));
        }
        let slots = 1 + devices.len();
        let header = (0..slots)
            .map(|s| std::array::from_fn(|i| pci.config_read(0, s as u8, 0, i * 4)))
            .collect();
        let caps = devices
            .iter()
            .map(|d| cap_list(&mut *d.1.lock().unwrap()))
            .collect();
        let bar_history = devices
            .iter()
            .map(|d| d.1.lock().unwrap().bars()[0].1.addr)
            .collect();
        Rig {
            pci,
            mmio,
            pio,
            devices,
            ioevents,
            header,
            caps,
            bar_history,
        }
    }

    fn bar(&self, d: usize) -> u64 {
        self.devices[d].1.lock().unwrap().bars()[0].1.addr
    }

    /// The tag of whichever device answers at `addr`'s device config region, if any.
    fn tag_at(&self, bar: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        let addr = bar.checked_add(DEVICE_CFG)?;
        self.mmio.read(addr, &mut b).then_some(b[0])
    }

    fn cap_offset(&self, d: usize, id: u8) -> Option<usize> {
        self.caps[d].iter().find(|c| c.1 == id).map(|c| c.0)
    }

    fn config_write(&self, slot: usize, reg: usize, data: &[u8]) {
        self.pci.config_write(0, slot as u8, 0, reg, data);
    }

    fn common_write(&self, d: usize, offset: u64, data: &[u8]) {
        self.devices[d].1.lock().unwrap().bar_write(0, offset, data);
    }

    /// What a Linux driver does to bring the device up, with queues of `1 << size_log2`.
    fn bring_up(&self, d: usize, arg: u8) {
        let slot = self.devices[d].0;
        let nqueues = self.devices[d].3;
        let size_log2 = u64::from(arg & 7) + 1;
        self.config_write(slot, pcicfg::COMMAND, &[0x06, 0x04]);
        if arg & 0x08 != 0 {
            if let Some(m) = self.cap_offset(d, crate::pci::msix::CAP_ID) {
                self.config_write(slot, m + 3, &[0x80]);
            }
        }
        self.common_write(d, 0x14, &[0]);
        self.common_write(d, 0x14, &[status::ACKNOWLEDGE | status::DRIVER]);
        for (sel, v) in [
            (0u32, FAKE_FEATURES as u32),
            (1, (FAKE_FEATURES >> 32) as u32),
        ] {
            self.common_write(d, 0x08, &sel.to_le_bytes());
            self.common_write(d, 0x0c, &v.to_le_bytes());
        }
        self.common_write(
            d,
            0x14,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
        );
        self.common_write(d, 0x10, &0u16.to_le_bytes());
        for q in 0..nqueues {
            let base = 0x3000 * q as u64;
            self.common_write(d, 0x16, &(q as u16).to_le_bytes());
            self.common_write(d, 0x18, &(1u16 << size_log2).to_le_bytes());
            self.common_write(d, 0x1a, &(q as u16 + 1).to_le_bytes());
            for (reg, addr) in [(0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)] {
                self.common_write(d, reg, &(addr as u32).to_le_bytes());
                self.common_write(d, reg + 4, &0u32.to_le_bytes());
            }
            self.common_write(d, 0x1c, &1u16.to_le_bytes());
        }
        if arg & 0x10 != 0 {
            // Unmask every vector with a valid-looking message.
            for v in 0..=nqueues as u64 {
                let t = 0x4000 + 16 * v;
                self.common_write(d, t, &0xfee0_0000u32.to_le_bytes());
                self.common_write(d, t + 8, &(0x30 + v as u32).to_le_bytes());
                self.common_write(d, t + 12, &0u32.to_le_bytes());
            }
        }
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.common_write(d, 0x14, &[all | status::DRIVER_OK]);
    }

    fn check(&mut self, strict: &StrictChecks) {
        // Read-only header fields and the capability chain never change.
        for (slot, want) in self.header.iter().enumerate() {
            for (i, w) in want.iter().enumerate() {
                let reg = i * 4;
                let got = self.pci.config_read(0, slot as u8, 0, reg);
                let m = header_ro_mask(reg);
                assert_eq!(got & m, w & m, "slot {slot} read-only reg {reg:#x} changed");
            }
        }
        for d in 0..self.devices.len() {
            let caps = cap_list(&mut *self.devices[d].1.lock().unwrap());
            assert_eq!(caps, self.caps[d], "capability chain of device {d} changed");
            let bar = self.bar(d);
            let reg = self
                .pci
                .config_read(0, self.devices[d].0 as u8, 0, pcicfg::BAR0);
            // While the guest sizes the BAR the register holds the size mask and the mapping
            // stays where it was.
            let sizing = u64::from(reg & !0xf) == (!(BAR_SIZE - 1)) & 0xffff_fff0;
            assert!(
                sizing || u64::from(reg & !0xf) == bar,
                "BAR register {reg:#x} vs BAR {bar:#x} of device {d}"
            );
            assert_eq!(bar % BAR_SIZE, 0, "BAR of device {d} misaligned: {bar:#x}");
            assert!(bar + BAR_SIZE <= 1 << 32, "32-bit BAR beyond 4 GiB");
            self.bar_history.insert(bar);
        }
        // Nothing is ever mapped outside the PCI window except ECAM.
        for &addr in &self.bar_history {
            let outside = !(layout::PCI_MMIO_START..layout::PCI_MMIO_END).contains(&addr);
            let ecam = (layout::ECAM_BASE..layout::ECAM_BASE + layout::ECAM_SIZE).contains(&addr);
            if outside && !ecam {
                let mut b = [0u8; 1];
                assert!(
                    !self.mmio.read(addr, &mut b),
                    "BAR mapped outside the PCI window at {addr:#x}"
                );
            }
        }
        if strict.ecam_stays {
            let mut d = [0u8; 4];
            assert!(
                self.mmio.read(layout::ECAM_BASE, &mut d),
                "ECAM unmapped by BAR programming"
            );
        }
        if strict.no_stale_bars {
            // Whatever answers at an address a BAR once held is a device whose BAR is there.
            for &addr in &self.bar_history {
                if let Some(tag) = self.tag_at(addr) {
                    let owners: Vec<u8> = (0..self.devices.len())
                        .filter(|&d| self.bar(d) == addr)
                        .map(|d| 0xa0 + d as u8)
                        .collect();
                    assert!(
                        owners.contains(&tag),
                        "device {tag:#x} still answers at {addr:#x}, where its BAR is not \
                         (BARs there: {owners:x?})"
                    );
                }
            }
        }
        if strict.ioevents_follow {
            // Each device's notify addresses are registered exactly where its BAR is mapped.
            let table = self.ioevents.lock().unwrap().clone();
            for d in 0..self.devices.len() {
                let bar = self.bar(d);
                let mapped = self.tag_at(bar) == Some(0xa0 + d as u8);
                let mut got: Vec<u64> = table.iter().filter(|e| e.0 == d).map(|e| e.2).collect();
                got.sort_unstable();
                let want: Vec<u64> = if mapped {
                    (0..self.devices[d].3 as u64)
                        .map(|q| bar + NOTIFY + 4 * q)
                        .collect()
                } else {
                    Vec::new()
                };
                assert_eq!(got, want, "ioeventfds of device {d} (BAR {bar:#x})");
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // ECAM holds the PCI bus, which holds the MMIO bus, which holds ECAM: without breaking
        // the cycle every run would leak its devices and their eventfds (so does `Vm`).
        self.mmio.remove(layout::ECAM_BASE);
    }
}

/// Invariants that berth does not hold today (see docs/fuzzing.md, "Findings"): off in the
/// fuzz targets so they keep exploring, on in the tests that pin the bugs down.
#[derive(Clone, Copy, Debug, Default)]
pub struct StrictChecks {
    /// BAR programming never unmaps ECAM (or anything that is not the BAR).
    pub ecam_stays: bool,
    /// No device stays mapped where its BAR no longer is.
    pub no_stale_bars: bool,
    /// Queue-notify ioeventfds are registered where, and only where, the BAR is mapped.
    pub ioevents_follow: bool,
}

/// What a PCI run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PciReport {
    /// Operations run.
    pub ops: usize,
    /// Devices active at the end.
    pub active: usize,
    /// Whether any BAR moved from where the VMM put it.
    pub bar_moved: bool,
}

/// PCI: configuration space (mechanism #1 and ECAM) and BAR accesses against one or two
/// virtio-pci functions over a fake device, with the checks berth holds today.
pub fn pci_config(data: &[u8]) -> PciReport {
    pci_config_checked(data, StrictChecks::default())
}

/// Operation codes of [`pci_config`] inputs (the opcode byte modulo their count).
pub mod pci_ops {
    /// Write the 0xCF8 address register: u32.
    pub const CF8: u8 = 0;
    /// Access 0xCFC-0xCFF: byte `port&3 | size<<2 | write<<4`, value u32.
    pub const CFC: u8 = 1;
    /// ECAM access: u32 offset (masked to slots 0-7), byte `size-1 | write<<3`, value u64.
    pub const ECAM: u8 = 2;
    /// Access through the MMIO bus at a device's current BAR: byte `dev | (size-1)<<1 |
    /// write<<4`, u16 offset, value u64.
    pub const BAR: u8 = 3;
    /// MMIO access anywhere near the PCI window: u32 offset from 64 KiB below it, byte
    /// `size-1 | write<<3`, value u64.
    pub const MMIO: u8 = 4;
    /// Access the device's BAR directly (as the PCI_CFG window does): byte `dev | (size-1)<<1
    /// | write<<4`, u32 offset, value u64.
    pub const DIRECT: u8 = 5;
    /// Driver bring-up: byte `dev<<7 | unmask<<4 | msix<<3 | size_log2-1`.
    pub const BRING_UP: u8 = 6;
    /// The device raises an interrupt: byte `dev<<7 | config<<6 | queue`.
    pub const INTERRUPT: u8 = 7;
    /// BAR sizing, then an address: byte `dev | restore<<1`, u32 address.
    pub const SIZE_BAR: u8 = 8;
    /// Number of operation codes.
    pub const COUNT: u8 = 9;
}

/// Longest operation sequence run per input.
pub const MAX_PCI_OPS: usize = 256;

/// [`pci_config`] with a chosen set of [`StrictChecks`].
///
/// Input: byte 0 `nqueues-1 (bits 0-1) | two devices<<2 | activation fails<<3`; then
/// operations ([`pci_ops`]), each an opcode byte and its arguments.
///
/// Checks after every operation: no panic; read-only header fields and capability chains
/// keep their values; BARs stay naturally aligned below 4 GiB; nothing is mapped outside the
/// PCI window but ECAM; the device only sees activations with the features it offered and
/// valid ready queues, never twice without a reset; plus the enabled [`StrictChecks`].
pub fn pci_config_checked(data: &[u8], strict: StrictChecks) -> PciReport {
    let mut input = Input(data);
    let setup = input.u8();
    let nqueues = usize::from(setup & 3) + 1;
    let ndev = if setup & 4 != 0 { 2 } else { 1 };
    let mut rig = Rig::new(ndev, nqueues, setup & 8 != 0);
    let initial: Vec<u64> = (0..ndev).map(|d| rig.bar(d)).collect();
    let mut report = PciReport::default();
    while !input.is_empty() && report.ops < MAX_PCI_OPS {
        let op = input.u8() % pci_ops::COUNT;
        match op {
            pci_ops::CF8 => {
                let v = input.u32();
                rig.pio.write(CONFIG_IO_BASE, &v.to_le_bytes());
            }
            pci_ops::CFC => {
                let a = input.u8();
                let v = input.u32().to_le_bytes();
                let port = CONFIG_IO_BASE + 4 + u64::from(a & 3);
                let size = [1, 2, 4, 4][usize::from((a >> 2) & 3)];
                if a & 0x10 != 0 {
                    rig.pio.write(port, &v[..size]);
                } else {
                    rig.pio.read(port, &mut [0u8; 4][..size]);
                }
            }
            pci_ops::ECAM | pci_ops::MMIO => {
                let off = input.u32();
                let a = input.u8();
                let v = input.u64().to_le_bytes();
                let addr = if op == pci_ops::ECAM {
                    layout::ECAM_BASE + u64::from(off & 0x3_ffff)
                } else {
                    layout::PCI_MMIO_START - 0x1_0000 + u64::from(off)
                };
                let size = usize::from(a & 7) + 1;
                if a & 8 != 0 {
                    rig.mmio.write(addr, &v[..size]);
                } else {
                    rig.mmio.read(addr, &mut [0u8; 8][..size]);
                }
            }
            pci_ops::BAR | pci_ops::DIRECT => {
                let a = input.u8();
                let d = usize::from(a & 1) % ndev;
                let size = usize::from((a >> 1) & 7) + 1;
                let off = if op == pci_ops::BAR {
                    u64::from(input.u16()) % BAR_SIZE
                } else {
                    u64::from(input.u32())
                };
                let v = input.u64().to_le_bytes();
                let write = a & 0x10 != 0;
                if op == pci_ops::BAR {
                    let addr = rig.bar(d) + off;
                    if write {
                        rig.mmio.write(addr, &v[..size]);
                    } else {
                        rig.mmio.read(addr, &mut [0u8; 8][..size]);
                    }
                } else {
                    let mut dev = rig.devices[d].1.lock().unwrap();
                    if write {
                        dev.bar_write(0, off, &v[..size]);
                    } else {
                        dev.bar_read(0, off, &mut [0u8; 8][..size]);
                    }
                }
            }
            pci_ops::BRING_UP => {
                let a = input.u8();
                rig.bring_up(usize::from(a >> 7) % ndev, a);
            }
            pci_ops::INTERRUPT => {
                let a = input.u8();
                let d = usize::from(a >> 7) % ndev;
                let irq = rig.devices[d].2.lock().unwrap().clone();
                if let Some(irq) = irq {
                    if a & 0x40 != 0 {
                        irq.notify_config();
                    } else {
                        irq.notify_queue(u16::from(a & 0x3f));
                    }
                }
            }
            _ => {
                let a = input.u8();
                let addr = input.u32();
                let d = usize::from(a & 1) % ndev;
                let slot = rig.devices[d].0;
                let old = rig.bar(d) as u32;
                rig.config_write(slot, pcicfg::BAR0, &[0xff; 4]);
                let got = rig.pci.config_read(0, slot as u8, 0, pcicfg::BAR0);
                let want = !(BAR_SIZE as u32 - 1);
                assert_eq!(got, want, "BAR sizing read back {got:#x}");
                if a & 2 != 0 {
                    rig.config_write(slot, pcicfg::BAR0, &old.to_le_bytes());
                }
                rig.config_write(slot, pcicfg::BAR0, &addr.to_le_bytes());
            }
        }
        report.ops += 1;
        rig.check(&strict);
    }
    report.active = rig
        .devices
        .iter()
        .filter(|d| d.2.lock().unwrap().is_some())
        .count();
    report.bar_moved = (0..ndev).any(|d| rig.bar(d) != initial[d]);
    report
}

/// Builders of well-formed inputs, for the seed corpora and the tests.
pub mod seeds {
    use super::*;

    /// One descriptor: (address, length, flags, next).
    pub type Desc = (u64, u32, u16, u16);

    /// A guest memory image with `chains` (each a list of descriptors, linked in order from
    /// index `first`) made available on a packed queue of `size`, starting at ring index
    /// `start`. Returns the image; buffers are the caller's to fill in.
    pub fn queue_image(size: u16, start: u16, chains: &[Vec<Desc>]) -> Vec<u8> {
        let l = QueueLayout::packed(size);
        let mut img = vec![0u8; l.end() as usize];
        let mut idx = 0u16;
        for (c, chain) in chains.iter().enumerate() {
            let head = idx;
            for (k, &(addr, len, flags, _)) in chain.iter().enumerate() {
                let last = k + 1 == chain.len();
                let flags = if last { flags } else { flags | F_NEXT };
                let next = if last { 0 } else { idx + 1 };
                put_desc(
                    &mut img,
                    l.desc + 16 * u64::from(idx),
                    (addr, len, flags, next),
                );
                idx += 1;
            }
            let slot = l.avail + 4 + 2 * u64::from(start.wrapping_add(c as u16) % size);
            put(&mut img, slot, &head.to_le_bytes());
        }
        let avail_idx = start.wrapping_add(chains.len() as u16);
        put(&mut img, l.avail + 2, &avail_idx.to_le_bytes());
        img
    }

    /// Writes one descriptor at `at`.
    pub fn put_desc(img: &mut Vec<u8>, at: u64, d: Desc) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.0.to_le_bytes());
        b[8..12].copy_from_slice(&d.1.to_le_bytes());
        b[12..14].copy_from_slice(&d.2.to_le_bytes());
        b[14..16].copy_from_slice(&d.3.to_le_bytes());
        put(img, at, &b);
    }

    /// Writes `bytes` at `at`, growing the image as needed.
    pub fn put(img: &mut Vec<u8>, at: u64, bytes: &[u8]) {
        let at = at as usize;
        if img.len() < at + bytes.len() {
            img.resize(at + bytes.len(), 0);
        }
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Device-writable.
    pub const W: u16 = F_WRITE;
    /// Indirect table.
    pub const INDIRECT: u16 = F_INDIRECT;

    /// virtio-blk: a queue of 32 holding a write of two sectors, a read of them, a flush,
    /// GET_ID, discard, write-zeroes and an unsupported request, over a 16-sector disk.
    pub fn blk_mixed(event_idx: bool) -> Vec<u8> {
        let hdr = |t: u32, sector: u64| {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&t.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            h
        };
        let base = 0x1000u64;
        let mut chains = Vec::new();
        let mut fill = Vec::new();
        let mut at = base;
        let mut alloc = |len: u64| {
            let a = at;
            at += len.next_multiple_of(16);
            a
        };
        // (type, sector, data length, device-writable data, payload)
        type Request = (u32, u64, u32, bool, Option<Vec<u8>>);
        let requests: [Request; 7] = [
            (1, 2, 1024, false, None),
            (0, 2, 1024, true, None),
            (4, 0, 0, false, None),
            (8, 0, 20, true, None),
            (11, 0, 16, false, Some(seg(4, 2, 0))),
            (13, 0, 16, false, Some(seg(8, 1, 1))),
            (99, 0, 0, false, None),
        ];
        for (t, sector, len, write, payload) in requests {
            let h = alloc(16);
            fill.push((h, hdr(t, sector).to_vec()));
            let mut c = vec![(h, 16, 0, 0)];
            if len > 0 {
                let d = alloc(u64::from(len));
                if let Some(p) = payload {
                    fill.push((d, p));
                } else if !write {
                    fill.push((d, vec![0x5a; len as usize]));
                }
                c.push((d, len, if write { W } else { 0 }, 0));
            }
            let s = alloc(1);
            fill.push((s, vec![0xff]));
            c.push((s, 1, W, 0));
            chains.push(c);
        }
        let mut img = queue_image(32, 0, &chains);
        for (a, bytes) in fill {
            put(&mut img, a, &bytes);
        }
        let flags = 5 | if event_idx { queue_flags::EVENT_IDX } else { 0 };
        let mut input = vec![flags, 0, 0, 0, 16, 0];
        input.extend_from_slice(&img);
        input
    }

    fn seg(sector: u64, n: u32, flags: u32) -> Vec<u8> {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend_from_slice(&n.to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        s
    }

    /// virtio-blk: one read through an indirect table, with the ring index about to wrap.
    pub fn blk_indirect() -> Vec<u8> {
        let start = 0xfffe;
        let table = 0x800u64;
        let mut img = queue_image(4, start, &[vec![(table, 48, INDIRECT, 0)]]);
        put_desc(&mut img, table, (0x1000, 16, F_NEXT, 1));
        put_desc(&mut img, table + 16, (0x1100, 512, W | F_NEXT, 2));
        put_desc(&mut img, table + 32, (0x1400, 1, W, 0));
        put(&mut img, 0x1000, &[0; 16]);
        let mut input = vec![2, 0xfe, 0xff, 0, 4, 0];
        input.extend_from_slice(&img);
        input
    }

    /// virtio-net TX: two frames (one split over two descriptors), one too short.
    pub fn net_tx() -> Vec<u8> {
        let chains = vec![
            vec![(0x1000, 12, 0, 0), (0x1100, 60, 0, 0)],
            vec![(0x1200, 100, 0, 0)],
            vec![(0x1300, 4, 0, 0)],
        ];
        let mut img = queue_image(4, 0, &chains);
        put(&mut img, 0x1000, &[0x11; 12]);
        put(&mut img, 0x1100, &[0x22; 60]);
        put(&mut img, 0x1200, &[0x33; 100]);
        put(&mut img, 0x1300, &[0x44; 4]);
        let mut input = vec![2 | queue_flags::EVENT_IDX, 0, 0, 0];
        input.extend_from_slice(&img);
        input
    }

    /// virtio-net RX: three frames into four 1 KiB buffers, mergeable or not.
    pub fn net_rx(mergeable: bool) -> Vec<u8> {
        let chains: Vec<Vec<Desc>> = (0..4)
            .map(|i| vec![(0x1000 + 0x400 * i, 0x400, W, 0)])
            .collect();
        let img = queue_image(4, 0, &chains);
        let flags = net_flags::RX | if mergeable { net_flags::MERGEABLE } else { 0 };
        let mut input = vec![2, 0, 0, flags | (3 << net_flags::FRAMES_SHIFT)];
        for len in [50u16, 1500, 200] {
            input.extend_from_slice(&len.to_le_bytes());
        }
        input.extend_from_slice(&img);
        input
    }

    /// PCI: enumerate through both mechanisms, size and move the BAR, bring the device up,
    /// raise interrupts, read the ISR and MSI-X table.
    pub fn pci_session(two_devices: bool) -> Vec<u8> {
        let mut v = vec![1 | if two_devices { 4 } else { 0 }];
        let cf8 = |v: &mut Vec<u8>, slot: u32, reg: u32| {
            v.push(pci_ops::CF8);
            v.extend_from_slice(&(0x8000_0000u32 | slot << 11 | reg).to_le_bytes());
        };
        cf8(&mut v, 1, 0);
        v.extend_from_slice(&[pci_ops::CFC, 2 << 2, 0, 0, 0, 0]);
        cf8(&mut v, 1, 4);
        v.extend_from_slice(&[pci_ops::CFC, 0x10 | 1 << 2, 6, 0, 0, 0]);
        // Size BAR 0, restore it, then move it 1 MiB up.
        v.push(pci_ops::SIZE_BAR);
        v.push(2);
        v.extend_from_slice(&0xc010_0000u32.to_le_bytes());
        v.extend_from_slice(&[pci_ops::BRING_UP, 0x18 | 2]);
        // The device raises queue 0 and config interrupts; the driver reads the ISR.
        v.extend_from_slice(&[pci_ops::INTERRUPT, 0, pci_ops::INTERRUPT, 0x40]);
        v.extend_from_slice(&[pci_ops::BAR, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Read the first MSI-X entry (qword) and the device config through the BAR.
        v.extend_from_slice(&[pci_ops::BAR, 7 << 1, 0x00, 0x40, 0, 0, 0, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&[pci_ops::BAR, 3 << 1, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0]);
        // ECAM read of the vendor/device id.
        v.push(pci_ops::ECAM);
        v.extend_from_slice(&(1u32 << 15).to_le_bytes());
        v.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0]);
        v
    }
}
