//! Multiqueue and the control queue, in process: commands in guest memory, datagram
//! socketpairs standing in for the tap's queues.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::ctrl::{self, CLASS_MQ, ERR, MQ_VQ_PAIRS_SET, OK};
use super::tap::{NetBackend, VNET_HDR_LEN};
use super::*;
use crate::virtio::testing::ChannelInterrupt;
use crate::virtio::{ActivateContext, VirtioDevice};

const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const CMD: u64 = 0x20_0000;
const ACK: u64 = 0x21_0000;

/// A tap queue: a datagram socket, and whether the "kernel" steers frames to it (0 unset,
/// 1 detached, 2 attached).
struct TapQueue {
    fd: OwnedFd,
    attached: Arc<AtomicU8>,
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for TapQueue {
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
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    fn set_queue_enabled(&mut self, enabled: bool) -> io::Result<()> {
        self.attached
            .store(if enabled { 2 } else { 1 }, Ordering::SeqCst);
        Ok(())
    }
}

fn queue_pair() -> (TapQueue, OwnedFd, Arc<AtomicU8>) {
    let mut fds = [0; 2];
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) },
        0
    );
    let attached = Arc::new(AtomicU8::new(0));
    unsafe {
        (
            TapQueue {
                fd: OwnedFd::from_raw_fd(fds[0]),
                attached: attached.clone(),
            },
            OwnedFd::from_raw_fd(fds[1]),
            attached,
        )
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
}

/// Puts a command (`bytes`, split into descriptors of `split` bytes) and a 1-byte ack buffer
/// on a fresh control queue, serves it, and returns (used length, ack byte, pairs set).
fn command(bytes: &[u8], split: usize, max: u16) -> (u32, u8, Option<u16>) {
    let m = mem();
    m.write_slice(bytes, GuestAddress(CMD)).unwrap();
    m.write_obj(0xeeu8, GuestAddress(ACK)).unwrap();
    let mut descs = Vec::new();
    for (i, c) in bytes.chunks(split.max(1)).enumerate() {
        let at = CMD + (i * split) as u64;
        descs.push(RawDescriptor::from(Descriptor::new(
            at,
            c.len() as u32,
            N,
            descs.len() as u16 + 1,
        )));
    }
    descs.push(RawDescriptor::from(Descriptor::new(ACK, 1, W, 0)));
    let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
    q.add_desc_chains(&descs, 0).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    let mut set = None;
    ctrl::serve_queue(&mut queue, &m, max, &mut |n| {
        set = Some(n);
        true
    });
    let used: u32 = m.read_obj(GuestAddress(q.used_addr().0 + 8)).unwrap();
    (used, m.read_obj(GuestAddress(ACK)).unwrap(), set)
}

#[test]
fn vq_pairs_set_is_validated() {
    let set = |n: u16| [CLASS_MQ, MQ_VQ_PAIRS_SET, n as u8, (n >> 8) as u8];
    assert_eq!(command(&set(2), 2, 4), (1, OK, Some(2)));
    assert_eq!(command(&set(4), 1, 4), (1, OK, Some(4)), "split however");
    assert_eq!(command(&set(1), 4, 4), (1, OK, Some(1)));
    // Out of range, other commands and classes, short or long data: refused, nothing set.
    for bad in [
        set(0).to_vec(),
        set(5).to_vec(),
        set(0xffff).to_vec(),
        vec![CLASS_MQ, 1, 2, 0],
        vec![0, 0, 1, 0],
        vec![CLASS_MQ, MQ_VQ_PAIRS_SET, 2],
        vec![CLASS_MQ, MQ_VQ_PAIRS_SET, 2, 0, 0],
        vec![CLASS_MQ; 200],
        vec![],
    ] {
        // At most 8 descriptors, within the 16-entry queue.
        let split = bad.len().div_ceil(8).max(2);
        assert_eq!(command(&bad, split, 4), (1, ERR, None), "{bad:?}");
    }
}

#[test]
fn hostile_control_chains_get_nothing() {
    let m = mem();
    let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
    m.write_slice(&[CLASS_MQ, MQ_VQ_PAIRS_SET, 2, 0], GuestAddress(CMD))
        .unwrap();
    q.add_desc_chains(
        &[
            // No writable byte for the ack.
            RawDescriptor::from(Descriptor::new(CMD, 4, 0, 0)),
            // Readable after writable.
            RawDescriptor::from(Descriptor::new(ACK, 1, W | N, 2)),
            RawDescriptor::from(Descriptor::new(CMD, 4, 0, 0)),
            // Outside guest memory.
            RawDescriptor::from(Descriptor::new(0x4000_0000, 4, N, 4)),
            RawDescriptor::from(Descriptor::new(ACK, 1, W, 0)),
        ],
        0,
    )
    .unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    let mut called = false;
    ctrl::serve_queue(&mut queue, &m, 4, &mut |_| {
        called = true;
        true
    });
    assert!(!called);
    assert_eq!(queue.next_used(), 3, "every chain is returned");
    for i in 0..3u64 {
        let len: u32 = m
            .read_obj(GuestAddress(q.used_addr().0 + 8 + 8 * i))
            .unwrap();
        assert_eq!(len, 0);
    }
}

