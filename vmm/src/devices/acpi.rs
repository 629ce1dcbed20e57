//! The ACPI registers: the hardware-reduced ones (sleep control/status and reset, one I/O port),
//! the PM1a event and control blocks of a firmware boot's full ACPI hardware
//! (`arch::acpi` says why a firmware boot needs them), and the power button, raised through the
//! Generic Event Device's interrupt.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::arch::acpi::{PM1_LEN, PM1_SCI_EN, PM1_SLP_EN, RESET_VALUE, S5_SLP_TYP, SLP_EN};
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

/// The PM1a event block (status, enable) and control block, six bytes from
/// [`crate::arch::acpi::PM1_PORT`]. No fixed event is ever raised (the power button is behind
/// the GED), so the status reads 0 and the enable bits are only kept; the control block is
/// always in ACPI mode (SCI_EN) and powers the VM off when the guest enters S5.
pub struct AcpiPm1 {
    control: Arc<VmControl>,
    /// The six registers' bytes as the guest last wrote them (status bytes unused).
    regs: [u8; PM1_LEN as usize],
}

impl AcpiPm1 {
    /// Registers that stop the VM through `control`.
    pub fn new(control: Arc<VmControl>) -> Self {
        AcpiPm1 {
            control,
            regs: [0; PM1_LEN as usize],
        }
    }

    fn byte(&self, offset: usize) -> u8 {
        match offset {
            // PM1_STS: nothing to report, and WAK_STS stays clear (the VM never wakes).
            0 | 1 => 0,
            // PM1_CNT low byte: SCI_EN always set.
            4 => self.regs[4] | PM1_SCI_EN as u8,
            o => self.regs[o],
        }
    }
}

impl BusDevice for AcpiPm1 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset as usize + i;
            *b = if o < self.regs.len() {
                self.byte(o)
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset as usize + i {
                // PM1_STS is write-one-to-clear, and no bit is ever set.
                0 | 1 => {}
                o if o < self.regs.len() => self.regs[o] = b,
                _ => {}
            }
        }
        let cnt = u16::from_le_bytes([self.regs[4], self.regs[5]]);
        if cnt & PM1_SLP_EN != 0 {
            // SLP_EN is write-only: it starts the sleep and reads back as 0.
            let cnt = cnt & !PM1_SLP_EN;
            self.regs[4..6].copy_from_slice(&cnt.to_le_bytes());
            if (cnt >> 10) & 0x7 == u16::from(S5_SLP_TYP) {
                self.control.request_exit(ExitReason::PowerOff);
            }
            // Other sleep states are not offered in the DSDT; ignore them.
        }
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

    #[test]
    fn pm1_blocks_acpi_mode_and_soft_off() {
        let c = Arc::new(VmControl::default());
        let mut pm = AcpiPm1::new(c.clone());
        let mut w = [0u8; 2];
        // ACPI mode from the start; no status bit, ever.
        pm.read(0x610, 4, &mut w);
        assert_eq!(u16::from_le_bytes(w), PM1_SCI_EN);
        pm.write(0x610, 0, &[0xff, 0xff]);
        pm.read(0x610, 0, &mut w);
        assert_eq!(w, [0, 0]);
        // The enable register keeps what was written, at any width.
        pm.write(0x610, 2, &[0x21, 0x01]);
        let mut d = [0u8; 4];
        pm.read(0x610, 0, &mut d);
        assert_eq!(d, [0, 0, 0x21, 0x01]);
        // Past the six bytes: open bus.
        let mut b = [0u8; 1];
        pm.read(0x610, 6, &mut b);
        assert_eq!(b, [0xff]);
        // S1 (SLP_TYP 1, SLP_EN) is not offered: ignored, and SLP_EN reads back 0.
        pm.write(
            0x610,
            4,
            &(PM1_SLP_EN | (1 << 10) | PM1_SCI_EN).to_le_bytes(),
        );
        assert!(!c.exit_requested());
        pm.read(0x610, 4, &mut w);
        assert_eq!(u16::from_le_bytes(w), (1 << 10) | PM1_SCI_EN);
        // S5, written as Linux does (one 16-bit write), powers off.
        let s5 = PM1_SLP_EN | (u16::from(S5_SLP_TYP) << 10) | PM1_SCI_EN;
        pm.write(0x610, 4, &s5.to_le_bytes());
        assert_eq!(c.reason(), Some(ExitReason::PowerOff));
        // And as two byte writes, high byte (SLP_TYP, SLP_EN) last.
        let c = Arc::new(VmControl::default());
        let mut pm = AcpiPm1::new(c.clone());
        pm.write(0x610, 4, &[s5.to_le_bytes()[0]]);
        assert!(!c.exit_requested());
        pm.write(0x610, 5, &[s5.to_le_bytes()[1]]);
        assert_eq!(c.reason(), Some(ExitReason::PowerOff));
    }
}
