//! Power loss: a guest-like workload runs against a qcow2 overlay while an observer records,
//! in order, every write, write-zeroes and fsync berth's block layer sends to the image file
//! (imago's metadata and data writes and berth's own dirty-bit and refcount writes alike).
//! Then, for many cut points, the image is rebuilt from its initial bytes plus the recorded
//! writes up to the cut: everything up to the last fsync before the cut in order, and the
//! writes after it as a random subset in a random order (a disk may reorder or drop anything
//! not yet fsynced). Each such image must
//!
//! * open for writing in berth (repaired if needed) and pass `qemu-img check` afterwards
//!   (leaks allowed, corruption not);
//! * hold, in every sector, what the last operation acknowledged by a completed flush put
//!   there, or what a later operation put there (as `qemu-img convert` reads it, and as berth
//!   reads it);
//! * take new writes after the cut (new clusters, new L2 tables), flush, close, and still pass
//!   `qemu-img check` with the new data readable.
//!
//! Two layouts: the pet's own (64 KiB clusters on a 4 GiB sparse raw base, writes spread
//! over several L2 tables) and 512-byte clusters, where a few MiB of writes need many L2
//! tables, many refcount blocks and a growing refcount table. Each also runs with four
//! threads at once (as virtio-blk's request pool does): each thread owns every fourth 4 KiB
//! block, so the threads share clusters, L2 tables and refcount blocks but never a sector, and
//! a flush makes durable what had completed, on any thread, when it was called.

mod block_util;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use block_util::{
    qemu_img, qemu_img_check, qemu_img_overlay_clusters, read_vectored, s, shm_tempdir,
    write_vectored,
};
use common::Rng;
use vmm::block::qcow2::{IoObserver, Qcow2Disk, Qcow2Options};
use vmm::block::BlockBackend;

const SECTOR: usize = 512;

/// One change to the image file, or a marker from the workload.
#[derive(Clone, Debug)]
enum Ev {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Sync,
    /// `flush()` returned after operation `n - 1`: operations `< n` are durable once the
    /// fsync at index `sync` is.
    Flushed {
        n: u64,
        sync: usize,
    },
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Ev>>);

impl IoObserver for Recorder {
    fn write(&self, offset: u64, data: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push(Ev::Write(offset, data.to_vec()));
    }
    fn zero(&self, offset: u64, len: u64) {
        self.0.lock().unwrap().push(Ev::Zero(offset, len));
    }
    fn sync(&self) {
        self.0.lock().unwrap().push(Ev::Sync);
    }
}

impl Recorder {
    fn flushed(&self, n: u64) {
        let mut log = self.0.lock().unwrap();
        let sync = log.iter().rposition(|e| matches!(e, Ev::Sync)).unwrap();
        log.push(Ev::Flushed { n, sync });
    }
}

/// A sector's content: from the base, zeroes, or what operation `seq` wrote.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Content {
    Base,
    Zero,
    Written(u64),
}

fn sector_data(seq: u64, sector: u64) -> [u8; SECTOR] {
    let mut s = [((seq * 131 + sector * 7) % 251 + 1) as u8; SECTOR];
    s[..8].copy_from_slice(&seq.to_le_bytes());
    s[8..16].copy_from_slice(&sector.to_le_bytes());
    s
}

fn base_sector(sector: u64) -> [u8; SECTOR] {
    let mut s = [0xb5u8; SECTOR];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s
}

fn expected(c: Content, sector: u64) -> [u8; SECTOR] {
    match c {
        Content::Base => base_sector(sector),
        Content::Zero => [0; SECTOR],
        Content::Written(seq) => sector_data(seq, sector),
    }
}

struct Layout {
    name: &'static str,
    /// Virtual size.
    size: u64,
    cluster_size: u32,
    /// Operations spread over this many equally spaced regions of this many bytes each.
    regions: u64,
    region_len: u64,
    ops: u64,
    flush_every: u64,
    cuts: usize,
    /// Threads running the workload at once (1: the sequential workload).
    threads: u64,
}

