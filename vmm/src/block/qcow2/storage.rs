//! The storage under berth's qcow2 layers: imago's file driver, wrapped so that every write,
//! write-zeroes and fsync that reaches an image file can be reported to an [`IoObserver`].
//!
//! berth's own metadata updates (the dirty bit, a refcount rebuild) go through the same
//! [`ImageFile`], so an observer sees the complete, ordered stream of changes to the file. The
//! power-loss test (`vmm/tests/block_powercut.rs`) records that stream and replays prefixes
//! and reorderings of it; in production no observer is set and the wrapper costs one branch.
//!
//! The wrapper also keeps the one ordering imago does not: a metadata write must not reach the
//! disk before the data it points to. imago writes a new cluster's data, then (at a flush or a
//! cache eviction) the L2 table that points to it, and a new L2 table, then the L1 entry; a
//! power cut can persist the pointer without the data, and the guest would then read zeroes
//! (or an old cluster's bytes) where its base data was. So the [`WriteBarrier`] knows which
//! clusters hold metadata (header, L1 table, L2 tables, refcount table and blocks, learning
//! new L2 tables and refcount blocks from the L1 and refcount table entries imago writes) and
//! issues an fsync before a metadata write whenever other writes happened since the last one
//! (QEMU's "depends on flush" between its data and L2 caches).
//!
//! Several threads write at once (the virtio-blk request pool). A data write counts once it
//! has *completed* (its `pwrite` returned), and an fsync covers the data writes that had
//! completed when it started: imago links a new cluster into its cached L2 table only after
//! the data write returned (`prepare_data_mapping`, write, `commit_data_mapping`), so any L2
//! table holding that link is written after the count went up, and waits for an fsync that
//! began after it. Counting a write when it starts would let an fsync running beside it
//! clear the flag before the data got there.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imago::file::File as ImagoFile;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::storage::PreallocateMode;
use imago::Storage;
use vm_memory::VolatileSlice;

use crate::block::iov::{self, Dir, PartialIo};

/// Sees every change berth makes to one image file, in order. For tests.
pub trait IoObserver: Send + Sync {
    /// `data` was written at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
    /// `[offset, offset + len)` now reads as zeroes (written zeroes or a punched hole).
    fn zero(&self, offset: u64, len: u64);
    /// An fsync starts: everything reported before is durable once it returns (berth relies
    /// on that only after it returned). Reported at the start because, with several threads
    /// writing, a write reported while the fsync runs may have completed after it began: it
    /// must not count as covered.
    fn sync(&self);
}

/// An image file: imago's file driver plus an optional observer and write barrier, and a
/// descriptor of the same file for berth's own transfers between guest memory and clusters
/// ([`ImageFile::read_guest`], [`ImageFile::write_guest`]; imago's driver keeps its own).
pub struct ImageFile {
    inner: ImagoFile,
    fd: File,
    observer: Option<Arc<dyn IoObserver>>,
    barrier: Option<Mutex<WriteBarrier>>,
}

/// Where a writable qcow2 image keeps its metadata, and whether data was written since the
/// last fsync.
#[derive(Debug)]
pub struct WriteBarrier {
    cluster_bits: u32,
    l1: Range<u64>,
    reftable: Range<u64>,
    /// Clusters of L2 tables and refcount blocks (and the header, cluster 0).
    metadata: HashSet<u64>,
    /// Data writes completed so far.
    data_done: u64,
    /// How many of them a completed fsync covers (the count when it started).
    data_synced: u64,
}

impl WriteBarrier {
    /// The layout of an image: cluster size, L1 table and refcount table (byte ranges), and
    /// the clusters of its L2 tables and refcount blocks.
    pub fn new(
        cluster_bits: u32,
        l1: Range<u64>,
        reftable: Range<u64>,
        metadata: impl IntoIterator<Item = u64>,
    ) -> Self {
        let mut metadata: HashSet<u64> = metadata.into_iter().collect();
        metadata.insert(0);
        WriteBarrier {
            cluster_bits,
            l1,
            reftable,
            metadata,
            data_done: 0,
            data_synced: 0,
        }
    }

