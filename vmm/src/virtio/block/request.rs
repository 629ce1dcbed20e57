//! virtio-blk requests: parse a descriptor chain, run it against the backend, and answer with
//! a status byte. Everything in the chain is guest-controlled: a malformed chain gets an error
//! status (or, when not even a status byte can be written, an empty used entry), never a panic.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use crate::block::{BlockBackend, BOUNCE_CHUNK, MAX_IOVS, SECTOR_SIZE};

/// Request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Device id (serial).
pub const T_GET_ID: u32 = 8;
/// Discard.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;

/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error (also: bad request, out of range, read-only).
pub const S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = 2;

/// Length of the serial returned by GET_ID.
pub const ID_BYTES: usize = 20;
/// Largest discard/write-zeroes segment count berth accepts per request.
pub const MAX_SEGMENTS: u32 = 32;
/// Largest sector count of one discard/write-zeroes segment.
pub const MAX_SEGMENT_SECTORS: u32 = 1 << 22;
/// Bounce buffer granularity: where data moves through a thread's bounce buffer (backends
/// without vectored I/O, or chains of more than [`MAX_IOVS`] pieces) it moves in pieces of at
/// most this size, so each thread serving a disk holds at most this much, whatever the guest
/// asks for.
pub const CHUNK: usize = BOUNCE_CHUNK;
/// Length of the request header (type, reserved, sector).
const HEADER_LEN: usize = 16;
/// write-zeroes flag: the device may deallocate.
const FLAG_UNMAP: u32 = 1;

/// A disk as the request engine sees it. Shared by the threads serving it: requests run
/// concurrently, each with a bounce buffer of its thread's.
pub struct Disk {
    /// Storage.
    pub backend: Box<dyn BlockBackend>,
    /// Refuse writes.
    pub read_only: bool,
    /// Serial number for GET_ID, NUL padded.
    pub serial: [u8; ID_BYTES],
}

impl Disk {
    /// A disk over `backend`.
    pub fn new(backend: Box<dyn BlockBackend>, read_only: bool, serial: &str) -> Self {
        let mut s = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        s[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Disk {
            read_only: read_only || backend.read_only(),
            backend,
            serial: s,
        }
    }

    fn capacity(&self) -> u64 {
        self.backend.size()
    }

    /// Byte range of `sectors` starting at `sector`, if it lies inside the disk.
    fn range(&self, sector: u64, bytes: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(bytes)?;
        (end <= self.capacity()).then_some(start)
    }
}

/// Executes the request in `chain`; returns the number of bytes written into the chain's
/// device-writable buffers (what goes into the used ring). Data moves between the backend and
/// the chain's guest memory with the backend's vectored calls (straight into guest memory for
/// raw disks) or, failing that, through `buf` (grown to at most [`CHUNK`] bytes).
pub fn execute<T>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<T>,
    disk: &Disk,
    buf: &mut Vec<u8>,
) -> u32
where
    T: std::ops::Deref + Clone,
    T::Target: vm_memory::GuestMemory + Sized,
{
    let reader = Reader::new(mem, chain.clone());
    let writer = Writer::new(mem, chain.clone());
    let (Ok(mut reader), Ok(mut writer)) = (reader, writer) else {
        // Descriptors outside guest memory: nothing can be answered.
        return 0;
    };
    let avail = writer.available_bytes();
    if avail == 0 {
        return 0;
    }
    // The status byte is the last device-writable byte.
    let Ok(mut status_w) = writer.split_at(avail - 1) else {
        return 0;
    };
    let data = DataBufs { mem, chain };
    let (status, written) = run(&mut reader, &mut writer, &data, disk, buf);
    let _ = status_w.write_all(&[status]);
    (written + 1) as u32
}

/// The guest memory of a chain's data, for the backend's vectored calls.
struct DataBufs<'m, T> {
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<T>,
}

impl<'m, T> DataBufs<'m, T>
where
    T: std::ops::Deref + Clone,
    T::Target: vm_memory::GuestMemory + Sized,
{
    /// The `len` bytes after the first `skip` of the chain's device-writable (`writable`) or
    /// device-readable descriptors, as slices of guest memory checked by vm-memory (the same
    /// descriptors, in the same order, as virtio-queue's `Writer`/`Reader` use). `Ok(None)`
    /// when they take more than [`MAX_IOVS`] slices: the caller bounces instead, so the slice
    /// array stays bounded whatever the chain (indirect tables can hold 65535 descriptors).
    fn slices(
        &self,
        writable: bool,
        mut skip: usize,
        len: usize,
    ) -> Result<Option<Vec<VolatileSlice<'m>>>, ()> {
        let chain = self.chain.clone();
        let descs = if writable {
            chain.writable()
        } else {
            chain.readable()
        };
        let mut out = Vec::new();
        let mut left = len;
        for desc in descs {
            if left == 0 {
                break;
            }
            let pieces = GuestMemoryBackend::get_slices(self.mem, desc.addr(), desc.len() as usize);
            for piece in pieces {
                let piece = piece.map_err(|_| ())?;
                if skip >= piece.len() {
                    skip -= piece.len();
                    continue;
                }
                let n = (piece.len() - skip).min(left);
                if n == 0 {
                    break;
                }
                if out.len() == MAX_IOVS {
                    return Ok(None);
                }
                out.push(piece.subslice(skip, n).map_err(|_| ())?);
                skip = 0;
                left -= n;
            }
        }
        // Fewer bytes than the Reader/Writer counted cannot happen (same descriptors); if it
        // did, the request fails rather than moving less than it says.
        if left == 0 {
            Ok(Some(out))
        } else {
            Err(())
        }
    }
}

