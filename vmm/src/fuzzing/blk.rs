//! The virtio-blk request harness.

use super::*;

// ---------------------------------------------------------------------------------------------
// virtio-blk

/// Byte 3 of a virtio-blk input.
pub mod blk_flags {
    /// The disk is read-only.
    pub const READ_ONLY: u8 = 1;
    /// Every backend operation fails.
    pub const FAILING: u8 = 2;
}

/// Accesses the request engine made that it must never make.
type Violations = Arc<Mutex<Vec<String>>>;

/// A Vec-backed disk that records out-of-range or forbidden accesses instead of trusting the
/// request engine's checks.
struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    failing: bool,
    violations: Violations,
}

impl MemDisk {
    fn check(&self, what: &str, offset: u64, len: u64, writes: bool) -> io::Result<usize> {
        let end = offset.checked_add(len);
        let bad = match end {
            Some(e) if e <= self.size() => None,
            _ => Some(format!("{what} {offset:#x}+{len:#x} past the end")),
        };
        let bad = bad
            .or_else(|| (writes && self.read_only).then(|| format!("{what} on a read-only disk")));
        if let Some(v) = bad {
            self.violations.lock().unwrap().push(v);
            return Err(io::Error::other("refused"));
        }
        if self.failing {
            return Err(io::Error::other("injected failure"));
        }
        Ok(offset as usize)
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let o = self.check("read", offset, buf.len() as u64, false)?;
        buf.copy_from_slice(&self.data.lock().unwrap()[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let o = self.check("write", offset, buf.len() as u64, true)?;
        self.data.lock().unwrap()[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        if self.failing {
            return Err(io::Error::other("injected failure"));
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> io::Result<()> {
        let o = self.check("write-zeroes/discard", offset, len, true)?;
        self.data.lock().unwrap()[o..o + len as usize].fill(0);
        Ok(())
    }
}

/// What a virtio-blk run did, so tests can tell that seeds reach the request engine.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BlkReport {
    /// Whether the queue was valid (otherwise nothing ran).
    pub ran: bool,
    /// Used entries added.
    pub used: u16,
    /// Status bytes of the answered requests, when they could be checked exactly.
    pub statuses: Vec<u8>,
}

/// virtio-blk: `process_queue` over a queue described by `data`.
///
/// Input: byte 0 queue flags ([`queue_flags`]); bytes 1-2 the starting ring index (LE);
/// byte 3 [`blk_flags`]; byte 4 disk size in sectors; byte 5 extra disk bytes (a size that is
/// not a multiple of 512); with [`queue_flags::CUSTOM_LAYOUT`] three LE u16 ring addresses
/// (descriptor table, avail, used); then the guest memory image from address 0.
///
/// Checks: no panic; the backend is never asked for I/O past the disk's end or for a write on
/// a read-only disk; every popped chain but a last invalid one is used; the used index in
/// memory matches; a notification only follows used buffers. When the device's writes cannot
/// alter the chains (writable buffers disjoint from each other and from the rings and indirect
/// tables) also: used entries name the chains' heads in order, lengths stay within the
/// writable bytes, every chain with valid buffers and a writable byte is answered, and every
/// status byte written is 0, 1 or 2.
pub fn virtio_blk_request(data: &[u8]) -> BlkReport {
    let mut input = Input(data);
    let flags = input.u8();
    let start = input.u16();
    let blk = input.u8();
    let sectors = input.u8();
    let extra = input.u8();
    let Some(mut rig) = QueueRig::new(flags, start, input) else {
        return BlkReport::default();
    };
    let read_only = blk & blk_flags::READ_ONLY != 0;
    let violations = Violations::default();
    let backend = MemDisk {
        data: Mutex::new(
            (0..u64::from(sectors) * 512 + u64::from(extra))
                .map(|i| (i % 251) as u8)
                .collect(),
        ),
        read_only,
        failing: blk & blk_flags::FAILING != 0,
        violations: violations.clone(),
    };
    let disk = Disk::new(Box::new(backend), read_only, "fuzz-serial");

    let chains = survey(&rig.queue, &rig.mem);
    let isolated = writes_are_isolated(&chains, &metadata(&rig.layout, &rig.mem));

    let notify = process_queue(&mut rig.queue, &rig.mem, &disk);

    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "backend misuse: {v:?}");
    let (popped, used) = rig.check_drained(notify);
    if used > 0 && used == popped {
        assert_eq!(
            used_idx(&rig.mem, &rig.layout),
            rig.queue.next_used(),
            "used.idx"
        );
    }
    let mut report = BlkReport {
        ran: true,
        used,
        statuses: Vec::new(),
    };
    if !isolated {
        return report;
    }
    let mem = &rig.mem;
    for (k, (chain, len)) in rig
        .used_entries(&chains, (popped, used))
        .into_iter()
        .enumerate()
    {
        assert!(
            u64::from(len) <= chain.writable_bytes(),
            "used length {len} > {} writable bytes",
            chain.writable_bytes()
        );
        if chain.in_memory(mem) && chain.writable_bytes() > 0 {
            assert!(len > 0, "well-formed chain {k} left unanswered: {chain:?}");
        }
        if len > 0 {
            let at = chain.last_writable_byte().expect("len > 0: writable");
            let s: u8 = mem.read_obj(GuestAddress(at)).expect("status in memory");
            assert!(
                matches!(s, S_OK | S_IOERR | S_UNSUPP),
                "status byte {s} for chain {k}"
            );
            report.statuses.push(s);
        }
    }
    report
}
