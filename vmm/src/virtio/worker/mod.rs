//! The worker thread an active virtio device runs. It sleeps in epoll on the queue
//! notifications, on any file descriptors the device adds (a tap), and on a stop eventfd, and
//! hands what woke it to the device's [`QueueHandler`]. Nothing polls.
//!
//! A device keeps a [`Worker`]. It holds the device's backend while the device is idle, moves
//! it onto the thread on [`Worker::start`] (the device's `activate`), and gets it back on
//! [`Worker::stop`] (reset, shutdown, or dropping the device), so the driver can start the
//! device again. A worker that panicked loses its backend: the device then refuses to start,
//! and nothing panics on the device's side.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, ActivateError, VirtioInterrupt};

/// The device-specific half of a worker: what to do when it wakes.
pub trait QueueHandler: Send + 'static {
    /// What outlives one activation (a disk, a tap): moved into the handler when the device
    /// starts and taken back out when it stops.
    type Backend: Send + 'static;
    /// How many queues the handler serves (queue `i` is the driver's queue `i`); starting
    /// with fewer fails.
    const QUEUES: usize;
    /// The seccomp allow-list its thread runs under (see the sandbox crate).
    const THREAD: sandbox::ThreadKind = sandbox::ThreadKind::Block;

    /// How many queues this activation serves, at least [`QueueHandler::QUEUES`] (a device
    /// whose queue count depends on its configuration, such as a multiqueue NIC, says so
    /// here); the driver's queues past it are not watched.
    fn queue_count(&self) -> usize {
        Self::QUEUES
    }

    /// File descriptors besides the queue notifications that wake the worker when readable,
    /// known as sources 0, 1, ... in [`Wakeup::source`] and [`WorkerIo::watch_source`]. All
    /// are watched at start.
    fn sources(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// Serves what `wake` reports. The notifications of the kicked queues are already
    /// cleared, so a kick that lands while serving wakes the worker again. The first call
    /// reports everything ready, since the driver may have queued work before activation.
    fn serve(&mut self, wake: &Wakeup, io: &mut WorkerIo);

    /// Ends the activation and gives the backend back.
    fn into_backend(self) -> Self::Backend;
}

/// What woke the worker: which queues were kicked and which sources are readable.
#[derive(Debug)]
pub struct Wakeup {
    queues: Vec<bool>,
    sources: Vec<bool>,
}

impl Wakeup {
    fn all(queues: usize, sources: usize) -> Self {
        Wakeup {
            queues: vec![true; queues],
            sources: vec![true; sources],
        }
    }

    fn clear(&mut self) {
        self.queues.fill(false);
        self.sources.fill(false);
    }

    /// Marks what epoll token `token` stands for.
    fn set(&mut self, token: u64) {
        let Ok(t) = usize::try_from(token) else {
            return;
        };
        let n = self.queues.len();
        let slot = match t.checked_sub(n) {
            None => self.queues.get_mut(t),
            Some(s) => self.sources.get_mut(s),
        };
        if let Some(s) = slot {
            *s = true;
        }
    }

    /// Whether the driver kicked queue `index`.
    pub fn queue(&self, index: usize) -> bool {
        self.queues.get(index).copied().unwrap_or(false)
    }

    /// Whether source `index` (see [`QueueHandler::sources`]) is readable.
    pub fn source(&self, index: usize) -> bool {
        self.sources.get(index).copied().unwrap_or(false)
    }
}

/// A source the handler may take out of the wait set.
struct Source {
    fd: RawFd,
    watched: bool,
}

/// What a handler serves with: the queues, guest memory, the driver's interrupts, and control
/// over its sources.
pub struct WorkerIo {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    irq: Arc<dyn VirtioInterrupt>,
    epoll: Epoll,
    sources: Vec<Source>,
}

/// Epoll token of the stop eventfd; queue `i` is token `i`, source `k` token `QUEUES + k`.
const STOP: u64 = u64::MAX;

impl WorkerIo {
    /// Runs `serve` over queue `index` (see [`super::drain_queue`]) and interrupts the driver
    /// when it returns true.
    pub fn serve_queue(
        &mut self,
        index: usize,
        serve: impl FnOnce(&mut Queue, &GuestMemoryMmap) -> bool,
    ) {
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if serve(queue, &self.mem) {
            // Queue indices are below QUEUES, which fits the transport's u16 queue numbers.
            self.irq.notify_queue(index as u16);
        }
    }

    /// Keeps source `index` in the wait set, or takes it out: a source the handler cannot
    /// serve for now (a tap while the guest has no RX buffers) would otherwise wake the worker
    /// for nothing, again and again, since epoll reports readable fds until they are read.
    pub fn watch_source(&mut self, index: usize, watched: bool) {
        let base = self.queues.len();
        let Some(s) = self.sources.get_mut(index) else {
            return;
        };
        if s.watched == watched {
            return;
        }
        let op = if watched {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        let ev = EpollEvent::new(EventSet::IN, (base + index) as u64);
        // On failure the state stays as it was, so the next call tries again.
        if self.epoll.ctl(op, s.fd, ev).is_ok() {
            s.watched = watched;
        }
    }
}

enum State<B> {
    Idle(B),
    Running {
        stop: EventFd,
        thread: sandbox::Handle<B>,
    },
    /// The backend went down with a panicked worker (or a thread that could not start).
    Lost,
}

/// A device's worker: its backend while idle, its thread while active.
pub struct Worker<H: QueueHandler> {
    name: &'static str,
    state: State<H::Backend>,
}

impl<H: QueueHandler> Worker<H> {
    /// An idle worker holding `backend`; `name` names the thread (and errors).
    pub fn new(name: &'static str, backend: H::Backend) -> Self {
        Worker {
            name,
            state: State::Idle(backend),
        }
    }

