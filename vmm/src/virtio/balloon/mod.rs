//! virtio-balloon: gives guest memory back to the host.
//!
//! Three ways pages come back, all ending in `madvise(MADV_DONTNEED)` on the host mapping of
//! guest memory (an anonymous private mapping, see [`crate::vm`]: the host frees the pages,
//! and the guest's next touch faults in zeroed ones):
//! - free page reporting (VIRTIO_BALLOON_F_REPORTING): the guest hands over ranges of free
//!   memory (2 MiB and larger on Linux) a couple of seconds after they become free;
//! - inflation: the host sets a target size (`berth control balloon MiB`), the guest takes
//!   that many pages away from its own use and sends their frame numbers;
//! - deflation: the guest takes pages back (no host action: they come back zeroed).
//!
//! The stats queue (VIRTIO_BALLOON_F_STATS_VQ) carries the guest's memory statistics; the
//! device asks for fresh ones every stats interval, and whenever [`BalloonShared::request_stats`]
//! is called.
//!
//! Everything the guest sends is untrusted: every frame number and range is checked against
//! guest memory (ranges shrink inward to whole host pages, so nothing outside what the guest
//! named is dropped), and the work per request is bounded (at most [`MAX_PFNS`] frames per
//! inflate/deflate request, [`MAX_STATS`] statistics per stats buffer).

#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;

use super::worker::{QueueHandler, Wakeup, Worker, WorkerIo};
use super::{
    features, types, ActivateContext, ActivateError, DeviceInfo, VirtioDevice, VirtioInterrupt,
};

/// Size of each queue offered.
pub const QUEUE_SIZE: u16 = 128;

/// The balloon's page size: frame numbers count 4 KiB pages whatever the guest's page size.
pub const PFN_SHIFT: u32 = 12;

/// Most frame numbers read from one inflate or deflate request (Linux sends up to 256).
pub const MAX_PFNS: usize = 1024;

/// Most statistics read from one stats buffer (the spec defines 10 tags).
pub const MAX_STATS: usize = 32;

/// Feature bits.
pub mod feature_bits {
    /// The guest must tell the host before it reuses deflated pages (not offered: berth
    /// needs no notice, pages come back zeroed on touch).
    pub const MUST_TELL_HOST: u64 = 1 << 0;
    /// The stats queue.
    pub const STATS_VQ: u64 = 1 << 1;
    /// The guest deflates the balloon when it runs out of memory.
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
    /// Free page reporting.
    pub const REPORTING: u64 = 1 << 5;
}
use feature_bits::{DEFLATE_ON_OOM, REPORTING, STATS_VQ};

/// Statistics tags (virtio spec 5.5.6.3), in [`GuestStats::values`] order.
pub const STAT_NAMES: [&str; 10] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
];

/// What the balloon offers, chosen by `berth vm --balloon` or the pod's BALLOON_* variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Offer free page reporting.
    pub reporting: bool,
    /// Ask the guest for statistics this often; `None` only on request (a status query).
    pub stats_interval: Option<Duration>,
    /// Initial balloon size in MiB (0: the guest keeps all its memory).
    pub size_mib: u64,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig {
            reporting: true,
            stats_interval: None,
            size_mib: 0,
        }
    }
}

/// The guest's latest memory statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// By tag ([`STAT_NAMES`]); `None` for tags the guest never sent.
    pub values: [Option<u64>; 10],
    /// When they arrived.
    pub updated: Option<Instant>,
}

/// Counters and state of the balloon, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonSnapshot {
    /// Whether a driver runs the device.
    pub active: bool,
    /// Target balloon size in 4 KiB pages (what the host asked).
    pub target_pages: u32,
    /// Balloon size in pages as the guest last reported it.
    pub actual_pages: u32,
    /// Pages the guest put into the balloon (inflate), in total.
    pub inflated_pages: u64,
    /// Pages the guest took back (deflate), in total.
    pub deflated_pages: u64,
    /// Free page reports handled.
    pub reports: u64,
    /// Bytes released to the host through free page reporting.
    pub reported_bytes: u64,
    /// Guest ranges refused (outside guest memory).
    pub rejected: u64,
    /// Latest guest statistics.
    pub stats: GuestStats,
}

