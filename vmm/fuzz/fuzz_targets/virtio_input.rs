//! virtio-input event queue: viewer pointer events, then event buffers, rings and guest memory from the input, through `vmm::virtio::input`.
//! Harness and input format: `vmm::fuzzing::virtio_input`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::virtio_input(data);
});
