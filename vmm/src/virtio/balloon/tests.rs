//! virtio-balloon tests: real descriptor chains in guest memory (virtio-queue's mock driver),
//! and real madvise on the anonymous mapping of that memory, checked with mincore.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::testing::ChannelInterrupt;

const PAGE: u64 = 4096;
/// Two adjacent regions of 2 MiB each, so ranges may straddle them.
const REGION: u64 = 0x20_0000;
const BUF: u64 = 0x10_0000;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fn shared() -> Arc<BalloonShared> {
    BalloonShared::new(BalloonConfig::default(), 4).unwrap()
}

/// Fills `[addr, addr + len)` with a non-zero pattern (which makes the pages resident).
fn fill(m: &GuestMemoryMmap, addr: u64, len: u64) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251 + 1) as u8).collect();
    m.write_slice(&data, GuestAddress(addr)).unwrap();
}

fn read(m: &GuestMemoryMmap, addr: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    m.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b
}

/// Whether the host page behind guest address `addr` is resident (mincore).
fn resident(m: &GuestMemoryMmap, addr: u64) -> bool {
    let p = m
        .get_host_address(GuestAddress(addr & !(PAGE - 1)))
        .unwrap();
    let mut v = 0u8;
    // SAFETY: one page of a live mapping; `v` receives one byte.
    let r = unsafe { libc::mincore(p.cast(), PAGE as usize, &mut v) };
    assert_eq!(r, 0, "mincore");
    v & 1 != 0
}

fn queue_with<'a>(
    m: &'a GuestMemoryMmap,
    descs: &[RawDescriptor],
) -> (MockSplitQueue<'a, GuestMemoryMmap>, Queue) {
    let q = MockSplitQueue::create(m, GuestAddress(0), 16);
    q.add_desc_chains(descs, 0).unwrap();
    let queue = q.create_queue().unwrap();
    (q, queue)
}

