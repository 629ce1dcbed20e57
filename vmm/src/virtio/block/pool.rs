//! The threads of an active virtio-blk device: a small pool serving all of its request queues
//! at once, so requests run concurrently and complete in any order (virtio allows it).
//!
//! Every thread waits in one shared epoll set on the kicks of the queues the driver enabled,
//! a "work" eventfd and a stop eventfd. A kick marks its queue pending; a thread claims one
//! pending queue at a time (waking another thread through the work eventfd when more are
//! pending, so one slow request never holds up another queue). It takes one chain at a time
//! from the queue (under that queue's lock), runs it without any lock, then publishes its used
//! entry (under the lock again) and interrupts the driver when the ring asks for it. When it
//! takes a chain and more are waiting, it marks the queue pending again and wakes an idle
//! thread for them; when the ring is empty it re-arms the driver's notifications, so the next
//! kick wakes an idle thread. A thread that finishes a request goes back to the same queue, so
//! a queue with work never waits for a kick that notification suppression held back.
//!
//! Bounds: at most one request per thread is in flight (so never more than the pool size,
//! which is at most the queue size), and each thread's bounce buffer holds at most
//! [`request::CHUNK`] bytes, whatever the driver queues.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Disk};
use crate::virtio::{ActivateContext, VirtioInterrupt};

/// Epoll tokens besides the queues (queue slot `i` is token `i`).
const STOP: u64 = u64::MAX;
const WORK: u64 = u64::MAX - 1;

/// A queue the driver enabled.
struct Slot {
    /// The driver's queue number (for interrupts).
    index: u16,
    queue: Mutex<Queue>,
    kick: EventFd,
    /// Kicked, or left with chains waiting: a thread should look at it.
    pending: AtomicBool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding it left the ring as a crash of the device would; serving on
        // is no worse than that.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the threads share.
struct Shared {
    disk: Arc<Disk>,
    mem: GuestMemoryMmap,
    slots: Vec<Slot>,
    irq: Arc<dyn VirtioInterrupt>,
    epoll: Epoll,
    work: EventFd,
    /// Set before the stop eventfd: a thread ends after its current request even while the
    /// driver keeps the ring full (a reset must not wait for the guest to stop submitting).
    stopping: AtomicBool,
}

/// The running pool.
pub struct Pool {
    stop: EventFd,
    shared: Arc<Shared>,
    threads: Vec<sandbox::Handle<()>>,
}

impl Pool {
    /// Starts `threads` threads serving the queues in `ctx` that the driver enabled (a queue
    /// it left disabled is never touched, and kicks on it are ignored).
    pub fn start(disk: Arc<Disk>, ctx: ActivateContext, threads: usize) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let work = EventFd::new(libc::EFD_NONBLOCK)?;
        let mut slots = Vec::new();
        for (i, (queue, kick)) in ctx.queues.into_iter().zip(ctx.queue_events).enumerate() {
            if !queue.ready() {
                continue;
            }
            let Ok(index) = u16::try_from(i) else {
                break;
            };
            slots.push(Slot {
                index,
                queue: Mutex::new(queue),
                kick,
                // The driver may have queued requests before it set DRIVER_OK.
                pending: AtomicBool::new(true),
            });
        }
        let fds = slots
            .iter()
            .enumerate()
            .map(|(t, s)| (s.kick.as_raw_fd(), t as u64))
            .chain([(work.as_raw_fd(), WORK), (stop.as_raw_fd(), STOP)]);
        for (fd, token) in fds {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        work.write(1)?;
        let shared = Arc::new(Shared {
            disk,
            mem: ctx.mem,
            slots,
            irq: ctx.interrupt,
            epoll,
            work,
            stopping: AtomicBool::new(false),
        });
        let mut pool = Pool {
            stop,
            shared: shared.clone(),
            threads: Vec::with_capacity(threads),
        };
        for _ in 0..threads.max(1) {
            let sh = shared.clone();
            // On failure, dropping the pool stops the threads already started.
            let t = sandbox::spawn("virtio-blk", sandbox::ThreadKind::Block, move || run(&sh))?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    /// Stops every thread after its current request; returns whether all ended normally.
    pub fn stop(mut self) -> bool {
        self.halt()
    }

    fn halt(&mut self) -> bool {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The stop eventfd is never read, so every thread sees it. If even that write fails,
        // joining would wait forever: leave the threads (they hold only Arcs).
        if self.stop.write(1).is_err() {
            self.threads.clear();
            return false;
        }
        let mut ok = true;
        for t in self.threads.drain(..) {
            ok &= t.join().is_ok();
        }
        ok
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One thread: wait, serve the pending queues, repeat until stopped.
fn run(sh: &Shared) {
    let mut buf = Vec::new();
    let mut ready = vec![EpollEvent::default(); sh.slots.len() + 2];
    loop {
        if sh.stopping.load(Ordering::SeqCst) {
            return;
        }
        while let Some(slot) = claim(sh) {
            serve(sh, slot, &mut buf);
        }
        let n = match sh.epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for ev in &ready[..n] {
            match ev.data() {
                STOP => return,
                // Non-blocking: another thread may have read it already.
                WORK => {
                    let _ = sh.work.read();
                }
                t => {
                    if let Some(s) = usize::try_from(t).ok().and_then(|t| sh.slots.get(t)) {
                        let _ = s.kick.read();
                        s.pending.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

/// Claims a pending queue; wakes another thread when more are pending.
fn claim(sh: &Shared) -> Option<&Slot> {
    let slot = sh
        .slots
        .iter()
        .find(|s| s.pending.swap(false, Ordering::SeqCst))?;
    if sh.slots.iter().any(|s| s.pending.load(Ordering::SeqCst)) {
        let _ = sh.work.write(1);
    }
    Some(slot)
}

/// Serves `slot` one request at a time until its ring is empty.
fn serve(sh: &Shared, slot: &Slot, buf: &mut Vec<u8>) {
    loop {
        if sh.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Some(chain) = take(sh, slot, &mut slot.lock()) else {
            return;
        };
        let head = chain.head_index();
        let len = request::execute(&sh.mem, chain, &sh.disk, buf);
        let mut q = slot.lock();
        if q.add_used(&sh.mem, head, len).is_err() {
            // The used ring is outside guest memory: nothing more can be answered.
            return;
        }
        let notify = q.needs_notification(&sh.mem).unwrap_or(true);
        drop(q);
        if notify {
            sh.irq.notify_queue(slot.index);
        }
    }
}

/// Takes the next chain of `q`. Leaves the driver's notifications off while more chains
/// wait (and wakes an idle thread for them), and on when the ring is empty.
fn take<'m>(
    sh: &'m Shared,
    slot: &Slot,
    q: &mut Queue,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    let mem = &sh.mem;
    // Twice at most: once more for a chain that raced in while notifications were re-armed.
    // A hostile avail index (more than a queue ahead) pops nothing, so this cannot spin.
    for _ in 0..2 {
        q.disable_notification(mem).ok()?;
        if let Some(chain) = q.pop_descriptor_chain(mem) {
            let waiting = q
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .map(|a| a.0 != q.next_avail())
                .unwrap_or(false);
            if waiting || matches!(q.enable_notification(mem), Ok(true)) {
                slot.pending.store(true, Ordering::SeqCst);
                let _ = sh.work.write(1);
            }
            return Some(chain);
        }
        match q.enable_notification(mem) {
            Ok(true) => continue,
            _ => return None,
        }
    }
    None
}
