//! virtio-blk requests: descriptor chains, rings and guest memory from the input, through `vmm::virtio::block::process_queue`.
//! Harness and input format: `vmm::fuzzing::virtio_blk_request`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::virtio_blk_request(data);
});
