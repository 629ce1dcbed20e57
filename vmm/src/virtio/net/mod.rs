//! virtio-net: RX/TX queue pairs over a tap, with the virtio-net header passed through to the
//! tap so checksum and segmentation offloads work end to end. With more than one pair
//! (multiqueue, one tap queue per pair) the device also has a control queue, where the guest
//! says how many pairs it uses ([`ctrl`]). Two datapaths serve the queues: the kernel's
//! vhost-net, one instance per pair, when berth was given vhost handles ([`Net::multiqueue`],
//! [`Net::with_vhost`]); else one worker thread in berth that sleeps in epoll on the taps and
//! the queue notifications of every pair: no busy polling (docs/network.md says why one).

pub mod ctrl;
pub mod datapath;
#[cfg(test)]
mod mq_tests;
pub mod tap;
#[cfg(test)]
mod tests;
pub mod vhost;
#[cfg(test)]
pub(crate) mod vhost_tests;

use std::fs::File;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;

use super::worker::{QueueHandler, Wakeup, Worker, WorkerIo};
use super::{features, types, ActivateContext, ActivateError, DeviceInfo, VirtioDevice};
use tap::{offload, NetBackend};

/// Queue size offered for every queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the control queue.
pub const CTRL_QUEUE_SIZE: u16 = 64;
/// Most queue pairs a NIC gets (each takes a tap queue, two MSI-X vectors and, with vhost-net,
/// a vhost instance and its kernel thread).
pub const MAX_QUEUE_PAIRS: u16 = 16;

const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_GUEST_ECN: u64 = 1 << 9;
const F_GUEST_UFO: u64 = 1 << 10;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_HOST_ECN: u64 = 1 << 13;
const F_HOST_UFO: u64 = 1 << 14;
pub(crate) const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;
/// The control virtqueue.
pub const F_CTRL_VQ: u64 = 1 << 17;
/// Multiqueue: `max_virtqueue_pairs` in the config, VQ_PAIRS_SET on the control queue.
pub const F_MQ: u64 = 1 << 22;

const STATUS_LINK_UP: u16 = 1;

/// The TUNSETOFFLOAD flags matching what the guest accepted.
pub fn tap_offloads(acked: u64) -> u32 {
    let mut f = 0;
    if acked & F_GUEST_CSUM != 0 {
        f |= offload::CSUM;
        if acked & F_GUEST_TSO4 != 0 {
            f |= offload::TSO4;
        }
        if acked & F_GUEST_TSO6 != 0 {
            f |= offload::TSO6;
        }
        if acked & F_GUEST_ECN != 0 {
            f |= offload::TSO_ECN;
        }
        if acked & F_GUEST_UFO != 0 {
            f |= offload::UFO;
        }
    }
    f
}

/// The kernel datapath of one queue pair: the process's vhost-net handle for it and the tap
/// queue it serves.
pub struct NetVhost {
    /// The vhost-net instance, opened during set-up and kept across VMs (guest reboots).
    pub handle: Arc<Mutex<vhost::VhostNet>>,
    /// The pair's tap queue, as the vhost backend (the same the in-process datapath would use).
    pub tap: File,
    /// `vhost=on`: a failure to start vhost fails the device instead of falling back.
    pub required: bool,
}

/// A virtio-net device.
pub struct Net {
    info: DeviceInfo,
    /// Queue pairs (and tap queues).
    pairs: u16,
    worker: Worker<NetWorker>,
    /// With vhost-net and multiqueue: serves the control queue (the kernel serves the rest).
    ctrl_worker: Worker<CtrlWorker>,
    /// One per pair, or none.
    vhost: Vec<NetVhost>,
    /// The kernel is serving the queues of this activation.
    vhost_running: bool,
}

