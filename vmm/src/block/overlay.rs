//! The pet overlay (`/image/$HOSTNAME.qcow2` on the base image) and the contract's disk list.
//!
//! An overlay is made like `qemu-img create -f qcow2 -b BASE -F FMT OUT`: qcow2 v3, 64 KiB
//! clusters, the base's virtual size, the base's absolute path and format in the header. It is
//! built under a temporary name in the same directory, fsynced, renamed into place without
//! replacing anything, and the directory fsynced: after a crash there is either no overlay or
//! a complete one. An existing overlay is reused only if its backing file is the configured
//! base.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, StorageOpenOptions};

use super::qcow2::{
    read_header, recorded_backing_format, resolve_backing, Qcow2Disk, Qcow2Options,
};
use super::{detect_format, open_disk, BlockBackend, DiskError, DiskFormat, DiskOptions};

/// qemu-img's default cluster size, used for new overlays.
pub const OVERLAY_CLUSTER_SIZE: usize = 64 * 1024;

/// What [`ensure_overlay`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverlayState {
    /// A new, empty overlay was created.
    Created,
    /// An existing overlay on the same base was kept.
    Reused,
}

/// Creates the overlay `overlay` on `base` unless it exists; an existing one must be a qcow2
/// image whose backing file is `base`. `base_format` `None` probes the base (the base is never
/// written by a guest, so probing it is safe). Backing names are trusted; see
/// [`ensure_overlay_with`].
pub fn ensure_overlay(
    base: &Path,
    overlay: &Path,
    base_format: Option<DiskFormat>,
) -> Result<OverlayState, DiskError> {
    ensure_overlay_with(base, overlay, base_format, false).map(|(state, _)| state)
}

/// [`ensure_overlay`], with `confine_backing` for an untrusted (downloaded) base: its own
/// backing files must live beneath its directory. Also returns what the check did that the
/// user should hear about (a repair of an overlay left dirty by a crash), one line each.
pub fn ensure_overlay_with(
    base: &Path,
    overlay: &Path,
    base_format: Option<DiskFormat>,
    confine_backing: bool,
) -> Result<(OverlayState, Vec<String>), DiskError> {
    if overlay.symlink_metadata().is_ok() {
        let notes = check_overlay_with(base, overlay, base_format, confine_backing)?;
        return Ok((OverlayState::Reused, notes));
    }
    match create_overlay(base, overlay, base_format, confine_backing) {
        // Someone else created it between our check and our rename: judge theirs.
        Err(DiskError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
            let notes = check_overlay_with(base, overlay, base_format, confine_backing)?;
            Ok((OverlayState::Reused, notes))
        }
        other => other.map(|()| (OverlayState::Created, Vec::new())),
    }
}

/// Checks that the existing `overlay` is a usable qcow2 image backed by `base`.
pub fn check_overlay(
    base: &Path,
    overlay: &Path,
    base_format: Option<DiskFormat>,
) -> Result<(), DiskError> {
    check_overlay_with(base, overlay, base_format, false).map(drop)
}

/// [`check_overlay`]: the overlay is opened for writing once (locked: no other process may
/// use it), so one left dirty by a crash is repaired now, and closed cleanly. Returns the
/// repair notes.
fn check_overlay_with(
    base: &Path,
    overlay: &Path,
    base_format: Option<DiskFormat>,
    confine_backing: bool,
) -> Result<Vec<String>, DiskError> {
    let file = File::open(overlay).map_err(|e| DiskError::io(overlay, e, false))?;
    let header = read_header(overlay, &file)?;
    let mismatch = |actual: String| DiskError::BackingMismatch {
        overlay: overlay.to_path_buf(),
        actual,
        expected: base.to_path_buf(),
    };
    let Some(name) = header.backing_file else {
        return Err(mismatch("no backing file".into()));
    };
    let backing = resolve_backing(overlay, &name);
    let Ok(actual) = backing.canonicalize() else {
        return Err(DiskError::BackingMissing {
            path: overlay.to_path_buf(),
            backing,
        });
    };
    let expected = base
        .canonicalize()
        .map_err(|e| DiskError::io(base, e, false))?;
    if actual != expected {
        return Err(mismatch(backing.display().to_string()));
    }
    let format = base_format_of(base, base_format)?;
    match recorded_backing_format(overlay)? {
        Some(f) if f != format.name() && !(f == "file" && format == DiskFormat::Raw) => {
            return Err(mismatch(format!("{} as {f}", backing.display())));
        }
        _ => {}
    }
    // Opening the whole chain surfaces unsupported features, damage, a second user or a
    // base reaching outside its directory now rather than when the VM starts.
    let mut disk = Qcow2Disk::open_with(
        overlay,
        &Qcow2Options {
            read_only: false,
            confine_backing,
            observer: None,
        },
    )?;
    Ok(disk.take_notes())
}