/// Per sector (only those the workload touches): the operations that wrote it, in order.
type History = std::collections::HashMap<u64, Vec<(u64, Content)>>;

fn run_layout(l: &Layout, seed: u64) {
    // Each cut rewrites and fsyncs the image several times: on tmpfs that costs memory
    // copies, not disk writes.
    let dir = shm_tempdir();
    // BERTH_POWERCUT_KEEP=1 keeps the directory (base, images, log.txt) for a post-mortem.
    let keep = std::env::var_os("BERTH_POWERCUT_KEEP").is_some();
    let d = dir.path().to_path_buf();
    let d = d.as_path();
    if keep {
        eprintln!("keeping {}", d.display());
        std::mem::forget(dir);
    }
    let base = d.join("base.raw");
    // The base's sectors that the workload's regions cover carry a pattern; the rest of the
    // sparse file reads as zeroes and is never looked at.
    let f = std::fs::File::create(&base).unwrap();
    f.set_len(l.size).unwrap();
    let stride = (l.size / l.regions) & !((1 << 20) - 1);
    for r in 0..l.regions {
        let start = r * stride;
        let data: Vec<u8> = (start / 512..(start + l.region_len) / 512)
            .flat_map(base_sector)
            .collect();
        std::os::unix::fs::FileExt::write_all_at(&f, &data, start).unwrap();
    }
    drop(f);
    let over = d.join("pet.qcow2");
    qemu_img_overlay_clusters(&base, "raw", &over, l.cluster_size);
    let image0 = std::fs::read(&over).unwrap();

    // The workload, recorded.
    let rec = Arc::new(Recorder::default());
    let mut history = History::new();
    // BERTH_POWERCUT_SEED=N runs another workload and other cuts (for long hunts).
    let seed = std::env::var("BERTH_POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(seed);
    let mut rng = Rng(seed | 1);
    if l.threads > 1 {
        concurrent_workload(l, &over, &rec, &mut history, stride, seed);
    } else {
        let opts = Qcow2Options {
            read_only: false,
            confine_backing: false,
            observer: Some(rec.clone()),
        };
        let disk = Qcow2Disk::open_with(&over, &opts).unwrap();
        for seq in 0..l.ops {
            let region = rng.below(l.regions);
            let kind = rng.below(12);
            // Writes up to 24 KiB; write-zeroes and discards up to 256 KiB, so that they
            // span several L2 tables of the small layout, some of which do not exist yet.
            let count = 1 + rng.below(if kind < 2 { 512 } else { 48 });
            let sector = (region * stride + rng.below(l.region_len - count * 512)) / 512;
            let (off, len) = (sector * 512, count * 512);
            let content = match kind {
                0 => {
                    disk.write_zeroes(off, len, true).unwrap();
                    Content::Zero
                }
                1 => {
                    disk.write_zeroes(off, len, false).unwrap();
                    Content::Zero
                }
                _ => {
                    let data: Vec<u8> = (sector..sector + count)
                        .flat_map(|s| sector_data(seq, s))
                        .collect();
                    // Half straight from guest memory (the virtio-blk engine's path).
                    if kind.is_multiple_of(2) {
                        disk.write_at(&data, off).unwrap();
                    } else {
                        write_vectored(&disk, &data, off);
                    }
                    Content::Written(seq)
                }
            };
            for s in sector..sector + count {
                history.entry(s).or_default().push((seq, content));
            }
            if (seq + 1) % l.flush_every == 0 {
                disk.flush().unwrap();
                rec.flushed(seq + 1);
            }
        }
    } // closed cleanly: flush, fsync, dirty bit cleared
    let log = rec.0.lock().unwrap().clone();
    if keep {
        let text: String = log
            .iter()
            .enumerate()
            .map(|(i, e)| match e {
                Ev::Write(o, data) => format!(
                    "{i} W {o:#x} {} {:02x?}\n",
                    data.len(),
                    &data[..data.len().min(24)]
                ),
                Ev::Zero(o, n) => format!("{i} Z {o:#x} {n}\n"),
                Ev::Sync => format!("{i} S\n"),
                Ev::Flushed { n, sync } => format!("{i} F {n} {sync}\n"),
            })
            .collect();
        std::fs::write(d.join("log.txt"), text).unwrap();
    }
    let syncs = log.iter().filter(|e| matches!(e, Ev::Sync)).count();
    let writes = log.iter().filter(|e| matches!(e, Ev::Write(..))).count();
    eprintln!(
        "{}: {} operations gave {writes} writes and {syncs} fsyncs to the image file",
        l.name, l.ops
    );

    // Cut points: every fsync (just before and after it), the very start, the end, and
    // random places between.
    // BERTH_POWERCUT_CUTS=N replays N cut points instead (for long hunts).
    let want: usize = std::env::var("BERTH_POWERCUT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(l.cuts);
    let at_syncs: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Ev::Sync))
        .flat_map(|(i, _)| [i, i + 1])
        .collect();
    let mut cuts: Vec<usize> = vec![0, 1, 2, log.len()];
    // Half at fsyncs (just before and just after one), half anywhere.
    while cuts.len() < want / 2 {
        cuts.push(at_syncs[rng.below_usize(at_syncs.len())]);
    }
    while cuts.len() < want {
        cuts.push(rng.below_usize(log.len() + 1));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut repaired = 0;
    let started = Instant::now();
    for (k, &cut) in cuts.iter().enumerate() {
        let img = replay(&image0, &log, cut, &mut rng);
        std::fs::write(&over, &img).unwrap();
        let durable = log[..cut]
            .iter()
            .filter_map(|e| match e {
                Ev::Flushed { n, sync } if *sync < cut => Some(*n),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // The image as the cut left it, kept for a look when a check fails.
        let kept = d.join(format!("cut-{cut}.qcow2"));
        if keep {
            std::fs::write(&kept, &img).unwrap();
        }
        let what = format!(
            "{} seed {seed} cut {cut}/{} (durable ops < {durable}; the image as cut: {})",
            l.name,
            log.len(),
            kept.display()
        );
        // Open for writing: repairs whatever the cut left.
        let mut disk = Qcow2Disk::open(&over, false).unwrap_or_else(|e| panic!("{what}: {e}"));
        repaired += disk.take_notes().len();
        let mut got = vec![0u8; l.size as usize];
        for r in 0..l.regions {
            let at = (r * stride) as usize;
            let region = &mut got[at..at + l.region_len as usize];
            if r.is_multiple_of(2) {
                disk.read_at(region, at as u64).unwrap();
            } else {
                read_vectored(&disk, region, at as u64);
            }
        }
        drop(disk);
        let (code, report) = qemu_img_check(&over);
        assert!(
            code == 0 || code == 3,
            "{what}: corruption after repair:\n{report}"
        );
        verify(&got, &history, durable, &what);
        // QEMU reads the same (every fourth cut: it costs a qemu-img run per region).
        if k % 4 == 0 {
            let mut raw = vec![0u8; l.size as usize];
            for r in 0..l.regions {
                let at = r * stride;
                let out = d.join("region.raw");
                // The raw driver's offset/size window over the qcow2 image.
                let opts = format!(
                    "driver=raw,offset={at},size={},file.driver=qcow2,file.file.driver=file,\
                     file.file.filename={}",
                    l.region_len,
                    s(&over)
                );
                qemu_img(&["convert", "-U", "--image-opts", &opts, "-O", "raw", s(&out)]);
                let bytes = std::fs::read(&out).unwrap();
                std::fs::remove_file(&out).unwrap();
                raw[at as usize..(at + l.region_len) as usize].copy_from_slice(&bytes);
            }
            verify(
                &raw,
                &history,
                durable,
                &format!("{what} (as qemu-img reads it)"),
            );
        }
        // The repaired image takes new writes: new clusters, new L2 tables.
        let disk = Qcow2Disk::open(&over, false).unwrap();
        let fresh: Vec<(u64, Vec<u8>)> = (0..8)
            .map(|i| {
                let off = (rng.below(l.size / 512 - 64)) * 512;
                (off, vec![0xe0 + i as u8; 16 * 1024])
            })
            .collect();
        for (off, data) in &fresh {
            disk.write_at(data, *off).unwrap();
        }
        disk.flush().unwrap();
        drop(disk);
        let (code, report) = qemu_img_check(&over);
        assert!(
            code == 0 || code == 3,
            "{what}: corruption after new writes:\n{report}"
        );
        let disk = Qcow2Disk::open(&over, true).unwrap();
        // Later fresh writes may overlap earlier ones: check against the last writer.
        let mut want = std::collections::BTreeMap::new();
        for (off, data) in &fresh {
            for s in 0..data.len() as u64 / 512 {
                want.insert(off / 512 + s, data[0]);
            }
        }
        let mut buf = [0u8; SECTOR];
        for (&s, &b) in &want {
            disk.read_at(&mut buf, s * 512).unwrap();
            assert!(
                buf.iter().all(|&x| x == b),
                "{what}: new write lost at sector {s}"
            );
        }
    }
    eprintln!(
        "{}: {} cut points replayed in {:.1} s, {repaired} images repaired on open, all consistent",
        l.name,
        cuts.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The workload on `l.threads` threads. Thread t owns the 4 KiB blocks b with b % threads ==
/// t and does single-block writes and write-zeroes (1 to 8 sectors) in them, flushing every
/// `flush_every` of its operations. History entries are numbered by completion (per sector
/// that is program order: one thread owns it); a flush that starts when n operations have
/// completed makes operations < n durable.
fn concurrent_workload(
    l: &Layout,
    over: &std::path::Path,
    rec: &Arc<Recorder>,
    history: &mut History,
    stride: u64,
    seed: u64,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let opts = Qcow2Options {
        read_only: false,
        confine_backing: false,
        observer: Some(rec.clone()),
    };
    let disk = Qcow2Disk::open_with(over, &opts).unwrap();
    let (ids, completed) = (AtomicU64::new(0), AtomicU64::new(0));
    let per_thread = l.ops / l.threads;
    let blocks_per_region = l.region_len / 4096;
    let parts: Vec<History> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..l.threads)
            .map(|t| {
                let (disk, ids, completed) = (&disk, &ids, &completed);
                s.spawn(move || {
                    let mut rng = Rng((seed ^ (t + 1).wrapping_mul(0x9e37_79b9)) | 1);
                    let mut mine = History::new();
                    for k in 0..per_thread {
                        let region = rng.below(l.regions);
                        let block = rng.below(blocks_per_region / l.threads) * l.threads + t;
                        let first = rng.below(8);
                        let count = 1 + rng.below(8 - first);
                        let sector = (region * stride + block * 4096) / 512 + first;
                        let (off, len) = (sector * 512, count * 512);
                        let id = ids.fetch_add(1, Ordering::SeqCst);
                        let content = match rng.below(12) {
                            0 => {
                                disk.write_zeroes(off, len, true).unwrap();
                                Content::Zero
                            }
                            1 => {
                                disk.write_zeroes(off, len, false).unwrap();
                                Content::Zero
                            }
                            _ => {
                                let data: Vec<u8> = (sector..sector + count)
                                    .flat_map(|s| sector_data(id, s))
                                    .collect();
                                if id.is_multiple_of(2) {
                                    disk.write_at(&data, off).unwrap();
                                } else {
                                    write_vectored(disk, &data, off);
                                }
                                Content::Written(id)
                            }
                        };
                        let done = completed.fetch_add(1, Ordering::SeqCst);
                        for s in sector..sector + count {
                            mine.entry(s).or_default().push((done, content));
                        }
                        if (k + 1) % l.flush_every == 0 {
                            let n = completed.load(Ordering::SeqCst);
                            disk.flush().unwrap();
                            rec.flushed(n);
                        }
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for part in parts {
        for (sector, ops) in part {
            assert!(
                history.insert(sector, ops).is_none(),
                "two threads wrote sector {sector}"
            );
        }
    }
    drop(disk); // closed cleanly: flush, fsync, dirty bit cleared
}

/// The image file as a power cut at `cut` may leave it: everything up to the last fsync
/// before the cut, then a random subset of the later writes in a random order.
fn replay(image0: &[u8], log: &[Ev], cut: usize, rng: &mut Rng) -> Vec<u8> {
    let mut img = image0.to_vec();
    let apply = |img: &mut Vec<u8>, e: &Ev| match e {
        Ev::Write(off, data) => {
            let end = *off as usize + data.len();
            if img.len() < end {
                img.resize(end, 0);
            }
            img[*off as usize..end].copy_from_slice(data);
        }
        Ev::Zero(off, len) => {
            let end = (*off + *len) as usize;
            if img.len() < end {
                img.resize(end, 0);
            }
            img[*off as usize..end].fill(0);
        }
        Ev::Sync | Ev::Flushed { .. } => {}
    };
    let barrier = log[..cut].iter().rposition(|e| matches!(e, Ev::Sync));
    let settled = barrier.map_or(0, |b| b + 1);
    for e in &log[..settled] {
        apply(&mut img, e);
    }
    let mut pending: Vec<&Ev> = log[settled..cut].iter().collect();
    // Fisher-Yates, then keep a random prefix.
    for i in (1..pending.len()).rev() {
        pending.swap(i, rng.below_usize(i + 1));
    }
    let keep = if pending.is_empty() {
        0
    } else {
        rng.below_usize(pending.len() + 1)
    };
    for e in &pending[..keep] {
        apply(&mut img, e);
    }
    img
}

/// Every sector the workload touched holds what it held after operation `durable - 1` or
/// what a later operation put there.
fn verify(img: &[u8], history: &History, durable: u64, what: &str) {
    for (&sector, writes) in history {
        let at = sector as usize * SECTOR;
        let got = &img[at..at + SECTOR];
        let settled = writes
            .iter()
            .rev()
            .find(|(seq, _)| *seq < durable)
            .map_or(Content::Base, |&(_, c)| c);
        let ok = std::iter::once(settled)
            .chain(
                writes
                    .iter()
                    .filter(|(seq, _)| *seq >= durable)
                    .map(|&(_, c)| c),
            )
            .any(|c| got == expected(c, sector));
        assert!(
            ok,
            "{what}: sector {sector} holds {:02x?}..., expected {settled:?} or a later write of {:?}",
            &got[..16],
            writes.iter().filter(|(seq, _)| *seq >= durable).collect::<Vec<_>>()
        );
    }
}

#[test]
fn power_cut_pet_layout() {
    let _serial = block_util::serial();
    run_layout(
        &Layout {
            name: "64 KiB clusters",
            size: 4 << 30,
            cluster_size: 64 * 1024,
            regions: 6,
            region_len: 1 << 20,
            ops: 240,
            flush_every: 12,
            cuts: 200,
            threads: 1,
        },
        0x9e37_79b9_7f4a_7c15,
    );
}

#[test]
fn power_cut_pet_layout_concurrent() {
    let _serial = block_util::serial();
    run_layout(
        &Layout {
            name: "64 KiB clusters, 4 threads",
            size: 4 << 30,
            cluster_size: 64 * 1024,
            regions: 6,
            region_len: 1 << 20,
            ops: 320,
            flush_every: 8,
            cuts: 160,
            threads: 4,
        },
        0x6a09_e667_f3bc_c909,
    );
}

#[test]
fn power_cut_small_clusters_concurrent() {
    let _serial = block_util::serial();
    run_layout(
        &Layout {
            name: "512-byte clusters, 4 threads",
            size: 64 << 20,
            cluster_size: 512,
            regions: 8,
            region_len: 1 << 20,
            ops: 400,
            flush_every: 8,
            cuts: 160,
            threads: 4,
        },
        0xbb67_ae85_84ca_a73b,
    );
}

#[test]
fn power_cut_small_clusters() {
    let _serial = block_util::serial();
    run_layout(
        &Layout {
            name: "512-byte clusters",
            size: 64 << 20,
            cluster_size: 512,
            regions: 8,
            region_len: 1 << 20,
            ops: 400,
            flush_every: 16,
            cuts: 200,
            threads: 1,
        },
        0x2545_f491_4f6c_dd1d,
    );
}
