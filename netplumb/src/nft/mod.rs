//! berth's NAT and the VM's anti-spoofing filter as one nftables table, written over
//! NETLINK_NETFILTER in a single atomic batch.
//!
//! The table (what `nft list table ip berth` prints):
//! ```text
//! table ip berth {
//!     chain antispoof {
//!         type filter hook prerouting priority raw; policy accept;
//!         iifname "br0" ip saddr 0.0.0.0 udp dport 67 return   # DHCP before the lease
//!         iifname "br0" ip saddr != VM_IP drop      # otherwise only the VM's own address
//!         iifname "eth0" ip saddr VM_NET/30 drop     # nobody outside claims the VM's /30
//!     }
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         ip daddr POD_IP tcp dport 5900 return      # absent with NO_VNC
//!         ip daddr POD_IP tcp dport 9100 return      # each kept port (BERTH_METRICS)
//!         ip daddr POD_IP dnat to VM_IP
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr VM_IP snat to POD_IP
//!     }
//! }
//! ```
//!
//! The VM's IPv6 side, when the pod has it, is a second table of the same shape in family
//! `ip6` (see [`rules6`]); the IPv4 table is unchanged by it:
//! ```text
//! table ip6 berth {
//!     chain antispoof {
//!         type filter hook prerouting priority raw; policy accept;
//!         iifname "br0" ip6 saddr :: return                # duplicate address detection
//!         iifname "br0" ip6 saddr != VM_NET6/64 ip6 saddr != fe80::/10 drop
//!         iifname "eth0" ip6 saddr VM_NET6/64 drop
//!     }
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         ip6 daddr POD_IP6 tcp dport 5900 return          # absent with NO_VNC
//!         ip6 daddr POD_IP6 dnat to VM_IP6
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip6 saddr VM_NET6/64 snat to POD_IP6
//!     }
//! }
//! ```
//! Neighbour discovery to and from the pod address is untouched: conntrack does not track
//! NDP, so the NAT never sees it and the kernel answers for the pod address as before.

pub mod expr;

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::nlattr::{parse_replies, NlBuf, NLMSG_ERROR};
use expr::{
    iifname_eq, ip6_addr_cmp, ip6_net_cmp, ip_addr_eq, ip_net_eq, CmpOp, Expr, MetaKey, NatKind,
    PayloadBase, Verdict, NFPROTO_IPV6, REG_1,
};

/// The table's name (family ip).
pub const TABLE: &str = "berth";

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_IP_PRI_RAW: i32 = -300;
const NF_IP_PRI_NAT_DST: i32 = -100;
const NF_IP_PRI_NAT_SRC: i32 = 100;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6_U8: u8 = 10;
const AF_UNSPEC: u8 = 0;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

/// What the NAT table maps, and which bridge the VM is behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatSpec {
    /// The pod's IPv4 address: traffic to it goes to the VM, the VM's traffic leaves as it.
    pub pod_ip: Ipv4Addr,
    /// The VM's address.
    pub vm_ip: Ipv4Addr,
    /// Keep tcp/`vnc_port` in the pod (berth's VNC server) instead of forwarding it.
    pub keep_vnc: bool,
    /// The VNC port (5900).
    pub vnc_port: u16,
    /// More TCP ports kept in the pod (berth's metrics endpoint).
    pub keep_ports: Vec<u16>,
    /// The bridge the VM's tap is in: IPv4 packets arriving on it must come from `vm_ip`.
    pub vm_bridge: String,
    /// The pod interface: packets arriving on it must not claim a source in the VM's /30.
    pub pod_iface: String,
}

/// The VM's network behind the bridge: VM_IP and VM_GW share a /30.
pub const VM_PREFIX: u8 = 30;

/// What the `ip6 berth` table maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatSpec6 {
    /// The pod's IPv6 address: traffic to it goes to the VM, the VM's leaves as it.
    pub pod_ip: Ipv6Addr,
    /// The VM's IPv6 address (VM_IP6), the DNAT target.
    pub vm_ip: Ipv6Addr,
    /// Keep tcp/`vnc_port` in the pod instead of forwarding it.
    pub keep_vnc: bool,
    /// The VNC port (5900).
    pub vnc_port: u16,
    /// More TCP ports kept in the pod (berth's metrics endpoint).
    pub keep_ports: Vec<u16>,
    /// The bridge the VM's tap is in.
    pub vm_bridge: String,
    /// The pod interface.
    pub pod_iface: String,
}

