//! Vectored I/O between a backend and guest memory.
//!
//! A virtio-blk request's data lives in guest memory as a list of [`VolatileSlice`]s, each
//! one checked by vm-memory against the guest memory regions. A backend that can do it (raw
//! files) hands them to `preadv`/`pwritev` as iovecs, so the kernel copies straight between
//! its page cache and guest memory (one copy, like QEMU); the others go through a bounce
//! buffer of at most [`BOUNCE_CHUNK`] bytes (two copies). Guest memory is never seen as a Rust
//! `&[u8]`: the guest may change it at any moment, so only the kernel (through raw pointers)
//! and vm-memory's volatile copies touch it.
//!
//! berth's guest memory keeps no dirty bitmap (`GuestMemoryMmap<()>`), so writes through the
//! raw pointers need no dirty accounting.

use std::io;

use vm_memory::VolatileSlice;

use super::BlockBackend;

/// Bounce buffer granularity of the backends without vectored I/O: data moves in pieces of at
/// most this size, so each thread serving a disk holds at most this much, whatever the guest
/// asks for.
pub const BOUNCE_CHUNK: usize = 1 << 20;

/// Most iovecs one `preadv`/`pwritev` takes (Linux's `UIO_MAXIOV`); also the most slices a
/// request hands to a backend (longer chains take the bounce path), which bounds the memory a
/// request's iovec array needs.
pub const MAX_IOVS: usize = 1024;

/// A vectored transfer that failed after `done` bytes had moved.
#[derive(Debug)]
pub struct PartialIo {
    /// Bytes moved (in the slices' order) before the error.
    pub done: usize,
    /// What went wrong.
    pub error: io::Error,
}

impl PartialIo {
    /// An error before any byte moved.
    pub fn none(error: io::Error) -> Self {
        PartialIo { done: 0, error }
    }
}

