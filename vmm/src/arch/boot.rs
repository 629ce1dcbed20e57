//! Linux boot: load a bzImage or an uncompressed ELF vmlinux, an initrd and a command line, and
//! build the zero page (`boot_params`) the kernel reads at its 64-bit entry point.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{self, E820Entry};

/// "HdrS": magic of the Linux x86 boot protocol header.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature in the setup header.
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` value for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags bit: the protected-mode kernel is loaded at 1 MiB or above.
const LOADED_HIGH: u8 = 0x01;
/// loadflags bit: the loader may use the heap up to `heap_end_ptr`.
const CAN_USE_HEAP: u8 = 0x80;
/// Kernel alignment Linux expects when the header does not state one (CONFIG_PHYSICAL_ALIGN).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Highest initrd address a kernel without an `initrd_addr_max` field accepts.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Entry offset of the 64-bit boot protocol within a loaded bzImage payload.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 0x1;

/// What was wrong with a kernel, initrd or command line.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A boot file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel file is neither a bzImage nor an ELF vmlinux.
    #[error("{0} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")]
    NotAKernel(PathBuf),
    /// The bzImage cannot be entered in 64-bit mode.
    #[error("{0} is a bzImage without a 64-bit entry point (boot protocol 2.12+ needed)")]
    No64BitEntry(PathBuf),
    /// linux-loader refused the image.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        source: loader::Error,
    },
    /// The initrd does not fit in guest memory below the kernel's limit.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory; give the VM more memory")]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong {
        /// Length given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The command line holds a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Writing into guest memory failed (the image does not fit).
    #[error("kernel image does not fit in guest memory; give the VM more memory")]
    GuestMemory,
}

/// The files and arguments of a Linux boot.
#[derive(Clone, Debug, Default)]
pub struct LinuxBoot {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// The kernel image formats berth boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A compressed bzImage, entered at its 64-bit entry point.
    BzImage,
    /// An uncompressed ELF vmlinux, entered at its ELF entry point.
    Elf,
}

/// Where the kernel went and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// 64-bit entry point (guest-physical).
    pub entry: GuestAddress,
    /// The image format found.
    pub format: KernelFormat,
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |source| BootError::Read {
        path: path.to_owned(),
        source,
    }
}

/// Tells a bzImage from an ELF vmlinux by their magic numbers.
pub fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0)).map_err(read_err(path))?;
    let n = read_up_to(file, &mut head).map_err(read_err(path))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if n >= 0x206 && u32::from_le_bytes(head[0x202..0x206].try_into().unwrap()) == HDRS_MAGIC {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel(path.to_owned()))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Opens a kernel or initrd. berth names the files it extracts from an image (unnamed files
/// it holds open) as `/proc/self/fd/N`; those are duplicated rather than opened again, because
/// after berth switches to an unprivileged uid the process is no longer dumpable and its own
/// `/proc/self/fd` can no longer be opened. The duplicate shares the file position, so it is
/// rewound: every boot reads the file from the start.
fn open_boot_file(path: &Path) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    let fd = path
        .to_str()
        .and_then(|p| p.strip_prefix("/proc/self/fd/"))
        .and_then(|n| n.parse::<i32>().ok());
    let Some(fd) = fd else {
        return File::open(path);
    };
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor number returns a new descriptor or -1; a number
    // that is not open fails with EBADF.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: dup is a new descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(dup) };
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Loads the kernel, initrd and command line into `mem` and writes the zero page, which points
/// at the ACPI RSDP when there is one.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    boot: &LinuxBoot,
    acpi_rsdp: Option<u64>,
) -> Result<LoadedKernel, BootError> {
    let path = boot.kernel.as_path();
    let mut file = open_boot_file(path).map_err(read_err(path))?;
    let format = detect_format(&mut file, path)?;
    let load_err = |source| BootError::Load {
        path: path.to_owned(),
        source,
    };
    let highmem = Some(GuestAddress(layout::HIMEM_START));
    let (entry, hdr) = match format {
        KernelFormat::BzImage => {
            let r =
                loader::bzimage::BzImage::load(mem, None, &mut file, highmem).map_err(load_err)?;
            let hdr = r
                .setup_header
                .expect("bzImage loader returns a setup header");
            if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry(path.to_owned()));
            }
            (r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET), hdr)
        }
        KernelFormat::Elf => {
            let r = loader::elf::Elf::load(mem, None, &mut file, highmem).map_err(load_err)?;
            (r.kernel_load, synthetic_setup_header())
        }
    };

    let cmdline_limit = effective_cmdline_limit(&hdr);
    let cmdline = boot.cmdline.as_bytes();
    if cmdline.contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() >= cmdline_limit {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: cmdline_limit - 1,
        });
    }
    let mut cmd = cmdline.to_vec();
    cmd.push(0);
    mem.write_slice(&cmd, GuestAddress(layout::CMDLINE_START))
        .map_err(|_| BootError::GuestMemory)?;

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmd.len() as u32;

    if let Some(initrd) = &boot.initrd {
        let (addr, size) = load_initrd(mem, initrd, &hdr)?;
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let mem_size: u64 = mem.iter().map(vm_memory::GuestMemoryRegion::len).sum();
    fill_e820(&mut params, &layout::e820_map(mem_size));
    params.acpi_rsdp_addr = acpi_rsdp.unwrap_or(0);

    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(|_| BootError::GuestMemory)?;
    write_reset_stub(mem)?;
    Ok(LoadedKernel { entry, format })
}

/// Real-mode code at the reset vector: pulse the i8042 reset line, as PC firmware does when
/// it is entered by a warm restart. Linux jumps here when it reboots through the "BIOS"
/// (its default on hardware-reduced ACPI without EFI runtime services); without it the CPU
/// would run whatever bytes are there and the VM would hang instead of resetting.
pub const RESET_STUB: [u8; 7] = [
    0xb0, 0xfe, // mov al, 0xfe
    0xe6, 0x64, // out 0x64, al
    0xf4, // hlt
    0xeb, 0xfd, // jmp back to hlt
];

/// Writes [`RESET_STUB`] at the reset vector.
pub fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&RESET_STUB, GuestAddress(layout::RESET_VECTOR))
        .map_err(|_| BootError::GuestMemory)
}

/// The setup header a bootloader fills for a kernel that has none (ELF vmlinux).
fn synthetic_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        version: 0x020f,
        kernel_alignment: DEFAULT_KERNEL_ALIGNMENT,
        cmdline_size: layout::CMDLINE_MAX_SIZE as u32,
        initrd_addr_max: DEFAULT_INITRD_ADDR_MAX as u32,
        ..Default::default()
    }
}

/// Length limit of the command line including its NUL: the header's `cmdline_size` (boot
/// protocol 2.06+), capped by the space berth reserves for it.
fn effective_cmdline_limit(hdr: &setup_header) -> usize {
    let from_hdr = if hdr.version >= 0x0206 && hdr.cmdline_size > 0 {
        hdr.cmdline_size as usize + 1
    } else {
        256
    };
    from_hdr.min(layout::CMDLINE_MAX_SIZE)
}

/// Places the initrd page-aligned at the top of low memory, below the kernel's
/// `initrd_addr_max`, as boot loaders do.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    hdr: &setup_header,
) -> Result<(GuestAddress, u64), BootError> {
    let mut file = open_boot_file(path).map_err(read_err(path))?;
    let size = file.metadata().map_err(read_err(path))?.len();
    let mem_size: u64 = mem.iter().map(vm_memory::GuestMemoryRegion::len).sum();
    let addr = initrd_address(mem_size, size, hdr).ok_or_else(|| BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|_| BootError::InitrdTooLarge {
            path: path.to_owned(),
            size,
        })?;
    Ok((GuestAddress(addr), size))
}

/// The initrd's load address, or `None` if it does not fit above the kernel area.
pub fn initrd_address(mem_size: u64, initrd_size: u64, hdr: &setup_header) -> Option<u64> {
    let addr_max = if hdr.initrd_addr_max != 0 {
        u64::from(hdr.initrd_addr_max)
    } else {
        DEFAULT_INITRD_ADDR_MAX
    };
    let top = mem_size.min(layout::MMIO_HOLE_START).min(addr_max + 1);
    let addr = top.checked_sub(initrd_size)? & !0xfff;
    // Leave the kernel's own area (from 1 MiB, where it decompresses) alone.
    (addr >= layout::HIMEM_START + (16 << 20)).then_some(addr)
}

/// `screen_info.orig_video_isVGA` for a firmware (EFI GOP) linear framebuffer, which Linux's
/// sysfb hands to efifb.
pub const VIDEO_TYPE_EFI: u8 = 0x70;
/// `screen_info.capabilities` bit: `ext_lfb_base` holds the upper 32 bits of the base.
const VIDEO_CAPABILITY_64BIT_BASE: u32 = 1 << 1;

/// A linear 32-bpp XRGB8888 framebuffer the kernel should use as its boot console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearFramebuffer {
    /// Guest-physical base address.
    pub base: u64,
    /// Size of the region in bytes.
    pub size: u64,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Bytes per line.
    pub stride: u16,
}

/// Describes `fb` in the zero page's `screen_info` (after [`load_linux`] wrote it), as EFI
/// firmware would: Linux's sysfb then registers an efifb device for it and fbcon takes it.
pub fn write_screen_info(mem: &GuestMemoryMmap, fb: &LinearFramebuffer) -> Result<(), BootError> {
    let at = GuestAddress(layout::ZERO_PAGE_START);
    let mut params: boot_params = mem.read_obj(at).map_err(|_| BootError::GuestMemory)?;
    let si = &mut params.screen_info;
    si.orig_video_isVGA = VIDEO_TYPE_EFI;
    si.lfb_width = fb.width;
    si.lfb_height = fb.height;
    si.lfb_depth = 32;
    si.lfb_linelength = fb.stride;
    si.lfb_base = fb.base as u32;
    si.ext_lfb_base = (fb.base >> 32) as u32;
    if si.ext_lfb_base != 0 {
        si.capabilities |= VIDEO_CAPABILITY_64BIT_BASE;
    }
    // For EFI framebuffers lfb_size is in bytes (VESA uses 64 KiB units).
    si.lfb_size = fb.size.min(u64::from(u32::MAX)) as u32;
    (si.red_size, si.red_pos) = (8, 16);
    (si.green_size, si.green_pos) = (8, 8);
    (si.blue_size, si.blue_pos) = (8, 0);
    (si.rsvd_size, si.rsvd_pos) = (8, 24);
    mem.write_obj(params, at)
        .map_err(|_| BootError::GuestMemory)
}

fn fill_e820(params: &mut boot_params, map: &[E820Entry]) {
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    fn guest(mem: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&layout::ram_regions(mem)).unwrap()
    }

    /// A minimal bzImage: a setup sector with a valid header followed by a payload.
    fn fake_bzimage(dir: &Path, version: u16, xloadflags: u16) -> PathBuf {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x211] = LOADED_HIGH; // loadflags
        img[0x214..0x218].copy_from_slice(&(HIMEM_START_U32).to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        img.extend_from_slice(&[0x90; 4096]);
        let p = dir.join("bzImage");
        std::fs::write(&p, img).unwrap();
        p
    }
    const HIMEM_START_U32: u32 = layout::HIMEM_START as u32;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "berth-boot-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn bzimage_zero_page_is_complete() {
        let dir = tempdir();
        let kernel = fake_bzimage(&dir, 0x020f, XLF_KERNEL_64);
        let initrd = dir.join("initrd");
        std::fs::File::create(&initrd)
            .unwrap()
            .write_all(&[0xab; 10000])
            .unwrap();
        let mem = guest(256 * MIB);
        let boot = LinuxBoot {
            kernel,
            initrd: Some(initrd),
            cmdline: "console=ttyS0 quiet".into(),
        };
        let k = load_linux(&mem, &boot, Some(0xe0000)).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.entry, GuestAddress(layout::HIMEM_START + 0x200));

        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!(p.hdr.type_of_loader, LOADER_TYPE_UNDEFINED);
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
        let mut cmd = [0u8; 20];
        mem.read_slice(&mut cmd, GuestAddress(layout::CMDLINE_START))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0 quiet\0");

        let (rd, rs) = ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size });
        assert_eq!(rs, 10000);
        assert_eq!(rd % 4096, 0);
        assert!(u64::from(rd) + u64::from(rs) <= 256 * MIB);
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(u64::from(rd) + 9999))
            .unwrap();
        assert_eq!(b[0], 0xab);

        let map = layout::e820_map(256 * MIB);
        assert_eq!(p.e820_entries as usize, map.len());
        for (slot, e) in p.e820_table.iter().zip(&map) {
            assert_eq!(
                ({ slot.addr }, { slot.size }, { slot.r#type }),
                (e.addr, e.size, e.kind as u32)
            );
        }
    }

    #[test]
    fn rejects_old_bzimage_and_junk() {
        let dir = tempdir();
        let mem = guest(64 * MIB);
        let old = fake_bzimage(&dir, 0x0206, 0);
        let err = load_linux(
            &mem,
            &LinuxBoot {
                kernel: old,
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        assert!(matches!(err, BootError::No64BitEntry(_)), "{err}");

        let junk = dir.join("junk");
        std::fs::write(&junk, b"#!/bin/sh\necho not a kernel\n").unwrap();
        let err = load_linux(
            &mem,
            &LinuxBoot {
                kernel: junk,
                ..Default::default()
            },
            None,
        )
        .unwrap_err();
        assert!(matches!(err, BootError::NotAKernel(_)), "{err}");
    }

    #[test]
    fn cmdline_limits() {
        let dir = tempdir();
        let kernel = fake_bzimage(&dir, 0x020f, XLF_KERNEL_64);
        let mem = guest(64 * MIB);
        let long = "x".repeat(3000);
        let err = load_linux(
            &mem,
            &LinuxBoot {
                kernel: kernel.clone(),
                initrd: None,
                cmdline: long,
            },
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, BootError::CmdlineTooLong { max: 2047, .. }),
            "{err}"
        );
        let err = load_linux(
            &mem,
            &LinuxBoot {
                kernel,
                initrd: None,
                cmdline: "a\0b".into(),
            },
            None,
        )
        .unwrap_err();
        assert!(matches!(err, BootError::CmdlineNul));
    }

    #[test]
    fn initrd_placement() {
        let hdr = synthetic_setup_header();
        // Top of low memory, page aligned.
        let a = initrd_address(256 * MIB, 5000, &hdr).unwrap();
        assert_eq!(a, (256 * MIB - 5000) & !0xfff);
        // Capped by initrd_addr_max for large guests.
        let a = initrd_address(8 << 30, 4096, &hdr).unwrap();
        assert!(a + 4096 <= DEFAULT_INITRD_ADDR_MAX + 1);
        // Does not fit.
        assert_eq!(initrd_address(32 * MIB, 30 * MIB, &hdr), None);
    }

    #[test]
    fn screen_info_describes_the_framebuffer() {
        let mem = guest(64 * MIB);
        let fb = LinearFramebuffer {
            base: 0xe100_0000,
            size: 3 * MIB,
            width: 1024,
            height: 768,
            stride: 4096,
        };
        write_screen_info(&mem, &fb).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let si = p.screen_info;
        assert_eq!(si.orig_video_isVGA, VIDEO_TYPE_EFI);
        assert_eq!(({ si.lfb_base }, { si.ext_lfb_base }), (0xe100_0000, 0));
        assert_eq!({ si.capabilities } & VIDEO_CAPABILITY_64BIT_BASE, 0);
        assert_eq!(({ si.lfb_width }, { si.lfb_height }), (1024, 768));
        assert_eq!(({ si.lfb_depth }, { si.lfb_linelength }), (32, 4096));
        assert_eq!({ si.lfb_size }, 3 << 20);
        assert_eq!((si.red_pos, si.green_pos, si.blue_pos), (16, 8, 0));
    }

    #[test]
    fn elf_header_is_synthesised() {
        let h = synthetic_setup_header();
        assert_eq!({ h.header }, HDRS_MAGIC);
        assert_eq!({ h.boot_flag }, BOOT_FLAG);
        assert!(effective_cmdline_limit(&h) <= layout::CMDLINE_MAX_SIZE);
    }
}
