//! Image locking compatible with QEMU's: open file description (OFD) byte-range locks on the
//! image file, so that berth, `qemu-img`, `qemu-io` and QEMU itself see each other.
//!
//! QEMU's `file-posix` driver expresses what a user of an image does (its *permissions*) and
//! what it lets others do (its *shared permissions*) as shared locks on single bytes: byte
//! `100 + i` while it holds permission bit `i`, byte `200 + i` while it does **not** share
//! permission bit `i`. Before taking a permission it asks (`F_OFD_GETLK`) whether anyone else
//! holds the "does not share" byte of that permission, and before refusing to share one, whether
//! anyone holds it. Every lock taken is a read lock, so users that agree never block each other.
//!
//! berth's users: a writer holds CONSISTENT_READ, WRITE and RESIZE and shares only
//! CONSISTENT_READ and WRITE_UNCHANGED (like a QEMU guest disk or `qemu-img` writing a qcow2);
//! a reader holds CONSISTENT_READ and does not share WRITE or RESIZE (like a QEMU read-only or
//! backing-file user). So any number of readers can share a base image, and a second writer,
//! or a writer next to a reader, is refused on either side.
//!
//! The locks live as long as the open file description, i.e. until the last descriptor of
//! the file berth opened is closed; they are never inherited by another process's open.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::DiskError;

/// QEMU's `RAW_LOCK_PERM_BASE`: byte `100 + i` is held by users holding permission bit `i`.
const PERM_BASE: i64 = 100;
/// QEMU's `RAW_LOCK_SHARED_BASE`: byte `200 + i` is held by users not sharing permission `i`.
const SHARED_BASE: i64 = 200;

/// QEMU's block permission bits, in bit order (`BLK_PERM_*`).
const PERMS: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
const CONSISTENT_READ: u32 = 1 << 0;
const WRITE: u32 = 1 << 1;
const WRITE_UNCHANGED: u32 = 1 << 2;
const RESIZE: u32 = 1 << 3;
const ALL: u32 = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE;

/// What berth holds and shares for a writer or a reader.
fn perms(writable: bool) -> (u32, u32) {
    let shared = CONSISTENT_READ | WRITE_UNCHANGED;
    if writable {
        (CONSISTENT_READ | WRITE | RESIZE, shared)
    } else {
        (CONSISTENT_READ, shared)
    }
}

/// Takes QEMU-compatible locks on `file` (the image at `path`) for a writer or a reader.
/// Another user whose permissions conflict gives [`DiskError::Locked`]. File systems without
/// OFD locks (some network file systems) give [`DiskError::Io`] naming the problem: berth
/// refuses to write a pet it cannot protect from a second writer.
pub fn lock_image(file: &File, path: &Path, writable: bool) -> Result<(), DiskError> {
    let (perm, shared) = perms(writable);
    let io = |e: io::Error| DiskError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(e.kind(), format!("cannot lock the image ({e})")),
    };
    // Take our bytes first, then look for conflicts: two users checking at once then both see
    // each other (one of them may refuse needlessly, neither proceeds wrongly).
    for (i, _) in PERMS.iter().enumerate() {
        let bit = 1 << i;
        if perm & bit != 0 {
            set_lock(file, PERM_BASE + i as i64).map_err(io)?;
        }
        if ALL & !shared & bit != 0 {
            set_lock(file, SHARED_BASE + i as i64).map_err(io)?;
        }
    }
    for (i, name) in PERMS.iter().enumerate() {
        let bit = 1 << i;
        let conflict =
            if perm & bit != 0 && held_by_other(file, SHARED_BASE + i as i64).map_err(io)? {
                // Someone does not let others hold this permission.
                true
            } else {
                // We do not share it, and someone holds it.
                ALL & !shared & bit != 0 && held_by_other(file, PERM_BASE + i as i64).map_err(io)?
            };
        if conflict {
            unlock_all(file);
            return Err(DiskError::Locked {
                path: path.to_path_buf(),
                what: (*name).into(),
                writable,
            });
        }
    }
    Ok(())
}

fn flock(kind: libc::c_short, byte: i64) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

fn set_lock(file: &File, byte: i64) -> io::Result<()> {
    let fl = flock(libc::F_RDLCK as libc::c_short, byte);
    // SAFETY: F_OFD_SETLK reads the valid flock struct.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `byte` (ours never conflict).
fn held_by_other(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: F_OFD_GETLK reads and writes the valid flock struct.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

fn unlock_all(file: &File) {
    let mut fl = flock(libc::F_UNLCK as libc::c_short, PERM_BASE);
    fl.l_len = SHARED_BASE + PERMS.len() as i64 - PERM_BASE;
    // SAFETY: F_OFD_SETLK reads the valid flock struct; failure leaves locks that go away
    // with the file anyway.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn open(path: &Path, write: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    #[test]
    fn readers_share_writers_exclude() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let (r1, r2) = (open(&p, false), open(&p, false));
        lock_image(&r1, &p, false).unwrap();
        lock_image(&r2, &p, false).unwrap();
        let w = open(&p, true);
        let e = lock_image(&w, &p, true).unwrap_err();
        assert!(matches!(e, DiskError::Locked { .. }), "{e}");
        drop((r1, r2));
        lock_image(&w, &p, true).unwrap();
        let w2 = open(&p, true);
        assert!(matches!(
            lock_image(&w2, &p, true),
            Err(DiskError::Locked { .. })
        ));
        let r3 = open(&p, false);
        assert!(matches!(
            lock_image(&r3, &p, false),
            Err(DiskError::Locked { .. })
        ));
        // A refused user leaves no lock behind: once the writer is gone, both work.
        drop(w);
        lock_image(&r3, &p, false).unwrap();
    }
}
