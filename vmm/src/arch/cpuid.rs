//! Per-vCPU CPUID: what KVM supports, adjusted so each vCPU reports its own APIC id, the
//! topology of the whole VM (one socket, one thread per core) and that it runs on a hypervisor.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: the package has several logical processors (HTT).
const EDX_HTT: u32 = 1 << 28;

/// Leaf 1 ECX: VMX (Intel VT-x).
const ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: SVM (AMD-V).
const ECX_SVM: u32 = 1 << 2;

/// Topology level types in leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Number of APIC-id bits needed to number `count` cores.
pub fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Adjusts the CPUID entries of the vCPU with APIC id `cpu_id` in a VM of `cpu_count` vCPUs.
pub fn adjust(entries: &mut [kvm_cpuid_entry2], cpu_id: u8, cpu_count: u8) {
    let id = u32::from(cpu_id);
    let count = u32::from(cpu_count.max(1));
    let shift = id_bits(count);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors in the package.
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((count & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Intel deterministic cache parameters (subleaves with a cache type): cores per
            // package, and which caches are shared (only the last level, by every core).
            0x4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            0xb | 0x1f => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: ECX[15:12] APIC id size, ECX[7:0] cores in the package minus one.
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | ((count - 1) & 0xff);
            }
            0x8000_001e => {
                // AMD extended APIC id, compute unit id (one core per unit), node 0.
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// Hides hardware virtualization (VMX, SVM and its feature leaf) from the guest, so it does
/// not load a hypervisor of its own: a pod's VM has no use for nested guests by default, and
/// on a host that is itself a guest, nested SVM/VMX is where the remaining hypervisor bugs
/// are (an L2 Linux loading kvm_amd under an emulated L1 has hung its vCPUs).
pub fn hide_virtualization(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut() {
        match e.function {
            0x1 => e.ecx &= !ECX_VMX,
            0x8000_0001 => e.ecx &= !ECX_SVM,
            0x8000_000a => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        let mut l1 = entry(1, 0);
        l1.ebx = 0xff_ff_08_00; // garbage id/count, CLFLUSH size 8
        l1.edx = EDX_HTT;
        let mut l4 = entry(4, 0);
        l4.eax = 0x121; // L1 data cache
        let mut l4_3 = entry(4, 3);
        l4_3.eax = 0x163; // L3 unified
        let mut l88 = entry(0x8000_0008, 0);
        l88.ecx = 0xffff;
        vec![
            l1,
            l4,
            l4_3,
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            l88,
            entry(0x8000_001e, 0),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn virtualization_is_hidden_and_the_rest_kept() {
        let mut v = vec![
            entry(0x1, 0),
            entry(0x8000_0001, 0),
            entry(0x8000_000a, 0),
            entry(0x7, 0),
        ];
        for e in v.iter_mut() {
            (e.eax, e.ebx, e.ecx, e.edx) = (0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff);
        }
        hide_virtualization(&mut v);
        assert_eq!(find(&v, 0x1, 0).ecx, !ECX_VMX);
        assert_eq!(find(&v, 0x1, 0).edx, 0xffff_ffff);
        assert_eq!(find(&v, 0x8000_0001, 0).ecx, !ECX_SVM);
        let svm = find(&v, 0x8000_000a, 0);
        assert_eq!((svm.eax, svm.ebx, svm.ecx, svm.edx), (0, 0, 0, 0));
        assert_eq!(find(&v, 0x7, 0).ecx, 0xffff_ffff);
    }

    #[test]
    fn id_bits_values() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 255].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
    }

    #[test]
    fn each_vcpu_reports_its_apic_id() {
        for (id, count) in [(0u8, 1u8), (1, 2), (3, 4), (6, 7)] {
            let mut v = sample();
            adjust(&mut v, id, count);
            let l1 = find(&v, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(id));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(count));
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size preserved");
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_eq!(l1.edx & EDX_HTT != 0, count > 1);
            for sub in 0..3 {
                assert_eq!(find(&v, 0xb, sub).edx, u32::from(id));
            }
            assert_eq!(find(&v, 0x8000_001e, 0).eax, u32::from(id));
        }
    }

    #[test]
    fn topology_describes_all_vcpus() {
        let mut v = sample();
        adjust(&mut v, 0, 6);
        let core = find(&v, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, (core.ecx >> 8) & 0xff),
            (3, 6, LEVEL_CORE)
        );
        let smt = find(&v, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, (smt.ecx >> 8) & 0xff), (0, 1, LEVEL_SMT));
        let invalid = find(&v, 0xb, 2);
        assert_eq!((invalid.ebx, (invalid.ecx >> 8) & 0xff), (0, 0));
        assert_eq!(find(&v, 4, 0).eax >> 26, 5);
        assert_eq!((find(&v, 4, 0).eax >> 14) & 0xfff, 0, "L1 not shared");
        assert_eq!((find(&v, 4, 3).eax >> 14) & 0xfff, 5, "L3 shared by all");
        let amd = find(&v, 0x8000_0008, 0);
        assert_eq!((amd.ecx & 0xff, (amd.ecx >> 12) & 0xf), (5, 3));
    }
}