/// Parses and runs one request; returns its status and the data bytes written to the guest.
fn run<T>(
    reader: &mut Reader<'_>,
    data: &mut Writer<'_>,
    bufs: &DataBufs<'_, T>,
    disk: &Disk,
    buf: &mut Vec<u8>,
) -> (u8, usize)
where
    T: std::ops::Deref + Clone,
    T::Target: vm_memory::GuestMemory + Sized,
{
    let mut hdr = [0u8; HEADER_LEN];
    if reader.read_exact(&mut hdr).is_err() {
        return (S_IOERR, 0);
    }
    let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    match kind {
        T_IN => read(sector, data, bufs, disk, buf),
        T_OUT => (write(sector, reader, bufs, disk, buf), 0),
        T_FLUSH => (status_of(disk.backend.flush()), 0),
        T_GET_ID => {
            let n = ID_BYTES.min(data.available_bytes());
            match data.write_all(&disk.serial[..n]) {
                Ok(()) => (S_OK, n),
                Err(_) => (S_IOERR, 0),
            }
        }
        T_DISCARD | T_WRITE_ZEROES => (segments(kind, reader, disk), 0),
        _ => (S_UNSUPP, 0),
    }
}

fn status_of(r: std::io::Result<()>) -> u8 {
    if r.is_ok() {
        S_OK
    } else {
        S_IOERR
    }
}

fn read<T>(
    sector: u64,
    data: &mut Writer<'_>,
    bufs: &DataBufs<'_, T>,
    disk: &Disk,
    buf: &mut Vec<u8>,
) -> (u8, usize)
where
    T: std::ops::Deref + Clone,
    T::Target: vm_memory::GuestMemory + Sized,
{
    let len = data.available_bytes();
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return (S_IOERR, 0);
    }
    let Some(mut offset) = disk.range(sector, len as u64) else {
        return (S_IOERR, 0);
    };
    // The data descriptors end where the status byte begins.
    match bufs.slices(true, 0, len) {
        Err(()) => return (S_IOERR, 0),
        Ok(Some(slices)) => {
            return match disk.backend.read_vectored_at(&slices, offset, buf) {
                Ok(()) => (S_OK, len),
                // Only what reached guest memory counts as written.
                Err(partial) => (S_IOERR, partial.done),
            };
        }
        Ok(None) => {}
    }
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        buf.resize(n, 0);
        if disk.backend.read_at(&mut buf[..n], offset).is_err()
            || data.write_all(&buf[..n]).is_err()
        {
            return (S_IOERR, done);
        }
        done += n;
        offset += n as u64;
    }
    (S_OK, done)
}

fn write<T>(
    sector: u64,
    reader: &mut Reader<'_>,
    bufs: &DataBufs<'_, T>,
    disk: &Disk,
    buf: &mut Vec<u8>,
) -> u8
where
    T: std::ops::Deref + Clone,
    T::Target: vm_memory::GuestMemory + Sized,
{
    if disk.read_only {
        return S_IOERR;
    }
    let len = reader.available_bytes();
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return S_IOERR;
    }
    let Some(mut offset) = disk.range(sector, len as u64) else {
        return S_IOERR;
    };
    // The data follows the 16-byte header the reader consumed.
    match bufs.slices(false, HEADER_LEN, len) {
        Err(()) => return S_IOERR,
        Ok(Some(slices)) => {
            return status_of(
                disk.backend
                    .write_vectored_at(&slices, offset, buf)
                    .map_err(|p| p.error),
            )
        }
        Ok(None) => {}
    }
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        buf.resize(n, 0);
        if reader.read_exact(&mut buf[..n]).is_err()
            || disk.backend.write_at(&buf[..n], offset).is_err()
        {
            return S_IOERR;
        }
        done += n;
        offset += n as u64;
    }
    S_OK
}

fn segments(kind: u32, reader: &mut Reader<'_>, disk: &Disk) -> u8 {
    if disk.read_only {
        return S_IOERR;
    }
    let len = reader.available_bytes();
    let count = len / 16;
    if len == 0 || !len.is_multiple_of(16) || count > MAX_SEGMENTS as usize {
        return S_UNSUPP;
    }
    // Validate every segment before touching the disk, so a bad one changes nothing.
    let mut segs = Vec::with_capacity(count);
    for _ in 0..count {
        let mut s = [0u8; 16];
        if reader.read_exact(&mut s).is_err() {
            return S_IOERR;
        }
        let sector = u64::from_le_bytes(s[0..8].try_into().unwrap());
        let sectors = u32::from_le_bytes(s[8..12].try_into().unwrap());
        let flags = u32::from_le_bytes(s[12..16].try_into().unwrap());
        let allowed = if kind == T_WRITE_ZEROES {
            FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 || sectors > MAX_SEGMENT_SECTORS {
            return S_UNSUPP;
        }
        let bytes = u64::from(sectors) * SECTOR_SIZE;
        let Some(offset) = disk.range(sector, bytes) else {
            return S_IOERR;
        };
        segs.push((offset, bytes, flags & FLAG_UNMAP != 0));
    }
    for (offset, bytes, unmap) in segs {
        let r = if kind == T_DISCARD {
            disk.backend.discard(offset, bytes)
        } else {
            disk.backend.write_zeroes(offset, bytes, unmap)
        };
        if r.is_err() {
            return S_IOERR;
        }
    }
    S_OK
}
