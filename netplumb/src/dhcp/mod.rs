//! The DHCP responder that gives the VM its one lease.
//!
//! [`Responder::handle`] is a pure function over Ethernet frames (easy to test and fuzz);
//! [`DhcpServer`] runs it on an AF_PACKET socket bound to the bridge, on its own thread.

pub mod options;
mod server;
pub mod wire;

use std::net::Ipv4Addr;

pub use server::DhcpServer;

use crate::config::NetConfig;
use crate::podinfo::PodInfo;
use crate::MacAddr;
use options::code;
use wire::{build_frame, parse_frame, DhcpMessage};

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// DHCPDISCOVER.
    Discover = 1,
    /// DHCPOFFER.
    Offer = 2,
    /// DHCPREQUEST.
    Request = 3,
    /// DHCPDECLINE.
    Decline = 4,
    /// DHCPACK.
    Ack = 5,
    /// DHCPNAK.
    Nak = 6,
    /// DHCPRELEASE.
    Release = 7,
    /// DHCPINFORM.
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<Self> {
        use MessageType::*;
        Some(match v {
            1 => Discover,
            2 => Offer,
            3 => Request,
            4 => Decline,
            5 => Ack,
            6 => Nak,
            7 => Release,
            8 => Inform,
            _ => return None,
        })
    }
}

/// Lease time meaning "infinite" (RFC 2131).
pub const INFINITE: u32 = 0xffff_ffff;

/// Everything the responder hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The only client served.
    pub client_mac: MacAddr,
    /// Its address.
    pub client_ip: Ipv4Addr,
    /// The server's address (the bridge's, VM_GW): server identifier and source address.
    pub server_ip: Ipv4Addr,
    /// Subnet mask (255.255.255.252).
    pub netmask: Ipv4Addr,
    /// Broadcast address of the /30.
    pub broadcast: Ipv4Addr,
    /// Default gateway (VM_GW).
    pub router: Ipv4Addr,
    /// Every DNS server.
    pub dns: Vec<Ipv4Addr>,
    /// Domain search list.
    pub search: Vec<String>,
    /// Host name; empty: not sent.
    pub hostname: String,
    /// Interface MTU (the pod's).
    pub mtu: u16,
}

impl DhcpConfig {
    /// The lease for the VM described by `cfg` in the pod described by `pod`.
    pub fn new(cfg: &NetConfig, pod: &PodInfo) -> DhcpConfig {
        DhcpConfig {
            client_mac: cfg.vm_mac,
            client_ip: cfg.vm_ip,
            server_ip: cfg.vm_gw,
            netmask: cfg.netmask(),
            broadcast: cfg.broadcast(),
            router: cfg.vm_gw,
            dns: pod.dns.nameservers.clone(),
            search: pod.dns.search.clone(),
            hostname: cfg.hostname.clone(),
            mtu: pod.mtu.clamp(68, 65535) as u16,
        }
    }
}

/// Where the one lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Nothing happened yet, or the client released it.
    Free,
    /// Offered, not yet requested.
    Offered,
    /// Acknowledged.
    Bound,
    /// The client declined it (it saw the address in use).
    Declined,
}

/// The DHCP state machine for one client; see [`Responder::handle`].
#[derive(Debug)]
pub struct Responder {
    cfg: DhcpConfig,
    server_mac: MacAddr,
    options: Vec<u8>,
    state: LeaseState,
}

impl Responder {
    /// A responder answering from `server_mac` (the bridge's MAC).
    pub fn new(cfg: DhcpConfig, server_mac: MacAddr) -> Responder {
        let options = lease_options(&cfg);
        Responder {
            cfg,
            server_mac,
            options,
            state: LeaseState::Free,
        }
    }

    /// The lease's state.
    pub fn state(&self) -> LeaseState {
        self.state
    }

