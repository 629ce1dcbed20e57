//! Where the kernel, initramfs and kernel arguments are in an image: the default grub.cfg
//! entry, else a Boot Loader Specification entry, else the /vmlinuz and /initrd.img symlinks,
//! else the newest /boot/vmlinuz-* with its matching initramfs.

use super::budget::{Meter, OVERHEAD};
use super::cmdline::{split, version_cmp};
use super::fs::{Fs, Kind, Tree};
use super::grub::{self, Host, SearchKind};

/// A file in one of the image's file systems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// Index into the file system list.
    pub fs: usize,
    /// Path inside that file system.
    pub path: String,
}

/// What was found.
#[derive(Debug, Default)]
pub struct Found {
    /// The kernel.
    pub kernel: Option<FileRef>,
    /// The initramfs images, in load order.
    pub initrds: Vec<FileRef>,
    /// The kernel arguments the image's boot configuration gives, if any.
    pub args: Option<Vec<String>>,
    /// How each piece was found, for the log.
    pub how: Vec<String>,
}

/// The image's file systems, named as GRUB names devices.
struct GrubView<'a> {
    fss: &'a [Fs],
    table: &'static str,
}

impl GrubView<'_> {
    fn device(&self, fs: &Fs) -> String {
        match fs.part {
            Some(n) => format!("hd0,{}{n}", self.table),
            None => "hd0".into(),
        }
    }

    /// The file system a GRUB device names.
    fn fs_of(&self, dev: &str) -> Option<usize> {
        let part = grub::device_partition(dev)?;
        self.fss.iter().position(|f| f.part == part)
    }

    /// A GRUB path (optionally with a device) to a file system and path in it.
    fn locate(&self, root: &str, path: &str) -> Option<FileRef> {
        let (dev, p) = grub::split_device(path);
        let fs = self.fs_of(dev.unwrap_or(root))?;
        let p = if p.starts_with('/') {
            p.to_owned()
        } else {
            format!("/{p}")
        };
        Some(FileRef { fs, path: p })
    }
}

impl Host for GrubView<'_> {
    fn search(&self, kind: SearchKind, key: &str, meter: &Meter) -> Result<Option<String>, String> {
        meter.bytes(self.fss.len() as u64 * (OVERHEAD + key.len() as u64))?;
        let fs = self.fss.iter().find(|f| match kind {
            SearchKind::FsUuid => f.uuid.eq_ignore_ascii_case(key),
            SearchKind::Label => f.label == key,
            SearchKind::File => f.is_file(key),
        });
        Ok(fs.map(|fs| self.device(fs)))
    }

    fn read(&self, root: &str, path: &str, meter: &Meter) -> Result<Option<Vec<u8>>, String> {
        let Some(r) = self.locate(root, path) else {
            return Ok(None);
        };
        read_config(&self.fss[r.fs], &r.path, meter)
    }

    fn test(&self, root: &str, path: &str, op: &str) -> bool {
        let Some(r) = self.locate(root, path) else {
            return false;
        };
        let fs = &self.fss[r.fs];
        match op {
            "-d" => fs.kind(&r.path) == Some(Kind::Dir),
            "-s" => fs.file_len(&r.path).is_some_and(|l| l > 0),
            _ => fs.kind(&r.path).is_some(),
        }
    }
}

/// Reads the configuration file `path` (following symlinks in `fs`), its size from the inode
/// charged to `meter` before anything is read. `Ok(None)` if it is not a readable file.
fn read_config(fs: &Fs, path: &str, meter: &Meter) -> Result<Option<Vec<u8>>, String> {
    if !fs.is_file(path) {
        return Ok(None);
    }
    let Some(len) = fs.file_len(path) else {
        return Ok(None);
    };
    meter.read(path, len)?;
    Ok(fs.read_small(path, len).ok())
}