fn used(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> (u32, u32) {
    let base = q.used_addr().0 + 4 + i * 8;
    (
        m.read_obj(GuestAddress(base)).unwrap(),
        m.read_obj(GuestAddress(base + 4)).unwrap(),
    )
}

fn used_idx(m: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    m.read_obj(GuestAddress(q.used_addr().0 + 2)).unwrap()
}

#[test]
fn reported_ranges_are_released_and_read_back_zeroed() {
    let m = mem();
    let s = shared();
    // Data on both sides of the region boundary, and around the reported ranges.
    let (a, b) = (0x18_0000, REGION + 0x4_0000);
    fill(&m, a - PAGE, 0x2_0000 + 2 * PAGE);
    fill(&m, b - PAGE, 0x1_0000 + 2 * PAGE);
    assert!(resident(&m, a) && resident(&m, b));
    // One report, two ranges (device-writable, as Linux adds them).
    let (q, mut queue) = queue_with(&m, &[desc(a, 0x2_0000, W | N, 1), desc(b, 0x1_0000, W, 0)]);
    assert!(process_reports(&mut queue, &m, &s));
    assert_eq!(used_idx(&m, &q), 1);
    assert_eq!(used(&m, &q, 0), (0, 0));
    for addr in [a, a + 0x1_f000, b, b + 0xf000] {
        assert!(!resident(&m, addr), "{addr:#x} still resident");
    }
    assert!(read(&m, a, 0x2_0000).iter().all(|&x| x == 0));
    assert!(read(&m, b, 0x1_0000).iter().all(|&x| x == 0));
    // The pages around them keep their data.
    assert!(read(&m, a - PAGE, PAGE).iter().all(|&x| x != 0));
    assert!(read(&m, a + 0x2_0000, PAGE).iter().all(|&x| x != 0));
    assert!(read(&m, b - PAGE, PAGE).iter().all(|&x| x != 0));
    let snap = s.snapshot();
    assert_eq!((snap.reports, snap.reported_bytes), (1, 0x3_0000));
    assert_eq!(snap.rejected, 0);
}

#[test]
fn a_range_across_regions_is_released_in_both() {
    let m = mem();
    let s = shared();
    let a = REGION - 2 * PAGE;
    fill(&m, a, 4 * PAGE);
    let (_q, mut queue) = queue_with(&m, &[desc(a, 4 * PAGE as u32, W, 0)]);
    process_reports(&mut queue, &m, &s);
    assert!(read(&m, a, 4 * PAGE).iter().all(|&x| x == 0));
    assert_eq!(s.snapshot().reported_bytes, 4 * PAGE);
}

#[test]
fn hostile_ranges_release_nothing_outside_what_they_name() {
    let m = mem();
    let s = shared();
    fill(&m, BUF, 4 * PAGE);
    let end = 2 * REGION;
    fill(&m, end - PAGE, PAGE);
    let descs = [
        // Unaligned: only the whole page inside [BUF + 100, BUF + 2 pages + 100) goes.
        desc(BUF + 100, 2 * PAGE as u32, W, 0),
        // Runs past the end of guest memory: refused as a whole.
        desc(end - PAGE, 2 * PAGE as u32, W, 0),
        // Entirely outside guest memory, and at the top of the address space.
        desc(1 << 40, PAGE as u32, W, 0),
        desc(u64::MAX - 10, 4096, W, 0),
        // Smaller than a page: nothing to release.
        desc(BUF + 3 * PAGE + 8, 100, W, 0),
    ];
    let (q, mut queue) = queue_with(&m, &descs);
    process_reports(&mut queue, &m, &s);
    assert_eq!(
        used_idx(&m, &q),
        descs.len() as u16,
        "every report answered"
    );
    let page0 = read(&m, BUF, PAGE);
    assert!(
        page0[..100].iter().all(|&x| x != 0),
        "bytes before the range kept"
    );
    assert!(page0[100..].iter().all(|&x| x != 0), "partial page kept");
    assert!(
        read(&m, BUF + PAGE, PAGE).iter().all(|&x| x == 0),
        "whole page released"
    );
    assert!(read(&m, BUF + 2 * PAGE, PAGE).iter().all(|&x| x != 0));
    assert!(read(&m, BUF + 3 * PAGE, PAGE).iter().all(|&x| x != 0));
    assert!(
        read(&m, end - PAGE, PAGE).iter().all(|&x| x != 0),
        "straddling range kept"
    );
    let snap = s.snapshot();
    assert_eq!(snap.reported_bytes, PAGE);
    // Past the end, outside memory, overflowing: three refusals (the chains that pop).
    assert!(snap.rejected >= 2, "{snap:?}");
}

#[test]
fn inflate_releases_the_listed_frames_and_deflate_counts_them() {
    let m = mem();
    let s = shared();
    let frames: Vec<u32> = vec![0x120, 0x121, 0x122, 0x200, 0x201, 0x130, 0xffff_ffff, 0x400];
    let list: Vec<u8> = frames.iter().flat_map(|f| f.to_le_bytes()).collect();
    m.write_slice(&list, GuestAddress(BUF)).unwrap();
    fill(&m, 0x11f000, 0x5000);
    fill(&m, 0x200000 - PAGE, 3 * PAGE);
    fill(&m, 0x130000, PAGE);
    // The list split over two descriptors, mid-frame number.
    let (q, mut queue) = queue_with(&m, &[desc(BUF, 6, N, 1), desc(BUF + 6, 26, 0, 0)]);
    assert!(process_inflate(&mut queue, &m, &s));
    assert_eq!(used(&m, &q, 0), (0, 0));
    for pfn in [0x120u64, 0x121, 0x122, 0x200, 0x201, 0x130] {
        assert!(
            read(&m, pfn << 12, PAGE).iter().all(|&x| x == 0),
            "{pfn:#x}"
        );
    }
    assert!(read(&m, 0x11f000, PAGE).iter().all(|&x| x != 0));
    assert!(read(&m, 0x123000, PAGE).iter().all(|&x| x != 0));
    assert!(read(&m, 0x1ff000, PAGE).iter().all(|&x| x != 0));
    let snap = s.snapshot();
    assert_eq!(snap.inflated_pages, 6);
    assert_eq!(snap.rejected, 2, "0xffffffff and 0x400 lie outside 4 MiB");

    let m2 = mem();
    m2.write_slice(&list, GuestAddress(BUF)).unwrap();
    let (_q, mut queue) = queue_with(&m2, &[desc(BUF, 32, 0, 0)]);
    assert!(process_deflate(&mut queue, &m2, &s));
    assert_eq!(s.snapshot().deflated_pages, 8);
}

#[test]
fn inflate_reads_at_most_max_pfns_per_request() {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap();
    let s = BalloonShared::new(BalloonConfig::default(), 8).unwrap();
    let n = MAX_PFNS + 100;
    let list: Vec<u8> = (0..n as u32)
        .flat_map(|i| (0x400 + i).to_le_bytes())
        .collect();
    m.write_slice(&list, GuestAddress(BUF)).unwrap();
    let (_q, mut queue) = queue_with(&m, &[desc(BUF, list.len() as u32, 0, 0)]);
    process_inflate(&mut queue, &m, &s);
    assert_eq!(s.snapshot().inflated_pages, MAX_PFNS as u64);
}

#[test]
fn stats_are_recorded_and_the_buffer_is_held_until_asked() {
    let m = mem();
    let s = shared();
    let mut entries = Vec::new();
    for (tag, val) in [
        (4u16, 123u64 << 20),
        (5, 512 << 20),
        (6, 300 << 20),
        (99, 7),
    ] {
        entries.extend_from_slice(&tag.to_le_bytes());
        entries.extend_from_slice(&val.to_le_bytes());
    }
    m.write_slice(&entries, GuestAddress(BUF)).unwrap();
    let (q, mut queue) = queue_with(&m, &[desc(BUF, entries.len() as u32, 0, 0)]);
    let mut held = None;
    assert!(!take_stats(&mut queue, &m, &s, &mut held), "held, not used");
    assert_eq!(held, Some(0));
    assert_eq!(used_idx(&m, &q), 0);
    let st = s.snapshot().stats;
    assert_eq!(st.values[4], Some(123 << 20));
    assert_eq!(st.values[5], Some(512 << 20));
    assert_eq!(st.values[6], Some(300 << 20));
    assert_eq!(st.values[0], None);
    assert!(st.updated.is_some());
    assert!(return_stats_buffer(&mut queue, &m, &mut held));
    assert_eq!(used_idx(&m, &q), 1);
    assert_eq!(used(&m, &q, 0), (0, 0));
    assert!(
        !return_stats_buffer(&mut queue, &m, &mut held),
        "nothing held"
    );
}

#[test]
fn queue_roles_follow_the_accepted_features() {
    assert_eq!(
        Roles::for_features(STATS_VQ | REPORTING),
        Roles {
            stats: Some(2),
            reporting: Some(3)
        }
    );
    assert_eq!(
        Roles::for_features(REPORTING),
        Roles {
            stats: None,
            reporting: Some(2)
        }
    );
    assert_eq!(
        Roles::for_features(STATS_VQ),
        Roles {
            stats: Some(2),
            reporting: None
        }
    );
}

#[test]
fn config_space_carries_target_and_actual() {
    let s = BalloonShared::new(
        BalloonConfig {
            reporting: false,
            stats_interval: None,
            size_mib: 16,
        },
        256,
    )
    .unwrap();
    let mut dev = Balloon::new(s.clone());
    assert_eq!(dev.features() & REPORTING, 0, "reporting off");
    assert_ne!(dev.features() & STATS_VQ, 0);
    let mut c = [0u8; 8];
    dev.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[0..4].try_into().unwrap()), 16 * 256);
    dev.write_config(4, &1234u32.to_le_bytes());
    // The driver cannot change the target.
    dev.write_config(0, &[0xff; 4]);
    dev.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[0..4].try_into().unwrap()), 16 * 256);
    assert_eq!(u32::from_le_bytes(c[4..8].try_into().unwrap()), 1234);
    s.set_target_mib(100).unwrap();
    assert_eq!(s.snapshot().target_pages, 100 * 256);
    let e = s.set_target_mib(257).unwrap_err();
    assert!(e.contains("larger than the guest's 256 MiB"), "{e}");
}

