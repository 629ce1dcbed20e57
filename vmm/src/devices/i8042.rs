//! The i8042 PS/2 controller at ports 0x60 (data) and 0x64 (status/command) with a keyboard
//! on its first port, as Linux's i8042 and atkbd drivers probe and use it, plus the reset line
//! (command 0xFE). There is no mouse: the AUX port fails its tests, so Linux skips it.
//!
//! The keyboard speaks scancode set 2; with the controller's translate bit set (Linux keeps
//! it set) the controller turns it into set 1 on the way to the guest, as real hardware does.

#[path = "keymap.rs"]
pub mod keymap;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::bus::BusDevice;
use crate::control::{ExitReason, ResetSource, VmControl};
use keymap::Key;

/// Data port.
pub const DATA_PORT: u64 = 0x60;
/// Command/status port.
pub const COMMAND_PORT: u64 = 0x64;
/// The keyboard's ISA interrupt.
pub const KEYBOARD_IRQ: u32 = 1;

// Status register bits.
const STS_OBF: u8 = 0x01;
const STS_SYS: u8 = 0x04;
const STS_CMD: u8 = 0x08;
const STS_UNLOCKED: u8 = 0x10;

// Controller configuration byte (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;

/// Keyboard bytes waiting for the guest, at most; a guest that never reads loses keys.
const QUEUE_LIMIT: usize = 256;
/// Controller responses waiting behind a full output buffer, at most. A real 8042 has only
/// its one-byte output buffer; a few bytes of slack cover multi-byte answers. More are
/// dropped, so a guest that writes commands in a loop without reading cannot grow the heap.
const CTL_QUEUE_LIMIT: usize = 16;

const ACK: u8 = 0xfa;

/// Something that raises an interrupt (an irqfd in the VM).
pub trait Interrupt: Send {
    /// Raises the interrupt once (an edge).
    fn trigger(&self);
}

impl Interrupt for super::IrqLine {
    fn trigger(&self) {
        let _ = vm_superio::Trigger::trigger(self);
    }
}

/// What the controller does with the next byte written to the data port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    Ctr,
    OutputPort,
    KbdOutput,
    AuxOutput,
    AuxDevice,
}

/// A keyboard command waiting for its parameter byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KbdParam {
    None,
    Leds,
    Typematic,
    ScancodeSet,
}

/// The controller and its keyboard.
pub struct I8042 {
    control: Arc<VmControl>,
    irq: Option<Box<dyn Interrupt>>,
    ctr: u8,
    status_cmd: bool,
    /// The output buffer (what port 0x60 reads), if full.
    output: Option<u8>,
    /// Controller responses, delivered before keyboard bytes.
    ctl_queue: VecDeque<u8>,
    /// Bytes from the keyboard (set 2), not yet in the output buffer.
    kbd_queue: VecDeque<u8>,
    data_target: DataTarget,
    kbd_param: KbdParam,
    scanning: bool,
    /// Translation state: a set 2 break prefix (0xF0) was swallowed.
    break_pending: bool,
    output_port: u8,
}

impl I8042 {
    /// A controller whose reset line stops the VM through `control`, without an interrupt.
    pub fn new(control: Arc<VmControl>) -> Self {
        I8042 {
            control,
            irq: None,
            ctr: CTR_KBD_INT | CTR_SYS | CTR_TRANSLATE | CTR_AUX_DISABLE,
            status_cmd: false,
            output: None,
            ctl_queue: VecDeque::with_capacity(CTL_QUEUE_LIMIT),
            kbd_queue: VecDeque::new(),
            data_target: DataTarget::Keyboard,
            kbd_param: KbdParam::None,
            scanning: true,
            break_pending: false,
            output_port: 0x01,
        }
    }

    /// Raises `irq` (IRQ 1) when keyboard data is ready and the guest enabled the interrupt.
    pub fn with_irq(mut self, irq: Box<dyn Interrupt>) -> Self {
        self.irq = Some(irq);
        self
    }

