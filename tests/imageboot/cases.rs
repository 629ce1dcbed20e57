//! Layout variants (Ubuntu-style separate /boot, BLS, MBR with logical partitions, whole-disk
//! file systems), refusals, and Debian's cloud image when guest-images/debian-cloud.sh has
//! built it.

use std::fs;
use std::path::Path;

use crate::util::{disk, ext4, extracted, fake, have, inspect, run, Part, TempDir, Tree};
use crate::{BOOT_UUID, UUID};

const UBUNTU_CFG: &str = r#"
set default="0"
function recordfail {
  set recordfail=1
  if [ -n "${have_grubenv}" ]; then if [ -z "${boot_once}" ]; then save_env recordfail; fi; fi
}
if [ "${recordfail}" = 1 ] ; then
  set timeout=30
else
  set timeout=0
fi
set linux_gfx_mode=keep
export linux_gfx_mode
if [ "${linux_gfx_mode}" != "text" ]; then set vt_handoff=vt.handoff=7; else set vt_handoff=; fi
menuentry 'Ubuntu' --class ubuntu --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-ROOT' {
	recordfail
	load_video
	gfxmode $linux_gfx_mode
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root BOOT
	linux	/vmlinuz-6.8.0-45-generic root=LABEL=cloudimg-rootfs ro  console=tty1 console=ttyS0 $vt_handoff
	initrd	/initrd.img-6.8.0-45-generic
}
"#;

#[test]
fn ubuntu_style_separate_boot_partition() {
    let d = TempDir::new("ubuntu");
    let cfg = UBUNTU_CFG.replace("BOOT", BOOT_UUID).replace("ROOT", UUID);
    let boot = Tree::new(&d, "boot");
    boot.fake("/vmlinuz-6.8.0-45-generic")
        .fake("/initrd.img-6.8.0-45-generic")
        .fake("/vmlinuz-6.8.0-40-generic")
        .link("/vmlinuz", "vmlinuz-6.8.0-45-generic")
        .file("/grub/grub.cfg", cfg.as_bytes());
    let root = Tree::new(&d, "root");
    root.os_root().file(
        "/etc/fstab",
        b"LABEL=cloudimg-rootfs / ext4 defaults 0 1\nLABEL=BOOT /boot ext4 defaults 0 2\n",
    );
    ext4(&boot, &d.join("boot.ext4"), 8, BOOT_UUID, "BOOT");
    ext4(&root, &d.join("root.ext4"), 8, UUID, "cloudimg-rootfs");
    let img = d.join("disk.raw");
    disk(
        &img,
        "gpt",
        &[
            Part {
                contents: Some(&d.join("root.ext4")),
                mib: 8,
                sfdisk_type: "L",
            },
            Part {
                contents: Some(&d.join("boot.ext4")),
                mib: 8,
                sfdisk_type: "BC13C2FF-59E6-4262-A352-B275FD6F7172",
            },
            Part {
                contents: None,
                mib: 2,
                sfdisk_type: "U",
            },
        ],
    );
    let (k, i, c) = extracted(&inspect(&img, &d.join("x"), &[]), &d.join("x"));
    assert_eq!(k, fake("/vmlinuz-6.8.0-45-generic", 40_000));
    assert_eq!(i.unwrap(), fake("/initrd.img-6.8.0-45-generic", 40_000));
    assert_eq!(
        c,
        "root=LABEL=cloudimg-rootfs ro console=tty1 vt.handoff=7 console=ttyS0,115200"
    );
}

