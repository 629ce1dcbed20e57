//! Platform devices: the COM1 UART, the i8042 controller (its reset line), the CMOS RTC and
//! the ACPI power-management registers and power button.

pub mod acpi;
pub mod cmos;
pub mod i8042;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an eventfd registered with KVM as an irqfd.
pub struct IrqLine(pub EventFd);

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
