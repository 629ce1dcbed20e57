//! The serial WebSocket test (serial_ws.rs) again, with the VNC and vCPU threads under
//! berth's seccomp filters in kill mode.

#[path = "serial_ws.rs"]
mod serial;
