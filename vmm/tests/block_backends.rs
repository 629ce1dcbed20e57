//! Unit-level tests of the raw and qcow2 backends: unaligned I/O, cluster boundaries, bounds,
//! discard/write-zeroes, read-only refusals, the read-only backing chain and open errors.

mod block_util;
mod common;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use block_util::{
    base_and_overlay, open, pattern, qcow2_base_data, qemu_img_check, qemu_img_create,
    qemu_img_overlay, read_all, s,
};
use common::Rng;
use vmm::block::overlay::ensure_overlay;
use vmm::block::{open_disk, BlockBackend, DiskError, DiskFormat, DiskOptions};

const SIZE: u64 = 4 << 20;
const CLUSTER: u64 = 65536;

/// The images every generic test runs on, each with the content it starts with.
fn images(dir: &Path) -> Vec<(&'static str, PathBuf, DiskFormat, Vec<u8>)> {
    let raw = dir.join("disk.raw");
    let init = pattern(1, SIZE as usize);
    std::fs::write(&raw, &init).unwrap();

    let plain = dir.join("plain.qcow2");
    qemu_img_create(&plain, &SIZE.to_string());

    let (_, over) = base_and_overlay(dir, SIZE);

    let raw_base = dir.join("base.raw");
    let raw_base_data = pattern(2, SIZE as usize);
    std::fs::write(&raw_base, &raw_base_data).unwrap();
    let over_raw = dir.join("over-raw.qcow2");
    ensure_overlay(&raw_base, &over_raw, Some(DiskFormat::Raw)).unwrap();

    vec![
        ("raw", raw, DiskFormat::Raw, init),
        ("qcow2", plain, DiskFormat::Qcow2, vec![0; SIZE as usize]),
        (
            "overlay on qcow2",
            over,
            DiskFormat::Qcow2,
            qcow2_base_data(SIZE),
        ),
        ("overlay on raw", over_raw, DiskFormat::Qcow2, raw_base_data),
    ]
}

/// Writes, zeroes and discards at random unaligned offsets, many across cluster boundaries,
/// checking every read against an in-memory model; returns the final model.
fn exercise(name: &str, disk: &mut dyn BlockBackend, mut model: Vec<u8>) -> Vec<u8> {
    assert_eq!(disk.size(), SIZE, "{name}");
    let mut rng = Rng(0x1234_5678 ^ name.len() as u64);
    for i in 0..300u64 {
        // Bias offsets to straddle cluster boundaries.
        let off = if rng.below(2) == 0 {
            (rng.below(SIZE / CLUSTER - 1) + 1) * CLUSTER - rng.below(5000)
        } else {
            rng.below(SIZE - 1)
        };
        let len = (1 + rng.below(150_000)).min(SIZE - off);
        let (o, l) = (off as usize, len as usize);
        match rng.below(10) {
            0..=5 => {
                let data = pattern(i + 7, l);
                disk.write_at(&data, off).unwrap();
                model[o..o + l].copy_from_slice(&data);
            }
            6 => {
                disk.write_zeroes(off, len, rng.below(2) == 0).unwrap();
                model[o..o + l].fill(0);
            }
            7 => {
                disk.discard(off, len).unwrap();
                model[o..o + l].fill(0);
            }
            _ => {}
        }
        if i % 50 == 0 {
            disk.flush().unwrap();
        }
        let mut buf = vec![0u8; l];
        disk.read_at(&mut buf, off).unwrap();
        assert!(buf == model[o..o + l], "{name}: op {i} at {off}+{len}");
    }
    disk.flush().unwrap();
    model
}

#[test]
fn random_io_matches_model() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let raw_base = dir.path().join("base.raw");
    for (name, path, fmt, init) in images(dir.path()) {
        let base_before = (name == "overlay on raw").then(|| std::fs::read(&raw_base).unwrap());
        let model = exercise(name, open(&path, fmt, false).as_mut(), init);
        assert!(
            read_all(&path, fmt) == model,
            "{name}: content after reopen differs"
        );
        if let Some(before) = base_before {
            assert!(
                std::fs::read(&raw_base).unwrap() == before,
                "raw base written"
            );
        }
    }
}

