//! The Intel MultiProcessor table (spec 1.4): how a guest without ACPI finds its vCPUs, its
//! IOAPIC and the ISA interrupt routing. It is placed at the EBDA, where Linux scans for it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

const MPC_SPEC: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// IOAPIC inputs KVM's in-kernel IOAPIC has.
pub const IOAPIC_PINS: u8 = 24;
/// Largest vCPU count the table can describe: APIC ids are 8 bits, 0xff is broadcast and the
/// IOAPIC takes the id after the last vCPU.
pub const MAX_CPUS: u8 = 254;

/// Why the table cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many or zero vCPUs.
    #[error("the MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    /// Guest memory too small for the table.
    #[error("guest memory too small for the MP table")]
    Memory,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer followed by the configuration table, as they must appear in
/// memory at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let table_addr = base + 16;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    // CPUID signature: family 6 model ... is only advisory; Linux reads CPUID itself.
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU | APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(MPC_SPEC);
    table.push(0); // checksum, below
    table.extend_from_slice(b"BERTH   ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16 + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table for `cpus` vCPUs at the EBDA.
pub fn setup(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus, layout::EBDA_START)?;
    if layout::EBDA_START + bytes.len() as u64 > layout::HIMEM_START {
        return Err(MptableError::Memory);
    }
    mem.write_slice(&bytes, GuestAddress(layout::EBDA_START))
        .map_err(|_| MptableError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Parses the table the way a guest does and returns (cpu ids, bsp ids, ioapic id, irqs).
    fn parse(mem: &GuestMemoryMmap) -> (Vec<u8>, Vec<u8>, u8, Vec<u8>) {
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(layout::EBDA_START))
            .unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        let addr = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        assert_eq!(&hdr[..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let count = u16::from_le_bytes([hdr[34], hdr[35]]);
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        assert_eq!(sum(&table), 0, "table checksum");
        let (mut cpus, mut bsp, mut ioapic, mut irqs) = (vec![], vec![], 0, vec![]);
        let mut off = 44;
        for _ in 0..count {
            match table[off] {
                ENTRY_PROCESSOR => {
                    cpus.push(table[off + 1]);
                    if table[off + 3] & CPU_BOOTPROCESSOR != 0 {
                        bsp.push(table[off + 1]);
                    }
                    off += 20;
                }
                ENTRY_IOAPIC => {
                    ioapic = table[off + 1];
                    off += 8;
                }
                ENTRY_IOINT => {
                    assert_eq!(table[off + 6], ioapic);
                    irqs.push(table[off + 5]);
                    off += 8;
                }
                ENTRY_BUS | ENTRY_LINT => off += 8,
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(off, len);
        (cpus, bsp, ioapic, irqs)
    }

    #[test]
    fn describes_every_vcpu() {
        for n in [1u8, 2, 4, 64, MAX_CPUS] {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
            setup(&mem, n).unwrap();
            let (cpus, bsp, ioapic, irqs) = parse(&mem);
            assert_eq!(cpus, (0..n).collect::<Vec<_>>());
            assert_eq!(bsp, vec![0]);
            assert_eq!(ioapic, n);
            assert_eq!(irqs, (0..IOAPIC_PINS).collect::<Vec<_>>());
        }
    }

    #[test]
    fn refuses_bad_counts() {
        assert!(build(0, 0).is_err());
        assert!(build(255, 0).is_err());
    }
}
