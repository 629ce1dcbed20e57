//! virtio-net: one RX/TX queue pair over a tap, with the virtio-net header passed through to
//! the tap so checksum and segmentation offloads work end to end. A worker thread sleeps in
//! epoll on the tap and the queue notifications: no busy polling.

pub mod datapath;
pub mod tap;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    features, read_config_bytes, types, ActivateContext, ActivateError, VirtioDevice,
    VirtioInterrupt,
};
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
const F_MRG_RXBUF: u64 = 1 << 15;
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

/// A virtio-net device.
pub struct Net {
    backend: Option<Box<dyn NetBackend>>,
    features: u64,
    config: [u8; 12],
    worker: Option<(EventFd, JoinHandle<Box<dyn NetBackend>>)>,
    queue_sizes: [u16; 2],
}

impl Net {
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
            backend: Some(backend),
            features,
            config,
            worker: None,
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
        }
    }

    fn stop_worker(&mut self) {
        if let Some((stop, thread)) = self.worker.take() {
            let _ = stop.write(1);
            self.backend = thread.join().ok();
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        types::NET
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        (0x02, 0x00, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut backend = self
            .backend
            .take()
            .ok_or_else(|| ActivateError("network backend unavailable".into()))?;
        let fail = |backend: Box<dyn NetBackend>, msg: String, me: &mut Self| {
            me.backend = Some(backend);
            Err(ActivateError(msg))
        };
        if let Err(e) = backend.set_offload(tap_offloads(ctx.acked_features)) {
            return fail(backend, format!("tap offloads: {e}"), self);
        }
        let mut queues = ctx.queues.into_iter();
        let mut events = ctx.queue_events.into_iter();
        let (Some(rx), Some(tx), Some(rx_evt), Some(tx_evt)) =
            (queues.next(), queues.next(), events.next(), events.next())
        else {
            return fail(backend, "virtio-net needs two queues".into(), self);
        };
        let stop = match EventFd::new(libc::EFD_NONBLOCK) {
            Ok(s) => s,
            Err(e) => return fail(backend, e.to_string(), self),
        };
        let stop2 = stop.try_clone().map_err(|e| ActivateError(e.to_string()))?;
        let worker = Worker {
            backend,
            rx,
            tx,
            rx_evt,
            tx_evt,
            stop: stop2,
            mem: ctx.mem,
            irq: ctx.interrupt,
            mergeable: ctx.acked_features & F_MRG_RXBUF != 0,
        };
        let thread = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || worker.run())
            .map_err(|e| ActivateError(e.to_string()))?;
        self.worker = Some((stop, thread));
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

struct Worker {
    backend: Box<dyn NetBackend>,
    rx: Queue,
    tx: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    stop: EventFd,
    mem: GuestMemoryMmap,
    irq: Arc<dyn VirtioInterrupt>,
    mergeable: bool,
}

const TOKEN_TAP: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_STOP: u64 = 3;

impl Worker {
    fn run(mut self) -> Box<dyn NetBackend> {
        let Ok(epoll) = Epoll::new() else {
            return self.backend;
        };
        let tap_fd = self.backend.as_raw_fd();
        let fds = [
            (tap_fd, TOKEN_TAP),
            (self.rx_evt.as_raw_fd(), TOKEN_RX),
            (self.tx_evt.as_raw_fd(), TOKEN_TX),
            (self.stop.as_raw_fd(), TOKEN_STOP),
        ];
        for (fd, token) in fds {
            if epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .is_err()
            {
                return self.backend;
            }
        }
        let mut pending: Option<Vec<u8>> = None;
        // While the guest has no RX buffers the tap is left out of epoll, so a full guest does
        // not wake the worker for every frame the host sends.
        let mut tap_watched = true;
        let mut tx_buf = Vec::new();
        let mut rx_buf = vec![0u8; datapath::MAX_FRAME];
        let mut events = vec![EpollEvent::default(); 4];
        // Work queued before activation is picked up at once.
        let mut work = [true, true, true];
        loop {
            if work[TOKEN_TX as usize] {
                let _ = self.tx_evt.read();
                if datapath::transmit(&mut self.tx, &self.mem, self.backend.as_mut(), &mut tx_buf) {
                    self.irq.notify_queue(1);
                }
            }
            if work[TOKEN_TAP as usize] || work[TOKEN_RX as usize] {
                let _ = self.rx_evt.read();
                let (irq, drained) = datapath::receive_with(
                    &mut self.rx,
                    &self.mem,
                    self.backend.as_mut(),
                    self.mergeable,
                    &mut pending,
                    &mut rx_buf,
                );
                if irq {
                    self.irq.notify_queue(0);
                }
                let want = drained;
                if want != tap_watched {
                    let op = if want {
                        ControlOperation::Add
                    } else {
                        ControlOperation::Delete
                    };
                    let _ = epoll.ctl(op, tap_fd, EpollEvent::new(EventSet::IN, TOKEN_TAP));
                    tap_watched = want;
                }
            }
            work = [false; 3];
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return self.backend,
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return self.backend,
                    t => work[t as usize] = true,
                }
            }
        }
    }
}
