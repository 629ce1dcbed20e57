//! qcow2 disks through imago: v2 and v3 images, zero and compressed clusters, and backing
//! chains of qcow2 or raw images.
//!
//! berth opens the chain itself instead of letting imago follow the header's references, so
//! every backing file is opened O_RDONLY, chains are bounded, and each failure gets a
//! [`DiskError`] that names the image and the fix.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, StorageOpenOptions};

use super::{
    check_range, check_write, detect_format, BlockBackend, DiskError, DiskFormat, MAX_CHAIN_DEPTH,
    QCOW2_MAGIC,
};

/// Size of the v3 header fields berth checks before handing the image to imago.
const HEADER_LEN: usize = 104;

/// Incompatible feature bits (qcow2 spec) and why berth cannot open an image with them.
const INCOMPATIBLE: [(u64, &str); 5] = [
    (1 << 0, "dirty bit set (lazy refcounts, not closed cleanly)"),
    (1 << 1, "marked corrupt by QEMU"),
    (1 << 2, "external data file"),
    (1 << 3, "non-zlib compression type"),
    (1 << 4, "extended L2 entries (subclusters)"),
];

/// A qcow2 image and its backing chain.
pub struct Qcow2Disk {
    inner: FormatAccess<ImagoFile>,
    size: u64,
    read_only: bool,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("image", &self.inner.to_string())
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// The header fields berth looks at itself.
#[derive(Debug, Clone)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Backing file name as stored in the image (may be relative to the image's directory).
    pub backing_file: Option<String>,
}

impl Qcow2Disk {
    /// Opens the qcow2 image at `path` (read-write unless `read_only`) and its backing chain
    /// (always read-only).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let mut chain = Vec::new();
        let inner = open_qcow2_layer(path, !read_only, &mut chain)?;
        Ok(Qcow2Disk {
            size: inner.size(),
            inner,
            read_only,
        })
    }
}

/// Reads and validates the header of the qcow2 image open as `file`.
pub fn read_header(path: &Path, file: &File) -> Result<Qcow2Header, DiskError> {
    let mut h = [0u8; HEADER_LEN];
    // A v2 header is 72 bytes, but every real image is at least one cluster long.
    file.read_exact_at(&mut h, 0)
        .map_err(|e| corrupt(path, e))?;
    let be32 = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().unwrap());
    if h[..4] != QCOW2_MAGIC {
        return Err(DiskError::NotQcow2(path.to_path_buf()));
    }
    let unsupported = |what: String| DiskError::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    let version = be32(4);
    if version != 2 && version != 3 {
        return Err(unsupported(format!(
            "version {version} (berth reads 2 and 3)"
        )));
    }
    if be32(32) != 0 {
        return Err(unsupported("encryption".into()));
    }
    if version == 3 {
        let incompatible = be64(72);
        // Dirty and corrupt images need a repair; the other features a conversion.
        for (bit, what) in INCOMPATIBLE {
            if incompatible & bit != 0 {
                return Err(if bit <= 2 {
                    DiskError::Corrupt {
                        path: path.to_path_buf(),
                        what: what.into(),
                    }
                } else {
                    unsupported(what.into())
                });
            }
        }
        if incompatible != 0 {
            return Err(unsupported(format!(
                "unknown incompatible features {incompatible:#x}"
            )));
        }
    }
    let (boff, blen) = (be64(8), be32(16) as usize);
    let backing_file = if boff == 0 || blen == 0 {
        None
    } else {
        if blen > 1023 {
            return Err(corrupt(path, "backing file name longer than 1023 bytes"));
        }
        let mut name = vec![0u8; blen];
        file.read_exact_at(&mut name, boff)
            .map_err(|e| corrupt(path, e))?;
        Some(String::from_utf8(name).map_err(|_| corrupt(path, "backing file name not UTF-8"))?)
    };
    Ok(Qcow2Header {
        version,
        size: be64(24),
        backing_file,
    })
}

/// The backing format recorded in the qcow2 image at `path` (`None` when not recorded).
pub fn recorded_backing_format(path: &Path) -> Result<Option<String>, DiskError> {
    let file = open_file(path, false)?;
    read_header(path, &file)?;
    let storage = imago_storage(path, file, false)?;
    let qcow2: Qcow2<ImagoFile> =
        Qcow2::open_image(storage, false).map_err(|e| imago_error(path, e))?;
    Ok(qcow2.implicit_backing_format().cloned())
}

