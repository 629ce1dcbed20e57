//! Raw disks: regular files and block devices, guest byte N at file byte N.
//!
//! Several threads read and write at once (`pread`/`pwrite` need no shared file position).
//! virtio-blk data moves with `preadv`/`pwritev` straight between the page cache and guest
//! memory ([`iov`]).
//! I/O goes through the host page cache (like QEMU's `cache=writeback`); `flush` is
//! `fdatasync`, which also persists the block allocation a write or hole punch changed, so no
//! full `fsync` is needed (the file's size never changes).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use vm_memory::VolatileSlice;

use super::iov::{self, Dir, PartialIo};
use super::{check_range, check_write, BlockBackend, DiskError};

/// `_IOR(0x12, 114, u64)`: a block device's size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 119)`: discard a byte range `[u64; 2]` of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;

/// Zeroes written per `pwrite` by the fallback paths.
const ZERO_CHUNK: usize = 1 << 20;

/// A raw file or block device.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    size: u64,
    read_only: bool,
    block_device: bool,
    /// `fallocate` modes the kernel said this file does not support; not retried. Shared by
    /// the threads serving the disk: a lost update only means one more failed try.
    unsupported_modes: AtomicI32,
}

impl RawDisk {
    /// Opens `path` (O_RDONLY when `read_only`, else O_RDWR) and locks it like QEMU does.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| DiskError::io(path, e, !read_only))?;
        super::lock::lock_image(&file, path, !read_only)?;
        Self::from_file(file, read_only).map_err(|e| DiskError::io(path, e, !read_only))
    }

    /// Wraps an open file; `read_only` must match how it was opened.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let block_device = file.metadata()?.file_type().is_block_device();
        let size = if block_device {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 through the valid pointer.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            size
        } else {
            file.metadata()?.len()
        };
        Ok(RawDisk {
            file,
            size,
            read_only,
            block_device,
            unsupported_modes: AtomicI32::new(0),
        })
    }

    /// Whether this is a block device rather than a regular file.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// `fallocate(mode)` over the range; `Ok(false)` when this file cannot do it.
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<bool> {
        if len == 0 {
            return Ok(true);
        }
        if self.unsupported_modes.load(Ordering::Relaxed) & mode == mode {
            return Ok(false);
        }
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(false);
        };
        loop {
            // SAFETY: plain syscall on an fd we own.
            let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The file system or device cannot do this mode (or this alignment).
                Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENODEV | libc::ENOTTY) => {
                    self.unsupported_modes.fetch_or(mode, Ordering::Relaxed);
                    return Ok(false);
                }
                Some(libc::EINVAL) => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    /// Writes literal zeroes: the fallback when the kernel cannot zero or punch the range.
    fn write_zero_bytes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let end = offset + len;
        while offset < end {
            let n = zeroes.len().min((end - offset) as usize);
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    fn blkdiscard(&self, offset: u64, len: u64) -> bool {
        let range = [offset, len];
        // SAFETY: BLKDISCARD reads two u64 through the valid pointer.
        unsafe { libc::ioctl(self.file.as_raw_fd(), BLKDISCARD, &range) == 0 }
    }
}

impl BlockBackend for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_write(self.read_only, self.size, offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)
    }

    fn read_vectored_at(
        &self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
        _bounce: &mut Vec<u8>,
    ) -> Result<(), PartialIo> {
        let len = iov::total_len(bufs).map_err(PartialIo::none)?;
        check_range(self.size, offset, len as u64).map_err(PartialIo::none)?;
        iov::transfer(self.file.as_raw_fd(), Dir::Read, bufs, offset)
    }

    fn write_vectored_at(
        &self,
        bufs: &[VolatileSlice<'_>],
        offset: u64,
        _bounce: &mut Vec<u8>,
    ) -> Result<(), PartialIo> {
        let len = iov::total_len(bufs).map_err(PartialIo::none)?;
        check_write(self.read_only, self.size, offset, len as u64).map_err(PartialIo::none)?;
        iov::transfer(self.file.as_raw_fd(), Dir::Write, bufs, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_write(self.read_only, self.size, offset, len)?;
        // A device's discard may leave old data readable, which the trait allows.
        if self.block_device && self.blkdiscard(offset, len) {
            return Ok(());
        }
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        check_write(self.read_only, self.size, offset, len)?;
        // Both modes read back as zeroes; on block devices the kernel maps them to
        // REQ_OP_WRITE_ZEROES with or without unmapping.
        let mode = if may_unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        if self.fallocate(mode, offset, len)? {
            return Ok(());
        }
        self.write_zero_bytes(offset, len)
    }
}
