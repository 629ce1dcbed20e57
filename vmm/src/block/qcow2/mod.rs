//! qcow2 disks through imago: v2 and v3 images, zero and compressed clusters, and backing
//! chains of qcow2 or raw images.
//!
//! berth opens the chain itself instead of letting imago follow the header's references, so
//! every backing file is opened O_RDONLY, chains are bounded, backing files of untrusted
//! images stay beneath their image's directory, and each failure gets a [`DiskError`] that
//! names the image and the fix.
//!
//! Crash consistency (docs/block.md): every image berth opens is locked like QEMU locks it
//! ([`super::lock`]); an image opened for writing carries the dirty bit while open, and an
//! image found dirty, or with refcounts that do not match its tables, has its refcounts
//! rebuilt ([`refcount`]) before anything is written. Operations that free clusters are
//! followed by a flush and fsync, so a freed cluster is never reused while a pointer to it may
//! still be on disk.
//!
//! Concurrency: reads, writes and flushes run from several threads at once (imago takes
//! `&self` for them and serialises overlapping allocations itself). Operations that free
//! clusters (write-zeroes, discard, writes over clusters a write moves) take the image
//! exclusively, together with the flush and fsync that follows each piece, so no concurrent
//! allocation can pick up a freed cluster before its unlinking is durable.

pub mod refcount;
mod storage;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, Mapping, StorageOpenOptions};
use vm_memory::VolatileSlice;

use self::refcount::{Geometry, ScanError};
pub use self::storage::{ImageFile, IoObserver, WriteBarrier};
use super::iov::{self, PartialIo, BOUNCE_CHUNK};
use super::lock::lock_image;
use super::{
    check_range, check_write, detect_format, BlockBackend, DiskError, DiskFormat, MAX_CHAIN_DEPTH,
    QCOW2_MAGIC,
};

/// Size of the v3 header fields berth checks before handing the image to imago.
const HEADER_LEN: usize = 104;

/// Incompatible feature bits (qcow2 spec) berth cannot open an image with. The dirty bit
/// (bit 0) is handled by the refcount check.
const INCOMPATIBLE: [(u64, &str); 4] = [
    (1 << 1, "marked corrupt by QEMU"),
    (1 << 2, "external data file"),
    (1 << 3, "non-zlib compression type"),
    (1 << 4, "extended L2 entries (subclusters)"),
];

/// How [`Qcow2Disk::open_with`] opens an image.
#[derive(Clone, Default)]
pub struct Qcow2Options {
    /// Open the top image read-only (backing images always are).
    pub read_only: bool,
    /// The images are untrusted (downloaded): every backing file must live beneath the
    /// directory of the image naming it (resolved with `openat2(RESOLVE_BENEATH)`). An
    /// absolute name is accepted only when it names a file directly in that directory.
    pub confine_backing: bool,
    /// Sees every write and fsync to the top image's file (tests).
    pub observer: Option<Arc<dyn IoObserver>>,
}

/// A qcow2 image and its backing chain.
pub struct Qcow2Disk {
    /// Shared by reads, writes and flushes; exclusive for operations that free clusters.
    inner: RwLock<FormatAccess<ImageFile>>,
    /// The top image's file and geometry, for the dirty bit (writable images only).
    meta: Option<(ImageFile, Geometry)>,
    size: u64,
    read_only: bool,
    /// log2 of the cluster size of the top image.
    cluster_bits: u32,
    /// Guest clusters of the top image a write would move to a new host cluster (compressed,
    /// preallocated zero, not COPIED), sorted: writing one frees its old host space.
    moved_by_write: Mutex<Vec<u64>>,
    /// What opening did that the user should hear about (a repair).
    notes: Vec<String>,
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("image", &self.shared().to_string())
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
    /// Cluster size, tables and features.
    pub geometry: Geometry,
}

impl Qcow2Header {
    /// Whether the image was left open for writing (refcounts may be stale).
    pub fn dirty(&self) -> bool {
        self.geometry.incompatible & refcount::DIRTY != 0
    }
}