/// A file GRUB names, resolved in its file system; if it is not there (a `search` that did
/// not match), the same path in the guest's tree, as a boot loader configured for this image
/// would have found it.
fn grub_file(view: &GrubView, tree: &Tree, l: &grub::Loaded) -> Option<FileRef> {
    if let Some(r) = view.locate(&l.root, &l.path) {
        if view.fss[r.fs].is_file(&r.path) {
            return Some(r);
        }
    }
    let (_, p) = grub::split_device(&l.path);
    tree_file(view.fss, tree, p).or_else(|| tree_file(view.fss, tree, &format!("/boot{p}")))
}

/// Resolves `path` in the guest's tree (symlinks followed across the /boot mount).
pub fn tree_file(fss: &[Fs], tree: &Tree, path: &str) -> Option<FileRef> {
    let (fs, path) = tree.resolve(fss, path)?;
    fss[fs].is_file(&path).then_some(FileRef { fs, path })
}

fn from_grub(
    fss: &[Fs],
    tree: &Tree,
    table: &'static str,
    found: &mut Found,
    meter: &Meter,
) -> Result<(), String> {
    meter.reading("grub.cfg");
    let view = GrubView { fss, table };
    let mut places: Vec<(usize, &str)> = Vec::new();
    for i in tree
        .boot
        .iter()
        .chain(tree.root.iter())
        .copied()
        .chain(0..fss.len())
    {
        for p in [
            "/boot/grub/grub.cfg",
            "/boot/grub2/grub.cfg",
            "/grub/grub.cfg",
            "/grub2/grub.cfg",
        ] {
            if !places.contains(&(i, p)) {
                places.push((i, p));
            }
        }
    }
    for (i, p) in places {
        if !fss[i].is_file(p) {
            continue;
        }
        let at = |e: String| format!("{p} on {}: {e}", fss[i].describe());
        let text = fss[i]
            .file_len(p)
            .ok_or_else(|| "cannot be read".to_owned())
            .and_then(|len| meter.read(p, len).map(|()| len))
            .and_then(|len| fss[i].read_small(p, len))
            .map_err(at)?;
        let dev = view.device(&fss[i]);
        let prefix = format!("({dev}){}", p.trim_end_matches("/grub.cfg"));
        let text = String::from_utf8_lossy(&text);
        let entry = grub::default_entry(&text, &dev, &prefix, &view, meter).map_err(at)?;
        let Some(e) = entry else {
            found
                .how
                .push(format!("{p} has no entry that loads a kernel"));
            continue;
        };
        let Some(linux) = &e.linux else { continue };
        found.how.push(format!(
            "{p} on {}: entry {:?} ({})",
            fss[i].describe(),
            e.title,
            e.why
        ));
        found.args = Some(e.args.clone());
        match grub_file(&view, tree, linux) {
            Some(k) => {
                found.kernel = Some(k);
                let initrds: Option<Vec<_>> = e
                    .initrds
                    .iter()
                    .map(|l| grub_file(&view, tree, l))
                    .collect();
                match initrds {
                    Some(v) => found.initrds = v,
                    None => found.how.push("its initrd was not found".into()),
                }
            }
            None => found
                .how
                .push(format!("its kernel {} was not found", linux.path)),
        }
        return Ok(());
    }
    Ok(())
}

/// `key value` lines of a BLS entry.
fn bls_field<'a>(text: &'a str, key: &str) -> impl Iterator<Item = &'a str> + 'a {
    let key = key.to_owned();
    text.lines().filter_map(move |l| {
        let l = l.trim();
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim())
    })
}

