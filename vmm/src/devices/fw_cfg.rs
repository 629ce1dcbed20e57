//! QEMU's firmware configuration device (fw_cfg), the channel through which SeaBIOS and OVMF
//! learn about the machine: memory size and map, vCPU count, ACPI tables, boot options.
//!
//! Interface (QEMU's docs/specs/fw_cfg.rst, x86 I/O port layout):
//! - port 0x510, 16-bit write: the selector (an item key; bit 14, the old write flag, is
//!   ignored). Selecting resets the read offset to 0.
//! - port 0x511, 8-bit read: the next byte of the selected item; past its end, 0.
//! - ports 0x514-0x51b: the DMA address, big-endian. A 32-bit write at 0x514 sets the high
//!   half, a 32-bit write at 0x518 sets the low half and starts the transfer. Reading those
//!   8 bytes gives the signature "QEMU CFG".
//!
//! A DMA transfer reads a 16-byte control structure from guest memory at the written address
//! (big-endian: u32 control, u32 length, u64 address), performs select / skip / read / write,
//! and writes the control word back: 0 on success, [`DMA_ERROR`] on failure. The guest
//! chooses every address and length: each access is checked against guest memory, and a bad
//! one ends the transfer with the error bit; nothing here panics or allocates guest-sized
//! buffers.
//!
//! Items are either legacy keys ([`keys`]) or named files, listed big-endian in the directory
//! item [`keys::FILE_DIR`] and numbered from [`keys::FILE_FIRST`].

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::bus::BusDevice;

/// First port of the device (the selector); [`PORT_LEN`] ports follow.
pub const PORT_BASE: u64 = 0x510;
/// Ports the device answers: selector (2), unused (2), DMA address (8).
pub const PORT_LEN: u64 = 0xc;
/// Offset of the data port from [`PORT_BASE`].
const DATA: u64 = 1;
/// Offset of the DMA address's high half.
const DMA_HIGH: u64 = 4;
/// Offset of the DMA address's low half (a write here starts the transfer).
const DMA_LOW: u64 = 8;
/// What the DMA address ports read as, byte by byte.
pub const DMA_SIGNATURE: &[u8; 8] = b"QEMU CFG";

/// Legacy item keys.
pub mod keys {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Feature bits, little-endian u32: [`super::ID_TRADITIONAL`] | [`super::ID_DMA`].
    pub const ID: u16 = 0x01;
    /// The VM's UUID (16 bytes).
    pub const UUID: u16 = 0x02;
    /// Guest RAM in bytes, little-endian u64.
    pub const RAM_SIZE: u16 = 0x03;
    /// Non-zero when the VM has no display, little-endian u16.
    pub const NOGRAPHIC: u16 = 0x04;
    /// vCPUs at boot, little-endian u16.
    pub const NB_CPUS: u16 = 0x05;
    /// Size of a kernel given to the firmware (0: none), little-endian u32.
    pub const KERNEL_SIZE: u16 = 0x08;
    /// Size of an initrd given to the firmware (0: none), little-endian u32.
    pub const INITRD_SIZE: u16 = 0x0b;
    /// Show the boot menu (0: no), little-endian u16.
    pub const BOOT_MENU: u16 = 0x0e;
    /// Highest vCPU count, little-endian u16.
    pub const MAX_CPUS: u16 = 0x0f;
    /// Size of a kernel command line given to the firmware (0: none), little-endian u32.
    pub const CMDLINE_SIZE: u16 = 0x14;
    /// The file directory.
    pub const FILE_DIR: u16 = 0x19;
    /// Key of the first file.
    pub const FILE_FIRST: u16 = 0x20;
}

/// ID bit: the port interface.
pub const ID_TRADITIONAL: u32 = 1;
/// ID bit: the DMA interface.
pub const ID_DMA: u32 = 2;

