//! A PCI type 0 configuration space: the 256 bytes a function exposes, with per-byte write
//! masks so a guest can only change what hardware would let it change, 32-bit memory BARs
//! with size probing, and a capability list.

/// Register offsets.
pub const VENDOR_ID: usize = 0x00;
/// Device id.
pub const DEVICE_ID: usize = 0x02;
/// Command register.
pub const COMMAND: usize = 0x04;
/// Status register.
pub const STATUS: usize = 0x06;
/// Revision id.
pub const REVISION: usize = 0x08;
/// Class code (programming interface, subclass, class).
pub const CLASS_PROG: usize = 0x09;
/// Header type.
pub const HEADER_TYPE: usize = 0x0e;
/// First BAR.
pub const BAR0: usize = 0x10;
/// Subsystem vendor id.
pub const SUBSYS_VENDOR_ID: usize = 0x2c;
/// Subsystem id.
pub const SUBSYS_ID: usize = 0x2e;
/// Capabilities pointer.
pub const CAP_PTR: usize = 0x34;
/// Interrupt line.
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin.
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command bit: respond to memory accesses.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Command bit: bus master.
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Command bit: INTx disabled.
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Status bit: the capability list is valid.
const STATUS_CAP_LIST: u16 = 1 << 4;

/// Size of the configuration space berth models.
pub const CONFIG_SIZE: usize = 256;
/// Number of BARs in a type 0 header.
pub const NUM_BARS: usize = 6;

/// A 32-bit memory BAR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bar {
    /// Guest-physical address (0 while unassigned).
    pub addr: u64,
    /// Size in bytes, a power of two; 0 for an unused BAR.
    pub size: u64,
}

/// A BAR the guest moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// BAR index.
    pub index: usize,
    /// Previous address.
    pub from: u64,
    /// New address.
    pub to: u64,
}

/// Configuration space contents and rules.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [Bar; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciIds {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class, subclass, programming interface.
    pub class: (u8, u8, u8),
    /// Revision.
    pub revision: u8,
    /// Subsystem vendor id.
    pub subsys_vendor: u16,
    /// Subsystem id.
    pub subsys: u16,
}

