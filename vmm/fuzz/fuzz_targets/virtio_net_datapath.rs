//! virtio-net TX/RX: descriptor chains, rings and guest memory from the input, through `vmm::virtio::net::datapath::{transmit, deliver, receive}`.
//! Harness and input format: `vmm::fuzzing::virtio_net_datapath`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::virtio_net_datapath(data);
});
