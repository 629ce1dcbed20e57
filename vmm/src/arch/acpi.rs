//! ACPI tables: a DSDT with the PCI host bridge, the legacy devices and a power button behind a
//! Generic Event Device, plus FADT, MADT (every vCPU, the IOAPIC) and MCFG (ECAM).
//!
//! A direct boot describes a hardware-reduced platform (no PM1 blocks, no SCI): power-off and
//! reset go through the FADT's sleep-control and reset registers on port [`PM_PORT`]. A
//! firmware boot cannot: on a hardware-reduced platform Linux never initialises the 8259 PIC
//! (it assumes there is none), and the PIC a BIOS leaves programmed for real mode (vectors from
//! 0x08, the timer unmasked, LINT0 in ExtINT) then delivers the first timer tick as vector 8,
//! a double fault. So the firmware's tables describe full ACPI hardware: PM1a event and
//! control blocks on port [`PM1_PORT`], an SCI on IRQ [`SCI_IRQ`] and a FACS, as on a PC; Linux
//! then remaps and masks the PIC as it does under QEMU. The reset register is the same.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Memory32Fixed, Method, Name,
    Notify, Package, Path, ResourceTemplate, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

/// Where the RSDP goes: the BIOS area Linux scans, reserved in the e820 map.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End of the area the tables may use.
const TABLES_END: u64 = 0x10_0000;
/// I/O port of the sleep control, sleep status and reset registers.
pub const PM_PORT: u64 = 0x600;
/// Value the guest writes to [`PM_PORT`] to reset.
pub const RESET_VALUE: u8 = 1;
/// SLP_TYP the DSDT's `_S5` announces for soft-off.
pub const S5_SLP_TYP: u8 = 5;
/// SLP_EN bit of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;
/// GSI of the Generic Event Device (the power button's interrupt).
pub const GED_GSI: u32 = 5;
/// I/O port of the PM1a event block (status and enable, 2 bytes each) of a firmware boot's
/// full ACPI hardware; the PM1a control block (2 bytes) follows at `PM1_PORT + 4`.
pub const PM1_PORT: u64 = 0x610;
/// Bytes of the PM1a event and control blocks together.
pub const PM1_LEN: u64 = 6;
/// ISA IRQ (and GSI) of the SCI of a firmware boot. Nothing raises it yet: the power button
/// stays behind the GED, and there are no fixed events.
pub const SCI_IRQ: u8 = 9;
/// SLP_EN of the PM1 control register (write-only: starts the sleep in SLP_TYP).
pub const PM1_SLP_EN: u16 = 1 << 13;
/// SCI_EN of the PM1 control register: always set, the platform is always in ACPI mode (the
/// FADT has no SMI command port to switch it).
pub const PM1_SCI_EN: u16 = 1;

/// Which ACPI hardware the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hardware {
    /// Hardware-reduced (direct boot).
    Reduced,
    /// PM1 blocks, an SCI and a FACS (firmware boot; see the module documentation).
    Full,
}

const OEM_ID: [u8; 6] = *b"BERTH ";
const OEM_TABLE: [u8; 8] = *b"BERTHVM ";

/// IAPC_BOOT_ARCH: an 8042 controller is present (so Linux probes the i8042), no VGA.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
#[error("ACPI tables do not fit in guest memory below 1 MiB")]
pub struct AcpiError;

/// A device `path` with `_HID` `hid` (an EISA id), an optional `_UID` and `_CRS`, and extra
/// children, serialized into `out`. Temporaries must live through the one expression, hence
/// the closure-free shape.
fn device(out: &mut Vec<u8>, path: &str, hid: &str, uid: Option<u32>, crs: &[&dyn Aml]) {
    let hid = EISAName::new(hid);
    let hid = Name::new("_HID".into(), &hid);
    let uid_val = uid.unwrap_or(0);
    let uid = uid.map(|_| Name::new("_UID".into(), &uid_val));
    let crs_tpl = ResourceTemplate::new(crs.to_vec());
    let crs_name = Name::new("_CRS".into(), &crs_tpl);
    let mut children: Vec<&dyn Aml> = vec![&hid];
    if let Some(u) = &uid {
        children.push(u);
    }
    if !crs.is_empty() {
        children.push(&crs_name);
    }
    Device::new(path.into(), children).to_aml_bytes(out);
}

