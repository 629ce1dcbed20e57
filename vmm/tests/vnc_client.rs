//! A tiny raw-socket RFB client shared by the vnc_* tests (included with `#[path]`; as a test
//! target of its own it has no tests).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress};
use vmm::vnc::encode::PixelFormat;

pub struct Rfb {
    pub s: TcpStream,
    pub width: u16,
    pub height: u16,
    pub format: PixelFormat,
    zlib: Decompress,
    zrle: Decompress,
}

/// A decoded rectangle: position, size, and pixels as u32 values in the client's format.
#[derive(Debug)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub w: u16,
    pub h: u16,
    pub pixels: Vec<u32>,
}

pub fn read_n(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    s.read_exact(&mut b).expect("read from server");
    b
}

pub fn u32_at(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// Whether the server treats `version` as RFB 3.3 (anything but 3.7 and 3.8+).
pub fn is_v33(version: &str) -> bool {
    version != "003.007" && version < "003.008"
}

/// Connects and negotiates `version` ("003.003", "003.007", "003.008"); returns the stream
/// right after the security types/type were read, for tests of the failure paths.
pub fn start(addr: SocketAddr, version: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(read_n(&mut s, 12), b"RFB 003.008\n");
    s.write_all(format!("RFB {version}\n").as_bytes()).unwrap();
    let types = if is_v33(version) {
        read_n(&mut s, 4)
    } else {
        let n = read_n(&mut s, 1)[0];
        read_n(&mut s, n.into())
    };
    (s, types)
}

impl Rfb {
    /// Connects with `version`, authenticating with `password` when the server asks.
    pub fn connect(addr: SocketAddr, version: &str, password: Option<&[u8]>) -> Rfb {
        let (mut s, types) = start(addr, version);
        let security = if is_v33(version) {
            u32_at(&types) as u8
        } else {
            assert_eq!(types.len(), 1, "{types:?}");
            s.write_all(&[types[0]]).unwrap();
            types[0]
        };
        if security == 2 {
            let challenge: [u8; 16] = read_n(&mut s, 16).try_into().unwrap();
            let pw = password.expect("server wants a password");
            s.write_all(&vmm::vnc::auth::response(pw, &challenge))
                .unwrap();
        } else {
            assert_eq!(security, 1);
            assert!(password.is_none(), "server did not ask for the password");
        }
        if security == 2 || version >= "003.008" {
            assert_eq!(u32_at(&read_n(&mut s, 4)), 0, "SecurityResult");
        }
        s.write_all(&[1]).unwrap(); // shared
        let si = read_n(&mut s, 24);
        let name_len = u32_at(&si[20..]) as usize;
        let _name = read_n(&mut s, name_len);
        let format = PixelFormat::from_bytes(si[4..20].try_into().unwrap()).unwrap();
        assert_eq!(format, PixelFormat::XRGB8888);
        Rfb {
            s,
            width: u16::from_be_bytes([si[0], si[1]]),
            height: u16::from_be_bytes([si[2], si[3]]),
            format,
            zlib: Decompress::new(true),
            zrle: Decompress::new(true),
        }
    }

    pub fn set_encodings(&mut self, e: &[i32]) {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(e.len() as u16).to_be_bytes());
        for x in e {
            m.extend_from_slice(&x.to_be_bytes());
        }
        self.s.write_all(&m).unwrap();
    }

    pub fn set_pixel_format(&mut self, f: PixelFormat) {
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&f.to_bytes());
        self.s.write_all(&m).unwrap();
        self.format = f;
    }

    pub fn request(&mut self, incremental: bool, x: u16, y: u16, w: u16, h: u16) {
        let mut m = vec![3, incremental.into()];
        for v in [x, y, w, h] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        self.s.write_all(&m).unwrap();
    }

    pub fn key(&mut self, keysym: u32, down: bool) {
        let mut m = vec![4, down.into(), 0, 0];
        m.extend_from_slice(&keysym.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    pub fn pointer(&mut self, x: u16, y: u16, mask: u8) {
        let mut m = vec![5, mask];
        m.extend_from_slice(&x.to_be_bytes());
        m.extend_from_slice(&y.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    /// A pixel's colour bits (padding bits are the server's to fill; clients ignore them).
    fn pixel(&self, b: &[u8], n: usize) -> u32 {
        let f = self.format;
        let mask = |max: u16, shift: u8| u32::from(max).checked_shl(u32::from(shift)).unwrap_or(0);
        let used = mask(f.red_max, f.red_shift)
            | mask(f.green_max, f.green_shift)
            | mask(f.blue_max, f.blue_shift);
        self.raw_pixel(b, n) & used
    }

    fn raw_pixel(&self, b: &[u8], n: usize) -> u32 {
        let mut v = 0u32;
        if self.format.big_endian {
            for &x in &b[..n] {
                v = v << 8 | u32::from(x);
            }
        } else {
            for &x in b[..n].iter().rev() {
                v = v << 8 | u32::from(x);
            }
        }
        v
    }

    fn inflate(z: &mut Decompress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() * 8 + 1024);
        let mut input = data;
        loop {
            let before = z.total_in();
            out.reserve(64 * 1024);
            z.decompress_vec(input, &mut out, FlushDecompress::Sync)
                .expect("inflate");
            input = &input[(z.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    /// Reads one FramebufferUpdate and decodes its rectangles.
    pub fn read_update(&mut self) -> Vec<Rect> {
        let h = read_n(&mut self.s, 4);
        assert_eq!(h[0], 0, "message type");
        let n = u16::from_be_bytes([h[2], h[3]]);
        let bpp = self.format.bytes();
        (0..n)
            .map(|_| {
                let r = read_n(&mut self.s, 12);
                let g = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
                let (x, y, w, h) = (g(0), g(2), g(4), g(6));
                let enc = i32::from_be_bytes(r[8..12].try_into().unwrap());
                let count = w as usize * h as usize;
                let pixels = match enc {
                    0 => {
                        let raw = read_n(&mut self.s, count * bpp);
                        raw.chunks(bpp).map(|p| self.pixel(p, bpp)).collect()
                    }
                    6 => {
                        let len = u32_at(&read_n(&mut self.s, 4)) as usize;
                        let data = read_n(&mut self.s, len);
                        let raw = Self::inflate(&mut self.zlib, &data);
                        assert_eq!(raw.len(), count * bpp);
                        raw.chunks(bpp).map(|p| self.pixel(p, bpp)).collect()
                    }
                    16 => {
                        let len = u32_at(&read_n(&mut self.s, 4)) as usize;
                        let data = read_n(&mut self.s, len);
                        let raw = Self::inflate(&mut self.zrle, &data);
                        self.decode_zrle(&raw, w, h)
                    }
                    e => panic!("unexpected encoding {e}"),
                };
                Rect { x, y, w, h, pixels }
            })
            .collect()
    }

    /// ZRLE with the raw and solid sub-encodings (what the server sends).
    fn decode_zrle(&self, mut d: &[u8], w: u16, h: u16) -> Vec<u32> {
        let f = self.format;
        let cp = if f.bpp == 32 && f.depth <= 24 {
            3
        } else {
            f.bytes()
        };
        let mut out = vec![0u32; w as usize * h as usize];
        for ty in (0..h).step_by(64) {
            for tx in (0..w).step_by(64) {
                let (tw, th) = (64.min(w - tx), 64.min(h - ty));
                let sub = d[0];
                d = &d[1..];
                for y in ty..ty + th {
                    for x in tx..tx + tw {
                        let v = self.pixel(d, cp);
                        out[y as usize * w as usize + x as usize] = v;
                        if sub == 0 {
                            d = &d[cp..];
                        }
                    }
                }
                match sub {
                    0 => {}
                    1 => d = &d[cp..],
                    s => panic!("unexpected ZRLE sub-encoding {s}"),
                }
            }
        }
        assert!(d.is_empty(), "{} bytes left over", d.len());
        out
    }
}

/// A TCP connection to `to` from the loopback address `from`.
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    // SAFETY: plain socket calls on a fresh fd that the TcpStream then owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let stream = TcpStream::from_raw_fd(fd);
        let sa = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(SocketAddrV4::new(from, 0));
        assert_eq!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
            0
        );
        let SocketAddr::V4(to) = to else {
            panic!("IPv4 only")
        };
        let remote = sa(to);
        assert_eq!(
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    }
}
