//! virtio-net datapath tests: real descriptor chains in guest memory against a datagram
//! socketpair standing in for the tap (it keeps frame boundaries as a tap does).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};

use super::datapath::{deliver, receive, transmit, Delivery, MAX_CHAIN_DESCS, MAX_FRAME};
use super::tap::{writev_frame, NetBackend, VNET_HDR_LEN};
use super::*;

struct Pair {
    fd: OwnedFd,
    offload: Option<u32>,
    /// Use the copying default of `write_frame_gather` instead of `writev`, as backends
    /// without a vectored write do.
    copy_gather: bool,
}

impl AsRawFd for Pair {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for Pair {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    fn write_frame_gather(&mut self, parts: &[VolatileSlice<'_>]) -> io::Result<()> {
        if self.copy_gather {
            self.write_frame(&super::tap::gather(parts))
        } else {
            // What the tap does: one writev straight from guest memory.
            writev_frame(self.fd.as_raw_fd(), parts)
        }
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.offload = Some(flags);
        Ok(())
    }
}

/// (device side, host side)
fn pair() -> (Pair, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) },
        0
    );
    // Large frames: raise the socket buffers past 64 KiB.
    for fd in fds {
        let sz: libc::c_int = 1 << 20;
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&sz as *const libc::c_int).cast(),
                4,
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&sz as *const libc::c_int).cast(),
                4,
            );
        }
    }
    unsafe {
        (
            Pair {
                fd: OwnedFd::from_raw_fd(fds[0]),
                offload: None,
                copy_gather: false,
            },
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

fn host_send(fd: &OwnedFd, frame: &[u8]) {
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n as usize, frame.len());
}

fn host_recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 70000];
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            b.as_mut_ptr().cast(),
            b.len(),
            libc::MSG_DONTWAIT,
        )
    };
    (n >= 0).then(|| b[..n as usize].to_vec())
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

const BUF: u64 = 0x10_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = 4;
/// Where tests put indirect descriptor tables.
const TABLE: u64 = 0x30_0000;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Writes an indirect table at [`TABLE`]: `descs` chained in order (NEXT set on all but the
/// last), and returns the descriptor pointing at it.
fn indirect(m: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> RawDescriptor {
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let last = i + 1 == descs.len();
        let flags = if last { flags } else { flags | N };
        let d = desc(addr, len, flags, if last { 0 } else { i as u16 + 1 });
        m.write_obj(d, GuestAddress(TABLE + 16 * i as u64)).unwrap();
    }
    desc(TABLE, 16 * descs.len() as u32, INDIRECT, 0)
}

/// A queue of 16 holding `descs` (chains split where NEXT is clear).
fn queue_with<'a>(
    m: &'a GuestMemoryMmap,
    descs: &[RawDescriptor],
) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
    let q = MockSplitQueue::create(m, GuestAddress(0), 16);
    q.add_desc_chains(descs, 0).unwrap();
    let queue = q.create_queue().unwrap();
    (q, queue)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// RX chains of `size` bytes each, one descriptor per chain.
fn rx_queue<'a>(
    m: &'a GuestMemoryMmap,
    chains: u16,
    size: u32,
) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
    let q = MockSplitQueue::create(m, GuestAddress(0), 16);
    let descs: Vec<RawDescriptor> = (0..chains)
        .map(|i| RawDescriptor::from(Descriptor::new(BUF + u64::from(i) * 0x1_0000, size, W, 0)))
        .collect();
    q.add_desc_chains(&descs, 0).unwrap();
    let queue = q.create_queue().unwrap();
    (q, queue)
}

fn used(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> (u32, u32) {
    let base = q.used_addr().0 + 4 + i * 8;
    (
        m.read_obj(GuestAddress(base)).unwrap(),
        m.read_obj(GuestAddress(base + 4)).unwrap(),
    )
}

/// Guest memory at `at` holds `f` (`f.len()` bytes of it, one buffer) with `num_buffers` set.
fn assert_holds(m: &GuestMemoryMmap, at: u64, f: &[u8], num_buffers: u16) {
    let mut got = vec![0u8; f.len()];
    m.read_slice(&mut got, GuestAddress(at)).unwrap();
    assert_eq!(&got[..10], &f[..10], "header");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), num_buffers);
    assert!(got[12..] == f[12..], "payload");
}

