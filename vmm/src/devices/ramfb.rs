//! QEMU's `ramfb`: a display whose pixels are ordinary guest RAM, placed by the guest.
//!
//! Interface (QEMU's hw/display/ramfb.c, SeaBIOS's vgasrc/ramfb.c): berth offers the
//! writable fw_cfg file [`FILE`], 28 bytes, big-endian: u64 address, u32 DRM fourcc, u32
//! flags, u32 width, u32 height, u32 stride. The firmware allocates a framebuffer in RAM and
//! writes the file through fw_cfg DMA (select + write, the whole structure at once); from
//! then on the display shows guest RAM at that address. SeaBIOS's VGA option ROM
//! `vgabios-ramfb.bin`, which berth passes as fw_cfg file [`VGA_ROM_FILE`] (QEMU's name),
//! does this at 1024x768 XRGB8888 and draws the BIOS's and boot loaders' text mode (int 10h)
//! into it; OVMF's QemuRamfbDxe writes the file on every mode change.
//!
//! The configuration comes from the guest, so it is validated before berth reads a byte
//! there ([`RamfbConfig::validate`]): XRGB8888 only, 1x1 to [`MAX_WIDTH`]x[`MAX_HEIGHT`], a
//! stride of at least the width's bytes, a multiple of 4 and at most [`MAX_STRIDE`], and the
//! whole picture inside guest RAM (berth's guest memory holds no MMIO, so that excludes the
//! MMIO hole, the ROM and device memory). Anything else is ignored with a log line; the
//! display keeps what it showed.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::fw_cfg::WriteHook;
use crate::framebuffer::{Framebuffer, GuestView};

/// The fw_cfg file the guest writes its configuration to.
pub const FILE: &str = "etc/ramfb";
/// Where SeaBIOS looks for VGA option ROMs that belong to no PCI device (QEMU's name for
/// the ramfb ROM).
pub const VGA_ROM_FILE: &str = "vgaroms/vgabios-ramfb.bin";
/// The ROM's file name in Debian's `seabios` package (/usr/share/seabios).
pub const VGA_ROM_NAME: &str = "vgabios-ramfb.bin";
/// Size of the configuration.
pub const CONFIG_LEN: usize = 28;
/// DRM fourcc of 32-bit XRGB8888, little-endian pixels ('XR24'): the only format shown.
pub const FOURCC_XRGB8888: u32 = u32::from_le_bytes(*b"XR24");
/// Widest picture accepted.
pub const MAX_WIDTH: u32 = 4096;
/// Tallest picture accepted.
pub const MAX_HEIGHT: u32 = 4096;
/// Longest line stride accepted, in bytes (the widest line with room for padding).
pub const MAX_STRIDE: u32 = MAX_WIDTH * 4 * 4;
/// Log lines about configurations one VM gets; a guest rewriting the file in a loop must not
/// flood berth's log.
const MAX_LOG_LINES: u32 = 8;

const BYTES_PER_PIXEL: u32 = 4;

/// The configuration as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RamfbConfig {
    /// Guest-physical address of the first pixel.
    pub addr: u64,
    /// DRM fourcc of the pixel format.
    pub fourcc: u32,
    /// Unused (QEMU ignores it too).
    pub flags: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per line; 0 means `width * 4`, as in QEMU.
    pub stride: u32,
}

/// Why a configuration is not shown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RamfbError {
    /// Not [`CONFIG_LEN`] bytes (cannot happen through fw_cfg, which never resizes a file).
    #[error("the configuration is {0} bytes, not {CONFIG_LEN}")]
    Length(usize),
    /// A pixel format other than XRGB8888.
    #[error("pixel format {0} is not XR24 (XRGB8888), the only one berth shows")]
    Format(String),
    /// Zero or too large.
    #[error("{0}x{1} is not between 1x1 and {MAX_WIDTH}x{MAX_HEIGHT}")]
    Size(u32, u32),
    /// Shorter than a line of pixels, not a multiple of 4, or too long.
    #[error(
        "stride {stride} is not a multiple of 4 from {min} (the width's bytes) to {MAX_STRIDE}"
    )]
    Stride {
        /// What the guest gave.
        stride: u32,
        /// The width's bytes.
        min: u32,
    },
    /// Some of the picture is not guest RAM (or its end overflows).
    #[error("{len} bytes at {addr:#x} are not all guest RAM")]
    NotRam {
        /// Where the picture starts.
        addr: u64,
        /// Its length, from the first pixel to the last.
        len: u64,
    },
}

