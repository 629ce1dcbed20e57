//! Moving frames between the virtqueues and the backend. Guest buffers are hostile: chains
//! are bounded, and a chain that cannot hold or supply a frame is returned with nothing in it.

use std::io;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::tap::{NetBackend, MAX_IOV, VNET_HDR_LEN};

/// Largest frame plus header the device moves: a 64 KiB GSO packet and its headers.
pub const MAX_FRAME: usize = 65562;

/// Most descriptors an RX chain may have (QEMU's limit too; Linux builds at most about 20); a
/// longer chain is malformed. virtio-queue already ends every chain after a queue's (or an
/// indirect table's) worth of descriptors, so a loop cannot run forever either way.
pub const MAX_CHAIN_DESCS: usize = 1024;

/// Most pieces of guest memory a TX frame is handed to the backend in; a frame in more pieces
/// (a region boundary or a driver splitting it finely) is copied into one buffer first.
pub const MAX_TX_PARTS: usize = MAX_IOV;

type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// The guest memory holding one TX frame, gathered without copying.
struct TxParts<'m> {
    parts: [VolatileSlice<'m>; MAX_TX_PARTS],
    len: usize,
}

impl<'m> TxParts<'m> {
    fn new() -> Self {
        let empty: &'m mut [u8] = &mut [];
        TxParts {
            parts: [VolatileSlice::from(empty); MAX_TX_PARTS],
            len: 0,
        }
    }

    fn parts(&self) -> &[VolatileSlice<'m>] {
        &self.parts[..self.len]
    }
}

/// Where a TX frame ended up.
enum TxFrame {
    /// In `TxParts`, pointing at guest memory.
    Gathered,
    /// Copied into the caller's buffer (more pieces than `MAX_TX_PARTS`).
    Copied,
}

/// Appends the bytes of `part` to `buf`.
fn append(buf: &mut Vec<u8>, part: &VolatileSlice<'_>) {
    let at = buf.len();
    buf.resize(at + part.len(), 0);
    part.copy_to(&mut buf[at..]);
}

/// Collects the frame a TX chain holds: its device-readable buffers in order, checked against
/// guest memory, no copy. Write-only descriptors are skipped: the device never writes on TX,
/// so they are not read either (as with virtio-queue's `Reader`, and as the fuzz harness
/// expects). `None` (the frame is dropped) when the readable bytes are fewer than a header or
/// more than [`MAX_FRAME`] (checked as each descriptor comes, before its memory is looked at),
/// or a readable buffer is not in guest memory.
fn gather_tx<'m>(
    mem: &'m GuestMemoryMmap,
    chain: Chain<'_>,
    tx: &mut TxParts<'m>,
    buf: &mut Vec<u8>,
) -> Option<TxFrame> {
    tx.len = 0;
    let mut copied = false;
    let mut total = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            continue;
        }
        let len = desc.len() as usize;
        total = total.checked_add(len).filter(|&t| t <= MAX_FRAME)?;
        for part in GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
            let part = part.ok()?;
            if !copied && tx.len == MAX_TX_PARTS {
                buf.clear();
                for p in tx.parts() {
                    append(buf, p);
                }
                copied = true;
            }
            if copied {
                append(buf, &part);
            } else {
                tx.parts[tx.len] = part;
                tx.len += 1;
            }
        }
    }
    if total < VNET_HDR_LEN {
        return None;
    }
    Some(if copied {
        TxFrame::Copied
    } else {
        TxFrame::Gathered
    })
}

/// Sends every frame the guest queued on the TX queue. Returns whether the guest must be
/// interrupted. Frames go to the backend straight from guest memory
/// ([`NetBackend::write_frame_gather`]: one `writev` on a tap); `buf` is only used for a frame
/// in more than [`MAX_TX_PARTS`] pieces.
pub fn transmit(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &mut dyn NetBackend,
    buf: &mut Vec<u8>,
) -> bool {
    let mut tx = TxParts::new();
    super::super::drain_queue(queue, mem, |chain| {
        // A full or failing tap drops the frame, as a NIC would; so does a malformed chain.
        let _ = match gather_tx(mem, chain, &mut tx, buf) {
            Some(TxFrame::Gathered) => backend.write_frame_gather(tx.parts()),
            Some(TxFrame::Copied) => backend.write_frame(buf),
            None => Ok(()),
        };
        0
    })
}

/// Result of one delivery attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The frame went into guest buffers.
    Delivered,
    /// No (or not enough) guest buffers: keep the frame and retry after the guest adds some.
    NoBuffers,
    /// The frame cannot ever fit (buffers the guest gives are unusable): it was dropped.
    Dropped,
}

/// Where `num_buffers` is in the virtio-net header.
const NUM_BUFFERS: std::ops::Range<usize> = 10..12;

/// Where `num_buffers` went in the first chain (one piece, or two), to set it once the number
/// of chains is known.
type NumBuffersAt<'m> = [Option<VolatileSlice<'m>>; 2];

