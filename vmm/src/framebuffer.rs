//! The guest's linear framebuffer: 32-bpp XRGB8888 pixels in host memory that is mapped into
//! the guest's 32-bit MMIO hole as its own KVM memory slot with dirty-page logging, so the
//! VNC server learns which lines changed from KVM instead of comparing frames.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vm_memory::volatile_memory::{VolatileMemory, VolatileSlice};

use crate::arch::boot::LinearFramebuffer;
use crate::arch::layout;

/// Guest-physical base: above ECAM, below the IOAPIC, outside the PCI BAR window.
pub const FRAMEBUFFER_BASE: u64 = 0xe100_0000;
/// The framebuffer may grow up to here (the reserved top of the MMIO hole).
pub const FRAMEBUFFER_END: u64 = layout::SYSTEM_RESERVED_START;
/// KVM memory slot of the framebuffer, far above the RAM slots.
pub const FRAMEBUFFER_SLOT: u32 = 100;
/// Largest width or height accepted.
pub const MAX_DIMENSION: u32 = 8192;

const PAGE: usize = 4096;
const BYTES_PER_PIXEL: usize = 4;

/// Size of the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramebufferConfig {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Default for FramebufferConfig {
    fn default() -> Self {
        FramebufferConfig {
            width: 1024,
            height: 768,
        }
    }
}

impl FramebufferConfig {
    /// Bytes the framebuffer needs, rounded up to whole pages, if the size is acceptable.
    pub fn size(&self) -> Option<usize> {
        let ok = (16..=MAX_DIMENSION).contains(&self.width)
            && (16..=MAX_DIMENSION).contains(&self.height);
        let bytes = self.width as usize * self.height as usize * BYTES_PER_PIXEL;
        let size = bytes.div_ceil(PAGE) * PAGE;
        (ok && FRAMEBUFFER_BASE + size as u64 <= FRAMEBUFFER_END).then_some(size)
    }
}

/// Where dirty pages come from besides host writes.
struct KvmLog {
    fd: Arc<VmFd>,
    slot: u32,
}

/// The framebuffer memory and its dirty tracking.
pub struct Framebuffer {
    ptr: NonNull<u8>,
    len: usize,
    config: FramebufferConfig,
    /// The VM it is mapped into; a VM rebuilt on reboot maps the same framebuffer again.
    kvm: Mutex<Option<KvmLog>>,
    /// Pages written by the host (tests, the VMM), one bit per page as in KVM's log.
    host_dirty: Mutex<Vec<u64>>,
}

// SAFETY: the mapping is owned by the Framebuffer and only accessed through volatile copies;
// concurrent writers (the guest) are expected.
unsafe impl Send for Framebuffer {}
// SAFETY: as above; the only mutable host state is behind a Mutex.
unsafe impl Sync for Framebuffer {}

