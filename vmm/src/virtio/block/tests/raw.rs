//! The vectored path of a raw disk: `preadv`/`pwritev` straight between the file and the
//! chain's guest memory, here spread over three regions (two adjacent, one after a hole).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt;

use super::*;
use crate::block::raw::RawDisk;

/// Regions: [0, 2 MiB) and [2 MiB, 3 MiB) adjacent (a buffer can straddle them), then a
/// hole, then [4 MiB, 5 MiB).
const R2: u64 = 0x20_0000;
const R3: u64 = 0x40_0000;
const END: u64 = 0x50_0000;
const SIZE: usize = 1024 * 1024;

struct RawRig {
    mem: GuestMemoryMmap,
    disk: Disk,
    file: tempfile::NamedTempFile,
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 253) as u8)
        .collect()
}

impl RawRig {
    fn new() -> RawRig {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), R2 as usize),
            (GuestAddress(R2), 0x10_0000),
            (GuestAddress(R3), 0x10_0000),
        ])
        .unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&pattern(SIZE, 7)).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(file.path())
            .unwrap();
        let disk = Disk::new(
            Box::new(RawDisk::from_file(f, false).unwrap()),
            false,
            "raw",
        );
        RawRig { mem, disk, file }
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Runs one chain; returns (used length, status byte, bounce buffer capacity).
    fn run(&self, descs: &[RawDescriptor], queue: u16) -> (u32, u8, usize) {
        self.mem.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
        let q = MockSplitQueue::create(&self.mem, GuestAddress(0), queue);
        let chain = q.build_desc_chain(descs).unwrap();
        let mut bounce = Vec::new();
        let len = execute(&self.mem, chain, &self.disk, &mut bounce);
        let status = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (len, status, bounce.capacity())
    }

    fn file_bytes(&self, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.file.as_file().read_exact_at(&mut b, off).unwrap();
        b
    }

    fn mem_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }
}

/// Data buffers (address, length) over all three regions, one straddling R1/R2: 16 KiB.
const BUFS: [(u64, u32); 5] = [
    (0x1f_f000, 0x800),     // R1
    (R2 - 0x600, 0x1000),   // R1 | R2
    (R3 + 0x200, 0x1400),   // R3
    (R2 + 0x8_0000, 0x400), // R2
    (END - 0x1000, 0x1000), // the last page of guest memory
];

fn data_descs(flags: u16) -> Vec<RawDescriptor> {
    BUFS.iter().map(|&(a, l)| desc(a, l, flags)).collect()
}

fn chain(data: Vec<RawDescriptor>) -> Vec<RawDescriptor> {
    let mut d = vec![desc(HDR, 8, 0), desc(HDR + 8, 8, 0)];
    d.extend(data);
    d.push(desc(STATUS, 1, W));
    d
}

fn gathered(r: &RawRig) -> Vec<u8> {
    BUFS.iter()
        .flat_map(|&(a, l)| r.mem_bytes(a, l as usize))
        .collect()
}

#[test]
fn read_into_buffers_across_regions_without_bouncing() {
    let r = RawRig::new();
    let total: usize = BUFS.iter().map(|b| b.1 as usize).sum();
    assert_eq!(total, 16384);
    r.header(T_IN, 5);
    let (len, status, bounce) = r.run(&chain(data_descs(W)), 16);
    assert_eq!((len, status), (total as u32 + 1, S_OK));
    assert_eq!(gathered(&r), r.file_bytes(5 * 512, total));
    // Straight into guest memory: the bounce buffer was never used.
    assert_eq!(bounce, 0);
}

#[test]
fn write_from_buffers_across_regions_without_bouncing() {
    let r = RawRig::new();
    let payload = pattern(16384, 99);
    let mut at = 0;
    for &(a, l) in &BUFS {
        let l = l as usize;
        r.mem
            .write_slice(&payload[at..at + l], GuestAddress(a))
            .unwrap();
        at += l;
    }
    r.header(T_OUT, 9);
    let before = r.file_bytes(0, SIZE);
    let (len, status, bounce) = r.run(&chain(data_descs(0)), 16);
    assert_eq!((len, status, bounce), (1, S_OK, 0));
    let mut expect = before;
    expect[9 * 512..9 * 512 + 16384].copy_from_slice(&payload);
    assert_eq!(r.file_bytes(0, SIZE), expect);
}