#[test]
fn transmit_gathers_split_chains() {
    let m = mem();
    let (mut dev, host) = pair();
    let f = frame(3000, 7);
    m.write_slice(&f, GuestAddress(BUF)).unwrap();
    let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
    q.add_desc_chains(
        &[
            RawDescriptor::from(Descriptor::new(BUF, 12, N, 1)),
            RawDescriptor::from(Descriptor::new(BUF + 12, 1000, N, 2)),
            RawDescriptor::from(Descriptor::new(BUF + 1012, 2000, 0, 0)),
            // Shorter than a header: dropped.
            RawDescriptor::from(Descriptor::new(BUF, 4, 0, 0)),
            // Outside guest memory: dropped.
            RawDescriptor::from(Descriptor::new(0x1000_0000, 100, 0, 0)),
        ],
        0,
    )
    .unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    let mut buf = Vec::new();
    assert!(transmit(&mut queue, &m, &mut dev, &mut buf));
    assert_eq!(host_recv(&host).unwrap(), f);
    assert!(host_recv(&host).is_none(), "bad chains must not be sent");
    assert_eq!(queue.next_used(), 3, "every chain is returned");
}

#[test]
fn receive_into_one_chain_sets_num_buffers() {
    let m = mem();
    let (q, mut queue) = rx_queue(&m, 2, 2048);
    let f = frame(100, 1);
    assert_eq!(deliver(&mut queue, &m, &f, false), Delivery::Delivered);
    let (id, len) = used(&m, &q, 0);
    assert_eq!((id, len as usize), (0, f.len()));
    assert_holds(&m, BUF, &f, 1);
}

#[test]
fn mergeable_frames_span_chains() {
    let m = mem();
    let (q, mut queue) = rx_queue(&m, 6, 1500);
    let f = frame(5000, 3);
    assert_eq!(deliver(&mut queue, &m, &f, true), Delivery::Delivered);
    let mut got = Vec::new();
    let mut total = 0;
    for i in 0..4u64 {
        let (id, len) = used(&m, &q, i);
        assert_eq!(u64::from(id), i);
        let mut part = vec![0u8; len as usize];
        m.read_slice(&mut part, GuestAddress(BUF + i * 0x1_0000))
            .unwrap();
        got.extend(part);
        total += len;
    }
    assert_eq!(total as usize, f.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4);
    assert_eq!(&got[12..], &f[12..]);
    // Without mergeable buffers the same frame cannot fit a 1500-byte chain: dropped.
    assert_eq!(deliver(&mut queue, &m, &f, false), Delivery::Dropped);
}

#[test]
fn frames_wait_for_buffers_and_unusable_buffers_drop() {
    let m = mem();
    let (mut dev, host) = pair();
    let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let mut queue: Queue = q.create_queue().unwrap();
    let f = frame(200, 9);
    host_send(&host, &f);
    let mut pending = None;
    let (irq, drained) = receive(&mut queue, &m, &mut dev, true, &mut pending);
    assert!(!irq && !drained);
    assert_eq!(pending.as_deref(), Some(&f[..]), "kept for later");

    // The guest adds a read-only buffer (wrong direction) and then a good one.
    q.add_desc_chains(
        &[
            RawDescriptor::from(Descriptor::new(BUF, 2048, 0, 0)),
            RawDescriptor::from(Descriptor::new(BUF + 0x1_0000, 2048, W, 0)),
        ],
        0,
    )
    .unwrap();
    host_send(&host, &f);
    let (irq, drained) = receive(&mut queue, &m, &mut dev, true, &mut pending);
    assert!(irq && drained);
    // First frame dropped into the unusable chain (len 0), second one delivered.
    assert_eq!(used(&m, &q, 0), (0, 0));
    assert_eq!(used(&m, &q, 1), (1, f.len() as u32));
}

#[test]
fn offloads_follow_guest_features() {
    assert_eq!(tap_offloads(0), 0);
    assert_eq!(tap_offloads(F_GUEST_TSO4), 0, "TSO needs checksum offload");
    assert_eq!(
        tap_offloads(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6),
        offload::CSUM | offload::TSO4 | offload::TSO6
    );
}

