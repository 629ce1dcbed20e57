//! Crash safety: a child process hammers a qcow2 overlay with random writes and write-zeroes,
//! flushing every `FLUSH_EVERY` operations and reporting each completed flush on stdout. The
//! parent SIGKILLs it mid-storm, then checks with qemu-img that the image has no corruption
//! (leaked clusters are acceptable) and that every operation acknowledged by the last
//! reported flush is present, sector by sector, with its data.
//!
//! The child is this test binary itself, re-executed to run only `crash_child` with the image
//! named in `BERTH_CRASH_IMAGE`; without that variable `crash_child` does nothing.

mod block_util;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use block_util::{open, qcow2_base, qemu_img_check, to_raw};
use common::Rng;
use vmm::block::overlay::ensure_overlay;
use vmm::block::DiskFormat;

const SIZE: u64 = 32 << 20;
const SECTOR: usize = 512;
const SECTORS: u64 = SIZE / SECTOR as u64;
const FLUSH_EVERY: u64 = 16;
const ITERATIONS: u64 = 20;

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
        // Up to 128 KiB, so many operations straddle 64 KiB clusters.
        let count = 1 + rng.below(256);
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
    let mut disk = open(Path::new(&image), DiskFormat::Qcow2, false);
    let mut out = std::io::stdout().lock();
    for op in ops(seed).take(1_000_000) {
        let (off, len) = (op.sector * SECTOR as u64, op.count * SECTOR as u64);
        match op.zero {
            Some(may_unmap) => disk.write_zeroes(off, len, may_unmap).unwrap(),
            None => {
                let data: Vec<u8> = (op.sector..op.sector + op.count)
                    .flat_map(|s| sector_data(op.seq, s))
                    .collect();
                disk.write_at(&data, off).unwrap();
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

#[test]
fn sigkill_mid_storm_loses_no_flushed_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = qcow2_base(d, SIZE);
    let base_data = to_raw(&base, "qcow2", d);
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let (mut total_flushes, mut leaky) = (0, 0);
    for iter in 0..ITERATIONS {
        let over = d.join(format!("pet{iter}.qcow2"));
        ensure_overlay(&base, &over, None).unwrap();
        let seed = 0x5eed_0000 + iter;
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("BERTH_CRASH_IMAGE", &over)
            .env("BERTH_CRASH_SEED", seed.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut rng = Rng(seed * 3);
        let kill_after = 1 + rng.below(24);
        let (mut flushed, mut seen) = (0u64, 0);
        let mut killed = false;
        for line in lines {
            let Some(n) = line.unwrap().strip_prefix("F ").map(|n| n.parse().unwrap()) else {
                continue;
            };
            flushed = n;
            seen += 1;
            if seen == kill_after {
                std::thread::sleep(Duration::from_micros(rng.below(20_000)));
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "iteration {iter}: child ended by itself: {status}");
        total_flushes += seen;

        let (code, report) = qemu_img_check(&over);
        assert!(
            code == 0 || code == 3,
            "iteration {iter}: corruption:\n{report}"
        );
        leaky += (code == 3) as u32;
        verify(&to_raw(&over, "qcow2", d), &base_data, seed, flushed, iter);
        std::fs::remove_file(&over).unwrap();
    }
    eprintln!(
        "crash test: {ITERATIONS} SIGKILLs, {total_flushes} acknowledged flushes, \
         {leaky} images with leaked clusters, {:?}",
        started.elapsed()
    );
}

/// Checks every sector of `image` against the operations: those before `flushed` must show,
/// those after may or may not.
fn verify(image: &[u8], base: &[u8], seed: u64, flushed: u64, iter: u64) {
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
            "iteration {iter}: sector {s} lost {:?} (flushed through op {flushed}); \
             later candidates {:?}; starts {:02x?}",
            stable[s],
            maybe[s],
            &got[..16]
        );
    }
}
