//! ext4 file systems inside the image (through ext4-view), and the guest's view of them: the
//! root file system with an optional separate /boot file system mounted on it.

use std::io::Write;

use ext4_view::{Ext4, Ext4Error};

use super::disk::Window;

/// Longest chain of symbolic links followed while resolving one path (Linux's limit).
const MAX_SYMLINKS: u32 = 40;
/// Block groups berth accepts in a superblock: bounds the descriptor table ext4-view loads
/// (2^20 groups of 128 MiB is 128 TiB).
const MAX_GROUPS: u64 = 1 << 20;

/// An ext4 file system found in the image.
pub struct Fs {
    /// The partition number (as Linux numbers them), `None` for a whole-disk file system.
    pub part: Option<u32>,
    /// The file system UUID (lower case).
    pub uuid: String,
    /// The volume label.
    pub label: String,
    ext4: Ext4,
}

/// The type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, fifo or socket.
    Other,
}

fn err(e: Ext4Error) -> String {
    match e {
        Ext4Error::Incompatible(i) => format!("uses ext4 features berth cannot read ({i})"),
        Ext4Error::Corrupt(c) => format!("is damaged ({c})"),
        e => format!("cannot be read ({e})"),
    }
}

/// Checks the superblock numbers that size ext4-view's allocations against the partition, so a
/// forged superblock cannot ask for gigabytes of descriptors.
fn check_superblock(w: &Window) -> Result<(), String> {
    let sb = w
        .read_vec(1024, 1024)
        .map_err(|e| format!("superblock unreadable: {e}"))?;
    let u32at = |o: usize| u64::from(u32::from_le_bytes(sb[o..o + 4].try_into().unwrap()));
    let log = u32at(24);
    if log > 6 {
        return Err(format!("block size 2^{} is invalid", 10 + log));
    }
    let block = 1024u64 << log;
    let incompat = u32at(96);
    let mut blocks = u32at(4);
    let mut desc = 32;
    if incompat & 0x80 != 0 {
        blocks |= u32at(0x150) << 32;
        desc = u64::from(u16::from_le_bytes([sb[0xfe], sb[0xff]])).max(32);
    }
    let per_group = u32at(32);
    if per_group == 0 || u32at(40) == 0 {
        return Err("superblock has zero blocks or inodes per group".into());
    }
    let too_big = || {
        format!("superblock claims {blocks} blocks of {block} bytes, more than its partition holds")
    };
    let bytes = blocks.checked_mul(block).ok_or_else(too_big)?;
    if bytes > w.len() {
        return Err(too_big());
    }
    let groups = blocks.div_ceil(per_group);
    if groups > MAX_GROUPS || groups * desc > w.len() {
        return Err(format!("superblock claims {groups} block groups"));
    }
    Ok(())
}

impl Fs {
    /// Opens the ext4 file system in `w`.
    pub fn open(w: Window, part: Option<u32>, uuid: String, label: String) -> Result<Fs, String> {
        check_superblock(&w)?;
        let ext4 = Ext4::load(Box::new(w)).map_err(err)?;
        Ok(Fs {
            part,
            uuid,
            label,
            ext4,
        })
    }

    /// The type of `path` without following a final symlink; `None` if it does not exist or
    /// cannot be read.
    pub fn kind(&self, path: &str) -> Option<Kind> {
        let m = self.ext4.symlink_metadata(path).ok()?;
        let t = m.file_type();
        Some(if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_regular_file() {
            Kind::File
        } else {
            Kind::Other
        })
    }

    /// The target of the symlink `path`.
    pub fn read_link(&self, path: &str) -> Option<String> {
        let t = self.ext4.read_link(path).ok()?;
        t.to_str().ok().map(str::to_owned)
    }

    /// Whether `path` (following symlinks inside this file system) is a regular file.
    pub fn is_file(&self, path: &str) -> bool {
        self.ext4
            .metadata(path)
            .map(|m| m.file_type().is_regular_file())
            .unwrap_or(false)
    }

