//! Who may touch an image: QEMU-compatible locks (a second writer is refused, on either side,
//! by berth and by qemu-io/qemu-img), and untrusted images whose backing file names reach
//! outside their directory.

mod block_util;
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use block_util::{open, qemu_img, qemu_img_overlay, s};
use vmm::block::overlay::{ensure_overlay, ensure_overlay_with};
use vmm::block::qcow2::Qcow2Disk;
use vmm::block::{open_disk, DiskError, DiskFormat, DiskOptions};

/// qemu-io holding `img` open (read-write unless `read_only`) until killed; returns once it
/// has opened it.
fn qemu_io_holding(img: &Path, read_only: bool) -> Child {
    let mut args = vec!["-f", "qcow2"];
    if read_only {
        args.push("-r");
    }
    args.extend(["-c", "sleep 30000", s(img)]);
    let child = Command::new("qemu-io")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qemu-io (install qemu-utils)");
    // qemu-io has the image open (and locked) before it runs its first command; wait until
    // its locks on this file are visible.
    let inode = format!(":{} ", std::fs::metadata(img).unwrap().ino());
    for _ in 0..200 {
        let held = std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("OFDLCK") && l.contains(&inode));
        if held {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

fn qemu_img_info(img: &Path, force_share: bool) -> (bool, String) {
    let mut args = vec!["info"];
    if force_share {
        args.push("-U");
    }
    args.push(s(img));
    let out = Command::new("qemu-img").args(&args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn locked(r: Result<impl Sized, DiskError>) -> String {
    match r {
        Err(e @ DiskError::Locked { .. }) => {
            let m = e.to_string();
            assert!(!m.contains('\n') && m.contains("in use"), "{m}");
            m
        }
        Err(e) => panic!("not a lock conflict: {e}"),
        Ok(_) => panic!("opened an image another process holds"),
    }
}

#[test]
fn a_second_writer_is_refused_on_either_side() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    std::fs::write(&base, vec![7u8; 4 << 20]).unwrap();
    let pet = d.join("pet.qcow2");
    ensure_overlay(&base, &pet, Some(DiskFormat::Raw)).unwrap();

    // berth writes: a second berth (writer or reader), qemu-io and qemu-img are refused.
    let disk = open(&pet, DiskFormat::Qcow2, false);
    let m = locked(Qcow2Disk::open(&pet, false));
    assert!(m.contains("pet.qcow2"), "{m}");
    locked(Qcow2Disk::open(&pet, true));
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read 0 512", s(&pet)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("lock"),
        "qemu-io: {err}"
    );
    let (ok, err) = qemu_img_info(&pet, false);
    assert!(!ok && err.contains("lock"), "qemu-img info: {err}");
    // Looking without locks (-U) is QEMU's own way round.
    assert!(qemu_img_info(&pet, true).0);
    // The base is shared: another reader may use it, a writer may not.
    let raw = |read_only| DiskOptions {
        read_only,
        format: Some(DiskFormat::Raw),
        confine_backing: false,
    };
    let ro = open_disk(&base, raw(true)).unwrap();
    let mut b = [0u8; 512];
    ro.read_at(&mut b, 0).unwrap();
    locked(open_disk(&base, raw(false)));
    drop((disk, ro));

    // qemu-io writes: berth is refused as writer and as reader.
    let mut q = qemu_io_holding(&pet, false);
    locked(Qcow2Disk::open(&pet, false));
    locked(Qcow2Disk::open(&pet, true));
    q.kill().unwrap();
    q.wait().unwrap();
    // qemu-io reads: berth may read too, but not write.
    let mut q = qemu_io_holding(&pet, true);
    locked(Qcow2Disk::open(&pet, false));
    Qcow2Disk::open(&pet, true).unwrap();
    q.kill().unwrap();
    q.wait().unwrap();
    // Nobody left: berth writes again.
    Qcow2Disk::open(&pet, false).unwrap();
}

/// `berth overlay create` on an overlay another process writes: one line, exit code 13.
#[test]
fn the_berth_command_says_in_use_with_its_exit_code() {
    let _serial = block_util::serial();
    let Some(berth) = option_env!("CARGO_BIN_EXE_berth")
        .map(String::from)
        .or_else(|| std::env::var("BERTH_BIN").ok())
        .or_else(|| {
            // vmm's tests do not build the berth binary; use the workspace's if it is there.
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/berth");
            p.exists().then(|| p.display().to_string())
        })
    else {
        eprintln!("SKIPPED: no berth binary (cargo build first, or set BERTH_BIN)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = d.join("base.raw");
    std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
    let pet = d.join("pet.qcow2");
    ensure_overlay(&base, &pet, Some(DiskFormat::Raw)).unwrap();
    let mut q = qemu_io_holding(&pet, false);
    let out = Command::new(&berth)
        .args(["overlay", "create", "--backing", s(&base), s(&pet)])
        .output()
        .unwrap();
    q.kill().unwrap();
    q.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(13), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("in use"), "{err}");
}

/// A downloaded base image names a host file as its backing file: with confinement (the pod)
/// berth refuses it in one line and never opens the file; names inside the image's own
/// directory still work.
#[test]
fn untrusted_backing_files_stay_in_their_directory() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret_dir = d.join("secrets");
    std::fs::create_dir(&secret_dir).unwrap();
    let secret = secret_dir.join("token");
    std::fs::write(&secret, vec![0x42u8; 1 << 20]).unwrap();
    let image = d.join("image");
    std::fs::create_dir(&image).unwrap();

    let refused = |base: &Path, why: &str| {
        let pet = image.join("vm-0.qcow2");
        let e = ensure_overlay_with(base, &pet, None, true).unwrap_err();
        let m = e.to_string();
        assert!(
            matches!(e, DiskError::BackingOutside { .. }) && !m.contains('\n'),
            "{why}: {m}"
        );
        assert!(m.contains("qemu-img"), "{why}: names the fix: {m}");
        assert!(!pet.exists(), "{why}: an overlay was created");
        m
    };

    // qemu-img create -u -b /abs/secret: an absolute name outside /image.
    let abs = image.join("abs.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        s(&secret),
        "-F",
        "raw",
        s(&abs),
        "1M",
    ]);
    let m = refused(&abs, "absolute");
    assert!(m.contains("token"), "{m}");
    // A relative name climbing out.
    let rel = image.join("rel.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "../secrets/token",
        "-F",
        "raw",
        s(&rel),
        "1M",
    ]);
    refused(&rel, "relative ..");
    // A symlink inside /image that points out.
    std::os::unix::fs::symlink(&secret, image.join("link.raw")).unwrap();
    let link = image.join("link.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "link.raw",
        "-F",
        "raw",
        s(&link),
        "1M",
    ]);
    refused(&link, "symlink out");

    // Without confinement (a user's own image on a host), the old rules: it opens.
    let pet = d.join("host-pet.qcow2");
    ensure_overlay_with(&abs, &pet, None, false).unwrap();

    // Inside the directory, by relative or absolute name: fine.
    let lower = image.join("lower.raw");
    std::fs::write(&lower, vec![5u8; 1 << 20]).unwrap();
    let good = image.join("good.qcow2");
    qemu_img_overlay(&lower, "raw", &good); // absolute name of a file in /image
    let good_rel = image.join("good-rel.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "lower.raw",
        "-F",
        "raw",
        s(&good_rel),
    ]);
    for (b, name) in [(&good, "vm-1.qcow2"), (&good_rel, "vm-2.qcow2")] {
        let pet = image.join(name);
        ensure_overlay_with(b, &pet, None, true).unwrap();
        let disk = open_disk(
            &pet,
            DiskOptions {
                read_only: true,
                format: Some(DiskFormat::Qcow2),
                confine_backing: true,
            },
        )
        .unwrap();
        let mut buf = [0u8; 512];
        disk.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [5u8; 512]);
    }
}