/// The balloon's state shared between the device (rebuilt on every guest reboot), its worker
/// and whoever controls it (the control socket): target, counters, statistics, and the
/// descriptors that wake the worker, created once before berth confines itself.
pub struct BalloonShared {
    config: BalloonConfig,
    /// Guest memory in 4 KiB pages: the largest target accepted.
    memory_pages: u64,
    target: AtomicU32,
    actual: AtomicU32,
    inflated: AtomicU64,
    deflated: AtomicU64,
    reports: AtomicU64,
    reported_bytes: AtomicU64,
    rejected: AtomicU64,
    stats: Mutex<GuestStats>,
    irq: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Periodic stats requests (a timerfd), if an interval is set.
    timer: Option<OwnedFd>,
    /// Stats requested now.
    kick: EventFd,
}

impl BalloonShared {
    /// The shared state for a guest of `memory_mib` MiB. Creates the timer and eventfd the
    /// worker sleeps on: call it before berth confines itself.
    pub fn new(config: BalloonConfig, memory_mib: u64) -> std::io::Result<Arc<Self>> {
        let memory_pages = memory_mib << (20 - PFN_SHIFT);
        let target = mib_to_pages(config.size_mib.min(memory_mib));
        let timer = match config.stats_interval {
            Some(every) if !every.is_zero() => Some(periodic_timer(every)?),
            _ => None,
        };
        Ok(Arc::new(BalloonShared {
            config,
            memory_pages,
            target: AtomicU32::new(target),
            actual: AtomicU32::new(0),
            inflated: AtomicU64::new(0),
            deflated: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            reported_bytes: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            stats: Mutex::new(GuestStats::default()),
            irq: Mutex::new(None),
            timer,
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
        }))
    }

    /// The configuration it was built with.
    pub fn config(&self) -> BalloonConfig {
        self.config
    }

    /// Sets the balloon's target size: the guest gives up `mib` MiB (0 gives everything
    /// back). Refuses more than the guest's memory.
    pub fn set_target_mib(&self, mib: u64) -> Result<(), String> {
        let total = self.memory_pages >> (20 - PFN_SHIFT);
        if mib > total {
            return Err(format!(
                "a balloon of {mib} MiB is larger than the guest's {total} MiB; give 0 to {total}"
            ));
        }
        self.target.store(mib_to_pages(mib), Ordering::SeqCst);
        if let Some(irq) = self.irq.lock().expect("balloon lock poisoned").as_ref() {
            irq.notify_config();
        }
        Ok(())
    }

    /// Asks the guest for fresh statistics (they arrive asynchronously).
    pub fn request_stats(&self) {
        let _ = self.kick.write(1);
    }

    /// The balloon's state now.
    pub fn snapshot(&self) -> BalloonSnapshot {
        BalloonSnapshot {
            active: self.irq.lock().expect("balloon lock poisoned").is_some(),
            target_pages: self.target.load(Ordering::SeqCst),
            actual_pages: self.actual.load(Ordering::SeqCst),
            inflated_pages: self.inflated.load(Ordering::Relaxed),
            deflated_pages: self.deflated.load(Ordering::Relaxed),
            reports: self.reports.load(Ordering::Relaxed),
            reported_bytes: self.reported_bytes.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            stats: *self.stats.lock().expect("balloon lock poisoned"),
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&self.target.load(Ordering::SeqCst).to_le_bytes());
        c[4..8].copy_from_slice(&self.actual.load(Ordering::SeqCst).to_le_bytes());
        c
    }
}

fn mib_to_pages(mib: u64) -> u32 {
    u32::try_from(mib << (20 - PFN_SHIFT)).unwrap_or(u32::MAX)
}

