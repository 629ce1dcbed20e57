//! The virtio 1.x PCI transport ("modern" virtio-pci): vendor capabilities that point into
//! BAR 0 at the common configuration, notification, ISR and device configuration regions, plus
//! MSI-X. Queue notifications arrive through ioeventfds; interrupts leave through irqfds.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{features, status, ActivateContext, VirtioDevice, VirtioInterrupt};
use crate::irq::MsiRouter;
use crate::pci::config::{Bar, BarMove, ConfigSpace, PciIds};
use crate::pci::msix::{self, Msix};
use crate::pci::{PciBus, PciDevice, PciError};

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_SIZE: u64 = 0x40;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_SIZE: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
/// Each queue notifies at its own address, so one ioeventfd per queue needs no data match.
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;

const VENDOR_CAP: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;
const CFG_PCI: u8 = 5;

/// "No vector" for config and queue MSI-X vectors.
pub const NO_VECTOR: u16 = 0xffff;
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// Registers queue notification addresses with the hypervisor.
pub trait IoEvents: Send + Sync {
    /// Makes a guest write at `addr` signal `fd` instead of exiting to the VMM.
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
    /// Undoes [`IoEvents::register`].
    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
}

/// [`IoEvents`] through KVM ioeventfds.
pub struct KvmIoEvents(pub Arc<kvm_ioctls::VmFd>);

