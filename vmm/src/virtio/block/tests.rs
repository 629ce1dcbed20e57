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

// ---------------------------------------------------------------------------------------------
// Concurrency and multiqueue: the device with its thread pool, against a disk whose requests
// can be held back.

mod concurrent {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use super::super::request::*;
    use super::super::Block;
    use crate::block::BlockBackend;
    use crate::virtio::testing::ChannelInterrupt;
    use crate::virtio::{ActivateContext, VirtioDevice};

    const MEM: usize = 0x40_0000;
    const DISK: usize = 1 << 20;
    /// Requests touching this sector wait until the test opens the gate.
    const SLOW: u64 = 64;
    /// Requests touching this sector take 100 ms.
    const DELAYED: u64 = 128;
    const W: u16 = super::W;
    const WAIT: Duration = Duration::from_secs(10);

    /// A disk with a write cache: `flush` copies what was written to `durable`. Requests on
    /// sector SLOW block until `open`; `inflight`/`peak` count requests inside the backend.
    #[derive(Default)]
    struct Gated {
        data: Mutex<Vec<u8>>,
        durable: Mutex<Vec<u8>>,
        open: Mutex<bool>,
        cv: Condvar,
        inflight: AtomicUsize,
        peak: AtomicUsize,
    }

    impl Gated {
        fn new() -> Arc<Self> {
            let g = Gated::default();
            *g.data.lock().unwrap() = vec![0x11; DISK];
            *g.durable.lock().unwrap() = vec![0x11; DISK];
            Arc::new(g)
        }
        fn open_gate(&self) {
            *self.open.lock().unwrap() = true;
            self.cv.notify_all();
        }
        fn enter(&self, offset: u64) {
            let n = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            if offset == DELAYED * 512 {
                std::thread::sleep(Duration::from_millis(100));
            }
            if offset == SLOW * 512 {
                // Bounded, so a failing test ends instead of hanging in the device's stop.
                let open = self.open.lock().unwrap();
                drop(self.cv.wait_timeout_while(open, WAIT, |o| !*o).unwrap());
            }
        }
        fn leave(&self) {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    struct GatedDisk(Arc<Gated>);

    impl BlockBackend for GatedDisk {
        fn size(&self) -> u64 {
            DISK as u64
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.0.enter(offset);
            let o = offset as usize;
            buf.copy_from_slice(&self.0.data.lock().unwrap()[o..o + buf.len()]);
            self.0.leave();
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.0.enter(offset);
            let o = offset as usize;
            self.0.data.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
            self.0.leave();
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            self.0.enter(0);
            let data = self.0.data.lock().unwrap().clone();
            *self.0.durable.lock().unwrap() = data;
            self.0.leave();
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Guest memory with `n` mock queues (queue k's rings at k * 0x1000) and one request
    /// area per (queue, descriptor slot).
    struct Guest {
        mem: GuestMemoryMmap,
        queues: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
        next_desc: Vec<u16>,
    }

    /// Where request `slot` of queue `q` keeps its header, data and status.
    fn area(q: usize, slot: u16) -> u64 {
        0x10_0000 + (q as u64 * 16 + u64::from(slot)) * 0x2000
    }

    impl Guest {
        fn new(n: usize) -> Guest {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
            // The mock queues borrow the memory; leaking one small mapping per test is fine.
            let leaked: &'static GuestMemoryMmap = Box::leak(Box::new(mem.clone()));
            let queues = (0..n)
                .map(|k| MockSplitQueue::create(leaked, GuestAddress(k as u64 * 0x1000), 16))
                .collect();
            Guest {
                mem,
                queues,
                next_desc: vec![0; n],
            }
        }

        /// Queues a request of `kind` at `sector` with `len` data bytes (`fill` for writes)
        /// on queue `q`; returns its head index.
        fn submit(&mut self, q: usize, kind: u32, sector: u64, len: u32, fill: u8) -> u16 {
            let head = self.next_desc[q];
            self.next_desc[q] += 3;
            let base = area(q, head);
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(base)).unwrap();
            self.mem
                .write_slice(&vec![fill; len as usize], GuestAddress(base + 0x100))
                .unwrap();
            self.mem
                .write_obj(0xeeu8, GuestAddress(base + 0x1f00))
                .unwrap();
            let data_flags = if kind == T_IN { W } else { 0 };
            let next = VRING_DESC_F_NEXT as u16;
            let mut descs = vec![RawDescriptor::from(Descriptor::new(
                base,
                16,
                next,
                head + 1,
            ))];
            if len > 0 {
                descs.push(RawDescriptor::from(Descriptor::new(
                    base + 0x100,
                    len,
                    data_flags | next,
                    head + 2,
                )));
            }
            descs.push(RawDescriptor::from(Descriptor::new(base + 0x1f00, 1, W, 0)));
            self.queues[q].add_desc_chains(&descs, head).unwrap();
            if len == 0 {
                self.next_desc[q] -= 1;
            }
            head
        }

        fn status(&self, q: usize, head: u16) -> u8 {
            self.mem
                .read_obj(GuestAddress(area(q, head) + 0x1f00))
                .unwrap()
        }

        /// Heads in queue `q`'s used ring, in completion order.
        fn used(&self, q: usize) -> Vec<u16> {
            let used = self.queues[q].used();
            let n = used.idx().load();
            (0..n)
                .map(|i| used.ring().ref_at(i as usize).unwrap().load().id() as u16)
                .collect()
        }

        fn wait_used(&self, q: usize, n: usize) -> Vec<u16> {
            let start = Instant::now();
            loop {
                let u = self.used(q);
                if u.len() >= n {
                    return u;
                }
                assert!(
                    start.elapsed() < WAIT,
                    "queue {q}: {} of {n} requests completed: {u:?}",
                    u.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Activates `dev` on the guest's queues; queues in `disabled` are left as a driver that
    /// did not enable them leaves them. Returns the kick eventfds and the interrupts.
    fn activate(
        dev: &mut Block,
        g: &Guest,
        disabled: &[usize],
    ) -> (Vec<EventFd>, mpsc::Receiver<u16>) {
        let (tx, rx) = mpsc::channel();
        let mut queues = Vec::new();
        let mut events = Vec::new();
        let mut kicks = Vec::new();
        for (k, mq) in g.queues.iter().enumerate() {
            let mut q: Queue = mq.create_queue().unwrap();
            if disabled.contains(&k) {
                q.set_ready(false);
            }
            queues.push(q);
            let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            kicks.push(e.try_clone().unwrap());
            events.push(e);
        }
        let ctx = ActivateContext {
            mem: g.mem.clone(),
            queues,
            queue_events: events,
            interrupt: Arc::new(ChannelInterrupt(tx)),
            acked_features: 0,
        };
        dev.activate(ctx).unwrap();
        (kicks, rx)
    }

    fn device(g: &Arc<Gated>, queues: u16) -> Block {
        Block::new(Box::new(GatedDisk(g.clone())), false, "conc").with_queues(queues)
    }

    /// A request stuck in the backend does not hold up the ones behind it: they complete
    /// first (out of order), and the slow one completes once it can. On the single-threaded
    /// device this timed out waiting for the second request.
    #[test]
    fn a_slow_request_does_not_block_later_ones() {
        let gate = Gated::new();
        let mut g = Guest::new(1);
        let mut dev = device(&gate, 1);
        let slow = g.submit(0, T_IN, SLOW, 4096, 0);
        let fast = g.submit(0, T_IN, 0, 4096, 0);
        let (_kicks, _irqs) = activate(&mut dev, &g, &[]);
        assert_eq!(g.wait_used(0, 1), vec![fast]);
        assert_eq!(g.status(0, fast), S_OK);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(g.used(0), vec![fast], "the slow read is still held");
        gate.open_gate();
        assert_eq!(g.wait_used(0, 2), vec![fast, slow]);
        assert_eq!(g.status(0, slow), S_OK);
        dev.reset();
    }

    /// FLUSH makes durable every write the guest saw complete before submitting it, and
    /// does not wait for a write still in flight (which the guest has not seen complete).
    #[test]
    fn flush_covers_completed_writes_and_not_later_ones() {
        let gate = Gated::new();
        let mut g = Guest::new(1);
        let mut dev = device(&gate, 1);
        let (kicks, _irqs) = activate(&mut dev, &g, &[]);
        let held = g.submit(0, T_OUT, SLOW, 512, 0xaa);
        let done = g.submit(0, T_OUT, 8, 4096, 0xbb);
        kicks[0].write(1).unwrap();
        assert_eq!(g.wait_used(0, 1), vec![done]);
        let flush = g.submit(0, T_FLUSH, 0, 0, 0);
        kicks[0].write(1).unwrap();
        assert_eq!(g.wait_used(0, 2), vec![done, flush]);
        assert_eq!(g.status(0, flush), S_OK);
        let durable = gate.durable.lock().unwrap().clone();
        assert_eq!(&durable[8 * 512..8 * 512 + 4096], &[0xbb; 4096][..]);
        assert_eq!(
            durable[SLOW as usize * 512],
            0x11,
            "the held write is not in yet"
        );
        gate.open_gate();
        assert_eq!(g.wait_used(0, 3), vec![done, flush, held]);
        dev.shutdown();
        assert_eq!(gate.durable.lock().unwrap()[SLOW as usize * 512], 0xaa);
    }

    /// Never more requests inside the backend than the pool has threads, however many the
    /// driver queues.
    #[test]
    fn requests_in_flight_are_bounded_by_the_pool() {
        let gate = Gated::new();
        let mut g = Guest::new(1);
        let mut dev = device(&gate, 1).with_threads(3);
        for _ in 0..5 {
            g.submit(0, T_IN, SLOW, 512, 0);
        }
        let (_kicks, _irqs) = activate(&mut dev, &g, &[]);
        let start = Instant::now();
        while gate.inflight.load(Ordering::SeqCst) < 3 {
            assert!(start.elapsed() < WAIT, "3 requests never got in");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(gate.peak.load(Ordering::SeqCst), 3);
        gate.open_gate();
        assert_eq!(g.wait_used(0, 5).len(), 5);
        assert_eq!(gate.peak.load(Ordering::SeqCst), 3);
        dev.reset();
    }

    /// Four queues, each served (concurrently: a held request on queue 0 does not stop the
    /// others) and each interrupting under its own number; a queue the driver did not enable
    /// is never touched, even when kicked.
    #[test]
    fn every_enabled_queue_is_served_and_a_disabled_one_is_not() {
        let gate = Gated::new();
        let mut g = Guest::new(5);
        let mut dev = device(&gate, 5);
        assert_eq!(dev.info.queue_sizes.len(), 5);
        assert_ne!(dev.info.features & super::super::F_MQ, 0);
        assert_eq!(&dev.info.config[34..36], &5u16.to_le_bytes());
        let held = g.submit(0, T_IN, SLOW, 512, 0);
        let mut heads = Vec::new();
        for q in 1..5 {
            heads.push(g.submit(q, T_OUT, q as u64, 512, q as u8));
        }
        let (kicks, irqs) = activate(&mut dev, &g, &[4]);
        kicks[4].write(1).unwrap();
        for q in 1..4 {
            assert_eq!(g.wait_used(q, 1), vec![heads[q - 1]]);
            assert_eq!(gate.data.lock().unwrap()[q * 512], q as u8);
        }
        let mut seen: Vec<u16> = (0..3).map(|_| irqs.recv_timeout(WAIT).unwrap()).collect();
        seen.sort();
        assert_eq!(seen, vec![1, 2, 3]);
        std::thread::sleep(Duration::from_millis(50));
        assert!(g.used(4).is_empty(), "the disabled queue was served");
        assert_eq!(gate.data.lock().unwrap()[4 * 512], 0x11);
        gate.open_gate();
        assert_eq!(g.wait_used(0, 1), vec![held]);
        dev.reset();
    }

    /// A reset ends the pool after the requests in flight, not after everything the driver
    /// queued: a guest keeping its ring full cannot hold up a reset or a shutdown.
    #[test]
    fn reset_does_not_drain_the_ring() {
        let gate = Gated::new();
        let mut g = Guest::new(1);
        let mut dev = device(&gate, 1).with_threads(1);
        for _ in 0..5 {
            g.submit(0, T_IN, DELAYED, 512, 0);
        }
        let (_kicks, _irqs) = activate(&mut dev, &g, &[]);
        g.wait_used(0, 1);
        let t = Instant::now();
        dev.reset();
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "reset took {:?}",
            t.elapsed()
        );
        assert!(
            g.used(0).len() <= 2,
            "{} requests served after the reset",
            g.used(0).len()
        );
    }

    /// Hostile set-ups: no queue enabled, a queue whose avail index runs far ahead, a count
    /// of queues and notifiers that do not match. Nothing panics or spins; the device stops
    /// promptly and starts again.
    #[test]
    fn hostile_queue_setups() {
        let gate = Gated::new();
        let g = Guest::new(2);
        let mut dev = device(&gate, 2);
        let (kicks, _irqs) = activate(&mut dev, &g, &[0, 1]);
        kicks[0].write(1).unwrap();
        kicks[1].write(1).unwrap();
        dev.reset();

        // Queue 0's avail index 1000 ahead of the device; queue 1 carries a real request.
        let mut g = Guest::new(2);
        g.mem
            .write_obj(1000u16, g.queues[0].avail_addr().unchecked_add(2))
            .unwrap();
        let h = g.submit(1, T_OUT, 1, 512, 0x42);
        let (kicks, _irqs) = activate(&mut dev, &g, &[]);
        kicks[0].write(1).unwrap();
        assert_eq!(g.wait_used(1, 1), vec![h]);
        let t = Instant::now();
        dev.reset();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "stopping took {:?}",
            t.elapsed()
        );

        let (tx, _rx) = mpsc::channel();
        let bad = ActivateContext {
            mem: g.mem.clone(),
            queues: vec![g.queues[0].create_queue().unwrap()],
            queue_events: vec![],
            interrupt: Arc::new(ChannelInterrupt(tx)),
            acked_features: 0,
        };
        assert!(dev.activate(bad).is_err());
        let (_k, _i) = activate(&mut dev, &g, &[]);
        dev.reset();
    }

    /// Many writers on many queues at once against distinct sectors: every write lands, the
    /// used rings account for each request once.
    #[test]
    fn many_queues_many_requests() {
        let gate = Gated::new();
        let mut g = Guest::new(4);
        let mut dev = device(&gate, 4);
        let (kicks, _irqs) = activate(&mut dev, &g, &[]);
        for round in 0..5u64 {
            for (q, kick) in kicks.iter().enumerate() {
                g.submit(
                    q,
                    T_OUT,
                    100 + round * 4 + q as u64,
                    512,
                    (round * 4) as u8 + q as u8,
                );
                kick.write(1).unwrap();
            }
        }
        for q in 0..4 {
            let mut u = g.wait_used(q, 5);
            u.sort();
            assert_eq!(u, vec![0, 3, 6, 9, 12]);
        }
        let d = gate.data.lock().unwrap();
        for i in 0..20u64 {
            assert_eq!(d[(100 + i) as usize * 512], i as u8);
        }
        drop(d);
        dev.reset();
    }
}

/// The vectored path of a raw disk: `preadv`/`pwritev` straight between the file and the
/// chain's guest memory, here spread over three regions (two adjacent, one after a hole).
mod raw {
    use std::fs::OpenOptions;
    use std::io::Write as _;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::block::raw::RawDisk;

    /// Regions: [0, 2 MiB) and [2 MiB, 3 MiB) adjacent (a buffer can straddle them), then a
    /// hole, then [4 MiB, 5 MiB).
    const R2: u64 = 0x20_0000;
    const R3: u64 = 0x40_0000;
    const END: u64 = 0x50_0000;
    const SIZE: usize = 1024 * 1024;

    struct RawRig {
        mem: GuestMemoryMmap,
        disk: Disk,
        file: tempfile::NamedTempFile,
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 253) as u8)
            .collect()
    }

    impl RawRig {
        fn new() -> RawRig {
            let mem = GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), R2 as usize),
                (GuestAddress(R2), 0x10_0000),
                (GuestAddress(R3), 0x10_0000),
            ])
            .unwrap();
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(&pattern(SIZE, 7)).unwrap();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(file.path())
                .unwrap();
            let disk = Disk::new(
                Box::new(RawDisk::from_file(f, false).unwrap()),
                false,
                "raw",
            );
            RawRig { mem, disk, file }
        }

        fn header(&self, kind: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        }

        /// Runs one chain; returns (used length, status byte, bounce buffer capacity).
        fn run(&self, descs: &[RawDescriptor], queue: u16) -> (u32, u8, usize) {
            self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
            let q = MockSplitQueue::create(&self.mem, GuestAddress(0), queue);
            let chain = q.build_desc_chain(descs).unwrap();
            let mut bounce = Vec::new();
            let len = execute(&self.mem, chain, &self.disk, &mut bounce);
            let status = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
            (len, status, bounce.capacity())
        }

        fn file_bytes(&self, off: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0u8; len];
            self.file.as_file().read_exact_at(&mut b, off).unwrap();
            b
        }

