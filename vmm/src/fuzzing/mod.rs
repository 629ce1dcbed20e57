//! Fuzzing harnesses for everything a guest controls: virtio-blk requests, the virtio-net
//! datapath, the virtio-balloon queues, the virtio-input event queue, and PCI configuration / BAR accesses to a virtio-pci
//! function; and for what a network peer controls: the VNC console's WebSocket and RFB input
//! path.
//!
//! Each harness takes arbitrary bytes, builds the device state they describe, drives the real
//! device code, and panics when the code panics or breaks an invariant. The same functions run
//! under libFuzzer (`vmm/fuzz`, nightly) and on stable in `vmm/tests/fuzz_corpus.rs`, which
//! replays the committed corpus and a few thousand pseudo-random inputs. Input formats are
//! described on each harness and in `docs/fuzzing.md`; the [`seeds`] module builds
//! well-formed inputs.
//!
//! Not part of berth's API: it exists for the fuzz crate and the tests.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout;
use crate::block::BlockBackend;
use crate::bus::Bus;
use crate::irq::{MsiMessage, MsiRouter};
use crate::pci::access::{PciConfigIo, PciConfigMmio, CONFIG_IO_BASE, CONFIG_IO_LEN};
use crate::pci::config::{self as pcicfg, CONFIG_SIZE};
use crate::pci::{PciBus, PciDevice};
use crate::virtio::block::process_queue;
use crate::virtio::block::request::{Disk, S_IOERR, S_OK, S_UNSUPP};
use crate::virtio::net::datapath::{self, Delivery, MAX_FRAME};
use crate::virtio::net::tap::{NetBackend, VNET_HDR_LEN};
use crate::virtio::net::{ctrl, Net, F_CTRL_VQ, F_MQ, MAX_QUEUE_PAIRS};
use crate::virtio::pci::{IoEvents, VirtioPci, BAR_SIZE};
use crate::virtio::{
    features, status, ActivateContext, ActivateError, DeviceInfo, VirtioDevice, VirtioInterrupt,
};

/// Guest memory the queue harnesses use: two adjacent regions, so buffers may straddle them.
pub const MEM_SIZE: u64 = 0x1_0000;
/// Largest queue the harnesses build (what berth's devices offer).
pub const MAX_QUEUE: u16 = 256;

/// Descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Reads fuzz input front to back; exhausted input reads as zeroes.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.0.len());
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        b
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Where a split virtqueue lives in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue size (a power of two up to [`MAX_QUEUE`]).
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
}

impl QueueLayout {
    /// The default layout: the descriptor table at 0 and the rings right after it.
    pub fn packed(size: u16) -> Self {
        let s = u64::from(size);
        let avail = 16 * s;
        let used = (avail + 6 + 2 * s).next_multiple_of(4);
        QueueLayout {
            size,
            desc: 0,
            avail,
            used,
        }
    }

    /// First byte after the used ring, rounded up to 16: where buffers can start.
    pub fn end(&self) -> u64 {
        (self.used + 6 + 8 * u64::from(self.size)).next_multiple_of(16)
    }

    /// (address, length) of the descriptor table, available ring and used ring.
    fn regions(&self) -> [(u64, u64); 3] {
        let s = u64::from(self.size);
        [
            (self.desc, 16 * s),
            (self.avail, 6 + 2 * s),
            (self.used, 6 + 8 * s),
        ]
    }
}

/// Flag bits of byte 0 of a queue harness input.
pub mod queue_flags {
    /// log2 of the queue size (capped at 8).
    pub const SIZE_LOG2: u8 = 0x0f;
    /// Negotiate EVENT_IDX.
    pub const EVENT_IDX: u8 = 0x10;
    /// The input carries its own ring addresses instead of [`super::QueueLayout::packed`].
    pub const CUSTOM_LAYOUT: u8 = 0x20;
}

fn queue_size(flags: u8) -> u16 {
    1 << (flags & queue_flags::SIZE_LOG2).min(8)
}

fn parse_layout(flags: u8, input: &mut Input<'_>) -> QueueLayout {
    let size = queue_size(flags);
    if flags & queue_flags::CUSTOM_LAYOUT != 0 {
        QueueLayout {
            size,
            desc: u64::from(input.u16()),
            avail: u64::from(input.u16()),
            used: u64::from(input.u16()),
        }
    } else {
        QueueLayout::packed(size)
    }
}