/// Resolves a backing file name the way QEMU does: relative to the image's directory.
pub fn resolve_backing(image: &Path, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() {
        b.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(b)
    }
}

fn corrupt(path: &Path, what: impl ToString) -> DiskError {
    DiskError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// Maps an error imago raised while parsing `path`.
fn imago_error(path: &Path, e: io::Error) -> DiskError {
    let msg = e.to_string();
    if e.kind() != io::ErrorKind::InvalidData {
        return DiskError::Io {
            path: path.to_path_buf(),
            source: e,
        };
    }
    if msg.contains("not supported") || msg.contains("Unrecognized") {
        DiskError::Unsupported {
            path: path.to_path_buf(),
            what: msg,
        }
    } else {
        corrupt(path, msg)
    }
}

fn open_file(path: &Path, writable: bool) -> Result<File, DiskError> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| DiskError::io(path, e, writable))
}

fn imago_storage(path: &Path, file: File, writable: bool) -> Result<ImagoFile, DiskError> {
    let opts = StorageOpenOptions::new().write(writable).filename(path);
    ImagoFile::from_open_file(file, opts).map_err(|e| DiskError::io(path, e, writable))
}

/// Opens one qcow2 layer at `path` and, recursively, its backing chain read-only. `chain`
/// holds the canonical paths of the layers above, to stop loops.
fn open_qcow2_layer(
    path: &Path,
    writable: bool,
    chain: &mut Vec<PathBuf>,
) -> Result<FormatAccess<ImagoFile>, DiskError> {
    let file = open_file(path, writable)?;
    let header = read_header(path, &file)?;
    let storage = imago_storage(path, file, writable)?;
    let mut qcow2: Qcow2<ImagoFile> =
        Qcow2::open_image(storage, writable).map_err(|e| imago_error(path, e))?;
    let backing = match header.backing_file {
        None => None,
        Some(name) => {
            let backing = resolve_backing(path, &name);
            let format = qcow2.implicit_backing_format().cloned();
            Some(open_backing(path, &backing, format.as_deref(), chain)?)
        }
    };
    qcow2.set_backing(backing);
    qcow2.set_data_file(None);
    Ok(FormatAccess::new(qcow2))
}

/// Opens the backing image `backing` of `image` read-only, in the recorded `format` or, for
/// images made before formats were recorded, the probed one.
fn open_backing(
    image: &Path,
    backing: &Path,
    format: Option<&str>,
    chain: &mut Vec<PathBuf>,
) -> Result<FormatAccess<ImagoFile>, DiskError> {
    let missing = || DiskError::BackingMissing {
        path: image.to_path_buf(),
        backing: backing.to_path_buf(),
    };
    let canonical = backing.canonicalize().map_err(|_| missing())?;
    if chain.len() >= MAX_CHAIN_DEPTH || chain.contains(&canonical) {
        return Err(DiskError::ChainTooDeep(image.to_path_buf()));
    }
    chain.push(canonical);
    let file = open_file(backing, false)?;
    let format = match format {
        Some("qcow2") => DiskFormat::Qcow2,
        Some("raw" | "file") => DiskFormat::Raw,
        Some(other) => {
            return Err(DiskError::Unsupported {
                path: image.to_path_buf(),
                what: format!("backing format {other:?}"),
            })
        }
        None => detect_format(&file).map_err(|e| DiskError::io(backing, e, false))?,
    };
    match format {
        DiskFormat::Qcow2 => {
            drop(file);
            open_qcow2_layer(backing, false, chain)
        }
        DiskFormat::Raw => {
            let storage = imago_storage(backing, file, false)?;
            let raw = Raw::open_image(storage, false).map_err(|e| imago_error(backing, e))?;
            Ok(FormatAccess::new(raw))
        }
    }
}

impl BlockBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // imago zero-fills past the end; the trait wants an error.
        check_range(self.size, offset, buf.len() as u64)?;
        self.inner.read(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_write(self.read_only, self.size, offset, buf.len() as u64)?;
        self.inner.write(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // flush writes imago's cached L2 tables and refcount blocks back to the file (in
        // dependency order); sync then makes the file durable (fsync).
        self.inner.flush()?;
        self.inner.sync()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        // Discarding to zero rather than to "anything" keeps the base's data from showing
        // through again in an overlay.
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        check_write(self.read_only, self.size, offset, len)?;
        if may_unmap {
            self.inner.discard_to_zero(offset, len)
        } else {
            self.inner.write_zeroes(offset, len)
        }
    }
}
