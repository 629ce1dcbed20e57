//! PCI: a single bus 0 behind a host bridge, reached through configuration mechanism #1
//! (ports 0xCF8/0xCFC) or ECAM (MMIO), with 32-bit memory BARs placed in the MMIO hole.
//!
//! Devices implement [`PciDevice`] and know nothing about KVM: the [`PciBus`] maps their BARs
//! on the MMIO bus and moves the mappings when the guest reprograms a BAR.

pub mod access;
pub mod config;
pub mod msix;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::arch::layout;
use crate::bus::{Bus, BusDevice, SharedDevice};
use config::{Bar, BarMove, ConfigSpace, PciIds};

/// Slots on bus 0.
pub const NUM_SLOTS: usize = 32;

/// A PCI function.
pub trait PciDevice: Send {
    /// Reads the configuration dword at `reg` (dword-aligned).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` at configuration offset `offset`; returns the BARs that moved.
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove>;
    /// The device's BARs that are in use, by index.
    fn bars(&self) -> Vec<(usize, Bar)>;
    /// Guest read inside BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Guest write inside BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Called after a BAR moved to a new mapped address, so the device can move what it
    /// registered elsewhere (ioeventfds).
    fn bar_moved(&mut self, _mv: BarMove) {}
    /// Called when a BAR that was mapped at `from` no longer is (moved out of the window or
    /// onto something else): the device drops what it registered there.
    fn bar_unmapped(&mut self, _index: usize, _from: u64) {}
    /// The VM is stopping: stop background work and make written data durable.
    fn shutdown(&mut self) {}
}

/// A device shared between the PCI bus, the MMIO bus and the VMM.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// A PCI or bus error.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// All 32 slots are taken.
    #[error("no free PCI slot")]
    NoSlot,
    /// The MMIO hole is full.
    #[error("no room for a {0:#x}-byte BAR in the PCI MMIO window")]
    NoBarSpace(u64),
    /// Mapping the BAR failed.
    #[error("cannot map BAR: {0}")]
    Map(#[from] crate::bus::BusError),
    /// A host resource (eventfd, irqfd, ioeventfd) could not be set up.
    #[error("PCI device setup: {0}")]
    Io(std::io::Error),
    /// The device model refused its configuration.
    #[error("PCI device setup: {0}")]
    Device(String),
}

/// Adapts one BAR of a device to the MMIO bus.
struct BarRegion {
    device: SharedPciDevice,
    index: usize,
}

impl BusDevice for BarRegion {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .expect("PCI device lock poisoned")
            .bar_read(self.index, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .expect("PCI device lock poisoned")
            .bar_write(self.index, offset, data);
    }
}

struct Slots {
    devices: Vec<Option<SharedPciDevice>>,
    next_bar: u64,
    /// Where each (slot, BAR) is mapped, and the region object mapped there.
    mapped: HashMap<(usize, usize), (u64, SharedDevice)>,
}

/// Bus 0: the host bridge in slot 0 and the devices added after it.
pub struct PciBus {
    slots: Mutex<Slots>,
    mmio: Arc<Bus>,
}

impl PciBus {
    /// A bus with a host bridge, mapping BARs on `mmio`.
    pub fn new(mmio: Arc<Bus>) -> Self {
        let bus = PciBus {
            slots: Mutex::new(Slots {
                devices: vec![None; NUM_SLOTS],
                next_bar: layout::PCI_MMIO_START,
                mapped: HashMap::new(),
            }),
            mmio,
        };
        bus.slots.lock().unwrap().devices[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        bus
    }

    /// Reserves a naturally aligned BAR of `size` bytes in the MMIO window.
    pub fn allocate_bar(&self, size: u64) -> Result<u64, PciError> {
        let mut s = self.slots.lock().expect("PCI lock poisoned");
        let addr = s.next_bar.next_multiple_of(size);
        if addr + size > layout::PCI_MMIO_END {
            return Err(PciError::NoBarSpace(size));
        }
        s.next_bar = addr + size;
        Ok(addr)
    }

    /// Plugs `device` into the first free slot and maps its BARs. Returns the slot.
    pub fn add(&self, device: SharedPciDevice) -> Result<usize, PciError> {
        let mut s = self.slots.lock().expect("PCI lock poisoned");
        let slot = s
            .devices
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoSlot)?;
        let bars = device.lock().expect("PCI device lock poisoned").bars();
        for (index, bar) in bars {
            let region: SharedDevice = Arc::new(Mutex::new(BarRegion {
                device: device.clone(),
                index,
            }));
            self.mmio.insert(bar.addr, bar.size, region.clone())?;
            s.mapped.insert((slot, index), (bar.addr, region));
        }
        s.devices[slot] = Some(device);
        Ok(slot)
    }

