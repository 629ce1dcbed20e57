//! The RFB server in-process, through a raw-socket client: version and security negotiation,
//! passwords, pixel-exact updates in every encoding and a 16-bpp format, incremental updates,
//! keys reaching the i8042, and the connection limit.

#[path = "vnc_client.rs"]
mod vnc_client;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm::bus::BusDevice;
use vmm::devices::i8042::{KeyboardInput, DATA_PORT, I8042};
use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::encode::PixelFormat;
use vmm::vnc::{VncConfig, VncServer};
use vmm::VmControl;
use vnc_client::{read_n, start, u32_at, Rfb};

const W: u32 = 200;
const H: u32 = 150;

fn pattern(x: u32, y: u32) -> u32 {
    // Distinct red, green and blue ramps plus noise, so channel mix-ups show.
    (x * 7 % 256) << 16 | (y * 5 % 256) << 8 | ((x ^ y) * 3 % 256)
}

fn fill(fb: &Framebuffer) {
    let mut bytes = Vec::with_capacity((W * H * 4) as usize);
    for y in 0..H {
        for x in 0..W {
            bytes.extend_from_slice(&pattern(x, y).to_le_bytes());
        }
    }
    fb.write(0, &bytes);
}

struct Setup {
    server: VncServer,
    fb: Arc<Framebuffer>,
    i8042: Arc<Mutex<I8042>>,
}

fn serve(password: Option<&[u8]>, max_clients: usize) -> Setup {
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: W,
            height: H,
        })
        .unwrap(),
    );
    fill(&fb);
    // Start clean: the fill is what viewers see first anyway.
    fb.take_dirty_lines();
    let i8042 = Arc::new(Mutex::new(I8042::new(Arc::new(VmControl::default()))));
    let mut config = VncConfig::new("127.0.0.1:0".parse().unwrap());
    config.password = password.map(<[u8]>::to_vec);
    config.max_clients = max_clients;
    let server =
        VncServer::start(config, fb.clone(), Some(KeyboardInput::new(i8042.clone()))).unwrap();
    Setup { server, fb, i8042 }
}

fn addr(s: &Setup) -> SocketAddr {
    s.server.local_addr()
}

/// The whole screen, decoded, as XRGB values via `expect` for each pixel.
fn check_full(c: &mut Rfb, expect: impl Fn(u32) -> u32) {
    c.request(false, 0, 0, W as u16, H as u16);
    let rects = c.read_update();
    assert_eq!(rects.len(), 1);
    let r = &rects[0];
    assert_eq!((r.x, r.y, r.w, r.h), (0, 0, W as u16, H as u16));
    for y in 0..H {
        for x in 0..W {
            let got = r.pixels[(y * W + x) as usize];
            let want = expect(pattern(x, y));
            assert_eq!(got, want, "pixel ({x},{y}) in {:?}", c.format);
        }
    }
}

#[test]
fn handshakes_for_every_version_with_and_without_password() {
    let open = serve(None, 8);
    let locked = serve(Some(b"s3cret"), 8);
    for v in ["003.003", "003.007", "003.008", "003.005", "003.889"] {
        let c = Rfb::connect(addr(&open), v, None);
        assert_eq!((c.width, c.height), (W as u16, H as u16), "{v}");
        let c = Rfb::connect(addr(&locked), v, Some(b"s3cret"));
        assert_eq!((c.width, c.height), (W as u16, H as u16), "{v}");
    }
}

