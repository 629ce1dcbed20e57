//! virtio-blk over a [`BlockBackend`]: one or more request queues (VIRTIO_BLK_F_MQ, one per
//! vCPU by default), all served by a small pool of threads ([`pool`]) so that several requests
//! are in flight at once and complete in any order.

pub mod pool;
pub mod request;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{features, types, ActivateContext, ActivateError, DeviceInfo, VirtioDevice};
use crate::block::{BlockBackend, SECTOR_SIZE};
use pool::Pool;
use request::{Disk, MAX_SEGMENTS, MAX_SEGMENT_SECTORS};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Most request queues a disk offers (`num_queues`); more vCPUs share them.
pub const MAX_QUEUES: u16 = 16;
/// Threads serving one disk, whatever its queue count: requests in flight at once. Enough to
/// keep a host device busy beside the guest's vCPUs on a small node; each may hold a bounce
/// buffer of up to 1 MiB (qcow2 disks; raw disks move data straight into guest memory), and
/// docs/block.md has the measurements behind the number.
pub const THREADS: usize = 8;

const F_SEG_MAX: u64 = 1 << 2;
const F_MQ: u64 = 1 << 12;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

/// Size of `struct virtio_blk_config` up to the write-zeroes fields.
const CONFIG_LEN: usize = 60;

/// A virtio-blk device.
pub struct Block {
    info: DeviceInfo,
    disk: Arc<Disk>,
    threads: usize,
    pool: Option<Pool>,
}

impl Block {
    /// A disk over `backend` with one request queue, read-only if asked (or if the backend
    /// is), with `serial` (up to 20 bytes) as its id.
    pub fn new(backend: Box<dyn BlockBackend>, read_only: bool, serial: &str) -> Self {
        let disk = Disk::new(backend, read_only, serial);
        let mut features = features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH;
        if disk.read_only {
            features |= F_RO;
        } else {
            features |= F_DISCARD | F_WRITE_ZEROES;
        }
        let mut config = [0u8; CONFIG_LEN];
        let put32 = |c: &mut [u8; CONFIG_LEN], off: usize, v: u32| {
            c[off..off + 4].copy_from_slice(&v.to_le_bytes())
        };
        config[0..8].copy_from_slice(&(disk.backend.size() / SECTOR_SIZE).to_le_bytes());
        put32(&mut config, 12, u32::from(QUEUE_SIZE) - 2); // seg_max
        put32(&mut config, 20, SECTOR_SIZE as u32); // blk_size
        config[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        put32(&mut config, 36, MAX_SEGMENT_SECTORS); // max_discard_sectors
        put32(&mut config, 40, MAX_SEGMENTS); // max_discard_seg
        put32(&mut config, 44, 1); // discard_sector_alignment
        put32(&mut config, 48, MAX_SEGMENT_SECTORS); // max_write_zeroes_sectors
        put32(&mut config, 52, MAX_SEGMENTS); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        Block {
            info: DeviceInfo {
                device_type: types::BLOCK,
                // Mass storage, SCSI: what virtio-blk has always reported.
                pci_class: (0x01, 0x00, 0x00),
                queue_sizes: vec![QUEUE_SIZE],
                features,
                config: config.to_vec(),
            },
            disk: Arc::new(disk),
            threads: THREADS,
            pool: None,
        }
    }

    /// Offers `queues` request queues (clamped to 1..=[`MAX_QUEUES`]); more than one sets
    /// VIRTIO_BLK_F_MQ and `num_queues`. The driver may use fewer.
    pub fn with_queues(mut self, queues: u16) -> Self {
        let n = queues.clamp(1, MAX_QUEUES);
        self.info.queue_sizes = vec![QUEUE_SIZE; usize::from(n)];
        self.info.config[34..36].copy_from_slice(&n.to_le_bytes());
        if n > 1 {
            self.info.features |= F_MQ;
        } else {
            self.info.features &= !F_MQ;
        }
        self
    }

    /// Serves the disk with `threads` threads (clamped to 1..=queue size): at most that many
    /// requests in flight.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.clamp(1, usize::from(QUEUE_SIZE));
        self
    }

    fn stop(&mut self) {
        if let Some(p) = self.pool.take() {
            p.stop();
        }
    }
}

impl VirtioDevice for Block {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.pool.is_some() {
            return Err(ActivateError("virtio-blk: already running".into()));
        }
        if ctx.queues.len() != ctx.queue_events.len() || ctx.queues.is_empty() {
            return Err(ActivateError(format!(
                "virtio-blk: {} queues with {} notifiers",
                ctx.queues.len(),
                ctx.queue_events.len()
            )));
        }
        let pool = Pool::start(self.disk.clone(), ctx, self.threads)
            .map_err(|e| ActivateError(format!("virtio-blk: {e}")))?;
        self.pool = Some(pool);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }

    fn shutdown(&mut self) {
        self.stop();
        if !self.disk.read_only {
            let _ = self.disk.backend.flush();
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Processes every available request one after the other (the fuzz harness and tests drive
/// the request engine through this); returns whether the driver must be interrupted.
pub fn process_queue(queue: &mut Queue, mem: &GuestMemoryMmap, disk: &Disk) -> bool {
    let mut buf = Vec::new();
    super::drain_queue(queue, mem, |chain| {
        request::execute(mem, chain, disk, &mut buf)
    })
}
