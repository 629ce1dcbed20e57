//! The PCI configuration and virtio-pci register harness.

use super::*;

// ---------------------------------------------------------------------------------------------
// PCI

/// An [`MsiRouter`] that records routes instead of programming KVM.
#[derive(Default)]
struct FakeRouter {
    next_gsi: Mutex<u32>,
    routes: Mutex<Vec<(u32, MsiMessage)>>,
}

impl MsiRouter for FakeRouter {
    fn allocate_gsi(&self) -> io::Result<u32> {
        let mut n = self.next_gsi.lock().unwrap();
        *n += 1;
        Ok(23 + *n)
    }
    fn set_msi(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        self.routes.lock().unwrap().push((gsi, msg));
        Ok(())
    }
    fn register_irqfd(&self, _fd: &EventFd, _gsi: u32) -> io::Result<()> {
        Ok(())
    }
    fn unregister_irqfd(&self, _fd: &EventFd, _gsi: u32) -> io::Result<()> {
        Ok(())
    }
}

/// KVM's ioeventfd table, shared by all devices: (device, fd, address).
type IoEventTable = Arc<Mutex<Vec<(usize, RawFd, u64)>>>;

/// [`IoEvents`] with KVM's rules: one registration per address, unregistering needs the
/// same fd and address.
struct FakeIoEvents {
    device: usize,
    table: IoEventTable,
}

impl IoEvents for FakeIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        let mut t = self.table.lock().unwrap();
        if t.iter().any(|e| e.2 == addr) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        t.push((self.device, fd.as_raw_fd(), addr));
        Ok(())
    }
    fn unregister(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        let mut t = self.table.lock().unwrap();
        let before = t.len();
        t.retain(|e| !(e.1 == fd.as_raw_fd() && e.2 == addr));
        if t.len() == before {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        Ok(())
    }
}

type InterruptSlot = Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>;

/// Features the fake device offers.
const FAKE_FEATURES: u64 = features::VERSION_1 | features::RING_EVENT_IDX | 1;

/// A virtio device that checks what the transport hands it.
struct FakeDevice {
    /// Type 0x20 + tag, FAKE_FEATURES, 16 bytes of configuration space.
    info: DeviceInfo,
    fail_activate: bool,
    active: bool,
    interrupt: InterruptSlot,
}

impl VirtioDevice for FakeDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Bytes 0-3 are the device's tag and stay; the rest is writable.
        for (i, b) in data.iter().enumerate() {
            if let Some(o) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|o| (4..16).contains(o))
            {
                self.info.config[o] = *b;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        assert!(!self.active, "activated twice without a reset");
        let sizes = &self.info.queue_sizes;
        assert_eq!(ctx.queues.len(), sizes.len(), "queue count");
        assert_eq!(ctx.queue_events.len(), sizes.len(), "event count");
        assert_eq!(ctx.acked_features & !FAKE_FEATURES, 0, "unoffered feature");
        assert_ne!(ctx.acked_features & features::VERSION_1, 0, "legacy driver");
        for (q, max) in ctx.queues.iter().zip(sizes) {
            assert!(q.size() <= *max, "queue larger than offered");
            if q.ready() {
                assert!(q.is_valid(&ctx.mem), "invalid ready queue handed over");
            }
        }
        if self.fail_activate {
            return Err(ActivateError("injected".into()));
        }
        self.active = true;
        *self.interrupt.lock().unwrap() = Some(ctx.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.active = false;
        *self.interrupt.lock().unwrap() = None;
    }
}

/// Offsets inside BAR 0 (mirroring `virtio::pci`).
const DEVICE_CFG: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;

struct Rig {
    pci: Arc<PciBus>,
    mmio: Arc<Bus>,
    pio: Bus,
    devices: Vec<(usize, Arc<Mutex<VirtioPci>>, InterruptSlot, usize)>,
    ioevents: IoEventTable,
    header: Vec<[u32; 16]>,
    caps: Vec<Vec<(usize, u8)>>,
    bar_history: BTreeSet<u64>,
}

/// Bits of each header dword that must never change (command bits and BAR address bits are
/// the guest's to write).
fn header_ro_mask(reg: usize) -> u32 {
    let cmd = u32::from(pcicfg::CMD_MEMORY | pcicfg::CMD_BUS_MASTER | pcicfg::CMD_INTX_DISABLE);
    match reg {
        pcicfg::COMMAND => !cmd,
        pcicfg::BAR0 => (BAR_SIZE as u32) - 1,
        pcicfg::INTERRUPT_LINE => 0xffff_ff00,
        _ => 0xffff_ffff,
    }
}

