//! Moving frames between the virtqueues and the backend. Guest buffers are hostile: chains
//! are bounded, and a chain that cannot hold or supply a frame is returned with nothing in it.

use std::io::{self, Read, Write};

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::tap::{NetBackend, VNET_HDR_LEN};

/// Largest frame plus header the device moves: a 64 KiB GSO packet and its headers.
pub const MAX_FRAME: usize = 65562;

/// Sends every frame the guest queued on the TX queue. Returns whether the guest must be
/// interrupted.
pub fn transmit(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &mut dyn NetBackend,
    buf: &mut Vec<u8>,
) -> bool {
    super::super::drain_queue(queue, mem, |chain| {
        if let Ok(mut r) = Reader::new(mem, chain) {
            let len = r.available_bytes();
            // Shorter than a header or longer than any frame: dropped, not sent.
            if (VNET_HDR_LEN..=MAX_FRAME).contains(&len) {
                buf.resize(len, 0);
                if r.read_exact(buf).is_ok() {
                    // A full or failing tap drops the frame, as a NIC would.
                    let _ = backend.write_frame(buf);
                }
            }
        }
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

/// Copies one frame (header included) into the RX queue. With mergeable buffers the frame
/// may span several chains and `num_buffers` says how many; without, it must fit in one.
pub fn deliver(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    mergeable: bool,
) -> Delivery {
    let start_avail = queue.next_avail();
    let mut parts: Vec<(u16, u32)> = Vec::new();
    let mut first = None;
    let mut written = 0;
    while written < frame.len() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Not enough buffers yet: nothing is marked used, so give them back and wait.
            queue.set_next_avail(start_avail);
            return Delivery::NoBuffers;
        };
        let head = chain.head_index();
        if first.is_none() {
            first = Some(chain.clone());
        }
        let n = match Writer::new(mem, chain) {
            Ok(mut w) => {
                let n = w.available_bytes().min(frame.len() - written);
                if w.write_all(&frame[written..written + n]).is_ok() {
                    n
                } else {
                    0
                }
            }
            Err(_) => 0,
        };
        parts.push((head, n as u32));
        written += n;
        let unusable = n == 0 || (parts.len() == 1 && n < VNET_HDR_LEN);
        if unusable || (!mergeable && written < frame.len()) {
            // The guest's buffers cannot take this frame: return them empty (the driver counts
            // a length error) and drop the frame rather than wait forever.
            for (h, _) in parts {
                let _ = queue.add_used(mem, h, 0);
            }
            return Delivery::Dropped;
        }
    }
    // num_buffers (bytes 10..12 of the header, in the first chain): how many chains hold the
    // frame; 1 without mergeable buffers, as virtio 1.x requires.
    let count = (parts.len() as u16).to_le_bytes();
    if let Some(chain) = first {
        if let Ok(mut w) = Writer::new(mem, chain) {
            if let Ok(mut tail) = w.split_at(10) {
                let _ = tail.write_all(&count);
            }
        }
    }
    for (head, len) in parts {
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
/// frame that must wait for guest buffers is copied out into `pending`.
pub fn receive_with(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &mut dyn NetBackend,
    mergeable: bool,
    pending: &mut Option<Vec<u8>>,
    buf: &mut [u8],
) -> (bool, bool) {
    let mut delivered = false;
    let irq = |queue: &mut Queue, delivered: bool| {
        delivered && queue.needs_notification(mem).unwrap_or(true)
    };
    // A frame that did not fit last time goes first.
    if let Some(frame) = pending.take() {
        if deliver(queue, mem, &frame, mergeable) == Delivery::NoBuffers {
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
        if deliver(queue, mem, &buf[..n], mergeable) == Delivery::NoBuffers {
            *pending = Some(buf[..n].to_vec());
            return (irq(queue, delivered), false);
        }
        delivered = true;
    }
}
