//! Pixel formats and the rectangle encodings the server sends: Raw, zlib and ZRLE.

use std::io;

use flate2::{Compress, Compression, FlushCompress};

use crate::framebuffer::Framebuffer;

/// RFB encoding numbers.
pub const ENCODING_RAW: i32 = 0;
/// The "zlib" encoding: raw pixels through one zlib stream per client.
pub const ENCODING_ZLIB: i32 = 6;
/// ZRLE: 64x64 tiles, raw or solid, through one zlib stream per client.
pub const ENCODING_ZRLE: i32 = 16;

const ZRLE_TILE: u32 = 64;

/// An RFB PIXEL_FORMAT (true colour only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelFormat {
    /// Bits per pixel: 8, 16 or 32.
    pub bpp: u8,
    /// Significant bits.
    pub depth: u8,
    /// Multi-byte pixels are big-endian.
    pub big_endian: bool,
    /// Maximum red value.
    pub red_max: u16,
    /// Maximum green value.
    pub green_max: u16,
    /// Maximum blue value.
    pub blue_max: u16,
    /// Red shift.
    pub red_shift: u8,
    /// Green shift.
    pub green_shift: u8,
    /// Blue shift.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// The framebuffer's own format: 32-bpp XRGB8888, little-endian.
    pub const XRGB8888: PixelFormat = PixelFormat {
        bpp: 32,
        depth: 24,
        big_endian: false,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// The 16-byte wire form.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bpp;
        b[1] = self.depth;
        b[2] = self.big_endian.into();
        b[3] = 1; // true colour
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// Parses the wire form; `None` for formats the server cannot produce (colour maps,
    /// odd sizes, shifts outside the pixel).
    pub fn from_bytes(b: &[u8; 16]) -> Option<Self> {
        let f = PixelFormat {
            bpp: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        };
        let shifts_ok = [f.red_shift, f.green_shift, f.blue_shift]
            .iter()
            .all(|&s| s < f.bpp);
        (b[3] != 0 && matches!(f.bpp, 8 | 16 | 32) && shifts_ok).then_some(f)
    }

    /// Bytes per pixel.
    pub fn bytes(&self) -> usize {
        usize::from(self.bpp / 8)
    }
}

/// Converts XRGB8888 pixels into a client's pixel format through per-channel tables.
pub struct Converter {
    format: PixelFormat,
    red: [u32; 256],
    green: [u32; 256],
    blue: [u32; 256],
    /// Bits of a 32-bit pixel no channel uses that are sent as ones (see
    /// [`Converter::padding_ones`]); 0 otherwise.
    unused: u32,
}

impl Converter {
    /// A converter to `format`.
    pub fn new(format: PixelFormat) -> Self {
        let table = |max: u16, shift: u8| {
            let mut t = [0u32; 256];
            for (v, slot) in t.iter_mut().enumerate() {
                let scaled = (v as u32 * u32::from(max) + 127) / 255;
                *slot = scaled.wrapping_shl(u32::from(shift));
            }
            t
        };
        Converter {
            format,
            unused: 0,
            red: table(format.red_max, format.red_shift),
            green: table(format.green_max, format.green_shift),
            blue: table(format.blue_max, format.blue_shift),
        }
    }

    /// The same converter, sending the bits of a 32-bit pixel that no channel uses as ones
    /// instead of zeros. Clients must ignore them, but noVNC 1.3 (Debian 12's) takes the
    /// padding byte of Raw rectangles as alpha for the last pixels of each rectangle (its
    /// fix-up of the alpha bytes starts at the wrong offset), so zeros there show as holes in
    /// the browser. Used for WebSocket viewers only: plain RFB viewers get the guest's bytes.
    pub fn padding_ones(mut self) -> Self {
        let f = self.format;
        let mask = |max: u16, shift: u8| u32::from(max).checked_shl(u32::from(shift)).unwrap_or(0);
        let used = mask(f.red_max, f.red_shift)
            | mask(f.green_max, f.green_shift)
            | mask(f.blue_max, f.blue_shift);
        self.unused = if f.bpp == 32 { !used } else { 0 };
        self
    }