fn from_bls(fss: &[Fs], tree: &Tree, found: &mut Found, meter: &Meter) -> Result<(), String> {
    meter.reading("boot loader entries");
    // Entries live on the partition holding /boot (paths relative to it) or in the root fs.
    let mut dirs = Vec::new();
    if let Some(b) = tree.boot {
        dirs.push((b, "/loader/entries", ""));
    }
    if let Some(r) = tree.root {
        dirs.push((r, "/boot/loader/entries", "/boot"));
    }
    let mut best: Option<(String, String, usize, &str, String)> = None;
    for (fs, dir, base) in dirs {
        for (name, kind) in fss[fs].list_dir(dir, meter.budget().dir_entries) {
            if kind != Kind::File || !name.ends_with(".conf") {
                continue;
            }
            let path = format!("{dir}/{name}");
            let Some(t) = read_config(&fss[fs], &path, meter)
                .map_err(|e| format!("{path} on {}: {e}", fss[fs].describe()))?
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&t).into_owned();
            let version = bls_field(&text, "version")
                .next()
                .unwrap_or(&name)
                .to_owned();
            let newer = best.as_ref().is_none_or(|(v, n, ..)| {
                version_cmp(&version, v)
                    .then_with(|| version_cmp(&name, n))
                    .is_gt()
            });
            if newer && bls_field(&text, "linux").next().is_some() {
                best = Some((version, name, fs, base, text));
            }
        }
    }
    let Some((_, name, fs, base, text)) = best else {
        return Ok(());
    };
    let locate = |p: &str| {
        let p = if p.starts_with('/') {
            p.to_owned()
        } else {
            format!("/{p}")
        };
        if fss[fs].is_file(&p) {
            Some(FileRef { fs, path: p })
        } else {
            tree_file(fss, tree, &format!("{base}{p}"))
        }
    };
    found.how.push(format!(
        "boot loader entry {name} on {}",
        fss[fs].describe()
    ));
    found.kernel = bls_field(&text, "linux").next().and_then(locate);
    found.initrds = bls_field(&text, "initrd").filter_map(locate).collect();
    let opts: Vec<String> = bls_field(&text, "options").flat_map(split).collect();
    found.args = Some(opts);
    Ok(())
}

fn from_links(fss: &[Fs], tree: &Tree, found: &mut Found, meter: &Meter) {
    for (k, i) in [
        ("/vmlinuz", "/initrd.img"),
        ("/boot/vmlinuz", "/boot/initrd.img"),
    ] {
        if let Some(kernel) = tree_file(fss, tree, k) {
            found.how.push(format!("the {k} symlink"));
            found.initrds = tree_file(fss, tree, i).into_iter().collect();
            found.kernel = Some(kernel);
            return;
        }
    }
    let Some((fs, boot)) = tree.resolve(fss, "/boot") else {
        return;
    };
    let names = fss[fs].list_dir(&boot, meter.budget().dir_entries);
    let newest = names
        .iter()
        .filter(|(n, k)| *k != Kind::Dir && n.starts_with("vmlinuz-") && !n.ends_with(".sig"))
        .map(|(n, _)| &n["vmlinuz-".len()..])
        .filter(|v| tree_file(fss, tree, &format!("/boot/vmlinuz-{v}")).is_some())
        .max_by(|a, b| version_cmp(a, b));
    let Some(v) = newest else { return };
    found
        .how
        .push(format!("the newest kernel /boot/vmlinuz-{v}"));
    found.kernel = tree_file(fss, tree, &format!("/boot/vmlinuz-{v}"));
    found.initrds = [
        format!("initrd.img-{v}"),
        format!("initramfs-{v}.img"),
        format!("initrd-{v}.img"),
        format!("initrd-{v}"),
    ]
    .iter()
    .find_map(|n| tree_file(fss, tree, &format!("/boot/{n}")))
    .into_iter()
    .collect();
}

/// Looks for the kernel, initramfs and arguments in the file systems `fss` arranged as `tree`,
/// all of it within the budget of `meter`.
pub fn find(fss: &[Fs], tree: &Tree, table: &'static str, meter: &Meter) -> Result<Found, String> {
    let mut found = Found::default();
    from_grub(fss, tree, table, &mut found, meter)?;
    if found.kernel.is_none() {
        let mut bls = Found::default();
        from_bls(fss, tree, &mut bls, meter)?;
        if bls.kernel.is_some() || found.args.is_none() {
            found.how.append(&mut bls.how);
            found.kernel = bls.kernel;
            found.initrds = bls.initrds;
            if bls.args.is_some() {
                found.args = bls.args;
            }
        }
    }
    if found.kernel.is_none() {
        from_links(fss, tree, &mut found, meter);
    }
    Ok(found)
}