impl Qcow2Disk {
    /// Opens the qcow2 image at `path` (read-write unless `read_only`) and its backing chain
    /// (always read-only), trusting the backing file names.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        Self::open_with(
            path,
            &Qcow2Options {
                read_only,
                ..Default::default()
            },
        )
    }

    /// Opens the qcow2 image at `path` as `opts` says.
    pub fn open_with(path: &Path, opts: &Qcow2Options) -> Result<Self, DiskError> {
        let writable = !opts.read_only;
        let file = open_file(path, writable)?;
        let mut chain = Vec::new();
        let mut layer = open_qcow2_layer(path, file, writable, opts, &mut chain)?;
        let inner = FormatAccess::new(layer.qcow2);
        let size = inner.size();
        if let Some((meta, g)) = &layer.meta {
            // From here on the refcounts on disk may lag behind imago's cache.
            refcount::set_dirty(meta, g, true).map_err(|e| DiskError::io(path, e, true))?;
        }
        layer.moved_by_write.sort_unstable();
        Ok(Qcow2Disk {
            inner: RwLock::new(inner),
            size,
            read_only: opts.read_only,
            cluster_bits: layer.cluster_bits,
            moved_by_write: Mutex::new(layer.moved_by_write),
            meta: layer.meta,
            notes: layer.notes,
        })
    }

    /// The image for reads, writes and flushes, which may run concurrently.
    fn shared(&self) -> RwLockReadGuard<'_, FormatAccess<ImageFile>> {
        // A panic while holding the lock leaves imago's state as it was; imago has no
        // invariant that a half-done Rust call can break beyond what a crash would.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The image alone, for operations that free clusters.
    fn exclusive(&self) -> RwLockWriteGuard<'_, FormatAccess<ImageFile>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// `[offset, offset + len)` cut at every multiple of `1 << bits`.
    fn split_at(&self, offset: u64, len: u64, bits: u32) -> Vec<(u64, u64)> {
        let unit = 1u64 << bits;
        let mut out = Vec::new();
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let n = ((at / unit + 1) * unit).min(end) - at;
            out.push((at, n));
            at += n;
        }
        out
    }

    /// The pieces write-zeroes and discard go in (see write_zeroes): a partial cluster at
    /// each end on its own, the whole clusters between cut where one L2 table's reach ends.
    fn zeroing_pieces(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let cs = 1u64 << self.cluster_bits;
        let end = offset + len;
        let (first_whole, last_whole) = (offset.next_multiple_of(cs), end / cs * cs);
        if first_whole >= last_whole {
            // Within one cluster, or two partial ones.
            return self.split_at(offset, len, self.cluster_bits);
        }
        let mut out = Vec::new();
        if offset < first_whole {
            out.push((offset, first_whole - offset));
        }
        // An L2 table holds cluster_size / 8 entries of one cluster each.
        out.extend(self.split_at(
            first_whole,
            last_whole - first_whole,
            2 * self.cluster_bits - 3,
        ));
        if last_whole < end {
            out.push((last_whole, end - last_whole));
        }
        out
    }

    /// Whether `[offset, offset + len)` touches a cluster a write would move; `forget` drops
    /// those it does from the list (they are plain data clusters after the write). Called
    /// with the image locked (shared to look, exclusive to forget), so a writer that found
    /// nothing here cannot overlap the exclusive write that moves a cluster.
    fn touches_moving(&self, offset: u64, len: u64, forget: bool) -> bool {
        let mut moved = self
            .moved_by_write
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if moved.is_empty() || len == 0 {
            return false;
        }
        let (first, last) = (
            offset >> self.cluster_bits,
            (offset + len - 1) >> self.cluster_bits,
        );
        let from = moved.partition_point(|&c| c < first);
        let to = moved.partition_point(|&c| c <= last);
        if forget {
            moved.drain(from..to).count() > 0
        } else {
            to > from
        }
    }
}

/// Flushes imago's caches and fsyncs: after this, the file is consistent on disk.
fn flush_and_sync(image: &FormatAccess<ImageFile>) -> io::Result<()> {
    image.flush()?;
    image.sync()
}