impl Framebuffer {
    /// Allocates a zeroed framebuffer that is not (yet) mapped into a VM.
    pub fn new(config: FramebufferConfig) -> std::io::Result<Self> {
        let len = config.size().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "framebuffer {}x{} is out of range (16..={MAX_DIMENSION} each, at most {} MiB)",
                    config.width,
                    config.height,
                    (FRAMEBUFFER_END - FRAMEBUFFER_BASE) >> 20
                ),
            )
        })?;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let pages = len / PAGE;
        Ok(Framebuffer {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL"),
            len,
            config,
            kvm: Mutex::new(None),
            host_dirty: Mutex::new(vec![0; pages.div_ceil(64)]),
        })
    }

    /// Maps the framebuffer into `fd` at [`FRAMEBUFFER_BASE`] with dirty-page logging; the
    /// dirty log is read from that VM from now on.
    ///
    /// # Safety
    /// The VM must not run after this Framebuffer is dropped (KVM keeps the host address).
    pub unsafe fn attach(&self, fd: Arc<VmFd>) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: FRAMEBUFFER_SLOT,
            flags: kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: FRAMEBUFFER_BASE,
            memory_size: self.len as u64,
            userspace_addr: self.ptr.as_ptr() as u64,
        };
        // SAFETY: the mapping lives as long as self; the caller keeps the VM from outliving it.
        unsafe { fd.set_user_memory_region(region) }?;
        *self.kvm.lock().expect("kvm lock poisoned") = Some(KvmLog {
            fd,
            slot: FRAMEBUFFER_SLOT,
        });
        Ok(())
    }

    /// Width and height.
    pub fn config(&self) -> FramebufferConfig {
        self.config
    }

    /// Bytes per line.
    pub fn stride(&self) -> usize {
        self.config.width as usize * BYTES_PER_PIXEL
    }

    /// The description the kernel gets in `screen_info`.
    pub fn linear(&self) -> LinearFramebuffer {
        LinearFramebuffer {
            base: FRAMEBUFFER_BASE,
            size: self.len as u64,
            width: self.config.width as u16,
            height: self.config.height as u16,
            stride: self.stride() as u16,
        }
    }

    fn slice(&self) -> VolatileSlice<'_> {
        // SAFETY: ptr..ptr+len is our live mapping.
        unsafe { VolatileSlice::new(self.ptr.as_ptr(), self.len) }
    }

    /// Copies `buf.len()` bytes starting at byte `offset` out of the framebuffer.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let all = self.slice();
        if let Ok(s) = all.get_slice(offset, buf.len()) {
            s.copy_to(buf);
        }
    }

    /// Writes `data` at byte `offset` (host side) and marks the pages dirty.
    pub fn write(&self, offset: usize, data: &[u8]) {
        let all = self.slice();
        let Ok(s) = all.get_slice(offset, data.len()) else {
            return;
        };
        s.copy_from(data);
        if data.is_empty() {
            return;
        }
        let mut bits = self.host_dirty.lock().expect("dirty lock poisoned");
        for page in offset / PAGE..=(offset + data.len() - 1) / PAGE {
            bits[page / 64] |= 1 << (page % 64);
        }
    }

    /// Takes the pages written since the last call (by the guest, through KVM's dirty log,
    /// and by the host) and returns the framebuffer lines they touch, as merged
    /// `[first, end)` ranges.
    pub fn take_dirty_lines(&self) -> Vec<(u32, u32)> {
        let mut bits = std::mem::replace(
            &mut *self.host_dirty.lock().expect("dirty lock poisoned"),
            vec![0; (self.len / PAGE).div_ceil(64)],
        );
        if let Some(k) = &*self.kvm.lock().expect("kvm lock poisoned") {
            match k.fd.get_dirty_log(k.slot, self.len) {
                Ok(log) => bits.iter_mut().zip(log).for_each(|(b, l)| *b |= l),
                // Without a log nothing can be trusted to be clean.
                Err(_) => bits.fill(u64::MAX),
            }
        }
        pages_to_lines(&bits, self.len / PAGE, self.stride(), self.config.height)
    }
}

impl Drop for Framebuffer {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer referenced.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Converts a page bitmap into merged line ranges.
fn pages_to_lines(bits: &[u64], pages: usize, stride: usize, height: u32) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for page in (0..pages).filter(|p| bits[p / 64] & (1 << (p % 64)) != 0) {
        let first = (page * PAGE / stride) as u32;
        let end = (((page + 1) * PAGE).div_ceil(stride) as u32).min(height);
        if first >= end {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 >= first => last.1 = last.1.max(end),
            _ => out.push((first, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(FramebufferConfig::default().size(), Some(3 << 20));
        let c = FramebufferConfig {
            width: 3840,
            height: 2160,
        };
        assert_eq!(c.size(), Some(3840 * 2160 * 4));
        let c = FramebufferConfig {
            width: MAX_DIMENSION + 1,
            height: 768,
        };
        assert_eq!(c.size(), None);
        assert_eq!(
            FramebufferConfig {
                width: 8,
                height: 8
            }
            .size(),
            None
        );
    }

    #[test]
    fn host_writes_mark_lines() {
        let fb = Framebuffer::new(FramebufferConfig::default()).unwrap();
        assert!(fb.take_dirty_lines().is_empty());
        fb.write(4096 * 10 + 8, &[1, 2, 3, 4]); // line 10 (one page = one line here)
        fb.write(4096 * 11, &[5; 4096 * 2]); // lines 11 and 12
        fb.write(4096 * 700, &[6]);
        assert_eq!(fb.take_dirty_lines(), vec![(10, 13), (700, 701)]);
        assert!(fb.take_dirty_lines().is_empty());
        let mut b = [0u8; 4];
        fb.read(4096 * 10 + 8, &mut b);
        assert_eq!(b, [1, 2, 3, 4]);
    }

    #[test]
    fn page_to_line_mapping_with_odd_stride() {
        // 800 px = 3200 bytes per line: page 1 (4096..8192) covers lines 1 and 2.
        let bits = vec![0b10u64];
        assert_eq!(pages_to_lines(&bits, 2, 3200, 600), vec![(1, 3)]);
        // The last page is clipped at the height.
        let bits = vec![1u64 << 2];
        assert_eq!(pages_to_lines(&bits, 3, 4096, 2), Vec::<(u32, u32)>::new());
    }
}