impl Net {
    /// A NIC with one queue pair, `mac` and `mtu` over `backend`, served in process.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6], mtu: u16) -> Self {
        Net::multiqueue(vec![backend], mac, mtu, Vec::new())
    }

    /// A NIC with one queue pair whose queues vhost-net serves; the in-process datapath over
    /// `backend` takes over (with one log line) if vhost cannot start and `vhost.required` is
    /// false.
    pub fn with_vhost(
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        mtu: u16,
        vhost: NetVhost,
    ) -> Self {
        Net::multiqueue(vec![backend], mac, mtu, vec![vhost])
    }

    /// A NIC with one queue pair per backend (a multiqueue tap's queues, in order; at most
    /// [`MAX_QUEUE_PAIRS`], extra ones are ignored) and, when `vhost` has one handle per
    /// pair, served by vhost-net. More than one pair offers VIRTIO_NET_F_MQ and the control
    /// queue.
    pub fn multiqueue(
        mut backends: Vec<Box<dyn NetBackend>>,
        mac: [u8; 6],
        mtu: u16,
        mut vhost: Vec<NetVhost>,
    ) -> Self {
        backends.truncate(usize::from(MAX_QUEUE_PAIRS));
        let pairs = backends.len().max(1) as u16;
        if vhost.len() != backends.len() {
            vhost.clear();
        }
        let mut features = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_CSUM
            | F_GUEST_CSUM
            | F_MTU
            | F_MAC
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_GUEST_ECN
            | F_GUEST_UFO
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_HOST_ECN
            | F_HOST_UFO
            | F_MRG_RXBUF
            | F_STATUS;
        let mut queue_sizes = vec![QUEUE_SIZE; 2 * usize::from(pairs)];
        if pairs > 1 {
            features |= F_MQ | F_CTRL_VQ;
            queue_sizes.push(CTRL_QUEUE_SIZE);
        }
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&pairs.to_le_bytes()); // max_virtqueue_pairs
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        let ctrl_taps = vhost
            .iter()
            .filter_map(|v| v.tap.try_clone().ok())
            .collect();
        Net {
            info: DeviceInfo {
                device_type: types::NET,
                pci_class: (0x02, 0x00, 0x00),
                queue_sizes,
                features,
                config: config.to_vec(),
            },
            pairs,
            worker: Worker::new("virtio-net", backends),
            ctrl_worker: Worker::new("virtio-net-ctrl", ctrl_taps),
            vhost,
            vhost_running: false,
        }
    }

    /// Whether vhost-net is serving the queues right now.
    pub fn vhost_running(&self) -> bool {
        self.vhost_running
    }

    /// Number of queue pairs.
    pub fn queue_pairs(&self) -> u16 {
        self.pairs
    }

    /// Hands each pair's queues to its vhost-net instance. `Ok(false)`: it failed and the
    /// in-process datapath should serve instead.
    fn start_vhost(&mut self, ctx: &ActivateContext) -> Result<bool, ActivateError> {
        if self.vhost.is_empty() {
            return Ok(false);
        }
        let calls: Vec<_> = (0..ctx.queues.len())
            .map(|i| ctx.interrupt.queue_irqfd(i as u16))
            .collect();
        let mut failed = None;
        for (p, v) in self.vhost.iter().enumerate() {
            let q = 2 * p..2 * p + 2;
            if ctx.queues.len() < q.end || ctx.queue_events.len() < q.end {
                failed = Some(format!("queue pair {p} missing"));
                break;
            }
            // A driver without multiqueue sets up only the first pair.
            if p > 0 && !ctx.queues[q.start].ready() && !ctx.queues[q.start + 1].ready() {
                continue;
            }
            let r = v.handle.lock().expect("vhost lock poisoned").start(
                &ctx.mem,
                ctx.acked_features,
                &ctx.queues[q.clone()],
                &ctx.queue_events[q.clone()],
                &calls[q],
                &v.tap,
            );
            if let Err(e) = r {
                failed = Some(format!("queue pair {p}: {e}"));
                break;
            }
        }
        let Some(e) = failed else {
            return Ok(true);
        };
        self.stop_vhost();
        if self.vhost.first().is_some_and(|v| v.required) {
            return Err(ActivateError(format!("vhost-net (vhost=on): {e}")));
        }
        eprintln!(
            "berth: network: vhost-net cannot serve the NIC ({e}); the in-process datapath \
             takes over"
        );
        self.vhost.clear();
        Ok(false)
    }

    fn stop_vhost(&mut self) {
        for v in &self.vhost {
            v.handle.lock().expect("vhost lock poisoned").stop();
        }
    }

    /// Only the first pair's tap queue takes frames until the guest asks for more (the spec:
    /// a multiqueue device starts with one pair).
    fn first_pair_only(&mut self) -> Result<(), ActivateError> {
        if self.pairs < 2 {
            return Ok(());
        }
        let backends = self
            .worker
            .backend_mut()
            .ok_or_else(|| ActivateError("network backend unavailable".into()))?;
        for (p, b) in backends.iter_mut().enumerate() {
            b.set_queue_enabled(p == 0)
                .map_err(|e| ActivateError(format!("tap queue {p}: {e}")))?;
        }
        Ok(())
    }
}

