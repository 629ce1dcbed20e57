//! Block backends: the storage behind a virtio-blk disk.
//!
//! Every backend implements [`BlockBackend`]; the virtio-blk device only speaks to that trait.
//! `raw` serves raw files and block devices, `qcow2` serves qcow2 images (with backing chains)
//! through imago, and `overlay` creates and checks the pet overlay on its base image.

use std::io;

use vm_memory::VolatileSlice;

pub use iov::{PartialIo, BOUNCE_CHUNK, MAX_IOVS};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Storage behind a disk. Offsets and lengths are in bytes. I/O methods take `&self`: a disk
/// is served by several threads at once (the virtio-blk request pool), so every backend
/// synchronises what it must itself. `flush` makes durable every write that completed before
/// it was called; writes running concurrently with it may or may not be included.
pub trait BlockBackend: Send + Sync {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Fills `buf` from `offset`. Reads past the end are an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`. Writes past the end are an error.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Fills the guest memory `bufs`, in order, from `offset`; reads past the end are an
    /// error, which says how many bytes had been filled before it. The default moves the data
    /// through `bounce` (grown to at most [`BOUNCE_CHUNK`] bytes) with [`read_at`]; backends
    /// that can read straight into guest memory (raw: `preadv`) override it.
    ///
    /// [`read_at`]: BlockBackend::read_at
    fn read_vectored_at(
        &self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<(), PartialIo> {
        iov::bounce_read(self, bufs, offset, bounce)
    }
    /// Writes the guest memory `bufs`, in order, at `offset`; writes past the end are an
    /// error. The default moves the data through `bounce` (grown to at most
    /// [`BOUNCE_CHUNK`] bytes) with [`write_at`]; backends that can write straight from guest
    /// memory (raw: `pwritev`) override it.
    ///
    /// [`write_at`]: BlockBackend::write_at
    fn write_vectored_at(
        &self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<(), PartialIo> {
        iov::bounce_write(self, bufs, offset, bounce)
    }
    /// Makes every completed write durable on the host (fsync of data and metadata).
    fn flush(&self) -> io::Result<()>;
    /// Tells the backend the range's contents are no longer needed; later reads may return
    /// anything, though backends should return zeroes where they can.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes the range read as zeroes; with `may_unmap` the backend may free the space.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()>;
    /// What opening the disk did that the user should hear about (for instance a qcow2
    /// refcount repair), one line each; empty after the first call.
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

pub mod iov;
pub mod lock;
pub mod overlay;
pub mod qcow2;
pub mod raw;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Longest backing chain berth follows; deeper chains (or loops) are refused.
pub const MAX_CHAIN_DEPTH: usize = 16;

/// On-disk format of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// A flat file or block device: guest sector N is at byte N * 512.
    Raw,
    /// QEMU copy-on-write v2/v3, possibly with a backing file.
    Qcow2,
}

impl DiskFormat {
    /// The name qemu-img uses for the format (`raw`, `qcow2`).
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// How [`open_disk`] opens an image.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskOptions {
    /// Open read-only (O_RDONLY); every write, discard and write-zeroes is refused.
    pub read_only: bool,
    /// The declared format. `None` probes the first bytes, which is only safe for images the
    /// guest cannot write: a guest could write a qcow2 header into a raw disk and name any host
    /// file as its backing file. Disks the contract calls raw must be opened as `Some(Raw)`.
    pub format: Option<DiskFormat>,
    /// The image is untrusted (downloaded, or written by someone other than berth): its
    /// backing files must live beneath the directory of the image naming them.
    pub confine_backing: bool,
}

/// Why a disk cannot be opened or created. Each message is one line naming the problem and
/// the fix.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image does not exist.
    #[error("disk image {0} does not exist; create it or fix the path")]
    NotFound(PathBuf),
    /// The process may not open the image.
    #[error("no permission to open {path} for {}; fix its owner or mode{}", if *.write { "writing" } else { "reading" }, if *.write { ", or attach it read-only" } else { "" })]
    Permission {
        /// The image.
        path: PathBuf,
        /// Whether write access was asked for.
        write: bool,
    },
    /// Another I/O error while opening or creating.
    #[error("cannot use disk image {path}: {source}; check the file and its file system")]
    Io {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A qcow2 image uses a version or feature berth does not implement.
    #[error("{path}: unsupported qcow2 image: {what}; convert it with `qemu-img convert -O qcow2 -o compat=1.1 {path} NEW`")]
    Unsupported {
        /// The image.
        path: PathBuf,
        /// The version or feature.
        what: String,
    },
    /// A qcow2 image's metadata is damaged or was not closed cleanly.
    #[error("{path}: damaged qcow2 image: {what}; repair it with `qemu-img check -r all {path}`")]
    Corrupt {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A qcow2 image names a backing file that does not exist.
    #[error("backing file {backing} of {path} is missing; restore the base image at that path or recreate the overlay")]
    BackingMissing {
        /// The image naming the backing file.
        path: PathBuf,
        /// The backing file, resolved against the image's directory.
        backing: PathBuf,
    },
    /// The backing chain is too deep or loops.
    #[error("backing chain of {0} is deeper than {MAX_CHAIN_DEPTH} images or loops; flatten it with `qemu-img convert`")]
    ChainTooDeep(PathBuf),
    /// An existing pet overlay is backed by another image than the configured base.
    #[error("{overlay} is backed by {actual}, not by the configured base {expected}; configure that base or move the overlay away to start fresh")]
    BackingMismatch {
        /// The overlay.
        overlay: PathBuf,
        /// What it is backed by (or a description when it has no backing file).
        actual: String,
        /// The configured base.
        expected: PathBuf,
    },
    /// Another process (berth, QEMU, qemu-img) uses the image in a way that conflicts.
    #[error("{path} is in use by another process (berth, QEMU or qemu-img) that {}; stop that process first (qemu-img can look with -U)", if *.writable { "uses or shares it" } else { "writes it" })]
    Locked {
        /// The image.
        path: PathBuf,
        /// The QEMU permission that conflicted ("write", "consistent read", ...).
        what: String,
        /// Whether berth wanted to write.
        writable: bool,
    },
    /// An untrusted image names a backing file outside its own directory.
    #[error("{path} names the backing file {backing:?}, which is not inside its own directory; berth does not follow it (a downloaded image must not reach other host files): rebase the image with `qemu-img rebase` or flatten it with `qemu-img convert`")]
    BackingOutside {
        /// The image.
        path: PathBuf,
        /// The backing file name as stored.
        backing: String,
    },
    /// A file that should be a qcow2 overlay is not one.
    #[error("{0} exists but is not a qcow2 image; move it away so berth can create the overlay")]
    NotQcow2(PathBuf),
}

impl DiskError {
    /// Classifies an error from opening or creating `path`.
    pub fn io(path: &Path, e: io::Error, write: bool) -> Self {
        let path = path.to_path_buf();
        match e.kind() {
            io::ErrorKind::NotFound => DiskError::NotFound(path),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                DiskError::Permission { path, write }
            }
            _ => DiskError::Io { path, source: e },
        }
    }
}

/// Checks that a disk of `size` bytes, refusing writes when `read_only`, may be written over
/// `[offset, offset + len)`: what every backend checks before a write, write-zeroes or discard.
pub(crate) fn check_write(read_only: bool, size: u64, offset: u64, len: u64) -> io::Result<()> {
    if read_only {
        return Err(io::Error::new(
            io::ErrorKind::ReadOnlyFilesystem,
            "disk is read-only",
        ));
    }
    check_range(size, offset, len)
}

/// Checks that `[offset, offset + len)` lies within a disk of `size` bytes.
pub(crate) fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("access at {offset}+{len} is beyond the disk's end ({size} bytes)"),
        )),
    }
}

/// Probes `file`'s format from its first bytes: qcow2 magic, else raw.
pub fn detect_format(file: &File) -> io::Result<DiskFormat> {
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) if magic == QCOW2_MAGIC => Ok(DiskFormat::Qcow2),
        Ok(()) => Ok(DiskFormat::Raw),
        // Shorter than the magic: can only be raw.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(DiskFormat::Raw),
        Err(e) => Err(e),
    }
}

/// Opens a disk image as a [`BlockBackend`]: raw files and block devices, or qcow2 images with
/// their backing chain (opened read-only).
pub fn open_disk(path: &Path, opts: DiskOptions) -> Result<Box<dyn BlockBackend>, DiskError> {
    let format = match opts.format {
        Some(f) => f,
        None => {
            let f = File::open(path).map_err(|e| DiskError::io(path, e, false))?;
            detect_format(&f).map_err(|e| DiskError::io(path, e, false))?
        }
    };
    Ok(match format {
        DiskFormat::Raw => Box::new(raw::RawDisk::open(path, opts.read_only)?),
        DiskFormat::Qcow2 => Box::new(qcow2::Qcow2Disk::open_with(
            path,
            &qcow2::Qcow2Options {
                read_only: opts.read_only,
                confine_backing: opts.confine_backing,
                observer: None,
            },
        )?),
    })
}
