//! vhost-net: the host kernel serves the NIC's queues. berth only configures it (rust-vmm's
//! `vhost` crate, kernel backend): the guest memory table, each vring's size, addresses and
//! start index, the queue's KVM ioeventfd as the kick, the irqfd of the MSI-X vector the queue
//! interrupts on as the call, and the tap as the backend. Frames then go between the tap and
//! guest memory in the kernel's vhost worker; no berth thread touches them.
//!
//! `/dev/vhost-net` is opened (and VHOST_SET_OWNER issued) once per process, during set-up:
//! after the pod drops to an unprivileged uid it could not be opened again, and a guest reboot
//! builds a new VM that reuses the same handle with its new memory table.
//!
//! The tap keeps its 12-byte virtio-net header (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), the same
//! header the guest uses with VERSION_1, so vhost passes headers through untouched:
//! VHOST_NET_F_VIRTIO_NET_HDR (vhost adding and stripping headers itself) is never acked.

use std::fs::File;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vm_memory::{GuestMemoryRegion, GuestRegionCollection};
use vmm_sys_util::eventfd::EventFd;

use super::F_MRG_RXBUF;
use crate::virtio::features;

/// The feature bits that concern the vhost-net kernel driver (ring layout and RX buffer
/// merging); everything else (checksums, segmentation) is between the guest and the tap.
pub const VHOST_RING_FEATURES: u64 =
    features::RING_INDIRECT_DESC | features::RING_EVENT_IDX | features::VERSION_1 | F_MRG_RXBUF;

