//! The WebSocket console tests (vnc_ws.rs) again, with the VNC threads under berth's seccomp
//! filters in kill mode.

#[path = "vnc_ws.rs"]
mod ws;