/// A loop device detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// The raw backend on a block device (size by ioctl, BLKDISCARD, fallocate on the device);
/// skipped where loop devices cannot be set up.
#[test]
fn raw_block_device() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backing.img");
    let init = pattern(4, SIZE as usize);
    std::fs::write(&file, &init).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show", s(&file)])
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => Loop(String::from_utf8(o.stdout).unwrap().trim().into()),
        _ => {
            eprintln!("skipping raw_block_device: no loop devices here");
            return;
        }
    };
    let mut disk = open_disk(Path::new(&dev.0), DiskOptions::default()).unwrap();
    let model = exercise("block device", disk.as_mut(), init);
    drop(disk);
    assert!(
        read_all(Path::new(&dev.0), DiskFormat::Raw) == model,
        "block device content after reopen differs"
    );
}

#[test]
fn out_of_range_is_an_error() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    for (name, path, fmt, _) in images(dir.path()) {
        let disk = open(&path, fmt, false);
        let mut two = [0u8; 2];
        for off in [SIZE - 1, SIZE, SIZE + 4096, u64::MAX - 1] {
            let e = disk.read_at(&mut two, off).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{name} read at {off}");
            assert!(disk.write_at(&two, off).is_err(), "{name} write at {off}");
            assert!(
                disk.write_zeroes(off, 2, false).is_err(),
                "{name} zero at {off}"
            );
            assert!(disk.discard(off, 2).is_err(), "{name} discard at {off}");
        }
        // Exactly up to the end is fine.
        disk.write_at(&two, SIZE - 2).unwrap();
        disk.read_at(&mut two, SIZE - 2).unwrap();
        disk.read_at(&mut [], SIZE).unwrap();
    }
}

#[test]
fn read_only_refuses_writes_and_leaves_file_alone() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    for (name, path, fmt, _) in images(dir.path()) {
        let before = std::fs::read(&path).unwrap();
        let disk = open(&path, fmt, true);
        assert!(disk.read_only(), "{name}");
        let ro = |r: std::io::Result<()>| r.unwrap_err().kind() == ErrorKind::ReadOnlyFilesystem;
        assert!(ro(disk.write_at(&[1, 2, 3], 100)), "{name}");
        assert!(ro(disk.write_zeroes(0, 4096, true)), "{name}");
        assert!(ro(disk.write_zeroes(0, 4096, false)), "{name}");
        assert!(ro(disk.discard(0, 4096)), "{name}");
        disk.flush().unwrap();
        assert_read_only(&path, name);
        drop(disk);
        assert!(std::fs::read(&path).unwrap() == before, "{name} changed");
    }
}

/// Access modes (`O_RDONLY`, `O_RDWR`, ...) of this process's open fds on `path`.
/// The file is open in this process, and every descriptor of it is read-only (a qcow2 layer
/// holds imago's descriptor and a duplicate of it).
fn assert_read_only(path: &Path, what: &str) {
    let modes = open_access_modes(path);
    assert!(
        !modes.is_empty() && modes.iter().all(|&m| m == libc::O_RDONLY),
        "{what}: {modes:?}"
    );
}

fn open_access_modes(path: &Path) -> Vec<i32> {
    let want = path.canonicalize().unwrap();
    let mut modes = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(want.as_path()) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_str().unwrap()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| i32::from_str_radix(f.trim(), 8).unwrap());
        if let Some(f) = flags {
            modes.push(f & libc::O_ACCMODE);
        }
    }
    modes
}

/// Every image below the top of a chain is opened O_RDONLY, even when the top is writable.
#[test]
fn backing_chain_is_opened_read_only() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("bottom.raw");
    std::fs::write(&raw, pattern(3, SIZE as usize)).unwrap();
    let mid = d.join("mid.qcow2");
    qemu_img_overlay(&raw, "raw", &mid);
    let top = d.join("top.qcow2");
    ensure_overlay(&mid, &top, None).unwrap();

    let disk = open(&top, DiskFormat::Qcow2, false);
    disk.write_at(&[9; 70000], 60000).unwrap();
    disk.flush().unwrap();
    // berth holds the top image more than once (imago's descriptor, one for the header's
    // dirty bit, and their duplicates for transfers straight to guest memory), all
    // read-write.
    let top_modes = open_access_modes(&top);
    assert!(
        !top_modes.is_empty() && top_modes.iter().all(|&m| m == libc::O_RDWR),
        "{top_modes:?}"
    );
    assert_read_only(&mid, "mid");
    assert_read_only(&raw, "raw");
    let mut buf = vec![0u8; 4096];
    disk.read_at(&mut buf, SIZE - 4096).unwrap();
    assert!(buf == pattern(3, SIZE as usize)[(SIZE - 4096) as usize..]);
}

