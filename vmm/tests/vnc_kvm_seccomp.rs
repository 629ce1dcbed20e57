//! The VNC test with a tiny KVM guest (vnc_kvm.rs) again, with the VNC threads (accept, poll,
//! client reader and writer) and the vCPU under berth's seccomp filters in kill mode: a real
//! RFB client (vncdotool) connects, types and takes screenshots.

#[path = "vnc_kvm.rs"]
mod vnc;
