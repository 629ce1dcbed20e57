//! virtio-blk request tests: real descriptor chains in guest memory (virtio-queue's mock
//! driver) against an in-memory backend.

use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::process_queue;
use super::request::*;
use crate::block::BlockBackend;

const MEM: usize = 0x20_0000;
const DISK: usize = 64 * 1024;

#[derive(Clone, Default)]
struct Shared {
    data: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<Mutex<usize>>,
}

struct MemDisk(Shared);

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.0.data.lock().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut d = self.0.data.lock().unwrap();
        let o = offset as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        *self.0.flushes.lock().unwrap() += 1;
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _: bool) -> std::io::Result<()> {
        let mut d = self.0.data.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    disk: Disk,
    shared: Shared,
}

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x11_0000;
const STATUS: u64 = 0x1f_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

impl Rig {
    fn new(read_only: bool) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let shared = Shared::default();
        *shared.data.lock().unwrap() = (0..DISK).map(|i| (i % 251) as u8).collect();
        let disk = Disk::new(
            Box::new(MemDisk(shared.clone())),
            read_only,
            "berth-test-serial-0123456789",
        );
        Rig { mem, disk, shared }
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Runs one chain; returns (used length, status byte at STATUS).
    fn run(&mut self, descs: &[RawDescriptor]) -> (u32, u8) {
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let q = MockSplitQueue::create(&self.mem, GuestAddress(0), 16);
        let chain = q.build_desc_chain(descs).unwrap();
        let len = execute(&self.mem, chain, &self.disk, &mut Vec::new());
        (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn disk_bytes(&self, off: usize, len: usize) -> Vec<u8> {
        self.shared.data.lock().unwrap()[off..off + len].to_vec()
    }
}

#[test]
fn write_then_read_with_split_buffers() {
    let mut r = Rig::new(false);
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    r.mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
    r.header(T_OUT, 3);
    // Header split over two descriptors, data over three.
    let out = [
        desc(HDR, 8, 0),
        desc(HDR + 8, 8, 0),
        desc(DATA, 100, 0),
        desc(DATA + 100, 3000, 0),
        desc(DATA + 3100, 996, 0),
        desc(STATUS, 1, W),
    ];
    assert_eq!(r.run(&out), (1, S_OK));
    assert_eq!(r.disk_bytes(3 * 512, 4096), payload);

    r.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    r.header(T_IN, 3);
    let inp = [
        desc(HDR, 16, 0),
        desc(DATA, 512, W),
        desc(DATA + 512, 1536, W),
        desc(DATA + 2048, 2048, W),
        desc(STATUS, 1, W),
    ];
    assert_eq!(r.run(&inp), (4097, S_OK));
    let mut back = vec![0u8; 4096];
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, payload);
}

#[test]
fn status_shares_the_last_data_descriptor() {
    let r = Rig::new(false);
    r.header(T_IN, 0);
    let q = [desc(HDR, 16, 0), desc(DATA, 513, W)];
    r.mem.write_obj(0xeeu8, GuestAddress(DATA + 512)).unwrap();
    let chain_len = {
        let mq = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
        let chain = mq.build_desc_chain(&q).unwrap();
        execute(&r.mem, chain, &r.disk, &mut Vec::new())
    };
    assert_eq!(chain_len, 513);
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap(),
        S_OK
    );
    let mut b = vec![0u8; 512];
    r.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert_eq!(b, r.disk_bytes(0, 512));
}

#[test]
fn flush_get_id_and_unknown() {
    let mut r = Rig::new(false);
    r.header(T_FLUSH, 0);
    assert_eq!(r.run(&[desc(HDR, 16, 0), desc(STATUS, 1, W)]), (1, S_OK));
    assert_eq!(*r.shared.flushes.lock().unwrap(), 1);

    r.header(T_GET_ID, 0);
    assert_eq!(
        r.run(&[desc(HDR, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)]),
        (21, S_OK)
    );
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"berth-test-serial-01");

    r.header(99, 0);
    assert_eq!(
        r.run(&[desc(HDR, 16, 0), desc(STATUS, 1, W)]),
        (1, S_UNSUPP)
    );
}

fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn discard_and_write_zeroes() {
    let mut r = Rig::new(false);
    let mut segs = Vec::new();
    segs.extend_from_slice(&segment(1, 2, 1));
    segs.extend_from_slice(&segment(10, 1, 0));
    r.mem.write_slice(&segs, GuestAddress(DATA)).unwrap();
    r.header(T_WRITE_ZEROES, 0);
    let d = [desc(HDR, 16, 0), desc(DATA, 32, 0), desc(STATUS, 1, W)];
    assert_eq!(r.run(&d), (1, S_OK));
    assert_eq!(r.disk_bytes(512, 1024), vec![0; 1024]);
    assert_eq!(r.disk_bytes(10 * 512, 512), vec![0; 512]);
    assert_ne!(r.disk_bytes(0, 512), vec![0; 512]);

    // Discard rejects the unmap flag; nothing changes.
    r.mem
        .write_slice(&segment(0, 1, 1), GuestAddress(DATA))
        .unwrap();
    r.header(T_DISCARD, 0);
    let d = [desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)];
    assert_eq!(r.run(&d), (1, S_UNSUPP));
    assert_ne!(r.disk_bytes(0, 512), vec![0; 512]);

    // A later segment out of range fails the request before the first one is applied.
    let mut segs = Vec::new();
    segs.extend_from_slice(&segment(0, 1, 0));
    segs.extend_from_slice(&segment(u64::MAX / 512, 1, 0));
    r.mem.write_slice(&segs, GuestAddress(DATA)).unwrap();
    let d = [desc(HDR, 16, 0), desc(DATA, 32, 0), desc(STATUS, 1, W)];
    assert_eq!(r.run(&d), (1, S_IOERR));
    assert_ne!(r.disk_bytes(0, 512), vec![0; 512]);

    // Segment list not a multiple of 16 bytes.
    let d = [desc(HDR, 16, 0), desc(DATA, 20, 0), desc(STATUS, 1, W)];
    assert_eq!(r.run(&d), (1, S_UNSUPP));
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut r = Rig::new(true);
    r.header(T_OUT, 0);
    let before = r.disk_bytes(0, 512);
    r.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    let d = [desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)];
    assert_eq!(r.run(&d), (1, S_IOERR));
    r.header(T_WRITE_ZEROES, 0);
    assert_eq!(r.run(&d), (1, S_IOERR));
    assert_eq!(r.disk_bytes(0, 512), before);
}

#[test]
fn malformed_chains_get_errors_not_panics() {
    let mut r = Rig::new(false);
    // Header too short.
    r.header(T_IN, 0);
    assert_eq!(r.run(&[desc(HDR, 8, 0), desc(STATUS, 1, W)]), (1, S_IOERR));
    // Header in a device-writable descriptor (wrong direction): no readable header.
    assert_eq!(r.run(&[desc(HDR, 16, W), desc(STATUS, 1, W)]).1, S_IOERR);
    // No writable descriptor at all: nothing can be answered.
    assert_eq!(r.run(&[desc(HDR, 16, 0), desc(DATA, 512, 0)]).0, 0);
    // Out of range read, and one whose offset overflows.
    r.header(T_IN, (DISK / 512) as u64);
    assert_eq!(
        r.run(&[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)]),
        (1, S_IOERR)
    );
    r.header(T_IN, u64::MAX);
    assert_eq!(
        r.run(&[desc(HDR, 16, 0), desc(DATA, 512, W), desc(STATUS, 1, W)]),
        (1, S_IOERR)
    );
    // Data length not a multiple of the sector size.
    r.header(T_OUT, 0);
    assert_eq!(
        r.run(&[desc(HDR, 16, 0), desc(DATA, 100, 0), desc(STATUS, 1, W)]),
        (1, S_IOERR)
    );
    // Buffers outside guest memory.
    assert_eq!(
        r.run(&[
            desc(HDR, 16, 0),
            desc(MEM as u64 - 8, 512, W),
            desc(STATUS, 1, W)
        ])
        .0,
        0
    );
    assert_eq!(r.run(&[desc(u64::MAX - 4, 16, 0), desc(STATUS, 1, W)]).0, 0);
}

