//! The resource budget of reading an image for boot. The image (often the guest-writable
//! overlay, parsed again at every pod start) is hostile input: whatever it holds, finding its
//! kernel must end quickly, in little memory, with a one-line error when it asks for more. Every
//! limit is here, with its number and the reason for it (docs/imageboot.md has the table).

use std::cell::Cell;

/// Every limit on the work and memory spent reading an image's boot configuration and files.
///
/// The counters in a [`Meter`] are shared by everything one search does (all grub.cfg files
/// tried, their `source`d files, grubenv, menu entries run, BLS entries), so the totals hold
/// for the whole search, not per file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Commands the GRUB interpreter runs in total (every statement of every file, function,
    /// and menu entry body). update-grub's output for a few kernels runs a few hundred.
    pub steps: u32,
    /// Longest single value: a variable, an expanded word. GRUB's own command line is 4 KiB; a
    /// kernel command line is at most 2 KiB to 64 KiB depending on the kernel.
    pub value_bytes: usize,
    /// All bytes the interpreter creates, counted as they are made and never given back:
    /// expanded words and arguments, variable values, the copies of the variables a menu entry
    /// runs with, parsed syntax (a fixed cost per token), configuration text read, and paths
    /// looked up in the image. Because nothing is given back this bounds time as well as
    /// memory: the peak is below this (plus the allocator's slack), whatever the grub.cfg does.
    /// A Debian or Ubuntu grub.cfg with several kernels uses well under 1 MiB.
    pub total_bytes: u64,
    /// Nesting of function calls, `source` and `configfile`.
    pub call_depth: u32,
    /// Nesting of blocks (`if`, `menuentry`, `submenu`, `function`, loops) in the syntax.
    pub block_depth: u32,
    /// Nesting of submenus searched for the first entry that loads a kernel.
    pub submenu_depth: u32,
    /// Longest path looked up in the image (Linux's PATH_MAX); longer ones are "not found".
    pub path_bytes: usize,
    /// Largest single configuration file read: grub.cfg, a `source`d file, grubenv, a BLS
    /// entry, /etc/fstab. update-grub writes about 10 KiB for a few kernels.
    pub file_bytes: u64,
    /// All configuration files read in one search together (bounds the time spent on images
    /// with many partitions, many `source` commands or thousands of BLS entries).
    pub read_bytes: u64,
    /// Directory entries looked at in /boot or loader/entries.
    pub dir_entries: usize,
    /// Largest kernel extracted. Distribution bzImages are 8-15 MiB; an uncompressed ELF
    /// vmlinux without debug information stays below 100 MiB. Its copy in a memory file sits
    /// in the pod's memory next to the guest's until the kernel is loaded.
    pub kernel_bytes: u64,
    /// Largest total of initramfs images extracted; see [`Budget::for_guest_memory`].
    pub initrd_bytes: u64,
}

/// The initramfs limit regardless of guest memory: x86 kernels place the initramfs below
/// their `initrd_addr_max`, at most 2 GiB - 1 (and berth's loader puts it below 4 GiB).
const INITRD_ABSOLUTE: u64 = 2 << 30;

impl Budget {
    /// The budget for a guest with `memory_mib` MiB of RAM. The initramfs gets at most half
    /// of it: Linux keeps the (compressed) archive in RAM while it unpacks it into a tmpfs
    /// that is at least as large, so a larger one cannot boot; and its copy in a memory file
    /// counts against the pod's memory limit next to the guest's own RAM until the kernel is
    /// loaded. Stock initramfs images are 10-80 MiB.
    pub fn for_guest_memory(memory_mib: u64) -> Budget {
        let half = memory_mib.saturating_mul(1 << 20) / 2;
        Budget {
            steps: 100_000,
            value_bytes: 64 << 10,
            total_bytes: 16 << 20,
            call_depth: 16,
            block_depth: 64,
            submenu_depth: 4,
            path_bytes: 4096,
            file_bytes: 512 << 10,
            read_bytes: 4 << 20,
            dir_entries: 4096,
            kernel_bytes: 128 << 20,
            initrd_bytes: half.min(INITRD_ABSOLUTE),
        }
    }
}

/// Bytes charged per token of parsed syntax and per stored value, on top of its text: the
/// heap blocks and headers a token, a word or a map entry takes.
pub(crate) const OVERHEAD: u64 = 64;

/// The work done so far against a [`Budget`]; shared (by reference) by everything one search
/// does.
pub struct Meter {
    budget: Budget,
    steps: Cell<u32>,
    bytes: Cell<u64>,
    read: Cell<u64>,
    /// What is being read, for messages: "grub.cfg" or "boot loader entries".
    source: Cell<&'static str>,
}

