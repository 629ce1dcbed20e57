//! Booting stock cloud images without firmware: berth finds the kernel, initramfs and kernel
//! arguments inside the image (GPT/MBR partitions, ext4 root or /boot, grub.cfg, BLS entries,
//! /vmlinuz symlinks) and loads them itself. See docs/imageboot.md.
//!
//! The image is untrusted input: every size and offset read from it is checked, reads are
//! capped, all work is within a [`Budget`], and a damaged or hostile image gives a one-line
//! error that says what was found.

mod budget;
pub mod cmd;
mod cmdline;
mod disk;
mod find;
mod fs;
mod grub;
mod layout;
mod partition;
mod probe;

use std::cell::RefCell;
use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use vmm::block::{open_disk, DiskFormat, DiskOptions};

pub use budget::Budget;
pub use cmdline::with_berth_consoles;

/// Why an image cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum ImageBootError {
    /// The disk image cannot be opened.
    #[error("{0}")]
    Disk(#[from] vmm::block::DiskError),
    /// No kernel could be found or read; the message describes the image and the fix.
    #[error("{0}")]
    NotBootable(String),
    /// Extracting the files failed on the host side.
    #[error("cannot extract the kernel: {0}")]
    Host(std::io::Error),
}

/// What the operator supplies instead of what is in the image (`KERNEL`, `INITRD`,
/// `KERNEL_CMDLINE`, or `berth vm --kernel/--initrd/--cmdline`).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// A kernel file on the host.
    pub kernel: Option<PathBuf>,
    /// An initramfs on the host; `Some(None)` boots without one (`INITRD=none`).
    pub initrd: Option<Option<PathBuf>>,
    /// The whole kernel command line, used as given.
    pub cmdline: Option<String>,
}

impl Overrides {
    /// Reads `KERNEL`, `INITRD` (`none` or empty: no initramfs) and `KERNEL_CMDLINE`.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var_os(k);
        Overrides {
            kernel: get("KERNEL").filter(|v| !v.is_empty()).map(PathBuf::from),
            initrd: get("INITRD").map(|v| (!v.is_empty() && v != "none").then(|| PathBuf::from(v))),
            cmdline: std::env::var("KERNEL_CMDLINE").ok(),
        }
    }

    fn complete(&self) -> bool {
        self.kernel.is_some() && self.initrd.is_some() && self.cmdline.is_some()
    }
}

/// The files to boot: host paths the loader reads (extracted files are anonymous memory
/// files, named through /proc/self/fd, and vanish when this is dropped).
#[derive(Debug)]
pub struct BootFiles {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// What was found where, one line, for the log.
    pub description: String,
    _extracted: Vec<File>,
}

/// What an image holds (for `berth inspect-image` and for booting).
pub struct Inspection {
    fss: Vec<fs::Fs>,
    found: find::Found,
    layout: layout::Layout,
}

impl Inspection {
    /// The partitions, file systems and choices, several lines.
    pub fn report(&self) -> String {
        let mut s = self.layout.describe();
        for h in &self.found.how {
            s += &format!("\nfound: {h}");
        }
        let show = |r: &find::FileRef| format!("{} on {}", r.path, self.fss[r.fs].describe());
        if let Some(k) = &self.found.kernel {
            s += &format!("\nkernel: {}", show(k));
        }
        for i in &self.found.initrds {
            s += &format!("\ninitrd: {}", show(i));
        }
        s += &format!("\ncmdline: {}", self.cmdline());
        s
    }

    /// The kernel command line: the image's arguments (or `root=UUID=<root> ro`) with
    /// berth's consoles.
    pub fn cmdline(&self) -> String {
        let args = match &self.found.args {
            Some(a) => a.clone(),
            None => match self.layout.tree.root {
                Some(r) => vec![format!("root=UUID={}", self.fss[r].uuid), "ro".into()],
                None => Vec::new(),
            },
        };
        with_berth_consoles(&args)
    }

    fn short(&self) -> String {
        let k = self
            .found
            .kernel
            .as_ref()
            .map_or("?".into(), |k| k.path.clone());
        format!("{k} ({})", self.found.how.join("; "))
    }
}

/// Reads the image at `path` and finds what it boots, within `budget`. `format` as for
/// `open_disk`: `None` probes (only for images the guest cannot write).
pub fn inspect(
    path: &Path,
    format: Option<DiskFormat>,
    budget: &Budget,
) -> Result<Inspection, ImageBootError> {
    let backend = open_disk(
        path,
        DiskOptions {
            read_only: true,
            format,
            ..Default::default()
        },
    )?;
    let disk = disk::Window::whole(Rc::new(RefCell::new(backend)));
    let shown = path.display().to_string();
    let (layout, fss) = layout::analyse(&disk)
        .map_err(|e| ImageBootError::NotBootable(format!("{shown}: {e}; {}", how_to_supply())))?;
    let table = match layout.table {
        layout::TableKind::Mbr => "msdos",
        _ => "gpt",
    };
    let meter = budget::Meter::new(budget.clone());
    let found = find::find(&fss, &layout.tree, table, &meter).map_err(|e| {
        ImageBootError::NotBootable(format!(
            "{shown}: {e}; found {}; {}",
            layout.summary(),
            how_to_supply()
        ))
    })?;
    Ok(Inspection { fss, found, layout })
}