fn base_format_of(base: &Path, declared: Option<DiskFormat>) -> Result<DiskFormat, DiskError> {
    match declared {
        Some(f) => Ok(f),
        None => {
            let f = File::open(base).map_err(|e| DiskError::io(base, e, false))?;
            detect_format(&f).map_err(|e| DiskError::io(base, e, false))
        }
    }
}

/// Creates `overlay` on `base` atomically; fails with `AlreadyExists` if `overlay` exists.
pub fn create_overlay(
    base: &Path,
    overlay: &Path,
    base_format: Option<DiskFormat>,
    confine_backing: bool,
) -> Result<(), DiskError> {
    let format = base_format_of(base, base_format)?;
    let size = open_disk(
        base,
        DiskOptions {
            read_only: true,
            format: Some(format),
            confine_backing,
        },
    )?
    .size();
    // The header records the base's absolute path so the overlay works from any directory.
    let backing = std::path::absolute(base).map_err(|e| DiskError::io(base, e, false))?;
    let backing = backing
        .to_str()
        .ok_or_else(|| DiskError::Unsupported {
            path: base.to_path_buf(),
            what: "a base path that is not UTF-8".into(),
        })?
        .to_owned();

    let dir = match overlay.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = overlay.file_name().ok_or_else(|| DiskError::Io {
        path: overlay.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        String::from_utf8_lossy(name.as_bytes()),
        std::process::id()
    ));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskError::Io { path, source }
    };

    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| DiskError::io(&tmp, e, true))?;
        let sync_handle = file.try_clone().map_err(io_err(&tmp))?;
        let opts = StorageOpenOptions::new().write(true).filename(&tmp);
        let storage = ImagoFile::from_open_file(file, opts).map_err(io_err(&tmp))?;
        Qcow2::<ImagoFile>::create_builder(storage)
            .size(size)
            .backing(backing.clone(), format.name().into())
            .cluster_size(OVERLAY_CLUSTER_SIZE)
            .create()
            .map_err(io_err(&tmp))?;
        sync_handle.sync_all().map_err(io_err(&tmp))?;
        rename_noreplace(&tmp, overlay).map_err(io_err(overlay))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    // File systems without RENAME_NOREPLACE: link fails if `to` exists, like the rename would.
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// The pet overlay's path, `<root>/image/<hostname>.qcow2`; `None` if `hostname` cannot be a
/// file name.
pub fn pet_overlay_path(root: &Path, hostname: &str) -> Option<PathBuf> {
    let bad = hostname.is_empty() || hostname.starts_with('.') || hostname.contains('/');
    (!bad).then(|| root.join("image").join(format!("{hostname}.qcow2")))
}

/// `<root>/dev/vm/root` if it exists: then it is the raw root disk instead of any image.
pub fn root_device(root: &Path) -> Option<PathBuf> {
    let p = root.join("dev/vm/root");
    p.exists().then_some(p)
}

/// The extra raw disks in the contract's order: `<root>/volumes/*.img` sorted, then
/// `<root>/dev/vm/disk*` sorted. Sorting is by bytes, like a shell glob in the C locale (so
/// `disk10` comes before `disk2`); hidden files and directories are skipped, as a glob would
/// skip the former and QEMU could not attach the latter.
pub fn extra_disks(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut disks = matching(&root.join("volumes"), |n| n.ends_with(b".img"))?;
    disks.extend(matching(&root.join("dev/vm"), |n| n.starts_with(b"disk"))?);
    Ok(disks)
}

fn matching(dir: &Path, want: impl Fn(&[u8]) -> bool) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let n = name.as_bytes();
        if n.starts_with(b".") || !want(n) {
            continue;
        }
        // Follows symlinks: /dev/vm/disk* are usually links to block devices.
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() || m.file_type().is_block_device() => out.push(path),
            Ok(_) => {}
            // A dangling link is still listed, so opening it later reports the problem.
            Err(e) if e.kind() == io::ErrorKind::NotFound => out.push(path),
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    Ok(out)
}
