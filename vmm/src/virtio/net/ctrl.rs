//! The virtio-net control queue (VIRTIO_NET_F_CTRL_VQ), offered with multiqueue: the only
//! command berth takes is VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, which tells the device how many
//! queue pairs the guest uses. The guest is hostile: a command is read from at most
//! [`MAX_COMMAND`] device-readable bytes and [`MAX_DESCS`] descriptors, and anything that is not
//! a well-formed VQ_PAIRS_SET with 1 to max pairs gets VIRTIO_NET_ERR and changes nothing.

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryMmap};

/// VIRTIO_NET_CTRL_MQ: the multiqueue command class.
pub const CLASS_MQ: u8 = 4;
/// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
pub const MQ_VQ_PAIRS_SET: u8 = 0;
/// The device's answer: done.
pub const OK: u8 = 0;
/// The device's answer: refused.
pub const ERR: u8 = 1;

/// Most device-readable bytes of a command berth looks at (class, command, data); a command
/// with more is refused. VQ_PAIRS_SET has 4.
pub const MAX_COMMAND: usize = 64;
/// Most descriptors of a command chain (Linux uses 3: header, data, ack).
pub const MAX_DESCS: usize = 16;

/// Reads one command from `chain`, runs it through `set_pairs` when it is a valid
/// VQ_PAIRS_SET, and writes the ack into the first device-writable byte. Returns the used
/// length (1 when the ack was written, 0 when the chain has no writable byte or is malformed).
pub fn serve_command(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    max_pairs: u16,
    set_pairs: &mut dyn FnMut(u16) -> bool,
) -> u32 {
    let mut cmd = [0u8; MAX_COMMAND];
    let mut len = 0usize;
    let mut too_long = false;
    let mut ack_at = None;
    for (i, desc) in chain.enumerate() {
        if i >= MAX_DESCS {
            return 0;
        }
        if desc.is_write_only() {
            if ack_at.is_none() && desc.len() > 0 {
                ack_at = Some(desc.addr());
            }
            continue;
        }
        if ack_at.is_some() {
            // Readable after writable breaks the virtio ordering rule.
            return 0;
        }
        let n = desc.len() as usize;
        if len + n > MAX_COMMAND {
            too_long = true;
            continue;
        }
        if mem.read_slice(&mut cmd[len..len + n], desc.addr()).is_err() {
            return 0;
        }
        len += n;
    }
    let Some(ack_at) = ack_at else {
        return 0;
    };
    let ack = if !too_long && len == 4 && cmd[0] == CLASS_MQ && cmd[1] == MQ_VQ_PAIRS_SET {
        let pairs = u16::from_le_bytes([cmd[2], cmd[3]]);
        if (1..=max_pairs).contains(&pairs) && set_pairs(pairs) {
            OK
        } else {
            ERR
        }
    } else {
        ERR
    };
    match mem.write_obj(ack, ack_at) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

/// Serves every command on the control queue; returns whether to interrupt the driver.
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    max_pairs: u16,
    set_pairs: &mut dyn FnMut(u16) -> bool,
) -> bool {
    crate::virtio::drain_queue(queue, mem, |chain| {
        serve_command(mem, chain, max_pairs, set_pairs)
    })
}