fn guest_memory(image: &[u8]) -> GuestMemoryMmap {
    let half = (MEM_SIZE / 2) as usize;
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), half), (GuestAddress(half as u64), half)])
            .expect("guest memory");
    let n = image.len().min(MEM_SIZE as usize);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("image fits in guest memory");
    mem
}

/// What the blk and net harnesses set up alike: guest memory and the queue over it.
struct QueueRig {
    mem: GuestMemoryMmap,
    queue: Queue,
    /// Where the rings are: virtio-queue keeps the previous address when refusing a
    /// misaligned one, so this is where the queue says, not always where the input asked.
    layout: QueueLayout,
    /// The ring index the queue starts at.
    start: u16,
}

impl QueueRig {
    /// Reads the ring layout from `input` (what follows the harness's own header bytes), loads
    /// the rest as the guest memory image, and builds a ready queue starting at ring index
    /// `start` as the transport would hand it to a device. None when the transport would
    /// refuse the queue (misaligned or outside memory).
    fn new(flags: u8, start: u16, mut input: Input<'_>) -> Option<QueueRig> {
        let mut layout = parse_layout(flags, &mut input);
        let mem = guest_memory(input.rest());
        let mut q = Queue::new(MAX_QUEUE).ok()?;
        q.try_set_size(layout.size).ok()?;
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(layout.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(layout.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(layout.used);
        q.set_used_ring_address(lo, hi);
        q.set_event_idx(flags & queue_flags::EVENT_IDX != 0);
        q.set_ready(true);
        q.set_next_avail(start);
        q.set_next_used(start);
        layout.desc = q.desc_table();
        layout.avail = q.avail_ring();
        layout.used = q.used_ring();
        q.is_valid(&mem).then_some(QueueRig {
            mem,
            queue: q,
            layout,
            start,
        })
    }

    /// What every drain must satisfy: every popped chain but a last invalid one is used, and a
    /// notification only follows used buffers. Returns the chains (popped, used).
    fn check_drained(&self, notify: bool) -> (u16, u16) {
        let popped = self.queue.next_avail().wrapping_sub(self.start);
        let used = self.queue.next_used().wrapping_sub(self.start);
        assert!(
            used <= popped && popped - used <= 1,
            "popped {popped} chains but used {used}"
        );
        assert!(!notify || used > 0, "notification without used buffers");
        (popped, used)
    }

    /// The first `used` used entries with the [`survey`]ed chains they answer, for when the
    /// chains cannot have changed under the device: each entry names its chain's head.
    fn used_entries<'c>(
        &self,
        chains: &'c [ChainInfo],
        (popped, used): (u16, u16),
    ) -> Vec<(&'c ChainInfo, u32)> {
        assert!(
            usize::from(popped) <= chains.len(),
            "popped {popped} chains, only {} available",
            chains.len()
        );
        let mut out = Vec::new();
        for (k, chain) in chains.iter().take(usize::from(used)).enumerate() {
            let (id, len) = used_elem(&self.mem, &self.layout, self.start.wrapping_add(k as u16));
            assert_eq!(
                id,
                u32::from(chain.head),
                "used entry {k} names another chain"
            );
            out.push((chain, len));
        }
        out
    }
}

/// One descriptor chain as virtio-queue walks it before the device runs.
#[derive(Debug)]
struct ChainInfo {
    head: u16,
    readable: Vec<(u64, u64)>,
    writable: Vec<(u64, u64)>,
}

impl ChainInfo {
    fn writable_bytes(&self) -> u64 {
        self.writable.iter().map(|r| r.1).sum()
    }
    fn readable_bytes(&self) -> u64 {
        self.readable.iter().map(|r| r.1).sum()
    }
    /// Every buffer lies in guest memory (so Reader/Writer construction succeeds).
    fn in_memory(&self, mem: &GuestMemoryMmap) -> bool {
        let ok = |regions: &[(u64, u64)], p: Permissions| {
            regions
                .iter()
                .all(|&(a, l)| l == 0 || mem.check_range(GuestAddress(a), l as usize, p))
        };
        ok(&self.readable, Permissions::Read) && ok(&self.writable, Permissions::Write)
    }
    /// Every readable buffer lies in guest memory (so Reader construction succeeds).
    fn readable_in_memory(&self, mem: &GuestMemoryMmap) -> bool {
        self.readable.iter().all(|&(a, l)| {
            l == 0 || mem.check_range(GuestAddress(a), l as usize, Permissions::Read)
        })
    }
    /// Address of the last device-writable byte, where virtio-blk puts the status.
    fn last_writable_byte(&self) -> Option<u64> {
        self.writable
            .iter()
            .rev()
            .find(|r| r.1 > 0)
            .map(|&(a, l)| a + l - 1)
    }
}

/// Walks every available chain of a copy of `queue` (virtio-queue's own iteration, so the
/// chains are exactly those the device will see if memory does not change under it).
fn survey(queue: &Queue, mem: &GuestMemoryMmap) -> Vec<ChainInfo> {
    let Ok(mut q) = Queue::try_from(queue.state()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let mut info = ChainInfo {
            head: chain.head_index(),
            readable: Vec::new(),
            writable: Vec::new(),
        };
        for d in chain {
            let r = (d.addr().0, u64::from(d.len()));
            if d.is_write_only() {
                info.writable.push(r);
            } else {
                info.readable.push(r);
            }
        }
        out.push(info);
    }
    out
}

/// The rings plus every indirect table the descriptor table points at: memory whose change
/// while the device runs would change the chains.
fn metadata(layout: &QueueLayout, mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut m = layout.regions().to_vec();
    for i in 0..u64::from(layout.size) {
        let mut d = [0u8; 16];
        if mem
            .read_slice(&mut d, GuestAddress(layout.desc + 16 * i))
            .is_ok()
        {
            let flags = u16::from_le_bytes([d[12], d[13]]);
            if flags & F_INDIRECT != 0 {
                let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
                let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
                m.push((addr, u64::from(len)));
            }
        }
    }
    m
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 > 0 && b.1 > 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Whether the device's writes cannot change what it reads: the writable buffers of all
/// chains are disjoint from each other and from `fixed` (the [`metadata`]), and the used ring
/// (`fixed[2]`) is disjoint from the rest of it. Only then are exact checks sound.
fn writes_are_isolated(chains: &[ChainInfo], fixed: &[(u64, u64)]) -> bool {
    let used_ring = fixed[2];
    let others = fixed.iter().enumerate().filter(|&(i, _)| i != 2);
    if others.map(|(_, &f)| f).any(|f| overlaps(f, used_ring)) {
        return false;
    }
    let mut w: Vec<(u64, u64)> = chains
        .iter()
        .flat_map(|c| c.writable.iter().copied())
        .filter(|r| r.1 > 0)
        .collect();
    if w.iter().any(|&r| fixed.iter().any(|&f| overlaps(r, f))) {
        return false;
    }
    w.sort_unstable();
    w.windows(2)
        .all(|p| p[0].0.saturating_add(p[0].1) <= p[1].0)
}

fn used_elem(mem: &GuestMemoryMmap, layout: &QueueLayout, index: u16) -> (u32, u32) {
    let slot = u64::from(index % layout.size);
    let mut e = [0u8; 8];
    mem.read_slice(&mut e, GuestAddress(layout.used + 4 + 8 * slot))
        .expect("used ring is in memory");
    (
        u32::from_le_bytes(e[0..4].try_into().unwrap()),
        u32::from_le_bytes(e[4..8].try_into().unwrap()),
    )
}

fn used_idx(mem: &GuestMemoryMmap, layout: &QueueLayout) -> u16 {
    mem.read_obj::<u16>(GuestAddress(layout.used + 2))
        .expect("used ring is in memory")
}

fn read_regions(mem: &GuestMemoryMmap, regions: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(a, l) in regions {
        let start = out.len();
        out.resize(start + l as usize, 0);
        mem.read_slice(&mut out[start..], GuestAddress(a))
            .expect("region checked in memory");
    }
    out
}

mod balloon;
mod blk;
mod input;
mod net;
mod pci;
pub mod seeds;

pub use balloon::*;
pub use blk::*;
pub use input::*;
pub use net::*;
pub use pci::*;

/// The VNC console's input path from the network: an HTTP upgrade request, WebSocket frames,
/// and the RFB session inside them (a password set, so the VNC authentication path runs;
/// input that passes it goes on to the message loop only with the right response, which a
/// fuzzer finds only from the seeds, as the challenge is random). Input format: the bytes a
/// peer sends, in order. See [`crate::vnc::ws::fuzz_ws_session`].
pub fn vnc_ws_session(data: &[u8]) {
    crate::vnc::ws::fuzz_ws_session(data, Some(b"fuzz"));
    // And without a password (the loopback console), where the message loop is reachable.
    crate::vnc::ws::fuzz_ws_session(data, None);
}