impl Meter {
    /// A fresh meter.
    pub fn new(budget: Budget) -> Meter {
        Meter {
            budget,
            steps: Cell::new(0),
            bytes: Cell::new(0),
            read: Cell::new(0),
            source: Cell::new("boot configuration"),
        }
    }

    /// The limits.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Names what is being read (for messages).
    pub fn reading(&self, source: &'static str) {
        self.source.set(source);
    }

    /// The one-line reason for stopping: the limit, the cause.
    pub fn over(&self, what: impl std::fmt::Display) -> String {
        format!(
            "the image's {} goes over berth's limit of {what} (Budget in imageboot/src/budget.rs; \
             a boot configuration this costly is broken or hostile)",
            self.source.get()
        )
    }

    /// One command run.
    pub fn step(&self) -> Result<(), String> {
        let n = self.steps.get() + 1;
        self.steps.set(n);
        if n > self.budget.steps {
            return Err(self.over(format_args!("{} commands run", self.budget.steps)));
        }
        Ok(())
    }

    /// `n` bytes made (values, arguments, syntax, paths).
    pub fn bytes(&self, n: u64) -> Result<(), String> {
        let t = self.bytes.get().saturating_add(n);
        self.bytes.set(t);
        if t > self.budget.total_bytes {
            return Err(self.over(format_args!(
                "{} bytes of values and arguments in total",
                self.budget.total_bytes
            )));
        }
        Ok(())
    }

    /// A value (variable or word) of `len` bytes: within the per-value limit?
    pub fn value(&self, len: usize) -> Result<(), String> {
        if len > self.budget.value_bytes {
            return Err(self.over(format_args!(
                "{} bytes for one value",
                self.budget.value_bytes
            )));
        }
        Ok(())
    }

    /// Before reading the configuration file `path` of `len` bytes: within the per-file and
    /// total limits? Charges it.
    pub fn read(&self, path: &str, len: u64) -> Result<(), String> {
        if len > self.budget.file_bytes {
            return Err(self.over(format_args!(
                "{} bytes per file ({path} is {len} bytes)",
                self.budget.file_bytes
            )));
        }
        let t = self.read.get().saturating_add(len);
        self.read.set(t);
        if t > self.budget.read_bytes {
            return Err(self.over(format_args!(
                "{} bytes of configuration files read in total",
                self.budget.read_bytes
            )));
        }
        self.bytes(len)
    }

    /// The work done so far: (steps, bytes made, bytes read).
    #[cfg(test)]
    pub fn used(&self) -> (u32, u64, u64) {
        (self.steps.get(), self.bytes.get(), self.read.get())
    }
}

impl Default for Budget {
    /// The budget for a guest of the pod's default size (512 MiB, IMG_RAM_MB's default).
    fn default() -> Self {
        Budget::for_guest_memory(512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_limit_is_half_the_guest_memory_up_to_2_gib() {
        assert_eq!(Budget::for_guest_memory(512).initrd_bytes, 256 << 20);
        assert_eq!(Budget::for_guest_memory(65).initrd_bytes, (65 << 20) / 2);
        assert_eq!(Budget::for_guest_memory(8192).initrd_bytes, 2 << 30);
        assert_eq!(Budget::for_guest_memory(u64::MAX).initrd_bytes, 2 << 30);
        assert_eq!(Budget::for_guest_memory(0).initrd_bytes, 0);
        // Nothing else depends on the memory.
        let (a, b) = (Budget::for_guest_memory(64), Budget::for_guest_memory(4096));
        assert_eq!(
            Budget {
                initrd_bytes: 0,
                ..a
            },
            Budget {
                initrd_bytes: 0,
                ..b
            }
        );
    }

    #[test]
    fn the_meter_counts_every_kind_of_work_across_calls() {
        let m = Meter::new(Budget {
            steps: 2,
            total_bytes: 100,
            read_bytes: 50,
            file_bytes: 40,
            ..Budget::default()
        });
        m.reading("grub.cfg");
        assert!(m.step().is_ok() && m.step().is_ok());
        assert!(m.step().unwrap_err().contains("2 commands run"));
        assert!(m
            .read("/a", 41)
            .unwrap_err()
            .contains("40 bytes per file (/a is 41 bytes)"));
        assert!(m.read("/a", 30).is_ok());
        let e = m.read("/b", 30).unwrap_err();
        assert!(
            e.contains("50 bytes of configuration files read in total"),
            "{e}"
        );
        // The read that was let in counts as bytes made too: 30 so far.
        assert!(m.bytes(70).is_ok());
        let e = m.bytes(1).unwrap_err();
        assert!(
            e.starts_with("the image's grub.cfg goes over berth's limit of 100 bytes"),
            "{e}"
        );
    }
}
