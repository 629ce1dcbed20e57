//! virtio-input tests: the configuration space as Linux's driver reads it, and events written
//! into real descriptor chains in guest memory (virtio-queue's mock driver).

use std::sync::mpsc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::testing::ChannelInterrupt;

const W: u16 = VRING_DESC_F_WRITE as u16;
const BUF: u64 = 0x1_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// `n` one-event buffers at BUF, BUF + 8, ...
fn buffers(n: u16) -> Vec<RawDescriptor> {
    (0..n)
        .map(|i| RawDescriptor::from(Descriptor::new(BUF + u64::from(i) * 8, 8, W, 0)))
        .collect()
}

fn queue_with<'a>(
    m: &'a GuestMemoryMmap,
    descs: &[RawDescriptor],
) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
    let q = MockSplitQueue::create(m, GuestAddress(0), 32);
    q.add_desc_chains(descs, 0).unwrap();
    let queue = q.create_queue().unwrap();
    (q, queue)
}

fn used_idx(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    m.read_obj(GuestAddress(q.used_addr().0 + 2)).unwrap()
}

/// The events in the first `n` buffers.
fn events(m: &GuestMemoryMmap, n: u16) -> Vec<(u16, u16, u32)> {
    (0..n)
        .map(|i| {
            let a = BUF + u64::from(i) * 8;
            (
                m.read_obj(GuestAddress(a)).unwrap(),
                m.read_obj(GuestAddress(a + 2)).unwrap(),
                m.read_obj(GuestAddress(a + 4)).unwrap(),
            )
        })
        .collect()
}

fn tablet() -> Arc<PointerInput> {
    PointerInput::new(1024, 768).unwrap()
}

/// Selects `sel`/`sub` and reads size and answer, as Linux's virtinput_cfg_select does.
fn cfg(dev: &mut Input, sel: u8, sub: u8) -> Vec<u8> {
    dev.write_config(0, &[sel]);
    dev.write_config(1, &[sub]);
    let mut size = [0u8];
    dev.read_config(2, &mut size);
    let mut out = vec![0u8; usize::from(size[0])];
    for (i, b) in out.iter_mut().enumerate() {
        let mut one = [0u8];
        dev.read_config(8 + i as u64, &mut one);
        *b = one[0];
    }
    out
}