/// A queue whose descriptors loop, and random garbage chains: the queue code and the request
/// engine must finish without panicking.
#[test]
fn hostile_queues_terminate() {
    let r = Rig::new(false);
    let q = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
    // Descriptor 0 points at itself.
    let looped = RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 0));
    q.add_desc_chains(&[looped], 0).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    process_queue(&mut queue, &r.mem, &r.disk);

    // Pseudo-random descriptors (xorshift, fixed seed so failures reproduce).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2000 {
        let q = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
        let n = (next() % 6 + 1) as usize;
        let descs: Vec<RawDescriptor> = (0..n)
            .map(|_| {
                let addr = match next() % 4 {
                    0 => next(),
                    _ => HDR + next() % 0x10_0000,
                };
                let len = (next() % 0x3000) as u32;
                let flags = (next() % 8) as u16;
                let nxt = (next() % 20) as u16;
                RawDescriptor::from(Descriptor::new(addr, len, flags, nxt))
            })
            .collect();
        let kind =
            [T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 7][(next() % 7) as usize];
        r.header(kind, next() % 200);
        if q.add_desc_chains(&descs, 0).is_err() {
            continue;
        }
        let mut queue: Queue = q.create_queue().unwrap();
        process_queue(&mut queue, &r.mem, &r.disk);
    }
}

#[test]
fn process_queue_serves_every_chain_and_fills_the_used_ring() {
    let r = Rig::new(false);
    let q = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
    r.header(T_FLUSH, 0);
    let mut descs = Vec::new();
    for i in 0..3u64 {
        descs.push(RawDescriptor::from(Descriptor::new(
            HDR,
            16,
            VRING_DESC_F_NEXT as u16,
            (2 * i + 1) as u16,
        )));
        descs.push(RawDescriptor::from(Descriptor::new(STATUS + i, 1, W, 0)));
    }
    q.add_desc_chains(&descs, 0).unwrap();
    let mut queue: Queue = q.create_queue().unwrap();
    assert!(process_queue(&mut queue, &r.mem, &r.disk));
    assert_eq!(queue.next_used(), 3);
    assert_eq!(*r.shared.flushes.lock().unwrap(), 3);
    for i in 0..3u64 {
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(STATUS + i)).unwrap(),
            S_OK
        );
    }
}

/// The device end to end: activation serves what the driver queued before it, a kick serves
/// more, shutdown stops the worker and flushes, and the device can start again after a reset.
#[test]
fn device_serves_its_queue_on_its_worker() {
    use std::sync::mpsc;
    use std::time::Duration;

    use vmm_sys_util::eventfd::EventFd;

    use crate::virtio::testing::ChannelInterrupt;
    use crate::virtio::{ActivateContext, VirtioDevice};

    let r = Rig::new(false);
    let mut dev = super::Block::new(Box::new(MemDisk(r.shared.clone())), false, "serial");
    let q = MockSplitQueue::create(&r.mem, GuestAddress(0), 16);
    r.header(T_FLUSH, 0);
    let flush = |i: u16, status: u64| {
        [
            RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, i + 1)),
            RawDescriptor::from(Descriptor::new(status, 1, W, 0)),
        ]
    };
    q.add_desc_chains(&flush(0, STATUS), 0).unwrap();
    let (irq_tx, irqs) = mpsc::channel();
    let activate = |dev: &mut super::Block| {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = event.try_clone().unwrap();
        let ctx = ActivateContext {
            mem: r.mem.clone(),
            queues: vec![q.create_queue().unwrap()],
            queue_events: vec![event],
            interrupt: std::sync::Arc::new(ChannelInterrupt(irq_tx.clone())),
            acked_features: 0,
        };
        dev.activate(ctx).map(|()| kick)
    };
    let wait = Duration::from_secs(5);

    let kick = activate(&mut dev).unwrap();
    assert_eq!(irqs.recv_timeout(wait), Ok(0));
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
    assert_eq!(*r.shared.flushes.lock().unwrap(), 1);

    q.add_desc_chains(&flush(2, STATUS + 1), 2).unwrap();
    kick.write(1).unwrap();
    assert_eq!(irqs.recv_timeout(wait), Ok(0));
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(STATUS + 1)).unwrap(),
        S_OK
    );
    assert_eq!(*r.shared.flushes.lock().unwrap(), 2);

    dev.shutdown();
    assert_eq!(*r.shared.flushes.lock().unwrap(), 3, "shutdown flushes");
    dev.reset();
    assert!(
        activate(&mut dev).is_ok(),
        "the disk came back from the worker"
    );
}

mod concurrent;
mod raw;
