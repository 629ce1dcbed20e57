//! qemu-img and qemu-io as the oracle: overlays berth makes are valid and equivalent to
//! qemu-img's, data written by either side reads back identically on the other, the base is
//! never written, and the overlay reuse rules and disk order hold.

mod block_util;
mod common;

use std::path::Path;

use block_util::{
    assert_check_clean, assert_same_content, base_and_overlay, info_field, make_qcow2_base, open,
    pattern, qcow2_base, qemu_img, qemu_img_create, qemu_img_overlay, qemu_io, read_all,
    read_all_vectored, s, to_raw, write_flushed, write_vectored,
};
use common::Rng;
use vmm::block::overlay::{
    ensure_overlay, extra_disks, pet_overlay_path, root_device, OverlayState,
};
use vmm::block::{BlockBackend, DiskError, DiskFormat};

const SIZE: u64 = 8 << 20;

/// Opens the qcow2 image `path` writable through berth.
fn open_rw(path: &Path) -> Box<dyn BlockBackend> {
    open(path, DiskFormat::Qcow2, false)
}

#[test]
fn overlay_matches_qemu_img_create() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (fmt, base) in [("qcow2", d.join("base.qcow2")), ("raw", d.join("base.raw"))] {
        if fmt == "qcow2" {
            make_qcow2_base(&base, SIZE);
        } else {
            std::fs::write(&base, pattern(5, SIZE as usize + 512)).unwrap();
        }
        let ours = d.join(format!("ours-{fmt}.qcow2"));
        let theirs = d.join(format!("theirs-{fmt}.qcow2"));
        assert_eq!(
            ensure_overlay(&base, &ours, None).unwrap(),
            OverlayState::Created
        );
        qemu_img_overlay(&base, fmt, &theirs);
        assert_check_clean(&ours);
        let a = qemu_img(&["info", "--output=json", s(&ours)]);
        let b = qemu_img(&["info", "--output=json", s(&theirs)]);
        for key in [
            "virtual-size",
            "format",
            "cluster-size",
            "backing-filename",
            "full-backing-filename",
            "backing-filename-format",
            "compat",
            "lazy-refcounts",
            "refcount-bits",
            "corrupt",
            "extended-l2",
        ] {
            assert_eq!(
                info_field(&a, key),
                info_field(&b, key),
                "{fmt}: {key}\n{a}"
            );
        }
        assert_eq!(info_field(&a, "backing-filename").unwrap(), s(&base));
        assert_eq!(info_field(&a, "backing-filename-format").unwrap(), fmt);
        assert_eq!(info_field(&a, "cluster-size").unwrap(), "65536");
        // Same guest-visible content as the base.
        assert_same_content(&ours, &base, fmt);
    }
    // Nothing but the images is left in the directory (no temp files).
    let mut names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "base.qcow2",
            "base.raw",
            "ours-qcow2.qcow2",
            "ours-raw.qcow2",
            "theirs-qcow2.qcow2",
            "theirs-raw.qcow2"
        ]
    );
}

/// berth writes an overlay; plain file writes build a raw reference; qemu-img compares.
#[test]
fn berth_writes_qemu_reads() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (base, over) = base_and_overlay(d, SIZE);
    let mut reference = to_raw(&base, "qcow2", d);

    let disk = open_rw(&over);
    let mut rng = Rng(42);
    for i in 0..400u64 {
        let off = rng.below(SIZE - 1);
        let len = (1 + rng.below(200_000)).min(SIZE - off);
        let (o, l) = (off as usize, len as usize);
        match rng.below(8) {
            0 => disk.write_zeroes(off, len, false).unwrap(),
            1 => disk.discard(off, len).unwrap(),
            _ => {
                let data = pattern(i, l);
                // Half through the vectored path (straight from guest memory).
                if i.is_multiple_of(2) {
                    disk.write_at(&data, off).unwrap();
                } else {
                    write_vectored(disk.as_ref(), &data, off);
                }
                reference[o..o + l].copy_from_slice(&data);
                continue;
            }
        }
        reference[o..o + l].fill(0);
    }
    disk.flush().unwrap();
    drop(disk);

    let refpath = d.join("reference.raw");
    std::fs::write(&refpath, &reference).unwrap();
    assert_check_clean(&over);
    assert_same_content(&over, &refpath, "raw");
}

