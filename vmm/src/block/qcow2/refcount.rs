//! qcow2 refcount check and rebuild, written here from the qcow2 specification.
//!
//! imago updates refcounts lazily: between flushes, an L1 or L2 entry can reach the file
//! before the refcount block that accounts for the cluster it points to. berth therefore uses
//! QEMU's answer for lazy refcounts: the image carries the dirty bit while it is open for
//! writing, and an image opened with the bit set (or whose refcounts do not match its tables)
//! gets its refcounts recomputed from the tables before anything is written to it.
//!
//! [`scan`] walks header, L1 and L2 tables and counts the references to every host cluster,
//! and compares them with the stored refcounts. It never trusts the stored refcount structure
//! for anything but that comparison. [`rebuild`] writes a complete new refcount structure
//! after the last cluster in use, fsyncs it, then points the header at it and clears the dirty
//! bit with one write inside the first sector, and fsyncs again: a crash at any point leaves
//! either the old header (still dirty: the next open rebuilds again) or the new one.
//!
//! Resource budget: tables are read one cluster at a time; the reference counts take two
//! bytes per host cluster up to [`MAX_CLUSTERS`] (64 MiB), which bounds what a hostile image
//! can make berth allocate.

use std::io;

use super::storage::ImageFile;

/// Host clusters berth will count references for (2 bytes each).
pub const MAX_CLUSTERS: u64 = 1 << 25;
/// QEMU's limits: L1 tables up to 32 MiB, refcount tables up to 8 MiB.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Offset bits of L1, L2 and refcount table entries.
const L1E_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
const L2E_OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
const RTE_OFFSET: u64 = 0xffff_ffff_ffff_fe00;
const L2E_COMPRESSED: u64 = 1 << 62;

/// Incompatible feature bit 0: refcounts may be stale.
pub const DIRTY: u64 = 1;

/// The header fields the check needs.
#[derive(Clone, Debug)]
pub struct Geometry {
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Virtual disk size.
    pub size: u64,
    /// L1 table entries and offset.
    pub l1_size: u32,
    /// Offset of the L1 table.
    pub l1_offset: u64,
    /// Offset of the refcount table.
    pub reftable_offset: u64,
    /// Clusters of the refcount table.
    pub reftable_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible features (0 for v2).
    pub incompatible: u64,
    /// log2 of the refcount width in bits (4 for v2).
    pub refcount_order: u32,
}

impl Geometry {
    /// Parses the geometry from the first 104 bytes of a v2 or v3 header.
    pub fn parse(h: &[u8; 104], version: u32) -> Result<Self, String> {
        let be32 = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().unwrap());
        let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().unwrap());
        let g = Geometry {
            cluster_bits: be32(20),
            size: be64(24),
            l1_size: be32(36),
            l1_offset: be64(40),
            reftable_offset: be64(48),
            reftable_clusters: be32(56),
            nb_snapshots: be32(60),
            snapshots_offset: be64(64),
            incompatible: if version >= 3 { be64(72) } else { 0 },
            refcount_order: if version >= 3 { be32(96) } else { 4 },
        };
        if !(9..=21).contains(&g.cluster_bits) {
            return Err(format!("cluster size 2^{} out of range", g.cluster_bits));
        }
        if g.refcount_order > 6 {
            return Err(format!("refcount order {} out of range", g.refcount_order));
        }
        Ok(g)
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Refcount entries per refcount block.
    fn rb_entries(&self) -> u64 {
        self.cluster_size() * 8 / self.refcount_bits() as u64
    }
}

/// What [`scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// References to each host cluster from the header, L1/L2 tables and data.
    counts: Vec<u16>,
    /// Clusters the stored refcounts count higher than their references (leaks).
    pub leaked: u64,
    /// Clusters in use whose stored refcount is too low: writing would corrupt the image.
    pub missing: u64,
    /// Whether the stored refcount structure itself is unusable (misaligned, overlapping,
    /// pointing past any sane size).
    pub broken_structure: bool,
    /// Guest clusters that a write would move to a new host cluster, freeing the old one:
    /// compressed clusters, preallocated zero clusters (imago may reallocate them to keep a
    /// multi-cluster write contiguous) and data clusters without the COPIED flag.
    pub moved_by_write: Vec<u64>,
    /// Host clusters holding L2 tables and (valid) refcount blocks.
    pub metadata: Vec<u64>,
}

/// Where [`rebuild`] put the new refcount structure.
#[derive(Clone, Copy, Debug)]
pub struct Rebuilt {
    /// First cluster of the new refcount blocks; the table follows them.
    pub start: u64,
    /// Clusters of refcount blocks, then of the table.
    pub blocks: u64,
    /// Clusters of the refcount table.
    pub table: u64,
}