    /// A key went down (`down`) or up: queues its set 2 bytes if the keyboard is scanning.
    pub fn key_event(&mut self, key: Key, down: bool) {
        if !self.scanning {
            return;
        }
        let bytes = key.set2_bytes(down);
        if self.kbd_queue.len() + bytes.len() > QUEUE_LIMIT {
            return;
        }
        self.kbd_queue.extend(bytes);
        self.fill_output();
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        if self.output.is_some() {
            s |= STS_OBF;
        }
        if self.ctr & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.status_cmd {
            s |= STS_CMD;
        }
        s
    }

    /// Moves the next pending byte into an empty output buffer and interrupts for it.
    fn fill_output(&mut self) {
        if self.output.is_some() {
            return;
        }
        let byte = if let Some(b) = self.ctl_queue.pop_front() {
            b
        } else if self.ctr & CTR_KBD_DISABLE != 0 {
            return;
        } else {
            loop {
                let Some(b) = self.kbd_queue.pop_front() else {
                    return;
                };
                if self.ctr & CTR_TRANSLATE == 0 {
                    break b;
                }
                if b == 0xf0 {
                    self.break_pending = true;
                    continue;
                }
                let mut t = keymap::translate_set2(b);
                if std::mem::take(&mut self.break_pending) && b != 0xe0 {
                    t |= 0x80;
                }
                break t;
            }
        };
        self.output = Some(byte);
        if self.ctr & CTR_KBD_INT != 0 {
            if let Some(irq) = &self.irq {
                irq.trigger();
            }
        }
    }

    fn respond(&mut self, bytes: &[u8]) {
        let room = CTL_QUEUE_LIMIT.saturating_sub(self.ctl_queue.len());
        self.ctl_queue.extend(bytes.iter().take(room));
        self.fill_output();
    }

    fn keyboard_reply(&mut self, bytes: &[u8]) {
        // A command to the keyboard discards what it had queued, as the keyboard does.
        self.kbd_queue.clear();
        self.kbd_queue.extend(bytes);
        self.fill_output();
    }

    fn keyboard_write(&mut self, b: u8) {
        match std::mem::replace(&mut self.kbd_param, KbdParam::None) {
            KbdParam::Leds | KbdParam::Typematic => return self.keyboard_reply(&[ACK]),
            KbdParam::ScancodeSet => {
                // 0 asks which set is active; only set 2 exists.
                return match b {
                    0 => self.keyboard_reply(&[ACK, 2]),
                    _ => self.keyboard_reply(&[ACK]),
                };
            }
            KbdParam::None => {}
        }
        match b {
            0xed => {
                self.kbd_param = KbdParam::Leds;
                self.keyboard_reply(&[ACK]);
            }
            0xee => self.keyboard_reply(&[0xee]),
            0xf0 => {
                self.kbd_param = KbdParam::ScancodeSet;
                self.keyboard_reply(&[ACK]);
            }
            0xf2 => self.keyboard_reply(&[ACK, 0xab, 0x83]),
            0xf3 => {
                self.kbd_param = KbdParam::Typematic;
                self.keyboard_reply(&[ACK]);
            }
            0xf4 => {
                self.scanning = true;
                self.keyboard_reply(&[ACK]);
            }
            0xf5 => {
                self.scanning = false;
                self.keyboard_reply(&[ACK]);
            }
            0xf6..=0xfe => {
                // 0xF6 restores defaults (scanning on); set 3 commands are acknowledged.
                if b == 0xf6 {
                    self.scanning = true;
                }
                self.keyboard_reply(&[ACK]);
            }
            0xff => {
                self.scanning = true;
                self.keyboard_reply(&[ACK, 0xaa]);
            }
            _ => self.keyboard_reply(&[0xfe]),
        }
    }

    fn data_write(&mut self, b: u8) {
        match std::mem::replace(&mut self.data_target, DataTarget::Keyboard) {
            DataTarget::Keyboard => self.keyboard_write(b),
            DataTarget::Ctr => {
                self.ctr = b;
                self.fill_output();
            }
            DataTarget::OutputPort => self.output_port = b,
            DataTarget::KbdOutput => self.respond(&[b]),
            // No mouse: the AUX loop-back echoes without the AUX-data status bit, which
            // Linux's i8042_check_aux takes as a failed loop test.
            DataTarget::AuxOutput => self.respond(&[b]),
            DataTarget::AuxDevice => {}
        }
    }