/// The VM link's IPv6 prefix length.
pub const VM_PREFIX6: u8 = 64;

/// The rules of the `ip6 berth` table, as (chain, expressions) in order.
///
/// Antispoofing covers the VM's /64 rather than VM_IP6 alone: a SLAAC guest may also use
/// temporary (privacy) addresses in it, all of which leave as the pod address. Link-local
/// sources stay allowed (neighbour discovery, DHCPv6); the kernel never forwards them.
pub fn rules6(spec: &NatSpec6) -> Vec<(&'static str, Vec<Expr>)> {
    let net = crate::config::net64(spec.vm_ip);
    let link_local = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0);
    let mut out = Vec::new();
    let mut dad = iifname_eq(&spec.vm_bridge).to_vec();
    dad.extend(ip6_addr_cmp(8, CmpOp::Eq, Ipv6Addr::UNSPECIFIED));
    dad.push(Expr::Verdict(Verdict::Return));
    out.push(("antispoof", dad));
    let mut spoof = iifname_eq(&spec.vm_bridge).to_vec();
    spoof.extend(ip6_net_cmp(8, CmpOp::Neq, net, VM_PREFIX6));
    spoof.extend(ip6_net_cmp(8, CmpOp::Neq, link_local, 10));
    spoof.push(Expr::Verdict(Verdict::Drop));
    out.push(("antispoof", spoof));
    let mut rp = iifname_eq(&spec.pod_iface).to_vec();
    rp.extend(ip6_net_cmp(8, CmpOp::Eq, net, VM_PREFIX6));
    rp.push(Expr::Verdict(Verdict::Drop));
    out.push(("antispoof", rp));
    let vnc = spec.keep_vnc.then_some(spec.vnc_port);
    for port in vnc.into_iter().chain(spec.keep_ports.iter().copied()) {
        let mut e = ip6_addr_cmp(24, CmpOp::Eq, spec.pod_ip).to_vec();
        e.extend(l4_dport_eq(libc::IPPROTO_TCP as u8, port));
        e.push(Expr::Verdict(Verdict::Return));
        out.push(("prerouting", e));
    }
    let mut dnat = ip6_addr_cmp(24, CmpOp::Eq, spec.pod_ip).to_vec();
    dnat.extend(nat_to(NatKind::Dnat, NFPROTO_IPV6, &spec.vm_ip.octets()));
    out.push(("prerouting", dnat));
    let mut snat = ip6_net_cmp(8, CmpOp::Eq, net, VM_PREFIX6);
    snat.extend(nat_to(NatKind::Snat, NFPROTO_IPV6, &spec.pod_ip.octets()));
    out.push(("postrouting", snat));
    out
}

/// `immediate` TO into REG_1 and the `nat` that uses it.
fn nat_to(kind: NatKind, family: u32, to: &[u8]) -> [Expr; 2] {
    [
        Expr::Immediate {
            dreg: REG_1,
            data: to.to_vec(),
        },
        Expr::Nat {
            kind,
            family,
            addr_reg: REG_1,
        },
    ]
}

