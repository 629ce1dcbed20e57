//! Helpers shared by the block tests: qemu-img/qemu-io as the oracle, test images, berth's
//! backends opened for a test, patterns. A test using them also declares `mod common;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Rng;
use vm_memory::VolatileSlice;
use vmm::block::overlay::{ensure_overlay, OverlayState};
use vmm::block::{open_disk, BlockBackend, DiskFormat, DiskOptions};

/// `len` bytes of a pattern that differs per `seed` and per byte position.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

/// Runs `qemu-img args`, panicking with its output on failure.
pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", args)
}

/// Runs `qemu-io` with one `-c` per command on image `img` of format `fmt`.
pub fn qemu_io(fmt: &str, img: &Path, cmds: &[&str]) -> String {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let img = img.to_str().unwrap();
    args.push(img);
    let out = run("qemu-io", &args);
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "qemu-io {args:?}: {out}"
    );
    out
}

pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} (install qemu-utils): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{prog} {args:?} failed: {text}");
    text
}

/// `qemu-img check` exit status and output: 0 clean, 2 corruptions, 3 leaks only.
pub fn qemu_img_check(img: &Path) -> (i32, String) {
    let out = Command::new("qemu-img")
        // -U: no locks. Tests check images nobody writes at that moment; a test running in
        // parallel that forks holds copies of this process's descriptors (and with them their
        // OFD locks) until its child execs.
        .args(["check", "-U", "-f", "qcow2", img.to_str().unwrap()])
        .output()
        .expect("run qemu-img check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `qemu-img info`/`check` `--output=json`, lightly parsed: the value of `"key": ` as text.
pub fn info_field(json: &str, key: &str) -> Option<String> {
    // Prefer a top-level key (4 spaces in), over the same key in nested children.
    let top = format!("\n    \"{key}\": ");
    let pat = format!("\"{key}\": ");
    let start = match json.find(&top) {
        Some(i) => i + top.len(),
        None => json.find(&pat)? + pat.len(),
    };
    let rest = &json[start..];
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"').to_string())
}

/// Converts any image to a raw file with qemu-img and returns its bytes.
pub fn to_raw(img: &Path, fmt: &str, dir: &Path) -> Vec<u8> {
    let out: PathBuf = dir.join("converted.raw");
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        fmt,
        "-O",
        "raw",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// Creates an empty qcow2 image of `size` (bytes, or with a suffix: `1M`) with qemu-img.
pub fn qemu_img_create(path: &Path, size: &str) {
    qemu_img(&["create", "-q", "-f", "qcow2", s(path), size]);
}

/// Creates with qemu-img a qcow2 overlay `over` on `backing` of format `backing_fmt`;
/// `backing` is recorded as given (a relative one stays relative).
pub fn qemu_img_overlay(backing: &Path, backing_fmt: &str, over: &Path) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(backing),
        "-F",
        backing_fmt,
        s(over),
    ]);
}

/// Like [`qemu_img_overlay`], with another cluster size (512 bytes makes a few MiB of writes
/// need many L2 tables and refcount blocks).
pub fn qemu_img_overlay_clusters(
    backing: &Path,
    backing_fmt: &str,
    over: &Path,
    cluster_size: u32,
) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("cluster_size={cluster_size}"),
        "-b",
        s(backing),
        "-F",
        backing_fmt,
        s(over),
    ]);
}

/// Serialises the tests of one test binary that open images and start processes. berth
/// locks images with OFD locks, and a test that forks (qemu-img, a child berth) holds copies of
/// every descriptor of this process, with their locks, until its child execs: a test that
/// closes an image and opens it again could find its own old lock held by another test's
/// child for a moment. berth itself never forks.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary directory on tmpfs (`/dev/shm`) where there is one: for tests that write and
/// fsync hundreds of images (a killed process sees the same page cache either way).
pub fn shm_tempdir() -> tempfile::TempDir {
    match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .unwrap()
}

/// Asserts that `qemu-img check` finds the qcow2 image clean: no corruption, no leaks.
pub fn assert_check_clean(img: &Path) {
    let (code, out) = qemu_img_check(img);
    assert_eq!(code, 0, "qemu-img check {}: {out}", img.display());
}

/// Asserts with `qemu-img compare` that the qcow2 image `img` has the guest-visible content
/// of `other`, an image of format `other_fmt`.
pub fn assert_same_content(img: &Path, other: &Path, other_fmt: &str) {
    qemu_img(&["compare", "-f", "qcow2", "-F", other_fmt, s(img), s(other)]);
}