fn dsdt() -> Vec<u8> {
    let mut body = Vec::new();

    // The PCI host bridge: bus 0, config ports, and the 32-bit BAR window.
    Device::new(
        "_SB_.PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_ADR".into(), &0u32),
            &Name::new("_SEG".into(), &0u32),
            &Name::new("_UID".into(), &0u32),
            &Name::new("_BBN".into(), &0u32),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &AddressSpace::new_bus_number(0u16, 0u16),
                    &IO::new(0xcf8, 0xcf8, 1, 8),
                    &AddressSpace::new_io(0u16, 0xcf7u16, None),
                    &AddressSpace::new_io(0xd00u16, 0xffffu16, None),
                    &AddressSpace::new_memory(
                        AddressSpaceCacheable::NotCacheable,
                        true,
                        layout::PCI_BAR_WINDOWS[0].0 as u32,
                        (layout::PCI_BAR_WINDOWS[0].1 - 1) as u32,
                        None,
                    ),
                    &AddressSpace::new_memory(
                        AddressSpaceCacheable::NotCacheable,
                        true,
                        layout::PCI_BAR_WINDOWS[1].0 as u32,
                        (layout::PCI_BAR_WINDOWS[1].1 - 1) as u32,
                        None,
                    ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut body);

    // Motherboard resources: the ECAM window MCFG points at.
    device(
        &mut body,
        "_SB_.MBRS",
        "PNP0C02",
        Some(1),
        &[&Memory32Fixed::new(
            false,
            layout::ECAM_BASE as u32,
            layout::ECAM_SIZE as u32,
        )],
    );
    device(
        &mut body,
        "_SB_.COM1",
        "PNP0501",
        Some(1),
        &[
            &IO::new(0x3f8, 0x3f8, 0, 8),
            &Interrupt::new(true, true, false, false, 4),
        ],
    );
    device(
        &mut body,
        "_SB_.PS2K",
        "PNP0303",
        None,
        &[
            &IO::new(0x60, 0x60, 1, 1),
            &IO::new(0x64, 0x64, 1, 1),
            &Interrupt::new(true, true, false, false, 1),
        ],
    );
    device(
        &mut body,
        "_SB_.RTC_",
        "PNP0B00",
        None,
        &[
            &IO::new(0x70, 0x70, 1, 2),
            &Interrupt::new(true, true, false, false, 8),
        ],
    );
    device(&mut body, "_SB_.PWRB", "PNP0C0C", Some(0), &[]);

    // The Generic Event Device: its interrupt runs _EVT, which notifies the power button.
    Device::new(
        "_SB_.GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &0u32),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&Interrupt::new(true, true, false, false, GED_GSI)]),
            ),
            &Method::new(
                "_EVT".into(),
                1,
                true,
                vec![&Notify::new(&Path::new("\\_SB_.PWRB"), &0x80u8)],
            ),
        ],
    )
    .to_aml_bytes(&mut body);

    // Soft-off: the SLP_TYP the guest writes to the sleep control register.
    Name::new("_S5_".into(), &Package::new(vec![&S5_SLP_TYP, &0u8])).to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64, hw: Hardware) -> Vec<u8> {
    let pm = GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, PM_PORT);
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .preferred_pm_profile(PmProfile::EnterpriseServer);
    match hw {
        Hardware::Reduced => {
            f = f.flag(Flags::HwReducedAcpi);
            f.sleep_control_reg = pm;
            f.sleep_status_reg = pm;
        }
        Hardware::Full => {
            // No SMI command port: the platform is in ACPI mode from the start (SCI_EN set).
            f.sci_int = u16::from(SCI_IRQ).into();
            f.pm1a_evt_blk = (PM1_PORT as u32).into();
            f.pm1_evt_len = 4;
            f.pm1a_cnt_blk = (PM1_PORT as u32 + 4).into();
            f.pm1_cnt_len = 2;
            f.x_pm1a_evt_blk =
                GAS::new(GasSpace::SystemIo, 32, 0, AccessSize::WordAccess, PM1_PORT);
            f.x_pm1a_cnt_blk = GAS::new(
                GasSpace::SystemIo,
                16,
                0,
                AccessSize::WordAccess,
                PM1_PORT + 4,
            );
        }
    }
    f.reset_reg = pm;
    f.reset_value = RESET_VALUE;
    f.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    let mut v = Vec::new();
    f.finalize().to_aml_bytes(&mut v);
    v
}

