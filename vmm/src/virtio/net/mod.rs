//! virtio-net: one RX/TX queue pair over a tap, with the virtio-net header passed through to
//! the tap so checksum and segmentation offloads work end to end. Two datapaths serve the
//! queues: the kernel's vhost-net when berth was given a [`vhost::VhostNet`] handle
//! ([`Net::with_vhost`]), else a worker thread in berth that sleeps in epoll on the tap and the
//! queue notifications: no busy polling.

pub mod datapath;
pub mod tap;
#[cfg(test)]
mod tests;
pub mod vhost;
#[cfg(test)]
mod vhost_tests;

use std::fs::File;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use super::worker::{QueueHandler, Wakeup, Worker, WorkerIo};
use super::{features, types, ActivateContext, ActivateError, DeviceInfo, VirtioDevice};
use tap::{offload, NetBackend};

/// Queue size offered for both queues.
pub const QUEUE_SIZE: u16 = 256;

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

/// The kernel datapath of a NIC: the process's vhost-net handle and the tap it serves.
pub struct NetVhost {
    /// The vhost-net instance, opened during set-up and kept across VMs (guest reboots).
    pub handle: Arc<Mutex<vhost::VhostNet>>,
    /// The tap, as the vhost backend (the same tap the in-process datapath would use).
    pub tap: File,
    /// `vhost=on`: a failure to start vhost fails the device instead of falling back.
    pub required: bool,
}

/// A virtio-net device.
pub struct Net {
    info: DeviceInfo,
    worker: Worker<NetWorker>,
    vhost: Option<NetVhost>,
    /// The kernel is serving the queues of this activation.
    vhost_running: bool,
}

impl Net {
    /// A NIC whose queues vhost-net serves; the in-process datapath over `backend` takes over
    /// (with one log line) if vhost cannot start and `vhost.required` is false.
    pub fn with_vhost(
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        mtu: u16,
        vhost: NetVhost,
    ) -> Self {
        let mut net = Net::new(backend, mac, mtu);
        net.vhost = Some(vhost);
        net
    }

    /// Whether vhost-net is serving the queues right now.
    pub fn vhost_running(&self) -> bool {
        self.vhost_running
    }

    /// Hands the queues to vhost-net. `Ok(false)`: it failed and the in-process datapath
    /// should serve instead.
    fn start_vhost(&mut self, ctx: &ActivateContext) -> Result<bool, ActivateError> {
        let Some(v) = &self.vhost else {
            return Ok(false);
        };
        let calls: Vec<_> = (0..ctx.queues.len())
            .map(|i| ctx.interrupt.queue_irqfd(i as u16))
            .collect();
        let mut handle = v.handle.lock().expect("vhost lock poisoned");
        match handle.start(
            &ctx.mem,
            ctx.acked_features,
            &ctx.queues,
            &ctx.queue_events,
            &calls,
            &v.tap,
        ) {
            Ok(()) => Ok(true),
            Err(e) if v.required => Err(ActivateError(format!("vhost-net (vhost=on): {e}"))),
            Err(e) => {
                eprintln!(
                    "berth: network: vhost-net cannot serve the NIC ({e}); the in-process \
                     datapath takes over"
                );
                drop(handle);
                self.vhost = None;
                Ok(false)
            }
        }
    }

    /// A NIC with `mac` and `mtu` over `backend`.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6], mtu: u16) -> Self {
        let features = features::VERSION_1
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
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        Net {
            info: DeviceInfo {
                device_type: types::NET,
                pci_class: (0x02, 0x00, 0x00),
                queue_sizes: vec![QUEUE_SIZE, QUEUE_SIZE],
                features,
                config: config.to_vec(),
            },
            worker: Worker::new("virtio-net", backend),
            vhost: None,
            vhost_running: false,
        }
    }
}

impl VirtioDevice for Net {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let backend = self
            .worker
            .backend_mut()
            .ok_or_else(|| ActivateError("network backend unavailable".into()))?;
        backend
            .set_offload(tap_offloads(ctx.acked_features))
            .map_err(|e| ActivateError(format!("tap offloads: {e}")))?;
        if self.start_vhost(&ctx)? {
            self.vhost_running = true;
            return Ok(());
        }
        let mergeable = ctx.acked_features & F_MRG_RXBUF != 0;
        self.worker
            .start(ctx, |backend| NetWorker::new(backend, mergeable))
    }

    fn reset(&mut self) {
        if self.vhost_running {
            if let Some(v) = &self.vhost {
                v.handle.lock().expect("vhost lock poisoned").stop();
            }
            self.vhost_running = false;
        }
        self.worker.stop();
    }
}

impl Drop for Net {
    /// The kernel must stop using this VM's memory before it is unmapped: the vhost handle
    /// outlives the device (it serves the next VM after a guest reboot).
    fn drop(&mut self) {
        self.reset();
    }
}

/// Queue and source indices of the worker.
const RX: usize = 0;
const TX: usize = 1;
const TAP: usize = 0;

/// The worker's state for one activation: the tap, what the guest accepted, and buffers kept
/// across wakeups.
struct NetWorker {
    backend: Box<dyn NetBackend>,
    mergeable: bool,
    /// A received frame waiting for guest RX buffers.
    pending: Option<Vec<u8>>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
}

impl NetWorker {
    fn new(backend: Box<dyn NetBackend>, mergeable: bool) -> Self {
        NetWorker {
            backend,
            mergeable,
            pending: None,
            tx_buf: Vec::new(),
            rx_buf: vec![0u8; datapath::MAX_FRAME],
        }
    }
}

impl QueueHandler for NetWorker {
    type Backend = Box<dyn NetBackend>;
    const QUEUES: usize = 2;
    const THREAD: sandbox::ThreadKind = sandbox::ThreadKind::Net;

    fn sources(&self) -> Vec<RawFd> {
        vec![self.backend.as_raw_fd()]
    }

    fn serve(&mut self, wake: &Wakeup, io: &mut WorkerIo) {
        if wake.queue(TX) {
            io.serve_queue(TX, |queue, mem| {
                datapath::transmit(queue, mem, self.backend.as_mut(), &mut self.tx_buf)
            });
        }
        if wake.source(TAP) || wake.queue(RX) {
            let mut drained = true;
            io.serve_queue(RX, |queue, mem| {
                let (irq, d) = datapath::receive_with(
                    queue,
                    mem,
                    self.backend.as_mut(),
                    self.mergeable,
                    &mut self.pending,
                    &mut self.rx_buf,
                );
                drained = d;
                irq
            });
            // While the guest has no RX buffers the tap is left out of epoll, so a full guest
            // does not wake the worker for every frame the host sends.
            io.watch_source(TAP, drained);
        }
    }

    fn into_backend(self) -> Box<dyn NetBackend> {
        self.backend
    }
}