/// The capability list as (offset, id), read from the device's config space.
fn cap_list(dev: &mut dyn PciDevice) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut p = (dev.read_config(pcicfg::CAP_PTR) & 0xff) as usize;
    while p != 0 && p < CONFIG_SIZE && out.len() < 48 {
        let d = dev.read_config(p & !3) >> (8 * (p & 3));
        out.push((p, d as u8));
        p = ((d >> 8) & 0xff) as usize;
    }
    out
}

impl Rig {
    fn new(ndev: usize, nqueues: usize, fail_activate: bool) -> Rig {
        let mmio = Arc::new(Bus::new());
        let pio = Bus::new();
        let pci = Arc::new(PciBus::new(mmio.clone()));
        mmio.insert(
            layout::ECAM_BASE,
            layout::ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(Arc::downgrade(&pci)))),
        )
        .expect("ECAM");
        pio.insert(
            CONFIG_IO_BASE,
            CONFIG_IO_LEN,
            Arc::new(Mutex::new(PciConfigIo::new(Arc::downgrade(&pci)))),
        )
        .expect("config ports");
        let mem = guest_memory(&[]);
        let router = Arc::new(FakeRouter::default());
        let ioevents = IoEventTable::default();
        let mut devices = Vec::new();
        for i in 0..ndev {
            let slot: InterruptSlot = Arc::default();
            let tag = 0xa0 + i as u8;
            let dev = FakeDevice {
                info: DeviceInfo {
                    device_type: 0x20 + u32::from(tag),
                    pci_class: (0xff, 0, 0),
                    queue_sizes: (0..nqueues).map(|q| 256 >> q).collect(),
                    features: FAKE_FEATURES,
                    config: vec![tag; 16],
                },
                fail_activate,
                active: false,
                interrupt: slot.clone(),
            };
            let vp = VirtioPci::new(
                Box::new(dev),
                mem.clone(),
                &pci,
                router.clone(),
                Arc::new(FakeIoEvents {
                    device: i,
                    table: ioevents.clone(),
                }),
            )
            .expect("virtio-pci device");
            let vp = Arc::new(Mutex::new(vp));
            let pci_slot = pci.add(vp.clone()).expect("slot");
            devices.push((pci_slot, vp, slot, nqueues));
        }
        let slots = 1 + devices.len();
        let header = (0..slots)
            .map(|s| std::array::from_fn(|i| pci.config_read(0, s as u8, 0, i * 4)))
            .collect();
        let caps = devices
            .iter()
            .map(|d| cap_list(&mut *d.1.lock().unwrap()))
            .collect();
        let bar_history = devices
            .iter()
            .map(|d| d.1.lock().unwrap().bars()[0].1.addr)
            .collect();
        Rig {
            pci,
            mmio,
            pio,
            devices,
            ioevents,
            header,
            caps,
            bar_history,
        }
    }

    fn bar(&self, d: usize) -> u64 {
        self.devices[d].1.lock().unwrap().bars()[0].1.addr
    }

    /// The tag of whichever device answers at `addr`'s device config region, if any.
    fn tag_at(&self, bar: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        let addr = bar.checked_add(DEVICE_CFG)?;
        self.mmio.read(addr, &mut b).then_some(b[0])
    }

    fn cap_offset(&self, d: usize, id: u8) -> Option<usize> {
        self.caps[d].iter().find(|c| c.1 == id).map(|c| c.0)
    }

    fn config_write(&self, slot: usize, reg: usize, data: &[u8]) {
        self.pci.config_write(0, slot as u8, 0, reg, data);
    }

    fn common_write(&self, d: usize, offset: u64, data: &[u8]) {
        self.devices[d].1.lock().unwrap().bar_write(0, offset, data);
    }

    /// What a Linux driver does to bring the device up, with queues of `1 << size_log2`.
    fn bring_up(&self, d: usize, arg: u8) {
        let slot = self.devices[d].0;
        let nqueues = self.devices[d].3;
        let size_log2 = u64::from(arg & 7) + 1;
        self.config_write(slot, pcicfg::COMMAND, &[0x06, 0x04]);
        if arg & 0x08 != 0 {
            if let Some(m) = self.cap_offset(d, crate::pci::msix::CAP_ID) {
                self.config_write(slot, m + 3, &[0x80]);
            }
        }
        self.common_write(d, 0x14, &[0]);
        self.common_write(d, 0x14, &[status::ACKNOWLEDGE | status::DRIVER]);
        for (sel, v) in [
            (0u32, FAKE_FEATURES as u32),
            (1, (FAKE_FEATURES >> 32) as u32),
        ] {
            self.common_write(d, 0x08, &sel.to_le_bytes());
            self.common_write(d, 0x0c, &v.to_le_bytes());
        }
        self.common_write(
            d,
            0x14,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
        );
        self.common_write(d, 0x10, &0u16.to_le_bytes());
        for q in 0..nqueues {
            let base = 0x3000 * q as u64;
            self.common_write(d, 0x16, &(q as u16).to_le_bytes());
            self.common_write(d, 0x18, &(1u16 << size_log2).to_le_bytes());
            self.common_write(d, 0x1a, &(q as u16 + 1).to_le_bytes());
            for (reg, addr) in [(0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)] {
                self.common_write(d, reg, &(addr as u32).to_le_bytes());
                self.common_write(d, reg + 4, &0u32.to_le_bytes());
            }
            self.common_write(d, 0x1c, &1u16.to_le_bytes());
        }
        if arg & 0x10 != 0 {
            // Unmask every vector with a valid-looking message.
            for v in 0..=nqueues as u64 {
                let t = 0x4000 + 16 * v;
                self.common_write(d, t, &0xfee0_0000u32.to_le_bytes());
                self.common_write(d, t + 8, &(0x30 + v as u32).to_le_bytes());
                self.common_write(d, t + 12, &0u32.to_le_bytes());
            }
        }
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.common_write(d, 0x14, &[all | status::DRIVER_OK]);
    }

    fn check(&mut self, strict: &StrictChecks) {
        // Read-only header fields and the capability chain never change.
        for (slot, want) in self.header.iter().enumerate() {
            for (i, w) in want.iter().enumerate() {
                let reg = i * 4;
                let got = self.pci.config_read(0, slot as u8, 0, reg);
                let m = header_ro_mask(reg);
                assert_eq!(got & m, w & m, "slot {slot} read-only reg {reg:#x} changed");
            }
        }
        for d in 0..self.devices.len() {
            let caps = cap_list(&mut *self.devices[d].1.lock().unwrap());
            assert_eq!(caps, self.caps[d], "capability chain of device {d} changed");
            let bar = self.bar(d);
            let reg = self
                .pci
                .config_read(0, self.devices[d].0 as u8, 0, pcicfg::BAR0);
            // While the guest sizes the BAR the register holds the size mask and the mapping
            // stays where it was.
            let sizing = u64::from(reg & !0xf) == (!(BAR_SIZE - 1)) & 0xffff_fff0;
            assert!(
                sizing || u64::from(reg & !0xf) == bar,
                "BAR register {reg:#x} vs BAR {bar:#x} of device {d}"
            );
            assert_eq!(bar % BAR_SIZE, 0, "BAR of device {d} misaligned: {bar:#x}");
            assert!(bar + BAR_SIZE <= 1 << 32, "32-bit BAR beyond 4 GiB");
            self.bar_history.insert(bar);
        }
        // Nothing is ever mapped outside the PCI window except ECAM.
        for &addr in &self.bar_history {
            let outside = !(layout::PCI_MMIO_START..layout::PCI_MMIO_END).contains(&addr);
            let ecam = (layout::ECAM_BASE..layout::ECAM_BASE + layout::ECAM_SIZE).contains(&addr);
            if outside && !ecam {
                let mut b = [0u8; 1];
                assert!(
                    !self.mmio.read(addr, &mut b),
                    "BAR mapped outside the PCI window at {addr:#x}"
                );
            }
        }
        if strict.ecam_stays {
            let mut d = [0u8; 4];
            assert!(
                self.mmio.read(layout::ECAM_BASE, &mut d),
                "ECAM unmapped by BAR programming"
            );
        }
        if strict.no_stale_bars {
            // Whatever answers at an address a BAR once held is a device whose BAR is there.
            for &addr in &self.bar_history {
                if let Some(tag) = self.tag_at(addr) {
                    let owners: Vec<u8> = (0..self.devices.len())
                        .filter(|&d| self.bar(d) == addr)
                        .map(|d| 0xa0 + d as u8)
                        .collect();
                    assert!(
                        owners.contains(&tag),
                        "device {tag:#x} still answers at {addr:#x}, where its BAR is not \
                         (BARs there: {owners:x?})"
                    );
                }
            }
        }
        if strict.ioevents_follow {
            // Each device's notify addresses are registered exactly where its BAR is mapped.
            let table = self.ioevents.lock().unwrap().clone();
            for d in 0..self.devices.len() {
                let bar = self.bar(d);
                let mapped = self.tag_at(bar) == Some(0xa0 + d as u8);
                let mut got: Vec<u64> = table.iter().filter(|e| e.0 == d).map(|e| e.2).collect();
                got.sort_unstable();
                let want: Vec<u64> = if mapped {
                    (0..self.devices[d].3 as u64)
                        .map(|q| bar + NOTIFY + 4 * q)
                        .collect()
                } else {
                    Vec::new()
                };
                assert_eq!(got, want, "ioeventfds of device {d} (BAR {bar:#x})");
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // ECAM holds the PCI bus, which holds the MMIO bus, which holds ECAM: without breaking
        // the cycle every run would leak its devices and their eventfds (so does `Vm`).
        self.mmio.remove(layout::ECAM_BASE);
    }
}

/// Invariants that berth does not hold today (see docs/fuzzing.md, "Findings"): off in the
/// fuzz targets so they keep exploring, on in the tests that pin the bugs down.
#[derive(Clone, Copy, Debug, Default)]
pub struct StrictChecks {
    /// BAR programming never unmaps ECAM (or anything that is not the BAR).
    pub ecam_stays: bool,
    /// No device stays mapped where its BAR no longer is.
    pub no_stale_bars: bool,
    /// Queue-notify ioeventfds are registered where, and only where, the BAR is mapped.
    pub ioevents_follow: bool,
}

/// What a PCI run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PciReport {
    /// Operations run.
    pub ops: usize,
    /// Devices active at the end.
    pub active: usize,
    /// Whether any BAR moved from where the VMM put it.
    pub bar_moved: bool,
}