fn how_to_supply() -> &'static str {
    "supply the kernel yourself with KERNEL=<bzImage> INITRD=<initramfs or none> \
     KERNEL_CMDLINE=<arguments, e.g. root=/dev/vda1 console=ttyS0> (or berth vm --kernel/--initrd/--cmdline)"
}

/// An anonymous in-memory file (memfd): no temporary files to clean up, even after a crash.
fn memfile(name: &str) -> std::io::Result<File> {
    let cname = std::ffi::CString::new(name).expect("no NUL in the name");
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor this process owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn fd_path(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// Finds (or takes from `ov`) the kernel, initramfs and command line for booting the image at
/// `path`, extracting the files from the image within `budget` (see
/// [`Budget::for_guest_memory`]: the initramfs limit depends on the guest's memory).
pub fn prepare(
    path: &Path,
    format: Option<DiskFormat>,
    ov: &Overrides,
    budget: &Budget,
) -> Result<BootFiles, ImageBootError> {
    if ov.complete() {
        return Ok(BootFiles {
            kernel: ov.kernel.clone().unwrap_or_default(),
            initrd: ov.initrd.clone().flatten(),
            cmdline: ov.cmdline.clone().unwrap_or_default(),
            description: "KERNEL, INITRD and KERNEL_CMDLINE given: the image is not searched"
                .into(),
            _extracted: Vec::new(),
        });
    }
    let insp = inspect(path, format, budget)?;
    let shown = path.display();
    let fail = |what: String| {
        ImageBootError::NotBootable(format!(
            "{shown}: {what}; found {}; {}",
            insp.layout.summary(),
            how_to_supply()
        ))
    };
    let mut extracted = Vec::new();
    let mut notes = Vec::new();
    let kernel = match (&ov.kernel, &insp.found.kernel) {
        (Some(k), _) => {
            notes.push(format!("kernel {} (KERNEL)", k.display()));
            k.clone()
        }
        (None, Some(r)) => {
            // The size comes from the inode and is checked before anything is read (a sparse
            // file costs nothing to store in the image and everything to extract).
            let len = insp.fss[r.fs].file_len(&r.path).unwrap_or(0);
            if len > budget.kernel_bytes {
                return Err(fail(format!(
                    "kernel {} is {len} bytes, more than the {} MiB berth extracts \
                     (Budget::kernel_bytes)",
                    r.path,
                    budget.kernel_bytes >> 20
                )));
            }
            let mut f = memfile("berth-kernel").map_err(ImageBootError::Host)?;
            insp.fss[r.fs]
                .copy_to(&r.path, &mut f, budget.kernel_bytes)
                .map_err(|e| fail(format!("kernel {} {e}", r.path)))?;
            let p = fd_path(&f);
            extracted.push(f);
            notes.push(format!("kernel {}", insp.short()));
            p
        }
        (None, None) => return Err(fail(
            "no kernel found (no grub.cfg entry, boot loader entry, /vmlinuz or /boot/vmlinuz-*)"
                .into(),
        )),
    };
    let initrd = match &ov.initrd {
        Some(i) => i.clone(),
        None if insp.found.initrds.is_empty() => None,
        None => {
            // All sizes from the inodes first: nothing is read when the total is too big.
            let sizes = insp.found.initrds.iter().fold(0u64, |total, r| {
                let len = insp.fss[r.fs].file_len(&r.path).unwrap_or(0);
                total.next_multiple_of(4).saturating_add(len)
            });
            if sizes > budget.initrd_bytes {
                let names: Vec<&str> = insp.found.initrds.iter().map(|r| r.path.as_str()).collect();
                return Err(fail(format!(
                    "initramfs {} is {} MiB, more than the {} MiB the guest can unpack (half \
                     of its memory, at most 2 GiB; Budget::initrd_bytes): give it more memory \
                     (IMG_RAM_MB, berth vm --memory) or another initramfs (INITRD=<file or none>)",
                    names.join(" + "),
                    sizes >> 20,
                    budget.initrd_bytes >> 20
                )));
            }
            let mut f = memfile("berth-initrd").map_err(ImageBootError::Host)?;
            let mut total = 0u64;
            for r in &insp.found.initrds {
                // GRUB loads several images 4-byte aligned, which cpio needs between archives.
                let pad = (4 - total % 4) % 4;
                f.write_all(&[0u8; 3][..pad as usize])
                    .map_err(ImageBootError::Host)?;
                total += pad;
                total += insp.fss[r.fs]
                    .copy_to(&r.path, &mut f, budget.initrd_bytes.saturating_sub(total))
                    .map_err(|e| fail(format!("initrd {} {e}", r.path)))?;
                notes.push(format!("initrd {}", r.path));
            }
            f.rewind().map_err(ImageBootError::Host)?;
            let p = fd_path(&f);
            extracted.push(f);
            Some(p)
        }
    };
    let cmdline = match &ov.cmdline {
        Some(c) => c.clone(),
        None if insp.found.args.is_none() && insp.layout.tree.root.is_none() => {
            return Err(fail(
                "no kernel arguments and no root file system found".into(),
            ))
        }
        None => insp.cmdline(),
    };
    Ok(BootFiles {
        kernel,
        initrd,
        cmdline,
        description: format!("{shown}: {}", notes.join(", ")),
        _extracted: extracted,
    })
}
