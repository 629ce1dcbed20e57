//! The guest-physical memory map of a berth x86-64 machine.
//!
//! Low RAM starts at 0 and stops at the 32-bit MMIO hole (where the IOAPIC, LAPIC and, later,
//! PCI BARs live); RAM that does not fit below the hole continues at 4 GiB.

use vm_memory::GuestAddress;

/// Zero page (Linux `boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Top of the boot stack used by the BSP when it enters the kernel.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity map the VMM builds for the 64-bit entry.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages) that map the low 4 GiB.
pub const PDE_START: u64 = 0xb000;
/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty: the kernel installs its own before enabling interrupts).
pub const BOOT_IDT_START: u64 = 0x520;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line berth passes (Linux's COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area, where the MP table lives; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Where a CPU starts after reset (CS=0xf000, IP=0xfff0): the last 16 bytes below 1 MiB.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// Start of RAM above the legacy hole (VGA, option ROMs, BIOS): where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Start of the window where PCI BARs are placed (the bottom of the hole).
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
/// End of the PCI BAR window, where ECAM starts.
pub const PCI_MMIO_END: u64 = ECAM_BASE;
/// PCI express enhanced configuration access window (bus 0 only).
pub const ECAM_BASE: u64 = 0xe000_0000;
/// Size of the ECAM window: one bus of 32 devices x 8 functions x 4 KiB.
pub const ECAM_SIZE: u64 = 1 << 20;
/// Start of the reserved top of the hole: IOAPIC, LAPIC and KVM's private pages.
pub const SYSTEM_RESERVED_START: u64 = IOAPIC_START;
/// End of the 32-bit MMIO hole, and start of high RAM.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Default IOAPIC address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Default local APIC address.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS region (three pages), placed at the top of the MMIO hole, clear of devices.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page for real-mode emulation, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The RAM regions of a guest with `mem_size` bytes of memory.
///
/// Memory that does not fit below the MMIO hole is placed above 4 GiB, so the guest always
/// gets exactly `mem_size` bytes.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (
                GuestAddress(MMIO_HOLE_END),
                (mem_size - MMIO_HOLE_START) as usize,
            ),
        ]
    }
}

/// Type of an e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// One entry of the e820 map handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Kind of range.
    pub kind: E820Type,
}

/// The e820 map matching [`ram_regions`]: RAM below the EBDA, RAM from 1 MiB up to the hole (or
/// the end of memory), RAM above 4 GiB; the EBDA, ECAM and the system pages are reserved.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Type::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Type::Reserved,
        },
    ];
    let low_end = mem_size.min(MMIO_HOLE_START);
    map.push(E820Entry {
        addr: HIMEM_START,
        size: low_end - HIMEM_START,
        kind: E820Type::Ram,
    });
    // The PCI BAR window stays a gap (as on a PC, so the kernel may place BARs there); ECAM
    // and the IOAPIC/LAPIC/KVM pages at the top are reserved.
    map.push(E820Entry {
        addr: ECAM_BASE,
        size: ECAM_SIZE,
        kind: E820Type::Reserved,
    });
    map.push(E820Entry {
        addr: SYSTEM_RESERVED_START,
        size: MMIO_HOLE_END - SYSTEM_RESERVED_START,
        kind: E820Type::Reserved,
    });
    if mem_size > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: mem_size - MMIO_HOLE_START,
            kind: E820Type::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guest_is_one_region() {
        let r = ram_regions(256 * MIB);
        assert_eq!(r, vec![(GuestAddress(0), (256 * MIB) as usize)]);
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let r = ram_regions(6 * GIB);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), (3 * GIB) as usize));
        assert_eq!(r[1], (GuestAddress(4 * GIB), (3 * GIB) as usize));
        let total: usize = r.iter().map(|(_, s)| *s).sum();
        assert_eq!(total as u64, 6 * GIB);
    }

    #[test]
    fn guest_exactly_at_hole() {
        assert_eq!(ram_regions(3 * GIB).len(), 1);
        let m = e820_map(3 * GIB);
        assert!(m.iter().all(|e| e.addr < MMIO_HOLE_END));
    }

    fn ram_total(m: &[E820Entry]) -> u64 {
        m.iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn e820_matches_ram_and_never_overlaps() {
        for mem in [64 * MIB, 256 * MIB, 3 * GIB, 3 * GIB + 2 * MIB, 8 * GIB] {
            let m = e820_map(mem);
            // RAM in the map = all memory minus the legacy hole we leave reserved.
            assert_eq!(ram_total(&m), mem - (HIMEM_START - EBDA_START), "mem {mem}");
            let mut sorted = m.clone();
            sorted.sort_by_key(|e| e.addr);
            for w in sorted.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "overlap in {m:?}");
            }
            // Every RAM entry is backed by a RAM region.
            let regions = ram_regions(mem);
            for e in m.iter().filter(|e| e.kind == E820Type::Ram) {
                assert!(regions.iter().any(|(start, len)| {
                    e.addr >= start.0 && e.addr + e.size <= start.0 + *len as u64
                }));
            }
        }
    }

    #[test]
    fn fixed_structures_fit_below_ebda() {
        for a in [
            ZERO_PAGE_START,
            PML4_START,
            PDPTE_START,
            PDE_START + 4 * 0x1000,
            CMDLINE_START,
        ] {
            assert!(a < EBDA_START);
        }
        assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
        const {
            assert!(KVM_TSS_ADDRESS + 3 * 4096 <= MMIO_HOLE_END);
            assert!(KVM_IDENTITY_MAP_ADDRESS > APIC_START);
            assert!(PCI_MMIO_START < PCI_MMIO_END && ECAM_BASE + ECAM_SIZE <= IOAPIC_START);
        }
    }
}
