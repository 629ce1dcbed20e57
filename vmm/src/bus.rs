//! Port-I/O and MMIO dispatch: address ranges mapped to devices.
//!
//! A bus is shared by all vCPU threads. Devices are looked up under a read lock, so ranges can
//! be added or moved while the VM runs (PCI BAR programming) without stopping the vCPUs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers reads and writes on a bus.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `base + offset`, where `base` is the start of the
    /// range the device was inserted at.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (input threads, the VMM).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a range cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps one that is already taken.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

#[derive(Clone)]
struct Range {
    len: u64,
    device: SharedDevice,
}

/// An address space of non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Range>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `device`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let mut ranges = self.ranges.write().expect("bus lock poisoned");
        let end = base + (len - 1);
        let before = ranges.range(..=end).next_back();
        if let Some((b, r)) = before {
            if b + (r.len - 1) >= base {
                return Err(BusError::Overlap { base, len });
            }
        }
        ranges.insert(base, Range { len, device });
        Ok(())
    }

    /// Unmaps the range starting at `base` only if `device` is what is mapped there (so a stale
    /// request cannot unmap another device); returns whether it did.
    pub fn remove_device(&self, base: u64, device: &SharedDevice) -> bool {
        let mut ranges = self.ranges.write().expect("bus lock poisoned");
        let same = ranges
            .get(&base)
            .is_some_and(|r| std::ptr::addr_eq(Arc::as_ptr(&r.device), Arc::as_ptr(device)));
        if same {
            ranges.remove(&base);
        }
        same
    }

    /// Unmaps the range starting at `base`; returns whether there was one.
    pub fn remove(&self, base: u64) -> bool {
        self.ranges
            .write()
            .expect("bus lock poisoned")
            .remove(&base)
            .is_some()
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().expect("bus lock poisoned");
        let (base, r) = ranges.range(..=addr).next_back()?;
        let last = addr.checked_add(len.max(1) as u64 - 1)?;
        (last <= base + (r.len - 1)).then(|| (*base, r.device.clone()))
    }

    /// Dispatches a read; returns false if no device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, dev)) => {
                dev.lock()
                    .expect("device lock poisoned")
                    .read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device claims the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((base, dev)) => {
                dev.lock()
                    .expect("device lock poisoned")
                    .write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Probe {
        last: Vec<(u64, u64, Vec<u8>)>,
    }
    impl BusDevice for Probe {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill((base + offset) as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_bounds() {
        let bus = Bus::new();
        let p = Arc::new(Mutex::new(Probe::default()));
        bus.insert(0x3f8, 8, p.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3f8 + 5, &mut b));
        assert_eq!(b[0], 0xfd);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(p.lock().unwrap().last, vec![(0x3f8, 7, vec![7])]);
        // Outside, or straddling the end.
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x400, &mut b));
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w));
    }

    #[test]
    fn overlaps_refused() {
        let bus = Bus::new();
        let p: SharedDevice = Arc::new(Mutex::new(Probe::default()));
        bus.insert(0x100, 0x10, p.clone()).unwrap();
        for (b, l) in [(0x100, 1), (0xf8, 0x9), (0x10f, 4), (0x0, 0x1000)] {
            assert_eq!(
                bus.insert(b, l, p.clone()),
                Err(BusError::Overlap { base: b, len: l })
            );
        }
        bus.insert(0x110, 4, p.clone()).unwrap();
        bus.insert(0xf0, 0x10, p.clone()).unwrap();
        assert!(bus.insert(5, 0, p.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, p.clone()).is_err());
        assert!(bus.remove(0x100));
        bus.insert(0x100, 0x10, p).unwrap();
    }

    #[test]
    fn top_of_address_space() {
        let bus = Bus::new();
        let p: SharedDevice = Arc::new(Mutex::new(Probe::default()));
        bus.insert(u64::MAX - 0xf, 0x10, p).unwrap();
        let mut b = [0u8; 8];
        assert!(bus.read(u64::MAX - 7, &mut b));
        assert!(!bus.read(u64::MAX - 6, &mut b));
    }
}
