//! Crash safety (SIGKILL of berth; the power-cut replay is `block_powercut.rs`): a child
//! process hammers a qcow2 overlay with random writes and write-zeroes, flushing every
//! `FLUSH_EVERY` operations and reporting each completed flush on stdout. The parent SIGKILLs
//! it at a random point (also before the first flush), then, as the next berth would, opens
//! the overlay for writing (which repairs what the kill left), checks that every operation
//! acknowledged by the last reported flush is present sector by sector, closes it and has
//! `qemu-img check` find no corruption; then writes new data into the repaired overlay (new
//! clusters, new L2 tables), and checks again.
//!
//! Two layouts: the pet's own (berth's overlay, 64 KiB clusters) and 512-byte clusters, where
//! a storm touches many L2 tables and refcount blocks.
//!
//! The child is this test binary itself, re-executed to run only `crash_child` with the image
//! named in `BERTH_CRASH_IMAGE`; without that variable `crash_child` does nothing.

mod block_util;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use block_util::{
    open, qcow2_base, qemu_img_check, qemu_img_overlay_clusters, shm_tempdir, to_raw,
};
use common::Rng;
use vmm::block::overlay::ensure_overlay;
use vmm::block::qcow2::Qcow2Disk;
use vmm::block::{BlockBackend, DiskFormat};

const SIZE: u64 = 32 << 20;
const SECTOR: usize = 512;
const SECTORS: u64 = SIZE / SECTOR as u64;
const FLUSH_EVERY: u64 = 8;

/// One operation of the storm; operation `seq` is the same in parent and child.
#[derive(Clone, Copy)]
struct Op {
    seq: u64,
    sector: u64,
    count: u64,
    /// `None` writes data; `Some(may_unmap)` writes zeroes.
    zero: Option<bool>,
}

fn ops(seed: u64) -> impl Iterator<Item = Op> {
    let mut rng = Rng(seed | 1);
    (0..).map(move |seq| {
        // Up to 64 KiB, so many operations straddle clusters.
        let count = 1 + rng.below(128);
        let sector = rng.below(SECTORS - count);
        let zero = (rng.below(10) == 0).then(|| rng.below(2) == 0);
        Op {
            seq,
            sector,
            count,
            zero,
        }
    })
}

/// What operation `seq` writes to `sector`: a header naming both, then a fill byte.
fn sector_data(seq: u64, sector: u64) -> [u8; SECTOR] {
    let mut s = [((seq * 131 + sector * 7) % 251 + 1) as u8; SECTOR];
    s[..8].copy_from_slice(&seq.to_le_bytes());
    s[8..16].copy_from_slice(&sector.to_le_bytes());
    s
}

#[test]
fn crash_child() {
    let Ok(image) = std::env::var("BERTH_CRASH_IMAGE") else {
        return;
    };
    let seed: u64 = std::env::var("BERTH_CRASH_SEED").unwrap().parse().unwrap();
    let disk = open(Path::new(&image), DiskFormat::Qcow2, false);
    let mut out = std::io::stdout().lock();
    // libtest has printed "test crash_child ... " without a newline: markers end lines.
    writeln!(out, "OPENED").unwrap();
    out.flush().unwrap();
    for op in ops(seed).take(1_000_000) {
        let (off, len) = (op.sector * SECTOR as u64, op.count * SECTOR as u64);
        match op.zero {
            Some(may_unmap) => disk.write_zeroes(off, len, may_unmap).unwrap(),
            None => {
                let data: Vec<u8> = (op.sector..op.sector + op.count)
                    .flat_map(|s| sector_data(op.seq, s))
                    .collect();
                // Half straight from guest memory (the virtio-blk engine's path).
                if op.seq.is_multiple_of(2) {
                    disk.write_at(&data, off).unwrap();
                } else {
                    block_util::write_vectored(disk.as_ref(), &data, off);
                }
            }
        }
        if (op.seq + 1) % FLUSH_EVERY == 0 {
            disk.flush().unwrap();
            // Everything before operation seq + 1 is now durable.
            writeln!(out, "F {}", op.seq + 1).unwrap();
            out.flush().unwrap();
        }
    }
}