/// A non-blocking timerfd firing every `every`.
fn periodic_timer(every: Duration) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ts = libc::timespec {
        tv_sec: every.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(every.subsec_nanos() as i32),
    };
    let spec = libc::itimerspec {
        it_interval: ts,
        it_value: ts,
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// `struct virtio_balloon_config` up to `actual`.
const CONFIG_LEN: usize = 8;

/// A virtio-balloon device.
pub struct Balloon {
    info: DeviceInfo,
    shared: Arc<BalloonShared>,
    worker: Worker<BalloonWorker>,
}

impl Balloon {
    /// A balloon over `shared` (which outlives the device across guest reboots).
    pub fn new(shared: Arc<BalloonShared>) -> Self {
        let mut features = features::VERSION_1 | STATS_VQ | DEFLATE_ON_OOM;
        if shared.config.reporting {
            features |= REPORTING;
        }
        Balloon {
            info: DeviceInfo {
                device_type: types::BALLOON,
                // Unclassified device: what virtio-balloon has always reported.
                pci_class: (0xff, 0x00, 0x00),
                queue_sizes: vec![QUEUE_SIZE; BalloonWorker::QUEUES],
                features,
                config: vec![0; CONFIG_LEN],
            },
            worker: Worker::new("virtio-balloon", shared.clone()),
            shared,
        }
    }
}

impl VirtioDevice for Balloon {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.shared.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        let mut actual = self.shared.actual.load(Ordering::SeqCst).to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            let at = offset.checked_add(i as u64).and_then(|a| a.checked_sub(4));
            if let Some(slot) = at.and_then(|a| usize::try_from(a).ok()) {
                if let Some(dst) = actual.get_mut(slot) {
                    *dst = *b;
                }
            }
        }
        self.shared
            .actual
            .store(u32::from_le_bytes(actual), Ordering::SeqCst);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let roles = Roles::for_features(ctx.acked_features);
        // Before the worker runs: a target set from now on reaches the driver.
        *self.shared.irq.lock().expect("balloon lock poisoned") = Some(ctx.interrupt.clone());
        let started = self.worker.start(ctx, |shared| BalloonWorker {
            shared,
            roles,
            held_stats: None,
        });
        if started.is_err() {
            *self.shared.irq.lock().expect("balloon lock poisoned") = None;
        }
        started
    }

    fn reset(&mut self) {
        *self.shared.irq.lock().expect("balloon lock poisoned") = None;
        self.worker.stop();
        self.shared.actual.store(0, Ordering::SeqCst);
    }
}

/// Which queue index serves what. Linux numbers the queues of the features it accepted one
/// after the other (inflate 0, deflate 1, then stats and reporting if accepted), so the
/// indices depend on the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The stats queue.
    pub stats: Option<usize>,
    /// The free page reporting queue.
    pub reporting: Option<usize>,
}

impl Roles {
    /// The queue layout for the features the driver accepted.
    pub fn for_features(acked: u64) -> Roles {
        let mut next = 2;
        let mut take = |on: bool| {
            on.then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(acked & STATS_VQ != 0);
        let reporting = take(acked & REPORTING != 0);
        Roles { stats, reporting }
    }
}

/// The worker: serves the queues, and returns the stats buffer when the timer or a request
/// asks for fresh statistics.
pub struct BalloonWorker {
    shared: Arc<BalloonShared>,
    roles: Roles,
    /// The stats buffer the guest left with the device, returned to ask for fresh numbers.
    held_stats: Option<u16>,
}

const INFLATE: usize = 0;
const DEFLATE: usize = 1;
/// Worker sources: the stats timer (if any) and the request eventfd.
const SRC_KICK: usize = 0;
const SRC_TIMER: usize = 1;

impl QueueHandler for BalloonWorker {
    type Backend = Arc<BalloonShared>;
    const QUEUES: usize = 4;
    const THREAD: sandbox::ThreadKind = sandbox::ThreadKind::Balloon;