/// The device end to end: activation sends what the guest queued and delivers what the host
/// sent before it; a frame with no guest buffers waits until the guest adds one and kicks.
#[test]
fn device_moves_frames_on_its_worker() {
    use std::sync::mpsc;
    use std::time::Duration;

    use vmm_sys_util::eventfd::EventFd;

    use crate::virtio::testing::ChannelInterrupt;
    use crate::virtio::{ActivateContext, VirtioDevice};

    let m = mem();
    let (dev_side, host) = pair();
    let mut dev = Net::new(Box::new(dev_side), [2, 0, 0, 0, 0, 1], 1500);
    // RX: one buffer for now. TX: one frame.
    let rxq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    rxq.add_desc_chains(&[RawDescriptor::from(Descriptor::new(BUF, 2048, W, 0))], 0)
        .unwrap();
    let txq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
    let out = frame(300, 5);
    m.write_slice(&out, GuestAddress(BUF + 0x8_0000)).unwrap();
    txq.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(
            BUF + 0x8_0000,
            out.len() as u32,
            0,
            0,
        ))],
        0,
    )
    .unwrap();
    let first = frame(100, 1);
    host_send(&host, &first);

    let (irq_tx, irqs) = mpsc::channel();
    let events: Vec<EventFd> = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let rx_kick = events[0].try_clone().unwrap();
    let ctx = ActivateContext {
        mem: m.clone(),
        queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
        queue_events: events,
        interrupt: std::sync::Arc::new(ChannelInterrupt(irq_tx)),
        acked_features: features::VERSION_1,
    };
    dev.activate(ctx).unwrap();
    let wait = Duration::from_secs(5);
    let mut got: Vec<u16> = (0..2).map(|_| irqs.recv_timeout(wait).unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1], "both queues were served");
    assert_eq!(host_recv(&host).unwrap(), out);
    assert_eq!(used(&m, &rxq, 0), (0, first.len() as u32));

    // No RX buffer left: the next frame waits (the tap leaves the wait set) until the guest
    // adds a buffer and kicks.
    let second = frame(200, 2);
    host_send(&host, &second);
    assert!(irqs.recv_timeout(Duration::from_millis(200)).is_err());
    rxq.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(
            BUF + 0x1_0000,
            2048,
            W,
            0,
        ))],
        1,
    )
    .unwrap();
    rx_kick.write(1).unwrap();
    assert_eq!(irqs.recv_timeout(wait), Ok(0));
    assert_eq!(used(&m, &rxq, 1), (1, second.len() as u32));

    dev.reset();
    drop(dev);
}

// ---------------------------------------------------------------------------------------------
// Hostile and unusual chains. TX returns every chain with 0 bytes used and sends only a frame
// it could read whole; RX returns a malformed chain with 0 bytes used and drops the frame.

/// Puts `f` at [`BUF`], queues `descs` on a TX queue and transmits them (through `writev`,
/// or through the copying default with `copy_gather`); returns the frames the host got and
/// the queue (every chain must be used with length 0).
fn send(
    m: &GuestMemoryMmap,
    f: &[u8],
    descs: &[RawDescriptor],
    copy_gather: bool,
) -> (Vec<Vec<u8>>, Queue) {
    let (mut dev, host) = pair();
    dev.copy_gather = copy_gather;
    m.write_slice(f, GuestAddress(BUF)).unwrap();
    let (q, mut queue) = queue_with(m, descs);
    transmit(&mut queue, m, &mut dev, &mut Vec::new());
    for i in 0..queue.next_used() {
        assert_eq!(
            used(m, &q, u64::from(i)).1,
            0,
            "TX used entries carry no length"
        );
    }
    (std::iter::from_fn(|| host_recv(&host)).collect(), queue)
}

#[test]
fn transmit_without_writev_copies_the_same_frames() {
    let f = frame(3000, 11);
    let descs = [
        desc(BUF, 12, N, 1),
        desc(BUF + 12, 1000, N, 2),
        desc(BUF + 1012, 2000, 0, 0),
    ];
    assert_eq!(send(&mem(), &f, &descs, true).0, [f]);
}

