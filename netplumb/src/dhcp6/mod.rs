//! The VM's IPv6 configuration, built in: router advertisements (periodic and in answer to
//! router solicitations) and a DHCPv6 server for the one VM.
//!
//! The advertisements carry the VM link's /64 for SLAAC, the MTU, the pod's IPv6 DNS
//! servers (RDNSS) and search list (DNSSL), with the M and O flags set so that DHCPv6 guests
//! ask too; DHCPv6 hands out VM_IP6, which by default is the address a SLAAC guest forms
//! from its MAC, so both kinds of guest end up at the address the DNAT targets.
//!
//! [`Responder6::handle`] is a pure function over Ethernet frames (tested and fuzzed like the
//! DHCPv4 responder); [`Dhcp6Server`] runs it on an AF_PACKET socket bound to the bridge.

pub mod msg;
mod server;
pub mod wire;

use std::net::Ipv6Addr;

pub use server::Dhcp6Server;

use crate::config::{net64, NetConfig};
use crate::podinfo::{PodInfo, ROUTER_LL};
use crate::MacAddr;
use msg::{opt, put, status, status_value, ty, Message};
use wire::{build_icmp, build_udp, encode_names, multicast_mac, parse_frame, Packet};

/// ICMPv6 router solicitation.
pub const ICMP_RS: u8 = 133;
/// ICMPv6 router advertisement.
pub const ICMP_RA: u8 = 134;
/// How often an unsolicited advertisement goes out (RFC 4861 allows 4 to 1800 s).
pub const RA_INTERVAL_SECS: u64 = 60;
/// Router lifetime and RDNSS/DNSSL lifetime: well over three intervals (RFC 8106 5.1).
const RA_LIFETIME: u16 = 1800;
/// DHCPv6 lifetimes: the address stays the VM's as long as berth runs; the client renews
/// at T1 and berth answers. Finite, because some clients mishandle infinite leases.
const PREFERRED: u32 = 86400;
const VALID: u32 = 172_800;
const T1: u32 = 43200;
const T2: u32 = 69120;

/// Everything the router and the DHCPv6 server hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config6 {
    /// The only client served (the VM's MAC).
    pub client_mac: MacAddr,
    /// Its DHCPv6 address (VM_IP6).
    pub client_ip: Ipv6Addr,
    /// The VM link's /64 (advertised for SLAAC).
    pub prefix: Ipv6Addr,
    /// The router's link-local address: source of every reply and the VM's default router.
    pub router: Ipv6Addr,
    /// The pod's IPv6 DNS servers.
    pub dns: Vec<Ipv6Addr>,
    /// The search list.
    pub search: Vec<String>,
    /// The link MTU.
    pub mtu: u32,
}

impl Config6 {
    /// The settings for the VM described by `cfg` in the pod described by `pod`.
    pub fn new(cfg: &NetConfig, pod: &PodInfo) -> Config6 {
        Config6 {
            client_mac: cfg.vm_mac,
            client_ip: cfg.vm_ip6(),
            prefix: net64(cfg.vm_gw6),
            router: ROUTER_LL,
            dns: pod.dns.nameservers6.clone(),
            search: pod
                .dns
                .search
                .iter()
                .filter(|d| crate::resolv::valid_domain(d))
                .cloned()
                .collect(),
            mtu: pod.mtu.max(1280),
        }
    }
}

/// The state of the one DHCPv6 binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Nothing assigned yet, or released.
    Free,
    /// Advertised, not yet requested.
    Advertised,
    /// Assigned by a Reply.
    Bound,
    /// The client declined the address.
    Declined,
}

/// Router advertisements and the DHCPv6 state machine for one client.
#[derive(Debug)]
pub struct Responder6 {
    cfg: Config6,
    mac: MacAddr,
    ra: Vec<u8>,
    info_options: Vec<u8>,
    duid: Vec<u8>,
    binding: Binding,
}

impl Responder6 {
    /// A responder answering from `mac` (the bridge's MAC).
    pub fn new(cfg: Config6, mac: MacAddr) -> Responder6 {
        // DUID-LL (type 3, hardware type 1 = Ethernet): stable as long as the bridge MAC is.
        let mut duid = vec![0, 3, 0, 1];
        duid.extend_from_slice(&mac.0);
        let ra = ra_body(&cfg, mac);
        let info_options = info_options(&cfg);
        Responder6 {
            cfg,
            mac,
            ra,
            info_options,
            duid,
            binding: Binding::Free,
        }
    }

    /// The binding's state.
    pub fn binding(&self) -> Binding {
        self.binding
    }