impl Scan {
    /// Whether the stored refcounts must be rebuilt before the image is written.
    pub fn needs_rebuild(&self) -> bool {
        self.leaked > 0 || self.missing > 0 || self.broken_structure
    }
}

/// Why a scan refused an image.
#[derive(Debug)]
pub enum ScanError {
    /// Reading the file failed.
    Io(io::Error),
    /// The tables are damaged beyond what a refcount rebuild can fix.
    Corrupt(String),
    /// The image is beyond berth's budget or uses something berth does not rebuild.
    Unsupported(String),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Reference counts being gathered, with the rule that a cluster used exclusively (tables,
/// uncompressed data) is used exactly once.
struct Refs {
    counts: Vec<u16>,
    exclusive: Vec<bool>,
    max: u64,
}

impl Refs {
    fn add(
        &mut self,
        g: &Geometry,
        offset: u64,
        len: u64,
        exclusive: bool,
        what: &str,
    ) -> Result<(), ScanError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset >> g.cluster_bits;
        let last = (offset + len - 1) >> g.cluster_bits;
        if last >= MAX_CLUSTERS {
            return Err(ScanError::Unsupported(format!(
                "{what} at offset {offset:#x} is beyond the {MAX_CLUSTERS} clusters berth checks"
            )));
        }
        if last as usize >= self.counts.len() {
            self.counts.resize(last as usize + 1, 0);
            self.exclusive.resize(last as usize + 1, false);
        }
        for c in first..=last {
            let c = c as usize;
            if self.counts[c] > 0 && (exclusive || self.exclusive[c]) {
                return Err(ScanError::Corrupt(format!(
                    "host cluster {c} is used twice ({what} at offset {offset:#x} overlaps another use)"
                )));
            }
            if u64::from(self.counts[c]) >= self.max {
                return Err(ScanError::Unsupported(format!(
                    "host cluster {c} has more references than its refcount width holds"
                )));
            }
            self.counts[c] += 1;
            self.exclusive[c] = exclusive;
        }
        Ok(())
    }
}

fn be64_at(b: &[u8], i: usize) -> u64 {
    u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())
}

/// Counts the references to every host cluster of the image and compares them with its
/// stored refcounts. `track_moving` lists the clusters a write would move (for writers).
pub fn scan(io: &ImageFile, g: &Geometry, track_moving: bool) -> Result<Scan, ScanError> {
    if g.nb_snapshots > 0 {
        return Err(ScanError::Unsupported(
            "internal snapshots (delete them with `qemu-img snapshot -d`)".into(),
        ));
    }
    let cs = g.cluster_size();
    let max = if g.refcount_order >= 4 {
        u64::from(u16::MAX)
    } else {
        (1 << g.refcount_bits()) - 1
    };
    let mut refs = Refs {
        counts: Vec::new(),
        exclusive: Vec::new(),
        max,
    };
    refs.add(g, 0, cs, true, "the header")?;

    let corrupt = |m: String| Err(ScanError::Corrupt(m));
    // The L1 table.
    let l2_entries = cs / 8;
    let needed = g.size.div_ceil(cs * l2_entries);
    let l1_bytes = u64::from(g.l1_size) * 8;
    if u64::from(g.l1_size) < needed || l1_bytes > MAX_L1_BYTES {
        return corrupt(format!(
            "L1 table of {} entries for a disk that needs {needed}",
            g.l1_size
        ));
    }
    if !g.l1_offset.is_multiple_of(cs) {
        return corrupt(format!(
            "L1 table offset {:#x} is not cluster aligned",
            g.l1_offset
        ));
    }
    refs.add(g, g.l1_offset, l1_bytes, true, "the L1 table")?;
    let mut l1 = vec![0u8; l1_bytes as usize];
    io.read_at(&mut l1, g.l1_offset)?;

    let mut moved_by_write = Vec::new();
    let mut metadata = Vec::new();
    let mut l2 = vec![0u8; cs as usize];
    let csize_shift = 62 - (g.cluster_bits - 8);
    let csize_mask = (1u64 << (g.cluster_bits - 8)) - 1;
    for i in 0..g.l1_size as usize {
        let l2_offset = be64_at(&l1, i) & L1E_OFFSET;
        if l2_offset == 0 {
            continue;
        }
        if !l2_offset.is_multiple_of(cs) {
            return corrupt(format!(
                "L2 table offset {l2_offset:#x} (L1 entry {i}) is not cluster aligned"
            ));
        }
        refs.add(g, l2_offset, cs, true, "an L2 table")?;
        metadata.push(l2_offset >> g.cluster_bits);
        io.read_at(&mut l2, l2_offset)?;
        for j in 0..l2_entries as usize {
            let e = be64_at(&l2, j);
            if e & L2E_COMPRESSED != 0 {
                let desc = e & ((1 << 62) - 1);
                let offset = desc & ((1 << csize_shift) - 1);
                let sectors = ((desc >> csize_shift) & csize_mask) + 1;
                let start = offset & !511;
                refs.add(g, start, sectors * 512, false, "compressed data")?;
                if track_moving {
                    moved_by_write.push(i as u64 * l2_entries + j as u64);
                }
                continue;
            }
            let offset = e & L2E_OFFSET;
            if offset == 0 {
                continue;
            }
            if !offset.is_multiple_of(cs) {
                return corrupt(format!(
                    "data cluster offset {offset:#x} is not cluster aligned"
                ));
            }
            refs.add(g, offset, cs, true, "a data cluster")?;
            // Zero flag (bit 0) with an allocation, or no COPIED flag (bit 63).
            if track_moving && (e & 1 != 0 || e >> 63 == 0) {
                moved_by_write.push(i as u64 * l2_entries + j as u64);
            }
        }
    }

    let mut scan = Scan {
        moved_by_write,
        metadata,
        ..Scan::default()
    };
    compare_stored(io, g, &refs, &mut scan)?;
    scan.counts = refs.counts;
    Ok(scan)
}