    fn sources(&self) -> Vec<RawFd> {
        let mut s = vec![self.shared.kick.as_raw_fd()];
        s.extend(self.shared.timer.as_ref().map(|t| t.as_raw_fd()));
        s
    }

    fn serve(&mut self, wake: &Wakeup, io: &mut WorkerIo) {
        let shared = self.shared.clone();
        if wake.queue(INFLATE) {
            io.serve_queue(INFLATE, |q, mem| process_inflate(q, mem, &shared));
        }
        if wake.queue(DEFLATE) {
            io.serve_queue(DEFLATE, |q, mem| process_deflate(q, mem, &shared));
        }
        if let Some(r) = self.roles.reporting.filter(|&r| wake.queue(r)) {
            io.serve_queue(r, |q, mem| process_reports(q, mem, &shared));
        }
        let Some(s) = self.roles.stats else {
            // Nothing to ask for: just consume the wakeups.
            drain_fd(wake, SRC_KICK, shared.kick.as_raw_fd());
            if let Some(t) = &shared.timer {
                drain_fd(wake, SRC_TIMER, t.as_raw_fd());
            }
            return;
        };
        if wake.queue(s) {
            let held = &mut self.held_stats;
            io.serve_queue(s, |q, mem| take_stats(q, mem, &shared, held));
        }
        let kicked = drain_fd(wake, SRC_KICK, shared.kick.as_raw_fd());
        let ticked = shared
            .timer
            .as_ref()
            .is_some_and(|t| drain_fd(wake, SRC_TIMER, t.as_raw_fd()));
        if kicked || ticked {
            let held = &mut self.held_stats;
            io.serve_queue(s, |q, mem| return_stats_buffer(q, mem, held));
        }
    }