#[test]
fn open_errors_name_the_problem() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let msg = |p: &Path, f: Option<DiskFormat>| {
        let opts = DiskOptions {
            read_only: false,
            format: f,
            confine_backing: false,
        };
        let Err(e) = open_disk(p, opts) else {
            panic!("{} opened", p.display())
        };
        let m = e.to_string();
        assert!(!m.contains('\n'), "one line: {m}");
        (e, m)
    };

    let (e, m) = msg(&d.join("nope.img"), None);
    assert!(
        matches!(e, DiskError::NotFound(_)) && m.contains("nope.img"),
        "{m}"
    );

    let base = d.join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let over = d.join("over.qcow2");
    qemu_img_overlay(&base, "raw", &over);
    std::fs::remove_file(&base).unwrap();
    let (e, m) = msg(&over, None);
    assert!(matches!(e, DiskError::BackingMissing { .. }), "{m}");
    assert!(m.contains("base.raw") && m.contains("restore"), "{m}");

    let img = d.join("v.qcow2");
    qemu_img_create(&img, "1M");
    let pristine = std::fs::read(&img).unwrap();
    let patch = |at: usize, bytes: &[u8]| {
        let mut b = pristine.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&img, b).unwrap();
    };
    patch(4, &4u32.to_be_bytes());
    let (e, m) = msg(&img, Some(DiskFormat::Qcow2));
    assert!(
        matches!(e, DiskError::Unsupported { .. }) && m.contains("version 4"),
        "{m}"
    );
    // Dirty (left open for writing by a crash): read-only users are refused, writers repair.
    patch(72, &1u64.to_be_bytes());
    let ro = DiskOptions {
        read_only: true,
        format: None,
        confine_backing: false,
    };
    let Err(e) = open_disk(&img, ro) else {
        panic!("dirty image opened read-only")
    };
    let m = e.to_string();
    assert!(
        matches!(e, DiskError::Corrupt { .. })
            && m.contains("qemu-img check")
            && m.contains("dirty"),
        "{m}"
    );
    let mut disk = open(&img, DiskFormat::Qcow2, false);
    let notes = disk.take_notes();
    assert!(
        notes.len() == 1 && notes[0].contains("repaired"),
        "{notes:?}"
    );
    drop(disk);
    assert_eq!(qemu_img_check(&img).0, 0);
    patch(72, &2u64.to_be_bytes());
    let (e, m) = msg(&img, None);
    assert!(
        matches!(e, DiskError::Corrupt { .. }) && m.contains("qemu-img check"),
        "{m}"
    );
    patch(72, &(1u64 << 3).to_be_bytes());
    let (e, m) = msg(&img, None);
    assert!(
        m.contains("compression") && m.contains("convert"),
        "{m}: {e:?}"
    );
    patch(32, &1u32.to_be_bytes());
    let (_, m) = msg(&img, None);
    assert!(m.contains("encryption"), "{m}");
}

/// A raw guest disk whose first bytes are a qcow2 header naming a host file as its backing
/// file must still be served raw when declared raw.
#[test]
fn declared_raw_is_never_probed() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = d.join("secret");
    std::fs::write(&secret, vec![0x42u8; 1 << 20]).unwrap();
    let evil = d.join("guest.img");
    qemu_img_overlay(&secret, "raw", &evil);
    let mut bytes = std::fs::read(&evil).unwrap();
    bytes.resize(1 << 20, 0);
    std::fs::write(&evil, &bytes).unwrap();

    let disk = open(&evil, DiskFormat::Raw, false);
    assert_eq!(disk.size(), 1 << 20);
    let mut buf = vec![0u8; 4096];
    disk.read_at(&mut buf, 0).unwrap();
    assert!(buf[..4] == *b"QFI\xfb" && buf == bytes[..4096]);
    assert!(open_access_modes(&secret).is_empty(), "backing file opened");
    drop(disk);
    // Probing (for trusted images only) does see qcow2.
    let probed = open_disk(&evil, DiskOptions::default()).unwrap();
    let mut buf = vec![0u8; 16];
    let probed = probed;
    probed.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, vec![0x42; 16]);
}