/// The FACS a full-hardware FADT points to: no global lock users, no waking vector (the VM
/// never sleeps), 64 bytes.
fn facs() -> Vec<u8> {
    let mut v = Vec::new();
    acpi_tables::facs::FACS::new().to_aml_bytes(&mut v);
    v
}

fn madt(vcpus: u8, hw: Hardware) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE, 1);
    t.write_u32(36, layout::APIC_START as u32);
    t.write_u32(40, 1); // PCAT_COMPAT: there are 8259s (KVM's), mask them
    for id in 0..vcpus {
        // Processor local APIC: uid, APIC id, enabled.
        t.append_slice(&[0, 8, id, id, 1, 0, 0, 0]);
    }
    let ioapic_id = vcpus;
    let mut io = vec![1, 12, ioapic_id, 0];
    io.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    io.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&io);
    if hw == Hardware::Full {
        // Interrupt source override: ISA IRQ 9 (the SCI) is GSI 9, level-triggered, active
        // high, as ACPI's SCI is on a PC (flags 0b11 << 2 | 0b01).
        let mut iso = vec![2, 10, 0, SCI_IRQ];
        iso.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
        iso.extend_from_slice(&0x000du16.to_le_bytes());
        t.append_slice(&iso);
    }
    // Local APIC NMI on LINT1 of every processor.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t.as_slice().to_vec()
}

fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, OEM_TABLE, 1);
    m.add_ecam(layout::ECAM_BASE, 0, 0, 0);
    let mut v = Vec::new();
    m.to_aml_bytes(&mut v);
    v
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = Sdt::new(*b"XSDT", 36, 1, OEM_ID, OEM_TABLE, 1);
    for e in entries {
        t.append_slice(&e.to_le_bytes());
    }
    t.update_checksum();
    t.as_slice().to_vec()
}

/// Writes every table for a VM of `vcpus` vCPUs; returns the RSDP's address.
pub fn setup(mem: &GuestMemoryMmap, vcpus: u8) -> Result<u64, AcpiError> {
    let mut next = RSDP_ADDR + 64;
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let at = next;
        if at + bytes.len() as u64 > TABLES_END {
            return Err(AcpiError);
        }
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|_| AcpiError)?;
        next = (at + bytes.len() as u64).next_multiple_of(16);
        Ok(at)
    };
    let dsdt_addr = place(&dsdt())?;
    let fadt_addr = place(&fadt(dsdt_addr, Hardware::Reduced))?;
    let madt_addr = place(&madt(vcpus, Hardware::Reduced))?;
    let mcfg_addr = place(&mcfg())?;
    let xsdt_addr = place(&xsdt(&[fadt_addr, madt_addr, mcfg_addr]))?;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(RSDP_ADDR))
        .map_err(|_| AcpiError)?;
    Ok(RSDP_ADDR)
}

/// fw_cfg file holding the tables a firmware installs (DSDT, FADT, MADT, MCFG, XSDT).
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file holding the RSDP.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file holding the linker/loader script that installs the two files above.
pub const LOADER_FILE: &str = "etc/table-loader";

/// Length of a file name in a loader command, NUL padding included.
pub const LOADER_NAME_LEN: usize = 56;
/// Size of one loader command.
pub const LOADER_ENTRY_LEN: usize = 128;
/// Loader command: allocate a file's contents in guest memory.
pub const LOADER_ALLOCATE: u32 = 1;
/// Loader command: add a file's guest address to a pointer inside another file.
pub const LOADER_ADD_POINTER: u32 = 2;
/// Loader command: make a byte range sum to zero by adjusting one byte.
pub const LOADER_ADD_CHECKSUM: u32 = 3;
/// Allocation zone: anywhere in RAM below 4 GiB.
pub const ZONE_HIGH: u8 = 1;
/// Allocation zone: the BIOS area 0xF0000-0xFFFFF (where the RSDP must be found).
pub const ZONE_FSEG: u8 = 2;

/// The ACPI tables as a firmware gets them through fw_cfg: the table blob, the RSDP and the
/// loader script (QEMU's linker/loader format, little-endian 128-byte commands) that tells
/// the firmware where to put them, which pointers to relocate and which checksums to fix.
pub struct FirmwareAcpi {
    /// Contents of [`TABLES_FILE`]: pointers inside it are offsets into the blob.
    pub tables: Vec<u8>,
    /// Contents of [`RSDP_FILE`]: its XSDT address is an offset into the tables.
    pub rsdp: Vec<u8>,
    /// Contents of [`LOADER_FILE`].
    pub loader: Vec<u8>,
}

