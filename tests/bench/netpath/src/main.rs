//! Drives berth's virtio-net datapath (`transmit` and `receive` in
//! `vmm::virtio::net::datapath`) in process, the way the device worker does, and prints the
//! cost per frame. The "guest" is this program writing descriptors and ring indices into guest
//! memory; the backend is a null tap (it takes TX frames as the tap's `writev` does, straight
//! from the guest's buffers). So this measures only berth's own work per frame
//! (descriptor walking, bounds checks, copies, used-ring updates), which is what profiles
//! should point at (`valgrind --tool=callgrind netpath ...`).
//!
//! `netpath tx|rx FRAME_BYTES FRAMES`: FRAMES frames of FRAME_BYTES (virtio-net header
//! included) in batches of 128 (half the 256-entry queue, like a busy guest). TX: one readable
//! descriptor per frame. RX: mergeable receive buffers of 4096 bytes, one or more per frame.
//! Prints `netpath <dir> frame=<bytes> frames=<n> secs=<s> ns_per_frame=<ns> gbit_s=<Gbit/s>`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};
use vmm::virtio::net::datapath;
use vmm::virtio::net::tap::NetBackend;

const QSIZE: u16 = 256;
const BATCH: u16 = 128;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const BUFS: u64 = 0x10000;
const BUF_STRIDE: u64 = 0x11000; // 68 KiB per descriptor: room for a 64 KiB TSO frame
const MEM: usize = (BUFS + BUF_STRIDE * QSIZE as u64) as usize;
const RX_BUF: u32 = 4096;
const F_WRITE: u16 = 2;

/// A tap that takes every frame and hands out copies of one frame.
struct NullTap {
    frame: Vec<u8>,
    to_receive: u64,
    sent_bytes: u64,
}

impl AsRawFd for NullTap {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl NetBackend for NullTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.to_receive == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.to_receive -= 1;
        let n = self.frame.len().min(buf.len());
        buf[..n].copy_from_slice(&self.frame[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sent_bytes += frame.len() as u64;
        Ok(())
    }
    /// What the tap's `writev` gets: the guest's buffers, not a copy (the kernel's copy into
    /// its socket buffer is outside this benchmark, before and after).
    fn write_frame_gather(&mut self, parts: &[VolatileSlice<'_>]) -> io::Result<()> {
        self.sent_bytes += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        Ok(())
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

fn queue() -> Queue {
    let mut q = Queue::new(QSIZE).expect("queue");
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

/// Descriptor `i`: buffer `i`, `len` bytes, `flags`.
fn put_desc(mem: &GuestMemoryMmap, i: u16, len: u32, flags: u16) {
    let at = GuestAddress(DESC + 16 * u64::from(i));
    let addr = BUFS + BUF_STRIDE * u64::from(i);
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, at.unchecked_add(8)).unwrap();
    mem.write_obj(flags, at.unchecked_add(12)).unwrap();
    mem.write_obj(0u16, at.unchecked_add(14)).unwrap();
}

/// The driver makes `n` more descriptors available (heads follow the ring position).
fn offer(mem: &GuestMemoryMmap, avail_idx: &mut u16, n: u16) {
    for _ in 0..n {
        let slot = *avail_idx % QSIZE;
        mem.write_obj(slot, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
        *avail_idx = avail_idx.wrapping_add(1);
    }
    mem.write_obj(*avail_idx, GuestAddress(AVAIL + 2)).unwrap();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: netpath tx|rx FRAME_BYTES FRAMES";
    let (dir, frame, frames) = match args.as_slice() {
        [d, f, n] if (d == "tx" || d == "rx") => match (f.parse::<usize>(), n.parse::<u64>()) {
            (Ok(f), Ok(n)) if (12..=datapath::MAX_FRAME).contains(&f) && n > 0 => (d.clone(), f, n),
            _ => {
                eprintln!("netpath: {usage}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("netpath: {usage}");
            return ExitCode::from(2);
        }
    };
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    let mut q = queue();
    let mut tap = NullTap {
        frame: vec![0x5a; frame],
        to_receive: 0,
        sent_bytes: 0,
    };
    let tx = dir == "tx";
    for i in 0..QSIZE {
        if tx {
            put_desc(&mem, i, frame as u32, 0);
        } else {
            put_desc(&mem, i, RX_BUF, F_WRITE);
        }
    }
    let per_frame = if tx {
        1
    } else {
        frame.div_ceil(RX_BUF as usize) as u64
    };
    let batch_frames = u64::from(BATCH) / per_frame;
    assert!(
        batch_frames > 0,
        "frame too large for a batch of RX buffers"
    );
    let mut avail_idx = 0u16;
    let mut buf = Vec::new();
    let mut pending = None;
    let mut done = 0u64;
    let mut rx_buf = vec![0u8; datapath::MAX_FRAME];
    let t0 = Instant::now();
    while done < frames {
        let n = batch_frames.min(frames - done);
        offer(&mem, &mut avail_idx, (n * per_frame) as u16);
        if tx {
            datapath::transmit(&mut q, &mem, &mut tap, &mut buf);
        } else {
            tap.to_receive = n;
            // As the worker does: one frame buffer for the whole run.
            datapath::receive_with(&mut q, &mem, &mut tap, true, &mut pending, &mut rx_buf);
            assert!(pending.is_none(), "receive left a frame pending");
        }
        done += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let used: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    let expect_used = (frames * per_frame) as u16; // mod 2^16, like the ring index
    if used != expect_used || (tx && tap.sent_bytes != frames * frame as u64) {
        eprintln!(
            "netpath: the device used {used} buffers (expected {expect_used}) and sent {} bytes",
            tap.sent_bytes
        );
        return ExitCode::FAILURE;
    }
    println!(
        "netpath {dir} frame={frame} frames={frames} secs={secs:.6} ns_per_frame={:.1} gbit_s={:.3}",
        secs * 1e9 / frames as f64,
        (frames * frame as u64) as f64 * 8.0 / secs / 1e9
    );
    ExitCode::SUCCESS
}
