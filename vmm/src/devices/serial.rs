//! COM1: a 16550A UART (vm-superio) whose output goes to a writer (the process's stdout) and
//! whose input comes from whoever holds a [`SerialInput`].

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::NoEvents;

use super::IrqLine;
use crate::bus::BusDevice;
use crate::control::VmControl;

/// COM1's I/O base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's IRQ.
pub const COM1_IRQ: u32 = 4;

/// The UART model.
pub struct Serial {
    uart: vm_superio::Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    /// A UART that raises `irq` and writes what the guest sends to `out`.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(irq, out),
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Some(b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // A failing console (closed stdout) must not stop the guest: the byte is dropped.
            let _ = self.uart.write(off, *b);
        }
    }
}

/// A handle that feeds bytes to the guest through the UART's receive FIFO.
#[derive(Clone)]
pub struct SerialInput {
    serial: Arc<Mutex<Serial>>,
    control: Arc<VmControl>,
}

impl SerialInput {
    pub(crate) fn new(serial: Arc<Mutex<Serial>>, control: Arc<VmControl>) -> Self {
        SerialInput { serial, control }
    }

    /// Queues `bytes` for the guest, waiting while the FIFO is full. Returns false if the VM
    /// stopped before everything was queued.
    pub fn send(&self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.control.exit_requested() {
                return false;
            }
            let queued = {
                let mut s = self.serial.lock().expect("serial lock poisoned");
                let room = s.uart.fifo_capacity();
                if room == 0 {
                    0
                } else {
                    let n = room.min(bytes.len());
                    s.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or(0)
                }
            };
            bytes = &bytes[queued..];
            if queued == 0 {
                // The guest has not drained the FIFO yet (or has no driver): wait for it.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        true
    }
}

/// A console output that keeps everything the guest writes, for tests and tools that read the
/// console back; clones share the bytes.
#[derive(Clone, Default)]
pub struct CaptureOutput(Arc<Mutex<Vec<u8>>>);

impl CaptureOutput {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().clone()
    }

    /// Everything written so far, as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A writer that panicked mid-append leaves bytes that are still worth reading.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for CaptureOutput {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn output_and_input_paths() {
        let sink = CaptureOutput::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(Serial::new(
            IrqLine(irq.try_clone().unwrap()),
            Box::new(sink.clone()),
        )));
        {
            let mut s = serial.lock().unwrap();
            for b in b"hi\n" {
                s.write(COM1_BASE, 0, &[*b]);
            }
            // Enable the received-data interrupt (IER bit 0).
            s.write(COM1_BASE, 1, &[1]);
        }
        assert_eq!(sink.bytes(), b"hi\n");

        let input = SerialInput::new(serial.clone(), Arc::new(VmControl::default()));
        assert!(input.send(b"ok"));
        let mut s = serial.lock().unwrap();
        let mut b = [0u8];
        s.read(COM1_BASE, 5, &mut b); // LSR: data ready
        assert_eq!(b[0] & 1, 1);
        s.read(COM1_BASE, 0, &mut b);
        assert_eq!(b[0], b'o');
        assert!(irq.read().unwrap() >= 1, "input raised the IRQ");
    }
}