/// PCI: configuration space (mechanism #1 and ECAM) and BAR accesses against one or two
/// virtio-pci functions over a fake device, with the checks berth holds today.
pub fn pci_config(data: &[u8]) -> PciReport {
    pci_config_checked(data, StrictChecks::default())
}

/// Operation codes of [`pci_config`] inputs (the opcode byte modulo their count).
pub mod pci_ops {
    /// Write the 0xCF8 address register: u32.
    pub const CF8: u8 = 0;
    /// Access 0xCFC-0xCFF: byte `port&3 | size<<2 | write<<4`, value u32.
    pub const CFC: u8 = 1;
    /// ECAM access: u32 offset (masked to slots 0-7), byte `size-1 | write<<3`, value u64.
    pub const ECAM: u8 = 2;
    /// Access through the MMIO bus at a device's current BAR: byte `dev | (size-1)<<1 |
    /// write<<4`, u16 offset, value u64.
    pub const BAR: u8 = 3;
    /// MMIO access anywhere near the PCI window: u32 offset from 64 KiB below it, byte
    /// `size-1 | write<<3`, value u64.
    pub const MMIO: u8 = 4;
    /// Access the device's BAR directly (as the PCI_CFG window does): byte `dev | (size-1)<<1
    /// | write<<4`, u32 offset, value u64.
    pub const DIRECT: u8 = 5;
    /// Driver bring-up: byte `dev<<7 | unmask<<4 | msix<<3 | size_log2-1`.
    pub const BRING_UP: u8 = 6;
    /// The device raises an interrupt: byte `dev<<7 | config<<6 | queue`.
    pub const INTERRUPT: u8 = 7;
    /// BAR sizing, then an address: byte `dev | restore<<1`, u32 address.
    pub const SIZE_BAR: u8 = 8;
    /// Number of operation codes.
    pub const COUNT: u8 = 9;
}

