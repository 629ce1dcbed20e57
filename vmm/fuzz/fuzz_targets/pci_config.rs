//! PCI configuration space (0xCF8/0xCFC and ECAM), BAR, virtio-pci common config and MSI-X accesses to virtio-pci functions.
//! Harness and input format: `vmm::fuzzing::pci_config`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::pci_config(data);
});
