//! How a running VM is told to stop, and why it stopped.
//!
//! The devices that [`crate::vm`] builds (the i8042 reset line, the ACPI power-button and reset
//! registers) and the vCPU threads end the VM; the serial input stops once the VM is ending.
//! They all share a [`VmControl`]. These types live here, below both `vm` and the devices, so
//! that the devices depend on this small module instead of on `vm`, which builds them (an import
//! cycle): a device holds an `Arc<VmControl>` and records an [`ExitReason`], `Vm::run` waits for
//! the first one.

use std::sync::{Condvar, Mutex};

/// Who asked for a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSource {
    /// The guest pulsed the i8042 reset line (Linux `reboot=k`).
    I8042,
    /// A vCPU triple-faulted (Linux `reboot=t`, or a crash).
    TripleFault,
    /// KVM reported a reset system event.
    Kvm,
    /// The guest wrote the ACPI reset register (Linux's default reboot method).
    Acpi,
    /// The host asked for a reset (berth's control socket).
    Host,
}

impl std::fmt::Display for ResetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResetSource::I8042 => "i8042 reset line",
            ResetSource::TripleFault => "triple fault",
            ResetSource::Kvm => "KVM system event",
            ResetSource::Acpi => "ACPI reset register",
            ResetSource::Host => "requested by the host",
        })
    }
}

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    PowerOff,
    /// The guest asked for a reset.
    Reset(ResetSource),
    /// The host asked the VM to stop (user quit, signal).
    Stopped(String),
    /// A vCPU failed; the text carries the KVM reason and the vCPU's registers.
    Failed(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset(s) => write!(f, "guest requested reset ({s})"),
            ExitReason::Stopped(why) => write!(f, "stopped by the host ({why})"),
            ExitReason::Failed(why) => write!(f, "VM failed: {why}"),
        }
    }
}

/// Shared stop state: the first reason recorded wins, and waiters are woken.
#[derive(Default)]
pub struct VmControl {
    reason: Mutex<Option<ExitReason>>,
    changed: Condvar,
}

impl VmControl {
    /// Records why the VM should stop, unless a reason is already recorded.
    pub fn request_exit(&self, reason: ExitReason) {
        let mut r = self.reason.lock().expect("control lock poisoned");
        if r.is_none() {
            *r = Some(reason);
            self.changed.notify_all();
        }
    }

    /// Whether the VM has been asked to stop.
    pub fn exit_requested(&self) -> bool {
        self.reason.lock().expect("control lock poisoned").is_some()
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().expect("control lock poisoned").clone()
    }

    /// Blocks until a reason is recorded and returns it; [`crate::vm::Vm::run`] waits here.
    pub(crate) fn wait(&self) -> ExitReason {
        let mut r = self.reason.lock().expect("control lock poisoned");
        loop {
            if let Some(reason) = r.as_ref() {
                return reason.clone();
            }
            r = self.changed.wait(r).expect("control lock poisoned");
        }
    }
}
