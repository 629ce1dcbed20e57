//! Times berth's block layer with the access pattern of `qemu-img bench`, so
//! `tests/bench/block` can print both side by side.
//!
//! `blockbench IMAGE read|write --size BYTES --count N [--step BYTES] [--threads T]`: N
//! requests of BYTES each at offsets 0, STEP, 2*STEP, ... modulo the disk size (STEP defaults
//! to BYTES), through the host page cache like `qemu-img bench -t writeback`. With T threads
//! (default 1), thread t issues requests t, t+T, t+2T, ... one at a time, so T requests are in
//! flight as in virtio-blk's request pool (compare `qemu-img bench -d T`). Prints the seconds
//! the requests took and, for writes, the seconds of the final flush.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use vmm::block::{open_disk, DiskOptions};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockbench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: blockbench IMAGE read|write --size BYTES --count N [--step BYTES] [--threads T]";
    let image = PathBuf::from(args.next().ok_or(usage)?);
    let write = match args.next().as_deref() {
        Some("read") => false,
        Some("write") => true,
        _ => return Err(usage.into()),
    };
    let (mut size, mut count, mut step, mut threads) = (4096u64, 1000u64, None, 1u64);
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{flag} needs a number; {usage}"))?;
        match flag.as_str() {
            "--size" => size = value,
            "--count" => count = value,
            "--step" => step = Some(value),
            "--threads" if value > 0 => threads = value,
            _ => return Err(usage.into()),
        }
    }
    let step = step.unwrap_or(size);
    let opts = DiskOptions {
        read_only: !write,
        format: None, // the bench image is trusted
        confine_backing: false,
    };
    let disk = open_disk(&image, opts).map_err(|e| e.to_string())?;
    let disk_size = disk.size();
    if size == 0 || size > disk_size {
        return Err(format!(
            "--size must be between 1 and the disk size ({disk_size})"
        ));
    }
    // Request i goes to (i * step) mod disk size, restarting at 0 where a request would run
    // past the end, like qemu-img bench.
    let worker = |t: u64| -> Result<(), String> {
        let mut buf = vec![0xa5u8; size as usize];
        let mut i = t;
        while i < count {
            let mut offset = (u128::from(i) * u128::from(step) % u128::from(disk_size)) as u64;
            if offset + size > disk_size {
                offset = 0;
            }
            let r = if write {
                disk.write_at(&buf, offset)
            } else {
                disk.read_at(&mut buf, offset)
            };
            r.map_err(|e| format!("I/O at {offset}: {e}"))?;
            i += threads;
        }
        Ok(())
    };
    let start = Instant::now();
    // A benchmark process without berth's sandbox: plain scoped threads.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || worker(t))).collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a thread panicked".to_string())?)
    })?;
    let secs = start.elapsed().as_secs_f64();
    let flush_start = Instant::now();
    disk.flush().map_err(|e| format!("flush: {e}"))?;
    println!(
        "seconds {secs:.6} flush {:.6}",
        flush_start.elapsed().as_secs_f64()
    );
    Ok(())
}
