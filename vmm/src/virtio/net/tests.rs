//! virtio-net datapath tests: real descriptor chains in guest memory against a datagram
//! socketpair standing in for the tap (it keeps frame boundaries as a tap does).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::datapath::{deliver, receive, transmit, Delivery};
use super::tap::{NetBackend, VNET_HDR_LEN};
use super::*;

struct Pair {
    fd: OwnedFd,
    offload: Option<u32>,
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
    let mut got = vec![0u8; f.len()];
    m.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(&got[12..], &f[12..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
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