#[test]
fn transmit_reads_only_the_readable_descriptors() {
    let f = frame(500, 4);
    // A write-only descriptor (even one outside guest memory) is neither read nor sent.
    let descs = [
        desc(BUF, 12, N, 1),
        desc(0x1000_0000, 100, W | N, 2),
        desc(BUF + 12, 500, 0, 0),
    ];
    let (sent, queue) = send(&mem(), &f, &descs, false);
    assert_eq!((sent, queue.next_used()), (vec![f], 1));
}

#[test]
fn transmit_drops_oversized_overflowing_and_partly_missing_chains() {
    let big = frame(MAX_FRAME - VNET_HDR_LEN, 2);
    let (sent, queue) = send(
        &mem(),
        &big,
        &[
            // One byte more than MAX_FRAME, in memory: dropped.
            desc(BUF, 60_000, N, 1),
            desc(BUF + 60_000, (MAX_FRAME - 60_000 + 1) as u32, 0, 0),
            // Lengths that overflow 32 bits: dropped.
            desc(BUF, 0xffff_fff0, N, 3),
            desc(BUF, 0x20, 0, 0),
            // A good first buffer, then one past the end of guest memory: dropped.
            desc(BUF, 100, N, 5),
            desc(0x3f_ff00, 0x200, 0, 0),
            // Exactly MAX_FRAME: sent.
            desc(BUF, MAX_FRAME as u32, 0, 0),
        ],
        false,
    );
    assert_eq!(sent, [big], "only the good chain is sent");
    assert_eq!(queue.next_used(), 4, "every chain is returned");
}

#[test]
fn transmit_copies_a_frame_in_many_pieces() {
    let m = mem();
    let f = frame(3000 - VNET_HDR_LEN, 8);
    // 100 descriptors of 30 bytes: more pieces than one writev takes, so the frame is copied.
    let parts: Vec<(u64, u32, u16)> = (0..100).map(|i| (BUF + 30 * i, 30, 0)).collect();
    let head = indirect(&m, &parts);
    assert_eq!(send(&m, &f, &[head], false).0, [f]);
}

#[test]
fn transmit_survives_looping_chains() {
    // virtio-queue ends the walk after a queue's worth of descriptors; the chain is returned.
    let descs = [desc(BUF, 100, N, 1), desc(BUF, 100, N, 0)];
    assert_eq!(send(&mem(), &frame(100, 0), &descs, false).1.next_used(), 1);
}

/// Guest memory in two adjacent regions: a buffer across 0x20_0000 is two host pieces.
fn split_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(0x20_0000), 0x20_0000),
    ])
    .unwrap()
}

#[test]
fn frames_cross_memory_regions() {
    let m = split_mem();
    let f = frame(1000, 6);
    // TX: the frame's one descriptor is two pieces of host memory, one writev.
    m.write_slice(&f, GuestAddress(0x20_0000 - 100)).unwrap();
    let across = desc(0x20_0000 - 100, f.len() as u32, 0, 0);
    assert_eq!(send(&m, &[], &[across], false).0, [f]);

    // RX: bytes 10 and 11 (num_buffers) land in different regions.
    let at = 0x20_0000 - 11;
    let (q, mut queue) = queue_with(&m, &[desc(at, 2048, W, 0), desc(BUF, 2048, W, 0)]);
    let f = frame(3000, 1);
    assert_eq!(deliver(&mut queue, &m, &f, true), Delivery::Delivered);
    assert_holds(&m, at, &f[..2048], 2);
    assert_eq!(used(&m, &q, 0), (0, 2048));
    assert_eq!(used(&m, &q, 1), (1, (f.len() - 2048) as u32));
}

#[test]
fn num_buffers_is_set_when_the_header_is_split_across_descriptors() {
    let m = mem();
    // The first chain holds the header in three pieces: bytes 0-3, 4-10, 11.
    let (q, mut queue) = queue_with(
        &m,
        &[
            desc(BUF, 4, W | N, 1),
            desc(BUF + 0x100, 7, W | N, 2),
            desc(BUF + 0x200, 1, W | N, 3),
            desc(BUF + 0x300, 1000, W, 0),
            desc(BUF + 0x1_0000, 4096, W, 0),
        ],
    );
    let f = frame(2000, 5);
    assert_eq!(deliver(&mut queue, &m, &f, true), Delivery::Delivered);
    let byte = |a: u64| m.read_obj::<u8>(GuestAddress(a)).unwrap();
    assert_eq!(
        [byte(BUF + 0x100 + 6), byte(BUF + 0x200)],
        2u16.to_le_bytes()
    );
    assert_eq!(used(&m, &q, 0), (0, 1012));
    assert_eq!(used(&m, &q, 1), (4, (f.len() - 1012) as u32));
}

