//! The two ways a guest reaches PCI configuration space: mechanism #1 through ports
//! 0xCF8 (address) and 0xCFC-0xCFF (data), and ECAM, a memory window with 4 KiB per function.

use std::sync::Weak;

use super::PciBus;
use crate::bus::BusDevice;

/// Address port of configuration mechanism #1.
pub const CONFIG_IO_BASE: u64 = 0xcf8;
/// Ports used: address dword and data dword.
pub const CONFIG_IO_LEN: u64 = 8;

const ENABLE: u32 = 1 << 31;

/// Configuration mechanism #1. It holds the bus weakly: the bus owns the MMIO bus that owns
/// these devices, and a strong reference would keep every device of a stopped VM alive.
pub struct PciConfigIo {
    bus: Weak<PciBus>,
    address: u32,
}

impl PciConfigIo {
    /// Configuration ports for `bus`.
    pub fn new(bus: Weak<PciBus>) -> Self {
        PciConfigIo { bus, address: 0 }
    }

    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        if self.address & ENABLE == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xfc) as usize,
        ))
    }
}

/// Extracts `len` bytes at byte `shift` of a dword.
fn extract(dword: u32, shift: usize, data: &mut [u8]) {
    let bytes = dword.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(shift + i).copied().unwrap_or(0xff);
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match (self.target(), self.bus.upgrade()) {
                (Some((b, s, f, reg)), Some(bus)) => {
                    let v = bus.config_read(b, s, f, reg);
                    extract(v, (offset - 4) as usize, data);
                }
                _ => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes(data.try_into().unwrap());
            }
            4..=7 => {
                if let (Some((b, s, f, reg)), Some(bus)) = (self.target(), self.bus.upgrade()) {
                    let off = reg + (offset - 4) as usize;
                    if (offset - 4) as usize + data.len() <= 4 {
                        bus.config_write(b, s, f, off, data);
                    }
                }
            }
            _ => {}
        }
    }
}

/// ECAM: bus 0 only, 4 KiB per function (of which the first 256 bytes are modelled). Holds
/// the bus weakly, like [`PciConfigIo`].
pub struct PciConfigMmio {
    bus: Weak<PciBus>,
}

impl PciConfigMmio {
    /// ECAM window for `bus`.
    pub fn new(bus: Weak<PciBus>) -> Self {
        PciConfigMmio { bus }
    }
}

fn ecam_target(offset: u64) -> (u8, u8, u8, usize) {
    (
        ((offset >> 20) & 0xff) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        (offset & 0xfff) as usize,
    )
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let (b, s, f, reg) = ecam_target(offset);
        let shift = reg & 3;
        let Some(bus) = self.bus.upgrade().filter(|_| shift + data.len() <= 4) else {
            data.fill(0xff);
            return;
        };
        let v = if reg < super::config::CONFIG_SIZE {
            bus.config_read(b, s, f, reg & !3)
        } else if bus.config_read(b, s, f, 0) == 0xffff_ffff {
            0xffff_ffff
        } else {
            // Extended configuration space exists but holds nothing.
            0
        };
        extract(v, shift, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (b, s, f, reg) = ecam_target(offset);
        if let Some(bus) = self.bus.upgrade() {
            if (reg & 3) + data.len() <= 4 && reg < super::config::CONFIG_SIZE {
                bus.config_write(b, s, f, reg, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;

    fn bus() -> std::sync::Arc<PciBus> {
        std::sync::Arc::new(PciBus::new(std::sync::Arc::new(Bus::new())))
    }

    #[test]
    fn mechanism_one() {
        let bus = bus();
        let mut io = PciConfigIo::new(std::sync::Arc::downgrade(&bus));
        let mut d = [0u8; 4];
        // Disabled: all ones.
        io.write(CONFIG_IO_BASE, 0, &0u32.to_le_bytes());
        io.read(CONFIG_IO_BASE, 4, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Linux's type 1 probe: the address register reads back.
        io.write(CONFIG_IO_BASE, 0, &0x8000_0000u32.to_le_bytes());
        io.read(CONFIG_IO_BASE, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        io.read(CONFIG_IO_BASE, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        // Byte and word reads inside the dword.
        let mut w = [0u8; 2];
        io.read(CONFIG_IO_BASE, 6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0008);
        // Class code at 0x08.
        io.write(CONFIG_IO_BASE, 0, &0x8000_0008u32.to_le_bytes());
        let mut b = [0u8; 1];
        io.read(CONFIG_IO_BASE, 7, &mut b);
        assert_eq!(b[0], 0x06);
        // Empty slot 3.
        io.write(
            CONFIG_IO_BASE,
            0,
            &(0x8000_0000u32 | (3 << 11)).to_le_bytes(),
        );
        io.read(CONFIG_IO_BASE, 4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn ecam() {
        let bus = bus();
        let mut m = PciConfigMmio::new(std::sync::Arc::downgrade(&bus));
        let mut d = [0u8; 4];
        m.read(0, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        m.read(0, 0x100, &mut d);
        assert_eq!(d, [0; 4], "extended space of a present function");
        m.read(0, 1 << 15, &mut d);
        assert_eq!(d, [0xff; 4], "absent slot 1");
        let mut odd = [0u8; 4];
        m.read(0, 2, &mut odd);
        assert_eq!(odd, [0xff; 4], "access crossing a dword");
    }
}