#[test]
fn wrong_password_and_wrong_security_type_are_refused() {
    let s = serve(Some(b"s3cret"), 8);
    // 3.8: SecurityResult failed with a reason.
    let (mut c, types) = start(addr(&s), "003.008");
    assert_eq!(types, vec![2]);
    c.write_all(&[2]).unwrap();
    let challenge: [u8; 16] = read_n(&mut c, 16).try_into().unwrap();
    c.write_all(&vmm::vnc::auth::response(b"guess", &challenge))
        .unwrap();
    assert_eq!(u32_at(&read_n(&mut c, 4)), 1);
    let len = u32_at(&read_n(&mut c, 4)) as usize;
    assert_eq!(read_n(&mut c, len), b"authentication failed");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "connection closed after the failure");
    // 3.3: the server picks VNC auth; failure is a bare 1.
    let (mut c, types) = start(addr(&s), "003.003");
    assert_eq!(u32_at(&types), 2);
    let _ = read_n(&mut c, 16);
    c.write_all(&[0; 16]).unwrap();
    assert_eq!(u32_at(&read_n(&mut c, 4)), 1);
    // 3.8 client choosing None although only VNC auth is offered.
    let (mut c, _) = start(addr(&s), "003.008");
    c.write_all(&[1]).unwrap();
    assert_eq!(u32_at(&read_n(&mut c, 4)), 1);
    // Not RFB at all.
    let mut c = std::net::TcpStream::connect(addr(&s)).unwrap();
    let _ = read_n(&mut c, 12);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // The server still serves.
    Rfb::connect(addr(&s), "003.008", Some(b"s3cret"));
}