impl Drop for Qcow2Disk {
    fn drop(&mut self) {
        let Some((meta, g)) = &self.meta else {
            return;
        };
        // Clean only if everything imago cached is on disk; otherwise the dirty bit stays and
        // the next open rebuilds the refcounts.
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if flush_and_sync(inner).is_ok() {
            let _ = refcount::set_dirty(meta, g, false);
        }
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
        for (bit, what) in INCOMPATIBLE {
            if incompatible & bit != 0 {
                return Err(if bit == 1 << 1 {
                    corrupt(path, what)
                } else {
                    unsupported(what.into())
                });
            }
        }
        if incompatible & !0x1f != 0 {
            return Err(unsupported(format!(
                "unknown incompatible features {incompatible:#x}"
            )));
        }
    }
    let geometry = Geometry::parse(&h, version).map_err(|e| corrupt(path, e))?;
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
        geometry,
    })
}

/// The backing format recorded in the qcow2 image at `path` (`None` when not recorded).
pub fn recorded_backing_format(path: &Path) -> Result<Option<String>, DiskError> {
    let file = open_file(path, false)?;
    read_header(path, &file)?;
    let opts = StorageOpenOptions::new().write(false).filename(path);
    let storage =
        ImagoFile::from_open_file(file, opts).map_err(|e| DiskError::io(path, e, false))?;
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
        image_dir(image).join(b)
    }
}

