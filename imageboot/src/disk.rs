//! Byte-level access to a guest image: a window (the whole disk or one partition) over an
//! [`ImageRead`], shared by the partition parser, the file system probes and ext4-view.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

/// The image's bytes, as the disk the guest sees (a raw file, or a qcow2 chain read through
/// the block layer). The only input this crate has.
pub trait ImageRead {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the caller keeps `offset + buf.len()` within `size()`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// An image held in memory (tests, small images).
impl ImageRead for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A shared handle to the opened image; every [`Window`] reads through it.
pub type SharedDisk = Rc<RefCell<Box<dyn ImageRead>>>;

/// A byte range `[start, start + len)` of the image, read with bounds checks: the image is
/// user-supplied, so every offset computed from its contents is checked before use.
#[derive(Clone)]
pub struct Window {
    disk: SharedDisk,
    start: u64,
    len: u64,
    /// Read position for the `Read + Seek` implementation.
    pos: u64,
}

impl Window {
    /// The whole disk.
    pub fn whole(disk: SharedDisk) -> Self {
        let len = disk.borrow().size();
        Window {
            disk,
            start: 0,
            len,
            pos: 0,
        }
    }

    /// A sub-range of this window (a partition); fails if it does not lie inside.
    pub fn sub(&self, start: u64, len: u64) -> io::Result<Window> {
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(Window {
                disk: self.disk.clone(),
                start: self.start + start,
                len,
                pos: 0,
            }),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "range {start}+{len} lies beyond the end of the {} byte area",
                    self.len
                ),
            )),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Fills `buf` from `offset` (relative to the window); reads past the end fail.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => {
                self.disk.borrow_mut().read_at(buf, self.start + offset)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read at {offset}+{} beyond the end of a {} byte area",
                    buf.len(),
                    self.len
                ),
            )),
        }
    }

    /// Reads `len` bytes at `offset` into a new buffer (callers keep `len` small).
    pub fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0; len];
        self.read_at(&mut v, offset)?;
        Ok(v)
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let new = new
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = new;
        Ok(new)
    }
}

impl ext4_view::Ext4Read for Window {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_at(dst, start_byte).map_err(|e| e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_bounded() {
        let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let d: Box<dyn ImageRead> = Box::new(data.clone());
        let w = Window::whole(Rc::new(RefCell::new(d)));
        assert_eq!(w.len(), 4096);
        let s = w.sub(1000, 100).unwrap();
        assert_eq!(s.read_vec(0, 4).unwrap(), data[1000..1004]);
        assert!(s.read_vec(98, 4).is_err());
        assert!(s.read_vec(u64::MAX - 1, 4).is_err());
        assert!(w.sub(4000, 200).is_err());
        assert!(w.sub(u64::MAX, 2).is_err());
        let mut s = s;
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all, data[1000..1100]);
        s.seek(SeekFrom::End(-10)).unwrap();
        let mut b = [0u8; 20];
        assert_eq!(Read::read(&mut s, &mut b).unwrap(), 10);
        assert!(s.seek(SeekFrom::Current(-1000)).is_err());
    }
}
