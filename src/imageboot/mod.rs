//! Booting stock cloud images without firmware: the glue between the `imageboot` crate (which
//! finds the kernel, initramfs and kernel arguments inside an image, within a [`Budget`]) and
//! berth: opening the image through the block layer, the KERNEL/INITRD/KERNEL_CMDLINE
//! overrides, extracting the files (unnamed files beside the image), and the messages. See
//! docs/imageboot.md.

pub mod cmd;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use imageboot::{ImageRead, Inspection, Refusal};
use vmm::block::{open_disk, BlockBackend, DiskFormat, DiskOptions};

pub use imageboot::Budget;

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

/// The files to boot: host paths the loader reads (extracted files are unnamed files, named
/// through /proc/self/fd, and vanish when this is dropped).
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

/// The image through berth's block layer (raw, or qcow2 with its backing chain).
struct Backend(Box<dyn BlockBackend>);

impl ImageRead for Backend {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
}

fn how_to_supply() -> &'static str {
    "supply the kernel yourself with KERNEL=<bzImage> INITRD=<initramfs or none> \
     KERNEL_CMDLINE=<arguments, e.g. root=/dev/vda1 console=ttyS0> (or berth vm --kernel/--initrd/--cmdline)"
}

/// The one-line refusal for the image at `path`: what, what was found, how to boot anyway.
fn refused(path: &Path, r: Refusal) -> ImageBootError {
    ImageBootError::NotBootable(format!("{}: {r}; {}", path.display(), how_to_supply()))
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
    imageboot::inspect(Box::new(Backend(backend)), budget).map_err(|r| refused(path, r))
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

/// Where an extracted file goes: an unnamed file (O_TMPFILE) in the image's directory, else a
/// memory file. The pod keeps the extracted files for its whole life (every reboot loads them
/// again), and a memory file counts against the pod's memory limit beside the guest's RAM: an
/// image's 200 MiB initramfs would push a pod limited to RAM + 64 MiB over it once the guest
/// uses its memory. An unnamed file next to the image (the pet overlay's volume) is page
/// cache the kernel can write back and reclaim instead. Neither leaves anything behind, even
/// after a crash.
fn extraction_file(image: &Path, name: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir);
    // Read-only directories and file systems without O_TMPFILE get a memory file.
    tmp.or_else(|_| memfile(name))
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
    let fail = |r: Refusal| refused(path, r);
    let mut extracted = Vec::new();
    let mut notes = Vec::new();
    let kernel = match &ov.kernel {
        Some(k) => {
            notes.push(format!("kernel {} (KERNEL)", k.display()));
            k.clone()
        }
        None => {
            let mut f = extraction_file(path, "berth-kernel").map_err(ImageBootError::Host)?;
            if insp.copy_kernel(&mut f, budget).map_err(fail)?.is_none() {
                return Err(fail(
                    insp.refuse(
                        "no kernel found (no grub.cfg entry, boot loader entry, /vmlinuz or \
                     /boot/vmlinuz-*)"
                            .into(),
                    ),
                ));
            }
            let p = fd_path(&f);
            extracted.push(f);
            notes.push(format!(
                "kernel {}",
                insp.kernel_description().unwrap_or_default()
            ));
            p
        }
    };
    let initrd = match &ov.initrd {
        Some(i) => i.clone(),
        None if insp.initrd_paths().is_empty() => None,
        None => {
            let mut f = extraction_file(path, "berth-initrd").map_err(ImageBootError::Host)?;
            insp.copy_initrds(&mut f, budget).map_err(fail)?;
            for i in insp.initrd_paths() {
                notes.push(format!("initrd {i}"));
            }
            use std::io::Seek;
            f.rewind().map_err(ImageBootError::Host)?;
            let p = fd_path(&f);
            extracted.push(f);
            Some(p)
        }
    };
    let cmdline = match &ov.cmdline {
        Some(c) => c.clone(),
        None if !insp.has_cmdline() => {
            return Err(fail(insp.refuse(
                "no kernel arguments and no root file system found".into(),
            )))
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