/// Creates a qcow2 base of `size` bytes with qemu-img, with pattern data written by qemu-io
/// in its first half (the second half stays unallocated); its content is `qcow2_base_data`.
pub fn make_qcow2_base(path: &Path, size: u64) {
    qemu_img_create(path, &size.to_string());
    qemu_io(
        "qcow2",
        path,
        &[
            &format!("write -P 0x5a 0 {}", size / 2),
            "write -P 0x11 4096 100000",
        ],
    );
}

/// The guest-visible content of a base made by `make_qcow2_base(_, size)`.
pub fn qcow2_base_data(size: u64) -> Vec<u8> {
    let mut data = vec![0x5au8; (size / 2) as usize];
    data.resize(size as usize, 0);
    data[4096..104_096].fill(0x11);
    data
}

/// Makes `base.qcow2` in `dir` with `make_qcow2_base(_, size)` and returns its path.
pub fn qcow2_base(dir: &Path, size: u64) -> PathBuf {
    let base = dir.join("base.qcow2");
    make_qcow2_base(&base, size);
    base
}

/// In `dir`: `base.qcow2` made by `qcow2_base(_, size)` and berth's new overlay `over.qcow2`
/// on it. Returns (base, overlay).
pub fn base_and_overlay(dir: &Path, size: u64) -> (PathBuf, PathBuf) {
    let base = qcow2_base(dir, size);
    let over = dir.join("over.qcow2");
    assert_eq!(
        ensure_overlay(&base, &over, None).unwrap(),
        OverlayState::Created
    );
    (base, over)
}

/// Opens `path` with berth's backend as `format`, panicking with the path on failure.
pub fn open(path: &Path, format: DiskFormat, read_only: bool) -> Box<dyn BlockBackend> {
    let opts = DiskOptions {
        read_only,
        format: Some(format),
        confine_backing: false,
    };
    open_disk(path, opts).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// The whole guest-visible content of `path`, read through berth's backend (opened read-only).
pub fn read_all(path: &Path, format: DiskFormat) -> Vec<u8> {
    let disk = open(path, format, true);
    let mut buf = vec![0u8; disk.size() as usize];
    disk.read_at(&mut buf, 0).unwrap();
    buf
}

/// Cuts `buf` into pieces of uneven sizes (one byte to 64 KiB, rarely sector-aligned), as
/// guest memory of a descriptor chain, for the backends' vectored calls.
fn pieces(buf: &mut [u8], seed: usize) -> Vec<VolatileSlice<'_>> {
    const SIZES: [usize; 7] = [4096, 513, 65536, 1, 3000, 512, 20_000];
    let mut v = Vec::new();
    let mut rest = buf;
    let mut i = seed;
    while !rest.is_empty() {
        let n = SIZES[i % SIZES.len()].min(rest.len());
        let (a, b) = rest.split_at_mut(n);
        v.push(VolatileSlice::from(a));
        rest = b;
        i += 1;
    }
    v
}

/// Reads `buf.len()` bytes at `off` through the backend's vectored path (guest memory in
/// pieces of uneven sizes, filled with a poison pattern first).
pub fn read_vectored(disk: &dyn BlockBackend, buf: &mut [u8], off: u64) {
    // Guest memory is never zero to begin with: every byte must be written.
    buf.fill(0xa5);
    let seed = off as usize;
    let bufs = pieces(buf, seed);
    disk.read_vectored_at(&bufs, off, &mut Vec::new())
        .unwrap_or_else(|e| panic!("read_vectored_at {off}: {} after {}", e.error, e.done));
}

/// Writes `data` at `off` through the backend's vectored path.
pub fn write_vectored(disk: &dyn BlockBackend, data: &[u8], off: u64) {
    let mut copy = data.to_vec();
    let bufs = pieces(&mut copy, off as usize);
    disk.write_vectored_at(&bufs, off, &mut Vec::new())
        .unwrap_or_else(|e| panic!("write_vectored_at {off}: {} after {}", e.error, e.done));
}

/// [`read_all`] through the vectored path, 3 MiB (plus a piece) at a time.
pub fn read_all_vectored(path: &Path, format: DiskFormat) -> Vec<u8> {
    let disk = open(path, format, true);
    let mut buf = vec![0u8; disk.size() as usize];
    for (i, chunk) in buf.chunks_mut(3 << 20 | 4097).enumerate() {
        let off = (i * (3 << 20 | 4097)) as u64;
        read_vectored(disk.as_ref(), chunk, off);
    }
    buf
}

/// Writes `data` at `off` into the qcow2 image `path` through berth, flushes and closes it.
pub fn write_flushed(path: &Path, off: u64, data: &[u8]) {
    let disk = open(path, DiskFormat::Qcow2, false);
    disk.write_at(data, off).unwrap();
    disk.flush().unwrap();
}

/// The path as UTF-8, for command lines.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
