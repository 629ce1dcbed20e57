//! Helpers shared by the block tests: temp dirs, qemu-img/qemu-io as the oracle, patterns.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small deterministic PRNG (xorshift64*), so tests and child processes agree on data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

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
        .args(["check", "-f", "qcow2", img.to_str().unwrap()])
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

/// Creates a qcow2 base of `size` bytes with qemu-img, with pattern data written by qemu-io
/// in its first half (the second half stays unallocated).
pub fn make_qcow2_base(path: &Path, size: u64) {
    let p = path.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", p, &size.to_string()]);
    qemu_io(
        "qcow2",
        path,
        &[
            &format!("write -P 0x5a 0 {}", size / 2),
            "write -P 0x11 4096 100000",
        ],
    );
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