/// Total length of `bufs`; an error if it does not fit a `usize`.
pub fn total_len(bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    bufs.iter()
        .try_fold(0usize, |n, b| n.checked_add(b.len()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffers too long"))
}

/// Calls `f` on each piece of `bufs` covering bytes `[at, at + len)` of their concatenation,
/// with the piece's position relative to `at`.
fn pieces<'a>(
    bufs: &[VolatileSlice<'a>],
    at: usize,
    len: usize,
    mut f: impl FnMut(VolatileSlice<'a>, usize),
) {
    let mut skip = at;
    let mut pos = 0;
    for b in bufs {
        if pos == len {
            break;
        }
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let n = (b.len() - skip).min(len - pos);
        // In bounds: skip < b.len() and n <= b.len() - skip.
        if let Ok(piece) = b.subslice(skip, n) {
            f(piece, pos);
        }
        skip = 0;
        pos += n;
    }
}

/// Copies `src` into `bufs` from byte `at` of their concatenation.
pub fn scatter(bufs: &[VolatileSlice<'_>], at: usize, src: &[u8]) {
    pieces(bufs, at, src.len(), |piece, pos| {
        piece.copy_from(&src[pos..pos + piece.len()]);
    });
}

/// Zeroes `len` bytes of `bufs` from byte `at` of their concatenation.
pub fn zero(bufs: &[VolatileSlice<'_>], at: usize, len: usize) {
    const ZEROES: [u8; 4096] = [0; 4096];
    pieces(bufs, at, len, |piece, _| {
        let mut off = 0;
        while off < piece.len() {
            let n = (piece.len() - off).min(ZEROES.len());
            if let Ok(p) = piece.subslice(off, n) {
                p.copy_from(&ZEROES[..n]);
            }
            off += n;
        }
    });
}

/// The slices covering bytes `[at, at + len)` of the concatenation of `bufs`.
pub fn sub<'a>(bufs: &[VolatileSlice<'a>], at: usize, len: usize) -> Vec<VolatileSlice<'a>> {
    let mut v = Vec::new();
    pieces(bufs, at, len, |piece, _| v.push(piece));
    v
}

/// Fills `dst` from `bufs`, from byte `at` of their concatenation.
pub fn gather(bufs: &[VolatileSlice<'_>], at: usize, dst: &mut [u8]) {
    pieces(bufs, at, dst.len(), |piece, pos| {
        piece.copy_to(&mut dst[pos..pos + piece.len()]);
    });
}

/// [`BlockBackend::read_vectored_at`] through a bounce buffer: `read_at` pieces of at most
/// [`BOUNCE_CHUNK`] bytes into `bounce`, each copied into `bufs`.
pub fn bounce_read<D: BlockBackend + ?Sized>(
    disk: &D,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
    bounce: &mut Vec<u8>,
) -> Result<(), PartialIo> {
    let total = total_len(bufs).map_err(PartialIo::none)?;
    let mut done = 0;
    while done < total {
        let n = BOUNCE_CHUNK.min(total - done);
        bounce.resize(n, 0);
        disk.read_at(&mut bounce[..n], offset + done as u64)
            .map_err(|error| PartialIo { done, error })?;
        scatter(bufs, done, &bounce[..n]);
        done += n;
    }
    Ok(())
}

/// [`BlockBackend::write_vectored_at`] through a bounce buffer: pieces of at most
/// [`BOUNCE_CHUNK`] bytes copied from `bufs` into `bounce`, each written with `write_at`.
pub fn bounce_write<D: BlockBackend + ?Sized>(
    disk: &D,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
    bounce: &mut Vec<u8>,
) -> Result<(), PartialIo> {
    let total = total_len(bufs).map_err(PartialIo::none)?;
    let mut done = 0;
    while done < total {
        let n = BOUNCE_CHUNK.min(total - done);
        bounce.resize(n, 0);
        gather(bufs, done, &mut bounce[..n]);
        disk.write_at(&bounce[..n], offset + done as u64)
            .map_err(|error| PartialIo { done, error })?;
        done += n;
    }
    Ok(())
}

/// Direction of a [`transfer`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// File to guest memory (`preadv`).
    Read,
    /// Guest memory to file (`pwritev`).
    Write,
}

/// Moves all of `bufs` between `fd` at `offset` and guest memory with `preadv`/`pwritev`,
/// looping on short transfers (at most [`MAX_IOVS`] iovecs per call) and on EINTR. The caller
/// checked that `[offset, offset + total_len(bufs))` lies in the file; a read that meets the
/// end of the file anyway (it shrank) is an `UnexpectedEof` error.
pub fn transfer(
    fd: std::os::fd::RawFd,
    dir: Dir,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
) -> Result<(), PartialIo> {
    let total = total_len(bufs).map_err(PartialIo::none)?;
    let mut done = 0;
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(bufs.len().min(MAX_IOVS));
    while done < total {
        let at = i64::try_from(offset + done as u64).map_err(|_| PartialIo {
            done,
            error: io::Error::new(io::ErrorKind::InvalidInput, "offset too large"),
        })?;
        iovs.clear();
        // The guards keep the pointers valid (they matter for vm-memory's Xen mappings; on
        // plain mmap'ed guest memory they are the slice's address) until after the syscall.
        // A read writes guest memory (a mutable guard); a write only reads it.
        let mut write_guards = Vec::new();
        let mut read_guards = Vec::new();
        pieces(bufs, done, total - done, |piece, _| {
            if iovs.len() == MAX_IOVS {
                return;
            }
            let base = match dir {
                Dir::Read => {
                    let guard = piece.ptr_guard_mut();
                    let p = guard.as_ptr();
                    write_guards.push(guard);
                    p
                }
                Dir::Write => {
                    let guard = piece.ptr_guard();
                    // pwritev only reads through it.
                    let p = guard.as_ptr().cast_mut();
                    read_guards.push(guard);
                    p
                }
            };
            iovs.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: piece.len(),
            });
        });
        let count = iovs.len() as libc::c_int;
        // SAFETY: every iovec covers a VolatileSlice that vm-memory checked against the guest
        // memory mappings, which stay mapped while `bufs` borrows them; the kernel copies
        // into (preadv) or out of (pwritev) that memory and keeps no pointer after returning.
        let r = unsafe {
            match dir {
                Dir::Read => libc::preadv(fd, iovs.as_ptr(), count, at),
                Dir::Write => libc::pwritev(fd, iovs.as_ptr(), count, at),
            }
        };
        drop((write_guards, read_guards));
        if r < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(PartialIo { done, error });
        }
        if r == 0 {
            let error = match dir {
                Dir::Read => io::Error::new(io::ErrorKind::UnexpectedEof, "end of file"),
                Dir::Write => io::Error::new(io::ErrorKind::WriteZero, "wrote nothing"),
            };
            return Err(PartialIo { done, error });
        }
        done += r as usize;
    }
    Ok(())
}