/// The rules of the table, as (chain, expressions) in order.
pub fn rules(spec: &NatSpec) -> Vec<(&'static str, Vec<Expr>)> {
    let mut out = Vec::new();
    // Anti-spoofing, before conntrack (priority raw), so a forged packet makes no conntrack
    // entry either: whatever comes in from the VM's bridge, routed onward or to the pod
    // itself, carries the VM's address or is dropped. The one exception is DHCP before the
    // lease (0.0.0.0 to port 67): with bridge netfilter on (as on Kubernetes nodes) this
    // chain sees bridged frames before the responder's packet socket on the bridge does.
    let mut dhcp = iifname_eq(&spec.vm_bridge).to_vec();
    dhcp.extend(ip_addr_eq(12, std::net::Ipv4Addr::UNSPECIFIED));
    dhcp.extend(l4_dport_eq(libc::IPPROTO_UDP as u8, 67));
    dhcp.push(Expr::Verdict(Verdict::Return));
    out.push(("antispoof", dhcp));
    let mut spoof = iifname_eq(&spec.vm_bridge).to_vec();
    spoof.push(Expr::Payload {
        base: PayloadBase::Network,
        offset: 12,
        len: 4,
        dreg: REG_1,
    });
    spoof.push(Expr::Cmp {
        sreg: REG_1,
        op: CmpOp::Neq,
        data: spec.vm_ip.octets().to_vec(),
    });
    spoof.push(Expr::Verdict(Verdict::Drop));
    out.push(("antispoof", spoof));
    // The pod side's reverse-path check for the one network that routes elsewhere: from the
    // pod interface, a source in the VM's /30 is a forgery (one claiming to be the VM, or its
    // gateway). rp_filter=1 on the interface says the same, but the kernel uses the larger of
    // the interface's and `all`'s value, and nodes often set `all` to 2 (loose), which would
    // let it through; this rule holds whatever the sysctls say.
    let mut rp = iifname_eq(&spec.pod_iface).to_vec();
    rp.extend(ip_net_eq(12, spec.vm_ip, VM_PREFIX));
    rp.push(Expr::Verdict(Verdict::Drop));
    out.push(("antispoof", rp));
    let vnc = spec.keep_vnc.then_some(spec.vnc_port);
    for port in vnc.into_iter().chain(spec.keep_ports.iter().copied()) {
        let mut e = ip_addr_eq(16, spec.pod_ip).to_vec();
        e.extend(l4_dport_eq(libc::IPPROTO_TCP as u8, port));
        e.push(Expr::Verdict(Verdict::Return));
        out.push(("prerouting", e));
    }
    let dnat = nat(16, spec.pod_ip, NatKind::Dnat, spec.vm_ip);
    let snat = nat(12, spec.vm_ip, NatKind::Snat, spec.pod_ip);
    out.push(("prerouting", dnat));
    out.push(("postrouting", snat));
    out
}

/// `tcp dport PORT` / `udp dport PORT`: nft's shorthand for `meta l4proto P` + `th dport PORT`.
fn l4_dport_eq(proto: u8, port: u16) -> [Expr; 4] {
    [
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![proto],
        },
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: port.to_be_bytes().to_vec(),
        },
    ]
}

/// `ip daddr FROM dnat to TO` (offset 16, [`NatKind::Dnat`]) or `ip saddr FROM snat to TO`
/// (offset 12, [`NatKind::Snat`]): the address match, `immediate` TO and `nat`.
fn nat(offset: u32, from: Ipv4Addr, kind: NatKind, to: Ipv4Addr) -> Vec<Expr> {
    let mut e = ip_addr_eq(offset, from).to_vec();
    e.extend(nat_to(kind, expr::NFPROTO_IPV4, &to.octets()));
    e
}

/// A batch under construction: BATCH_BEGIN, the nf_tables messages, BATCH_END.
struct Batch {
    b: NlBuf,
    seq: u32,
    acked: Vec<u32>,
    family: u8,
}

impl Batch {
    fn new(seq: u32, family: u8) -> Batch {
        let mut batch = Batch {
            b: NlBuf::default(),
            seq,
            acked: Vec::new(),
            family,
        };
        batch.control(NFNL_MSG_BATCH_BEGIN);
        batch
    }

    fn control(&mut self, ty: u16) {
        let m = self.b.begin_msg(ty, NLM_F_REQUEST, self.seq);
        self.seq = self.seq.wrapping_add(1);
        // struct nfgenmsg: family, version, res_id = the subsystem (network order).
        let id = NFNL_SUBSYS_NFTABLES.to_be_bytes();
        self.b.raw(&[AF_UNSPEC, 0, id[0], id[1]]);
        self.b.end_msg(m);
    }

    fn msg(&mut self, ty: u16, flags: u16, body: impl FnOnce(&mut NlBuf)) {
        let m = self.b.begin_msg(
            NFNL_SUBSYS_NFTABLES << 8 | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            self.seq,
        );
        self.acked.push(self.seq);
        self.seq = self.seq.wrapping_add(1);
        self.b.raw(&[self.family, 0, 0, 0]);
        body(&mut self.b);
        self.b.end_msg(m);
    }

    /// "add table; delete table": removes the table whether or not it exists.
    fn drop_table(&mut self) {
        self.msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, |b| {
            b.put_str(NFTA_TABLE_NAME, TABLE)
        });
        self.msg(NFT_MSG_DELTABLE, 0, |b| b.put_str(NFTA_TABLE_NAME, TABLE));
    }

    fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.control(NFNL_MSG_BATCH_END);
        (self.b.buf, self.acked)
    }
}