    /// An unsolicited router advertisement to all nodes.
    pub fn advertisement(&self) -> Vec<u8> {
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        build_icmp(
            self.mac,
            multicast_mac(all_nodes),
            self.cfg.router,
            all_nodes,
            ICMP_RA,
            &self.ra,
        )
    }

    /// Handles one Ethernet frame; returns the frame to send back, if any. Router
    /// solicitations from anyone on the link are answered (with the multicast advertisement);
    /// DHCPv6 only from the VM's MAC.
    pub fn handle(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let f = parse_frame(frame)?;
        match f.packet {
            // RFC 4861 6.1.1: a solicitation that may have crossed a router is invalid.
            Packet::Icmp {
                ty: ICMP_RS,
                code: 0,
                hop_limit: 255,
                ..
            } => Some(self.advertisement()),
            Packet::Icmp { .. } => None,
            Packet::Udp { src_port, payload } => {
                if f.src_mac != self.cfg.client_mac || f.src_ip.segments()[0] & 0xffc0 != 0xfe80 {
                    return None;
                }
                let req = Message::parse(payload)?;
                let reply = self.dhcp(&req)?;
                Some(build_udp(
                    self.mac,
                    f.src_mac,
                    self.cfg.router,
                    f.src_ip,
                    src_port,
                    &reply,
                ))
            }
        }
    }

    /// The DHCPv6 answer to `req`, if any (RFC 8415 18.3).
    fn dhcp(&mut self, req: &Message) -> Option<Vec<u8>> {
        let client_id = req.option(opt::CLIENTID);
        let server_id = req.option(opt::SERVERID);
        let ours = server_id.is_none_or(|s| s == self.duid);
        let (answer, with_ias) = match req.ty {
            ty::SOLICIT if client_id.is_some() && server_id.is_none() => {
                if req.option(opt::RAPID_COMMIT).is_some() {
                    self.binding = Binding::Bound;
                    (ty::REPLY, true)
                } else {
                    self.binding = Binding::Advertised;
                    (ty::ADVERTISE, true)
                }
            }
            ty::REQUEST | ty::RENEW if client_id.is_some() && server_id.is_some() && ours => {
                self.binding = Binding::Bound;
                (ty::REPLY, true)
            }
            ty::REBIND if client_id.is_some() && server_id.is_none() => {
                self.binding = Binding::Bound;
                (ty::REPLY, true)
            }
            ty::CONFIRM if client_id.is_some() && server_id.is_none() => (ty::REPLY, false),
            ty::INFORMATION_REQUEST if ours && req.option(opt::IA_NA).is_none() => {
                (ty::REPLY, false)
            }
            ty::RELEASE | ty::DECLINE if client_id.is_some() && server_id.is_some() && ours => {
                if req.ty == ty::DECLINE {
                    log::warn!(
                        "dhcp6: the VM declined {}: another host on its link uses it",
                        self.cfg.client_ip
                    );
                    self.binding = Binding::Declined;
                } else {
                    self.binding = Binding::Free;
                }
                (ty::REPLY, false)
            }
            _ => return None,
        };
        let mut out = vec![answer, req.xid[0], req.xid[1], req.xid[2]];
        if let Some(c) = client_id {
            put(&mut out, opt::CLIENTID, c);
        }
        put(&mut out, opt::SERVERID, &self.duid);
        match req.ty {
            ty::SOLICIT if answer == ty::REPLY => put(&mut out, opt::RAPID_COMMIT, &[]),
            // The only server on the link: the client need not wait for others.
            ty::SOLICIT => put(&mut out, opt::PREFERENCE, &[255]),
            ty::CONFIRM => {
                let on_link = self.confirm_on_link(req);
                let code = if on_link {
                    status::SUCCESS
                } else {
                    status::NOT_ON_LINK
                };
                put(&mut out, opt::STATUS_CODE, &status_value(code, ""));
            }
            ty::RELEASE | ty::DECLINE => put(
                &mut out,
                opt::STATUS_CODE,
                &status_value(status::SUCCESS, ""),
            ),
            ty::INFORMATION_REQUEST => put(
                &mut out,
                opt::INFORMATION_REFRESH_TIME,
                &86400u32.to_be_bytes(),
            ),
            _ => {}
        }
        if with_ias {
            self.put_ias(req, &mut out);
        }
        out.extend_from_slice(&self.info_options);
        Some(out)
    }

    /// CONFIRM: every address the client names must be in the VM link's /64.
    fn confirm_on_link(&self, req: &Message) -> bool {
        req.all(opt::IA_NA).all(|ia| {
            ia.get(12..)
                .and_then(msg::parse_options)
                .is_some_and(|opts| {
                    opts.iter()
                        .filter(|(c, _)| *c == opt::IAADDR)
                        .all(|(_, v)| {
                            v.get(..16)
                                .and_then(|a| <[u8; 16]>::try_from(a).ok())
                                .is_some_and(|a| net64(Ipv6Addr::from(a)) == self.cfg.prefix)
                        })
                })
        })
    }