    fn command(&mut self, c: u8) {
        match c {
            0x20 => self.respond(&[self.ctr]),
            0x60 => self.data_target = DataTarget::Ctr,
            0xa7 => self.ctr |= CTR_AUX_DISABLE,
            0xa8 => self.ctr &= !CTR_AUX_DISABLE,
            // AUX interface test: "clock line stuck low", i.e. no AUX port.
            0xa9 => self.respond(&[0x01]),
            0xaa => self.respond(&[0x55]),
            0xab => self.respond(&[0x00]),
            0xad => self.ctr |= CTR_KBD_DISABLE,
            0xae => {
                self.ctr &= !CTR_KBD_DISABLE;
                self.fill_output();
            }
            0xc0 => self.respond(&[0x00]),
            0xd0 => self.respond(&[self.output_port]),
            0xd1 => self.data_target = DataTarget::OutputPort,
            0xd2 => self.data_target = DataTarget::KbdOutput,
            0xd3 => self.data_target = DataTarget::AuxOutput,
            0xd4 => self.data_target = DataTarget::AuxDevice,
            // Pulse output lines: a 0 in bit 0 pulses the reset line (0xFE).
            0xf0..=0xff if c & 1 == 0 => {
                self.control
                    .request_exit(ExitReason::Reset(ResetSource::I8042));
            }
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let Some(b) = data.first_mut() else { return };
        *b = match base + offset {
            DATA_PORT => {
                let v = self.output.take().unwrap_or(0);
                self.fill_output();
                v
            }
            _ => self.status(),
        };
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        match base + offset {
            DATA_PORT => {
                self.status_cmd = false;
                self.data_write(b);
            }
            _ => {
                self.status_cmd = true;
                self.data_target = DataTarget::Keyboard;
                self.command(b);
            }
        }
    }
}

/// A handle that presses keys on a VM's keyboard, for the VNC console.
#[derive(Clone)]
pub struct KeyboardInput(Arc<Mutex<I8042>>);

impl KeyboardInput {
    /// A handle on `dev`.
    pub fn new(dev: Arc<Mutex<I8042>>) -> Self {
        KeyboardInput(dev)
    }

