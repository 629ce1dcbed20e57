//! Register state for entering a kernel in 64-bit mode: GDT, identity page tables, segment
//! and control registers, general registers, FPU, and the LAPIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// GDT selectors, as index * 8.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data segment selector.
pub const DATA_SELECTOR: u16 = 0x10;
/// Task state segment selector.
pub const TSS_SELECTOR: u16 = 0x18;

/// Builds a GDT entry from flags, base and limit (the layout of the x86 descriptor).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Decodes a GDT entry into the segment KVM wants.
pub fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
    }
}

/// Writes the GDT, an empty IDT and an identity map of the low 4 GiB (2 MiB pages) into guest
/// memory, and returns the special registers that enter 64-bit mode with them.
pub fn setup_long_mode(
    mem: &GuestMemoryMmap,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, vm_memory::GuestMemoryError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::BOOT_GDT_START + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))?;

    // PML4[0] -> PDPT; PDPT[0..4] -> four page directories; each maps 1 GiB with 2 MiB pages.
    mem.write_obj(layout::PDPTE_START | 0x03, GuestAddress(layout::PML4_START))?;
    for dir in 0..4u64 {
        let pd = layout::PDE_START + dir * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(layout::PDPTE_START + dir * 8))?;
        for i in 0..512u64 {
            let phys = (dir << 30) | (i << 21);
            // Present, writable, page size (2 MiB).
            mem.write_obj(phys | 0x83, GuestAddress(pd + i * 8))?;
        }
    }

    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = layout::PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// General registers at the 64-bit entry: `rsi` points at the zero page (Linux boot protocol).
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU state after reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(state: &kvm_lapic_state, off: usize) -> u32 {
    let b = &state.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(state: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        state.regs[off + i] = *b as _;
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 to ExtINT (the 8259 PIC) and LINT1 to NMI, as a PC firmware does.
pub fn configure_lint(state: &mut kvm_lapic_state) {
    let lvt0 = get_reg(state, APIC_LVT0);
    set_reg(state, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(state, APIC_LVT1);
    set_reg(state, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(code.selector, CODE_SELECTOR);
        assert_eq!(
            (code.l, code.db, code.present, code.s, code.type_),
            (1, 0, 1, 1, 0xb)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(data.selector, DATA_SELECTOR);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 0x3));
        let tss = segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!(tss.selector, TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let s = setup_long_mode(&mem, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, layout::PML4_START);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        // Walk the tables for a few addresses, including the LAPIC page.
        for addr in [
            0u64,
            0x20_0000,
            0x4000_0000,
            layout::APIC_START,
            0xffff_ffff,
        ] {
            let pml4e: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
            let pdpt = pml4e & !0xfff;
            let pdpte: u64 = mem.read_obj(GuestAddress(pdpt + (addr >> 30) * 8)).unwrap();
            let pd = pdpte & !0xfff;
            let pde: u64 = mem
                .read_obj(GuestAddress(pd + ((addr >> 21) & 511) * 8))
                .unwrap();
            assert_eq!(pde & 0x83, 0x83);
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
        }
    }

    #[test]
    fn lint_pins() {
        let mut st = kvm_lapic_state::default();
        set_reg(&mut st, APIC_LVT0, 0x0001_0700);
        configure_lint(&mut st);
        assert_eq!(get_reg(&st, APIC_LVT0), 0x0001_0700);
        assert_eq!((get_reg(&st, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }

    #[test]
    fn entry_regs() {
        let r = boot_regs(0x100200);
        assert_eq!(
            (r.rip, r.rsi, r.rflags),
            (0x100200, layout::ZERO_PAGE_START, 2)
        );
    }
}
