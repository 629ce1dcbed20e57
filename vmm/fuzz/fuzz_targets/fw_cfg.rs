//! fw_cfg: a firmware's selector, data port and DMA accesses with control structures and guest
//! memory from the input, through `vmm::devices::fw_cfg`.
//! Harness and input format: `vmm::fuzzing::fw_cfg`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::fw_cfg(data);
});
