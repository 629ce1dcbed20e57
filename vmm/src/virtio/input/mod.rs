//! virtio-input: an absolute pointer (a tablet) fed by the VNC viewer's pointer.
//!
//! A tablet rather than a relative mouse: a viewer sends where the pointer is, in framebuffer
//! pixels, and a tablet reports exactly that (ABS_X/ABS_Y with the framebuffer's size as the
//! range), so the guest's pointer sits under the viewer's without acceleration or drift.
//!
//! The viewer side ([`PointerInput::pointer`]) never blocks and never grows memory: reports
//! wait in a ring of [`MAX_PENDING`]; a motion that follows a motion replaces it, and when
//! the ring is full the oldest report goes. Button events are computed against what the
//! guest was last told, so a dropped report never leaves a button stuck down in the guest.
//! The guest gives one 8-byte buffer per event on the event queue; a guest that gives none
//! just gets nothing. The status queue (LEDs) is read and ignored.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{QueueHandler, Wakeup, Worker, WorkerIo};
use super::{features, types, ActivateContext, ActivateError, DeviceInfo, VirtioDevice};

/// Size of each queue offered.
pub const QUEUE_SIZE: u16 = 64;

/// Most pointer reports waiting for the guest.
pub const MAX_PENDING: usize = 16;

/// The name the guest sees (`/proc/bus/input/devices`).
pub const NAME: &str = "berth tablet";

/// Configuration selectors (virtio spec 5.8.4).
pub mod select {
    /// Nothing selected.
    pub const UNSET: u8 = 0;
    /// The device name.
    pub const ID_NAME: u8 = 1;
    /// The serial number.
    pub const ID_SERIAL: u8 = 2;
    /// Bus, vendor, product, version.
    pub const ID_DEVIDS: u8 = 3;
    /// Input properties.
    pub const PROP_BITS: u8 = 0x10;
    /// Event codes of type `subsel`.
    pub const EV_BITS: u8 = 0x11;
    /// Range of absolute axis `subsel`.
    pub const ABS_INFO: u8 = 0x12;
}

/// Linux input event types and codes used here.
pub mod ev {
    /// End of a report.
    pub const EV_SYN: u16 = 0;
    /// Keys and buttons.
    pub const EV_KEY: u16 = 1;
    /// Relative axes.
    pub const EV_REL: u16 = 2;
    /// Absolute axes.
    pub const EV_ABS: u16 = 3;
    /// SYN_REPORT.
    pub const SYN_REPORT: u16 = 0;
    /// Left button.
    pub const BTN_LEFT: u16 = 0x110;
    /// Right button.
    pub const BTN_RIGHT: u16 = 0x111;
    /// Middle button.
    pub const BTN_MIDDLE: u16 = 0x112;
    /// The wheel.
    pub const REL_WHEEL: u16 = 8;
    /// Horizontal position.
    pub const ABS_X: u16 = 0;
    /// Vertical position.
    pub const ABS_Y: u16 = 1;
    /// The bus type reported in ID_DEVIDS.
    pub const BUS_VIRTUAL: u16 = 6;
}
use ev::*;

/// RFB button mask bits -> Linux buttons (RFB: bit 0 left, 1 middle, 2 right).
const BUTTONS: [(u8, u16); 3] = [(1, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)];
/// RFB buttons 4 and 5: wheel up and down, one notch per press.
const WHEEL_UP: u8 = 8;
const WHEEL_DOWN: u8 = 16;

/// `struct virtio_input_config`: select, subsel, size, 5 reserved, then 128 bytes of answer.
const CONFIG_LEN: usize = 8 + 128;

/// One `struct virtio_input_event` (type, code, value), as the guest reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    /// Event type.
    pub kind: u16,
    /// Event code.
    pub code: u16,
    /// Value.
    pub value: u32,
}

impl InputEvent {
    fn bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

/// One pointer report from the viewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Report {
    x: u16,
    y: u16,
    /// Left/middle/right, RFB mask bits 0-2.
    buttons: u8,
    /// Wheel notches (+ up, - down).
    wheel: i8,
}

/// Reports and events waiting for the guest.
#[derive(Debug, Default)]
struct Pending {
    reports: VecDeque<Report>,
    /// The events of the report being delivered (its buffers ran out halfway).
    events: VecDeque<InputEvent>,
    /// The buttons the guest was last told about.
    sent_buttons: u8,
    /// The last mask the viewer sent (for wheel press edges).
    last_mask: u8,
    /// Reports dropped because the guest did not take them.
    dropped: u64,
}

