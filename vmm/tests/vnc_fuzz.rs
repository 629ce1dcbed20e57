//! Randomized client streams against the RFB server (a stable stand-in for a cargo-fuzz
//! target): thousands of garbage and mutated sessions must end in an error or EOF, never a
//! panic, and a real server must keep serving a well-behaved viewer meanwhile.

mod common;
#[path = "vnc_client.rs"]
mod vnc_client;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

use common::Rng;
use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::{fuzz_session, VncConfig, VncServer};
use vnc_client::Rfb;

/// A plausible session: a valid handshake and a few well-formed messages, in a random order.
fn valid_session(rng: &mut Rng) -> Vec<u8> {
    let version: &[u8] = [b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n"][rng.below_usize(3)];
    let mut s = version.to_vec();
    if version != b"RFB 003.003\n" {
        s.push(1);
    }
    s.push(1);
    for _ in 0..rng.below(12) {
        match rng.below(6) {
            0 => s.extend_from_slice(&[0, 0, 0, 0, 16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0]),
            1 => s.extend_from_slice(&[2, 0, 0, 3, 0, 0, 0, 16, 0, 0, 0, 6, 0, 0, 0, 0]),
            2 => s.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 64, 0, 40]),
            3 => s.extend_from_slice(&[3, 1, 0, 10, 0, 5, 0xff, 0xff, 0xff, 0xff]),
            4 => s.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0x41]),
            _ => s.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']),
        }
    }
    s
}

fn mutate(rng: &mut Rng, mut s: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !s.is_empty() => {
                let i = rng.below_usize(s.len());
                s[i] = rng.next() as u8;
            }
            1 if !s.is_empty() => s.truncate(rng.below_usize(s.len())),
            2 => {
                let i = rng.below_usize(s.len() + 1);
                s.insert(i, rng.next() as u8);
            }
            _ => {
                // Interesting values at a random place: huge lengths and counts.
                let i = rng.below_usize(s.len() + 1);
                let v = [0xffu8, 0xff, 0xff, 0xff];
                s.splice(i..i, v);
            }
        }
    }
    s
}

#[test]
fn random_and_mutated_sessions_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut completed = 0;
    for i in 0..20_000 {
        let input = match i % 3 {
            0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            1 => {
                let v = valid_session(&mut rng);
                mutate(&mut rng, v)
            }
            _ => {
                // Valid handshake, then random messages.
                let mut s = valid_session(&mut rng);
                s.extend((0..rng.below(48)).map(|_| rng.next() as u8));
                s
            }
        };
        let password: Option<&[u8]> = if i % 10 == 0 { Some(b"pw") } else { None };
        // Every session ends with an error (EOF at the latest); a panic fails the test.
        if fuzz_session(&input, password).is_err() {
            completed += 1;
        }
    }
    assert_eq!(completed, 20_000);
}

#[test]
fn garbage_clients_do_not_disturb_a_viewer() {
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig {
            width: 64,
            height: 40,
        })
        .unwrap(),
    );
    fb.write(0, &[0x11; 64 * 40 * 4]);
    let server = VncServer::start(
        VncConfig::new("127.0.0.1:0".parse().unwrap()),
        fb.clone(),
        None,
    )
    .unwrap();
    let addr = server.local_addr();
    let mut viewer = Rfb::connect(addr, "003.008", None);
    viewer.set_encodings(&[16]);
    let mut rng = Rng(42);
    for i in 0..1_000 {
        let mut s = TcpStream::connect(addr).unwrap();
        let v = valid_session(&mut rng);
        let input = mutate(&mut rng, v);
        let _ = s.write_all(&input);
        drop(s); // mid-message, usually
        if i % 100 == 0 {
            viewer.request(false, 0, 0, 64, 40);
            let r = viewer.read_update();
            assert!(r[0].pixels.iter().all(|&p| p == 0x0011_1111));
        }
    }
    // Every garbage client is gone again.
    for _ in 0..200 {
        if server.clients() == 1 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} clients left", server.clients());
}