/// A data buffer that runs past the end of guest memory, or into the hole between
/// regions: no status can be written, and neither the file nor guest memory changes.
#[test]
fn buffers_outside_guest_memory_change_nothing() {
    let r = RawRig::new();
    let before = r.file_bytes(0, SIZE);
    for bad in [(END - 0x200, 0x400), (R2 + 0x10_0000 - 0x200, 0x400)] {
        let mark = pattern(0x200, 3);
        r.mem.write_slice(&mark, GuestAddress(bad.0)).unwrap();
        r.header(T_IN, 0);
        let data = vec![desc(DATA, 512, W), desc(bad.0, bad.1, W)];
        assert_eq!(r.run(&chain(data), 16).0, 0);
        assert_eq!(r.mem_bytes(bad.0, 0x200), mark);
        assert_eq!(r.mem_bytes(STATUS, 1), [0xee]);
        r.header(T_OUT, 0);
        let data = vec![desc(DATA, 512, 0), desc(bad.0, bad.1, 0)];
        assert_eq!(r.run(&chain(data), 16).0, 0);
        assert_eq!(r.mem_bytes(STATUS, 1), [0xee]);
        assert_eq!(r.file_bytes(0, SIZE), before);
    }
}

/// The file shrank under the disk (another process truncated it): the read stops at the
/// end of the file with an error status, and the used length counts exactly the bytes
/// that reached guest memory.
#[test]
fn short_read_at_end_of_file_reports_what_was_read() {
    let r = RawRig::new();
    let end = (SIZE - 8192) as u64 + 1536;
    r.file.as_file().set_len(end).unwrap();
    let mark = pattern(16384, 5);
    for &(a, l) in &BUFS {
        r.mem
            .write_slice(&mark[..l as usize], GuestAddress(a))
            .unwrap();
    }
    let before = gathered(&r);
    // 16 KiB from 8 KiB before the old end: 1536 bytes are still in the file.
    let start = SIZE as u64 - 8192 - 8192;
    r.header(T_IN, start / 512);
    let (len, status, _) = r.run(&chain(data_descs(W)), 16);
    let got = (end - start) as usize;
    assert_eq!((len, status), (got as u32 + 1, S_IOERR));
    let after = gathered(&r);
    assert_eq!(after[..got], r.file_bytes(start, got)[..]);
    assert_eq!(after[got..], before[got..]);
}

/// A chain of more pieces than one `preadv` may take (indirect tables allow 65535
/// descriptors) goes through the bounce buffer, with the same result.
#[test]
fn very_long_chains_bounce() {
    let r = RawRig::new();
    let n = crate::block::MAX_IOVS + 10;
    let data: Vec<_> = (0..n as u64).map(|i| desc(R3 + i * 512, 512, W)).collect();
    r.header(T_IN, 0);
    let (len, status, bounce) = r.run(&chain(data), 2048);
    assert_eq!((len, status), ((n * 512) as u32 + 1, S_OK));
    assert_eq!(r.mem_bytes(R3, n * 512), r.file_bytes(0, n * 512));
    assert!(bounce > 0);

    let payload = pattern(n * 512, 11);
    r.mem.write_slice(&payload, GuestAddress(R3)).unwrap();
    let data: Vec<_> = (0..n as u64).map(|i| desc(R3 + i * 512, 512, 0)).collect();
    r.header(T_OUT, 0);
    assert_eq!(r.run(&chain(data), 2048).1, S_OK);
    assert_eq!(r.file_bytes(0, n * 512), payload);
}

/// The checks before any I/O hold on the vectored path too.
#[test]
fn range_alignment_and_read_only_are_checked() {
    let r = RawRig::new();
    let before = r.file_bytes(0, SIZE);
    // Past the end of the disk by one sector.
    r.header(T_OUT, (SIZE / 512) as u64 - 31);
    assert_eq!(r.run(&chain(data_descs(0)), 16).1, S_IOERR);
    r.header(T_IN, (SIZE / 512) as u64 - 31);
    let (len, status, _) = r.run(&chain(data_descs(W)), 16);
    assert_eq!((len, status), (1, S_IOERR));
    // Not a whole number of sectors.
    r.header(T_OUT, 0);
    assert_eq!(r.run(&chain(vec![desc(DATA, 700, 0)]), 16).1, S_IOERR);
    assert_eq!(r.file_bytes(0, SIZE), before);

    let f = OpenOptions::new().read(true).open(r.file.path()).unwrap();
    let ro = Disk::new(Box::new(RawDisk::from_file(f, true).unwrap()), false, "ro");
    let rig = RawRig { disk: ro, ..r };
    rig.header(T_OUT, 0);
    assert_eq!(rig.run(&chain(data_descs(0)), 16).1, S_IOERR);
    assert_eq!(rig.file_bytes(0, SIZE), before);
}