    /// The IA_NA answers: the first IA_NA gets VM_IP6, further ones NoAddrsAvail (there is
    /// one address), and prefix delegation requests NoPrefixAvail.
    fn put_ias(&self, req: &Message, out: &mut Vec<u8>) {
        let mut given = false;
        for ia in req.all(opt::IA_NA) {
            let Some(iaid) = ia.get(..4) else { continue };
            let mut v = iaid.to_vec();
            if !given {
                given = true;
                v.extend_from_slice(&T1.to_be_bytes());
                v.extend_from_slice(&T2.to_be_bytes());
                let mut addr = self.cfg.client_ip.octets().to_vec();
                addr.extend_from_slice(&PREFERRED.to_be_bytes());
                addr.extend_from_slice(&VALID.to_be_bytes());
                put(&mut v, opt::IAADDR, &addr);
            } else {
                v.extend_from_slice(&[0; 8]);
                let s = status_value(status::NO_ADDRS_AVAIL, "one address per VM");
                put(&mut v, opt::STATUS_CODE, &s);
            }
            put(out, opt::IA_NA, &v);
        }
        for pd in req.all(opt::IA_PD) {
            let Some(iaid) = pd.get(..4) else { continue };
            let mut v = iaid.to_vec();
            v.extend_from_slice(&[0; 8]);
            let s = status_value(status::NO_PREFIX_AVAIL, "no prefix delegation");
            put(&mut v, opt::STATUS_CODE, &s);
            put(out, opt::IA_PD, &v);
        }
        if !given && req.option(opt::IA_PD).is_none() {
            let s = status_value(status::NO_ADDRS_AVAIL, "ask for an IA_NA");
            put(out, opt::STATUS_CODE, &s);
        }
    }
}

/// DNS servers and domain list, in every reply.
fn info_options(cfg: &Config6) -> Vec<u8> {
    let mut o = Vec::new();
    if !cfg.dns.is_empty() {
        let v: Vec<u8> = cfg.dns.iter().flat_map(|a| a.octets()).collect();
        put(&mut o, opt::DNS_SERVERS, &v);
    }
    if !cfg.search.is_empty() {
        put(&mut o, opt::DOMAIN_LIST, &encode_names(&cfg.search));
    }
    o
}

/// The router advertisement after the ICMPv6 header (RFC 4861 4.2, RFC 8106).
fn ra_body(cfg: &Config6, mac: MacAddr) -> Vec<u8> {
    const MANAGED: u8 = 0x80;
    const OTHER: u8 = 0x40;
    let mut b = vec![64, MANAGED | OTHER];
    b.extend_from_slice(&RA_LIFETIME.to_be_bytes());
    b.extend_from_slice(&[0; 8]); // reachable time, retrans timer: unspecified
                                  // Source link-layer address.
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(&mac.0);
    // MTU.
    b.extend_from_slice(&[5, 1, 0, 0]);
    b.extend_from_slice(&cfg.mtu.to_be_bytes());
    // Prefix information: on-link (L) and autonomous (A), lifetimes infinite.
    b.extend_from_slice(&[3, 4, 64, 0xc0]);
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&cfg.prefix.octets());
    let lifetime = u32::from(RA_LIFETIME).to_be_bytes();
    // RDNSS: at most as many servers as fit one option (the length byte counts 8 octets).
    if !cfg.dns.is_empty() {
        let n = cfg.dns.len().min(127);
        b.extend_from_slice(&[25, (1 + 2 * n) as u8, 0, 0]);
        b.extend_from_slice(&lifetime);
        for a in &cfg.dns[..n] {
            b.extend_from_slice(&a.octets());
        }
    }
    // DNSSL: the names, zero-padded to a multiple of 8 octets; names past what one option
    // holds (255 * 8 bytes) are left out.
    let mut names = Vec::new();
    for d in &cfg.search {
        let n = encode_names(std::slice::from_ref(d));
        if 8 + names.len() + n.len() > 255 * 8 {
            break;
        }
        names.extend_from_slice(&n);
    }
    if !names.is_empty() {
        names.resize(names.len().div_ceil(8) * 8, 0);
        b.extend_from_slice(&[31, (1 + names.len() / 8) as u8, 0, 0]);
        b.extend_from_slice(&lifetime);
        b.extend_from_slice(&names);
    }
    b
}

#[cfg(test)]
mod tests;
