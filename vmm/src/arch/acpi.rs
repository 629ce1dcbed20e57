//! ACPI tables: a hardware-reduced platform (no PM1 blocks, no SCI) described by a DSDT with
//! the PCI host bridge, the legacy devices and a power button behind a Generic Event Device,
//! plus FADT, MADT (every vCPU, the IOAPIC) and MCFG (ECAM). Power-off and reset go through
//! the FADT's sleep-control and reset registers on port [`PM_PORT`].

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
                        layout::PCI_MMIO_START as u32,
                        (layout::PCI_MMIO_END - 1) as u32,
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

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let pm = GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, PM_PORT);
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .preferred_pm_profile(PmProfile::EnterpriseServer);
    f.sleep_control_reg = pm;
    f.sleep_status_reg = pm;
    f.reset_reg = pm;
    f.reset_value = RESET_VALUE;
    f.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    let mut v = Vec::new();
    f.finalize().to_aml_bytes(&mut v);
    v
}

fn madt(vcpus: u8) -> Vec<u8> {
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
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = place(&madt(vcpus))?;
    let mcfg_addr = place(&mcfg())?;
    let xsdt_addr = place(&xsdt(&[fadt_addr, madt_addr, mcfg_addr]))?;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(RSDP_ADDR))
        .map_err(|_| AcpiError)?;
    Ok(RSDP_ADDR)
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
}