#[test]
fn pixel_exact_updates_in_every_encoding_and_format() {
    let s = serve(None, 8);
    for encodings in [vec![0], vec![6, 0], vec![16, 6, 0], vec![-223, 16]] {
        let mut c = Rfb::connect(addr(&s), "003.008", None);
        c.set_encodings(&encodings);
        check_full(&mut c, |p| p);
        // Twice: the zlib streams carry state from one update to the next.
        check_full(&mut c, |p| p);
        let rgb565be = PixelFormat {
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
        c.set_pixel_format(rgb565be);
        check_full(&mut c, |p| {
            let (r, g, b) = (p >> 16 & 0xff, p >> 8 & 0xff, p & 0xff);
            (((r * 31 + 127) / 255) << 11) | (((g * 63 + 127) / 255) << 5) | ((b * 31 + 127) / 255)
        });
        let bgr233 = PixelFormat {
            bpp: 8,
            depth: 8,
            big_endian: false,
            red_max: 7,
            green_max: 7,
            blue_max: 3,
            red_shift: 0,
            green_shift: 3,
            blue_shift: 6,
        };
        c.set_pixel_format(bgr233);
        check_full(&mut c, |p| {
            let (r, g, b) = (p >> 16 & 0xff, p >> 8 & 0xff, p & 0xff);
            ((r * 7 + 127) / 255) | (((g * 7 + 127) / 255) << 3) | (((b * 3 + 127) / 255) << 6)
        });
        let xbgr_be = PixelFormat {
            big_endian: true,
            red_shift: 0,
            blue_shift: 16,
            ..PixelFormat::XRGB8888
        };
        c.set_pixel_format(xbgr_be);
        check_full(&mut c, |p| {
            (p >> 16 & 0xff) | (p & 0xff00) | (p & 0xff) << 16
        });
    }
}

#[test]
fn incremental_updates_send_only_changes() {
    let s = serve(None, 8);
    let mut c = Rfb::connect(addr(&s), "003.008", None);
    c.set_encodings(&[16]);
    // A new client has seen nothing: the first incremental request gets the whole screen.
    c.request(true, 0, 0, W as u16, H as u16);
    let r = c.read_update();
    assert_eq!(r.iter().map(|r| u32::from(r.h)).sum::<u32>(), H);
    // Nothing changed: no update arrives.
    c.request(true, 0, 0, W as u16, H as u16);
    c.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(c.s.read(&mut b).is_err(), "update without a change");
    c.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // One pixel changes: only the lines of its page come (4 KiB = 5.12 lines of 200 px).
    let line = 77u32;
    s.fb.write((line * W * 4 + 40) as usize, &0x00ff_8040u32.to_le_bytes());
    let r = c.read_update();
    assert_eq!(r.len(), 1);
    let r = &r[0];
    assert!(
        r.y <= line as u16 && r.y + r.h > line as u16 && r.h <= 6,
        "{r:?}"
    );
    let at = |x: u32| r.pixels[((line - u32::from(r.y)) * W + x) as usize];
    assert_eq!(at(10), 0x00ff_8040);
    assert_eq!(at(11), pattern(11, line));
}

#[test]
fn keys_reach_the_keyboard() {
    let s = serve(None, 8);
    let mut c = Rfb::connect(addr(&s), "003.007", None);
    c.key(u32::from(b'a'), true);
    c.key(u32::from(b'a'), false);
    c.key(u32::from(b'A'), true); // no Shift held: the server adds it
    c.key(u32::from(b'A'), false);
    c.key(0xff0d, true);
    c.key(0xff0d, false);
    let want = [0x1e, 0x9e, 0x2a, 0x1e, 0xaa, 0x9e, 0x1c, 0x9c];
    let mut got = Vec::new();
    for _ in 0..200 {
        let mut b = [0u8];
        let mut d = s.i8042.lock().unwrap();
        d.read(0x64, 0, &mut b);
        if b[0] & 1 != 0 {
            d.read(DATA_PORT, 0, &mut b);
            got.push(b[0]);
            continue;
        }
        drop(d);
        if got.len() == want.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got, want);
}

#[test]
fn pointer_events_reach_the_tablet() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm::virtio::input::{fill_events, PointerInput};

    let s = serve(None, 8);
    let tablet = PointerInput::new(W, H).unwrap();
    s.server.set_pointer(Some(tablet.clone()));
    let mut c = Rfb::connect(addr(&s), "003.008", None);
    c.pointer(120, 80, 1);
    c.pointer(120, 80, 0);
    // A key still reaches the keyboard after pointer events on the same connection.
    c.key(u32::from(b'a'), true);

    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let q = virtio_queue::mock::MockSplitQueue::create(&m, GuestAddress(0), 16);
    let bufs: Vec<_> = (0..16u64)
        .map(|i| {
            virtio_queue::desc::RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
                0x1_0000 + i * 8,
                8,
                virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
                0,
            ))
        })
        .collect();
    q.add_desc_chains(&bufs, 0).unwrap();
    let mut queue = q.create_queue().unwrap();
    let read = |m: &GuestMemoryMmap| -> Vec<(u16, u16, u32)> {
        (0..8u64)
            .map(|i| {
                let a = 0x1_0000 + i * 8;
                (
                    m.read_obj(GuestAddress(a)).unwrap(),
                    m.read_obj(GuestAddress(a + 2)).unwrap(),
                    m.read_obj(GuestAddress(a + 4)).unwrap(),
                )
            })
            .collect()
    };
    // The session applies the messages on its own thread: wait for the release to arrive.
    for _ in 0..500 {
        fill_events(&mut queue, &m, &tablet);
        if read(&m)[6] == (1, 0x110, 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let events = read(&m);
    // ABS_X, ABS_Y, BTN_LEFT down, SYN; then the release.
    assert_eq!(
        events,
        vec![
            (3, 0, 120),
            (3, 1, 80),
            (1, 0x110, 1),
            (0, 0, 0),
            (3, 0, 120),
            (3, 1, 80),
            (1, 0x110, 0),
            (0, 0, 0),
        ]
    );
    let mut got = None;
    for _ in 0..200 {
        let mut b = [0u8];
        let mut d = s.i8042.lock().unwrap();
        d.read(0x64, 0, &mut b);
        if b[0] & 1 != 0 {
            d.read(DATA_PORT, 0, &mut b);
            got = Some(b[0]);
            break;
        }
        drop(d);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got, Some(0x1e), "the key after the pointer events");
}

#[test]
fn connection_limit_and_many_viewers() {
    let s = serve(None, 3);
    let mut viewers: Vec<Rfb> = (0..3)
        .map(|_| Rfb::connect(addr(&s), "003.008", None))
        .collect();
    // The fourth is refused with a reason.
    let (mut c, types) = start(addr(&s), "003.008");
    assert!(types.is_empty());
    let len = u32_at(&read_n(&mut c, 4)) as usize;
    assert_eq!(read_n(&mut c, len), b"too many VNC connections");
    for v in &mut viewers {
        v.set_encodings(&[6]);
        check_full(v, |p| p);
    }
    drop(viewers.pop());
    // A slot frees up once the server notices the disconnect.
    let mut ok = false;
    for _ in 0..100 {
        if s.server.clients() < 3 {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "disconnect not noticed");
    let mut c = Rfb::connect(addr(&s), "003.003", None);
    check_full(&mut c, |p| p);
}