    /// Handles one Ethernet frame; returns the frame to send back, if any. Frames that are
    /// not well-formed DHCP requests from the configured client are dropped.
    pub fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let req = parse_frame(frame)?.msg;
        if req.op != 1 || req.htype != 1 || req.hlen != 6 || req.client_mac() != self.cfg.client_mac
        {
            return None;
        }
        let ty = MessageType::from_u8(*req.option(code::MESSAGE_TYPE)?.first()?)?;
        let ours = self.cfg.client_ip;
        match ty {
            MessageType::Discover => {
                self.state = LeaseState::Offered;
                Some(self.reply(&req, MessageType::Offer))
            }
            MessageType::Request => {
                let server_id = req.option_ip(code::SERVER_ID);
                let wanted = req.option_ip(code::REQUESTED_IP);
                if server_id.is_some_and(|s| s != self.cfg.server_ip) {
                    return None; // SELECTING another server's offer
                }
                // SELECTING / INIT-REBOOT name the address in option 50, RENEWING and
                // REBINDING in ciaddr.
                let asked = wanted.unwrap_or(req.ciaddr);
                if asked == ours {
                    self.state = LeaseState::Bound;
                    Some(self.reply(&req, MessageType::Ack))
                } else {
                    log::info!("dhcp: NAK for {asked} (the VM's address is {ours})");
                    self.state = LeaseState::Free;
                    Some(self.reply(&req, MessageType::Nak))
                }
            }
            MessageType::Inform => Some(self.reply(&req, MessageType::Ack)),
            MessageType::Release => {
                if req
                    .option_ip(code::SERVER_ID)
                    .is_none_or(|s| s == self.cfg.server_ip)
                {
                    self.state = LeaseState::Free;
                }
                None
            }
            MessageType::Decline => {
                log::warn!("dhcp: the VM declined {ours}: another host on its link uses it");
                self.state = LeaseState::Declined;
                None
            }
            MessageType::Offer | MessageType::Ack | MessageType::Nak => None,
        }
    }

    fn reply(&self, req: &DhcpMessage, ty: MessageType) -> Vec<u8> {
        let inform = req.option(code::MESSAGE_TYPE) == Some(&[MessageType::Inform as u8]);
        let mut msg = DhcpMessage {
            op: 2,
            htype: 1,
            hlen: 6,
            xid: req.xid,
            flags: req.flags,
            giaddr: req.giaddr,
            chaddr: req.chaddr,
            ..Default::default()
        };
        let mut opts = Vec::new();
        options::put(&mut opts, code::MESSAGE_TYPE, &[ty as u8]);
        options::put(&mut opts, code::SERVER_ID, &self.cfg.server_ip.octets());
        if ty != MessageType::Nak {
            msg.ciaddr = req.ciaddr;
            msg.siaddr = self.cfg.server_ip;
            if !inform {
                msg.yiaddr = self.cfg.client_ip;
                for c in [code::LEASE_TIME, code::RENEWAL_TIME, code::REBINDING_TIME] {
                    options::put(&mut opts, c, &INFINITE.to_be_bytes());
                }
            }
            opts.extend_from_slice(&self.options);
        }
        // RFC 2131 4.1: NAKs are broadcast; a client that has an address gets unicast to it;
        // otherwise broadcast if asked, else unicast to the offered address at chaddr.
        let (dst_mac, dst_ip) =
            if ty == MessageType::Nak || (req.ciaddr.is_unspecified() && req.flags & 0x8000 != 0) {
                (MacAddr::BROADCAST, Ipv4Addr::BROADCAST)
            } else if !req.ciaddr.is_unspecified() {
                (req.client_mac(), req.ciaddr)
            } else {
                (req.client_mac(), self.cfg.client_ip)
            };
        build_frame(
            self.server_mac,
            dst_mac,
            self.cfg.server_ip,
            dst_ip,
            &msg.emit(&opts),
        )
    }
}

/// The options every OFFER and ACK carries besides the type, server id and lease times.
fn lease_options(cfg: &DhcpConfig) -> Vec<u8> {
    let mut o = Vec::new();
    options::put(&mut o, code::SUBNET_MASK, &cfg.netmask.octets());
    options::put(&mut o, code::BROADCAST, &cfg.broadcast.octets());
    options::put(&mut o, code::ROUTER, &cfg.router.octets());
    if !cfg.dns.is_empty() {
        let dns: Vec<u8> = cfg.dns.iter().flat_map(|a| a.octets()).collect();
        options::put(&mut o, code::DNS, &dns);
    }
    let search: Vec<String> = cfg
        .search
        .iter()
        .filter(|d| crate::resolv::valid_domain(d))
        .cloned()
        .collect();
    if let Some(first) = search.first() {
        options::put(&mut o, code::DOMAIN_NAME, first.as_bytes());
        options::put(
            &mut o,
            code::DOMAIN_SEARCH,
            &options::encode_search(&search),
        );
    }
    if !cfg.hostname.is_empty() {
        options::put(&mut o, code::HOSTNAME, cfg.hostname.as_bytes());
    }
    options::put(&mut o, code::MTU, &cfg.mtu.to_be_bytes());
    o
}

#[cfg(test)]
mod tests;
