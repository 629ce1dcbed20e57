//! berth's virtual machine monitor: a KVM x86-64 VM that boots Linux, built on the rust-vmm
//! crates.
//!
//! [`vm::Vm`] owns the VM: guest memory, the in-kernel IRQ chip and PIT, the legacy devices on
//! the port-I/O [`bus`], and one thread per vCPU. [`arch`] holds the x86 specifics (memory
//! map, Linux boot protocol, registers, CPUID, MP table); [`devices`] the legacy device models;
//! [`control`] the stop state (why the VM ends) that `vm`, the vCPUs and the devices share;
//! [`pci`] the PCI bus, configuration access and MSI-X; [`virtio`] the virtio-pci transport and
//! virtio devices; [`block`] the storage behind disks; [`irq`] KVM interrupt routing.

#![deny(missing_docs)]

pub mod arch;
pub mod block;
pub mod bus;
pub mod control;
pub mod devices;
pub mod framebuffer;
#[doc(hidden)]
pub mod fuzzing;
pub mod irq;
pub mod linkstats;
pub mod metrics;
pub mod pci;
mod vcpu;
pub mod virtio;
pub mod vm;
pub mod vnc;

pub use arch::boot::{KernelFormat, LinuxBoot, LoadedKernel};
pub use control::{ExitReason, ResetSource, VmControl};
pub use devices::serial::SerialInput;
pub use vm::{keep_kvm_open, MachineConfig, Vm, VmError};