    /// Whether a write touches the L1 table, the refcount table or the header's refcount
    /// table pointer: the writes [`WriteBarrier::learn`] reads.
    fn is_table(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        let overlaps = |r: &Range<u64>| offset < r.end && r.start < end;
        overlaps(&self.l1) || overlaps(&self.reftable) || overlaps(&(48..60))
    }

    fn is_metadata(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        let overlaps = |r: &Range<u64>| offset < r.end && r.start < end;
        if overlaps(&self.l1) || overlaps(&self.reftable) {
            return true;
        }
        let (first, last) = (offset >> self.cluster_bits, (end - 1) >> self.cluster_bits);
        (first..=last).any(|c| self.metadata.contains(&c))
    }

    /// Learns new L2 tables, refcount blocks and a moved refcount table from a write.
    fn learn(&mut self, offset: u64, data: &[u8]) {
        let entries = |r: &Range<u64>| -> Vec<u64> {
            let (lo, hi) = (offset.max(r.start), (offset + data.len() as u64).min(r.end));
            let mut v = Vec::new();
            let mut at = lo.next_multiple_of(8);
            while at + 8 <= hi {
                let i = (at - offset) as usize;
                v.push(u64::from_be_bytes(data[i..i + 8].try_into().unwrap()));
                at += 8;
            }
            v
        };
        for e in entries(&self.l1.clone()) {
            let l2 = e & 0x00ff_ffff_ffff_fe00;
            if l2 != 0 {
                self.metadata.insert(l2 >> self.cluster_bits);
            }
        }
        for e in entries(&self.reftable.clone()) {
            let rb = e & !0x1ff;
            if rb != 0 {
                self.metadata.insert(rb >> self.cluster_bits);
            }
        }
        // The header's refcount table pointer (bytes 48..60), written whole by imago.
        if offset <= 48 && offset + data.len() as u64 >= 60 {
            let h = &data[(48 - offset) as usize..];
            let rt = u64::from_be_bytes(h[..8].try_into().unwrap());
            let clusters = u64::from(u32::from_be_bytes(h[8..12].try_into().unwrap()));
            self.reftable = rt..rt + (clusters << self.cluster_bits);
        }
    }
}

impl ImageFile {
    /// Wraps an imago file; `fd` is the same file (a duplicate of imago's descriptor).
    pub fn new(inner: ImagoFile, fd: File, observer: Option<Arc<dyn IoObserver>>) -> Self {
        ImageFile {
            inner,
            fd,
            observer,
            barrier: None,
        }
    }

    /// Keeps metadata writes behind the data they point to (see the module docs).
    pub fn with_barrier(mut self, barrier: WriteBarrier) -> Self {
        self.barrier = Some(Mutex::new(barrier));
        self
    }

    fn barrier(&self) -> Option<std::sync::MutexGuard<'_, WriteBarrier>> {
        self.barrier
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// What a write of `len` bytes at `offset` is: `(table, data)`. A metadata write first
    /// waits for an fsync covering every data write completed so far. `table` says it lands
    /// in a table berth learns from, `data` that it is a data write to count when it is done.
    fn before_write(&self, offset: u64, len: u64) -> io::Result<(bool, bool)> {
        let Some(b) = self.barrier() else {
            return Ok((false, false));
        };
        if len == 0 {
            return Ok((false, false));
        }
        let table = b.is_table(offset, len);
        if !b.is_metadata(offset, len) {
            return Ok((table, true));
        }
        if b.data_done > b.data_synced {
            drop(b);
            self.sync_data_writes()?;
        }
        Ok((table, false))
    }

    /// A data write completed: the next metadata write waits for an fsync after it.
    fn data_written(&self) {
        if let Some(mut b) = self.barrier() {
            b.data_done += 1;
        }
    }