#[derive(Default)]
struct Loader(Vec<u8>);

impl Loader {
    fn entry(&mut self, command: u32, body: &[u8]) {
        let start = self.0.len();
        self.0.extend_from_slice(&command.to_le_bytes());
        self.0.extend_from_slice(body);
        self.0.resize(start + LOADER_ENTRY_LEN, 0);
    }

    fn name(out: &mut Vec<u8>, name: &str) {
        let mut n = [0u8; LOADER_NAME_LEN];
        n[..name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&n);
    }

    fn allocate(&mut self, file: &str, align: u32, zone: u8) {
        let mut b = Vec::new();
        Self::name(&mut b, file);
        b.extend_from_slice(&align.to_le_bytes());
        b.push(zone);
        self.entry(LOADER_ALLOCATE, &b);
    }

    /// The `size`-byte value at `offset` in `dest` gets `src`'s address added.
    fn add_pointer(&mut self, dest: &str, src: &str, offset: usize, size: u8) {
        let mut b = Vec::new();
        Self::name(&mut b, dest);
        Self::name(&mut b, src);
        b.extend_from_slice(&(offset as u32).to_le_bytes());
        b.push(size);
        self.entry(LOADER_ADD_POINTER, &b);
    }

    /// The byte at `offset` in `file` makes `file[start..start + len]` sum to zero.
    fn add_checksum(&mut self, file: &str, offset: usize, start: usize, len: usize) {
        let mut b = Vec::new();
        Self::name(&mut b, file);
        for v in [offset, start, len] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        self.entry(LOADER_ADD_CHECKSUM, &b);
    }
}

/// Offset of the checksum byte in an ACPI table header.
const SDT_CHECKSUM: usize = 9;
/// Offset of X_DSDT in the FADT.
const FADT_X_DSDT: usize = 140;
/// Offset of X_FIRMWARE_CTRL (the FACS) in the FADT.
const FADT_X_FIRMWARE_CTRL: usize = 132;
/// Offset of the XSDT address in the RSDP.
const RSDP_XSDT: usize = 24;

