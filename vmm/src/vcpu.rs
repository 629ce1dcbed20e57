//! The vCPU loop: run the vCPU, dispatch its port and MMIO accesses to the buses, and turn
//! exits that end the VM into an [`ExitReason`].

use std::sync::Arc;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::control::{ExitReason, ResetSource, VmControl};
use crate::metrics::{ExitCounters, ExitKind};

/// What a vCPU thread needs besides its fd.
pub(crate) struct VcpuContext {
    pub id: u8,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<VmControl>,
    /// Exit counters (empty: nothing counted).
    pub exits: ExitCounters,
}

/// Makes sure the VM stops if this vCPU's thread ends for any reason, panics included.
struct StopOnDrop(Arc<VmControl>, u8);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.request_exit(ExitReason::Failed(format!(
            "vCPU {} stopped unexpectedly",
            self.1
        )));
    }
}

enum Next {
    Continue,
    Stop(ExitReason),
    Fail(String),
}

/// Runs the vCPU until the VM is asked to stop.
pub(crate) fn run(mut vcpu: VcpuFd, ctx: VcpuContext) {
    let _guard = StopOnDrop(ctx.control.clone(), ctx.id);
    while !ctx.control.exit_requested() {
        let next = match vcpu.run() {
            Ok(exit) => {
                ctx.exits.count(exit_kind(&exit));
                handle_exit(exit, &ctx)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                ctx.exits.count(ExitKind::Interrupted);
                Next::Continue
            }
            Err(e) => Next::Fail(format!("KVM_RUN failed: {e}")),
        };
        match next {
            Next::Continue => {}
            Next::Stop(reason) => ctx.control.request_exit(reason),
            Next::Fail(why) => {
                let regs = describe_registers(&vcpu);
                ctx.control.request_exit(ExitReason::Failed(format!(
                    "vCPU {}: {why}; {regs}",
                    ctx.id
                )));
            }
        }
    }
}

fn exit_kind(exit: &VcpuExit<'_>) -> ExitKind {
    match exit {
        VcpuExit::IoIn(..) => ExitKind::IoIn,
        VcpuExit::IoOut(..) => ExitKind::IoOut,
        VcpuExit::MmioRead(..) => ExitKind::MmioRead,
        VcpuExit::MmioWrite(..) => ExitKind::MmioWrite,
        VcpuExit::Intr => ExitKind::Interrupted,
        VcpuExit::Shutdown | VcpuExit::SystemEvent(..) => ExitKind::SystemEvent,
        _ => ExitKind::Other,
    }
}

fn handle_exit(exit: VcpuExit<'_>, ctx: &VcpuContext) -> Next {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(port.into(), data) {
                // Nothing there: an ISA bus floats high.
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(port.into(), data);
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(addr, data);
            Next::Continue
        }
        VcpuExit::Intr => Next::Continue,
        // Without an in-kernel LAPIC to wake it, a halted vCPU would sleep forever; with one
        // (always, in berth) HLT is handled by KVM and never gets here.
        VcpuExit::Hlt => Next::Stop(ExitReason::Failed(format!(
            "vCPU {} halted with nothing to wake it",
            ctx.id
        ))),
        VcpuExit::Shutdown => Next::Stop(ExitReason::Reset(ResetSource::TripleFault)),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(ExitReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Next::Stop(ExitReason::Reset(ResetSource::Kvm)),
            KVM_SYSTEM_EVENT_CRASH => Next::Fail("guest crashed (KVM crash event)".into()),
            other => Next::Fail(format!("unknown KVM system event {other}")),
        },
        VcpuExit::FailEntry(reason, cpu) => Next::Fail(format!(
            "KVM could not enter the guest (hardware reason {reason:#x}, host cpu {cpu})"
        )),
        VcpuExit::InternalError => Next::Fail("KVM internal error (emulation failure)".into()),
        other => Next::Fail(format!("unexpected KVM exit {other:?}")),
    }
}

fn describe_registers(vcpu: &VcpuFd) -> String {
    let (Ok(r), Ok(s)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return "registers unavailable".into();
    };
    format!(
        "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} \
         rdi={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}(base {:#x}, l={})",
        r.rip,
        r.rsp,
        r.rflags,
        r.rax,
        r.rbx,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        s.cs.selector,
        s.cs.base,
        s.cs.l
    )
}
