//! The VNC console's network input path: HTTP upgrade request, WebSocket frames, RFB session.
//! Harness and input format: `vmm::fuzzing::vnc_ws_session`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmm::fuzzing::vnc_ws_session(data);
});