/// Longest operation sequence run per input.
pub const MAX_PCI_OPS: usize = 256;

/// [`pci_config`] with a chosen set of [`StrictChecks`].
///
/// Input: byte 0 `nqueues-1 (bits 0-1) | two devices<<2 | activation fails<<3`; then
/// operations ([`pci_ops`]), each an opcode byte and its arguments.
///
/// Checks after every operation: no panic; read-only header fields and capability chains
/// keep their values; BARs stay naturally aligned below 4 GiB; nothing is mapped outside the
/// PCI window but ECAM; the device only sees activations with the features it offered and
/// valid ready queues, never twice without a reset; plus the enabled [`StrictChecks`].
pub fn pci_config_checked(data: &[u8], strict: StrictChecks) -> PciReport {
    let mut input = Input(data);
    let setup = input.u8();
    let nqueues = usize::from(setup & 3) + 1;
    let ndev = if setup & 4 != 0 { 2 } else { 1 };
    let mut rig = Rig::new(ndev, nqueues, setup & 8 != 0);
    let initial: Vec<u64> = (0..ndev).map(|d| rig.bar(d)).collect();
    let mut report = PciReport::default();
    while !input.is_empty() && report.ops < MAX_PCI_OPS {
        let op = input.u8() % pci_ops::COUNT;
        match op {
            pci_ops::CF8 => {
                let v = input.u32();
                rig.pio.write(CONFIG_IO_BASE, &v.to_le_bytes());
            }
            pci_ops::CFC => {
                let a = input.u8();
                let v = input.u32().to_le_bytes();
                let port = CONFIG_IO_BASE + 4 + u64::from(a & 3);
                let size = [1, 2, 4, 4][usize::from((a >> 2) & 3)];
                if a & 0x10 != 0 {
                    rig.pio.write(port, &v[..size]);
                } else {
                    rig.pio.read(port, &mut [0u8; 4][..size]);
                }
            }
            pci_ops::ECAM | pci_ops::MMIO => {
                let off = input.u32();
                let a = input.u8();
                let v = input.u64().to_le_bytes();
                let addr = if op == pci_ops::ECAM {
                    layout::ECAM_BASE + u64::from(off & 0x3_ffff)
                } else {
                    layout::PCI_MMIO_START - 0x1_0000 + u64::from(off)
                };
                let size = usize::from(a & 7) + 1;
                if a & 8 != 0 {
                    rig.mmio.write(addr, &v[..size]);
                } else {
                    rig.mmio.read(addr, &mut [0u8; 8][..size]);
                }
            }
            pci_ops::BAR | pci_ops::DIRECT => {
                let a = input.u8();
                let d = usize::from(a & 1) % ndev;
                let size = usize::from((a >> 1) & 7) + 1;
                let off = if op == pci_ops::BAR {
                    u64::from(input.u16()) % BAR_SIZE
                } else {
                    u64::from(input.u32())
                };
                let v = input.u64().to_le_bytes();
                let write = a & 0x10 != 0;
                if op == pci_ops::BAR {
                    let addr = rig.bar(d) + off;
                    if write {
                        rig.mmio.write(addr, &v[..size]);
                    } else {
                        rig.mmio.read(addr, &mut [0u8; 8][..size]);
                    }
                } else {
                    let mut dev = rig.devices[d].1.lock().unwrap();
                    if write {
                        dev.bar_write(0, off, &v[..size]);
                    } else {
                        dev.bar_read(0, off, &mut [0u8; 8][..size]);
                    }
                }
            }
            pci_ops::BRING_UP => {
                let a = input.u8();
                rig.bring_up(usize::from(a >> 7) % ndev, a);
            }
            pci_ops::INTERRUPT => {
                let a = input.u8();
                let d = usize::from(a >> 7) % ndev;
                let irq = rig.devices[d].2.lock().unwrap().clone();
                if let Some(irq) = irq {
                    if a & 0x40 != 0 {
                        irq.notify_config();
                    } else {
                        irq.notify_queue(u16::from(a & 0x3f));
                    }
                }
            }
            _ => {
                let a = input.u8();
                let addr = input.u32();
                let d = usize::from(a & 1) % ndev;
                let slot = rig.devices[d].0;
                let old = rig.bar(d) as u32;
                rig.config_write(slot, pcicfg::BAR0, &[0xff; 4]);
                let got = rig.pci.config_read(0, slot as u8, 0, pcicfg::BAR0);
                let want = !(BAR_SIZE as u32 - 1);
                assert_eq!(got, want, "BAR sizing read back {got:#x}");
                if a & 2 != 0 {
                    rig.config_write(slot, pcicfg::BAR0, &old.to_le_bytes());
                }
                rig.config_write(slot, pcicfg::BAR0, &addr.to_le_bytes());
            }
        }
        report.ops += 1;
        rig.check(&strict);
    }
    report.active = rig
        .devices
        .iter()
        .filter(|d| d.2.lock().unwrap().is_some())
        .count();
    report.bar_moved = (0..ndev).any(|d| rig.bar(d) != initial[d]);
    report
}
