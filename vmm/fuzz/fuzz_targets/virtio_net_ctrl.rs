//! virtio-net control queue (VQ_PAIRS_SET) and multiqueue set-up: rings and guest memory from the input, through `vmm::virtio::net::ctrl`.
//! Harness and input format: `vmm::fuzzing::virtio_net_ctrl`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::virtio_net_ctrl(data);
});