/// Reads the stored refcounts and counts leaks and missing references. The refcount
/// structure's own clusters are in use too (by the header), unless it is broken.
fn compare_stored(
    io: &ImageFile,
    g: &Geometry,
    refs: &Refs,
    scan: &mut Scan,
) -> Result<(), ScanError> {
    let cs = g.cluster_size();
    let rt_bytes = u64::from(g.reftable_clusters) * cs;
    let file_clusters = io.file_size()?.div_ceil(cs);
    let broken = !g.reftable_offset.is_multiple_of(cs)
        || rt_bytes == 0
        || rt_bytes > MAX_REFTABLE_BYTES
        || (g.reftable_offset >> g.cluster_bits) + u64::from(g.reftable_clusters) > file_clusters;
    if broken {
        scan.broken_structure = true;
        return Ok(());
    }
    let mut rt = vec![0u8; rt_bytes as usize];
    io.read_at(&mut rt, g.reftable_offset)?;
    // The structure's clusters, which must not be in use for anything else.
    let mut own: Vec<u64> = (0..u64::from(g.reftable_clusters))
        .map(|k| (g.reftable_offset >> g.cluster_bits) + k)
        .collect();
    let blocks: Vec<u64> = (0..rt.len() / 8)
        .map(|i| be64_at(&rt, i) & RTE_OFFSET)
        .collect();
    for &b in blocks.iter().filter(|&&b| b != 0) {
        if !b.is_multiple_of(cs) || (b >> g.cluster_bits) >= file_clusters {
            scan.broken_structure = true;
            return Ok(());
        }
        own.push(b >> g.cluster_bits);
    }
    scan.metadata.extend(
        blocks
            .iter()
            .filter(|&&b| b != 0)
            .map(|b| b >> g.cluster_bits),
    );
    own.sort_unstable();
    if own.windows(2).any(|w| w[0] == w[1])
        || own
            .iter()
            .any(|&c| refs.counts.get(c as usize).is_some_and(|&n| n > 0))
    {
        scan.broken_structure = true;
        return Ok(());
    }
    let expected = |c: u64| -> u64 {
        u64::from(refs.counts.get(c as usize).copied().unwrap_or(0))
            + u64::from(own.binary_search(&c).is_ok())
    };
    let entries = g.rb_entries();
    let covered = blocks.len() as u64 * entries;
    let last = file_clusters.max(refs.counts.len() as u64);
    let mut rb = vec![0u8; cs as usize];
    for (bi, &b) in blocks.iter().enumerate() {
        let first = bi as u64 * entries;
        if first >= last {
            break;
        }
        if b == 0 {
            rb.fill(0);
        } else {
            io.read_at(&mut rb, b)?;
        }
        for k in 0..entries.min(last - first) {
            let stored = get_refcount(&rb, k, g.refcount_bits());
            let want = expected(first + k);
            if stored > want {
                scan.leaked += 1;
            } else if stored < want {
                scan.missing += 1;
            }
        }
    }
    // Clusters in use beyond what the refcount table covers have no refcount at all.
    for c in covered..last {
        if expected(c) > 0 {
            scan.missing += 1;
        }
    }
    Ok(())
}