/// Two pairs on one in-process worker: only pair 0's tap queue is attached at start; TX on
/// pair 1 goes to tap queue 1, RX from tap queue 1 lands in pair 1's RX queue; VQ_PAIRS_SET 2
/// attaches queue 1, 3 is refused. Fails on the old code, which had one pair and no control
/// queue.
#[test]
fn two_pairs_and_the_control_queue_on_one_worker() {
    let m = mem();
    let (q0, _h0, a0) = queue_pair();
    let (q1, h1, a1) = queue_pair();
    let mut dev = Net::multiqueue(
        vec![Box::new(q0), Box::new(q1)],
        [2, 0, 0, 0, 0, 1],
        1500,
        Vec::new(),
    );
    assert_eq!(dev.info().queue_sizes.len(), 5);
    assert_ne!(dev.features() & F_MQ, 0);
    assert_ne!(dev.features() & F_CTRL_VQ, 0);
    let mut cfg = [0u8; 2];
    dev.read_config(8, &mut cfg);
    assert_eq!(u16::from_le_bytes(cfg), 2, "max_virtqueue_pairs");

    let base = |i: u64| GuestAddress(i * 0x1000);
    let mocks: Vec<_> = (0..5)
        .map(|i| MockSplitQueue::create(&m, base(i), 16))
        .collect();
    // Pair 1: an RX buffer, and a TX frame.
    mocks[2]
        .add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(0x10_0000, 2048, W, 0))],
            0,
        )
        .unwrap();
    let mut out = vec![0u8; VNET_HDR_LEN];
    out.extend_from_slice(&[7; 60]);
    m.write_slice(&out, GuestAddress(0x18_0000)).unwrap();
    mocks[3]
        .add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                0x18_0000,
                out.len() as u32,
                0,
                0,
            ))],
            0,
        )
        .unwrap();
    let (irq_tx, irqs) = mpsc::channel();
    let events: Vec<EventFd> = (0..5)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let ctrl_kick = events[4].try_clone().unwrap();
    let ctx = ActivateContext {
        mem: m.clone(),
        queues: mocks.iter().map(|q| q.create_queue().unwrap()).collect(),
        queue_events: events,
        interrupt: Arc::new(ChannelInterrupt(irq_tx)),
        acked_features: features::VERSION_1 | F_MQ | F_CTRL_VQ,
    };
    dev.activate(ctx).unwrap();
    assert_eq!(
        (a0.load(Ordering::SeqCst), a1.load(Ordering::SeqCst)),
        (2, 1)
    );
    let wait = Duration::from_secs(5);
    // TX of pair 1 reached tap queue 1.
    let mut b = [0u8; 256];
    let mut got = None;
    for _ in 0..500 {
        let n = unsafe {
            libc::recv(
                h1.as_raw_fd(),
                b.as_mut_ptr().cast(),
                b.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            got = Some(b[..n as usize].to_vec());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got.as_deref(), Some(&out[..]));
    // RX from tap queue 1 into pair 1's queue.
    let inbound = [9u8; 80];
    assert_eq!(
        unsafe { libc::send(h1.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) },
        80
    );
    let mut seen = Vec::new();
    while let Ok(q) = irqs.recv_timeout(wait) {
        seen.push(q);
        if seen.contains(&2) {
            break;
        }
    }
    assert!(seen.contains(&2), "pair 1's RX interrupted: {seen:?}");
    let len: u32 = m
        .read_obj(GuestAddress(mocks[2].used_addr().0 + 8))
        .unwrap();
    assert_eq!(len, 80);

    // The control queue: VQ_PAIRS_SET 2 (ok), then 3 (refused).
    let ack = |i: u64| GuestAddress(ACK + i);
    for (i, n) in [2u16, 3].into_iter().enumerate() {
        let at = CMD + 0x100 * i as u64;
        m.write_slice(&[CLASS_MQ, MQ_VQ_PAIRS_SET, n as u8, 0], GuestAddress(at))
            .unwrap();
        mocks[4]
            .add_desc_chains(
                &[
                    RawDescriptor::from(Descriptor::new(at, 4, N, 2 * i as u16 + 1)),
                    RawDescriptor::from(Descriptor::new(ack(i as u64).0, 1, W, 0)),
                ],
                2 * i as u16,
            )
            .unwrap();
        ctrl_kick.write(1).unwrap();
        let mut served = false;
        while let Ok(q) = irqs.recv_timeout(wait) {
            if q == 4 {
                served = true;
                break;
            }
        }
        assert!(served, "control queue served");
    }
    assert_eq!(m.read_obj::<u8>(ack(0)).unwrap(), OK);
    assert_eq!(m.read_obj::<u8>(ack(1)).unwrap(), ERR);
    assert_eq!(
        (a0.load(Ordering::SeqCst), a1.load(Ordering::SeqCst)),
        (2, 2)
    );
    dev.reset();
}
