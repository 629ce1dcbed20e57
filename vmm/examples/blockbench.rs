//! Times berth's block layer with the access pattern of `qemu-img bench`, so
//! `tests/bench/block` can print both side by side.
//!
//! `blockbench IMAGE read|write --size BYTES --count N [--step BYTES] [--threads T]`: N
//! requests of BYTES each at offsets 0, STEP, 2*STEP, ... modulo the disk size (STEP defaults
//! to BYTES), through the host page cache like `qemu-img bench -t writeback`. With T threads
//! (default 1), thread t issues requests t, t+T, t+2T, ... one at a time, so T requests are in
//! flight as in virtio-blk's request pool (compare `qemu-img bench -d T`). Prints the seconds
//! the requests took and, for writes, the seconds of the final flush.
//!
//! With `--virtio SEG`, every request instead goes through the virtio-blk request engine
//! (`vmm::virtio::block::request::execute`) as a descriptor chain in a guest memory of its
//! thread: a header, the data split into descriptors of SEG bytes, and a status byte, so the
//! timing includes the data's way between the backend and guest memory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::block::{open_disk, DiskOptions};
use vmm::virtio::block::request::{self, Disk};

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
        "usage: blockbench IMAGE read|write --size BYTES --count N [--step BYTES] [--threads T] [--virtio SEG]";
    let image = PathBuf::from(args.next().ok_or(usage)?);
    let write = match args.next().as_deref() {
        Some("read") => false,
        Some("write") => true,
        _ => return Err(usage.into()),
    };
    let (mut size, mut count, mut step, mut threads) = (4096u64, 1000u64, None, 1u64);
    let mut seg = 0u64;
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
            "--virtio" if value >= 512 && value.is_multiple_of(512) => seg = value,
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
    if seg > 0 {
        if !size.is_multiple_of(512) || size.div_ceil(seg) + 2 > u64::from(QUEUE) {
            return Err(format!(
                "--virtio needs --size a multiple of 512 and at most {} descriptors of SEG bytes",
                QUEUE - 2
            ));
        }
        let disk = Disk::new(disk, !write, "blockbench");
        return virtio(&disk, write, size, count, step, threads, seg);
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

/// Queue size of the mock driver (berth's virtio-blk offers 256).
const QUEUE: u16 = 256;
/// Guest addresses of the request header, status byte and data.
const HDR: u64 = 0x10_0000;
const STATUS: u64 = HDR + 0x100;
const DATA: u64 = 0x20_0000;

/// The `--virtio` run: each request as a descriptor chain through `request::execute`.
fn virtio(
    disk: &Disk,
    write: bool,
    size: u64,
    count: u64,
    step: u64,
    threads: u64,
    seg: u64,
) -> Result<(), String> {
    let disk_size = disk.backend.size();
    let worker = |t: u64| -> Result<(), String> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (DATA + size) as usize)])
            .map_err(|e| format!("guest memory: {e}"))?;
        mem.write_slice(&vec![0xa5u8; size as usize], GuestAddress(DATA))
            .map_err(|e| e.to_string())?;
        let q = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE);
        let data_flags = if write { 0 } else { VRING_DESC_F_WRITE as u16 };
        let mut descs = vec![RawDescriptor::from(Descriptor::new(HDR, 16, 0, 0))];
        let mut at = 0;
        while at < size {
            let n = seg.min(size - at);
            descs.push(RawDescriptor::from(Descriptor::new(
                DATA + at,
                n as u32,
                data_flags,
                0,
            )));
            at += n;
        }
        descs.push(RawDescriptor::from(Descriptor::new(
            STATUS,
            1,
            VRING_DESC_F_WRITE as u16,
            0,
        )));
        let kind = if write { request::T_OUT } else { request::T_IN };
        // The descriptors never change: one chain, run again for every request.
        let chain = q.build_desc_chain(&descs).map_err(|e| format!("{e:?}"))?;
        let mut buf = Vec::new();
        let mut i = t;
        while i < count {
            let mut offset = (u128::from(i) * u128::from(step) % u128::from(disk_size)) as u64;
            if offset + size > disk_size {
                offset = 0;
            }
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&(offset / 512).to_le_bytes());
            mem.write_slice(&h, GuestAddress(HDR))
                .map_err(|e| e.to_string())?;
            request::execute(&mem, chain.clone(), disk, &mut buf);
            let status: u8 = mem
                .read_obj(GuestAddress(STATUS))
                .map_err(|e| e.to_string())?;
            if status != request::S_OK {
                return Err(format!("request at {offset}: status {status}"));
            }
            i += threads;
        }
        Ok(())
    };
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || worker(t))).collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a thread panicked".to_string())?)
    })?;
    let secs = start.elapsed().as_secs_f64();
    let flush_start = Instant::now();
    disk.backend.flush().map_err(|e| format!("flush: {e}"))?;
    println!(
        "seconds {secs:.6} flush {:.6}",
        flush_start.elapsed().as_secs_f64()
    );
    Ok(())
}