#[test]
fn bls_entries_newest_version_wins() {
    let d = TempDir::new("bls");
    let t = Tree::new(&d, "t");
    t.os_root()
        .fake("/boot/vmlinuz-6.5.6-300.fc39.x86_64")
        .fake("/boot/vmlinuz-6.10.3-200.fc40.x86_64")
        .fake("/boot/initramfs-6.10.3-200.fc40.x86_64.img")
        .file("/boot/loader/entries/abc-6.5.6-300.fc39.x86_64.conf",
              b"title Fedora (6.5.6)\nversion 6.5.6-300.fc39.x86_64\nlinux /boot/vmlinuz-6.5.6-300.fc39.x86_64\noptions root=UUID=old ro\n")
        .file("/boot/loader/entries/abc-6.10.3-200.fc40.x86_64.conf",
              b"title Fedora (6.10.3)\nversion 6.10.3-200.fc40.x86_64\nlinux /boot/vmlinuz-6.10.3-200.fc40.x86_64\ninitrd /boot/initramfs-6.10.3-200.fc40.x86_64.img\noptions root=UUID=new ro rootflags=subvol=root console=ttyS0,115200n8\n")
        // A grub.cfg that only says "use BLS" has no menuentry: BLS decides.
        .file("/boot/grub2/grub.cfg", b"set default=\"${saved_entry}\"\ninsmod blscfg\nblscfg\n");
    ext4(&t, &d.join("root.ext4"), 8, UUID, "");
    let img = d.join("disk.raw");
    disk(
        &img,
        "gpt",
        &[Part {
            contents: Some(&d.join("root.ext4")),
            mib: 8,
            sfdisk_type: "L",
        }],
    );
    let (k, i, c) = extracted(&inspect(&img, &d.join("x"), &[]), &d.join("x"));
    assert_eq!(k, fake("/boot/vmlinuz-6.10.3-200.fc40.x86_64", 40_000));
    assert_eq!(
        i.unwrap(),
        fake("/boot/initramfs-6.10.3-200.fc40.x86_64.img", 40_000)
    );
    assert_eq!(
        c,
        "root=UUID=new ro rootflags=subvol=root console=tty0 console=ttyS0,115200"
    );
}

#[test]
fn mbr_symlinks_relative_and_absolute_beat_a_newer_kernel() {
    let d = TempDir::new("mbr");
    let t = Tree::new(&d, "t");
    t.os_root()
        .fake("/boot/vmlinuz-6.1.0-10-amd64")
        .fake("/boot/initrd.img-6.1.0-10-amd64")
        .fake("/boot/vmlinuz-6.1.0-11-amd64")
        .link("/vmlinuz", "boot/vmlinuz-6.1.0-10-amd64")
        .link("/initrd.img", "/boot/initrd.img-6.1.0-10-amd64");
    ext4(&t, &d.join("root.ext4"), 8, UUID, "");
    let img = d.join("disk.raw");
    disk(
        &img,
        "dos",
        &[Part {
            contents: Some(&d.join("root.ext4")),
            mib: 8,
            sfdisk_type: "83",
        }],
    );
    let (k, i, c) = extracted(&inspect(&img, &d.join("x"), &[]), &d.join("x"));
    assert_eq!(k, fake("/boot/vmlinuz-6.1.0-10-amd64", 40_000));
    assert_eq!(i.unwrap(), fake("/boot/initrd.img-6.1.0-10-amd64", 40_000));
    assert_eq!(
        c,
        format!("root=UUID={UUID} ro console=tty0 console=ttyS0,115200")
    );
}

#[test]
fn whole_disk_filesystem_newest_kernel_by_version() {
    let d = TempDir::new("whole");
    let t = Tree::new(&d, "t");
    t.os_root()
        .fake("/boot/vmlinuz-5.10.0-30-amd64")
        .fake("/boot/vmlinuz-6.1.0-9-amd64")
        .fake("/boot/vmlinuz-6.1.0-10-amd64")
        .fake("/boot/initrd.img-6.1.0-9-amd64")
        .fake("/boot/initrd.img-6.1.0-10-amd64");
    let img = d.join("fs.raw");
    ext4(&t, &img, 8, UUID, "");
    let (k, i, _) = extracted(&inspect(&img, &d.join("x"), &[]), &d.join("x"));
    assert_eq!(k, fake("/boot/vmlinuz-6.1.0-10-amd64", 40_000));
    assert_eq!(i.unwrap(), fake("/boot/initrd.img-6.1.0-10-amd64", 40_000));
}

