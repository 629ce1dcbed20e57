//! A tiny authoritative DNS responder on 127.0.0.1 (UDP and TCP on one port) for the resolver
//! tests: A records for a few made-up names, NXDOMAIN for the rest, and a name whose UDP answer
//! is truncated so that the client must ask again over TCP.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One query as the responder saw it: name, type, and whether it came over TCP.
pub type Query = (String, u16, bool);

/// A running responder; stops when dropped.
pub struct DnsServer {
    pub port: u16,
    queries: Arc<Mutex<Vec<Query>>>,
    stop: Arc<AtomicBool>,
}

struct Zone {
    records: Vec<(String, Ipv4Addr)>,
    truncate: Vec<String>,
}

impl DnsServer {
    /// Answers `records`; names in `truncate` get TC over UDP and the answer over TCP.
    pub fn start(records: &[(&str, Ipv4Addr)], truncate: &[&str]) -> Self {
        let (udp, tcp) = bind_pair();
        let port = udp.local_addr().unwrap().port();
        let zone = Arc::new(Zone {
            records: records.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            truncate: truncate.iter().map(|n| n.to_string()).collect(),
        });
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, q, st) = (zone.clone(), queries.clone(), stop.clone());
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !st.load(Ordering::SeqCst) {
                let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&z, &q, &buf[..n], false) {
                    let _ = udp.send_to(&reply, peer);
                }
            }
        });
        let (z, q, st) = (zone, queries.clone(), stop.clone());
        tcp.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = tcp.accept() else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let mut len = [0u8; 2];
                if c.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                if c.read_exact(&mut msg).is_err() {
                    continue;
                }
                if let Some(reply) = answer(&z, &q, &msg, true) {
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    let _ = c.write_all(&framed);
                }
            }
        });
        DnsServer {
            port,
            queries,
            stop,
        }
    }

    /// Every query so far.
    pub fn queries(&self) -> Vec<Query> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A UDP socket and a TCP listener on the same 127.0.0.1 port.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            return (udp, tcp);
        }
    }
    panic!("no free port for both UDP and TCP");
}

/// The reply to one query, or None for garbage.
fn answer(zone: &Zone, log: &Mutex<Vec<Query>>, q: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let name = labels.join(".");
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    let question = q.get(12..pos + 4)?;
    log.lock().unwrap().push((name.clone(), qtype, tcp));
    let addr = zone
        .records
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a);
    let truncated = !tcp && zone.truncate.contains(&name);
    let mut flags: u16 = 0x8580; // QR, AA, RD, RA
    if addr.is_none() {
        flags |= 3; // NXDOMAIN
    }
    if truncated {
        flags |= 0x0200;
    }
    let answers = (addr.is_some() && qtype == 1 && !truncated) as u16;
    let mut m = q[..2].to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(&answers.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(question);
    if answers == 1 {
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&addr?.octets());
    }
    Some(m)
}