fn image_dir(image: &Path) -> &Path {
    match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
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

/// imago's file driver over `file`, wrapped in an [`ImageFile`] that keeps a duplicate of the
/// descriptor for berth's own transfers between guest memory and the file.
fn image_file(
    path: &Path,
    file: File,
    writable: bool,
    observer: Option<Arc<dyn IoObserver>>,
) -> Result<ImageFile, DiskError> {
    let fd = file
        .try_clone()
        .map_err(|e| DiskError::io(path, e, writable))?;
    let opts = StorageOpenOptions::new().write(writable).filename(path);
    let inner =
        ImagoFile::from_open_file(file, opts).map_err(|e| DiskError::io(path, e, writable))?;
    Ok(ImageFile::new(inner, fd, observer))
}

/// One opened qcow2 layer (with its chain below it).
struct Layer {
    qcow2: Qcow2<ImageFile>,
    meta: Option<(ImageFile, Geometry)>,
    cluster_bits: u32,
    moved_by_write: Vec<u64>,
    notes: Vec<String>,
}

/// Opens the qcow2 layer at `path` (open as `file`) and, recursively, its backing chain
/// read-only. `chain` holds the (device, inode) of the layers above, to stop loops.
fn open_qcow2_layer(
    path: &Path,
    file: File,
    writable: bool,
    opts: &Qcow2Options,
    chain: &mut Vec<(u64, u64)>,
) -> Result<Layer, DiskError> {
    lock_image(&file, path, writable)?;
    let header = read_header(path, &file)?;
    let g = header.geometry.clone();
    let observer = if writable {
        opts.observer.clone()
    } else {
        None
    };
    let dup = file
        .try_clone()
        .map_err(|e| DiskError::io(path, e, writable))?;
    let meta = image_file(path, dup, writable, observer.clone())?;
    let mut notes = Vec::new();
    let (moved_by_write, barrier) = check_refcounts(path, &meta, &header, writable, &mut notes)?;
    let mut storage = image_file(path, file, writable, observer)?;
    if let Some(barrier) = barrier {
        storage = storage.with_barrier(barrier);
    }
    let mut qcow2: Qcow2<ImageFile> =
        Qcow2::open_image(storage, writable).map_err(|e| imago_error(path, e))?;
    let backing = match header.backing_file {
        None => None,
        Some(name) => {
            let format = qcow2.implicit_backing_format().cloned();
            Some(open_backing(path, &name, format.as_deref(), opts, chain)?)
        }
    };
    qcow2.set_backing(backing);
    qcow2.set_data_file(None);
    Ok(Layer {
        qcow2,
        // Re-read the features: a rebuild cleared the dirty bit.
        meta: writable.then(|| {
            let mut g = g.clone();
            g.incompatible &= !refcount::DIRTY;
            (meta, g)
        }),
        cluster_bits: g.cluster_bits,
        moved_by_write,
        notes,
    })
}

/// The refcount check of one image before use: a writable image that is dirty or whose
/// refcounts do not match its tables is repaired; a read-only one is refused. Returns the
/// guest clusters a write would move and the metadata layout of a writable image.
fn check_refcounts(
    path: &Path,
    meta: &ImageFile,
    header: &Qcow2Header,
    writable: bool,
    notes: &mut Vec<String>,
) -> Result<(Vec<u64>, Option<WriteBarrier>), DiskError> {
    let g = &header.geometry;
    let repair_hint = |what: String| corrupt(path, what);
    if writable && header.version < 3 {
        return Err(DiskError::Unsupported {
            path: path.to_path_buf(),
            what: "version 2 for writing (it has no dirty bit to protect it after a crash)".into(),
        });
    }
    if writable && header.geometry.incompatible & !refcount::DIRTY != 0 {
        unreachable!("read_header refuses other incompatible features");
    }
    let scan = match refcount::scan(meta, g, writable) {
        Ok(s) => s,
        Err(ScanError::Io(e)) => return Err(DiskError::io(path, e, writable)),
        Err(ScanError::Corrupt(m)) => return Err(repair_hint(m)),
        // Read-only images with internal snapshots are read as they are (imago reads the
        // active L1 table), provided they were closed cleanly.
        Err(ScanError::Unsupported(m)) if !writable && g.nb_snapshots > 0 => {
            if header.dirty() {
                return Err(repair_hint("dirty bit set (not closed cleanly)".into()));
            }
            let _ = m;
            return Ok((Vec::new(), None));
        }
        Err(ScanError::Unsupported(m)) => {
            return Err(DiskError::Unsupported {
                path: path.to_path_buf(),
                what: m,
            })
        }
    };
    if !writable {
        if header.dirty() {
            return Err(repair_hint("dirty bit set (not closed cleanly)".into()));
        }
        if scan.missing > 0 {
            return Err(repair_hint(format!(
                "{} clusters in use have too low a refcount",
                scan.missing
            )));
        }
        if scan.broken_structure {
            return Err(repair_hint("the refcount table is damaged".into()));
        }
        return Ok((scan.moved_by_write, None));
    }
    let cs = 1u64 << g.cluster_bits;
    let l1 = g.l1_offset..g.l1_offset + u64::from(g.l1_size) * 8;
    let mut reftable = g.reftable_offset..g.reftable_offset + u64::from(g.reftable_clusters) * cs;
    let mut metadata = scan.metadata.clone();
    if header.dirty() || scan.needs_rebuild() {
        let why = if header.dirty() {
            "it was not closed cleanly"
        } else {
            "its refcounts did not match its tables"
        };
        let new = refcount::rebuild(meta, g, &scan).map_err(|e| DiskError::io(path, e, true))?;
        let (start, len) = (new.start, new.blocks + new.table);
        let rt = (new.start + new.blocks) * cs;
        reftable = rt..rt + new.table * cs;
        metadata.extend(new.start..new.start + new.blocks);
        notes.push(format!(
            "repaired {} ({why}): refcounts rebuilt from its tables, {} leaked clusters \
             reclaimed, {} missing refcounts fixed (new refcount structure: {len} clusters at \
             cluster {start})",
            path.display(),
            scan.leaked,
            scan.missing
        ));
    }
    let barrier = WriteBarrier::new(g.cluster_bits, l1, reftable, metadata);
    Ok((scan.moved_by_write, Some(barrier)))
}

/// Opens the backing image `name` of `image` read-only, in the recorded `format` or, for
/// images made before formats were recorded, the probed one.
fn open_backing(
    image: &Path,
    name: &str,
    format: Option<&str>,
    opts: &Qcow2Options,
    chain: &mut Vec<(u64, u64)>,
) -> Result<FormatAccess<ImageFile>, DiskError> {
    let backing = resolve_backing(image, name);
    let missing = || DiskError::BackingMissing {
        path: image.to_path_buf(),
        backing: backing.clone(),
    };
    let file = if opts.confine_backing {
        open_beneath(image, name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => missing(),
            Some(libc::EXDEV | libc::ELOOP) => DiskError::BackingOutside {
                path: image.to_path_buf(),
                backing: name.to_owned(),
            },
            _ => DiskError::io(&backing, e, false),
        })?
    } else {
        File::open(&backing).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => missing(),
            _ => DiskError::io(&backing, e, false),
        })?
    };
    let meta = file
        .metadata()
        .map_err(|e| DiskError::io(&backing, e, false))?;
    let id = (meta.dev(), meta.ino());
    if chain.len() >= MAX_CHAIN_DEPTH || chain.contains(&id) {
        return Err(DiskError::ChainTooDeep(image.to_path_buf()));
    }
    chain.push(id);
    let format = match format {
        Some("qcow2") => DiskFormat::Qcow2,
        Some("raw" | "file") => DiskFormat::Raw,
        Some(other) => {
            return Err(DiskError::Unsupported {
                path: image.to_path_buf(),
                what: format!("backing format {other:?}"),
            })
        }
        None => detect_format(&file).map_err(|e| DiskError::io(&backing, e, false))?,
    };
    match format {
        DiskFormat::Qcow2 => {
            let layer = open_qcow2_layer(&backing, file, false, opts, chain)?;
            Ok(FormatAccess::new(layer.qcow2))
        }
        DiskFormat::Raw => {
            lock_image(&file, &backing, false)?;
            let storage = image_file(&backing, file, false, None)?;
            let raw = Raw::open_image(storage, false).map_err(|e| imago_error(&backing, e))?;
            Ok(FormatAccess::new(raw))
        }
    }
}