#[test]
fn mbr_logical_boot_partition_through_root_symlinks() {
    let d = TempDir::new("logical");
    let boot = Tree::new(&d, "boot");
    boot.fake("/vmlinuz-6.1.0-10-amd64")
        .fake("/initrd.img-6.1.0-10-amd64");
    let root = Tree::new(&d, "root");
    // /vmlinuz in the root fs points into /boot, which is another (logical) partition.
    root.os_root()
        .link("/vmlinuz", "boot/vmlinuz-6.1.0-10-amd64")
        .link("/initrd.img", "/boot/./initrd.img-6.1.0-10-amd64")
        .file(
            "/etc/fstab",
            format!("UUID={BOOT_UUID} /boot ext4 defaults 0 2\n").as_bytes(),
        );
    ext4(&boot, &d.join("boot.ext4"), 4, BOOT_UUID, "");
    ext4(&root, &d.join("root.ext4"), 4, UUID, "");
    let img = d.join("disk.raw");
    let none = |mib| Part {
        contents: None,
        mib,
        sfdisk_type: "82",
    };
    disk(
        &img,
        "dos",
        &[
            Part {
                contents: Some(&d.join("root.ext4")),
                mib: 4,
                sfdisk_type: "83",
            },
            none(1),
            none(1),
            none(1),
            Part {
                contents: Some(&d.join("boot.ext4")),
                mib: 4,
                sfdisk_type: "83",
            },
        ],
    );
    let out = inspect(&img, &d.join("x"), &[]);
    let (k, i, _) = extracted(&out, &d.join("x"));
    assert_eq!(k, fake("/vmlinuz-6.1.0-10-amd64", 40_000));
    assert_eq!(i.unwrap(), fake("/initrd.img-6.1.0-10-amd64", 40_000));
}

/// A disk whose only data partition holds `fs` (a file made by `make`).
fn refused(tag: &str, make: impl FnOnce(&Path)) -> (i32, String) {
    let d = TempDir::new(tag);
    let fsimg = d.join("part");
    make(&fsimg);
    let mib = fs::metadata(&fsimg).unwrap().len().div_ceil(1 << 20);
    let img = d.join("disk.raw");
    disk(
        &img,
        "gpt",
        &[
            Part {
                contents: None,
                mib: 2,
                sfdisk_type: "U",
            },
            Part {
                contents: Some(&fsimg),
                mib,
                sfdisk_type: "L",
            },
        ],
    );
    let out = inspect(&img, &d.join("x"), &[]);
    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!msg.contains("panicked"), "{msg}");
    (out.status.code().unwrap_or(-1), msg)
}

/// Makes an empty file and writes `magic` at `offset` (when the mkfs tool is missing).
fn forged(path: &Path, mib: u64, offset: u64, magic: &[u8]) {
    let f = fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, magic, offset).unwrap();
}