impl VirtioDevice for Net {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let backends = self
            .worker
            .backend_mut()
            .ok_or_else(|| ActivateError("network backend unavailable".into()))?;
        for b in backends.iter_mut() {
            b.set_offload(tap_offloads(ctx.acked_features))
                .map_err(|e| ActivateError(format!("tap offloads: {e}")))?;
        }
        let mq = self.pairs > 1 && ctx.acked_features & F_MQ != 0;
        self.first_pair_only()?;
        let max_pairs = if mq { self.pairs } else { 1 };
        let ctrl = 2 * usize::from(self.pairs);
        if self.start_vhost(&ctx)? {
            self.vhost_running = true;
            if ctx.queues.len() > ctrl && ctx.queue_events.len() > ctrl {
                // The control queue stays in berth: a worker for it alone, so the data
                // queues' kicks reach only the kernel.
                let queue = ctx.queues.swap_remove(ctrl);
                let event = ctx.queue_events.swap_remove(ctrl);
                let sub = ActivateContext {
                    mem: ctx.mem.clone(),
                    queues: vec![queue],
                    queue_events: vec![event],
                    interrupt: Arc::new(Remap {
                        inner: ctx.interrupt.clone(),
                        queue: ctrl as u16,
                    }),
                    acked_features: ctx.acked_features,
                };
                if let Err(e) = self
                    .ctrl_worker
                    .start(sub, |taps| CtrlWorker { taps, max_pairs })
                {
                    self.stop_vhost();
                    self.vhost_running = false;
                    return Err(e);
                }
            }
            return Ok(());
        }
        let mergeable = ctx.acked_features & F_MRG_RXBUF != 0;
        let pairs = usize::from(self.pairs);
        self.worker.start(ctx, |backends| {
            NetWorker::new(backends, mergeable, pairs, mq.then_some(ctrl), max_pairs)
        })
    }

    fn reset(&mut self) {
        if self.vhost_running {
            self.stop_vhost();
            self.vhost_running = false;
        }
        self.ctrl_worker.stop();
        self.worker.stop();
    }
}

impl Drop for Net {
    /// The kernel must stop using this VM's memory before it is unmapped: the vhost handles
    /// outlive the device (they serve the next VM after a guest reboot).
    fn drop(&mut self) {
        self.reset();
    }
}

/// Interrupts for a worker that serves one queue of a device as its queue 0.
struct Remap {
    inner: Arc<dyn super::VirtioInterrupt>,
    queue: u16,
}

impl super::VirtioInterrupt for Remap {
    fn notify_queue(&self, _queue: u16) {
        self.inner.notify_queue(self.queue);
    }
    fn notify_config(&self) {
        self.inner.notify_config();
    }
}

/// Attaches the tap queues of the first `pairs` pairs and detaches the others.
fn steer(fds: impl Iterator<Item = RawFd>, pairs: u16) -> bool {
    let mut ok = true;
    for (p, fd) in fds.enumerate() {
        ok &= tap::set_queue_enabled(fd, p < usize::from(pairs)).is_ok();
    }
    ok
}

/// The control queue's worker with vhost-net: VQ_PAIRS_SET attaches and detaches tap queues.
struct CtrlWorker {
    taps: Vec<File>,
    max_pairs: u16,
}