    /// Every device on the bus, host bridge included.
    pub fn devices(&self) -> Vec<SharedPciDevice> {
        let s = self.slots.lock().expect("PCI lock poisoned");
        s.devices.iter().flatten().cloned().collect()
    }

    fn device(&self, bus: u8, slot: u8, function: u8) -> Option<SharedPciDevice> {
        if bus != 0 || function != 0 {
            return None;
        }
        let s = self.slots.lock().expect("PCI lock poisoned");
        s.devices.get(usize::from(slot)).cloned().flatten()
    }

    /// Reads a configuration dword; absent functions read as all ones.
    pub fn config_read(&self, bus: u8, slot: u8, function: u8, reg: usize) -> u32 {
        match self.device(bus, slot, function) {
            Some(d) => d
                .lock()
                .expect("PCI device lock poisoned")
                .read_config(reg & !3),
            None => 0xffff_ffff,
        }
    }

    /// Writes configuration space and follows any BAR the guest moved.
    pub fn config_write(&self, bus: u8, slot: u8, function: u8, offset: usize, data: &[u8]) {
        let Some(dev) = self.device(bus, slot, function) else {
            return;
        };
        let moves = dev
            .lock()
            .expect("PCI device lock poisoned")
            .write_config(offset, data);
        for mv in moves {
            self.move_bar(usize::from(slot), &dev, mv);
        }
    }

    fn move_bar(&self, slot: usize, dev: &SharedPciDevice, mv: BarMove) {
        let size = {
            let d = dev.lock().expect("PCI device lock poisoned");
            d.bars()
                .into_iter()
                .find(|(i, _)| *i == mv.index)
                .map(|(_, b)| b.size)
        };
        let Some(size) = size else { return };
        let mut s = self.slots.lock().expect("PCI lock poisoned");
        // Unmap only this BAR's own mapping: whatever else sits at the old address stays.
        let old = s.mapped.remove(&(slot, mv.index));
        if let Some((base, region)) = &old {
            self.mmio.remove_device(*base, region);
        }
        // A BAR moved onto RAM, another device or outside the hole stays unmapped: the guest
        // sees all ones there, as on hardware with a conflicting assignment.
        let in_window = mv.to >= layout::PCI_MMIO_START
            && mv
                .to
                .checked_add(size)
                .is_some_and(|end| end <= layout::PCI_MMIO_END);
        let region: SharedDevice = Arc::new(Mutex::new(BarRegion {
            device: dev.clone(),
            index: mv.index,
        }));
        let mapped = in_window && self.mmio.insert(mv.to, size, region.clone()).is_ok();
        if mapped {
            s.mapped.insert((slot, mv.index), (mv.to, region));
        }
        drop(s);
        let mut d = dev.lock().expect("PCI device lock poisoned");
        match (old, mapped) {
            (Some((from, _)), true) => d.bar_moved(BarMove { from, ..mv }),
            (None, true) => d.bar_moved(mv),
            (Some((from, _)), false) => d.bar_unmapped(mv.index, from),
            (None, false) => {}
        }
    }
}

