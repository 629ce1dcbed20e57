//! virtio-balloon queues: inflate, deflate, free page reporting and stats chains, rings and guest memory from the input, through `vmm::virtio::balloon`.
//! Harness and input format: `vmm::fuzzing::virtio_balloon`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::virtio_balloon(data);
});
