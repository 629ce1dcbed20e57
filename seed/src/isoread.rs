//! A small, independent ISO9660 reader: enough to walk the directory trees of the images this
//! crate writes, read their files back (by Rock Ridge, Joliet or plain ISO9660 names), and find
//! every timestamp so that [`crate::iso`] can pin them. It does not use hadris-iso, so tests that
//! read an image back with it check the writer rather than the writer's own reader.

use std::collections::BTreeMap;

/// ISO9660 logical sector size (the only one this crate writes).
pub const SECTOR: usize = 2048;

/// An image that cannot be read as ISO9660.
#[derive(Debug, thiserror::Error)]
#[error("malformed ISO9660 image: {0}")]
pub struct IsoError(String);

fn bad<T>(what: impl Into<String>) -> Result<T, IsoError> {
    Err(IsoError(what.into()))
}

/// Which name space of the image to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// The primary tree with Rock Ridge (`NM`) names.
    RockRidge,
    /// The Joliet (UCS-2) tree of the supplementary volume descriptor.
    Joliet,
    /// The primary tree with its ISO9660 names, version suffix (`;1`) stripped.
    Plain,
}

/// A node of a tree read back from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file and its contents.
    File(Vec<u8>),
}

/// A volume descriptor with a directory tree (primary or supplementary).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Volume {
    /// Byte offset of the descriptor in the image.
    pub offset: usize,
    /// True for a Joliet supplementary descriptor.
    pub joliet: bool,
    /// Byte offset of the root directory record (inside the descriptor).
    pub root: usize,
}

/// One directory record found while walking a tree.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// Byte offset of the record in the image.
    pub offset: usize,
    /// Slash-separated path of the entry ("" for `.`/`..` and the root).
    pub path: String,
    /// True for the `.` and `..` entries.
    pub dot: bool,
    /// True for a directory.
    pub dir: bool,
    /// Byte ranges of the record's SUSP system use entries (including continuation areas).
    pub susp: Vec<(usize, usize)>,
}

fn u32_le(img: &[u8], at: usize) -> Result<usize, IsoError> {
    match img.get(at..at + 4) {
        Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
        None => bad(format!("field at byte {at} is past the end")),
    }
}

/// The primary and supplementary volume descriptors, in image order.
pub(crate) fn volumes(img: &[u8]) -> Result<Vec<Volume>, IsoError> {
    let mut out = Vec::new();
    for sector in 16.. {
        let off = sector * SECTOR;
        let Some(vd) = img.get(off..off + SECTOR) else {
            return bad("no volume descriptor set terminator");
        };
        if &vd[1..6] != b"CD001" {
            return bad(format!("sector {sector} is not a volume descriptor"));
        }
        match vd[0] {
            255 => break,
            1 => out.push(Volume {
                offset: off,
                joliet: false,
                root: off + 156,
            }),
            // Joliet escape sequences: %/@, %/C, %/E.
            2 => out.push(Volume {
                offset: off,
                joliet: vd[88] == b'%' && vd[89] == b'/',
                root: off + 156,
            }),
            _ => {}
        }
    }
    Ok(out)
}

/// The SUSP entries of a record, following `CE` continuation areas.
fn susp_entries(img: &[u8], rec: &[u8], rec_off: usize) -> Result<Vec<(usize, usize)>, IsoError> {
    let name_len = rec[32] as usize;
    let start = 33 + name_len + usize::from(name_len.is_multiple_of(2));
    let mut areas = vec![(rec_off + start, rec_off + rec.len())];
    let mut out = Vec::new();
    while let Some((mut at, end)) = areas.pop() {
        if areas.len() + out.len() > 4096 {
            return bad("too many system use entries");
        }
        while at + 4 <= end {
            let len = img[at + 2] as usize;
            if len < 4 || at + len > end {
                break;
            }
            if &img[at..at + 2] == b"CE" && len >= 28 {
                let block = u32_le(img, at + 4)?;
                let offset = u32_le(img, at + 12)?;
                let size = u32_le(img, at + 20)?;
                let from = block * SECTOR + offset;
                if from + size > img.len() {
                    return bad("continuation area past the end");
                }
                areas.push((from, from + size));
            }
            out.push((at, at + len));
            at += len;
        }
    }
    Ok(out)
}

