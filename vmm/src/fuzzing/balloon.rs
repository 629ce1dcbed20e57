//! The virtio-balloon harness: inflate, deflate, free page reporting and stats queues.

use super::*;
use crate::virtio::balloon::{
    process_deflate, process_inflate, process_reports, take_stats, BalloonConfig, BalloonShared,
    MAX_PFNS, PFN_SHIFT,
};

/// Byte 3 of a virtio-balloon input: which queue the chains are on.
pub mod balloon_roles {
    /// Inflate (frame numbers to release).
    pub const INFLATE: u8 = 0;
    /// Deflate (frame numbers taken back).
    pub const DEFLATE: u8 = 1;
    /// Free page reporting (ranges to release).
    pub const REPORTING: u8 = 2;
    /// Statistics.
    pub const STATS: u8 = 3;
}

/// What a virtio-balloon run did, so tests can tell that seeds reach the device.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BalloonReport {
    /// Whether the queue was valid (otherwise nothing ran).
    pub ran: bool,
    /// Used entries added.
    pub used: u16,
    /// Bytes released through reporting, and pages through inflation.
    pub reported_bytes: u64,
    /// Pages inflated.
    pub inflated_pages: u64,
    /// Whether the exact memory check ran (the released ranges could not alter the chains).
    pub checked_memory: bool,
}

/// Frame numbers in the first `MAX_PFNS` * 4 readable bytes of `chain` (as the device reads
/// them), as guest byte ranges; None when a readable buffer lies outside memory (the device
/// then stops reading, which the check below does not model).
fn inflated_ranges(chain: &ChainInfo, mem: &GuestMemoryMmap) -> Option<Vec<(u64, u64)>> {
    if !chain.readable_in_memory(mem) {
        return None;
    }
    let mut bytes = read_regions(mem, &chain.readable);
    bytes.truncate(MAX_PFNS * 4);
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| {
                let pfn = u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                (pfn << PFN_SHIFT, 1 << PFN_SHIFT)
            })
            .collect(),
    )
}

/// virtio-balloon: one queue's processing over a queue described by `data`.
///
/// Input: byte 0 queue flags ([`queue_flags`]); bytes 1-2 the starting ring index (LE);
/// byte 3 the queue ([`balloon_roles`]); with [`queue_flags::CUSTOM_LAYOUT`] three LE u16
/// ring addresses; then the guest memory image from address 0.
///
/// Checks: no panic; every popped chain is used (on the stats queue: all but the last, which
/// the device holds); a notification only follows used buffers; when the released ranges
/// cannot alter the chains (they miss the rings, the indirect tables and the frame lists),
/// every byte of guest memory that changed lies in the used ring or in a range the guest named
/// (a reported range, or an inflated frame), and the latter are now zero.
pub fn virtio_balloon(data: &[u8]) -> BalloonReport {
    let mut input = Input(data);
    let flags = input.u8();
    let start = input.u16();
    let role = input.u8() % 4;
    let Some(mut rig) = QueueRig::new(flags, start, input) else {
        return BalloonReport::default();
    };
    let shared = BalloonShared::new(BalloonConfig::default(), 1).expect("balloon state");
    let chains = survey(&rig.queue, &rig.mem);
    let fixed = metadata(&rig.layout, &rig.mem);
    let mut named: Option<Vec<(u64, u64)>> = match role {
        balloon_roles::REPORTING => Some(
            chains
                .iter()
                .flat_map(|c| c.readable.iter().chain(&c.writable).copied())
                .collect(),
        ),
        balloon_roles::INFLATE => chains
            .iter()
            .map(|c| inflated_ranges(c, &rig.mem))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat()),
        _ => Some(Vec::new()),
    };
    // The frame lists must not be released under the device either.
    let lists: Vec<(u64, u64)> = if role == balloon_roles::INFLATE {
        chains.iter().flat_map(|c| c.readable.clone()).collect()
    } else {
        Vec::new()
    };
    let used_ring = fixed[2];
    let sound = named.as_ref().is_some_and(|n| {
        n.iter()
            .all(|&r| fixed.iter().chain(&lists).all(|&f| !overlaps(r, f)))
            && fixed[..2].iter().all(|&f| !overlaps(f, used_ring))
            && fixed[3..].iter().all(|&f| !overlaps(f, used_ring))
    });
    if !sound {
        named = None;
    }
    let before = read_regions(&rig.mem, &[(0, MEM_SIZE)]);

    let mut held = None;
    let notify = match role {
        balloon_roles::INFLATE => process_inflate(&mut rig.queue, &rig.mem, &shared),
        balloon_roles::DEFLATE => process_deflate(&mut rig.queue, &rig.mem, &shared),
        balloon_roles::REPORTING => process_reports(&mut rig.queue, &rig.mem, &shared),
        _ => take_stats(&mut rig.queue, &rig.mem, &shared, &mut held),
    };

    let popped = rig.queue.next_avail().wrapping_sub(rig.start);
    let used = rig.queue.next_used().wrapping_sub(rig.start);
    if role == balloon_roles::STATS {
        // Every chain is used or held, except a last one the ring cannot name.
        let answered = used + u16::from(held.is_some());
        assert!(
            answered <= popped && popped - answered <= 1,
            "stats: popped {popped}, used {used}, held {held:?}"
        );
        assert!(!notify || used > 0, "notification without used buffers");
    } else {
        rig.check_drained(notify);
    }
    let snap = shared.snapshot();
    let mut report = BalloonReport {
        ran: true,
        used,
        reported_bytes: snap.reported_bytes,
        inflated_pages: snap.inflated_pages,
        checked_memory: false,
    };
    let Some(named) = named else {
        return report;
    };
    let after = read_regions(&rig.mem, &[(0, MEM_SIZE)]);
    let inside = |a: u64, ranges: &[(u64, u64)]| ranges.iter().any(|&(s, l)| a >= s && a - s < l);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let at = i as u64;
        if b == a || inside(at, &[used_ring]) {
            continue;
        }
        assert!(
            inside(at, &named),
            "byte {at:#x} changed ({b:#x} -> {a:#x}) outside every range the guest named"
        );
        assert_eq!(*a, 0, "released byte {at:#x} reads {a:#x}, not zero");
    }
    report.checked_memory = true;
    report
}