/// Copies as much of `frame` as fits into one RX chain, `frame` starting at byte `from` of the
/// whole frame, and returns the bytes written. `None` for a malformed chain, which then takes
/// nothing: a device-readable descriptor (wrong direction), a buffer outside guest memory,
/// more than [`MAX_CHAIN_DESCS`] descriptors, or a chain cut short (a loop, a next index past
/// the queue, a bad indirect table, more than 4 GiB: virtio-queue ends the walk there, after a
/// descriptor that still says NEXT). The whole chain is checked, also past the end of the frame.
fn fill_chain<'m>(
    mem: &'m GuestMemoryMmap,
    chain: Chain<'_>,
    frame: &[u8],
    from: usize,
    num_buffers_at: &mut NumBuffersAt<'m>,
) -> Option<usize> {
    let mut written = 0;
    let mut descs = 0;
    let mut ended = false;
    for desc in chain {
        descs += 1;
        if descs > MAX_CHAIN_DESCS || !desc.is_write_only() {
            return None;
        }
        ended = !desc.has_next();
        let len = desc.len() as usize;
        if written == frame.len() {
            // The frame is in: only check the rest of the chain.
            if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
                return None;
            }
            continue;
        }
        for part in GuestMemoryBackend::get_slices(mem, desc.addr(), len) {
            let part = part.ok()?;
            let n = part.len().min(frame.len() - written);
            if n == 0 {
                continue;
            }
            part.copy_from(&frame[written..written + n]);
            // Remember where header bytes 10 and 11 landed (first chain only; one piece, or
            // two when a descriptor ends between them).
            let at = from + written;
            let (lo, hi) = (NUM_BUFFERS.start.max(at), NUM_BUFFERS.end.min(at + n));
            if lo < hi {
                let slot = usize::from(num_buffers_at[0].is_some());
                num_buffers_at[slot] = part.subslice(lo - at, hi - lo).ok();
            }
            written += n;
        }
    }
    ended.then_some(written)
}

/// Copies one frame (header included) into the RX queue. With mergeable buffers the frame
/// may span several chains and `num_buffers` says how many; without, it must fit in one.
pub fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    mergeable: bool,
) -> Delivery {
    deliver_with(queue, mem, frame, mergeable, &mut Vec::new())
}

/// [`deliver`] with a caller-kept list for the chains' used entries (cleared first), so that
/// delivering allocates nothing. Each chain is walked once: the frame is copied in as its
/// descriptors come, and `num_buffers` is stored where the walk saw header bytes 10 and 11
/// once the chain count is known, before any chain is marked used.
pub fn deliver_with(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    mergeable: bool,
    used: &mut Vec<(u16, u32)>,
) -> Delivery {
    used.clear();
    let start_avail = queue.next_avail();
    let mut num_buffers_at: NumBuffersAt = [None, None];
    let mut written = 0;
    while written < frame.len() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Not enough buffers yet: nothing is marked used, so give them back and wait.
            queue.set_next_avail(start_avail);
            return Delivery::NoBuffers;
        };
        let head = chain.head_index();
        let n =
            fill_chain(mem, chain, &frame[written..], written, &mut num_buffers_at).unwrap_or(0);
        used.push((head, n as u32));
        written += n;
        let unusable = n == 0 || (used.len() == 1 && n < VNET_HDR_LEN);
        if unusable || (!mergeable && written < frame.len()) {
            // The guest's buffers cannot take this frame: return them empty (the driver counts
            // a length error) and drop the frame rather than wait forever.
            for &(h, _) in used.iter() {
                let _ = queue.add_used(mem, h, 0);
            }
            return Delivery::Dropped;
        }
    }
    // num_buffers: how many chains hold the frame; 1 without mergeable buffers, as virtio 1.x
    // requires.
    let count = (used.len() as u16).to_le_bytes();
    let mut done = 0;
    for at in num_buffers_at.iter().flatten() {
        at.copy_from(&count[done..]);
        done += at.len();
    }
    for &(head, len) in used.iter() {
        let _ = queue.add_used(mem, head, len);
    }
    Delivery::Delivered
}

/// Reads frames from the backend into the RX queue until the backend is empty or the guest has
/// no buffers. `pending` holds a frame that did not fit last time. Returns (interrupt needed,
/// backend drained). Allocates a frame buffer per call: the worker uses [`receive_with`].
pub fn receive(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &mut dyn NetBackend,
    mergeable: bool,
    pending: &mut Option<Vec<u8>>,
) -> (bool, bool) {
    let mut buf = vec![0u8; MAX_FRAME];
    receive_with(queue, mem, backend, mergeable, pending, &mut buf)
}

/// [`receive`] with a caller-kept buffer of at least [`MAX_FRAME`] bytes: frames are read into
/// it and copied to guest memory from there, so the common path allocates nothing; only a
/// frame that must wait for guest buffers is copied out into `pending`. The chains' used entries
/// go through one list per call, not one per frame.
pub fn receive_with(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &mut dyn NetBackend,
    mergeable: bool,
    pending: &mut Option<Vec<u8>>,
    buf: &mut [u8],
) -> (bool, bool) {
    let mut delivered = false;
    let mut used = Vec::new();
    let irq = |queue: &mut Queue, delivered: bool| {
        delivered && queue.needs_notification(mem).unwrap_or(true)
    };
    // A frame that did not fit last time goes first.
    if let Some(frame) = pending.take() {
        if deliver_with(queue, mem, &frame, mergeable, &mut used) == Delivery::NoBuffers {
            *pending = Some(frame);
            return (false, false);
        }
        delivered = true;
    }
    loop {
        let n = match backend.read_frame(buf) {
            Ok(n) if n >= VNET_HDR_LEN => n,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return (irq(queue, delivered), true)
            }
            Err(_) => return (delivered, true),
        };
        if deliver_with(queue, mem, &buf[..n], mergeable, &mut used) == Delivery::NoBuffers {
            *pending = Some(buf[..n].to_vec());
            return (irq(queue, delivered), false);
        }
        delivered = true;
    }
}