/// The tables a firmware installs (see [`FirmwareAcpi`]): the direct boot's DSDT, MCFG and
/// XSDT, a FADT and MADT for full ACPI hardware (module documentation) and a FACS. Checksums
/// in the files are zero: the loader's checksum commands, which run after the pointers are
/// relocated, make them valid.
pub fn firmware_files(vcpus: u8) -> FirmwareAcpi {
    let mut blob: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut place = |blob: &mut Vec<u8>, t: Vec<u8>| -> usize {
        let at = blob.len().next_multiple_of(8);
        blob.resize(at, 0);
        blob.extend_from_slice(&t);
        spans.push((at, t.len()));
        at
    };
    // The FACS first: the file is allocated 64-byte aligned, and so must the FACS be.
    let facs_at = 0;
    blob.extend_from_slice(&facs());
    let dsdt = place(&mut blob, dsdt());
    let fadt = place(&mut blob, fadt(dsdt as u64, Hardware::Full));
    let madt = place(&mut blob, madt(vcpus, Hardware::Full));
    let mcfg = place(&mut blob, mcfg());
    let xsdt = place(&mut blob, xsdt(&[fadt as u64, madt as u64, mcfg as u64]));

    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt as u64).to_aml_bytes(&mut rsdp);

    let mut l = Loader::default();
    l.allocate(RSDP_FILE, 16, ZONE_FSEG);
    l.allocate(TABLES_FILE, 64, ZONE_HIGH);
    l.add_pointer(TABLES_FILE, TABLES_FILE, fadt + FADT_X_DSDT, 8);
    // X_FIRMWARE_CTRL holds 0 (the FACS's offset in the file) until relocated.
    debug_assert_eq!(facs_at, 0);
    l.add_pointer(TABLES_FILE, TABLES_FILE, fadt + FADT_X_FIRMWARE_CTRL, 8);
    for i in 0..3 {
        l.add_pointer(TABLES_FILE, TABLES_FILE, xsdt + 36 + 8 * i, 8);
    }
    l.add_pointer(RSDP_FILE, TABLES_FILE, RSDP_XSDT, 8);
    for (at, len) in spans {
        blob[at + SDT_CHECKSUM] = 0;
        l.add_checksum(TABLES_FILE, at + SDT_CHECKSUM, at, len);
    }
    // The ACPI 1.0 checksum covers the first 20 bytes; the extended one, after it, all 36.
    rsdp[8] = 0;
    rsdp[32] = 0;
    l.add_checksum(RSDP_FILE, 8, 0, 20);
    l.add_checksum(RSDP_FILE, 32, 0, rsdp.len());
    FirmwareAcpi {
        tables: blob,
        rsdp,
        loader: l.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut hdr = [0u8; 8];
        mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
        let mut t = vec![0u8; len];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        assert_eq!(
            sum(&t),
            0,
            "checksum of {}",
            String::from_utf8_lossy(&t[..4])
        );
        t
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp_addr = setup(&mem, 3).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(rsdp_addr)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        let xsdt = table(&mem, u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<Vec<u8>> = entries
            .iter()
            .map(|a| table(&mem, *a)[..4].to_vec())
            .collect();
        assert_eq!(
            sigs,
            vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
        );

        let fadt = table(&mem, entries[0]);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware reduced");
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table(&mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        for name in [
            &b"PCI0"[..],
            b"GED_",
            b"PWRB",
            b"_S5_",
            b"COM1",
            b"PS2K",
            b"_EVT",
        ] {
            assert!(
                dsdt.windows(4).any(|w| w == name),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        // Sleep control register: system I/O at PM_PORT.
        assert_eq!(fadt[244], 1);
        assert_eq!(
            u64::from_le_bytes(fadt[248..256].try_into().unwrap()),
            PM_PORT
        );

        let madt = table(&mem, entries[1]);
        let lapics: Vec<u8> = madt[44..]
            .chunks(8)
            .take_while(|c| c[0] == 0)
            .map(|c| c[3])
            .collect();
        assert_eq!(lapics, vec![0, 1, 2]);

        let mcfg = table(&mem, entries[2]);
        assert_eq!(
            u64::from_le_bytes(mcfg[44..52].try_into().unwrap()),
            layout::ECAM_BASE
        );
    }

    /// Runs a loader script the way a firmware does: each file placed at `base[name]`,
    /// pointers relocated, checksums fixed. Returns the memory image of each file.
    fn run_loader(
        f: &FirmwareAcpi,
        base: &dyn Fn(&str) -> u64,
    ) -> std::collections::HashMap<String, (u64, Vec<u8>)> {
        let mut files = std::collections::HashMap::new();
        let name =
            |b: &[u8]| String::from_utf8(b.split(|&c| c == 0).next().unwrap().to_vec()).unwrap();
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!(f.loader.len() % LOADER_ENTRY_LEN, 0);
        for e in f.loader.chunks(LOADER_ENTRY_LEN) {
            let body = &e[4..];
            match u32_at(e, 0) {
                LOADER_ALLOCATE => {
                    let file = name(&body[..56]);
                    let align = u64::from(u32_at(body, 56));
                    let zone = body[60];
                    let addr = base(&file);
                    assert_eq!(addr % align, 0, "{file} aligned");
                    if zone == ZONE_FSEG {
                        assert!((0xf_0000..0x10_0000).contains(&addr));
                    }
                    let data = match file.as_str() {
                        TABLES_FILE => f.tables.clone(),
                        RSDP_FILE => f.rsdp.clone(),
                        other => panic!("unknown file {other}"),
                    };
                    files.insert(file, (addr, data));
                }
                LOADER_ADD_POINTER => {
                    let (dest, src) = (name(&body[..56]), name(&body[56..112]));
                    let (off, size) = (u32_at(body, 112) as usize, body[116]);
                    assert_eq!(size, 8);
                    let src_addr = files[&src].0;
                    let d = &mut files.get_mut(&dest).unwrap().1[off..off + 8];
                    let v = u64::from_le_bytes(d.try_into().unwrap()) + src_addr;
                    d.copy_from_slice(&v.to_le_bytes());
                }
                LOADER_ADD_CHECKSUM => {
                    let file = name(&body[..56]);
                    let (off, start, len) = (
                        u32_at(body, 56) as usize,
                        u32_at(body, 60) as usize,
                        u32_at(body, 64) as usize,
                    );
                    let d = &mut files.get_mut(&file).unwrap().1;
                    let s = sum(&d[start..start + len]);
                    d[off] = d[off].wrapping_sub(s);
                }
                c => panic!("unknown loader command {c}"),
            }
        }
        files
    }

    #[test]
    fn loader_script_installs_valid_linked_tables() {
        let f = firmware_files(2);
        // Before the loader runs, no checksum is valid by accident.
        assert_ne!(sum(&f.rsdp[..20]), 0);
        let tables_at = 0x7fe_0000u64;
        let files = run_loader(&f, &|n| if n == RSDP_FILE { 0xf_5a40 } else { tables_at });
        let (_, rsdp) = &files[RSDP_FILE];
        let (_, tables) = &files[TABLES_FILE];
        // Lay the tables into guest memory and read them as a guest would.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 128 << 20)]).unwrap();
        mem.write_slice(tables, GuestAddress(tables_at)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt = table(&mem, u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        let sigs: Vec<Vec<u8>> = xsdt[36..]
            .chunks(8)
            .map(|c| table(&mem, u64::from_le_bytes(c.try_into().unwrap()))[..4].to_vec())
            .collect();
        assert_eq!(
            sigs,
            vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
        );
        let fadt = table(&mem, u64::from_le_bytes(xsdt[36..44].try_into().unwrap()));
        let dsdt = table(&mem, u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!(&dsdt[..4], b"DSDT");
        // Full ACPI hardware for a firmware boot: PM1 blocks, the SCI, a FACS.
        let u16_at = |t: &[u8], o: usize| u16::from_le_bytes(t[o..o + 2].try_into().unwrap());
        let u32_at = |t: &[u8], o: usize| u32::from_le_bytes(t[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(&fadt, 112) & (1 << 20), 0, "not hardware reduced");
        assert_eq!(u16_at(&fadt, 46), u16::from(SCI_IRQ));
        assert_eq!(
            u32_at(&fadt, 48),
            0,
            "no SMI command port: always in ACPI mode"
        );
        assert_eq!(u32_at(&fadt, 56), PM1_PORT as u32);
        assert_eq!(u32_at(&fadt, 64), PM1_PORT as u32 + 4);
        assert_eq!((fadt[88], fadt[89]), (4, 2));
        let facs_at = u64::from_le_bytes(fadt[132..140].try_into().unwrap());
        assert_eq!(facs_at % 64, 0, "the FACS is 64-byte aligned");
        let mut facs = [0u8; 64];
        mem.read_slice(&mut facs, GuestAddress(facs_at)).unwrap();
        assert_eq!((&facs[..4], u32_at(&facs, 4)), (&b"FACS"[..], 64));
        let madt = table(&mem, u64::from_le_bytes(xsdt[44..52].try_into().unwrap()));
        let iso = [2u8, 10, 0, SCI_IRQ, SCI_IRQ, 0, 0, 0, 0x0d, 0];
        assert!(madt.windows(10).any(|w| w == iso), "MADT: SCI override");
        // The direct-boot tables are the same, byte for byte, apart from the addresses.
        let direct = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let r = setup(&direct, 2).unwrap();
        let mut rs = [0u8; 36];
        direct.read_slice(&mut rs, GuestAddress(r)).unwrap();
        let dx = table(&direct, u64::from_le_bytes(rs[24..32].try_into().unwrap()));
        let df = table(&direct, u64::from_le_bytes(dx[36..44].try_into().unwrap()));
        let dd = table(
            &direct,
            u64::from_le_bytes(df[140..148].try_into().unwrap()),
        );
        assert_eq!(dd, dsdt);
        assert_eq!(df.len(), fadt.len());
        assert_ne!(
            u32_at(&df, 112) & (1 << 20),
            0,
            "direct boot: hardware reduced"
        );
        assert_eq!(
            (u32_at(&df, 56), u32_at(&df, 132)),
            (0, 0),
            "no PM1, no FACS"
        );
    }

    #[test]
    fn loader_commands_name_only_the_two_files() {
        let f = firmware_files(1);
        let names: std::collections::BTreeSet<String> = f
            .loader
            .chunks(LOADER_ENTRY_LEN)
            .filter(|e| e[0] == LOADER_ALLOCATE as u8)
            .map(|e| {
                String::from_utf8(e[4..60].split(|&c| c == 0).next().unwrap().to_vec()).unwrap()
            })
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(RSDP_FILE) && names.contains(TABLES_FILE));
        assert_eq!(f.rsdp.len(), 36);
    }
}
