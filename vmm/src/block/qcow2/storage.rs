//! The storage under berth's qcow2 layers: imago's file driver, wrapped so that every write,
//! write-zeroes and fsync that reaches an image file can be reported to an [`IoObserver`].
//!
//! berth's own metadata updates (the dirty bit, a refcount rebuild) go through the same
//! [`ImageFile`], so an observer sees the complete, ordered stream of changes to the file. The
//! power-loss test (`vmm/tests/block_powercut.rs`) records that stream and replays prefixes
//! and reorderings of it; in production no observer is set and the wrapper costs one branch.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::file::File as ImagoFile;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::storage::PreallocateMode;
use imago::Storage;

/// Sees every change berth makes to one image file, in order. For tests.
pub trait IoObserver: Send + Sync {
    /// `data` was written at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
    /// `[offset, offset + len)` now reads as zeroes (written zeroes or a punched hole).
    fn zero(&self, offset: u64, len: u64);
    /// An fsync completed: everything reported before is durable.
    fn sync(&self);
}

/// An image file: imago's file driver plus an optional observer.
pub struct ImageFile {
    inner: ImagoFile,
    observer: Option<Arc<dyn IoObserver>>,
}

impl ImageFile {
    /// Wraps an imago file.
    pub fn new(inner: ImagoFile, observer: Option<Arc<dyn IoObserver>>) -> Self {
        ImageFile { inner, observer }
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the end of the file read as zero.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let size = self.inner.size()?;
        buf.fill(0);
        let end = size.min(offset.saturating_add(buf.len() as u64));
        if offset >= end {
            return Ok(());
        }
        let n = (end - offset) as usize;
        // SAFETY: imago's "pure" accessors skip its overlap serialisation; berth only calls
        // these while no imago request is in flight (at open and close, one thread).
        unsafe { self.pure_readv(IoVectorMut::from(&mut buf[..n]), offset) }
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // SAFETY: as in read_at.
        unsafe { self.pure_writev(IoVector::from(buf), offset) }
    }

    /// fsync.
    pub fn sync_all(&self) -> io::Result<()> {
        Storage::sync(self)
    }

    /// The file's size in bytes.
    pub fn len(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn zeroed(&self, r: io::Result<()>, offset: u64, len: u64) -> io::Result<()> {
        if let (Ok(()), Some(o)) = (&r, &self.observer) {
            o.zero(offset, len);
        }
        r
    }
}

impl fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for ImageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl Storage for ImageFile {
    fn mem_align(&self) -> usize {
        self.inner.mem_align()
    }

    fn req_align(&self) -> usize {
        self.inner.req_align()
    }

    fn zero_align(&self) -> usize {
        self.inner.zero_align()
    }

    fn discard_align(&self) -> usize {
        self.inner.discard_align()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        self.inner.resolve_relative_path(relative)
    }

    fn get_filename(&self) -> Option<PathBuf> {
        self.inner.get_filename()
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.inner.pure_readv(bufv, offset) }
    }

    unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        let copy = self.observer.as_ref().map(|_| {
            let mut v = vec![0u8; bufv.len() as usize];
            bufv.copy_into_slice(&mut v);
            v
        });
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.inner.pure_writev(bufv, offset) }?;
        if let (Some(o), Some(data)) = (&self.observer, copy) {
            o.write(offset, &data);
        }
        Ok(())
    }

    unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on unchanged.
        let r = unsafe { self.inner.pure_write_zeroes(offset, length) };
        self.zeroed(r, offset, length)
    }

    unsafe fn pure_write_allocated_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on unchanged.
        let r = unsafe { self.inner.pure_write_allocated_zeroes(offset, length) };
        self.zeroed(r, offset, length)
    }

    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on unchanged.
        let r = unsafe { self.inner.pure_discard(offset, length) };
        // A discard may or may not zero the range; imago only relies on it reading back as
        // something, and an observer modelling it as zeroes is the stricter replay.
        self.zeroed(r, offset, length)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()?;
        if let Some(o) = &self.observer {
            o.sync();
        }
        Ok(())
    }

    fn settle_writes(&self) -> io::Result<()> {
        self.inner.settle_writes()
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.inner.invalidate_cache() }
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        self.inner.get_storage_helper()
    }

    fn resize(&self, new_size: u64, prealloc_mode: PreallocateMode) -> io::Result<()> {
        let old = self.inner.size()?;
        self.inner.resize(new_size, prealloc_mode)?;
        if new_size > old {
            if let Some(o) = &self.observer {
                o.zero(old, new_size - old);
            }
        }
        Ok(())
    }
}