    /// The target format.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// One pixel value in the target format.
    pub fn pixel(&self, xrgb: u32) -> u32 {
        self.red[(xrgb >> 16) as usize & 0xff]
            | self.green[(xrgb >> 8) as usize & 0xff]
            | self.blue[xrgb as usize & 0xff]
            | self.unused
    }

    /// Appends `src` (XRGB8888 bytes, little-endian) converted to the target format.
    pub fn convert(&self, src: &[u8], out: &mut Vec<u8>) {
        let n = self.format.bytes();
        for px in src.chunks_exact(4) {
            let v = self.pixel(u32::from_le_bytes([px[0], px[1], px[2], px[3]]));
            push_pixel(v, n, self.format.big_endian, out);
        }
    }
}

fn push_pixel(v: u32, n: usize, big_endian: bool, out: &mut Vec<u8>) {
    if big_endian {
        out.extend_from_slice(&v.to_be_bytes()[4 - n..]);
    } else {
        out.extend_from_slice(&v.to_le_bytes()[..n]);
    }
}

/// A rectangle of the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// Per-client encoder state: the zlib streams live as long as the connection.
pub struct Encoder {
    zlib: Compress,
    zrle: Compress,
    row: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            zlib: Compress::new(Compression::fast(), true),
            zrle: Compress::new(Compression::fast(), true),
            row: Vec::new(),
        }
    }
}

impl Encoder {
    /// Appends a whole FramebufferUpdate message with `rects` of `fb` in `encoding`.
    pub fn update(
        &mut self,
        fb: &Framebuffer,
        conv: &Converter,
        encoding: i32,
        rects: &[Rect],
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(rects.len() as u16).to_be_bytes());
        for r in rects {
            for v in [r.x, r.y, r.w, r.h] {
                out.extend_from_slice(&(v as u16).to_be_bytes());
            }
            out.extend_from_slice(&encoding.to_be_bytes());
            match encoding {
                ENCODING_ZLIB => {
                    let mut raw = Vec::with_capacity((r.w * r.h) as usize * conv.format.bytes());
                    self.raw(fb, conv, *r, &mut raw);
                    compressed(&mut self.zlib, &raw, out)?;
                }
                ENCODING_ZRLE => {
                    let mut tiles = Vec::new();
                    self.zrle_tiles(fb, conv, *r, &mut tiles);
                    compressed(&mut self.zrle, &tiles, out)?;
                }
                _ => self.raw(fb, conv, *r, out),
            }
        }
        Ok(())
    }

    fn read_row(&mut self, fb: &Framebuffer, x: u32, y: u32, w: u32) {
        self.row.resize(w as usize * 4, 0);
        fb.read(y as usize * fb.stride() + x as usize * 4, &mut self.row);
    }

    fn raw(&mut self, fb: &Framebuffer, conv: &Converter, r: Rect, out: &mut Vec<u8>) {
        for y in r.y..r.y + r.h {
            self.read_row(fb, r.x, y, r.w);
            conv.convert(&self.row, out);
        }
    }

    fn zrle_tiles(&mut self, fb: &Framebuffer, conv: &Converter, r: Rect, out: &mut Vec<u8>) {
        let cpixel = CPixel::for_format(&conv.format);
        let mut tile: Vec<u32> = Vec::with_capacity((ZRLE_TILE * ZRLE_TILE) as usize);
        for ty in (r.y..r.y + r.h).step_by(ZRLE_TILE as usize) {
            let th = ZRLE_TILE.min(r.y + r.h - ty);
            for tx in (r.x..r.x + r.w).step_by(ZRLE_TILE as usize) {
                let tw = ZRLE_TILE.min(r.x + r.w - tx);
                tile.clear();
                for y in ty..ty + th {
                    self.read_row(fb, tx, y, tw);
                    tile.extend(
                        self.row
                            .chunks_exact(4)
                            .map(|p| conv.pixel(u32::from_le_bytes([p[0], p[1], p[2], p[3]]))),
                    );
                }
                if tile.iter().all(|&p| p == tile[0]) {
                    out.push(1); // solid
                    cpixel.push(tile[0], out);
                } else {
                    out.push(0); // raw
                    for &p in &tile {
                        cpixel.push(p, out);
                    }
                }
            }
        }
    }
}

