//! What a hostile network peer can cost the VNC server: trickling connections against the
//! slots (per-source limit, total handshake deadline), repeated wrong passwords (back-off),
//! an update-request loop (rate limit), and no open console on a non-loopback address.
//! Peers use several loopback source addresses (127.0.0.0/8 is all local) to stand for
//! different hosts.

#[path = "vnc_client.rs"]
mod vnc_client;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::ws::DETECT_WINDOW;
use vmm::vnc::{VncConfig, VncServer};
use vnc_client::{connect_from, read_n, u32_at, Rfb};

fn server(f: impl FnOnce(&mut VncConfig)) -> VncServer {
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: 64,
            height: 48,
        })
        .unwrap(),
    );
    let mut config = VncConfig::new("127.0.0.1:0".parse().unwrap());
    f(&mut config);
    VncServer::start(config, fb, None).unwrap()
}

/// A peer that reads the server's version and then sends its own one byte every `every`,
/// never the final newline, so every read the server makes succeeds but the handshake never
/// ends. Returns how long the server kept the connection (at most 15 s).
fn trickle(mut s: TcpStream, every: Duration) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut v = [0u8; 12];
        if s.read_exact(&mut v).is_err() {
            return t0.elapsed();
        }
        s.set_read_timeout(Some(every)).unwrap();
        let mut b = [0u8; 64];
        for i in 0.. {
            if t0.elapsed() > Duration::from_secs(15) {
                break;
            }
            if i < 11 && s.write_all(&b"RFB 003.008\n"[i..i + 1]).is_err() {
                break;
            }
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        t0.elapsed()
    })
}

#[test]
fn trickling_connections_do_not_hold_every_slot() {
    let srv = server(|c| c.handshake_deadline = Duration::from_secs(3));
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    // Eight connections from one host, each sending a byte every 200 ms: before the limits,
    // they held all 8 slots for as long as they kept trickling.
    let held: Vec<_> = (0..8)
        .map(|_| {
            trickle(
                connect_from(attacker, srv.local_addr()),
                Duration::from_millis(200),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        srv.clients() <= 4,
        "{} slots held by one source",
        srv.clients()
    );
    // A real viewer from another host gets in and sees the screen.
    let mut c = Rfb::connect(srv.local_addr(), "003.008", None);
    c.request(false, 0, 0, 64, 48);
    assert_eq!(c.read_update().len(), 1);
    drop(c);
    drop(srv);
    for h in held {
        let _ = h.join();
    }
}

#[test]
fn handshake_deadline_closes_a_trickling_peer() {
    let srv = server(|c| c.handshake_deadline = Duration::from_secs(1));
    let s = connect_from(Ipv4Addr::new(127, 0, 0, 3), srv.local_addr());
    // One byte every 300 ms: each read succeeds well within any per-read timeout.
    let lasted = trickle(s, Duration::from_millis(300)).join().unwrap();
    assert!(
        lasted < Duration::from_secs(3),
        "a peer trickling one byte every 300 ms was kept for {lasted:?}"
    );
    // The slot is free again.
    let t0 = Instant::now();
    while srv.clients() > 0 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.clients(), 0);
}

/// One password attempt from `from`: how long the server took from the connection to the
/// answer (the back-off counts from the last failure, so a peer cannot hide it in the time it
/// takes to connect), and whether it was accepted.
fn attempt(srv: &VncServer, from: Ipv4Addr, password: &[u8]) -> (Duration, bool) {
    let t0 = Instant::now();
    let mut s = connect_from(from, srv.local_addr());
    assert_eq!(read_n(&mut s, 12), b"RFB 003.008\n");
    s.write_all(b"RFB 003.008\n").unwrap();
    assert_eq!(read_n(&mut s, 2), [1, 2]);
    s.write_all(&[2]).unwrap();
    let challenge: [u8; 16] = read_n(&mut s, 16).try_into().unwrap();
    s.write_all(&vmm::vnc::auth::response(password, &challenge))
        .unwrap();
    let ok = u32_at(&read_n(&mut s, 4)) == 0;
    (t0.elapsed(), ok)
}

#[test]
fn failed_passwords_back_off_per_source() {
    let srv = server(|c| {
        c.password = Some(b"s3cret".to_vec());
        c.auth_backoff = Duration::from_millis(300);
    });
    // Every plain RFB greeting waits out the WebSocket detection window first.
    let fast = DETECT_WINDOW + Duration::from_millis(250);
    let guesser = Ipv4Addr::new(127, 0, 0, 4);
    let (t1, ok) = attempt(&srv, guesser, b"guess1");
    assert!(!ok && t1 < fast, "first failure {t1:?}");
    let (t2, ok) = attempt(&srv, guesser, b"guess2");
    assert!(!ok && t2 >= Duration::from_millis(250), "second {t2:?}");
    let (t3, ok) = attempt(&srv, guesser, b"guess3");
    assert!(
        !ok && t3 >= Duration::from_millis(550),
        "third {t3:?} (doubled)"
    );
    // Another host is not slowed down by the guesser.
    let (t, ok) = attempt(&srv, Ipv4Addr::new(127, 0, 0, 5), b"s3cret");
    assert!(ok && t < fast, "other source {t:?}");
    // The right password from the guesser still gets in after its wait, and ends the back-off.
    let (t4, ok) = attempt(&srv, guesser, b"s3cret");
    // (the third failure's 1200 ms back-off also ran while the other host connected)
    assert!(
        ok && t4 + t >= Duration::from_millis(1100),
        "fourth {t4:?} + {t:?}"
    );
    let (t5, ok) = attempt(&srv, guesser, b"s3cret");
    assert!(ok && t5 < fast, "after success {t5:?}");
}

#[test]
fn update_request_loop_is_rate_limited() {
    let srv = server(|c| c.full_update_interval = Duration::from_millis(100));
    let mut c = Rfb::connect(srv.local_addr(), "003.008", None);
    // A viewer asking for the whole screen as fast as the answers come.
    let t0 = Instant::now();
    for _ in 0..11 {
        c.request(false, 0, 0, 64, 48);
        assert_eq!(c.read_update().len(), 1);
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "11 full updates in {took:?}: not rate limited"
    );
    // Flooding requests without reading gets no more updates than the rate allows.
    let flood: Vec<u8> = [3u8, 0, 0, 0, 0, 0, 0, 64, 0, 48].repeat(5000);
    c.s.write_all(&flood).unwrap();
    let t0 = Instant::now();
    let mut updates = 0;
    while t0.elapsed() < Duration::from_millis(500) {
        c.s.set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        let mut h = [0u8; 1];
        if let Ok(1) = c.s.peek(&mut h) {
            c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.read_update();
            updates += 1;
        }
    }
    assert!(updates <= 7, "{updates} full updates in 0.5 s");
}

#[test]
fn no_open_console_on_a_network_address() {
    let fb = || Arc::new(Framebuffer::new(FramebufferConfig::default()).unwrap());
    let open = VncConfig::new("0.0.0.0:0".parse().unwrap());
    let err = VncServer::start(open.clone(), fb(), None)
        .err()
        .expect("an open console on 0.0.0.0 must be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("without a password"), "{err}");
    // With a password, or told to (with a warning), it serves.
    let mut locked = open.clone();
    locked.password = Some(b"pw".to_vec());
    assert_eq!(locked.exposure(), Ok(None));
    VncServer::start(locked, fb(), None).unwrap();
    let mut insecure = open;
    insecure.insecure = true;
    assert!(insecure
        .exposure()
        .unwrap()
        .unwrap()
        .contains("NO PASSWORD"));
    VncServer::start(insecure, fb(), None).unwrap();
}