fn base_chain(batch: &mut Batch, name: &str, hook: u32, prio: i32, kind: &str) {
    batch.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
        b.put_str(NFTA_CHAIN_TABLE, TABLE);
        b.put_str(NFTA_CHAIN_NAME, name);
        b.nest(NFTA_CHAIN_HOOK, |b| {
            b.put_be32(NFTA_HOOK_HOOKNUM, hook);
            b.put_be32(NFTA_HOOK_PRIORITY, prio as u32);
        });
        b.put_be32(NFTA_CHAIN_POLICY, Verdict::Accept as u32);
        b.put_str(NFTA_CHAIN_TYPE, kind);
    });
}

/// The batch that atomically replaces any existing `ip berth` table with the one for `spec`.
/// Returns the bytes and the sequence numbers that will be acknowledged.
pub fn install_batch(spec: &NatSpec, seq: u32) -> (Vec<u8>, Vec<u32>) {
    table_batch(NFPROTO_IPV4, rules(spec), seq)
}

/// The batch that atomically replaces any existing `ip6 berth` table with the one for `spec`.
pub fn install_batch6(spec: &NatSpec6, seq: u32) -> (Vec<u8>, Vec<u32>) {
    table_batch(NFPROTO_IPV6_U8, rules6(spec), seq)
}

fn table_batch(family: u8, rules: Vec<(&'static str, Vec<Expr>)>, seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut batch = Batch::new(seq, family);
    batch.drop_table();
    batch.msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, |b| {
        b.put_str(NFTA_TABLE_NAME, TABLE)
    });
    base_chain(
        &mut batch,
        "antispoof",
        NF_INET_PRE_ROUTING,
        NF_IP_PRI_RAW,
        "filter",
    );
    base_chain(
        &mut batch,
        "prerouting",
        NF_INET_PRE_ROUTING,
        NF_IP_PRI_NAT_DST,
        "nat",
    );
    base_chain(
        &mut batch,
        "postrouting",
        NF_INET_POST_ROUTING,
        NF_IP_PRI_NAT_SRC,
        "nat",
    );
    for (chain, exprs) in rules {
        batch.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
            b.put_str(NFTA_RULE_TABLE, TABLE);
            b.put_str(NFTA_RULE_CHAIN, chain);
            b.nest(NFTA_RULE_EXPRESSIONS, |b| {
                for e in &exprs {
                    b.nest(NFTA_LIST_ELEM, |b| e.encode(b));
                }
            });
        });
    }
    batch.finish()
}

/// The batch that removes the table if it exists (and succeeds if it does not).
pub fn remove_batch(seq: u32) -> (Vec<u8>, Vec<u32>) {
    remove_family_batch(NFPROTO_IPV4, seq)
}

fn remove_family_batch(family: u8, seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut batch = Batch::new(seq, family);
    batch.drop_table();
    batch.finish()
}

/// A NETLINK_NETFILTER socket, bound to the network namespace it was opened in.
pub struct Nft {
    sock: Socket,
    seq: u32,
}

