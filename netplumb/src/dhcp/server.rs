//! Runs a [`Responder`] on an AF_PACKET socket bound to the bridge, on its own thread
//! (`crate::packet`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{DhcpConfig, LeaseState, Responder};
use crate::error::Result;
use crate::packet::{packet_socket, Handler, PacketSocket, ServerThread};

const ETH_P_IP: u16 = 0x0800;

/// A running DHCP responder. [`DhcpServer::stop`] (or dropping it) stops the thread.
pub struct DhcpServer {
    thread: ServerThread,
    bound: Arc<AtomicBool>,
}

/// Classic BPF: accept only unfragmented IPv4/UDP to port 67, so the thread does not wake
/// for every packet the VM forwards through the bridge.
fn dhcp_filter() -> [libc::sock_filter; 11] {
    let s = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        s(0x28, 0, 0, 12),      // ldh [12]            ethertype
        s(0x15, 0, 8, 0x0800),  // jeq #IPv4 else drop
        s(0x30, 0, 0, 23),      // ldb [23]            IP protocol
        s(0x15, 0, 6, 17),      // jeq #UDP else drop
        s(0x28, 0, 0, 20),      // ldh [20]            flags + fragment offset
        s(0x45, 4, 0, 0x1fff),  // jset #offset -> drop
        s(0xb1, 0, 0, 14),      // ldxb 4*([14]&0xf)   IP header length
        s(0x48, 0, 0, 16),      // ldh [x+16]          UDP destination port
        s(0x15, 0, 1, 67),      // jeq #67 else drop
        s(0x06, 0, 0, 0x40000), // ret accept
        s(0x06, 0, 0, 0),       // ret drop
    ]
}

impl DhcpServer {
    /// Starts serving `cfg` on interface `iface` (the bridge) of the current network
    /// namespace; replies come from the interface's MAC.
    pub fn spawn(iface: &str, cfg: DhcpConfig) -> Result<DhcpServer> {
        let (sock, mac) = packet_socket(iface, ETH_P_IP, &dhcp_filter(), "dhcp")?;
        let bound = Arc::new(AtomicBool::new(false));
        let handler = Serve {
            responder: Responder::new(cfg, mac),
            bound: bound.clone(),
        };
        let thread = ServerThread::spawn("dhcp", sandbox::ThreadKind::Dhcp, sock, handler)?;
        log::info!("dhcp: serving on {iface} ({mac})");
        Ok(DhcpServer { thread, bound })
    }

    /// Whether the VM holds the lease (its last REQUEST was acknowledged and not released).
    pub fn lease_bound(&self) -> bool {
        self.bound.load(Ordering::SeqCst)
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.thread.shutdown();
    }
}

/// The server thread's state: the responder, and where it publishes whether the lease is
/// bound.
struct Serve {
    responder: Responder,
    bound: Arc<AtomicBool>,
}

impl Handler for Serve {
    fn frame(&mut self, sock: &PacketSocket, frame: &[u8], _now: Instant) {
        let reply = self.responder.handle(frame);
        self.bound.store(
            self.responder.state() == LeaseState::Bound,
            Ordering::SeqCst,
        );
        let Some(reply) = reply else {
            return;
        };
        if let Err(e) = sock.send(&reply) {
            log::warn!("dhcp: send reply: {e}");
        }
    }
}