    /// fsync, reported to the observer; records which data writes it covers.
    fn sync_data_writes(&self) -> io::Result<()> {
        let started = self.barrier().map(|b| b.data_done);
        if let Some(o) = &self.observer {
            o.sync();
        }
        self.inner.sync()?;
        if let (Some(n), Some(mut b)) = (started, self.barrier()) {
            b.data_synced = b.data_synced.max(n);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the end of the file read as zero.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let size = self.inner.size()?;
        buf.fill(0);
        let end = size.min(offset.saturating_add(buf.len() as u64));
        if offset >= end {
            return Ok(());
        }
        let n = (end - offset) as usize;
        // SAFETY: imago's "pure" accessors skip its overlap serialisation; berth only calls
        // these while no imago request is in flight (at open and close, one thread).
        unsafe { self.pure_readv(IoVectorMut::from(&mut buf[..n]), offset) }
    }

    /// Fills guest memory `bufs` from the file at `offset` with `preadv` (one copy, as for raw
    /// disks). Bytes past the end of the file read as zero, as through imago's driver.
    pub fn read_guest(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), PartialIo> {
        match iov::transfer(self.fd.as_raw_fd(), Dir::Read, bufs, offset) {
            Err(PartialIo { done, error }) if error.kind() == io::ErrorKind::UnexpectedEof => {
                let total = iov::total_len(bufs).map_err(PartialIo::none)?;
                iov::zero(bufs, done, total - done);
                Ok(())
            }
            r => r,
        }
    }

    /// Writes guest memory `bufs` to the file at `offset` with `pwritev`: a data write as
    /// imago's would be (the write barrier counts it, an observer sees it).
    pub fn write_guest(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> Result<(), PartialIo> {
        let len = iov::total_len(bufs).map_err(PartialIo::none)?;
        let table = self
            .barrier()
            .is_some_and(|b| b.is_table(offset, len as u64));
        if table {
            // Never for a data cluster imago hands out; should it happen, imago's own path
            // learns the table's new entries.
            let mut v = vec![0u8; len];
            iov::gather(bufs, 0, &mut v);
            return self.write_at(&v, offset).map_err(PartialIo::none);
        }
        let (_, data) = self
            .before_write(offset, len as u64)
            .map_err(PartialIo::none)?;
        // Guest data is copied only for an observer (tests), after the write like imago's.
        iov::transfer(self.fd.as_raw_fd(), Dir::Write, bufs, offset)?;
        if let Some(o) = &self.observer {
            let mut v = vec![0u8; len];
            iov::gather(bufs, 0, &mut v);
            o.write(offset, &v);
        }
        if data {
            self.data_written();
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // SAFETY: as in read_at.
        unsafe { self.pure_writev(IoVector::from(buf), offset) }
    }

    /// fsync.
    pub fn sync_all(&self) -> io::Result<()> {
        Storage::sync(self)
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    /// Reports a completed zeroing to the observer and counts it when it was a data write.
    fn zeroed(&self, r: io::Result<()>, data: bool, offset: u64, len: u64) -> io::Result<()> {
        if r.is_ok() {
            if let Some(o) = &self.observer {
                o.zero(offset, len);
            }
            if data {
                self.data_written();
            }
        }
        r
    }
}

impl fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for ImageFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl Storage for ImageFile {
    fn mem_align(&self) -> usize {
        self.inner.mem_align()
    }

    fn req_align(&self) -> usize {
        self.inner.req_align()
    }

    fn zero_align(&self) -> usize {
        self.inner.zero_align()
    }

    fn discard_align(&self) -> usize {
        self.inner.discard_align()
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        self.inner.resolve_relative_path(relative)
    }

    fn get_filename(&self) -> Option<PathBuf> {
        self.inner.get_filename()
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.inner.pure_readv(bufv, offset) }
    }

    unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        let len = bufv.len();
        let (table, data) = self.before_write(offset, len)?;
        // Guest data is copied only for an observer (tests); table writes are small.
        let copy = (self.observer.is_some() || table).then(|| {
            let mut v = vec![0u8; len as usize];
            bufv.copy_into_slice(&mut v);
            v
        });
        // Learn new tables before the write goes out: another thread may write a new L2
        // table as soon as this L1 entry exists, and that must count as metadata.
        if let (true, Some(d), Some(mut b)) = (table, &copy, self.barrier()) {
            b.learn(offset, d);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.inner.pure_writev(bufv, offset) }?;
        // Reported before it counts, so a replay never sees an fsync that covers it first.
        if let (Some(d), Some(o)) = (&copy, &self.observer) {
            o.write(offset, d);
        }
        if data {
            self.data_written();
        }
        Ok(())
    }

    unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // Zeroing a table is a metadata write too; there is nothing in it to learn.
        let (_, data) = self.before_write(offset, length)?;
        // SAFETY: the caller's contract is passed on unchanged.
        let r = unsafe { self.inner.pure_write_zeroes(offset, length) };
        self.zeroed(r, data, offset, length)
    }

    unsafe fn pure_write_allocated_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // Zeroing a table is a metadata write too; there is nothing in it to learn.
        let (_, data) = self.before_write(offset, length)?;
        // SAFETY: the caller's contract is passed on unchanged.
        let r = unsafe { self.inner.pure_write_allocated_zeroes(offset, length) };
        self.zeroed(r, data, offset, length)
    }

    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        // Zeroing a table is a metadata write too; there is nothing in it to learn.
        let (_, data) = self.before_write(offset, length)?;
        // SAFETY: the caller's contract is passed on unchanged.
        let r = unsafe { self.inner.pure_discard(offset, length) };
        // A discard may or may not zero the range; imago only relies on it reading back as
        // something, and an observer modelling it as zeroes is the stricter replay.
        self.zeroed(r, data, offset, length)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data_writes()
    }

    fn settle_writes(&self) -> io::Result<()> {
        self.inner.settle_writes()
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.inner.invalidate_cache() }
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        self.inner.get_storage_helper()
    }

    fn resize(&self, new_size: u64, prealloc_mode: PreallocateMode) -> io::Result<()> {
        let old = self.inner.size()?;
        self.inner.resize(new_size, prealloc_mode)?;
        if new_size > old {
            if let Some(o) = &self.observer {
                o.zero(old, new_size - old);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use imago::StorageOpenOptions;

    use super::*;

    /// Logs every event; the first report of a data write at `HOLD` waits until released, as
    /// a `pwrite` that completes late.
    struct Held {
        log: Mutex<Vec<String>>,
        reached: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<Option<mpsc::Receiver<()>>>,
    }

    const HOLD: u64 = 16 * 512;
    const L2: u64 = 3 * 512;

    impl IoObserver for Held {
        fn write(&self, offset: u64, _: &[u8]) {
            self.log.lock().unwrap().push(format!("W{offset}"));
            if offset == HOLD {
                if let Some(tx) = self.reached.lock().unwrap().take() {
                    tx.send(()).unwrap();
                    let rx = self.release.lock().unwrap().take().unwrap();
                    rx.recv().unwrap();
                }
            }
        }
        fn zero(&self, offset: u64, _: u64) {
            self.log.lock().unwrap().push(format!("Z{offset}"));
        }
        fn sync(&self) {
            self.log.lock().unwrap().push("S".into());
        }
    }

    /// A data write still completing while another thread's fsync runs is not covered by that
    /// fsync: the next metadata write (an L2 table pointing at the data) fsyncs again first.
    /// Counting a data write when it starts (the single-threaded barrier's flag) skips that
    /// fsync, and the L2 entry could reach the disk before the data.
    #[test]
    fn an_fsync_does_not_cover_a_write_that_completed_after_it_began() {
        let dir = std::env::temp_dir().join(format!("berth-barrier-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(64 * 512).unwrap();
        let (reached_tx, reached) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let obs = Arc::new(Held {
            log: Mutex::default(),
            reached: Mutex::new(Some(reached_tx)),
            release: Mutex::new(Some(release_rx)),
        });
        let opts = StorageOpenOptions::new().write(true).filename(&path);
        let fd = f.try_clone().unwrap();
        let inner = ImagoFile::from_open_file(f, opts).unwrap();
        // 512-byte clusters: L1 table in cluster 1, refcount table in cluster 2, an L2 table
        // in cluster 3.
        let barrier = WriteBarrier::new(9, 512..1024, 1024..1536, [3]);
        let file = ImageFile::new(inner, fd, Some(obs.clone())).with_barrier(barrier);
        std::thread::scope(|s| {
            let data = s.spawn(|| file.write_at(&[1; 512], HOLD).unwrap());
            reached.recv().unwrap();
            // Another thread's fsync (a guest flush) while the data write completes.
            Storage::sync(&file).unwrap();
            release.send(()).unwrap();
            data.join().unwrap();
        });
        file.write_at(&[2; 512], L2).unwrap();
        let log = obs.log.lock().unwrap().clone();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(log, ["W8192", "S", "S", "W1536"], "{log:?}");
    }
}