/// The tablet's state shared by the viewer side and the device (rebuilt on every guest
/// reboot): waiting reports and the eventfd that wakes the worker, created before berth
/// confines itself.
pub struct PointerInput {
    width: u16,
    height: u16,
    pending: Mutex<Pending>,
    kick: EventFd,
}

impl PointerInput {
    /// A tablet over a framebuffer of `width` x `height` pixels (the axes' ranges).
    pub fn new(width: u32, height: u32) -> std::io::Result<Arc<Self>> {
        let dim = |v: u32| u16::try_from(v.clamp(1, u32::from(u16::MAX))).unwrap_or(u16::MAX);
        Ok(Arc::new(PointerInput {
            width: dim(width),
            height: dim(height),
            pending: Mutex::new(Pending::default()),
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// An RFB PointerEvent: the pointer is at (`x`, `y`) in framebuffer pixels with the
    /// buttons of `mask` down (bit 0 left, 1 middle, 2 right, 3/4 wheel up/down).
    pub fn pointer(&self, x: u16, y: u16, mask: u8) {
        let mut p = self.lock();
        let pressed = mask & !p.last_mask;
        p.last_mask = mask;
        let report = Report {
            x: x.min(self.width - 1),
            y: y.min(self.height - 1),
            buttons: mask & 7,
            wheel: i8::from(pressed & WHEEL_UP != 0) - i8::from(pressed & WHEEL_DOWN != 0),
        };
        // A report that only moves (same buttons as the one before it, no wheel).
        let motion = |r: &Report, before: u8| r.wheel == 0 && r.buttons == before;
        let n = p.reports.len();
        let before_last = match n {
            0 | 1 => p.sent_buttons,
            _ => p.reports[n - 2].buttons,
        };
        let last = p.reports.back().copied();
        match last {
            Some(l) if motion(&l, before_last) && motion(&report, l.buttons) => {
                // The guest only needs the newest position.
                if let Some(l) = p.reports.back_mut() {
                    *l = report;
                }
            }
            _ => {
                if p.reports.len() >= MAX_PENDING {
                    p.reports.pop_front();
                    p.dropped += 1;
                }
                p.reports.push_back(report);
            }
        }
        drop(p);
        let _ = self.kick.write(1);
    }

    /// Reports waiting for the guest (at most [`MAX_PENDING`]).
    pub fn waiting(&self) -> usize {
        self.lock().reports.len()
    }

    /// Reports dropped so far because the guest did not take them in time.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The guest's driver is gone (reset, new VM): it sees every button up and nothing
    /// waiting.
    fn forget(&self) {
        let mut p = self.lock();
        p.reports.clear();
        p.events.clear();
        p.sent_buttons = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().expect("pointer lock poisoned")
    }

    /// The configuration answer for `sel`/`sub` (at most 128 bytes).
    fn answer(&self, sel: u8, sub: u8) -> Vec<u8> {
        let bits = |codes: &[u16]| {
            let mut b = vec![0u8; usize::from(codes.iter().max().copied().unwrap_or(0) / 8 + 1)];
            for &c in codes {
                b[usize::from(c / 8)] |= 1 << (c % 8);
            }
            b
        };
        match (sel, sub) {
            (select::ID_NAME, 0) => NAME.as_bytes().to_vec(),
            (select::ID_DEVIDS, 0) => [BUS_VIRTUAL, 0x0627, 0x0003, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            (select::EV_BITS, t) if u16::from(t) == EV_KEY => {
                bits(&[BTN_LEFT, BTN_RIGHT, BTN_MIDDLE])
            }
            (select::EV_BITS, t) if u16::from(t) == EV_REL => bits(&[REL_WHEEL]),
            (select::EV_BITS, t) if u16::from(t) == EV_ABS => bits(&[ABS_X, ABS_Y]),
            (select::ABS_INFO, a) if u16::from(a) == ABS_X || u16::from(a) == ABS_Y => {
                let max = if u16::from(a) == ABS_X {
                    self.width
                } else {
                    self.height
                } - 1;
                // min, max, fuzz, flat, res
                [0u32, u32::from(max), 0, 0, 0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Expands the next report into events, against what the guest was last told.
fn expand(p: &mut Pending) -> bool {
    let Some(r) = p.reports.pop_front() else {
        return false;
    };
    let ev = |kind, code, value| InputEvent { kind, code, value };
    p.events.push_back(ev(EV_ABS, ABS_X, u32::from(r.x)));
    p.events.push_back(ev(EV_ABS, ABS_Y, u32::from(r.y)));
    for (bit, code) in BUTTONS {
        if (r.buttons ^ p.sent_buttons) & bit != 0 {
            p.events
                .push_back(ev(EV_KEY, code, u32::from(r.buttons & bit != 0)));
        }
    }
    if r.wheel != 0 {
        // Two's complement, as the guest reads a signed value.
        p.events
            .push_back(ev(EV_REL, REL_WHEEL, i32::from(r.wheel) as u32));
    }
    p.events.push_back(ev(EV_SYN, SYN_REPORT, 0));
    p.sent_buttons = r.buttons;
    true
}

/// Moves waiting events into the guest's event buffers, one event per buffer. Returns
/// whether to interrupt the driver.
pub fn fill_events(queue: &mut Queue, mem: &GuestMemoryMmap, input: &PointerInput) -> bool {
    let mut p = input.lock();
    let mut used = false;
    loop {
        if p.events.is_empty() && !expand(&mut p) {
            break;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let event = p.events.front().copied().expect("events not empty");
        let mut chain = chain;
        let written = chain
            .find(|d| d.is_write_only() && d.len() >= 8)
            .and_then(|d| mem.write_slice(&event.bytes(), d.addr()).ok())
            .map_or(0, |()| 8);
        if written == 8 {
            p.events.pop_front();
        }
        // A buffer too small or outside guest memory goes back empty: the event waits for
        // the next one.
        if queue.add_used(mem, head, written).is_err() {
            break;
        }
        used = true;
    }
    used && queue.needs_notification(mem).unwrap_or(true)
}

/// Status queue (LED and similar feedback): read and ignored.
pub fn drain_status(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    super::drain_queue(queue, mem, |_| 0)
}

/// A virtio-input tablet.
pub struct Input {
    info: DeviceInfo,
    input: Arc<PointerInput>,
    select: u8,
    subsel: u8,
    worker: Worker<InputWorker>,
}

impl Input {
    /// A tablet over `input` (which outlives the device across guest reboots).
    pub fn new(input: Arc<PointerInput>) -> Self {
        // A new VM has a new driver: nothing from the old one carries over.
        input.forget();
        Input {
            info: DeviceInfo {
                device_type: types::INPUT,
                // Input device controller, other.
                pci_class: (0x09, 0x80, 0x00),
                queue_sizes: vec![QUEUE_SIZE; InputWorker::QUEUES],
                features: features::VERSION_1,
                config: Vec::new(),
            },
            worker: Worker::new("virtio-input", input.clone()),
            input,
            select: 0,
            subsel: 0,
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let answer = self.input.answer(self.select, self.subsel);
        let n = answer.len().min(128);
        c[0] = self.select;
        c[1] = self.subsel;
        c[2] = n as u8;
        c[8..8 + n].copy_from_slice(&answer[..n]);
        c
    }
}

impl VirtioDevice for Input {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only select (byte 0) and subsel (byte 1) are the driver's to write.
        for (i, b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = *b,
                Some(1) => self.subsel = *b,
                _ => {}
            }
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.worker.start(ctx, |input| InputWorker { input })
    }

    fn reset(&mut self) {
        self.worker.stop();
        self.input.forget();
        self.select = 0;
        self.subsel = 0;
    }
}

/// The worker: fills event buffers when the viewer moves the pointer or the guest gives
/// buffers, and drains the status queue.
pub struct InputWorker {
    input: Arc<PointerInput>,
}

const EVENTQ: usize = 0;
const STATUSQ: usize = 1;

impl QueueHandler for InputWorker {
    type Backend = Arc<PointerInput>;
    const QUEUES: usize = 2;
    // The balloon's allow-list is exactly what this worker needs (epoll, reading an
    // eventfd; writes of interrupts are in every list).
    const THREAD: sandbox::ThreadKind = sandbox::ThreadKind::Balloon;

    fn sources(&self) -> Vec<RawFd> {
        vec![self.input.kick.as_raw_fd()]
    }

    fn serve(&mut self, wake: &Wakeup, io: &mut WorkerIo) {
        if wake.source(0) {
            let _ = self.input.kick.read();
        }
        if wake.queue(STATUSQ) {
            io.serve_queue(STATUSQ, drain_status);
        }
        let input = self.input.clone();
        io.serve_queue(EVENTQ, |q, mem| fill_events(q, mem, &input));
    }

    fn into_backend(self) -> Arc<PointerInput> {
        self.input
    }
}