fn get_refcount(rb: &[u8], k: u64, bits: u32) -> u64 {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let i = k as usize * w;
        rb[i..i + w]
            .iter()
            .fold(0, |acc, &b| acc << 8 | u64::from(b))
    } else {
        let bit = k * u64::from(bits);
        u64::from(rb[(bit / 8) as usize] >> (bit % 8)) & ((1 << bits) - 1)
    }
}

fn set_refcount(rb: &mut [u8], k: u64, bits: u32, v: u64) {
    if bits >= 8 {
        let w = (bits / 8) as usize;
        let i = k as usize * w;
        for (n, b) in rb[i..i + w].iter_mut().enumerate() {
            *b = (v >> (8 * (w - 1 - n))) as u8;
        }
    } else {
        let bit = k * u64::from(bits);
        let mask = ((1u16 << bits) - 1) as u8;
        let byte = &mut rb[(bit / 8) as usize];
        *byte = (*byte & !(mask << (bit % 8))) | (((v as u8) & mask) << (bit % 8));
    }
}

/// Writes a new refcount structure after every cluster in use, fsyncs it, then points the
/// header at it and clears the dirty bit in one write, and fsyncs. Returns where the new
/// structure is.
pub fn rebuild(io: &ImageFile, g: &Geometry, scan: &Scan) -> io::Result<Rebuilt> {
    let cs = g.cluster_size();
    let entries = g.rb_entries();
    let start = io.file_size()?.div_ceil(cs).max(scan.counts.len() as u64);
    // Refcount blocks covering every cluster up to the end of the new structure itself, and
    // a table big enough to point at all of them.
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let nb = (start + blocks + table).div_ceil(entries);
        let nt = (nb * 8).div_ceil(cs);
        if (nb, nt) == (blocks, table) {
            break;
        }
        (blocks, table) = (nb, nt);
    }
    let end = start + blocks + table;
    let bits = g.refcount_bits();
    let mut rb = vec![0u8; cs as usize];
    for b in 0..blocks {
        rb.fill(0);
        for k in 0..entries {
            let c = b * entries + k;
            let n = if c >= start && c < end {
                1
            } else {
                u64::from(scan.counts.get(c as usize).copied().unwrap_or(0))
            };
            if n > 0 {
                set_refcount(&mut rb, k, bits, n);
            }
        }
        io.write_at(&rb, (start + b) * cs)?;
    }
    let mut rt = vec![0u8; (table * cs) as usize];
    for b in 0..blocks {
        let i = b as usize * 8;
        rt[i..i + 8].copy_from_slice(&((start + b) * cs).to_be_bytes());
    }
    io.write_at(&rt, (start + blocks) * cs)?;
    io.sync_all()?;
    // Header bytes 48..80: refcount table offset and clusters, snapshot count and offset
    // (unchanged), incompatible features without the dirty bit. One write in one sector.
    let mut h = [0u8; 32];
    h[0..8].copy_from_slice(&((start + blocks) * cs).to_be_bytes());
    h[8..12].copy_from_slice(&(table as u32).to_be_bytes());
    h[12..16].copy_from_slice(&g.nb_snapshots.to_be_bytes());
    h[16..24].copy_from_slice(&g.snapshots_offset.to_be_bytes());
    h[24..32].copy_from_slice(&(g.incompatible & !DIRTY).to_be_bytes());
    io.write_at(&h, 48)?;
    io.sync_all()?;
    Ok(Rebuilt {
        start,
        blocks,
        table,
    })
}

/// Sets or clears the dirty bit (v3 only) and fsyncs.
pub fn set_dirty(io: &ImageFile, g: &Geometry, dirty: bool) -> io::Result<()> {
    let v = if dirty {
        g.incompatible | DIRTY
    } else {
        g.incompatible & !DIRTY
    };
    io.write_at(&v.to_be_bytes(), 72)?;
    io.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_encoding_round_trips_every_width() {
        for order in 0..=6u32 {
            let bits = 1 << order;
            let mut rb = vec![0u8; 512];
            let n = 512 * 8 / bits as u64;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
            for k in 0..n {
                set_refcount(&mut rb, k, bits, (k * 7 + 1) & max);
            }
            for k in 0..n {
                assert_eq!(
                    get_refcount(&rb, k, bits),
                    (k * 7 + 1) & max,
                    "order {order} k {k}"
                );
            }
        }
        // QEMU's layout for 16-bit refcounts: big-endian, entry k at byte 2k.
        let mut rb = vec![0u8; 8];
        set_refcount(&mut rb, 1, 16, 0x0102);
        assert_eq!(rb[2..4], [1, 2]);
        // 1-bit refcounts: entry k is bit k % 8 of byte k / 8, least significant first.
        let mut rb = vec![0u8; 2];
        set_refcount(&mut rb, 9, 1, 1);
        assert_eq!(rb, [0, 2]);
    }
}
