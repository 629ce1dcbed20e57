//! Worker lifecycle tests with a probe handler that reports every wakeup on a channel.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::GuestAddress;

use super::*;
use crate::virtio::testing::ChannelInterrupt;

/// Long enough for a woken worker to report; how long a quiet worker is watched.
const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);

/// (kicked queues, readable sources) of one wakeup.
type Seen = (Vec<bool>, Vec<bool>);

/// Reports each wakeup, interrupts every kicked queue, and takes its source out of the wait
/// set when it fires (without reading it) until queue 0 is kicked.
struct Probe {
    seen: Sender<Seen>,
    source: EventFd,
    served: usize,
    panic_on_kick: bool,
}

impl QueueHandler for Probe {
    type Backend = Probe;
    const QUEUES: usize = 2;

    fn sources(&self) -> Vec<RawFd> {
        vec![self.source.as_raw_fd()]
    }

    fn serve(&mut self, wake: &Wakeup, io: &mut WorkerIo) {
        assert!(!(self.panic_on_kick && self.served > 0), "probe panics");
        self.served += 1;
        let queues: Vec<bool> = (0..Self::QUEUES).map(|i| wake.queue(i)).collect();
        for (i, _) in queues.iter().enumerate().filter(|(_, &k)| k) {
            io.serve_queue(i, |_, _| true);
        }
        if wake.source(0) {
            io.watch_source(0, false);
        } else if wake.queue(0) {
            io.watch_source(0, true);
        }
        let _ = self.seen.send((queues, vec![wake.source(0)]));
    }

    fn into_backend(self) -> Probe {
        self
    }
}

struct Rig {
    worker: Worker<Probe>,
    seen: Receiver<Seen>,
    irqs: Receiver<u16>,
    irq: Arc<ChannelInterrupt>,
    /// The driver's side of the queue notifications.
    kicks: Vec<EventFd>,
    source: EventFd,
}

impl Rig {
    fn new(panic_on_kick: bool) -> Rig {
        let (seen_tx, seen) = mpsc::channel();
        let (irq_tx, irqs) = mpsc::channel();
        let source = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let probe = Probe {
            seen: seen_tx,
            source: source.try_clone().unwrap(),
            served: 0,
            panic_on_kick,
        };
        Rig {
            worker: Worker::new("probe", probe),
            seen,
            irqs,
            irq: Arc::new(ChannelInterrupt(irq_tx)),
            kicks: Vec::new(),
            source,
        }
    }

    /// Starts the worker with `queues` queues.
    fn start(&mut self, queues: usize) -> Result<(), ActivateError> {
        let events: Vec<EventFd> = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        self.kicks = events.iter().map(|e| e.try_clone().unwrap()).collect();
        let ctx = ActivateContext {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
            queues: (0..queues).map(|_| Queue::new(16).unwrap()).collect(),
            queue_events: events,
            interrupt: self.irq.clone(),
            acked_features: 0,
        };
        self.worker.start(ctx, |probe| probe)
    }

    fn kick(&self, queue: usize) {
        self.kicks[queue].write(1).unwrap();
    }

    fn next(&self) -> Seen {
        self.seen.recv_timeout(WAIT).expect("the worker woke")
    }

    fn quiet(&self) {
        assert_eq!(
            self.seen.recv_timeout(QUIET),
            Err(RecvTimeoutError::Timeout),
            "the worker woke for nothing"
        );
    }
}

#[test]
fn first_wakeup_serves_everything_then_only_what_fired() {
    let mut r = Rig::new(false);
    r.start(2).unwrap();
    assert!(r.worker.is_running());
    assert_eq!(r.next(), (vec![true, true], vec![true]));
    assert_eq!(r.irqs.recv_timeout(WAIT), Ok(0));
    assert_eq!(r.irqs.recv_timeout(WAIT), Ok(1));

    r.kick(1);
    assert_eq!(r.next(), (vec![false, true], vec![false]));
    assert_eq!(r.irqs.recv_timeout(WAIT), Ok(1));
    // The kick was consumed: no second wakeup for it.
    r.quiet();

    r.worker.stop();
    assert!(!r.worker.is_running());
    assert_eq!(r.worker.backend_mut().map(|p| p.served), Some(2));

    // The driver may start the device again; the first wakeup serves everything again.
    r.start(2).unwrap();
    assert_eq!(r.next(), (vec![true, true], vec![true]));
    r.worker.stop();
    assert_eq!(r.worker.backend_mut().map(|p| p.served), Some(3));
}

#[test]
fn an_unwatched_source_does_not_wake_the_worker() {
    let mut r = Rig::new(false);
    r.start(2).unwrap();
    // The first wakeup reports the source, so the probe stops watching it.
    assert_eq!(r.next(), (vec![true, true], vec![true]));
    r.source.write(1).unwrap();
    r.quiet();
    // Kicking queue 0 makes the probe watch the source again; it is still readable.
    r.kick(0);
    assert_eq!(r.next(), (vec![true, false], vec![false]));
    assert_eq!(r.next(), (vec![false, false], vec![true]));
    r.quiet();
}

#[test]
fn too_few_queues_fail_and_keep_the_backend() {
    let mut r = Rig::new(false);
    assert!(r.start(1).is_err());
    assert!(!r.worker.is_running());
    assert!(r.worker.backend_mut().is_some());
    r.quiet();
    r.start(2).unwrap();
    assert_eq!(r.next(), (vec![true, true], vec![true]));
    // A second start while running is refused and leaves the thread alone.
    assert!(r.start(2).is_err());
    assert!(r.worker.is_running());
}

#[test]
fn dropping_the_worker_stops_the_thread() {
    let mut r = Rig::new(false);
    r.start(2).unwrap();
    r.next();
    let Rig { worker, seen, .. } = r;
    drop(worker);
    // The thread ended and dropped the probe, which held the only sender.
    assert_eq!(seen.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn a_panicking_worker_loses_its_backend_without_panicking_the_device() {
    let mut r = Rig::new(true);
    r.start(2).unwrap();
    r.next();
    r.kick(0);
    // The probe panics on this wakeup and the thread ends.
    assert_eq!(
        r.seen.recv_timeout(WAIT),
        Err(RecvTimeoutError::Disconnected)
    );
    r.worker.stop();
    assert!(!r.worker.is_running());
    assert!(r.worker.backend_mut().is_none());
    assert!(r.start(2).is_err());
}