impl IoEvents for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.0
            .register_ioevent(
                fd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(
                fd,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// Interrupts of an active device: MSI-X vectors chosen by the driver, and the ISR bits.
struct PciInterrupt {
    msix: Arc<Mutex<Msix>>,
    isr: Arc<AtomicU8>,
    config_vector: Arc<AtomicU16>,
    queue_vectors: Arc<Vec<AtomicU16>>,
}

impl VirtioInterrupt for PciInterrupt {
    fn notify_queue(&self, queue: u16) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        if let Some(v) = self.queue_vectors.get(usize::from(queue)) {
            let v = v.load(Ordering::SeqCst);
            if v != NO_VECTOR {
                self.msix.lock().expect("msix lock poisoned").signal(v);
            }
        }
    }

    fn queue_irqfd(&self, queue: u16) -> Option<EventFd> {
        // The vector is read once, at activation: drivers choose it before DRIVER_OK (Linux
        // never changes it afterwards).
        let v = self
            .queue_vectors
            .get(usize::from(queue))?
            .load(Ordering::SeqCst);
        if v == NO_VECTOR {
            return None;
        }
        self.msix.lock().expect("msix lock poisoned").irqfd(v)
    }

    fn notify_config(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        let v = self.config_vector.load(Ordering::SeqCst);
        if v != NO_VECTOR {
            self.msix.lock().expect("msix lock poisoned").signal(v);
        }
    }
}

/// A virtio device on PCI.
pub struct VirtioPci {
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    io_events: Arc<dyn IoEvents>,
    msix: Arc<Mutex<Msix>>,
    msix_cap: usize,
    pci_cfg_cap: usize,
    isr: Arc<AtomicU8>,
    config_vector: Arc<AtomicU16>,
    queue_vectors: Arc<Vec<AtomicU16>>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    active: bool,
}

impl VirtioPci {
    /// Wraps `device`, assigning BAR 0 from `bus` and wiring its vectors through `router`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        bus: &PciBus,
        router: Arc<dyn MsiRouter>,
        io_events: Arc<dyn IoEvents>,
    ) -> Result<Self, PciError> {
        let nqueues = device.queue_max_sizes().len();
        let mut queues = Vec::with_capacity(nqueues);
        let mut queue_events = Vec::with_capacity(nqueues);
        for &max in device.queue_max_sizes() {
            let q = Queue::new(max).map_err(|e| PciError::Device(format!("queue: {e:?}")))?;
            queues.push(q);
            queue_events.push(EventFd::new(libc::EFD_NONBLOCK).map_err(PciError::Io)?);
        }
        // One vector per queue plus one for configuration changes.
        let vectors = nqueues as u16 + 1;
        let msix = Msix::new(vectors, router).map_err(PciError::Io)?;

        let bar_addr = bus.allocate_bar(BAR_SIZE)?;
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x1af4,
            device: 0x1040 + device.device_type() as u16,
            class: device.pci_class(),
            revision: 1,
            subsys_vendor: 0x1af4,
            subsys: 0x40,
        });
        config.add_mem_bar(0, bar_addr, BAR_SIZE);
        let none = [0u8; 14];
        let cap = |cfg_type: u8, offset: u64, len: u64| -> Vec<u8> {
            let mut b = vec![16, cfg_type, 0, 0, 0, 0];
            b.extend_from_slice(&(offset as u32).to_le_bytes());
            b.extend_from_slice(&(len as u32).to_le_bytes());
            b
        };
        config.add_capability(
            VENDOR_CAP,
            &cap(CFG_COMMON, COMMON_OFFSET, COMMON_SIZE),
            &none,
        );
        config.add_capability(VENDOR_CAP, &cap(CFG_ISR, ISR_OFFSET, 1), &none);
        config.add_capability(
            VENDOR_CAP,
            &cap(CFG_DEVICE, DEVICE_OFFSET, DEVICE_SIZE),
            &none,
        );
        let mut notify = cap(CFG_NOTIFY, NOTIFY_OFFSET, nqueues as u64 * 4);
        notify[0] = 20;
        notify.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
        config.add_capability(VENDOR_CAP, &notify, &[0; 18]);
        // The PCI configuration access capability: bar, offset, length and data are writable.
        let mut pci_cfg = cap(CFG_PCI, 0, 0);
        pci_cfg[0] = 20;
        pci_cfg.extend_from_slice(&[0; 4]);
        let mut pci_cfg_mask = [0u8; 18];
        pci_cfg_mask[2] = 0xff;
        pci_cfg_mask[6..18].fill(0xff);
        let pci_cfg_cap = config.add_capability(VENDOR_CAP, &pci_cfg, &pci_cfg_mask);
        let mut msix_body = Vec::new();
        msix_body.extend_from_slice(&(vectors - 1).to_le_bytes());
        msix_body.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
        msix_body.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
        let mut msix_mask = [0u8; 10];
        msix_mask[1] = ((msix::CTRL_ENABLE | msix::CTRL_FUNCTION_MASK) >> 8) as u8;
        let msix_cap = config.add_capability(msix::CAP_ID, &msix_body, &msix_mask);

        let dev = VirtioPci {
            config,
            device,
            mem,
            io_events,
            msix: Arc::new(Mutex::new(msix)),
            msix_cap,
            pci_cfg_cap,
            isr: Arc::new(AtomicU8::new(0)),
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            queue_vectors: Arc::new((0..nqueues).map(|_| AtomicU16::new(NO_VECTOR)).collect()),
            queues,
            queue_events,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            active: false,
        };
        dev.register_notifications(bar_addr)?;
        Ok(dev)
    }

    fn register_notifications(&self, bar: u64) -> Result<(), PciError> {
        for (i, fd) in self.queue_events.iter().enumerate() {
            let addr = bar + NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER);
            self.io_events.register(fd, addr).map_err(PciError::Io)?;
        }
        Ok(())
    }

    fn unregister_notifications(&self, bar: u64) {
        for (i, fd) in self.queue_events.iter().enumerate() {
            let addr = bar + NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER);
            let _ = self.io_events.unregister(fd, addr);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        self.isr.store(0, Ordering::SeqCst);
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.status = 0;
    }

    fn set_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let mut new = new;
        if new & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            // The driver may only accept what was offered, and must speak virtio 1.
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & features::VERSION_1 != 0;
            if !ok {
                new &= !status::FEATURES_OK;
            }
        }
        let starting = new & status::DRIVER_OK != 0 && !self.active;
        self.status = new;
        if starting && self.status & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        let mut events = Vec::with_capacity(self.queues.len());
        for (q, evt) in self.queues.iter_mut().zip(&self.queue_events) {
            q.set_event_idx(event_idx);
            if q.ready() && !q.is_valid(&self.mem) {
                self.status |= status::DEVICE_NEEDS_RESET;
                return;
            }
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(_) => {
                    self.status |= status::DEVICE_NEEDS_RESET;
                    return;
                }
            }
            match evt.try_clone() {
                Ok(e) => events.push(e),
                Err(_) => {
                    self.status |= status::DEVICE_NEEDS_RESET;
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_events: events,
            interrupt: Arc::new(PciInterrupt {
                msix: self.msix.clone(),
                isr: self.isr.clone(),
                config_vector: self.config_vector.clone(),
                queue_vectors: self.queue_vectors.clone(),
            }),
            acked_features: self.driver_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.active = true,
            Err(_) => self.status |= status::DEVICE_NEEDS_RESET,
        }
    }

    fn common_read(&mut self, offset: u64, data: &mut [u8]) {
        let v: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => self.device.features() & 0xffff_ffff,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.config_vector.load(Ordering::SeqCst)),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status),
            (0x15, 1) => u64::from(self.config_generation),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => self.selected_queue().map_or(0, |q| u64::from(q.size())),
            (0x1a, 2) => self
                .queue_vectors
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| {
                    u64::from(v.load(Ordering::SeqCst))
                }),
            (0x1c, 2) => self.selected_queue().map_or(0, |q| u64::from(q.ready())),
            (0x1e, 2) => u64::from(self.queue_select),
            (0x20, 4) => self
                .selected_queue()
                .map_or(0, |q| q.desc_table() & 0xffff_ffff),
            (0x24, 4) => self.selected_queue().map_or(0, |q| q.desc_table() >> 32),
            (0x28, 4) => self
                .selected_queue()
                .map_or(0, |q| q.avail_ring() & 0xffff_ffff),
            (0x2c, 4) => self.selected_queue().map_or(0, |q| q.avail_ring() >> 32),
            (0x30, 4) => self
                .selected_queue()
                .map_or(0, |q| q.used_ring() & 0xffff_ffff),
            (0x34, 4) => self.selected_queue().map_or(0, |q| q.used_ring() >> 32),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut buf = [0u8; 8];
        if data.len() > 8 {
            return;
        }
        buf[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(buf);
        // Queue layout may only change before the driver is done setting up.
        let can_setup = self.status & status::DRIVER_OK == 0;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if self.status & status::FEATURES_OK == 0 => {
                let shift = match self.driver_feature_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.driver_features =
                    (self.driver_features & !(0xffff_ffff << shift)) | (v << shift);
            }
            (0x10, 2) => self
                .config_vector
                .store(self.valid_vector(v as u16), Ordering::SeqCst),
            (0x14, 1) => self.set_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) if can_setup => {
                if let Some(q) = self.selected_queue() {
                    // virtio-queue refuses sizes that are not a power of two or too large.
                    let _ = q.try_set_size(v as u16);
                }
            }
            (0x1a, 2) => {
                let vector = self.valid_vector(v as u16);
                if let Some(qv) = self.queue_vectors.get(usize::from(self.queue_select)) {
                    qv.store(vector, Ordering::SeqCst);
                }
            }
            (0x1c, 2) if can_setup && v == 1 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(true);
                }
            }
            (0x20..=0x34, 4) if can_setup => {
                let (lo, hi) = if offset.is_multiple_of(8) {
                    (Some(v as u32), None)
                } else {
                    (None, Some(v as u32))
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !7 {
                        0x20 => q.set_desc_table_address(lo, hi),
                        0x28 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {}
        }
    }

    /// The driver reads back the vector to learn whether it was accepted.
    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.msix.lock().expect("msix lock poisoned").vectors() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn pci_cfg_window(&self) -> (u8, u64, usize) {
        let b = self.config.bytes();
        let c = self.pci_cfg_cap;
        let bar = b[c + 4];
        let offset = u32::from_le_bytes(b[c + 8..c + 12].try_into().unwrap());
        let len = u32::from_le_bytes(b[c + 12..c + 16].try_into().unwrap());
        (bar, u64::from(offset), len as usize)
    }
}