/// The host bridge in slot 0, which tells the guest a PCI hierarchy is here.
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// A host bridge (class 06/00).
    pub fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(PciIds {
                vendor: 0x1b36,
                device: 0x0008,
                class: (0x06, 0x00, 0x00),
                revision: 0,
                subsys_vendor: 0x1b36,
                subsys: 0x0008,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read_dword(reg)
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
        self.config.write(offset, data)
    }
    fn bars(&self) -> Vec<(usize, Bar)> {
        Vec::new()
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device with one BAR that remembers what was written to it.
    struct Dummy {
        config: ConfigSpace,
        seen: Vec<(usize, u64, Vec<u8>)>,
        moved: Vec<BarMove>,
    }

    impl PciDevice for Dummy {
        fn read_config(&mut self, reg: usize) -> u32 {
            self.config.read_dword(reg)
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
            self.config.write(offset, data)
        }
        fn bars(&self) -> Vec<(usize, Bar)> {
            vec![(0, self.config.bar(0))]
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.seen.push((bar, offset, data.to_vec()));
        }
        fn bar_moved(&mut self, mv: BarMove) {
            self.moved.push(mv);
        }
    }

    fn dummy(bus: &PciBus) -> Arc<Mutex<Dummy>> {
        let addr = bus.allocate_bar(0x1000).unwrap();
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x1234,
            device: 0x5678,
            class: (0xff, 0, 0),
            revision: 0,
            subsys_vendor: 0,
            subsys: 0,
        });
        config.add_mem_bar(0, addr, 0x1000);
        Arc::new(Mutex::new(Dummy {
            config,
            seen: vec![],
            moved: vec![],
        }))
    }

    #[test]
    fn host_bridge_and_absent_slots() {
        let bus = PciBus::new(Arc::new(Bus::new()));
        assert_eq!(bus.config_read(0, 0, 0, 0), 0x0008_1b36);
        assert_eq!(bus.config_read(0, 0, 0, 8) >> 16, 0x0600);
        assert_eq!(bus.config_read(0, 1, 0, 0), 0xffff_ffff);
        assert_eq!(bus.config_read(0, 0, 1, 0), 0xffff_ffff);
        assert_eq!(bus.config_read(1, 0, 0, 0), 0xffff_ffff);
    }

    #[test]
    fn bars_are_mapped_and_follow_moves() {
        let mmio = Arc::new(Bus::new());
        let bus = PciBus::new(mmio.clone());
        let d = dummy(&bus);
        let slot = bus.add(d.clone()).unwrap();
        assert_eq!(slot, 1);
        let base = layout::PCI_MMIO_START;
        let mut b = [0u8; 4];
        assert!(mmio.read(base + 0x10, &mut b));
        assert_eq!(b, [0x10; 4]);
        assert!(mmio.write(base + 8, &[1, 2]));
        assert_eq!(d.lock().unwrap().seen, vec![(0, 8, vec![1, 2])]);

        // The guest moves the BAR.
        let to = base + 0x10_0000;
        bus.config_write(0, 1, 0, config::BAR0, &(to as u32).to_le_bytes());
        assert!(!mmio.read(base + 0x10, &mut b));
        assert!(mmio.read(to + 0x10, &mut b));
        assert_eq!(d.lock().unwrap().moved.len(), 1);

        // Moved outside the window: unmapped, never onto RAM.
        bus.config_write(0, 1, 0, config::BAR0, &0x1000u32.to_le_bytes());
        assert!(!mmio.read(to, &mut b));
        assert!(!mmio.read(0x1000, &mut b));
    }

    #[test]
    fn bar_allocation_is_aligned_and_bounded() {
        let bus = PciBus::new(Arc::new(Bus::new()));
        let a = bus.allocate_bar(0x1000).unwrap();
        let b = bus.allocate_bar(0x8000).unwrap();
        assert_eq!(b % 0x8000, 0);
        assert!(b >= a + 0x1000);
        assert!(bus.allocate_bar(1 << 30).is_err());
    }
}