/// Opens the backing file `name` of the untrusted `image` read-only, beneath the image's
/// directory: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` refuses absolute names,
/// `..` escapes and symlinks leading out (EXDEV). An absolute name directly inside that
/// directory (as berth writes into overlays) is taken as its file name. Kernels without
/// openat2 (before 5.6) accept only a plain file name, opened with O_NOFOLLOW.
fn open_beneath(image: &Path, name: &str) -> io::Result<File> {
    let dir = image_dir(image);
    let mut rel = Path::new(name);
    if rel.is_absolute() {
        let abs_dir = std::path::absolute(dir)?;
        match (rel.parent(), rel.file_name()) {
            (Some(p), Some(f)) if p == abs_dir => rel = Path::new(f),
            _ => return Err(io::Error::from_raw_os_error(libc::EXDEV)),
        }
    }
    let dirfd = File::open(dir)?;
    let c = std::ffi::CString::new(rel.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open_how is plain data; zero is a valid value for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the NUL-terminated name and the open_how of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        return Ok(unsafe { File::from_raw_fd(fd as i32) });
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    if rel.components().count() != 1 || rel.file_name().is_none() {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    // SAFETY: openat reads the NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl BlockBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // imago zero-fills past the end; the trait wants an error.
        check_range(self.size, offset, buf.len() as u64)?;
        self.shared().read(buf, offset)
    }

    fn read_vectored_at(
        &self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<(), PartialIo> {
        let total = iov::total_len(bufs).map_err(PartialIo::none)?;
        check_range(self.size, offset, total as u64).map_err(PartialIo::none)?;
        let image = self.shared();
        let mut done = 0;
        // imago's readv, with the data clusters read straight into guest memory. The shared
        // lock keeps every cluster a mapping names where it is until the read is done: only
        // operations that hold the image exclusively free clusters.
        while done < total {
            let at = offset + done as u64;
            let fail = |error| PartialIo { done, error };
            let (mapping, n) = image.get_mapping(at, (total - done) as u64).map_err(fail)?;
            let n = (n as usize).min(total - done);
            match mapping {
                Mapping::Raw {
                    storage, offset, ..
                } if n > 0 => {
                    storage
                        .read_guest(&iov::sub(bufs, done, n), offset)
                        .map_err(|e| PartialIo {
                            done: done + e.done,
                            error: e.error,
                        })?;
                }
                Mapping::Zero { .. } | Mapping::Eof { .. } => {
                    // Past the end of a shorter backing file, or unallocated: zeroes (a zero
                    // length ends the image, which check_range ruled out, so the rest).
                    let n = if n == 0 { total - done } else { n };
                    iov::zero(bufs, done, n);
                    done += n;
                    continue;
                }
                _ => {
                    // Compressed clusters: through imago, a bounded piece at a time.
                    let n = n.clamp(1, BOUNCE_CHUNK);
                    bounce.resize(n, 0);
                    image.read(&mut bounce[..n], at).map_err(fail)?;
                    iov::scatter(bufs, done, &bounce[..n]);
                    done += n;
                    continue;
                }
            }
            done += n;
        }
        Ok(())
    }

    fn write_vectored_at(
        &self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<(), PartialIo> {
        let total = iov::total_len(bufs).map_err(PartialIo::none)?;
        check_write(self.read_only, self.size, offset, total as u64).map_err(PartialIo::none)?;
        let image = self.shared();
        if self.touches_moving(offset, total as u64, false) {
            // A write that moves clusters takes the image exclusively (write_at).
            drop(image);
            return iov::bounce_write(self, bufs, offset, bounce);
        }
        // imago's writev, with the data written straight from guest memory: prepare the
        // mapping (allocating clusters, copying the backing's data around the range), write,
        // then link it (commit), so no L2 entry points at a cluster before its data is there.
        let mut done = 0;
        while done < total {
            let fail = |error| PartialIo { done, error };
            let at = offset + done as u64;
            let mapping = image
                .prepare_data_mapping(at, (total - done) as u64, true)
                .map_err(fail)?;
            let n = (mapping.length() as usize).min(total - done);
            mapping
                .storage()
                .write_guest(&iov::sub(bufs, done, n), mapping.offset())
                .map_err(|e| PartialIo {
                    done: done + e.done,
                    error: e.error,
                })?;
            image.commit_data_mapping(mapping).map_err(fail)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_write(self.read_only, self.size, offset, buf.len() as u64)?;
        let len = buf.len() as u64;
        {
            let image = self.shared();
            if !self.touches_moving(offset, len, false) {
                return image.write(buf, offset);
            }
        }
        // Such a write frees the old host space (after allocating the new cluster): see
        // write_zeroes. One cluster at a time, so no allocation follows a free inside one imago
        // call (and a single-cluster write keeps a preallocated zero cluster where it is), and
        // with the image to itself, so no other thread allocates in between.
        let image = self.exclusive();
        self.touches_moving(offset, len, true);
        for (at, n) in self.split_at(offset, len, self.cluster_bits) {
            let from = (at - offset) as usize;
            image.write(&buf[from..from + n as usize], at)?;
            flush_and_sync(&image)?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // flush writes imago's cached L2 tables and refcount blocks back to the file (in
        // dependency order); sync then makes the file durable (fsync). Writes that completed
        // before this call are in the cache or the file already, so both cover them.
        flush_and_sync(&self.shared())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        // Discarding to zero rather than to "anything" keeps the base's data from showing
        // through again in an overlay.
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> io::Result<()> {
        check_write(self.read_only, self.size, offset, len)?;
        // Exclusive: frees must not meet another thread's allocation (see below).
        let mut image = self.exclusive();
        self.touches_moving(offset, len, true);
        // imago may free clusters here, and frees them in its cache at once: the next
        // allocation could hand one out again while the L2 entry that still points to it is
        // only in the cache, and after a crash that cluster would belong to two places.
        // Writing the L2 tables out and fsyncing before any allocation makes the unlinking
        // durable first. An allocation can happen inside the same imago call (a partial
        // cluster at either end is written like data, copying from the backing file into a
        // new cluster; a range without an L2 table gets one), so the range goes in pieces
        // that either free or allocate, never both: the partial clusters at the ends, and the
        // whole clusters between them one L2 table's reach at a time.
        //
        // Without may_unmap the guest would keep the space allocated, but a qcow2 overlay
        // promises no space, and a preallocated zero cluster is one that imago may move (and
        // free) when a multi-cluster write lands on it. So whole clusters are unmapped either
        // way; they read as zeroes the same.
        for (at, n) in self.zeroing_pieces(offset, len) {
            image.discard_to_zero(at, n)?;
            flush_and_sync(&image)?;
        }
        Ok(())
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}
