//! The files of one download in the image directory, next to the target `NAME`:
//!
//! - `.NAME.part`: the bytes received so far; renamed to `NAME` only once complete (and
//!   verified), so `NAME` existing means a finished download;
//! - `.NAME.part.validator`: the ETag or Last-Modified of the response that started the part,
//!   sent back as `If-Range` so a changed image restarts instead of being spliced;
//! - `.NAME.lock`: flock(2)ed while downloading, so pods sharing the volume take turns.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::FetchError;

/// The paths of one download.
#[derive(Debug, Clone)]
pub struct PartFiles {
    /// The final image.
    pub target: PathBuf,
    /// The bytes received so far.
    pub part: PathBuf,
    /// The validator of the response that began `part`.
    pub validator: PathBuf,
    /// The lock file.
    pub lock: PathBuf,
}

impl PartFiles {
    /// The companion files of `target` (which has a parent directory and a file name).
    pub fn new(target: &Path) -> Self {
        let dir = target.parent().unwrap_or(Path::new("."));
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        PartFiles {
            target: target.to_path_buf(),
            part: dir.join(format!(".{name}.part")),
            validator: dir.join(format!(".{name}.part.validator")),
            lock: dir.join(format!(".{name}.lock")),
        }
    }

    fn dir(&self) -> &Path {
        self.target.parent().unwrap_or(Path::new("."))
    }

    /// Bytes already in the part file (0 if there is none).
    pub fn part_len(&self) -> u64 {
        fs::metadata(&self.part).map(|m| m.len()).unwrap_or(0)
    }

    /// The saved validator, if the part has one.
    pub fn read_validator(&self) -> Option<String> {
        let v = fs::read_to_string(&self.validator).ok()?;
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    /// Empties the part file and records the validator of the response that refills it.
    pub fn restart(&self, validator: Option<&str>) -> Result<File, FetchError> {
        match validator {
            Some(v) => fs::write(&self.validator, v),
            None => remove_if_exists(&self.validator),
        }
        .map_err(|e| FetchError::write(&self.validator, e))?;
        File::create(&self.part).map_err(|e| FetchError::write(&self.part, e))
    }

    /// Opens the part file to append to it.
    pub fn append(&self) -> Result<File, FetchError> {
        OpenOptions::new()
            .append(true)
            .open(&self.part)
            .map_err(|e| FetchError::write(&self.part, e))
    }

    /// Deletes the part and its validator (after a checksum mismatch).
    pub fn discard(&self) {
        let _ = remove_if_exists(&self.part);
        let _ = remove_if_exists(&self.validator);
    }

    /// Makes the complete part the target: sync its data, check its SHA-256 if one is given
    /// (a mismatch deletes it), rename it into place and sync the directory, so that after a
    /// crash the target is either absent or complete.
    pub fn commit(&self, url: &str, sha256: Option<&str>) -> Result<(), FetchError> {
        let file = File::open(&self.part).map_err(|e| FetchError::write(&self.part, e))?;
        file.sync_all()
            .map_err(|e| FetchError::write(&self.part, e))?;
        if let Some(expected) = sha256 {
            super::log(format!("verifying the sha256 of {}", self.part.display()));
            let actual = sha256_hex(file).map_err(|e| FetchError::write(&self.part, e))?;
            if !actual.eq_ignore_ascii_case(expected) {
                self.discard();
                return Err(FetchError::Checksum {
                    url: url.to_string(),
                    expected: expected.to_ascii_lowercase(),
                    actual,
                });
            }
        }
        fs::rename(&self.part, &self.target).map_err(|e| FetchError::write(&self.target, e))?;
        let dir = self.dir();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| FetchError::write(dir, e))?;
        let _ = remove_if_exists(&self.validator);
        Ok(())
    }

    /// Takes the download lock, waiting (and saying so) while another process holds it. The
    /// lock lasts as long as the returned file is open.
    pub fn lock(&self) -> Result<File, FetchError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|e| FetchError::write(&self.lock, e))?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            super::log(format!(
                "another process is downloading {}; waiting for it (lock {})",
                self.target.display(),
                self.lock.display()
            ));
            flock(&file, libc::LOCK_EX).map_err(|e| FetchError::write(&self.lock, e))?;
        }
        Ok(file)
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The lower-case hex SHA-256 of everything `r` yields.
pub fn sha256_hex(mut r: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_digest() {
        let p = PartFiles::new(Path::new("/image/cirros.qcow2"));
        assert_eq!(p.part, Path::new("/image/.cirros.qcow2.part"));
        assert_eq!(p.lock, Path::new("/image/.cirros.qcow2.lock"));
        assert_eq!(
            sha256_hex(&b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