    fn into_backend(self) -> Arc<BalloonShared> {
        self.shared
    }
}

/// Reads a readable eventfd or timerfd source (non-blocking); whether it had fired.
fn drain_fd(wake: &Wakeup, source: usize, fd: RawFd) -> bool {
    if !wake.source(source) {
        return false;
    }
    let mut buf = [0u8; 8];
    // SAFETY: reads 8 bytes into a live 8-byte buffer from a descriptor the shared state owns.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    n == 8
}

/// Copies up to `max` device-readable bytes of `chain` (stops at the first buffer outside
/// guest memory).
fn readable_bytes(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    max: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    for d in chain.filter(|d| !d.is_write_only()) {
        let want = (d.len() as usize).min(max - out.len());
        let start = out.len();
        out.resize(start + want, 0);
        if mem.read_slice(&mut out[start..], d.addr()).is_err() {
            out.truncate(start);
            break;
        }
        if out.len() == max {
            break;
        }
    }
    out
}

/// The host page size (guest memory is mapped with it).
fn host_page() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// Releases guest memory `[addr, addr + len)` to the host: the part of it made of whole host
/// pages, region by region. Returns the bytes released, or None if any part of the range lies
/// outside guest memory (then nothing is released).
pub fn release_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let end = addr.checked_add(len)?;
    let page = host_page();
    // Check the whole range first: a half-valid range is refused as a whole.
    let mut at = addr;
    let mut pieces = Vec::new();
    while at < end {
        let region = mem.find_region(GuestAddress(at))?;
        let region_end = region.start_addr().0.checked_add(region.len())?;
        let piece_end = end.min(region_end);
        let offset = at - region.start_addr().0;
        let base = region.get_host_address(MemoryRegionAddress(0)).ok()? as u64;
        pieces.push((base + offset, base + offset + (piece_end - at)));
        at = piece_end;
    }
    let mut released = 0;
    for (start, stop) in pieces {
        // Inward to whole host pages: never drop a byte the guest did not name.
        let s = start.next_multiple_of(page);
        let e = stop & !(page - 1);
        if e <= s {
            continue;
        }
        // SAFETY: [s, e) lies within a live mapping of guest memory (checked above), and
        // MADV_DONTNEED on an anonymous private mapping only replaces its contents with
        // zero pages: nothing of the host's is touched, only guest data the guest gave up.
        let r = unsafe {
            libc::madvise(
                s as *mut libc::c_void,
                (e - s) as usize,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            released += e - s;
        }
    }
    Some(released)
}

/// Inflate: release every page the guest put into the balloon.
pub fn process_inflate(queue: &mut Queue, mem: &GuestMemoryMmap, shared: &BalloonShared) -> bool {
    super::drain_queue(queue, mem, |chain| {
        let bytes = readable_bytes(mem, chain, MAX_PFNS * 4);
        let pfns = bytes
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        // Runs of consecutive frames go in one call.
        let mut run: Option<(u64, u64)> = None;
        let flush = |r: (u64, u64)| {
            let (first, count) = r;
            match release_range(mem, first << PFN_SHIFT, count << PFN_SHIFT) {
                Some(_) => shared.inflated.fetch_add(count, Ordering::Relaxed),
                None => shared.rejected.fetch_add(count, Ordering::Relaxed),
            };
        };
        for pfn in pfns {
            run = match run {
                Some((first, n)) if first + n == pfn => Some((first, n + 1)),
                Some(r) => {
                    flush(r);
                    Some((pfn, 1))
                }
                None => Some((pfn, 1)),
            };
        }
        if let Some(r) = run {
            flush(r);
        }
        0
    })
}

/// Deflate: the guest takes pages back. Nothing to do on the host (without MUST_TELL_HOST the
/// guest may already use them; they fault in zeroed); only counted.
pub fn process_deflate(queue: &mut Queue, mem: &GuestMemoryMmap, shared: &BalloonShared) -> bool {
    super::drain_queue(queue, mem, |chain| {
        let n = readable_bytes(mem, chain, MAX_PFNS * 4).len() / 4;
        shared.deflated.fetch_add(n as u64, Ordering::Relaxed);
        0
    })
}

/// Free page reporting: every buffer of a report is a free range of guest memory.
pub fn process_reports(queue: &mut Queue, mem: &GuestMemoryMmap, shared: &BalloonShared) -> bool {
    super::drain_queue(queue, mem, |chain| {
        let mut released = 0;
        for d in chain {
            match release_range(mem, d.addr().0, u64::from(d.len())) {
                Some(n) => released += n,
                None => {
                    shared.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        shared.reports.fetch_add(1, Ordering::Relaxed);
        shared.reported_bytes.fetch_add(released, Ordering::Relaxed);
        0
    })
}

/// Stats queue: records the statistics in each buffer and keeps the last buffer (returning
/// any older one, which a well-behaved driver never sends). Returns whether to interrupt.
pub fn take_stats(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    shared: &BalloonShared,
    held: &mut Option<u16>,
) -> bool {
    let mut used = false;
    // The queue size bounds the chains one pass can pop.
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        if head >= queue.size() {
            // A head the used ring cannot name: the chain can never be answered, and the
            // ring is broken (as drain_queue, stop there).
            break;
        }
        let bytes = readable_bytes(mem, chain, MAX_STATS * 10);
        let mut stats = shared.stats.lock().expect("balloon lock poisoned");
        for entry in bytes.chunks_exact(10) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let val = u64::from_le_bytes(entry[2..10].try_into().expect("10-byte entry"));
            if let Some(slot) = stats.values.get_mut(usize::from(tag)) {
                *slot = Some(val);
            }
        }
        stats.updated = Some(Instant::now());
        drop(stats);
        if let Some(old) = held.replace(head) {
            if queue.add_used(mem, old, 0).is_err() {
                break;
            }
            used = true;
        }
    }
    used && queue.needs_notification(mem).unwrap_or(true)
}

/// Gives the held stats buffer back to the guest: its driver refills it with fresh numbers.
pub fn return_stats_buffer(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    held: &mut Option<u16>,
) -> bool {
    match held.take() {
        Some(head) => {
            queue.add_used(mem, head, 0).is_ok() && queue.needs_notification(mem).unwrap_or(true)
        }
        None => false,
    }
}