impl RamfbConfig {
    /// Decodes the file's bytes (big-endian fields).
    pub fn parse(bytes: &[u8]) -> Result<Self, RamfbError> {
        let b: &[u8; CONFIG_LEN] = bytes
            .try_into()
            .map_err(|_| RamfbError::Length(bytes.len()))?;
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(RamfbConfig {
            addr: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            fourcc: u32_at(8),
            flags: u32_at(12),
            width: u32_at(16),
            height: u32_at(20),
            stride: u32_at(24),
        })
    }

    /// Encodes it as the guest writes it.
    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&self.addr.to_be_bytes());
        for (i, v) in [
            self.fourcc,
            self.flags,
            self.width,
            self.height,
            self.stride,
        ]
        .into_iter()
        .enumerate()
        {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_be_bytes());
        }
        b
    }

    /// The picture to show, if this is one berth can show from `memory` (see the module's
    /// documentation for the rules).
    pub fn validate(&self, memory: &GuestMemoryMmap) -> Result<GuestView, RamfbError> {
        if self.fourcc != FOURCC_XRGB8888 {
            return Err(RamfbError::Format(fourcc_name(self.fourcc)));
        }
        if !(1..=MAX_WIDTH).contains(&self.width) || !(1..=MAX_HEIGHT).contains(&self.height) {
            return Err(RamfbError::Size(self.width, self.height));
        }
        let min = self.width * BYTES_PER_PIXEL;
        let stride = if self.stride == 0 { min } else { self.stride };
        if stride < min || stride > MAX_STRIDE || !stride.is_multiple_of(BYTES_PER_PIXEL) {
            return Err(RamfbError::Stride {
                stride: self.stride,
                min,
            });
        }
        // Bounded above (4095 * 64 KiB + 16 KiB), so no overflow in u64; the end may.
        let len = u64::from(stride) * u64::from(self.height - 1) + u64::from(min);
        let not_ram = RamfbError::NotRam {
            addr: self.addr,
            len,
        };
        if self.addr.checked_add(len).is_none()
            || !memory.check_range(GuestAddress(self.addr), len as usize)
        {
            return Err(not_ram);
        }
        Ok(GuestView {
            addr: self.addr,
            width: self.width,
            height: self.height,
            stride,
        })
    }
}

/// A fourcc as its four characters when they are printable, else in hex.
fn fourcc_name(f: u32) -> String {
    let b = f.to_le_bytes();
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        format!("'{}'", String::from_utf8_lossy(&b))
    } else {
        format!("{f:#010x}")
    }
}

/// What a configuration written by the guest did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `fb` shows this picture from now on.
    Shown(GuestView),
    /// Ignored; `fb` keeps what it showed.
    Ignored(RamfbError),
}

/// Applies the guest's configuration `bytes`: validated against `memory`, shown on `fb`.
pub fn apply(bytes: &[u8], memory: &GuestMemoryMmap, fb: &Framebuffer) -> Outcome {
    match RamfbConfig::parse(bytes).and_then(|c| c.validate(memory)) {
        Ok(view) => {
            fb.show_guest(memory.clone(), view);
            Outcome::Shown(view)
        }
        Err(e) => Outcome::Ignored(e),
    }
}