/// Why vhost-net cannot serve the NIC.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// /dev/vhost-net cannot be opened (missing, no permission, module not loaded).
    #[error("cannot open /dev/vhost-net: {0}")]
    Open(String),
    /// An ioctl on the vhost fd failed.
    #[error("vhost-net {what} failed: {err}")]
    Ioctl {
        /// The request.
        what: &'static str,
        /// What the kernel said.
        err: String,
    },
    /// The kernel's vhost-net lacks a feature berth needs.
    #[error("the kernel's vhost-net lacks {0}")]
    Feature(&'static str),
    /// A queue cannot be handed to the kernel (not ready, or no MSI-X vector).
    #[error("queue {0}: {1}")]
    Queue(usize, &'static str),
}

fn ioctl_err(what: &'static str) -> impl Fn(vhost::Error) -> VhostError {
    move |e| VhostError::Ioctl {
        what,
        err: e.to_string(),
    }
}

/// One vhost-net instance: the open `/dev/vhost-net`, owned by this process.
pub struct VhostNet {
    net: KernNet<GuestMemoryAtomic<GuestMemoryMmap>>,
    /// The memory the vhost crate translates ring addresses with: the running VM's, swapped
    /// on every activation, emptied when the device stops so a stopped VM's memory is freed.
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// What the kernel offers (VHOST_GET_FEATURES).
    kernel_features: u64,
    /// Queues whose backend is set (the kernel is serving them).
    running: usize,
}

fn empty_memory() -> GuestMemoryMmap {
    GuestRegionCollection::new()
}

impl VhostNet {
    /// Opens `/dev/vhost-net` and makes this process its owner. Call during set-up, before
    /// the process gives up the right to open device files.
    pub fn open() -> Result<Self, VhostError> {
        let mem = GuestMemoryAtomic::new(empty_memory());
        let net = KernNet::new(mem.clone()).map_err(|e| {
            VhostError::Open(match e {
                vhost::Error::VhostOpen(io) => io.to_string(),
                e => e.to_string(),
            })
        })?;
        net.set_owner().map_err(ioctl_err("VHOST_SET_OWNER"))?;
        let kernel_features = net
            .get_features()
            .map_err(ioctl_err("VHOST_GET_FEATURES"))?;
        for (bit, name) in [
            (features::VERSION_1, "VIRTIO_F_VERSION_1"),
            (F_MRG_RXBUF, "VIRTIO_NET_F_MRG_RXBUF"),
        ] {
            if kernel_features & bit == 0 {
                return Err(VhostError::Feature(name));
            }
        }
        Ok(VhostNet {
            net,
            mem,
            kernel_features,
            running: 0,
        })
    }

    /// The features to ack to the kernel for what the driver accepted.
    pub fn vhost_features(&self, acked: u64) -> u64 {
        acked & VHOST_RING_FEATURES & self.kernel_features
    }

    /// Hands the queues to the kernel: queue `i` is vring `i`, kicked by `kicks[i]`, calling
    /// `calls[i]`, with `tap` as the backend. On failure every queue is stopped again.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        acked: u64,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[Option<EventFd>],
        tap: &File,
    ) -> Result<(), VhostError> {
        self.stop();
        let r = self.try_start(mem, acked, queues, kicks, calls, tap);
        if r.is_err() {
            self.running = queues.len();
            self.stop();
        }
        r
    }

    fn try_start(
        &mut self,
        mem: &GuestMemoryMmap,
        acked: u64,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[Option<EventFd>],
        tap: &File,
    ) -> Result<(), VhostError> {
        self.mem
            .lock()
            .map_err(|_| VhostError::Queue(0, "memory lock poisoned"))?
            .replace(mem.clone());
        self.net
            .set_features(self.vhost_features(acked))
            .map_err(ioctl_err("VHOST_SET_FEATURES"))?;
        let regions = memory_table(mem);
        self.net
            .set_mem_table(&regions)
            .map_err(ioctl_err("VHOST_SET_MEM_TABLE"))?;
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                return Err(VhostError::Queue(i, "not ready"));
            }
            let call = calls
                .get(i)
                .and_then(Option::as_ref)
                .ok_or(VhostError::Queue(i, "no MSI-X vector"))?;
            let kick = kicks.get(i).ok_or(VhostError::Queue(i, "no notifier"))?;
            self.net
                .set_vring_num(i, q.size())
                .map_err(ioctl_err("VHOST_SET_VRING_NUM"))?;
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: q.desc_table(),
                used_ring_addr: q.used_ring(),
                avail_ring_addr: q.avail_ring(),
                log_addr: None,
            };
            self.net
                .set_vring_addr(i, &ring)
                .map_err(ioctl_err("VHOST_SET_VRING_ADDR"))?;
            self.net
                .set_vring_base(i, q.next_avail())
                .map_err(ioctl_err("VHOST_SET_VRING_BASE"))?;
            self.net
                .set_vring_call(i, call)
                .map_err(ioctl_err("VHOST_SET_VRING_CALL"))?;
            self.net
                .set_vring_kick(i, kick)
                .map_err(ioctl_err("VHOST_SET_VRING_KICK"))?;
        }
        for i in 0..queues.len() {
            self.running = i + 1;
            self.net
                .set_backend(i, Some(tap))
                .map_err(ioctl_err("VHOST_NET_SET_BACKEND"))?;
        }
        Ok(())
    }

    /// Takes the tap away from every running queue (the kernel stops touching guest memory
    /// once this returns) and lets go of the guest memory. Safe to call when stopped.
    pub fn stop(&mut self) {
        for i in 0..self.running {
            // Failure leaves nothing to do: the fd is ours and the index was accepted before.
            let _ = self.net.set_backend(i, None);
            let _ = self.net.get_vring_base(i);
        }
        self.running = 0;
        if let Ok(guard) = self.mem.lock() {
            guard.replace(empty_memory());
        }
    }

    /// Whether the kernel is serving queues.
    pub fn is_running(&self) -> bool {
        self.running > 0
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The regions of `mem` as vhost's memory table: guest address, size, and where berth maps it.
pub fn memory_table(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .filter_map(|r| {
            let host = mem.get_host_address(r.start_addr()).ok()?;
            Some(VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: host as u64,
                ..Default::default()
            })
        })
        .collect()
}