/// The device end to end on its worker thread: the driver's stats buffer is taken, a stats
/// request returns it (interrupting the stats queue), a report is served.
#[test]
fn worker_serves_reports_and_returns_stats_on_request() {
    let m = mem();
    let s = shared();
    let mut dev = Balloon::new(s.clone());
    // Stats queue at 0x8000 (ring) with its buffer, reporting queue at 0 with one range.
    let stats_q = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
    let entry: Vec<u8> = [4u16.to_le_bytes().to_vec(), 77u64.to_le_bytes().to_vec()].concat();
    m.write_slice(&entry, GuestAddress(BUF)).unwrap();
    stats_q.add_desc_chains(&[desc(BUF, 10, 0, 0)], 0).unwrap();
    let report_q = MockSplitQueue::create(&m, GuestAddress(0), 16);
    fill(&m, 0x18_0000, 0x1_0000);
    report_q
        .add_desc_chains(&[desc(0x18_0000, 0x1_0000, W, 0)], 0)
        .unwrap();
    let idle = || Queue::new(QUEUE_SIZE).unwrap();
    let queues = vec![
        idle(),
        idle(),
        stats_q.create_queue().unwrap(),
        report_q.create_queue().unwrap(),
    ];
    let (tx, rx) = mpsc::channel();
    let ctx = ActivateContext {
        mem: m.clone(),
        queues,
        queue_events: (0..4)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt: Arc::new(ChannelInterrupt(tx)),
        acked_features: features::VERSION_1 | STATS_VQ | REPORTING,
    };
    dev.activate(ctx).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        3,
        "report used"
    );
    assert!(s.snapshot().active);
    // The stats queue is served in the same wakeup, maybe just after the report.
    let t = std::time::Instant::now();
    while s.snapshot().stats.updated.is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(s.snapshot().stats.values[4], Some(77));
    assert_eq!(used_idx(&m, &stats_q), 0, "stats buffer held");
    s.request_stats();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        2,
        "stats asked"
    );
    assert_eq!(used_idx(&m, &stats_q), 1);
    assert!(read(&m, 0x18_0000, 0x1_0000).iter().all(|&x| x == 0));
    assert_eq!(s.snapshot().reported_bytes, 0x1_0000);
    dev.reset();
    assert!(!s.snapshot().active);
}