impl PciDevice for VirtioPci {
    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == self.pci_cfg_cap + 16 {
            // VIRTIO_PCI_CAP_PCI_CFG: a window onto BAR 0 through configuration space.
            let (bar, offset, len) = self.pci_cfg_window();
            if bar == 0 && matches!(len, 1 | 2 | 4) {
                let mut d = [0u8; 4];
                self.bar_read(0, offset, &mut d[..len]);
                return u32::from_le_bytes(d);
            }
        }
        self.config.read_dword(reg)
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
        let moves = self.config.write(offset, data);
        let c = self.pci_cfg_cap + 16;
        if offset >= c && offset < c + 4 {
            let (bar, off, len) = self.pci_cfg_window();
            if bar == 0 && matches!(len, 1 | 2 | 4) && len <= data.len() {
                self.bar_write(0, off, &data[..len]);
            }
        }
        let m = self.msix_cap + 2;
        if offset < m + 2 && offset + data.len() > m {
            let b = self.config.bytes();
            let ctrl = u16::from_le_bytes([b[m], b[m + 1]]);
            self.msix
                .lock()
                .expect("msix lock poisoned")
                .set_control(ctrl);
        }
        moves
    }

    fn bars(&self) -> Vec<(usize, Bar)> {
        vec![(0, self.config.bar(0))]
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.common_read(o, data),
            ISR_OFFSET => {
                // Reading the ISR acknowledges it.
                let v = self.isr.swap(0, Ordering::SeqCst);
                data.fill(0);
                data[0] = v;
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self
                .msix
                .lock()
                .expect("msix lock poisoned")
                .table_read(o - MSIX_TABLE_OFFSET, data),
            o if o >= MSIX_PBA_OFFSET => self
                .msix
                .lock()
                .expect("msix lock poisoned")
                .pba_read(o - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_SIZE => self.common_write(o, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Reached only when the ioeventfd is not in place: forward the kick.
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(evt) = self.queue_events.get(q) {
                    let _ = evt.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self
                .msix
                .lock()
                .expect("msix lock poisoned")
                .table_write(o - MSIX_TABLE_OFFSET, data),
            _ => {}
        }
    }

    fn bar_moved(&mut self, mv: BarMove) {
        self.unregister_notifications(mv.from);
        // If this fails the guest's kicks still arrive, through bar_write.
        let _ = self.register_notifications(mv.to);
    }

    fn bar_unmapped(&mut self, _index: usize, from: u64) {
        self.unregister_notifications(from);
    }

    fn shutdown(&mut self) {
        self.device.shutdown();
        self.active = false;
    }
}