/// qemu-io writes data, zero clusters and discards; qemu-img convert -c makes compressed
/// clusters; berth reads everything like qemu-img convert does.
#[test]
fn qemu_writes_berth_reads() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = qcow2_base(d, SIZE);
    let over = d.join("over.qcow2");
    qemu_img_overlay(&base, "qcow2", &over);
    qemu_io(
        "qcow2",
        &over,
        &[
            "write -P 0xab 0 1M",
            "write -z 2M 128k",
            "write -z 196608 65536",
            "write -P 0xcd 65000 70000",
            "discard 3M 256k",
            "write -P 0xef 8323072 65536",
        ],
    );
    let map = qemu_img(&["map", "--output=json", s(&over)]);
    assert!(map.contains("\"zero\": true"), "no zero clusters: {map}");
    let expect = to_raw(&over, "qcow2", d);
    assert!(expect[2 << 20..(2 << 20) + 131072].iter().all(|&b| b == 0));
    assert!(read_all(&over, DiskFormat::Qcow2) == expect, "overlay");
    assert!(
        read_all_vectored(&over, DiskFormat::Qcow2) == expect,
        "overlay, vectored"
    );

    // Compressed: every cluster of the flattened image goes through deflate.
    let comp = d.join("compressed.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", s(&over), s(&comp)]);
    assert_check_clean(&comp);
    let info = qemu_img(&["check", "--output=json", s(&comp)]);
    let compressed: u64 = info_field(&info, "compressed-clusters")
        .unwrap()
        .parse()
        .unwrap();
    assert!(compressed > 10, "{info}");
    assert!(read_all(&comp, DiskFormat::Qcow2) == expect, "compressed");
    assert!(
        read_all_vectored(&comp, DiskFormat::Qcow2) == expect,
        "compressed, vectored"
    );

    // A compressed base under a berth overlay, with writes partly over compressed clusters.
    let top = d.join("top.qcow2");
    ensure_overlay(&comp, &top, None).unwrap();
    let data = pattern(9, 100_000);
    write_flushed(&top, 30_000, &data);
    let mut want = expect;
    want[30_000..130_000].copy_from_slice(&data);
    // And straight from guest memory, partly over compressed clusters of the base.
    let more = pattern(10, 150_000);
    {
        let disk = open_rw(&top);
        write_vectored(disk.as_ref(), &more, 1_000_000);
        disk.flush().unwrap();
    }
    want[1_000_000..1_150_000].copy_from_slice(&more);
    assert!(
        read_all(&top, DiskFormat::Qcow2) == want,
        "overlay on compressed"
    );
    assert!(
        to_raw(&top, "qcow2", d) == want,
        "qemu view of overlay on compressed"
    );
}

#[test]
fn base_is_never_written() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = qcow2_base(d, SIZE);
    // Taken before the overlay is made: making it must not touch the base either.
    let before = std::fs::read(&base).unwrap();
    let mtime = std::fs::metadata(&base).unwrap().modified().unwrap();
    let over = d.join("over.qcow2");
    ensure_overlay(&base, &over, None).unwrap();
    let disk = open_rw(&over);
    let mut rng = Rng(7);
    for i in 0..2000u64 {
        let off = rng.below(SIZE - 1);
        let len = (1 + rng.below(300_000)).min(SIZE - off);
        match rng.below(6) {
            0 => disk.write_zeroes(off, len, rng.below(2) == 0).unwrap(),
            1 => disk.discard(off, len).unwrap(),
            _ => disk.write_at(&pattern(i, len as usize), off).unwrap(),
        }
        if i % 100 == 0 {
            disk.flush().unwrap();
        }
    }
    disk.flush().unwrap();
    drop(disk);
    assert!(
        std::fs::read(&base).unwrap() == before,
        "base content changed"
    );
    assert_eq!(std::fs::metadata(&base).unwrap().modified().unwrap(), mtime);
    assert_check_clean(&over);
}

