//! virtio-blk: one request queue served by a worker thread of its own, over a
//! [`BlockBackend`].

pub mod request;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    features, read_config_bytes, types, ActivateContext, ActivateError, VirtioDevice,
    VirtioInterrupt,
};
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
    disk: Option<Disk>,
    features: u64,
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
    queue_sizes: [u16; 1],
}

struct Worker {
    stop: EventFd,
    thread: JoinHandle<Disk>,
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
            disk: Some(disk),
            features,
            config,
            worker: None,
            queue_sizes: [QUEUE_SIZE],
        }
    }

    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.stop.write(1);
            match w.thread.join() {
                Ok(disk) => self.disk = Some(disk),
                // The worker panicked: the disk is gone; the device stays unusable.
                Err(_) => self.disk = None,
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        types::BLOCK
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Mass storage, SCSI: what virtio-blk has always reported.
        (0x01, 0x00, 0x00)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let disk = self
            .disk
            .take()
            .ok_or_else(|| ActivateError("disk unavailable after an earlier failure".into()))?;
        let (Some(queue), Some(event)) = (
            ctx.queues.into_iter().next(),
            ctx.queue_events.into_iter().next(),
        ) else {
            self.disk = Some(disk);
            return Err(ActivateError("virtio-blk needs one queue".into()));
        };
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| ActivateError(e.to_string()))?;
        let stop2 = stop.try_clone().map_err(|e| ActivateError(e.to_string()))?;
        let mem = ctx.mem;
        let irq = ctx.interrupt;
        let thread = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || serve(disk, queue, event, stop2, mem, irq))
            .map_err(|e| ActivateError(e.to_string()))?;
        self.worker = Some(Worker { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }

    fn shutdown(&mut self) {
        self.stop_worker();
        if let Some(d) = self.disk.as_mut() {
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

fn serve(
    mut disk: Disk,
    mut queue: Queue,
    event: EventFd,
    stop: EventFd,
    mem: GuestMemoryMmap,
    irq: Arc<dyn VirtioInterrupt>,
) -> Disk {
    const QUEUE: u64 = 0;
    const STOP: u64 = 1;
    let Ok(epoll) = Epoll::new() else { return disk };
    for (fd, token) in [(&event, QUEUE), (&stop, STOP)] {
        let ev = EpollEvent::new(EventSet::IN, token);
        if epoll
            .ctl(
                ControlOperation::Add,
                std::os::fd::AsRawFd::as_raw_fd(fd),
                ev,
            )
            .is_err()
        {
            return disk;
        }
    }
    // Requests queued before activation (the driver may kick early) are served at once.
    let mut pending = true;
    let mut events = vec![EpollEvent::default(); 2];
    loop {
        if pending {
            let _ = event.read();
            if process_queue(&mut queue, &mem, &mut disk) {
                irq.notify_queue(0);
            }
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return disk,
        };
        pending = false;
        for ev in &events[..n] {
            match ev.data() {
                STOP => return disk,
                _ => pending = true,
            }
        }
    }
}