    /// Size of the file at `path` (following symlinks inside this file system).
    pub fn file_len(&self, path: &str) -> Option<u64> {
        self.ext4.metadata(path).ok().map(|m| m.len())
    }

    /// Copies the file at `path` (following symlinks inside this file system) to `out`;
    /// files larger than `max` bytes are refused before anything is read.
    pub fn copy_to(&self, path: &str, out: &mut dyn Write, max: u64) -> Result<u64, String> {
        let mut f = self.ext4.open(path).map_err(err)?;
        let len = f.metadata().len();
        if len > max {
            return Err(format!("is {len} bytes, more than the {max} berth accepts"));
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = f.read_bytes(&mut buf).map_err(err)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            if total > max {
                return Err(format!("grew past {max} bytes while being read"));
            }
            out.write_all(&buf[..n])
                .map_err(|e| format!("cannot be written out: {e}"))?;
        }
    }

    /// Reads a small file (a configuration file) of at most `max` bytes.
    pub fn read_small(&self, path: &str, max: u64) -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        self.copy_to(path, &mut v, max)?;
        Ok(v)
    }

    /// The names of up to `max` entries of the directory `path` with their types (sorted).
    pub fn list_dir(&self, path: &str, max: usize) -> Vec<(String, Kind)> {
        let Ok(rd) = self.ext4.read_dir(path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.take(max) {
            let Ok(e) = e else { break };
            let Ok(name) = e.file_name().as_str().map(str::to_owned) else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let kind = match e.file_type() {
                Ok(t) if t.is_symlink() => Kind::Symlink,
                Ok(t) if t.is_dir() => Kind::Dir,
                Ok(t) if t.is_regular_file() => Kind::File,
                _ => Kind::Other,
            };
            out.push((name, kind));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How the file system is named in messages: `partition 1 (ext4, UUID ...)`.
    pub fn describe(&self) -> String {
        let place = match self.part {
            Some(n) => format!("partition {n}"),
            None => "whole disk".into(),
        };
        let label = if self.label.is_empty() {
            String::new()
        } else {
            format!(", label {:?}", self.label)
        };
        format!("{place} (ext4, UUID {}{label})", self.uuid)
    }
}

/// The guest's file tree: the root file system, with a separate /boot file system over its
/// /boot when there is one. Indexes point into the list of file systems found.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tree {
    /// The root file system.
    pub root: Option<usize>,
    /// A separate /boot file system.
    pub boot: Option<usize>,
}

impl Tree {
    /// Which file system holds the absolute, symlink-free `path`, and the path inside it.
    fn map(&self, path: &str) -> Option<(usize, String)> {
        if let Some(b) = self.boot {
            if path == "/boot" {
                return Some((b, "/".into()));
            }
            if let Some(rest) = path.strip_prefix("/boot/") {
                return Some((b, format!("/{rest}")));
            }
        }
        self.root.map(|r| (r, path.to_owned()))
    }

    /// Resolves `path` as the booted guest would see it, following symlinks (relative or
    /// absolute) across the /boot mount. Returns the file system and the path inside it.
    pub fn resolve(&self, fss: &[Fs], path: &str) -> Option<(usize, String)> {
        let mut todo: Vec<String> = split_rev(path);
        let mut cur: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let p = format!("/{}", cur.join("/"));
            let (i, inner) = self.map(&p)?;
            match fss[i].kind(&inner)? {
                Kind::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return None;
                    }
                    let target = fss[i].read_link(&inner)?;
                    cur.pop();
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    todo.extend(split_rev(&target));
                }
                Kind::Dir => {}
                Kind::File | Kind::Other if todo.iter().all(|c| c.is_empty() || c == ".") => {}
                Kind::File | Kind::Other => return None,
            }
        }
        self.map(&format!("/{}", cur.join("/")))
    }
}

/// Path components in reverse order (so `pop` yields them front to back).
fn split_rev(path: &str) -> Vec<String> {
    path.split('/').rev().map(str::to_owned).collect()
}