/// DMA control bits.
pub const DMA_ERROR: u32 = 0x01;
/// Read from the item into guest memory.
pub const DMA_READ: u32 = 0x02;
/// Advance the item offset without transferring.
pub const DMA_SKIP: u32 = 0x04;
/// Select the item in the control word's high 16 bits first.
pub const DMA_SELECT: u32 = 0x08;
/// Write guest memory into the item (only writable files).
pub const DMA_WRITE: u32 = 0x10;

/// Selector bit the old write interface used; not part of the key.
const WRITE_CHANNEL: u16 = 0x4000;
/// Longest file name, terminating NUL included.
pub const FILE_NAME_LEN: usize = 56;
/// Most files the directory holds (keys 0x20 up to 0x3fff).
pub const MAX_FILES: usize = 0x3fff - keys::FILE_FIRST as usize;
/// Bytes copied per step of a DMA transfer, so no buffer grows with the guest's length.
const CHUNK: usize = 4096;

/// Why a file could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// Empty, too long or containing a NUL.
    #[error("fw_cfg file name {0:?} is empty, has a NUL or is longer than 55 bytes")]
    BadName(String),
    /// A file of that name exists.
    #[error("fw_cfg file {0:?} added twice")]
    Duplicate(String),
    /// The directory is full.
    #[error("fw_cfg has no room for another file")]
    Full,
    /// An item larger than the 32-bit size the directory can state.
    #[error("fw_cfg item of {0} bytes is larger than 4 GiB")]
    TooLarge(usize),
}

/// Called with a writable file's whole contents after each DMA write into it (QEMU's
/// `fw_cfg_add_file_callback` write callback, how `etc/ramfb` learns its configuration).
pub type WriteHook = Box<dyn FnMut(&[u8]) + Send>;

struct Item {
    data: Vec<u8>,
    /// The guest may write it through DMA (in place, never growing it).
    writable: bool,
    /// Told about each write, if anyone is.
    on_write: Option<WriteHook>,
}

/// The device: its items, the selected one and the read offset.
pub struct FwCfg {
    items: BTreeMap<u16, Item>,
    files: Vec<(String, u16)>,
    selected: u16,
    offset: u64,
    dma_high: u32,
    memory: GuestMemoryMmap,
}

impl FwCfg {
    /// A device with the signature, ID and an empty directory, doing DMA into `memory`.
    pub fn new(memory: GuestMemoryMmap) -> Self {
        let mut d = FwCfg {
            items: BTreeMap::new(),
            files: Vec::new(),
            selected: 0,
            offset: 0,
            dma_high: 0,
            memory,
        };
        d.set(keys::SIGNATURE, b"QEMU".to_vec());
        d.set(keys::ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        d.update_directory();
        d
    }

    /// Sets a legacy item (replacing it).
    pub fn set(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(
            key,
            Item {
                data,
                writable: false,
                on_write: None,
            },
        );
    }

    /// Adds a named file; returns its key. `writable` files accept DMA writes in place.
    pub fn add_file(
        &mut self,
        name: &str,
        data: Vec<u8>,
        writable: bool,
    ) -> Result<u16, FwCfgError> {
        self.insert_file(name, data, writable, None)
    }

    /// Adds a writable file whose `hook` is called with its whole contents after every DMA
    /// write into it (bytes past its end are dropped, its size never changes).
    pub fn add_writable_file_with_hook(
        &mut self,
        name: &str,
        data: Vec<u8>,
        hook: WriteHook,
    ) -> Result<u16, FwCfgError> {
        self.insert_file(name, data, true, Some(hook))
    }

    fn insert_file(
        &mut self,
        name: &str,
        data: Vec<u8>,
        writable: bool,
        on_write: Option<WriteHook>,
    ) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_LEN || name.contains('\0') {
            return Err(FwCfgError::BadName(name.into()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(data.len()));
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::Full);
        }
        let key = keys::FILE_FIRST + self.files.len() as u16;
        self.items.insert(
            key,
            Item {
                data,
                writable,
                on_write,
            },
        );
        self.files.push((name.into(), key));
        self.update_directory();
        Ok(key)
    }

