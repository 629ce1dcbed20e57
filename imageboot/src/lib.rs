//! Booting stock cloud images without firmware: finds the kernel, initramfs and kernel
//! arguments inside a disk image (GPT/MBR partitions, ext4 root or /boot, grub.cfg, BLS
//! entries, /vmlinuz symlinks) and copies them out. See docs/imageboot.md.
//!
//! This crate is the trust boundary: its only input is the image's bytes ([`ImageRead`]) and
//! everything it does is within a [`Budget`] (work, memory, file sizes). Every size and offset
//! read from the image is checked, and a damaged or hostile image gives a one-line error that
//! says what was found. Opening image files and writing the extracted files is the caller's.

mod budget;
mod cmdline;
mod disk;
mod find;
mod fs;
mod grub;
mod layout;
mod partition;
mod probe;

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

pub use budget::Budget;
pub use cmdline::with_berth_consoles;
pub use disk::ImageRead;

/// Why the image gives no boot plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What is wrong, one line (e.g. `/boot/grub/grub.cfg on partition 1 (...): the image's
    /// grub.cfg goes over berth's limit of ...`).
    pub why: String,
    /// The partitions and file systems found, one line; empty when the partition table
    /// itself could not be read.
    pub found: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.found.is_empty() {
            write!(f, "{}", self.why)
        } else {
            write!(f, "{}; found {}", self.why, self.found)
        }
    }
}

impl std::error::Error for Refusal {}

/// What an image holds and boots: its layout, and the kernel, initramfs and arguments found.
pub struct Inspection {
    fss: Vec<fs::Fs>,
    found: find::Found,
    layout: layout::Layout,
}

/// Reads the image and finds what it boots, within `budget`.
pub fn inspect(image: Box<dyn ImageRead>, budget: &Budget) -> Result<Inspection, Refusal> {
    let disk = disk::Window::whole(Rc::new(RefCell::new(image)));
    let (layout, fss) = layout::analyse(&disk, budget).map_err(|why| Refusal {
        why,
        found: String::new(),
    })?;
    let table = match layout.table {
        layout::TableKind::Mbr => "msdos",
        _ => "gpt",
    };
    let meter = budget::Meter::new(budget.clone());
    let found = find::find(&fss, &layout.tree, table, &meter).map_err(|why| Refusal {
        why,
        found: layout.summary(),
    })?;
    Ok(Inspection { fss, found, layout })
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

    /// The partitions and file systems, one line (for messages).
    pub fn summary(&self) -> String {
        self.layout.summary()
    }

    /// A refusal about this image: `why`, with what was found.
    pub fn refuse(&self, why: String) -> Refusal {
        Refusal {
            why,
            found: self.summary(),
        }
    }

    /// Whether the image gave kernel arguments or a root file system to name in them.
    pub fn has_cmdline(&self) -> bool {
        self.found.args.is_some() || self.layout.tree.root.is_some()
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

    /// The kernel's path and how it was found (`/boot/vmlinuz-6.1 (/boot/grub/grub.cfg on
    /// ...)`), if one was found.
    pub fn kernel_description(&self) -> Option<String> {
        let k = self.found.kernel.as_ref()?;
        Some(format!("{} ({})", k.path, self.found.how.join("; ")))
    }

    /// The initramfs paths, in load order.
    pub fn initrd_paths(&self) -> Vec<&str> {
        self.found.initrds.iter().map(|r| r.path.as_str()).collect()
    }

    /// Copies the kernel to `out`; its size (from the inode) is checked against
    /// `budget.kernel_bytes` before anything is read. `Ok(None)`: no kernel was found.
    pub fn copy_kernel(
        &self,
        out: &mut dyn Write,
        budget: &Budget,
    ) -> Result<Option<u64>, Refusal> {
        let Some(r) = &self.found.kernel else {
            return Ok(None);
        };
        // A sparse file costs nothing to store in the image and everything to extract.
        let len = self.fss[r.fs].file_len(&r.path).unwrap_or(0);
        if len > budget.kernel_bytes {
            return Err(self.refuse(format!(
                "kernel {} is {len} bytes, more than the {} MiB berth extracts \
                 (Budget::kernel_bytes)",
                r.path,
                budget.kernel_bytes >> 20
            )));
        }
        self.fss[r.fs]
            .copy_to(&r.path, out, budget.kernel_bytes)
            .map(Some)
            .map_err(|e| self.refuse(format!("kernel {} {e}", r.path)))
    }

    /// Copies the initramfs images to `out`, 4-byte aligned one after the other as GRUB loads
    /// them; their total size (from the inodes) is checked against `budget.initrd_bytes`
    /// before anything is read. Returns the bytes written (0 when none were found).
    pub fn copy_initrds(&self, out: &mut dyn Write, budget: &Budget) -> Result<u64, Refusal> {
        let initrds = &self.found.initrds;
        let sizes = initrds.iter().fold(0u64, |total, r| {
            let len = self.fss[r.fs].file_len(&r.path).unwrap_or(0);
            total.next_multiple_of(4).saturating_add(len)
        });
        if sizes > budget.initrd_bytes {
            return Err(self.refuse(format!(
                "initramfs {} is {} MiB, more than the {} MiB the guest can unpack (half of \
                 its memory, at most 2 GiB; Budget::initrd_bytes): give it more memory \
                 (IMG_RAM_MB, berth vm --memory) or another initramfs (INITRD=<file or none>)",
                self.initrd_paths().join(" + "),
                sizes >> 20,
                budget.initrd_bytes >> 20
            )));
        }
        let mut total = 0u64;
        for r in initrds {
            // cpio needs the archives 4-byte aligned.
            let pad = total.next_multiple_of(4) - total;
            out.write_all(&[0u8; 3][..pad as usize])
                .map_err(|e| self.refuse(format!("cannot write the initramfs out: {e}")))?;
            total += pad;
            total += self.fss[r.fs]
                .copy_to(&r.path, out, budget.initrd_bytes.saturating_sub(total))
                .map_err(|e| self.refuse(format!("initrd {} {e}", r.path)))?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_without_a_file_system_is_refused_in_one_line() {
        let r = match inspect(Box::new(vec![0u8; 1 << 20]), &Budget::default()) {
            Err(r) => r,
            Ok(_) => panic!("an empty image gave a boot plan"),
        };
        let line = r.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("ext4"), "{line}");
    }
}