fn record_name(img: &[u8], rec: &Record, ns: Namespace) -> Option<String> {
    let raw = &img[rec.offset..];
    let ident = &raw[33..33 + raw[32] as usize];
    match ns {
        Namespace::Joliet => {
            let units: Vec<u16> = ident
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            Some(strip_version(&String::from_utf16_lossy(&units)))
        }
        Namespace::Plain => Some(strip_version(&String::from_utf8_lossy(ident))),
        Namespace::RockRidge => {
            let mut name = Vec::new();
            for &(a, b) in &rec.susp {
                if &img[a..a + 2] == b"NM" && b > a + 5 {
                    name.extend_from_slice(&img[a + 5..b]);
                }
            }
            (!name.is_empty()).then(|| String::from_utf8_lossy(&name).into_owned())
        }
    }
}

fn strip_version(name: &str) -> String {
    let base = name.split(';').next().unwrap_or(name);
    // A file without an extension is recorded as "NAME." in plain ISO9660.
    base.strip_suffix('.').unwrap_or(base).to_string()
}

/// Every directory record of a volume's tree, depth first, with paths in name space `ns`.
pub(crate) fn walk(img: &[u8], vol: &Volume, ns: Namespace) -> Result<Vec<Record>, IsoError> {
    let mut out = Vec::new();
    let root = img
        .get(vol.root..vol.root + 34)
        .ok_or(IsoError("short root".into()))?;
    let mut stack = vec![(u32_le(root, 2)?, u32_le(root, 10)?, String::new())];
    let mut seen = std::collections::HashSet::new();
    while let Some((lba, size, dir_path)) = stack.pop() {
        if !seen.insert(lba) || seen.len() > 100_000 {
            return bad(format!(
                "directory loop or too many directories at sector {lba}"
            ));
        }
        let start = lba * SECTOR;
        let end = start + size;
        if end > img.len() {
            return bad(format!("directory at sector {lba} runs past the end"));
        }
        let mut at = start;
        while at < end {
            let len = img[at] as usize;
            if len == 0 {
                // Records never cross a sector: the rest of this sector is padding.
                at = (at / SECTOR + 1) * SECTOR;
                continue;
            }
            if len < 34 || at + len > end || 33 + img[at + 32] as usize > len {
                return bad(format!("bad directory record at byte {at}"));
            }
            let raw = &img[at..at + len];
            let dot = raw[32] == 1 && (raw[33] == 0 || raw[33] == 1);
            let susp = if vol.joliet {
                Vec::new()
            } else {
                susp_entries(img, raw, at)?
            };
            let mut rec = Record {
                offset: at,
                path: String::new(),
                dot,
                dir: raw[25] & 0x02 != 0,
                susp,
            };
            if !dot {
                let name = record_name(img, &rec, ns)
                    .ok_or_else(|| IsoError(format!("no Rock Ridge name at byte {at}")))?;
                rec.path = if dir_path.is_empty() {
                    name
                } else {
                    format!("{dir_path}/{name}")
                };
                if rec.dir {
                    stack.push((u32_le(raw, 2)?, u32_le(raw, 10)?, rec.path.clone()));
                }
            }
            out.push(rec);
            at += len;
        }
    }
    Ok(out)
}

/// Reads the whole tree of one name space: path -> directory or file contents.
pub fn read_tree(img: &[u8], ns: Namespace) -> Result<BTreeMap<String, Node>, IsoError> {
    let vols = volumes(img)?;
    let vol = vols
        .iter()
        .find(|v| v.joliet == (ns == Namespace::Joliet))
        .ok_or_else(|| IsoError(format!("no volume descriptor for {ns:?}")))?;
    let mut tree = BTreeMap::new();
    for rec in walk(img, vol, ns)? {
        if rec.dot {
            continue;
        }
        let node = if rec.dir {
            Node::Dir
        } else {
            let lba = u32_le(img, rec.offset + 2)?;
            let size = u32_le(img, rec.offset + 10)?;
            let data = img
                .get(lba * SECTOR..lba * SECTOR + size)
                .ok_or_else(|| IsoError(format!("{} runs past the end", rec.path)))?;
            Node::File(data.to_vec())
        };
        if tree.insert(rec.path.clone(), node).is_some() {
            return bad(format!("duplicate name {}", rec.path));
        }
    }
    Ok(tree)
}

/// The volume identifier (label) of the primary or the Joliet descriptor, trailing spaces cut.
pub fn volume_label(img: &[u8], joliet: bool) -> Result<String, IsoError> {
    let vol = *volumes(img)?
        .iter()
        .find(|v| v.joliet == joliet)
        .ok_or_else(|| IsoError("no such volume descriptor".into()))?;
    let raw = &img[vol.offset + 40..vol.offset + 72];
    let label = if joliet {
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    };
    Ok(label.trim_end_matches([' ', '\0']).to_string())
}
