//! The hardware-reduced ACPI registers (sleep control/status and reset, one I/O port) and the
//! power button, raised through the Generic Event Device's interrupt.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::arch::acpi::{RESET_VALUE, S5_SLP_TYP, SLP_EN};
use crate::bus::BusDevice;
use crate::control::{ExitReason, ResetSource, VmControl};

/// Sleep control, sleep status and reset register.
pub struct AcpiPm {
    control: Arc<VmControl>,
}

impl AcpiPm {
    /// Registers that stop the VM through `control`.
    pub fn new(control: Arc<VmControl>) -> Self {
        AcpiPm { control }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken"; the VM does not come back from S5.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if v == RESET_VALUE {
            self.control
                .request_exit(ExitReason::Reset(ResetSource::Acpi));
        } else if v & SLP_EN != 0 && (v >> 2) & 0x7 == S5_SLP_TYP {
            self.control.request_exit(ExitReason::PowerOff);
        }
        // Other sleep states (S1-S4) are not offered in the DSDT; ignore them.
    }
}

/// Presses the guest's ACPI power button. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct PowerButton {
    irq: Arc<EventFd>,
}

impl PowerButton {
    /// A button that raises the GED interrupt through `irq` (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        PowerButton { irq: Arc::new(irq) }
    }

    /// Presses the button once: the guest's ACPI sees a power button notification.
    pub fn press(&self) -> std::io::Result<()> {
        self.irq.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_off_and_reset() {
        let c = Arc::new(VmControl::default());
        let mut pm = AcpiPm::new(c.clone());
        pm.write(0x600, 0, &[(1 << 2) | SLP_EN]); // S1: ignored
        assert!(!c.exit_requested());
        pm.write(0x600, 0, &[(S5_SLP_TYP << 2) | SLP_EN]);
        assert_eq!(c.reason(), Some(ExitReason::PowerOff));
        let c = Arc::new(VmControl::default());
        let mut pm = AcpiPm::new(c.clone());
        pm.write(0x600, 0, &[RESET_VALUE]);
        assert_eq!(c.reason(), Some(ExitReason::Reset(ResetSource::Acpi)));
    }
}
