//! Runs a [`Responder6`] on an AF_PACKET socket bound to the bridge, on its own thread
//! (`crate::packet`), and sends the periodic router advertisements.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Binding, Config6, Responder6, RA_INTERVAL_SECS};
use crate::error::Result;
use crate::packet::{packet_socket, Handler, PacketSocket, ServerThread};

const ETH_P_IPV6: u16 = 0x86dd;
/// RFC 4861 10: the least time between multicast router advertisements.
const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);

/// Whether a frame the responder answered was a router solicitation (ICMPv6 right after the
/// IPv6 header; DHCPv6 is UDP).
fn is_solicitation(request: &[u8]) -> bool {
    request.get(20) == Some(&super::wire::NH_ICMPV6)
}

/// A running router and DHCPv6 server. [`Dhcp6Server::stop`] (or dropping it) stops it.
pub struct Dhcp6Server {
    thread: ServerThread,
    bound: Arc<AtomicBool>,
}

/// Classic BPF: accept only IPv6 frames whose next header is ICMPv6 type 133 (router
/// solicitation) or UDP to port 547, so the thread does not wake for the VM's traffic.
fn filter() -> [libc::sock_filter; 11] {
    let s = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        s(0x28, 0, 0, 12),      // 0: ldh [12]        ethertype
        s(0x15, 0, 8, 0x86dd),  // 1: jeq #IPv6 else drop
        s(0x30, 0, 0, 20),      // 2: ldb [20]        next header
        s(0x15, 0, 2, 58),      // 3: jeq #ICMPv6 else 6
        s(0x30, 0, 0, 54),      // 4: ldb [54]        ICMPv6 type
        s(0x15, 3, 4, 133),     // 5: jeq #RS accept else drop
        s(0x15, 0, 3, 17),      // 6: jeq #UDP else drop
        s(0x28, 0, 0, 56),      // 7: ldh [56]        UDP destination port
        s(0x15, 0, 1, 547),     // 8: jeq #547 else drop
        s(0x06, 0, 0, 0x40000), // 9: accept
        s(0x06, 0, 0, 0),       // 10: drop
    ]
}

impl Dhcp6Server {
    /// Starts advertising and serving `cfg` on interface `iface` (the bridge) of the current
    /// network namespace; frames come from the interface's MAC.
    pub fn spawn(iface: &str, cfg: Config6) -> Result<Dhcp6Server> {
        let (sock, mac) = packet_socket(iface, ETH_P_IPV6, &filter(), "dhcp6")?;
        let (prefix, client) = (cfg.prefix, cfg.client_ip);
        let bound = Arc::new(AtomicBool::new(false));
        let handler = Serve {
            responder: Responder6::new(cfg, mac),
            bound: bound.clone(),
            interval: Duration::from_secs(RA_INTERVAL_SECS),
            // The first advertisements come quickly (RFC 4861 6.2.4 allows three at up to
            // 16 s), for a guest that booted before berth's thread or ignores solicitations'
            // answers.
            initial: 3,
            next: Instant::now(),
            last_ra: None,
        };
        // The DHCPv4 thread's kind: the same calls (poll, recvfrom, sendto) on the same
        // kind of socket.
        let thread = ServerThread::spawn("dhcp6", sandbox::ThreadKind::Dhcp, sock, handler)?;
        log::info!("dhcp6: advertising {prefix}/64 and serving {client} on {iface} ({mac})");
        Ok(Dhcp6Server { thread, bound })
    }

    /// Whether the VM holds its DHCPv6 address (SLAAC-only guests never do).
    pub fn lease_bound(&self) -> bool {
        self.bound.load(Ordering::SeqCst)
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.thread.shutdown();
    }
}

fn send(sock: &PacketSocket, frame: &[u8]) {
    if let Err(e) = sock.send(frame) {
        // ENETDOWN/ENXIO until the VMM has the tap up: the next advertisement retries.
        log::debug!("dhcp6: send: {e}");
    }
}

/// The server thread's state: the responder, where it publishes whether the address is
/// bound, and the router advertisement schedule.
struct Serve {
    responder: Responder6,
    bound: Arc<AtomicBool>,
    interval: Duration,
    /// Quick advertisements still to send.
    initial: u32,
    /// When the next advertisement is due.
    next: Instant,
    /// When the last one went out.
    last_ra: Option<Instant>,
}

impl Handler for Serve {
    fn tick(&mut self, sock: &PacketSocket, now: Instant) -> Option<Duration> {
        if now >= self.next {
            send(sock, &self.responder.advertisement());
            self.last_ra = Some(now);
            let wait = if self.initial > 0 {
                self.initial -= 1;
                Duration::from_secs(4)
            } else {
                self.interval
            };
            self.next = now + wait;
        }
        Some(self.next.saturating_duration_since(Instant::now()))
    }

    fn frame(&mut self, sock: &PacketSocket, frame: &[u8], now: Instant) {
        let reply = self.responder.handle(frame);
        self.bound
            .store(self.responder.binding() == Binding::Bound, Ordering::SeqCst);
        match reply {
            // The answer to a solicitation is the multicast advertisement: sent now, or at
            // most one per MIN_DELAY_BETWEEN_RAS (RFC 4861 6.2.6), however fast a guest
            // solicits.
            Some(_) if is_solicitation(frame) => {
                let earliest = self.last_ra.map_or(now, |t| t + MIN_DELAY_BETWEEN_RAS);
                self.next = self.next.min(earliest.max(Instant::now()));
            }
            Some(reply) => send(sock, &reply),
            None => {}
        }
    }
}