impl QueueHandler for CtrlWorker {
    type Backend = Vec<File>;
    const QUEUES: usize = 1;
    const THREAD: sandbox::ThreadKind = sandbox::ThreadKind::Net;

    fn serve(&mut self, wake: &Wakeup, io: &mut WorkerIo) {
        if wake.queue(0) {
            let (taps, max) = (&self.taps, self.max_pairs);
            io.serve_queue(0, |queue, mem| {
                ctrl::serve_queue(queue, mem, max, &mut |n| {
                    use std::os::fd::AsRawFd;
                    steer(taps.iter().map(|t| t.as_raw_fd()), n)
                })
            });
        }
    }

    fn into_backend(self) -> Vec<File> {
        self.taps
    }
}

/// The in-process worker's state for one activation: the tap queues, what the guest accepted,
/// and buffers kept across wakeups. Queue `2p` is pair `p`'s RX, `2p + 1` its TX, source `p`
/// its tap queue; the control queue (multiqueue) comes after the pairs.
struct NetWorker {
    backends: Vec<Box<dyn NetBackend>>,
    mergeable: bool,
    pairs: usize,
    ctrl: Option<usize>,
    max_pairs: u16,
    /// Per pair, a received frame waiting for guest RX buffers.
    pending: Vec<Option<Vec<u8>>>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
}

impl NetWorker {
    fn new(
        backends: Vec<Box<dyn NetBackend>>,
        mergeable: bool,
        pairs: usize,
        ctrl: Option<usize>,
        max_pairs: u16,
    ) -> Self {
        NetWorker {
            pending: (0..backends.len()).map(|_| None).collect(),
            backends,
            mergeable,
            pairs,
            ctrl,
            max_pairs,
            tx_buf: Vec::new(),
            rx_buf: vec![0u8; datapath::MAX_FRAME],
        }
    }
}

impl QueueHandler for NetWorker {
    type Backend = Vec<Box<dyn NetBackend>>;
    const QUEUES: usize = 2;
    const THREAD: sandbox::ThreadKind = sandbox::ThreadKind::Net;

    fn queue_count(&self) -> usize {
        2 * self.pairs + usize::from(self.ctrl.is_some())
    }

    fn sources(&self) -> Vec<RawFd> {
        self.backends.iter().map(|b| b.as_raw_fd()).collect()
    }

    fn serve(&mut self, wake: &Wakeup, io: &mut WorkerIo) {
        for p in 0..self.backends.len().min(self.pairs) {
            let (rx, tx) = (2 * p, 2 * p + 1);
            let backend = &mut self.backends[p];
            if wake.queue(tx) {
                let buf = &mut self.tx_buf;
                io.serve_queue(tx, |queue, mem| {
                    datapath::transmit(queue, mem, backend.as_mut(), buf)
                });
            }
            if wake.source(p) || wake.queue(rx) {
                let mut drained = true;
                let (pending, rx_buf, mergeable) =
                    (&mut self.pending[p], &mut self.rx_buf, self.mergeable);
                io.serve_queue(rx, |queue, mem| {
                    let (irq, d) = datapath::receive_with(
                        queue,
                        mem,
                        backend.as_mut(),
                        mergeable,
                        pending,
                        rx_buf,
                    );
                    drained = d;
                    irq
                });
                // While the guest has no RX buffers the tap is left out of epoll, so a full
                // guest does not wake the worker for every frame the host sends.
                io.watch_source(p, drained);
            }
        }
        if let Some(c) = self.ctrl {
            if wake.queue(c) {
                let (backends, max) = (&mut self.backends, self.max_pairs);
                io.serve_queue(c, |queue, mem| {
                    ctrl::serve_queue(queue, mem, max, &mut |n| {
                        let mut ok = true;
                        for (p, b) in backends.iter_mut().enumerate() {
                            ok &= b.set_queue_enabled(p < usize::from(n)).is_ok();
                        }
                        ok
                    })
                });
            }
        }
    }

    fn into_backend(self) -> Vec<Box<dyn NetBackend>> {
        self.backends
    }
}