#[test]
fn overlay_reuse_and_refusals() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (base, over) = base_and_overlay(d, SIZE);
    write_flushed(&over, 12345, b"pet data");
    // Reused, data kept, also when named through another path to the same base.
    let alias = d.join("alias.qcow2");
    std::os::unix::fs::symlink(&base, &alias).unwrap();
    assert_eq!(
        ensure_overlay(&alias, &over, None).unwrap(),
        OverlayState::Reused
    );
    let mut buf = [0u8; 8];
    open_rw(&over).read_at(&mut buf, 12345).unwrap();
    assert_eq!(&buf, b"pet data");
    // An overlay made by qemu-img with a relative backing name is recognised too.
    let rel = d.join("rel.qcow2");
    qemu_img_overlay(Path::new("base.qcow2"), "qcow2", &rel);
    assert_eq!(
        ensure_overlay(&base, &rel, None).unwrap(),
        OverlayState::Reused
    );

    let other = d.join("other.qcow2");
    make_qcow2_base(&other, SIZE);
    let e = ensure_overlay(&other, &over, None).unwrap_err();
    assert!(matches!(e, DiskError::BackingMismatch { .. }), "{e}");
    assert!(e.to_string().contains("base.qcow2") && e.to_string().contains("other.qcow2"));
    // Recorded as raw but the base is qcow2: also a mismatch.
    let asraw = d.join("asraw.qcow2");
    qemu_img_overlay(&base, "raw", &asraw);
    let e = ensure_overlay(&base, &asraw, None).unwrap_err();
    assert!(matches!(e, DiskError::BackingMismatch { .. }), "{e}");

    let flat = d.join("flat.qcow2");
    qemu_img_create(&flat, "1M");
    let e = ensure_overlay(&base, &flat, None).unwrap_err();
    assert!(e.to_string().contains("no backing file"), "{e}");

    let junk = d.join("junk.qcow2");
    std::fs::write(&junk, vec![1u8; 4096]).unwrap();
    let e = ensure_overlay(&base, &junk, None).unwrap_err();
    assert!(matches!(e, DiskError::NotQcow2(_)), "{e}");
    assert_eq!(
        std::fs::read(&junk).unwrap(),
        vec![1u8; 4096],
        "junk replaced"
    );

    let moved = d.join("moved.qcow2");
    std::fs::rename(&base, &moved).unwrap();
    let e = ensure_overlay(&moved, &over, None).unwrap_err();
    assert!(matches!(e, DiskError::BackingMissing { .. }), "{e}");
    let e = ensure_overlay(&moved, &d.join("nodir/x.qcow2"), None).unwrap_err();
    assert!(!e.to_string().contains('\n'), "{e}");
    assert!(
        ensure_overlay(&base, &d.join("new.qcow2"), None).is_err(),
        "missing base"
    );
    assert!(!d.join("new.qcow2").exists());
}

#[test]
fn disk_listing_follows_the_contract() {
    let _serial = block_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    assert_eq!(extra_disks(root).unwrap(), Vec::<std::path::PathBuf>::new());
    assert_eq!(root_device(root), None);
    std::fs::create_dir_all(root.join("volumes/sub.img")).unwrap();
    std::fs::create_dir_all(root.join("dev/vm")).unwrap();
    for f in [
        "volumes/b.img",
        "volumes/a.img",
        "volumes/c.raw",
        "volumes/.h.img",
        "volumes/B.img",
    ] {
        std::fs::write(root.join(f), b"").unwrap();
    }
    for f in [
        "dev/vm/disk2",
        "dev/vm/disk10",
        "dev/vm/root",
        "dev/vm/other",
    ] {
        std::fs::write(root.join(f), b"").unwrap();
    }
    std::os::unix::fs::symlink("/nonexistent", root.join("dev/vm/disk1")).unwrap();
    let got: Vec<_> = extra_disks(root)
        .unwrap()
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        got,
        [
            "volumes/B.img",
            "volumes/a.img",
            "volumes/b.img",
            "dev/vm/disk1",
            "dev/vm/disk10",
            "dev/vm/disk2"
        ]
    );
    assert_eq!(root_device(root), Some(root.join("dev/vm/root")));
    assert_eq!(
        pet_overlay_path(root, "vm-0"),
        Some(root.join("image/vm-0.qcow2"))
    );
    assert_eq!(pet_overlay_path(root, "../x"), None);
    assert_eq!(pet_overlay_path(root, ""), None);
}
