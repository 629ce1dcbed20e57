//! The virtio-input harness: viewer pointer events, then the event queue.

use super::*;
use crate::virtio::input::{fill_events, PointerInput, MAX_PENDING};

/// What a virtio-input run did, so tests can tell that seeds reach the device.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InputReport {
    /// Whether the queue was valid (otherwise nothing ran).
    pub ran: bool,
    /// Used entries added.
    pub used: u16,
    /// Events written (used entries of 8 bytes).
    pub events: u16,
    /// Whether the exact memory check ran (the writes could not alter the chains).
    pub checked_memory: bool,
}

/// virtio-input: pointer events from a viewer, then one pass over the event queue.
///
/// Input: byte 0 queue flags ([`queue_flags`]); bytes 1-2 the starting ring index (LE);
/// byte 3 the number of pointer events N; N events of 5 bytes (x LE u16, y LE u16, RFB button
/// mask); with [`queue_flags::CUSTOM_LAYOUT`] three LE u16 ring addresses; then the guest
/// memory image from address 0.
///
/// Checks: no panic; every popped chain is used; a notification only follows used buffers;
/// no more reports wait than [`MAX_PENDING`]; when the device's writes cannot alter the
/// chains, each used length is 0 or 8 and every changed byte lies in the used ring or in a
/// writable buffer of a used chain.
pub fn virtio_input(data: &[u8]) -> InputReport {
    let mut input = Input(data);
    let flags = input.u8();
    let start = input.u16();
    let tablet = PointerInput::new(64, 40).expect("eventfd");
    for _ in 0..input.u8() {
        let (x, y, mask) = (input.u16(), input.u16(), input.u8());
        tablet.pointer(x, y, mask);
    }
    assert!(tablet.waiting() <= MAX_PENDING, "unbounded pointer queue");
    let Some(mut rig) = QueueRig::new(flags, start, input) else {
        return InputReport::default();
    };
    let chains = survey(&rig.queue, &rig.mem);
    let fixed = metadata(&rig.layout, &rig.mem);
    let isolated = writes_are_isolated(&chains, &fixed);
    let before = read_regions(&rig.mem, &[(0, MEM_SIZE)]);

    let notify = fill_events(&mut rig.queue, &rig.mem, &tablet);

    let (_, used) = rig.check_drained(notify);
    let mut report = InputReport {
        ran: true,
        used,
        ..InputReport::default()
    };
    if !isolated {
        return report;
    }
    let mut written: Vec<(u64, u64)> = Vec::new();
    for i in 0..used {
        let (_, len) = used_elem(&rig.mem, &rig.layout, rig.start.wrapping_add(i));
        assert!(len == 0 || len == 8, "used length {len}");
        report.events += u16::from(len == 8);
    }
    for c in chains.iter().take(usize::from(used)) {
        written.extend(&c.writable);
    }
    let after = read_regions(&rig.mem, &[(0, MEM_SIZE)]);
    let inside = |a: u64, ranges: &[(u64, u64)]| ranges.iter().any(|&(s, l)| a >= s && a - s < l);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let at = i as u64;
        if b != a {
            assert!(
                inside(at, &[fixed[2]]) || inside(at, &written),
                "byte {at:#x} changed outside the used ring and the used buffers"
            );
        }
    }
    report.checked_memory = true;
    report
}