    /// The backend, while the device is not running.
    pub fn backend_mut(&mut self) -> Option<&mut H::Backend> {
        match &mut self.state {
            State::Idle(b) => Some(b),
            _ => None,
        }
    }

    /// Whether a worker thread is running.
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    /// Starts the thread with the queues in `ctx`, serving them with the handler `make` builds
    /// from the backend. When it fails before the thread exists, the backend stays here.
    pub fn start(
        &mut self,
        ctx: ActivateContext,
        make: impl FnOnce(H::Backend) -> H,
    ) -> Result<(), ActivateError> {
        let name = self.name;
        let backend = match std::mem::replace(&mut self.state, State::Lost) {
            State::Idle(b) => b,
            other => {
                let why = if matches!(other, State::Lost) {
                    "backend lost to an earlier failure"
                } else {
                    "already running"
                };
                self.state = other;
                return Err(ActivateError(format!("{name}: {why}")));
            }
        };
        if ctx.queues.len() < H::QUEUES || ctx.queue_events.len() < H::QUEUES {
            self.state = State::Idle(backend);
            return Err(ActivateError(format!("{name} needs {} queues", H::QUEUES)));
        }
        let handler = make(backend);
        let (io, events, stop) = match setup(&handler, ctx) {
            Ok(s) => s,
            Err(e) => {
                self.state = State::Idle(handler.into_backend());
                return Err(ActivateError(format!("{name}: {e}")));
            }
        };
        let stop_here = match stop.try_clone() {
            Ok(s) => s,
            Err(e) => {
                self.state = State::Idle(handler.into_backend());
                return Err(ActivateError(format!("{name}: {e}")));
            }
        };
        // A failed spawn drops the closure and the backend with it: the state stays Lost.
        let thread = sandbox::spawn(name, H::THREAD, move || run(handler, io, events, stop))
            .map_err(|e| ActivateError(format!("{name}: {e}")))?;
        self.state = State::Running {
            stop: stop_here,
            thread,
        };
        Ok(())
    }

    /// Stops the thread, if one runs, and takes the backend back.
    pub fn stop(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Lost) {
            State::Running { stop, thread } => {
                // Joining a worker that was not told to stop would wait forever.
                if stop.write(1).is_err() {
                    State::Lost
                } else {
                    match thread.join() {
                        Ok(backend) => State::Idle(backend),
                        Err(_) => State::Lost,
                    }
                }
            }
            other => other,
        };
    }
}

impl<H: QueueHandler> Drop for Worker<H> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The epoll set (queue notifications, the handler's sources, a stop eventfd) and what the
/// thread takes along, built before the thread so a failure leaves the backend with the
/// device.
fn setup<H: QueueHandler>(
    handler: &H,
    ctx: ActivateContext,
) -> std::io::Result<(WorkerIo, Vec<EventFd>, EventFd)> {
    let epoll = Epoll::new()?;
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    let count = handler.queue_count().max(H::QUEUES);
    let queues: Vec<Queue> = ctx.queues.into_iter().take(count).collect();
    let events: Vec<EventFd> = ctx.queue_events.into_iter().take(count).collect();
    let sources: Vec<Source> = handler
        .sources()
        .into_iter()
        .map(|fd| Source { fd, watched: true })
        .collect();
    let fds = events
        .iter()
        .map(|e| e.as_raw_fd())
        .chain(sources.iter().map(|s| s.fd))
        .enumerate()
        .map(|(token, fd)| (fd, token as u64))
        .chain([(stop.as_raw_fd(), STOP)]);
    for (fd, token) in fds {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    let io = WorkerIo {
        mem: ctx.mem,
        queues,
        irq: ctx.interrupt,
        epoll,
        sources,
    };
    Ok((io, events, stop))
}

/// The thread: serve, sleep in epoll, repeat until told to stop (or epoll fails).
fn run<H: QueueHandler>(
    mut handler: H,
    mut io: WorkerIo,
    events: Vec<EventFd>,
    _stop: EventFd,
) -> H::Backend {
    let mut wake = Wakeup::all(events.len(), io.sources.len());
    let mut ready = vec![EpollEvent::default(); events.len() + io.sources.len() + 1];
    loop {
        for (event, _) in events.iter().zip(&wake.queues).filter(|(_, &k)| k) {
            // Non-blocking: an eventfd already read (or never written) just says WouldBlock.
            let _ = event.read();
        }
        handler.serve(&wake, &mut io);
        let n = loop {
            match io.epoll.wait(-1, &mut ready) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return handler.into_backend(),
            }
        };
        wake.clear();
        for ev in &ready[..n] {
            match ev.data() {
                STOP => return handler.into_backend(),
                token => wake.set(token),
            }
        }
    }
}

#[cfg(test)]
mod tests;