impl ConfigSpace {
    /// A type 0 header for `ids`, with memory decoding, bus mastering and INTx disable
    /// writable and no BARs or capabilities yet.
    pub fn new(ids: PciIds) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [Bar::default(); NUM_BARS],
            last_cap: None,
            next_cap: 0x40,
        };
        c.set16(VENDOR_ID, ids.vendor);
        c.set16(DEVICE_ID, ids.device);
        c.bytes[REVISION] = ids.revision;
        c.bytes[CLASS_PROG] = ids.class.2;
        c.bytes[CLASS_PROG + 1] = ids.class.1;
        c.bytes[CLASS_PROG + 2] = ids.class.0;
        c.set16(SUBSYS_VENDOR_ID, ids.subsys_vendor);
        c.set16(SUBSYS_ID, ids.subsys);
        let cmd_mask = CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE;
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&cmd_mask.to_le_bytes());
        c.wmask[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Declares BAR `index` as a 32-bit, non-prefetchable memory BAR of `size` bytes at
    /// `addr` (already assigned by the VMM, as firmware would).
    pub fn add_mem_bar(&mut self, index: usize, addr: u64, size: u64) {
        assert!(index < NUM_BARS && size.is_power_of_two() && size >= 16);
        assert!(addr.is_multiple_of(size) && addr + size <= 1 << 32);
        self.bars[index] = Bar { addr, size };
        let off = BAR0 + index * 4;
        self.bytes[off..off + 4].copy_from_slice(&(addr as u32).to_le_bytes());
        // The address bits above the size are writable; the low flag bits are not.
        let mask = !(size as u32 - 1);
        self.wmask[off..off + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// The BAR at `index`.
    pub fn bar(&self, index: usize) -> Bar {
        self.bars[index]
    }

    /// Appends a capability with id `id` and body `body` (bytes after the id/next header);
    /// `wmask` gives the writable bits of the body. Returns the capability's offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> usize {
        assert_eq!(body.len(), wmask.len());
        let off = self.next_cap;
        let len = 2 + body.len();
        assert!(
            off + len <= CONFIG_SIZE,
            "capabilities overflow config space"
        );
        self.bytes[off] = id;
        self.bytes[off + 1] = 0;
        self.bytes[off + 2..off + len].copy_from_slice(body);
        self.wmask[off + 2..off + len].copy_from_slice(wmask);
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = off as u8,
            None => {
                self.bytes[CAP_PTR] = off as u8;
                let status = u16::from_le_bytes([self.bytes[STATUS], self.bytes[STATUS + 1]]);
                self.set16(STATUS, status | STATUS_CAP_LIST);
            }
        }
        self.last_cap = Some(off);
        // Capabilities start on dword boundaries.
        self.next_cap = (off + len + 3) & !3;
        off
    }

    /// Reads the dword at `reg` (dword aligned offset); out of range reads as zero.
    pub fn read_dword(&self, reg: usize) -> u32 {
        let reg = reg & !3;
        if reg + 4 > CONFIG_SIZE {
            return 0;
        }
        u32::from_le_bytes(self.bytes[reg..reg + 4].try_into().unwrap())
    }

    /// Raw bytes, for capability handlers in the device.
    pub fn bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.bytes
    }

    /// Raw mutable bytes, for devices that keep capability state in config space.
    pub fn bytes_mut(&mut self) -> &mut [u8; CONFIG_SIZE] {
        &mut self.bytes
    }

    /// Applies a guest write of `data` at `offset`, honouring the write masks. Returns the
    /// BAR moves it caused, if any.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
        if offset >= CONFIG_SIZE || data.len() > CONFIG_SIZE - offset {
            return Vec::new();
        }
        let before: Vec<u64> = (0..NUM_BARS).map(|i| self.bars[i].addr).collect();
        for (i, b) in data.iter().enumerate() {
            let o = offset + i;
            let m = self.wmask[o];
            self.bytes[o] = (self.bytes[o] & !m) | (b & m);
        }
        let mut moves = Vec::new();
        for (i, (bar, old)) in self.bars.iter_mut().zip(before).enumerate() {
            if bar.size == 0 {
                continue;
            }
            let off = BAR0 + i * 4;
            let v = u32::from_le_bytes(self.bytes[off..off + 4].try_into().unwrap());
            let addr = u64::from(v & !0xf);
            // A BAR being sized reads back as all ones over its size: not an address. The
            // mapping stays where it was until a real address is written.
            if addr == u64::from(!(bar.size as u32 - 1) & !0xf) {
                continue;
            }
            bar.addr = addr;
            if addr != old {
                moves.push(BarMove {
                    index: i,
                    from: old,
                    to: addr,
                });
            }
        }
        moves
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[COMMAND], self.bytes[COMMAND + 1]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            class: (0x01, 0x00, 0x00),
            revision: 1,
            subsys_vendor: 0x1af4,
            subsys: 0x40,
        }
    }

    #[test]
    fn header_fields() {
        let c = ConfigSpace::new(ids());
        assert_eq!(c.read_dword(0), 0x1042_1af4);
        assert_eq!(c.read_dword(8), 0x0100_0001);
        assert_eq!(c.read_dword(0x2c), 0x0040_1af4);
        assert_eq!(c.read_dword(0x400), 0);
    }

    #[test]
    fn bar_sizing_and_moving() {
        let mut c = ConfigSpace::new(ids());
        c.add_mem_bar(0, 0xc000_0000, 0x8000);
        assert_eq!(c.read_dword(BAR0), 0xc000_0000);
        // Sizing: write all ones, read back the size mask; not a move.
        assert!(c.write(BAR0, &[0xff; 4]).is_empty());
        assert_eq!(c.read_dword(BAR0), 0xffff_8000);
        assert_eq!(c.bar(0).addr, 0xc000_0000, "sizing does not move the BAR");
        let m = c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(
            m,
            vec![BarMove {
                index: 0,
                from: 0xc000_0000,
                to: 0xd000_0000
            }]
        );
        assert_eq!(c.bar(0).addr, 0xd000_0000);
        // Unused BARs stay zero.
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_dword(BAR0 + 4), 0);
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut c = ConfigSpace::new(ids());
        c.write(0, &[0; 4]);
        assert_eq!(c.read_dword(0), 0x1042_1af4);
        c.write(COMMAND, &[0xff, 0xff]);
        assert_eq!(c.command(), CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE);
        // Writes running off the end are dropped whole.
        assert!(c.write(254, &[1, 2, 3, 4]).is_empty());
    }

    #[test]
    fn capability_chain() {
        let mut c = ConfigSpace::new(ids());
        let a = c.add_capability(0x09, &[14, 1, 2], &[0, 0, 0xff]);
        let b = c.add_capability(0x11, &[0; 10], &[0; 10]);
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_eq!(c.bytes()[CAP_PTR] as usize, a);
        assert_eq!(c.bytes()[a + 1] as usize, b);
        assert_eq!(c.bytes()[b + 1], 0);
        assert_ne!(c.read_dword(STATUS) & (u32::from(STATUS_CAP_LIST) << 16), 0);
        c.write(a + 4, &[0x55]);
        assert_eq!(c.bytes()[a + 4], 0x55);
        c.write(a + 3, &[0x55]);
        assert_eq!(c.bytes()[a + 3], 1, "read-only capability byte");
    }
}