impl Nft {
    /// Opens the socket.
    pub fn open() -> Result<Nft> {
        let mut sock = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::netlink("open nfnetlink socket", e))?;
        sock.bind_auto()
            .map_err(|e| Error::netlink("bind nfnetlink socket", e))?;
        Ok(Nft { sock, seq: 1 })
    }

    /// Installs (or atomically replaces) the `ip berth` table.
    pub fn install(&mut self, spec: &NatSpec) -> Result<()> {
        let (bytes, acked) = install_batch(spec, self.seq);
        self.send(&bytes, &acked, "install nftables table ip berth")
    }

    /// Removes the `ip berth` table; succeeds if it is already gone.
    pub fn remove(&mut self) -> Result<()> {
        let (bytes, acked) = remove_batch(self.seq);
        self.send(&bytes, &acked, "remove nftables table ip berth")
    }

    /// Installs (or atomically replaces) the `ip6 berth` table.
    pub fn install6(&mut self, spec: &NatSpec6) -> Result<()> {
        let (bytes, acked) = install_batch6(spec, self.seq);
        self.send(&bytes, &acked, "install nftables table ip6 berth")
    }

    /// Removes the `ip6 berth` table; succeeds if it is already gone.
    pub fn remove6(&mut self) -> Result<()> {
        let (bytes, acked) = remove_family_batch(NFPROTO_IPV6_U8, self.seq);
        self.send(&bytes, &acked, "remove nftables table ip6 berth")
    }

    fn send(&mut self, bytes: &[u8], acked: &[u32], op: &str) -> Result<()> {
        self.seq = self.seq.wrapping_add(acked.len() as u32 + 2);
        self.sock
            .send_to(bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|e| Error::netlink(op, e))?;
        // nfnetlink processes the whole batch inside sendmsg, so every answer is queued
        // by now: drain without blocking.
        let mut seen = 0;
        let mut first_err = None;
        let mut buf = vec![0u8; 65536];
        loop {
            match self.sock.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => {
                    for r in parse_replies(&buf[..n]) {
                        if r.ty != NLMSG_ERROR {
                            continue;
                        }
                        seen += 1;
                        match r.errno {
                            Some(0) | None => {}
                            Some(e) => {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Error::netlink(op, e)),
            }
        }
        if let Some(e) = first_err {
            return Err(Error::netlink(op, std::io::Error::from_raw_os_error(e)));
        }
        if seen < acked.len() {
            return Err(Error::netlink(
                op,
                std::io::Error::other(format!(
                    "{seen} of {} batch messages acknowledged",
                    acked.len()
                )),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(keep_vnc: bool) -> NatSpec {
        NatSpec {
            pod_ip: "10.0.0.2".parse().unwrap(),
            vm_ip: "192.168.254.2".parse().unwrap(),
            keep_vnc,
            vnc_port: 5900,
            keep_ports: Vec::new(),
            vm_bridge: "br0".into(),
            pod_iface: "eth0".into(),
        }
    }

    #[test]
    fn kept_ports_get_a_return_rule_each() {
        let mut s = spec(true);
        s.keep_ports = vec![9100];
        let r = rules(&s);
        assert_eq!(r.len(), 7);
        let returns: Vec<&Vec<Expr>> = r
            .iter()
            .filter(|(c, e)| *c == "prerouting" && e.contains(&Expr::Verdict(Verdict::Return)))
            .map(|(_, e)| e)
            .collect();
        assert_eq!(returns.len(), 2);
        let port = |p: u16| Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: p.to_be_bytes().to_vec(),
        };
        assert!(returns[0].contains(&port(5900)));
        assert!(returns[1].contains(&port(9100)), "{:?}", returns[1]);
    }

    #[test]
    fn kept_ports_are_kept_on_the_ipv6_side_too() {
        let s = NatSpec6 {
            pod_ip: "2001:db8::2".parse().unwrap(),
            vm_ip: "fd62:6572:7468::2".parse().unwrap(),
            keep_vnc: true,
            vnc_port: 5900,
            keep_ports: vec![9100],
            vm_bridge: "br0".into(),
            pod_iface: "eth0".into(),
        };
        let returns: Vec<Vec<Expr>> = rules6(&s)
            .into_iter()
            .filter(|(c, e)| *c == "prerouting" && e.contains(&Expr::Verdict(Verdict::Return)))
            .map(|(_, e)| e)
            .collect();
        let port = |p: u16| Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: p.to_be_bytes().to_vec(),
        };
        assert_eq!(returns.len(), 2);
        assert!(returns[0].contains(&port(5900)));
        assert!(returns[1].contains(&port(9100)), "{:?}", returns[1]);
    }

    #[test]
    fn no_vnc_drops_the_return_rule() {
        assert_eq!(rules(&spec(true)).len(), 6);
        let r = rules(&spec(false));
        assert_eq!(r.len(), 5);
        assert!(r
            .iter()
            .filter(|(chain, _)| *chain != "antispoof")
            .all(|(_, e)| !e.contains(&Expr::Verdict(Verdict::Return))));
    }

    #[test]
    fn batch_is_framed_and_every_message_is_acked() {
        let (bytes, acked) = install_batch(&spec(true), 100);
        let replies = parse_replies(&bytes); // same header layout as requests
        let types: Vec<u16> = replies.iter().map(|r| r.ty).collect();
        let nft = |t: u16| NFNL_SUBSYS_NFTABLES << 8 | t;
        assert_eq!(
            types,
            [
                NFNL_MSG_BATCH_BEGIN,
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_DELTABLE),
                nft(NFT_MSG_NEWTABLE),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWCHAIN),
                nft(NFT_MSG_NEWRULE),
                nft(NFT_MSG_NEWRULE),
                nft(NFT_MSG_NEWRULE),
                nft(NFT_MSG_NEWRULE),
                nft(NFT_MSG_NEWRULE),
                nft(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(acked, (101..113).collect::<Vec<_>>());
        assert_eq!(
            replies.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (100..114).collect::<Vec<_>>()
        );
    }
}