/// The fw_cfg write hook of [`FILE`]: applies each configuration the guest writes to `fb`,
/// with one log line each (at most 8 per VM, then one saying so).
pub fn write_hook(fb: Arc<Framebuffer>, memory: GuestMemoryMmap) -> WriteHook {
    let mut logged = 0u32;
    Box::new(move |bytes| {
        let line = match apply(bytes, &memory, &fb) {
            Outcome::Shown(v) => format!(
                "ramfb: the guest's display is {}x{} at {:#x} (stride {}); VNC shows it",
                v.width, v.height, v.addr, v.stride
            ),
            Outcome::Ignored(e) => format!("ramfb: ignoring the guest's configuration: {e}"),
        };
        if logged < MAX_LOG_LINES {
            eprintln!("berth: {line}");
        } else if logged == MAX_LOG_LINES {
            eprintln!("berth: ramfb: the guest keeps configuring its display; no more lines");
        }
        logged = logged.saturating_add(1);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framebuffer::FramebufferConfig;
    use vm_memory::Bytes;

    /// 64 MiB of RAM at 0, and 16 MiB above a hole at 4 GiB (berth's layout, smaller).
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 64 << 20),
            (GuestAddress(1 << 32), 16 << 20),
        ])
        .unwrap()
    }

    fn seabios() -> RamfbConfig {
        RamfbConfig {
            addr: 0x0100_0000,
            fourcc: FOURCC_XRGB8888,
            flags: 0,
            width: 1024,
            height: 768,
            stride: 4096,
        }
    }

    #[test]
    fn parses_big_endian_and_round_trips() {
        let mut b = [0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&0x7f00_0000u64.to_be_bytes());
        b[8..12].copy_from_slice(b"42RX"); // 'XR24' as a big-endian u32
        b[16..20].copy_from_slice(&1024u32.to_be_bytes());
        b[20..24].copy_from_slice(&768u32.to_be_bytes());
        b[24..28].copy_from_slice(&4096u32.to_be_bytes());
        let c = RamfbConfig::parse(&b).unwrap();
        assert_eq!(
            c,
            RamfbConfig {
                addr: 0x7f00_0000,
                ..seabios()
            }
        );
        assert_eq!(c.to_bytes(), b);
        assert_eq!(RamfbConfig::parse(&b[..27]), Err(RamfbError::Length(27)));
        assert_eq!(
            RamfbConfig::parse(&[0; 29]).unwrap_err(),
            RamfbError::Length(29)
        );
    }

    #[test]
    fn accepts_what_seabios_writes_and_stride_zero() {
        let m = memory();
        assert_eq!(
            seabios().validate(&m),
            Ok(GuestView {
                addr: 0x0100_0000,
                width: 1024,
                height: 768,
                stride: 4096
            })
        );
        let c = RamfbConfig {
            stride: 0,
            width: 800,
            height: 600,
            ..seabios()
        };
        assert_eq!(c.validate(&m).unwrap().stride, 3200);
        // The last byte of RAM below the hole is the picture's last byte.
        let c = RamfbConfig {
            addr: (64 << 20) - 4096 * 768,
            ..seabios()
        };
        assert!(c.validate(&m).is_ok());
        // A picture entirely above 4 GiB is fine too.
        let c = RamfbConfig {
            addr: 1 << 32,
            ..seabios()
        };
        assert!(c.validate(&m).is_ok());
    }

    #[test]
    fn refuses_hostile_configurations() {
        let m = memory();
        let bad = |c: RamfbConfig| c.validate(&m).unwrap_err();
        // Formats.
        for f in [
            0,
            u32::from_le_bytes(*b"AR24"),
            u32::from_le_bytes(*b"RG16"),
        ] {
            assert!(matches!(
                bad(RamfbConfig {
                    fourcc: f,
                    ..seabios()
                }),
                RamfbError::Format(_)
            ));
        }
        assert_eq!(
            bad(RamfbConfig {
                fourcc: u32::from_le_bytes(*b"RG16"),
                ..seabios()
            })
            .to_string(),
            "pixel format 'RG16' is not XR24 (XRGB8888), the only one berth shows"
        );
        // Sizes: zero, one past the limit, huge.
        for (w, h) in [
            (0, 768),
            (1024, 0),
            (4097, 16),
            (16, 4097),
            (u32::MAX, u32::MAX),
        ] {
            assert_eq!(
                bad(RamfbConfig {
                    width: w,
                    height: h,
                    stride: 0,
                    ..seabios()
                }),
                RamfbError::Size(w, h),
                "{w}x{h}"
            );
        }
        // Strides: shorter than a line, odd, not a multiple of 4, huge.
        for s in [4092, 4097, 4098, 4099, MAX_STRIDE + 4, u32::MAX] {
            assert_eq!(
                bad(RamfbConfig {
                    stride: s,
                    ..seabios()
                }),
                RamfbError::Stride {
                    stride: s,
                    min: 4096
                },
                "stride {s}"
            );
        }
        // Addresses: past RAM, straddling its end, in the hole between the two regions,
        // straddling the hole, wrapping around, the very top.
        for addr in [
            64 << 20,
            (64 << 20) - 4096 * 767,
            0xe000_0000,
            (1 << 32) - 4096,
            (1 << 32) + (16 << 20) - 4096,
            u64::MAX - 4096,
            u64::MAX,
        ] {
            assert!(
                matches!(
                    bad(RamfbConfig { addr, ..seabios() }),
                    RamfbError::NotRam { .. }
                ),
                "{addr:#x}"
            );
        }
        // The largest picture with the largest stride: its length is computed without
        // overflow and is refused for not fitting in 80 MiB of RAM.
        let c = RamfbConfig {
            width: MAX_WIDTH,
            height: MAX_HEIGHT,
            stride: MAX_STRIDE,
            addr: 0,
            ..seabios()
        };
        assert_eq!(
            bad(c),
            RamfbError::NotRam {
                addr: 0,
                len: u64::from(MAX_STRIDE) * 4095 + 16384
            }
        );
    }

    #[test]
    fn the_framebuffer_follows_each_configuration() {
        let m = memory();
        // One page per line, so dirty pages name single lines.
        let fb = Framebuffer::new(FramebufferConfig {
            width: 1024,
            height: 32,
        })
        .unwrap();
        // The guest's picture: 32x16 at 0x10000 with a 256-byte stride; pixel (x, y) = y<<8|x.
        for y in 0..16u32 {
            let line: Vec<u8> = (0..32u32)
                .flat_map(|x| (y << 8 | x).to_le_bytes())
                .collect();
            m.write_slice(&line, GuestAddress(0x10000 + u64::from(y) * 256))
                .unwrap();
        }
        let first = RamfbConfig {
            addr: 0x10000,
            width: 32,
            height: 16,
            stride: 256,
            ..seabios()
        };
        assert!(matches!(
            apply(&first.to_bytes(), &m, &fb),
            Outcome::Shown(_)
        ));
        let lines = fb.take_dirty_lines();
        assert_eq!(lines, vec![(0, 32)], "the whole screen after a new view");
        let px = |x: usize, y: usize| {
            let mut b = [0u8; 4];
            fb.read(y * 4096 + x * 4, &mut b);
            u32::from_le_bytes(b)
        };
        assert_eq!(px(5, 7), 7 << 8 | 5);
        assert_eq!(px(31, 15), 15 << 8 | 31);
        assert_eq!(px(32, 0), 0, "right of the picture: black");
        assert_eq!(px(0, 16), 0, "below the picture: black");
        // Nothing changed: nothing dirty. One guest pixel changes: its line only.
        assert!(fb.take_dirty_lines().is_empty());
        m.write_slice(
            &0xabcdefu32.to_le_bytes(),
            GuestAddress(0x10000 + 9 * 256 + 12),
        )
        .unwrap();
        assert_eq!(fb.take_dirty_lines(), vec![(9, 10)]);
        assert_eq!(px(3, 9), 0xabcdef);
        // A hostile rewrite is ignored: the old view stays.
        let huge = RamfbConfig {
            width: 100_000,
            ..first
        };
        assert_eq!(
            apply(&huge.to_bytes(), &m, &fb),
            Outcome::Ignored(RamfbError::Size(100_000, 16))
        );
        assert_eq!(fb.guest_view().unwrap().addr, 0x10000);
        // A new resolution and address, larger than the screen: cut at its edges.
        let second = RamfbConfig {
            addr: 0x20_0000,
            width: 2000,
            height: 50,
            stride: 0,
            ..seabios()
        };
        m.write_slice(&[0x11; 8000 * 50], GuestAddress(0x20_0000))
            .unwrap();
        assert!(matches!(
            apply(&second.to_bytes(), &m, &fb),
            Outcome::Shown(_)
        ));
        assert_eq!(fb.take_dirty_lines(), vec![(0, 32)]);
        assert_eq!((px(0, 0), px(1023, 31)), (0x1111_1111, 0x1111_1111));
        // The VM is gone: black again, and guest memory is no longer read.
        fb.show_nothing();
        assert_eq!(fb.guest_view(), None);
        assert_eq!(fb.take_dirty_lines(), vec![(0, 32)]);
        assert_eq!(px(10, 10), 0);
        m.write_slice(&[0x22; 400], GuestAddress(0x20_0000))
            .unwrap();
        assert!(fb.take_dirty_lines().is_empty());
    }
}