        fn mem_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0u8; len];
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            b
        }
    }

    /// Data buffers (address, length) over all three regions, one straddling R1/R2: 16 KiB.
    const BUFS: [(u64, u32); 5] = [
        (0x1f_f000, 0x800),     // R1
        (R2 - 0x600, 0x1000),   // R1 | R2
        (R3 + 0x200, 0x1400),   // R3
        (R2 + 0x8_0000, 0x400), // R2
        (END - 0x1000, 0x1000), // the last page of guest memory
    ];

    fn data_descs(flags: u16) -> Vec<RawDescriptor> {
        BUFS.iter().map(|&(a, l)| desc(a, l, flags)).collect()
    }

    fn chain(data: Vec<RawDescriptor>) -> Vec<RawDescriptor> {
        let mut d = vec![desc(HDR, 8, 0), desc(HDR + 8, 8, 0)];
        d.extend(data);
        d.push(desc(STATUS, 1, W));
        d
    }

    fn gathered(r: &RawRig) -> Vec<u8> {
        BUFS.iter()
            .flat_map(|&(a, l)| r.mem_bytes(a, l as usize))
            .collect()
    }

    #[test]
    fn read_into_buffers_across_regions_without_bouncing() {
        let r = RawRig::new();
        let total: usize = BUFS.iter().map(|b| b.1 as usize).sum();
        assert_eq!(total, 16384);
        r.header(T_IN, 5);
        let (len, status, bounce) = r.run(&chain(data_descs(W)), 16);
        assert_eq!((len, status), (total as u32 + 1, S_OK));
        assert_eq!(gathered(&r), r.file_bytes(5 * 512, total));
        // Straight into guest memory: the bounce buffer was never used.
        assert_eq!(bounce, 0);
    }

    #[test]
    fn write_from_buffers_across_regions_without_bouncing() {
        let r = RawRig::new();
        let payload = pattern(16384, 99);
        let mut at = 0;
        for &(a, l) in &BUFS {
            let l = l as usize;
            r.mem
                .write_slice(&payload[at..at + l], GuestAddress(a))
                .unwrap();
            at += l;
        }
        r.header(T_OUT, 9);
        let before = r.file_bytes(0, SIZE);
        let (len, status, bounce) = r.run(&chain(data_descs(0)), 16);
        assert_eq!((len, status, bounce), (1, S_OK, 0));
        let mut expect = before;
        expect[9 * 512..9 * 512 + 16384].copy_from_slice(&payload);
        assert_eq!(r.file_bytes(0, SIZE), expect);
    }

    /// A data buffer that runs past the end of guest memory, or into the hole between
    /// regions: no status can be written, and neither the file nor guest memory changes.
    #[test]
    fn buffers_outside_guest_memory_change_nothing() {
        let r = RawRig::new();
        let before = r.file_bytes(0, SIZE);
        for bad in [(END - 0x200, 0x400), (R2 + 0x10_0000 - 0x200, 0x400)] {
            let mark = pattern(0x200, 3);
            r.mem.write_slice(&mark, GuestAddress(bad.0)).unwrap();
            r.header(T_IN, 0);
            let data = vec![desc(DATA, 512, W), desc(bad.0, bad.1, W)];
            assert_eq!(r.run(&chain(data), 16).0, 0);
            assert_eq!(r.mem_bytes(bad.0, 0x200), mark);
            assert_eq!(r.mem_bytes(STATUS, 1), [0xee]);
            r.header(T_OUT, 0);
            let data = vec![desc(DATA, 512, 0), desc(bad.0, bad.1, 0)];
            assert_eq!(r.run(&chain(data), 16).0, 0);
            assert_eq!(r.mem_bytes(STATUS, 1), [0xee]);
            assert_eq!(r.file_bytes(0, SIZE), before);
        }
    }

    /// The file shrank under the disk (another process truncated it): the read stops at the
    /// end of the file with an error status, and the used length counts exactly the bytes
    /// that reached guest memory.
    #[test]
    fn short_read_at_end_of_file_reports_what_was_read() {
        let r = RawRig::new();
        let end = (SIZE - 8192) as u64 + 1536;
        r.file.as_file().set_len(end).unwrap();
        let mark = pattern(16384, 5);
        for &(a, l) in &BUFS {
            r.mem
                .write_slice(&mark[..l as usize], GuestAddress(a))
                .unwrap();
        }
        let before = gathered(&r);
        // 16 KiB from 8 KiB before the old end: 1536 bytes are still in the file.
        let start = SIZE as u64 - 8192 - 8192;
        r.header(T_IN, start / 512);
        let (len, status, _) = r.run(&chain(data_descs(W)), 16);
        let got = (end - start) as usize;
        assert_eq!((len, status), (got as u32 + 1, S_IOERR));
        let after = gathered(&r);
        assert_eq!(after[..got], r.file_bytes(start, got)[..]);
        assert_eq!(after[got..], before[got..]);
    }

    /// A chain of more pieces than one `preadv` may take (indirect tables allow 65535
    /// descriptors) goes through the bounce buffer, with the same result.
    #[test]
    fn very_long_chains_bounce() {
        let r = RawRig::new();
        let n = crate::block::MAX_IOVS + 10;
        let data: Vec<_> = (0..n as u64).map(|i| desc(R3 + i * 512, 512, W)).collect();
        r.header(T_IN, 0);
        let (len, status, bounce) = r.run(&chain(data), 2048);
        assert_eq!((len, status), ((n * 512) as u32 + 1, S_OK));
        assert_eq!(r.mem_bytes(R3, n * 512), r.file_bytes(0, n * 512));
        assert!(bounce > 0);

        let payload = pattern(n * 512, 11);
        r.mem.write_slice(&payload, GuestAddress(R3)).unwrap();
        let data: Vec<_> = (0..n as u64).map(|i| desc(R3 + i * 512, 512, 0)).collect();
        r.header(T_OUT, 0);
        assert_eq!(r.run(&chain(data), 2048).1, S_OK);
        assert_eq!(r.file_bytes(0, n * 512), payload);
    }

    /// The checks before any I/O hold on the vectored path too.
    #[test]
    fn range_alignment_and_read_only_are_checked() {
        let r = RawRig::new();
        let before = r.file_bytes(0, SIZE);
        // Past the end of the disk by one sector.
        r.header(T_OUT, (SIZE / 512) as u64 - 31);
        assert_eq!(r.run(&chain(data_descs(0)), 16).1, S_IOERR);
        r.header(T_IN, (SIZE / 512) as u64 - 31);
        let (len, status, _) = r.run(&chain(data_descs(W)), 16);
        assert_eq!((len, status), (1, S_IOERR));
        // Not a whole number of sectors.
        r.header(T_OUT, 0);
        assert_eq!(r.run(&chain(vec![desc(DATA, 700, 0)]), 16).1, S_IOERR);
        assert_eq!(r.file_bytes(0, SIZE), before);

        let f = OpenOptions::new().read(true).open(r.file.path()).unwrap();
        let ro = Disk::new(Box::new(RawDisk::from_file(f, true).unwrap()), false, "ro");
        let rig = RawRig { disk: ro, ..r };
        rig.header(T_OUT, 0);
        assert_eq!(rig.run(&chain(data_descs(0)), 16).1, S_IOERR);
        assert_eq!(rig.file_bytes(0, SIZE), before);
    }
}