    /// Presses (`down`) or releases `key`.
    pub fn key(&self, key: Key, down: bool) {
        if let Ok(mut d) = self.0.lock() {
            d.key_event(key, down);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    struct Count(Arc<AtomicUsize>);
    impl Interrupt for Count {
        fn trigger(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn dev() -> (I8042, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let d = I8042::new(Arc::new(VmControl::default())).with_irq(Box::new(Count(n.clone())));
        (d, n)
    }

    fn cmd(d: &mut I8042, c: u8) {
        d.write(COMMAND_PORT, 0, &[c]);
    }
    fn out(d: &mut I8042, b: u8) {
        d.write(DATA_PORT, 0, &[b]);
    }
    fn status(d: &mut I8042) -> u8 {
        let mut b = [0];
        d.read(COMMAND_PORT, 0, &mut b);
        b[0]
    }
    /// Everything in the output buffer, as a driver polling OBF reads it.
    fn drain(d: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        while status(d) & STS_OBF != 0 {
            let mut b = [0];
            d.read(DATA_PORT, 0, &mut b);
            v.push(b[0]);
        }
        v
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut d, _) = dev();
        cmd(&mut d, 0x20);
        let ctr = drain(&mut d);
        assert_eq!(
            ctr,
            vec![CTR_KBD_INT | CTR_SYS | CTR_TRANSLATE | CTR_AUX_DISABLE]
        );
        cmd(&mut d, 0xaa);
        assert_eq!(drain(&mut d), vec![0x55]);
        cmd(&mut d, 0x60);
        out(&mut d, 0x74); // disable both ports and interrupts, translate on
        cmd(&mut d, 0x20);
        assert_eq!(drain(&mut d), vec![0x74]);
        // No mouse: the loop-back answers without the AUX-data bit, the AUX test fails.
        cmd(&mut d, 0xd3);
        out(&mut d, 0x5a);
        assert_eq!(status(&mut d) & 0x20, 0);
        assert_eq!(drain(&mut d), vec![0x5a]);
        cmd(&mut d, 0xa9);
        assert_eq!(drain(&mut d), vec![0x01]);
        cmd(&mut d, 0xab);
        assert_eq!(drain(&mut d), vec![0x00]);
        cmd(&mut d, 0xae);
        cmd(&mut d, 0x20);
        assert_eq!(drain(&mut d)[0] & CTR_KBD_DISABLE, 0);
    }

    #[test]
    fn keyboard_commands_translated_and_not() {
        let (mut d, irqs) = dev();
        out(&mut d, 0xff);
        assert_eq!(drain(&mut d), vec![0xfa, 0xaa]);
        out(&mut d, 0xf2);
        assert_eq!(drain(&mut d), vec![0xfa, 0xab, 0x41], "translated ID");
        cmd(&mut d, 0x60);
        out(&mut d, CTR_KBD_INT | CTR_SYS); // translation off
        out(&mut d, 0xf2);
        assert_eq!(drain(&mut d), vec![0xfa, 0xab, 0x83], "raw ID");
        out(&mut d, 0xf0);
        out(&mut d, 0x00);
        assert_eq!(drain(&mut d), vec![0xfa, 0xfa, 0x02]);
        out(&mut d, 0xed);
        out(&mut d, 0x07);
        assert_eq!(drain(&mut d), vec![0xfa, 0xfa]);
        out(&mut d, 0xee);
        assert_eq!(drain(&mut d), vec![0xee]);
        assert!(irqs.load(Ordering::SeqCst) >= 10);
    }

    #[test]
    fn keys_in_set1_and_set2() {
        let (mut d, irqs) = dev();
        let (up, _) = keymap::key_for_keysym(0xff52).unwrap();
        let (a, _) = keymap::key_for_keysym(u32::from(b'a')).unwrap();
        d.key_event(a, true);
        d.key_event(a, false);
        d.key_event(up, true);
        d.key_event(up, false);
        assert_eq!(drain(&mut d), vec![0x1e, 0x9e, 0xe0, 0x48, 0xe0, 0xc8]);
        assert_eq!(irqs.load(Ordering::SeqCst), 6, "one interrupt per byte");
        cmd(&mut d, 0x60);
        out(&mut d, CTR_KBD_INT);
        drain(&mut d);
        d.key_event(up, false);
        assert_eq!(drain(&mut d), vec![0xe0, 0xf0, 0x75]);
        // Disabled keyboard port: bytes wait; disabled scanning: keys are dropped.
        cmd(&mut d, 0xad);
        d.key_event(a, true);
        assert!(drain(&mut d).is_empty());
        cmd(&mut d, 0xae);
        assert_eq!(drain(&mut d), vec![0x1c]);
        out(&mut d, 0xf5);
        drain(&mut d);
        d.key_event(a, true);
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn queue_is_bounded() {
        let (mut d, _) = dev();
        let (a, _) = keymap::key_for_keysym(u32::from(b'a')).unwrap();
        for _ in 0..10_000 {
            d.key_event(a, true);
        }
        assert!(drain(&mut d).len() <= QUEUE_LIMIT + 1);
    }

    #[test]
    fn command_flood_without_reading_stays_bounded() {
        let (mut d, _) = dev();
        // A hostile guest: "read CTR" and AUX/keyboard loop-backs, never reading port 0x60.
        for i in 0..200_000u32 {
            match i % 3 {
                0 => cmd(&mut d, 0x20),
                1 => {
                    cmd(&mut d, 0xd2);
                    out(&mut d, i as u8);
                }
                _ => out(&mut d, 0xf2), // keyboard "identify": three bytes each time
            }
        }
        assert!(
            d.ctl_queue.len() <= CTL_QUEUE_LIMIT,
            "{}",
            d.ctl_queue.len()
        );
        assert!(d.ctl_queue.capacity() <= 4 * CTL_QUEUE_LIMIT);
        assert!(d.kbd_queue.len() <= QUEUE_LIMIT);
        let backlog = drain(&mut d);
        assert!(
            backlog.len() <= CTL_QUEUE_LIMIT + QUEUE_LIMIT + 1,
            "{}",
            backlog.len()
        );
        // The controller still answers once the guest reads again.
        cmd(&mut d, 0xaa);
        assert_eq!(drain(&mut d), vec![0x55]);
    }
}