/// The contents a sector may legally have after the crash.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Content {
    Base,
    Zero,
    Written(u64),
}

/// Kills `iterations` storms on overlays made by `make_overlay`, each at a random point.
fn storms(name: &str, iterations: u64, make_overlay: impl Fn(&Path, &Path)) {
    let dir = shm_tempdir();
    let d = dir.path();
    let base = qcow2_base(d, SIZE);
    let base_data = to_raw(&base, "qcow2", d);
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let (mut total_flushes, mut repaired, mut before_first_flush) = (0, 0, 0);
    for iter in 0..iterations {
        let over = d.join(format!("pet{iter}.qcow2"));
        make_overlay(&base, &over);
        let seed = 0x5eed_0000 + iter * 7919 + name.len() as u64;
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("BERTH_CRASH_IMAGE", &over)
            .env("BERTH_CRASH_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut rng = Rng(seed * 3);
        // 0: killed before its first flush completes.
        let kill_after = rng.below(6);
        let (mut flushed, mut seen) = (0u64, 0);
        let mut killed = false;
        for line in lines {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("F ") {
                flushed = n.parse().unwrap();
                seen += 1;
            } else if !line.ends_with("OPENED") {
                continue;
            }
            if !killed && seen == kill_after {
                std::thread::sleep(Duration::from_micros(rng.below(5_000)));
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(
            killed,
            "{name} iteration {iter}: child ended by itself: {status}"
        );
        total_flushes += seen;
        before_first_flush += (seen == 0) as u32;

        // The next berth opens it for writing: whatever the kill left is repaired first.
        let what = format!("{name} iteration {iter} (seed {seed}, {seen} flushes)");
        let mut disk = Qcow2Disk::open(&over, false).unwrap_or_else(|e| panic!("{what}: {e}"));
        repaired += disk.take_notes().len();
        let mut got = vec![0u8; SIZE as usize];
        disk.read_at(&mut got, 0).unwrap();
        drop(disk);
        let (code, report) = qemu_img_check(&over);
        assert!(code == 0 || code == 3, "{what}: corruption:\n{report}");
        verify(&got, &base_data, seed, flushed, &what);
        if iter % 8 == 0 {
            let raw = to_raw(&over, "qcow2", d);
            verify(
                &raw,
                &base_data,
                seed,
                flushed,
                &format!("{what}, as qemu-img reads it"),
            );
        }
        reopen_and_write(&over, &mut rng, &what);
        std::fs::remove_file(&over).unwrap();
    }
    eprintln!(
        "crash test, {name}: {iterations} SIGKILLs ({before_first_flush} before the first \
         flush), {total_flushes} acknowledged flushes, {repaired} repairs on reopen, {:?}",
        started.elapsed()
    );
}

/// The repaired overlay takes new writes (new clusters, possibly new L2 tables), keeps them,
/// and stays clean.
fn reopen_and_write(over: &Path, rng: &mut Rng, what: &str) {
    let disk = Qcow2Disk::open(over, false).unwrap();
    let writes: Vec<(u64, u8)> = (0..6)
        .map(|i| (rng.below(SECTORS - 64) * SECTOR as u64, 0xd0 + i))
        .collect();
    for &(off, b) in &writes {
        disk.write_at(&[b; 32 * 1024], off).unwrap();
    }
    disk.flush().unwrap();
    drop(disk);
    let (code, report) = qemu_img_check(over);
    assert!(
        code == 0 || code == 3,
        "{what}: corruption after new writes:\n{report}"
    );
    let disk = Qcow2Disk::open(over, true).unwrap();
    let mut want = std::collections::BTreeMap::new();
    for &(off, b) in &writes {
        for s in 0..64 {
            want.insert(off / SECTOR as u64 + s, b);
        }
    }
    let mut buf = [0u8; SECTOR];
    for (&s, &b) in &want {
        disk.read_at(&mut buf, s * SECTOR as u64).unwrap();
        assert!(
            buf.iter().all(|&x| x == b),
            "{what}: new write lost at sector {s}"
        );
    }
}

#[test]
fn sigkill_mid_storm_loses_no_flushed_write() {
    let _serial = block_util::serial();
    storms("64 KiB clusters", 160, |base, over| {
        ensure_overlay(base, over, None).unwrap();
    });
}

#[test]
fn sigkill_mid_storm_small_clusters() {
    let _serial = block_util::serial();
    storms("512-byte clusters", 100, |base, over| {
        qemu_img_overlay_clusters(base, "qcow2", over, 512);
    });
}

/// The review's case, step by step: a fresh overlay on a raw base, 4 KiB written, berth
/// killed before any flush; the next berth writes 64 KiB elsewhere and flushes. Without the
/// repair on open, the allocator handed out the cluster of the live L2 table again
/// (`refcount=1 reference=2`) and flushed data read back as zeroes.
#[test]
fn killed_before_first_flush_then_reused() {
    let _serial = block_util::serial();
    let dir = shm_tempdir();
    let d = dir.path();
    let base = d.join("base.raw");
    std::fs::write(&base, vec![0x11u8; 8 << 20]).unwrap();
    let over = d.join("pet.qcow2");
    ensure_overlay(&base, &over, Some(DiskFormat::Raw)).unwrap();
    // The child: write 4 KiB, say so, and wait to be killed.
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args(["kill_victim", "--exact", "--nocapture", "--test-threads=1"])
        .env("BERTH_VICTIM_IMAGE", &over)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.ends_with("WRITTEN") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let mut disk = Qcow2Disk::open(&over, false).unwrap();
    let notes = disk.take_notes();
    assert!(
        notes.len() == 1 && notes[0].contains("not closed cleanly"),
        "{notes:?}"
    );
    disk.write_at(&[0x77; 64 * 1024], 4 << 20).unwrap();
    disk.flush().unwrap();
    drop(disk);
    let (code, report) = qemu_img_check(&over);
    assert_eq!(code, 0, "{report}");
    let raw = to_raw(&over, "qcow2", d);
    assert!(raw[4 << 20..(4 << 20) + 65536].iter().all(|&b| b == 0x77));
    // The unflushed 4 KiB may or may not have survived; the rest is the base.
    assert!(raw[4096..4 << 20].iter().all(|&b| b == 0x11));
}

#[test]
fn kill_victim() {
    let Ok(image) = std::env::var("BERTH_VICTIM_IMAGE") else {
        return;
    };
    let disk = open(Path::new(&image), DiskFormat::Qcow2, false);
    disk.write_at(&[0x55; 4096], 0).unwrap();
    println!("WRITTEN");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Checks every sector of `image` against the operations: those before `flushed` must show,
/// those after may or may not.
fn verify(image: &[u8], base: &[u8], seed: u64, flushed: u64, what: &str) {
    let mut stable = vec![Content::Base; SECTORS as usize];
    let mut maybe: Vec<Vec<Content>> = vec![Vec::new(); SECTORS as usize];
    for op in ops(seed).take((flushed + FLUSH_EVERY) as usize) {
        for s in op.sector..op.sector + op.count {
            let c = match op.zero {
                Some(_) => Content::Zero,
                None => Content::Written(op.seq),
            };
            if op.seq < flushed {
                stable[s as usize] = c;
            } else {
                maybe[s as usize].push(c);
            }
        }
    }
    for s in 0..SECTORS as usize {
        let got = &image[s * SECTOR..(s + 1) * SECTOR];
        let is = |c: &Content| match *c {
            Content::Base => got == &base[s * SECTOR..(s + 1) * SECTOR],
            Content::Zero => got.iter().all(|&b| b == 0),
            Content::Written(seq) => got == sector_data(seq, s as u64),
        };
        assert!(
            is(&stable[s]) || maybe[s].iter().any(is),
            "{what}: sector {s} lost {:?} (flushed through op {flushed}); \
             later candidates {:?}; starts {:02x?}",
            stable[s],
            maybe[s],
            &got[..16]
        );
    }
}
