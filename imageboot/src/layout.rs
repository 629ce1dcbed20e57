//! The image's layout: its partition table, what each partition holds, which ext4 file system
//! is the root and which (if any) is a separate /boot.

use super::disk::Window;
use super::fs::{Fs, Kind, Tree};
use super::partition::read_table;
pub use super::partition::TableKind;
use super::probe::{probe, FsKind};
use super::Budget;

/// One partition (or the whole disk) and what it holds.
pub struct Part {
    /// Partition number; `None` for the whole disk.
    pub number: Option<u32>,
    /// Size in bytes.
    pub len: u64,
    /// The partition type from the table.
    pub type_name: String,
    /// What the contents are.
    pub kind: FsKind,
    /// Why an ext4 file system could not be opened.
    pub error: Option<String>,
}

/// What [`analyse`] found.
pub struct Layout {
    /// The partition table.
    pub table: TableKind,
    /// Partitions in table order.
    pub parts: Vec<Part>,
    /// Remarks (damaged primary GPT, where fstab says /boot is).
    pub notes: Vec<String>,
    /// Root and /boot among the opened file systems.
    pub tree: Tree,
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v >= 10.0 || u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Layout {
    /// One line: `GPT: 1 Linux filesystem 1.9 GiB ext4; 14 BIOS boot 3 MiB unknown contents`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|p| {
                let place = match p.number {
                    Some(n) => format!("partition {n} ({}, {})", p.type_name, human(p.len)),
                    None => format!("the whole disk ({})", human(p.len)),
                };
                let err = p
                    .error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" that {e}"));
                format!("{place}: {}{err}", p.kind)
            })
            .collect();
        let mut s = format!("{}: {}", self.table, parts.join("; "));
        for n in &self.notes {
            s += &format!(" ({n})");
        }
        s
    }

    /// Several lines, for `berth inspect-image`.
    pub fn describe(&self) -> String {
        let mut s = format!("partition table: {}", self.table);
        for p in &self.parts {
            let place = p
                .number
                .map_or("whole disk".into(), |n| format!("partition {n}"));
            s += &format!("\n  {place}: {}, {}, {}", p.type_name, human(p.len), p.kind);
            if let FsKind::Ext4 { uuid, label } = &p.kind {
                s += &format!(" UUID={uuid}");
                if !label.is_empty() {
                    s += &format!(" LABEL={label}");
                }
            }
            if let Some(e) = &p.error {
                s += &format!(" ({e})");
            }
        }
        for n in &self.notes {
            s += &format!("\nnote: {n}");
        }
        s
    }
}

/// Where /etc/fstab says /boot comes from (`UUID=...`, `LABEL=...`), if anywhere.
fn fstab_boot(root: &Fs, budget: &Budget) -> Option<String> {
    let text = root.read_small("/etc/fstab", budget.file_bytes).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let spec = f.next()?;
        (!spec.starts_with('#') && f.next()? == "/boot").then(|| spec.to_owned())
    })
}

fn is_root(fs: &Fs) -> bool {
    fs.kind("/etc") == Some(Kind::Dir)
        && ["/usr", "/bin", "/sbin"]
            .iter()
            .any(|d| fs.kind(d).is_some())
}

fn is_boot(fs: &Fs) -> bool {
    ["/grub", "/grub2", "/loader"]
        .iter()
        .any(|d| fs.kind(d) == Some(Kind::Dir))
        || fs
            .list_dir("/", 1024)
            .iter()
            .any(|(n, _)| n.starts_with("vmlinuz"))
}

/// Reads the partition table and opens every ext4 file system.
pub fn analyse(disk: &Window, budget: &Budget) -> Result<(Layout, Vec<Fs>), String> {
    let table = read_table(disk).map_err(|e| format!("unreadable partition table: {e}"))?;
    let mut notes = table.notes;
    let mut windows = Vec::new();
    if table.kind == TableKind::None {
        windows.push((None, "-".to_owned(), false, disk.clone()));
    }
    for p in table.partitions {
        match disk.sub(p.start, p.len) {
            Ok(w) => windows.push((Some(p.number), p.type_name, p.is_root_type, w)),
            Err(e) => notes.push(format!("partition {}: {e}", p.number)),
        }
    }
    let mut parts = Vec::new();
    let mut fss = Vec::new();
    let mut root_typed = Vec::new();
    for (number, type_name, root_type, w) in windows {
        let kind = probe(&w);
        let mut error = None;
        if let FsKind::Ext4 { uuid, label } = &kind {
            match Fs::open(w.clone(), number, uuid.clone(), label.clone()) {
                Ok(fs) => {
                    root_typed.push(root_type);
                    fss.push(fs);
                }
                Err(e) => error = Some(e),
            }
        }
        parts.push(Part {
            number,
            len: w.len(),
            type_name,
            kind,
            error,
        });
    }
    let mut tree = Tree::default();
    let roots: Vec<usize> = (0..fss.len()).filter(|&i| is_root(&fss[i])).collect();
    tree.root = roots
        .iter()
        .copied()
        .find(|&i| root_typed[i])
        .or(roots.first().copied());
    if let Some(r) = tree.root {
        if let Some(spec) = fstab_boot(&fss[r], budget) {
            let (key, value) = spec.split_once('=').unwrap_or(("", &spec));
            tree.boot = fss.iter().position(|f| match key {
                "UUID" => f.uuid.eq_ignore_ascii_case(value),
                "LABEL" => f.label == value,
                _ => false,
            });
            if tree.boot.is_none() && matches!(key, "UUID" | "LABEL") {
                notes.push(format!(
                    "/etc/fstab mounts /boot from {spec}, which is not an ext4 file system berth can read"
                ));
            }
        }
    }
    if tree.boot.is_none() {
        tree.boot = (0..fss.len()).find(|&i| Some(i) != tree.root && is_boot(&fss[i]));
    }
    let layout = Layout {
        table: table.kind,
        parts,
        notes,
        tree,
    };
    if fss.is_empty() {
        return Err(format!(
            "no ext4 file system berth can read (berth reads ext4 only, not XFS, btrfs, LVM or \
             encrypted volumes); found {}",
            layout.summary()
        ));
    }
    Ok((layout, fss))
}
