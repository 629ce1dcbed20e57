//! The browser test (vnc_browser.rs) again, with the VNC and vCPU threads under berth's seccomp
//! filters in kill mode: noVNC's WebSocket session runs through the filtered threads.

#[path = "vnc_browser.rs"]
mod browser;