#[test]
fn deliver_returns_malformed_chains_empty() {
    let outside = 0x1000_0000;
    let cases: Vec<(&str, Vec<RawDescriptor>)> = vec![
        (
            "device-readable after writable",
            vec![
                desc(BUF, 2048, W | N, 1),
                desc(BUF + 0x1000, 100, N, 2),
                desc(BUF + 0x2000, 100, W, 0),
            ],
        ),
        (
            "device-readable first",
            vec![desc(BUF, 100, N, 1), desc(BUF + 0x1000, 2048, W, 0)],
        ),
        (
            "outside guest memory past the frame",
            vec![desc(BUF, 2048, W | N, 1), desc(outside, 100, W, 0)],
        ),
        (
            "straddling the end of guest memory",
            vec![desc(0x3f_ff00, 0x200, W, 0)],
        ),
        (
            "lengths overflowing 32 bits",
            vec![desc(BUF, 0xffff_fff0, W | N, 1), desc(BUF, 0x100, W, 0)],
        ),
        (
            "a loop",
            vec![
                desc(BUF, 2048, W | N, 1),
                desc(BUF + 0x1000, 2048, W | N, 0),
            ],
        ),
        (
            "a next index past the queue",
            vec![desc(BUF, 2048, W | N, 200)],
        ),
        (
            "an indirect table of odd length",
            vec![desc(BUF, 2048, W | N, 1), desc(TABLE, 17, INDIRECT, 0)],
        ),
        ("no room at all", vec![desc(BUF, 0, W, 0)]),
        ("shorter than a header", vec![desc(BUF, 8, W, 0)]),
    ];
    for mergeable in [false, true] {
        for (what, descs) in &cases {
            let m = mem();
            let (q, mut queue) = queue_with(&m, descs);
            let f = frame(100, 3);
            let got = deliver(&mut queue, &m, &f, mergeable);
            assert_eq!(got, Delivery::Dropped, "{what} (mergeable {mergeable})");
            assert_eq!(queue.next_used(), 1, "{what}: the chain is returned");
            assert_eq!(used(&m, &q, 0), (0, 0), "{what}: with nothing in it");
        }
    }
}

#[test]
fn rx_chains_are_limited_in_length() {
    for (n, want) in [
        (MAX_CHAIN_DESCS, Delivery::Delivered),
        (MAX_CHAIN_DESCS + 1, Delivery::Dropped),
    ] {
        let m = mem();
        let parts: Vec<(u64, u32, u16)> = (0..n as u64).map(|i| (BUF + 16 * i, 16, W)).collect();
        let (q, mut queue) = queue_with(&m, &[indirect(&m, &parts)]);
        let f = frame(1000, 7);
        assert_eq!(deliver(&mut queue, &m, &f, false), want, "{n} descriptors");
        if want == Delivery::Delivered {
            assert_eq!(used(&m, &q, 0), (0, f.len() as u32));
            assert_holds(&m, BUF, &f, 1);
        } else {
            assert_eq!(used(&m, &q, 0), (0, 0));
        }
    }
}

#[test]
fn a_frame_waits_until_enough_mergeable_buffers_come() {
    // One 1500-byte buffer for a 5000-byte frame: it waits, then takes four.
    let f = frame(5000, 9);
    let m = mem();
    let (q, mut queue) = rx_queue(&m, 1, 1500);
    assert_eq!(deliver(&mut queue, &m, &f, true), Delivery::NoBuffers);
    assert_eq!(
        (queue.next_avail(), queue.next_used()),
        (0, 0),
        "nothing consumed"
    );
    let more: Vec<RawDescriptor> = (1..4)
        .map(|i| desc(BUF + i * 0x1_0000, 1500, W, 0))
        .collect();
    q.add_desc_chains(&more, 1).unwrap();
    assert_eq!(deliver(&mut queue, &m, &f, true), Delivery::Delivered);
    assert_holds(&m, BUF, &f[..1500], 4);
    assert_eq!(queue.next_used(), 4);
}