#[test]
fn xfs_btrfs_lvm_and_kernel_less_images_are_refused_with_what_was_found() {
    let (code, msg) = refused("xfs", |p| {
        if have("mkfs.xfs") {
            fs::File::create(p).unwrap().set_len(300 << 20).unwrap();
            run(std::process::Command::new("mkfs.xfs")
                .args(["-q", "-f"])
                .arg(p)
                .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"));
        } else {
            forged(p, 16, 0, b"XFSB");
        }
    });
    assert_eq!(code, 5, "{msg}");
    for word in [
        "xfs",
        "partition 2",
        "EFI system",
        "KERNEL=",
        "INITRD=",
        "KERNEL_CMDLINE=",
    ] {
        assert!(msg.contains(word), "{word} not in: {msg}");
    }
    let (code, msg) = refused("btrfs", |p| {
        if have("mkfs.btrfs") {
            fs::File::create(p).unwrap().set_len(128 << 20).unwrap();
            run(std::process::Command::new("mkfs.btrfs")
                .args(["-q", "-f"])
                .arg(p)
                .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"));
        } else {
            forged(p, 16, 0x10040, b"_BHRfS_M");
        }
    });
    assert_eq!(code, 5, "{msg}");
    assert!(msg.contains("btrfs") && msg.contains("KERNEL="), "{msg}");
    let (code, msg) = refused("lvm", |p| {
        forged(p, 4, 512, b"LABELONE");
        let f = fs::OpenOptions::new().write(true).open(p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"LVM2 001", 512 + 24).unwrap();
    });
    assert_eq!(code, 5, "{msg}");
    assert!(msg.contains("LVM2 physical volume"), "{msg}");
    let (code, msg) = refused("nokernel", |p| {
        let d = TempDir::new("nokernel-tree");
        let t = Tree::new(&d, "t");
        t.os_root().file("/etc/hostname", b"x\n");
        ext4(&t, p, 4, UUID, "");
    });
    assert_eq!(code, 5, "{msg}");
    assert!(
        msg.contains("no kernel found") && msg.contains("ext4"),
        "{msg}"
    );
}

#[test]
fn missing_and_unreadable_images() {
    let d = TempDir::new("missing");
    let out = inspect(&d.join("nope.qcow2"), &d.join("x"), &[]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    // A qcow2 overlay whose base is gone.
    let t = Tree::new(&d, "t");
    t.os_root();
    ext4(&t, &d.join("base.raw"), 4, UUID, "");
    let berth = env!("CARGO_BIN_EXE_berth");
    run(std::process::Command::new(berth)
        .args(["overlay", "create", "--backing"])
        .arg(d.join("base.raw"))
        .arg(d.join("pet.qcow2")));
    fs::remove_file(d.join("base.raw")).unwrap();
    let out = inspect(&d.join("pet.qcow2"), &d.join("x"), &[]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("backing file"));
}

/// Debian's cloud image from guest-images/debian-cloud.sh (built there as root, ~80 s): its
/// own grub.cfg gives root=UUID=<the root fs>. Skipped (with a note) when the image was not
/// built; BERTH_DEBIAN_CLOUD=build builds it first.
#[test]
fn debian_cloud_image() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = std::env::var_os("BERTH_CACHE").map_or(repo.join(".cache"), Into::into);
    let info = cache.join("debian-cloud/debian-12-cloud.qcow2.info");
    if std::env::var("BERTH_DEBIAN_CLOUD").as_deref() == Ok("build") {
        run(&mut std::process::Command::new(
            repo.join("guest-images/debian-cloud.sh"),
        ));
    }
    let Ok(text) = fs::read_to_string(&info) else {
        eprintln!("note: {} missing: run guest-images/debian-cloud.sh (as root) to test the Debian cloud image", info.display());
        return;
    };
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_owned()
    };
    let (image, uuid, kver) = (
        get("DEBIAN_CLOUD_IMAGE"),
        get("DEBIAN_CLOUD_ROOT_UUID"),
        get("DEBIAN_CLOUD_KVER"),
    );
    let d = TempDir::new("debian-cloud");
    let out = inspect(Path::new(&image), &d.join("x"), &[]);
    let (k, i, c) = extracted(&out, &d.join("x"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("/boot/vmlinuz-{kver}")),
        "{report}"
    );
    assert!(report.contains("grub.cfg"), "{report}");
    assert_eq!(&k[0x202..0x206], b"HdrS", "a bzImage");
    assert!(i.unwrap().len() > 1 << 20);
    assert!(c.starts_with(&format!("root=UUID={uuid} ro ")), "{c}");
    assert!(c.ends_with(" console=ttyS0,115200"), "{c}");
    assert_eq!(c.matches("console=ttyS0").count(), 1, "{c}");
}
