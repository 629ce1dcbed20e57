//! Virtio devices and their PCI transport.
//!
//! A device implements [`VirtioDevice`]: its identity, features and configuration space (one
//! [`DeviceInfo`]), and what to do when the driver sets DRIVER_OK ([`VirtioDevice::activate`])
//! or resets it. The transport in [`pci`] does everything else (feature negotiation, queue
//! setup, notifications, MSI-X). An active device serves its queues on a thread of its own,
//! run by [`worker`]: the device only says what to do when a queue or one of its file
//! descriptors wakes it.

pub mod balloon;
pub mod block;
pub mod input;
pub mod net;
pub mod pci;
pub mod worker;

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device type ids.
pub mod types {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
    /// Input device (the VNC tablet).
    pub const INPUT: u32 = 18;
}

/// Feature bits shared by all devices.
pub mod features {
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event/avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Virtio 1.x (modern) device.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// How a device raises interrupts once active.
pub trait VirtioInterrupt: Send + Sync {
    /// Tells the driver that queue `queue` has used buffers.
    fn notify_queue(&self, queue: u16);
    /// Tells the driver the configuration space changed.
    fn notify_config(&self);
    /// An eventfd that interrupts the driver for queue `queue` when written, for a backend
    /// that raises interrupts from the kernel (vhost-net): the irqfd of the MSI-X vector the
    /// driver chose for the queue, masking included. `None` when there is no such fd (no
    /// vector chosen, or a transport without irqfds).
    fn queue_irqfd(&self, _queue: u16) -> Option<EventFd> {
        None
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them, by index.
    pub queues: Vec<Queue>,
    /// Notification eventfds, one per queue, written when the driver kicks the queue.
    pub queue_events: Vec<EventFd>,
    /// Interrupt delivery.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot activate virtio device: {0}")]
pub struct ActivateError(pub String);

/// What the driver sees of a device before starting it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Device type (see [`types`]).
    pub device_type: u32,
    /// PCI class code (class, subclass, programming interface).
    pub pci_class: (u8, u8, u8),
    /// Maximum size of each queue; the length is the number of queues.
    pub queue_sizes: Vec<u16>,
    /// Features the device offers.
    pub features: u64,
    /// The device-specific configuration space.
    pub config: Vec<u8>,
}

/// A virtio device model. The transport asks it for its identity through the provided methods,
/// which read [`VirtioDevice::info`].
pub trait VirtioDevice: Send {
    /// Identity, queues, features and configuration space.
    fn info(&self) -> &DeviceInfo;
    /// Device type (see [`types`]).
    fn device_type(&self) -> u32 {
        self.info().device_type
    }
    /// PCI class code for the device (class, subclass, programming interface).
    fn pci_class(&self) -> (u8, u8, u8) {
        self.info().pci_class
    }
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        &self.info().queue_sizes
    }
    /// Features the device offers.
    fn features(&self) -> u64 {
        self.info().features
    }
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.info().config, offset, data);
    }
    /// Writes the device-specific configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the queues the driver set up.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device and returns it to its initial state (the driver may set it up again).
    fn reset(&mut self);
    /// The VM is stopping: stop and make everything durable.
    fn shutdown(&mut self) {
        self.reset();
    }
}

/// Copies `data.len()` bytes of a config structure at `offset`; reads past its end read zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// Serves every chain the driver made available: `serve` handles one chain and returns the
/// bytes it wrote into it (the used length). Returns whether the driver must be interrupted.
///
/// With EVENT_IDX, notifications stay off while draining and are re-armed after; a chain that
/// raced in while re-arming is picked up by another pass, but only while the ring is sane: an
/// avail index more than a queue ahead pops nothing and would loop forever.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> bool {
    let mut used = false;
    loop {
        if queue.disable_notification(mem).is_err() {
            return used;
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = serve(chain);
            if queue.add_used(mem, head, len).is_err() {
                return used;
            }
            used = true;
        }
        match queue.enable_notification(mem) {
            Ok(true) if queue.iter(mem).is_ok() => continue,
            _ => break,
        }
    }
    used && queue.needs_notification(mem).unwrap_or(true)
}

/// Test doubles shared by the device and worker tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::mpsc::Sender;

    use super::VirtioInterrupt;

    /// Sends the index of every queue the device interrupts.
    pub struct ChannelInterrupt(pub Sender<u16>);

    impl VirtioInterrupt for ChannelInterrupt {
        fn notify_queue(&self, queue: u16) {
            let _ = self.0.send(queue);
        }
        fn notify_config(&self) {}
    }
}