    /// The contents of file `name` (as the guest left it, for writable files).
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        let key = self.files.iter().find(|(n, _)| n == name)?.1;
        self.items.get(&key).map(|i| i.data.as_slice())
    }

    /// The directory: a big-endian count, then per file its big-endian size and key, two
    /// reserved bytes and the NUL-padded name; sorted by name as QEMU does.
    fn update_directory(&mut self) {
        let mut files: Vec<&(String, u16)> = self.files.iter().collect();
        files.sort();
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in files {
            let size = self.items.get(key).map_or(0, |i| i.data.len()) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.set(keys::FILE_DIR, dir);
    }

    fn select(&mut self, selector: u16) {
        self.selected = selector & !WRITE_CHANNEL;
        self.offset = 0;
    }

    fn current(&self) -> &[u8] {
        self.items
            .get(&self.selected)
            .map_or(&[], |i| i.data.as_slice())
    }

    fn read_byte(&mut self) -> u8 {
        let data = self.current();
        match usize::try_from(self.offset).ok().and_then(|o| data.get(o)) {
            Some(&b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }

    /// Runs the DMA transfer whose control structure is at `addr`.
    fn dma(&mut self, addr: u64) {
        let mut access = [0u8; 16];
        if self
            .memory
            .read_slice(&mut access, GuestAddress(addr))
            .is_err()
        {
            // Nowhere to report the error: the guest sees its control word never change.
            return;
        }
        let control = u32::from_be_bytes(access[0..4].try_into().expect("4 bytes"));
        let length = u32::from_be_bytes(access[4..8].try_into().expect("4 bytes"));
        let target = u64::from_be_bytes(access[8..16].try_into().expect("8 bytes"));
        let ok = self.transfer(control, length, target);
        let result: u32 = if ok { 0 } else { DMA_ERROR };
        // A control word outside memory was caught by the read above.
        let _ = self
            .memory
            .write_slice(&result.to_be_bytes(), GuestAddress(addr));
    }

    /// The operations of one control word; false on any error.
    fn transfer(&mut self, control: u32, length: u32, target: u64) -> bool {
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let len = u64::from(length);
        let in_memory = |mem: &GuestMemoryMmap| {
            len == 0
                || target.checked_add(len).is_some()
                    && mem.check_range(GuestAddress(target), len as usize)
        };
        if control & DMA_READ != 0 {
            if !in_memory(&self.memory) {
                return false;
            }
            // Bytes past the item's end read as zeroes.
            let mut done = 0u64;
            let mut buf = [0u8; CHUNK];
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                let data = self.current();
                let start = self.offset.saturating_add(done);
                buf[..n].fill(0);
                if let Ok(s) = usize::try_from(start) {
                    if s < data.len() {
                        let m = n.min(data.len() - s);
                        buf[..m].copy_from_slice(&data[s..s + m]);
                    }
                }
                if self
                    .memory
                    .write_slice(&buf[..n], GuestAddress(target + done))
                    .is_err()
                {
                    return false;
                }
                done += n as u64;
            }
            self.advance(len);
        } else if control & DMA_SKIP != 0 {
            self.advance(len);
        } else if control & DMA_WRITE != 0 {
            if !in_memory(&self.memory) {
                return false;
            }
            let offset = self.offset;
            let Some(item) = self.items.get_mut(&self.selected) else {
                return false;
            };
            if !item.writable {
                return false;
            }
            // Writes land in place; bytes past the end are dropped, as QEMU does.
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            if start < item.data.len() {
                let n = (item.data.len() - start).min(len as usize);
                if self
                    .memory
                    .read_slice(&mut item.data[start..start + n], GuestAddress(target))
                    .is_err()
                {
                    return false;
                }
                if let Some(hook) = &mut item.on_write {
                    hook(&item.data);
                }
            }
            self.advance(len);
        }
        true
    }

    /// Moves the offset, never past the item's end (so it cannot overflow).
    fn advance(&mut self, len: u64) {
        let end = self.current().len() as u64;
        self.offset = self.offset.saturating_add(len).min(end);
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            // A string read (`rep insb`, how SeaBIOS reads items) arrives as one exit with
            // every byte: consecutive bytes of the item.
            DATA => data.iter_mut().for_each(|b| *b = self.read_byte()),
            DMA_HIGH..=11 => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = (offset - DMA_HIGH) as usize + i;
                    *b = DMA_SIGNATURE.get(at).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (DMA_HIGH, 4) => self.dma_high = u32::from_be_bytes(data.try_into().expect("4")),
            (DMA_LOW, 4) => {
                let low = u32::from_be_bytes(data.try_into().expect("4"));
                let addr = u64::from(self.dma_high) << 32 | u64::from(low);
                self.dma_high = 0;
                self.dma(addr);
            }
            (DMA_HIGH, 8) => {
                let addr = u64::from_be_bytes(data.try_into().expect("8"));
                self.dma_high = 0;
                self.dma(addr);
            }
            // Writes through the data port were removed from QEMU (2.4); ignored.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: usize = 0x10000;

    fn device() -> FwCfg {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        FwCfg::new(mem)
    }

    fn select(d: &mut FwCfg, key: u16) {
        d.write(PORT_BASE, 0, &key.to_le_bytes());
    }

    fn port_read(d: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0];
                d.read(PORT_BASE, DATA, &mut b);
                b[0]
            })
            .collect()
    }

    /// Writes a control structure at `at` and starts the transfer with two 32-bit writes.
    fn dma(d: &mut FwCfg, at: u64, control: u32, length: u32, target: u64) -> u32 {
        let mut s = control.to_be_bytes().to_vec();
        s.extend_from_slice(&length.to_be_bytes());
        s.extend_from_slice(&target.to_be_bytes());
        d.memory.write_slice(&s, GuestAddress(at)).unwrap();
        d.write(PORT_BASE, DMA_HIGH, &((at >> 32) as u32).to_be_bytes());
        d.write(PORT_BASE, DMA_LOW, &(at as u32).to_be_bytes());
        u32::from_be_bytes(d.memory.read_obj::<[u8; 4]>(GuestAddress(at)).unwrap())
    }

    fn mem(d: &FwCfg, at: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        d.memory.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    #[test]
    fn port_interface_signature_id_and_end_of_item() {
        let mut d = device();
        select(&mut d, keys::SIGNATURE);
        assert_eq!(port_read(&mut d, 6), b"QEMU\0\0");
        select(&mut d, keys::ID | WRITE_CHANNEL);
        assert_eq!(port_read(&mut d, 4), 3u32.to_le_bytes());
        // Unknown keys read as zeroes (how SeaBIOS sees "no kernel", "no NUMA").
        select(&mut d, keys::KERNEL_SIZE);
        assert_eq!(port_read(&mut d, 4), [0; 4]);
        // Reselecting restarts the item.
        select(&mut d, keys::SIGNATURE);
        assert_eq!(port_read(&mut d, 2), b"QE");
        select(&mut d, keys::SIGNATURE);
        assert_eq!(port_read(&mut d, 1), b"Q");
    }

    #[test]
    fn string_reads_of_the_data_port_return_consecutive_bytes() {
        let mut d = device();
        select(&mut d, keys::ID);
        let mut id = [0u8; 4];
        d.read(PORT_BASE, DATA, &mut id);
        assert_eq!(u32::from_le_bytes(id), ID_TRADITIONAL | ID_DMA);
    }

    #[test]
    fn dma_signature_reads_back() {
        let mut d = device();
        let mut b = [0u8; 4];
        d.read(PORT_BASE, DMA_HIGH, &mut b);
        let mut c = [0u8; 4];
        d.read(PORT_BASE, DMA_LOW, &mut c);
        assert_eq!([b, c].concat(), DMA_SIGNATURE);
    }

    fn directory(d: &mut FwCfg) -> Vec<(String, u32, u16)> {
        select(d, keys::FILE_DIR);
        let count = u32::from_be_bytes(port_read(d, 4).try_into().unwrap());
        (0..count)
            .map(|_| {
                let e = port_read(d, 64);
                let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
                let key = u16::from_be_bytes([e[4], e[5]]);
                let name = e[8..].split(|&b| b == 0).next().unwrap();
                (String::from_utf8(name.to_vec()).unwrap(), size, key)
            })
            .collect()
    }

    #[test]
    fn directory_lists_files_big_endian_and_sorted() {
        let mut d = device();
        assert!(directory(&mut d).is_empty());
        let k1 = d.add_file("etc/e820", vec![1; 40], false).unwrap();
        let k2 = d.add_file("bootorder", b"/x\n".to_vec(), false).unwrap();
        assert_eq!((k1, k2), (0x20, 0x21));
        let dir = directory(&mut d);
        assert_eq!(
            dir,
            vec![("bootorder".into(), 3, 0x21), ("etc/e820".into(), 40, 0x20)]
        );
        select(&mut d, k1);
        assert_eq!(port_read(&mut d, 41), [vec![1; 40], vec![0]].concat());
        assert_eq!(
            d.add_file("bootorder", vec![], false),
            Err(FwCfgError::Duplicate("bootorder".into()))
        );
        let long = "x".repeat(56);
        assert!(matches!(
            d.add_file(&long, vec![], false),
            Err(FwCfgError::BadName(_))
        ));
        assert!(matches!(
            d.add_file("", vec![], false),
            Err(FwCfgError::BadName(_))
        ));
    }

    #[test]
    fn dma_select_read_skip_and_zero_fill() {
        let mut d = device();
        let key = d.add_file("f", (0..100u8).collect(), false).unwrap();
        let ctl = u32::from(key) << 16 | DMA_SELECT | DMA_READ;
        assert_eq!(dma(&mut d, 0x100, ctl, 10, 0x1000), 0);
        assert_eq!(mem(&d, 0x1000, 10), (0..10u8).collect::<Vec<_>>());
        // Continue where the last read stopped, after a skip.
        assert_eq!(dma(&mut d, 0x100, DMA_SKIP, 80, 0), 0);
        d.memory
            .write_slice(&[0xaa; 20], GuestAddress(0x2000))
            .unwrap();
        assert_eq!(dma(&mut d, 0x100, DMA_READ, 20, 0x2000), 0);
        // Bytes 90..100, then zeroes past the end.
        let want: Vec<u8> = (90..100u8).chain([0; 10]).collect();
        assert_eq!(mem(&d, 0x2000, 20), want);
        // The port interface agrees on the offset: exhausted.
        assert_eq!(port_read(&mut d, 2), [0, 0]);
    }

    #[test]
    fn dma_refuses_addresses_outside_memory() {
        let mut d = device();
        let key = d.add_file("f", vec![7; 64], false).unwrap();
        let ctl = u32::from(key) << 16 | DMA_SELECT | DMA_READ;
        // Target straddling the end of memory, beyond it, and wrapping around.
        for target in [MEM as u64 - 8, 1 << 40, u64::MAX - 4] {
            assert_eq!(
                dma(&mut d, 0x100, ctl, 64, target),
                DMA_ERROR,
                "{target:#x}"
            );
        }
        assert_eq!(
            mem(&d, MEM as u64 - 8, 8),
            [0; 8],
            "nothing partially written"
        );
        // A huge length is refused, not looped over.
        assert_eq!(dma(&mut d, 0x100, ctl, u32::MAX, 0), DMA_ERROR);
        // A control structure outside memory: nothing happens, nothing panics.
        d.write(PORT_BASE, DMA_HIGH, &1u32.to_be_bytes());
        d.write(PORT_BASE, DMA_LOW, &0u32.to_be_bytes());
        d.write(PORT_BASE, DMA_HIGH, &0u32.to_be_bytes());
        d.write(PORT_BASE, DMA_LOW, &(MEM as u32 - 4).to_be_bytes());
        // One 64-bit write (the MMIO form) works too.
        d.memory
            .write_slice(
                &[
                    (u32::from(key) << 16 | DMA_SELECT | DMA_READ).to_be_bytes(),
                    4u32.to_be_bytes(),
                ]
                .concat(),
                GuestAddress(0x200),
            )
            .unwrap();
        d.memory
            .write_slice(&0x3000u64.to_be_bytes(), GuestAddress(0x208))
            .unwrap();
        d.write(PORT_BASE, DMA_HIGH, &0x200u64.to_be_bytes());
        assert_eq!(mem(&d, 0x3000, 4), [7; 4]);
        assert_eq!(mem(&d, 0x200, 4), [0; 4]);
    }

    #[test]
    fn dma_write_only_into_writable_files_in_place() {
        let mut d = device();
        let ro = d.add_file("ro", vec![0; 8], false).unwrap();
        let rw = d.add_file("rw", vec![0; 8], true).unwrap();
        d.memory
            .write_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], GuestAddress(0x1000))
            .unwrap();
        let w = |k: u16| u32::from(k) << 16 | DMA_SELECT | DMA_WRITE;
        assert_eq!(dma(&mut d, 0x100, w(ro), 8, 0x1000), DMA_ERROR);
        assert_eq!(d.file("ro").unwrap(), [0; 8]);
        // Two bytes in, ten bytes long: the file keeps its size.
        assert_eq!(
            dma(
                &mut d,
                0x100,
                u32::from(rw) << 16 | DMA_SELECT | DMA_SKIP,
                2,
                0
            ),
            0
        );
        assert_eq!(dma(&mut d, 0x100, DMA_WRITE, 10, 0x1000), 0);
        assert_eq!(d.file("rw").unwrap(), [0, 0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn write_hook_sees_each_dma_write_with_the_whole_file() {
        use std::sync::{Arc, Mutex};
        let mut d = device();
        let seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let s = seen.clone();
        let key = d
            .add_writable_file_with_hook(
                "etc/hooked",
                vec![0; 4],
                Box::new(move |b| s.lock().unwrap().push(b.to_vec())),
            )
            .unwrap();
        d.memory
            .write_slice(&[1, 2, 3, 4, 5, 6], GuestAddress(0x1000))
            .unwrap();
        let sel = u32::from(key) << 16 | DMA_SELECT;
        // Two bytes at offset 2, then a write past the end (nothing changes: no call), then
        // a read (no call), then a refused write from outside memory (no call).
        assert_eq!(dma(&mut d, 0x100, sel | DMA_SKIP, 2, 0), 0);
        assert_eq!(dma(&mut d, 0x100, DMA_WRITE, 2, 0x1000), 0);
        assert_eq!(dma(&mut d, 0x100, DMA_WRITE, 6, 0x1000), 0);
        assert_eq!(dma(&mut d, 0x100, sel | DMA_READ, 4, 0x2000), 0);
        assert_eq!(dma(&mut d, 0x100, sel | DMA_WRITE, 4, 1 << 40), DMA_ERROR);
        // The whole file in one write, as SeaBIOS writes etc/ramfb.
        assert_eq!(dma(&mut d, 0x100, sel | DMA_WRITE, 4, 0x1002), 0);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![vec![0, 0, 1, 2], vec![3, 4, 5, 6]]
        );
        assert_eq!(d.file("etc/hooked").unwrap(), [3, 4, 5, 6]);
    }

    #[test]
    fn skip_and_reads_past_the_end_do_not_overflow() {
        let mut d = device();
        let key = d.add_file("f", vec![9; 4], false).unwrap();
        let ctl = u32::from(key) << 16 | DMA_SELECT | DMA_SKIP;
        assert_eq!(dma(&mut d, 0x100, ctl, u32::MAX, 0), 0);
        for _ in 0..3 {
            assert_eq!(dma(&mut d, 0x100, DMA_SKIP, u32::MAX, 0), 0);
        }
        assert_eq!(dma(&mut d, 0x100, DMA_READ, 4, 0x1000), 0);
        assert_eq!(mem(&d, 0x1000, 4), [0; 4]);
    }
}
