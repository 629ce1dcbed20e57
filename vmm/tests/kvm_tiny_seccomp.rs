//! The tiny-guest KVM tests (kvm_tiny.rs) again, with every vCPU thread under berth's seccomp
//! filter in kill mode: each guest's exits (port and MMIO dispatch, the serial console,
//! resets, SMP start-up, stops from the host) must stay inside the vCPU allow-list.

#[path = "kvm_tiny.rs"]
mod tiny;
