//! The i8042 keyboard controller at ports 0x60 and 0x64. For now it only models what a guest
//! uses to reset the machine: command 0xFE (pulse the reset line) on port 0x64.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::vm::{ExitReason, ResetSource, VmControl};

/// Data port.
pub const DATA_PORT: u64 = 0x60;
/// Command/status port.
pub const COMMAND_PORT: u64 = 0x64;

/// Asks the VMM to reset the VM when the guest pulses the reset line.
struct ResetLine(Arc<VmControl>);

impl vm_superio::Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request_exit(ExitReason::Reset(ResetSource::I8042));
        Ok(())
    }
}

/// The controller.
pub struct I8042 {
    inner: vm_superio::I8042Device<ResetLine>,
}

impl I8042 {
    /// A controller whose reset line stops the VM through `control`.
    pub fn new(control: Arc<VmControl>) -> Self {
        I8042 {
            inner: vm_superio::I8042Device::new(ResetLine(control)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let port = base + offset;
        if let Some(b) = data.first_mut() {
            *b = self.inner.read((port - DATA_PORT) as u8);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let port = base + offset;
        if let Some(b) = data.first() {
            let _ = self.inner.write((port - DATA_PORT) as u8, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let control = Arc::new(VmControl::default());
        let mut dev = I8042::new(control.clone());
        dev.write(DATA_PORT, 0, &[0xfe]);
        assert!(
            !control.exit_requested(),
            "0xfe on the data port is not a reset"
        );
        dev.write(COMMAND_PORT, 0, &[0xfe]);
        assert_eq!(
            control.reason(),
            Some(ExitReason::Reset(ResetSource::I8042))
        );
    }
}
