//! The VNC console over WebSocket on the same port as plain RFB: a tungstenite client relayed
//! to this crate's raw RFB client (a websockify of the test's own) gets the pixel-exact screen
//! after VNC authentication inside the WebSocket; a wrong password is refused; plain RFB
//! still works next to it; other HTTP requests get a 404 page; a console without a password
//! refuses WebSocket upgrades; oversized frames, garbage and slow requests end only their own
//! connection.

#[path = "vnc_client.rs"]
mod vnc_client;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};
use tungstenite::{Message, WebSocket};
use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::{VncConfig, VncServer};
use vnc_client::Rfb;

const W: u32 = 120;
const H: u32 = 90;
const PASSWORD: &[u8] = b"s3cret";

fn pattern(x: u32, y: u32) -> u32 {
    (x * 7 % 256) << 16 | (y * 5 % 256) << 8 | ((x ^ y) * 3 % 256)
}

/// Under vnc_ws_seccomp (this file as a module of that test) the VNC threads run under
/// berth's seccomp filters in kill mode: a forbidden syscall ends the test process with the
/// syscall named.
fn sandboxed() {
    static INIT: std::sync::Once = std::sync::Once::new();
    if module_path!().starts_with("vnc_ws_seccomp") {
        INIT.call_once(|| {
            sandbox::init(sandbox::Options {
                mode: sandbox::Mode::Kill,
                switch: None,
            })
            .expect("sandbox init")
        });
    }
}

fn server(password: Option<&[u8]>) -> VncServer {
    sandboxed();
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: W,
            height: H,
        })
        .unwrap(),
    );
    let mut bytes = Vec::new();
    for y in 0..H {
        for x in 0..W {
            bytes.extend_from_slice(&pattern(x, y).to_le_bytes());
        }
    }
    fb.write(0, &bytes);
    fb.take_dirty_lines();
    let mut config = VncConfig::new("127.0.0.1:0".parse().unwrap());
    config.password = password.map(<[u8]>::to_vec);
    VncServer::start(config, fb, None).unwrap()
}

fn ws_connect(addr: SocketAddr, path: &str) -> tungstenite::Result<WebSocket<TcpStream>> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
    let (ws, resp) = tungstenite::client(req, s).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("interrupted"),
    })?;
    assert_eq!(
        resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "binary"
    );
    Ok(ws)
}

/// Relays a local TCP port to the server's WebSocket, so the raw RFB client runs unchanged
/// over WebSocket. Returns the local address.
fn relay(server: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut tcp, _) = l.accept().unwrap();
        let mut ws = ws_connect(server, "/websockify").unwrap();
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => ws.send(Message::binary(buf[..n].to_vec())).unwrap(),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            match ws.read() {
                Ok(Message::Binary(b)) => {
                    tcp.set_nonblocking(false).unwrap();
                    if tcp.write_all(&b).is_err() {
                        return;
                    }
                    tcp.set_nonblocking(true).unwrap();
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    });
    local
}

fn check_screen(c: &mut Rfb) {
    c.set_encodings(&[16, 6, 0]);
    c.request(false, 0, 0, W as u16, H as u16);
    let rects = c.read_update();
    assert_eq!(rects.len(), 1);
    let want: Vec<u32> = (0..H)
        .flat_map(|y| (0..W).map(move |x| pattern(x, y)))
        .collect();
    assert!(rects[0].pixels == want, "screen differs over WebSocket");
}

#[test]
fn rfb_over_websocket_with_the_password() {
    let srv = server(Some(PASSWORD));
    let mut c = Rfb::connect(relay(srv.local_addr()), "003.008", Some(PASSWORD));
    check_screen(&mut c);
    // Plain RFB on the same port, at the same time.
    let mut plain = Rfb::connect(srv.local_addr(), "003.008", Some(PASSWORD));
    check_screen(&mut plain);
    assert_eq!(srv.clients(), 2);
}

#[test]
fn wrong_password_over_websocket_is_refused() {
    let srv = server(Some(PASSWORD));
    let (mut s, types) = vnc_client::start(relay(srv.local_addr()), "003.008");
    assert_eq!(types, [2], "VNC authentication offered");
    s.write_all(&[2]).unwrap();
    let challenge: [u8; 16] = vnc_client::read_n(&mut s, 16).try_into().unwrap();
    s.write_all(&vmm::vnc::auth::response(b"wrong", &challenge))
        .unwrap();
    assert_eq!(vnc_client::u32_at(&vnc_client::read_n(&mut s, 4)), 1);
}

fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn other_http_requests_get_a_404_page() {
    let srv = server(Some(PASSWORD));
    let r = http(
        srv.local_addr(),
        b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
    assert!(r.contains("/websockify"), "{r}");
    let r = http(
        srv.local_addr(),
        b"GET / HTTP/1.1\r\n\x01\x02garbage\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
    // A head over 8 KiB.
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(9000, b'a');
    let r = http(srv.local_addr(), &big);
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
    // The server still serves.
    Rfb::connect(srv.local_addr(), "003.008", Some(PASSWORD));
}

#[test]
fn no_websocket_without_a_password() {
    let srv = server(None);
    match ws_connect(srv.local_addr(), "/websockify") {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    // Plain RFB on loopback without a password is unchanged.
    Rfb::connect(srv.local_addr(), "003.008", None);
}

#[test]
fn oversized_frames_end_only_their_connection() {
    let srv = server(Some(PASSWORD));
    let mut ws = ws_connect(srv.local_addr(), "/websockify").unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Binary(b) if &b[..] == b"RFB 003.008\n"));
    // A header announcing a 1 GiB binary frame: the server must not wait for (or allocate)
    // it, but close the connection.
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        mask: Some([1, 2, 3, 4]),
        ..FrameHeader::default()
    };
    let mut raw = Vec::new();
    header.format(1 << 30, &mut raw).unwrap();
    let s = ws.get_mut();
    s.write_all(&raw).unwrap();
    s.write_all(&[0u8; 4096]).unwrap();
    let t0 = Instant::now();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "server kept the connection"
    );
    // Many small frames that add up to a too-big message (continuations).
    let mut ws = ws_connect(srv.local_addr(), "/websockify").unwrap();
    let _ = ws.read().unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let first = Frame::message(chunk.clone(), OpCode::Data(Data::Binary), false);
    let mut sent = ws.write(Message::Frame(first)).and_then(|()| ws.flush());
    for _ in 0..8 {
        let f = Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false);
        if sent.is_err() {
            break;
        }
        sent = ws.write(Message::Frame(f)).and_then(|()| ws.flush());
    }
    let t0 = Instant::now();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(_) => break,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "connection not closed"
        );
    }
    // Nobody is left connected, and the server still serves.
    let t0 = Instant::now();
    while srv.clients() != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{} clients",
            srv.clients()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Rfb::connect(relay(srv.local_addr()), "003.008", Some(PASSWORD));
    check_screen(&mut c);
}

#[test]
fn a_slow_http_request_is_cut_at_the_handshake_deadline() {
    sandboxed();
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: 16,
            height: 16,
        })
        .unwrap(),
    );
    let mut config = VncConfig::new("127.0.0.1:0".parse().unwrap());
    config.password = Some(PASSWORD.to_vec());
    config.handshake_deadline = Duration::from_secs(2);
    let srv = VncServer::start(config, fb, None).unwrap();
    let mut s = TcpStream::connect(srv.local_addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let t0 = Instant::now();
    // One header byte every 100 ms: every read succeeds, the total deadline ends it.
    loop {
        if s.write_all(b"X").is_err() {
            break;
        }
        let mut b = [0u8; 256];
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match s.read(&mut b) {
            Ok(_) => break, // the 400 answer or the close
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still open");
    }
    let held = t0.elapsed();
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(4),
        "{held:?}"
    );
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 200 hostile connections at once from 50 addresses, four kinds rotating: a WebSocket
/// request head that never ends (slow-loris), an upgrade followed by a 1 GiB frame header,
/// garbage, and silence. A viewer connected before them keeps getting the screen at the
/// usual pace, memory stays bounded, and every slot comes back.
#[test]
fn two_hundred_hostile_connections_do_not_disturb_a_viewer() {
    let srv = server(Some(PASSWORD));
    let addr = srv.local_addr();
    let mut viewer = Rfb::connect(addr, "003.008", Some(PASSWORD));
    check_screen(&mut viewer);
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let hostile: Vec<TcpStream> = (0..200u32)
        .map(|i| {
            let from = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i / 4) as u8);
            let mut s = vnc_client::connect_from(from, addr);
            let _ = match i % 4 {
                0 => s.write_all(b"GET /websockify HTTP/1.1\r\nHost: x\r\n"),
                1 => {
                    let up = "GET /websockify HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                        Sec-WebSocket-Version: 13\r\n\r\n";
                    let mut raw = up.as_bytes().to_vec();
                    let header = FrameHeader {
                        opcode: OpCode::Data(Data::Binary),
                        mask: Some([1, 2, 3, 4]),
                        ..FrameHeader::default()
                    };
                    header.format(1 << 30, &mut raw).unwrap();
                    raw.extend_from_slice(&[0xaa; 1024]);
                    s.write_all(&raw)
                }
                2 => s.write_all(&[0x16, 0x03, 0x01, 0xff, 0x00, 0x13, 0x37, 0x0d, 0x0a]),
                _ => Ok(()),
            };
            s
        })
        .collect();
    let opened = t0.elapsed();
    // The viewer, meanwhile: full updates at their usual pace (one per 250 ms at most).
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        check_screen(&mut viewer);
        worst = worst.max(t.elapsed());
    }
    let grown = rss_kib().saturating_sub(rss0);
    eprintln!("200 hostile connections opened in {opened:?}; viewer's slowest full update {worst:?}; RSS grew {grown} KiB");
    assert!(
        worst < Duration::from_secs(1),
        "viewer slowed down: {worst:?}"
    );
    assert!(grown < 64 * 1024, "memory grew by {grown} KiB");
    drop(hostile);
    let t = Instant::now();
    while srv.clients() != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} clients",
            srv.clients()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A new WebSocket viewer gets in.
    let mut c = Rfb::connect(relay(addr), "003.008", Some(PASSWORD));
    check_screen(&mut c);
}

#[test]
fn a_peer_that_closes_its_side_at_once_still_gets_the_greeting() {
    // `nc HOST 5900 </dev/null`, as the pod-network lab scenario probes the port.
    let srv = server(Some(PASSWORD));
    let mut s = TcpStream::connect(srv.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut greeting = [0u8; 12];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"RFB 003.008\n");
}