fn bit(bits: &[u8], n: u16) -> bool {
    bits.get(usize::from(n / 8))
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

#[test]
fn config_space_describes_a_tablet() {
    let mut dev = Input::new(tablet());
    assert_eq!(dev.device_type(), 18);
    assert!(dev.features() & features::VERSION_1 != 0, "Linux needs 1.0");
    assert_eq!(cfg(&mut dev, select::ID_NAME, 0), NAME.as_bytes());
    let ids = cfg(&mut dev, select::ID_DEVIDS, 0);
    assert_eq!(ids.len(), 8);
    assert_eq!(u16::from_le_bytes([ids[0], ids[1]]), BUS_VIRTUAL);
    let keys = cfg(&mut dev, select::EV_BITS, EV_KEY as u8);
    for b in [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE] {
        assert!(bit(&keys, b), "{b:#x}");
    }
    assert!(!bit(&keys, 0x113), "no side button");
    let abs = cfg(&mut dev, select::EV_BITS, EV_ABS as u8);
    assert!(bit(&abs, ABS_X) && bit(&abs, ABS_Y));
    assert!(bit(
        &cfg(&mut dev, select::EV_BITS, EV_REL as u8),
        REL_WHEEL
    ));
    let info = |dev: &mut Input, axis: u16| {
        let a = cfg(dev, select::ABS_INFO, axis as u8);
        assert_eq!(a.len(), 20);
        let u = |i: usize| u32::from_le_bytes(a[i * 4..i * 4 + 4].try_into().unwrap());
        (u(0), u(1))
    };
    assert_eq!(info(&mut dev, ABS_X), (0, 1023));
    assert_eq!(info(&mut dev, ABS_Y), (0, 767));
    // Anything else answers nothing: no LEDs, no switches, no other axis.
    for (sel, sub) in [
        (select::EV_BITS, 0x11u8),
        (select::EV_BITS, 5),
        (select::ABS_INFO, 2),
        (select::ID_SERIAL, 0),
        (select::PROP_BITS, 0),
        (select::UNSET, 0),
        (0xff, 0xff),
    ] {
        assert!(cfg(&mut dev, sel, sub).is_empty(), "{sel:#x}/{sub:#x}");
    }
    // Writes past subsel change nothing.
    dev.write_config(2, &[99; 20]);
    let mut size = [0u8];
    dev.read_config(2, &mut size);
    assert_eq!(size[0], 0);
}

#[test]
fn a_click_reaches_the_guest_as_abs_and_button_events() {
    let m = mem();
    let t = tablet();
    t.pointer(100, 200, 1);
    t.pointer(100, 200, 0);
    let (q, mut queue) = queue_with(&m, &buffers(16));
    assert!(fill_events(&mut queue, &m, &t));
    assert_eq!(used_idx(&m, &q), 8);
    assert_eq!(
        events(&m, 8),
        vec![
            (EV_ABS, ABS_X, 100),
            (EV_ABS, ABS_Y, 200),
            (EV_KEY, BTN_LEFT, 1),
            (EV_SYN, SYN_REPORT, 0),
            (EV_ABS, ABS_X, 100),
            (EV_ABS, ABS_Y, 200),
            (EV_KEY, BTN_LEFT, 0),
            (EV_SYN, SYN_REPORT, 0),
        ]
    );
    // Nothing more to say: the remaining buffers stay with the device.
    assert!(!fill_events(&mut queue, &m, &t));
    assert_eq!(used_idx(&m, &q), 8);
}

#[test]
fn positions_are_clamped_and_the_wheel_is_a_press() {
    let m = mem();
    let t = tablet();
    t.pointer(5000, 5000, 8 | 4);
    t.pointer(5000, 5000, 4);
    t.pointer(5000, 5000, 16 | 4);
    let (_q, mut queue) = queue_with(&m, &buffers(16));
    fill_events(&mut queue, &m, &t);
    assert_eq!(
        events(&m, 13),
        vec![
            (EV_ABS, ABS_X, 1023),
            (EV_ABS, ABS_Y, 767),
            (EV_KEY, BTN_RIGHT, 1),
            (EV_REL, REL_WHEEL, 1),
            (EV_SYN, SYN_REPORT, 0),
            (EV_ABS, ABS_X, 1023),
            (EV_ABS, ABS_Y, 767),
            (EV_SYN, SYN_REPORT, 0),
            (EV_ABS, ABS_X, 1023),
            (EV_ABS, ABS_Y, 767),
            (EV_REL, REL_WHEEL, u32::MAX),
            (EV_SYN, SYN_REPORT, 0),
            (0, 0, 0),
        ]
    );
}

#[test]
fn a_report_split_across_buffers_resumes_where_it_stopped() {
    let m = mem();
    let t = tablet();
    t.pointer(1, 2, 2);
    let (q, mut queue) = queue_with(&m, &buffers(3));
    assert!(fill_events(&mut queue, &m, &t));
    assert_eq!(used_idx(&m, &q), 3);
    assert_eq!(
        events(&m, 3),
        vec![
            (EV_ABS, ABS_X, 1),
            (EV_ABS, ABS_Y, 2),
            (EV_KEY, BTN_MIDDLE, 1)
        ]
    );
    // The guest gives more buffers (the next ones of the same ring).
    q.add_desc_chains(
        &[RawDescriptor::from(Descriptor::new(BUF + 0x100, 8, W, 0))],
        3,
    )
    .unwrap();
    assert!(fill_events(&mut queue, &m, &t));
    assert_eq!(used_idx(&m, &q), 4);
    let syn: (u16, u16) = (
        m.read_obj(GuestAddress(BUF + 0x100)).unwrap(),
        m.read_obj(GuestAddress(BUF + 0x102)).unwrap(),
    );
    assert_eq!(syn, (EV_SYN, SYN_REPORT));
}

#[test]
fn a_guest_that_takes_nothing_costs_a_bounded_queue_and_keeps_buttons_right() {
    let t = tablet();
    // A press, then far more reports than the ring holds, alternating buttons so none
    // coalesces, then a release.
    t.pointer(10, 10, 1);
    for i in 0..1000u16 {
        t.pointer(i % 1000, 5, if i % 2 == 0 { 5 } else { 1 });
    }
    t.pointer(7, 8, 0);
    assert!(t.lock().reports.len() <= MAX_PENDING);
    assert!(t.dropped() > 900);
    // Plain motion coalesces into the last waiting motion.
    let before = t.lock().reports.len();
    for i in 0..100 {
        t.pointer(i, i, 0);
    }
    assert_eq!(t.lock().reports.len(), (before + 1).min(MAX_PENDING));
    let last = *t.lock().reports.back().unwrap();
    assert_eq!((last.x, last.y, last.buttons), (99, 99, 0));
    let m = mem();
    let (_q, mut queue) = queue_with(&m, &buffers(32));
    for _ in 0..4 {
        fill_events(&mut queue, &m, &t);
        if t.lock().reports.is_empty() {
            break;
        }
        let (_q2, q2) = queue_with(&m, &buffers(32));
        queue = q2;
    }
    // Whatever was dropped, the guest ends with every button up (it got each press's
    // release), and at the last position.
    let p = t.lock();
    assert_eq!(p.sent_buttons, 0);
    assert!(p.reports.is_empty() && p.events.is_empty());
}

#[test]
fn bad_buffers_are_returned_empty_and_the_event_waits() {
    let m = mem();
    let t = tablet();
    t.pointer(3, 4, 0);
    let descs = [
        // Read-only, too small, outside guest memory: each goes back with length 0.
        RawDescriptor::from(Descriptor::new(BUF, 8, 0, 0)),
        RawDescriptor::from(Descriptor::new(BUF, 4, W, 0)),
        RawDescriptor::from(Descriptor::new(1 << 40, 8, W, 0)),
        RawDescriptor::from(Descriptor::new(BUF + 0x200, 8, W, 0)),
    ];
    let (q, mut queue) = queue_with(&m, &descs);
    fill_events(&mut queue, &m, &t);
    assert_eq!(used_idx(&m, &q), 4);
    let len = |i: u64| -> u32 {
        m.read_obj(GuestAddress(q.used_addr().0 + 8 + i * 8))
            .unwrap()
    };
    assert_eq!((len(0), len(1), len(2), len(3)), (0, 0, 0, 8));
    let x: (u16, u16, u32) = (
        m.read_obj(GuestAddress(BUF + 0x200)).unwrap(),
        m.read_obj(GuestAddress(BUF + 0x202)).unwrap(),
        m.read_obj(GuestAddress(BUF + 0x204)).unwrap(),
    );
    assert_eq!(x, (EV_ABS, ABS_X, 3));
}

#[test]
fn the_worker_delivers_motion_and_reset_forgets_everything() {
    let m = mem();
    let t = tablet();
    let mut dev = Input::new(t.clone());
    let q = MockSplitQueue::create(&m, GuestAddress(0), 32);
    q.add_desc_chains(&buffers(8), 0).unwrap();
    let status = MockSplitQueue::create(&m, GuestAddress(0x8_0000), 8);
    let (tx, rx) = mpsc::channel();
    let events_fds = vec![
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ];
    dev.activate(ActivateContext {
        mem: m.clone(),
        queues: vec![q.create_queue().unwrap(), status.create_queue().unwrap()],
        queue_events: events_fds,
        interrupt: Arc::new(ChannelInterrupt(tx)),
        acked_features: features::VERSION_1,
    })
    .unwrap();
    t.pointer(640, 480, 0);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);
    assert_eq!(
        events(&m, 3),
        vec![
            (EV_ABS, ABS_X, 640),
            (EV_ABS, ABS_Y, 480),
            (EV_SYN, SYN_REPORT, 0)
        ]
    );
    // A press waiting when the driver goes away is not replayed to the next one.
    dev.reset();
    t.pointer(1, 1, 1);
    let mut fresh = Input::new(t.clone());
    fresh.reset();
    let p = t.lock();
    assert!(p.reports.is_empty() && p.events.is_empty());
    assert_eq!(p.sent_buttons, 0);
}