/// ZRLE's compact pixel: 3 bytes for 32-bpp formats whose colours fit in 24 bits.
struct CPixel {
    bytes: usize,
    big_endian: bool,
    /// The colour bits are in the top three bytes: drop the low byte.
    high: bool,
}

impl CPixel {
    fn for_format(f: &PixelFormat) -> Self {
        let mask = u32::from(f.red_max).wrapping_shl(u32::from(f.red_shift))
            | u32::from(f.green_max).wrapping_shl(u32::from(f.green_shift))
            | u32::from(f.blue_max).wrapping_shl(u32::from(f.blue_shift));
        let compact = f.bpp == 32 && f.depth <= 24;
        let (bytes, high) = match () {
            _ if compact && mask < 1 << 24 => (3, false),
            _ if compact && mask & 0xff == 0 => (3, true),
            _ => (f.bytes(), false),
        };
        CPixel {
            bytes,
            big_endian: f.big_endian,
            high,
        }
    }

    fn push(&self, v: u32, out: &mut Vec<u8>) {
        let v = if self.high { v >> 8 } else { v };
        push_pixel(v, self.bytes, self.big_endian, out);
    }
}

/// Appends a u32 length and `data` through the connection's zlib stream (sync-flushed, so
/// the client can decode it now).
fn compressed(z: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let start = out.len();
    let mut input = data;
    loop {
        out.reserve(input.len() / 2 + 1024);
        let before_in = z.total_in();
        z.compress_vec(input, out, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        input = &input[(z.total_in() - before_in) as usize..];
        // Done when all input is consumed and the flush left spare room in `out`.
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    let len = (out.len() - start) as u32;
    out[len_at..start].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_bits_are_zero_unless_asked() {
        let c = Converter::new(PixelFormat::XRGB8888);
        assert_eq!(c.pixel(0x0012_3456), 0x0012_3456);
        assert_eq!(c.padding_ones().pixel(0x0012_3456), 0xff12_3456);
        let mut f = PixelFormat::XRGB8888;
        f.bpp = 16;
        f.depth = 16;
        f.red_max = 31;
        f.green_max = 63;
        f.blue_max = 31;
        f.red_shift = 11;
        f.green_shift = 5;
        f.blue_shift = 0;
        assert_eq!(Converter::new(f).padding_ones().pixel(0x00ff_ffff), 0xffff);
    }

    #[test]
    fn formats_round_trip_and_reject() {
        let f = PixelFormat::XRGB8888;
        assert_eq!(PixelFormat::from_bytes(&f.to_bytes()), Some(f));
        let mut colour_map = f.to_bytes();
        colour_map[3] = 0;
        assert_eq!(PixelFormat::from_bytes(&colour_map), None);
        let mut odd = f.to_bytes();
        odd[0] = 24;
        assert_eq!(PixelFormat::from_bytes(&odd), None);
    }

    #[test]
    fn rgb565_big_endian() {
        let f = PixelFormat {
            bpp: 16,
            depth: 16,
            big_endian: true,
            red_max: 31,
            green_max: 63,
            blue_max: 31,
            red_shift: 11,
            green_shift: 5,
            blue_shift: 0,
        };
        let c = Converter::new(f);
        let mut out = Vec::new();
        c.convert(&[0x00, 0x00, 0xff, 0x00, 0xff, 0xff, 0xff, 0x00], &mut out);
        assert_eq!(out, vec![0xf8, 0x00, 0xff, 0xff]);
    }
}
