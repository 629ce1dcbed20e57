//! virtio-blk: one request queue served by a worker thread of its own, over a
//! [`BlockBackend`].

pub mod request;
#[cfg(test)]
mod tests;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::worker::{QueueHandler, Wakeup, Worker, WorkerIo};
use super::{features, types, ActivateContext, ActivateError, DeviceInfo, VirtioDevice};
use crate::block::{BlockBackend, SECTOR_SIZE};
use request::{Disk, MAX_SEGMENTS, MAX_SEGMENT_SECTORS};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

const F_SEG_MAX: u64 = 1 << 2;
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
    worker: Worker<Disk>,
}

impl Block {
    /// A disk over `backend`, read-only if asked (or if the backend is), with `serial`
    /// (up to 20 bytes) as its id.
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
            worker: Worker::new("virtio-blk", disk),
        }
    }
}

impl VirtioDevice for Block {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.worker.start(ctx, |disk| disk)
    }

    fn reset(&mut self) {
        self.worker.stop();
    }

    fn shutdown(&mut self) {
        self.worker.stop();
        if let Some(d) = self.worker.backend_mut() {
            if !d.read_only {
                let _ = d.backend.flush();
            }
        }
    }
}

/// Processes every available request; returns whether the driver must be interrupted.
pub fn process_queue(queue: &mut Queue, mem: &GuestMemoryMmap, disk: &mut Disk) -> bool {
    super::drain_queue(queue, mem, |chain| request::execute(mem, chain, disk))
}

/// The disk is its own worker handler: it serves the one request queue.
impl QueueHandler for Disk {
    type Backend = Disk;
    const QUEUES: usize = 1;

    fn serve(&mut self, wake: &Wakeup, io: &mut WorkerIo) {
        if wake.queue(0) {
            io.serve_queue(0, |queue, mem| process_queue(queue, mem, self));
        }
    }

    fn into_backend(self) -> Disk {
        self
    }
}
