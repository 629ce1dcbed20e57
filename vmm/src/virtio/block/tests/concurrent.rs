//! Concurrency and multiqueue: the device with its thread pool, against a disk whose requests
//! can be held back.

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
fn activate(dev: &mut Block, g: &Guest, disabled: &[usize]) -> (Vec<EventFd>, mpsc::Receiver<u16>) {
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
