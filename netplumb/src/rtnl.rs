//! Links, addresses and routes over a blocking NETLINK_ROUTE socket (netlink-packet-route).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};
use crate::nlattr::NlBuf;
use crate::MacAddr;

/// What berth needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, if it is an Ethernet-like link.
    pub mac: Option<MacAddr>,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// The link kind (`bridge`, `tun`, `veth`, ...).
    pub kind: Option<String>,
}

/// One IPv6 address of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr6 {
    /// The address.
    pub addr: Ipv6Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Scope link (or host) rather than global.
    pub link_scope: bool,
    /// `IFA_F_*` flags (tentative, deprecated, temporary, ...).
    pub flags: u32,
}

impl Addr6 {
    /// A global address that is usable as a source: not link-scoped, not tentative, not
    /// failed DAD, not deprecated, and not a temporary (privacy) address.
    pub fn usable_global(&self) -> bool {
        const BAD: u32 = 0x01 | 0x08 | 0x20 | 0x40; // secondary(temporary), dadfailed, deprecated, tentative
        !self.link_scope && self.flags & BAD == 0 && self.addr.segments()[0] & 0xffc0 != 0xfe80
    }
}

/// A NETLINK_ROUTE socket, bound to the network namespace it was opened in.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens the socket.
    pub fn open() -> Result<Rtnl> {
        let mut sock =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::netlink("open rtnetlink socket", e))?;
        sock.bind_auto()
            .map_err(|e| Error::netlink("bind rtnetlink socket", e))?;
        Ok(Rtnl { sock, seq: 1 })
    }

    /// Sends one request and collects the answers until ACK, DONE or an error.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut packet = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock
            .send_to(&buf, &SocketAddr::new(0, 0), 0)
            .map_err(|e| Error::netlink(op, e))?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .map_err(|e| Error::netlink(op, e))?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]).map_err(
                    |e| {
                        Error::netlink(
                            op,
                            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                        )
                    },
                )?;
                let len = m.header.length as usize;
                if m.header.sequence_number == hdr.sequence_number {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => Err(Error::netlink(
                                    op,
                                    std::io::Error::from_raw_os_error(-code.get()),
                                )),
                            };
                        }
                        NetlinkPayload::InnerMessage(inner) => {
                            out.push(inner);
                            if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                                return Ok(out);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// Looks a link up by name; `None` if it does not exist.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        let msgs = unless_errno(
            self.request(
                RouteNetlinkMessage::GetLink(msg),
                0,
                &format!("get link {name}"),
            ),
            libc::ENODEV,
        )?;
        Ok(msgs.into_iter().flatten().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
            _ => None,
        }))
    }

    /// The IPv4 addresses (address, prefix length) of link `index`, primary first.
    pub fn ipv4_addrs(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
            "dump addresses",
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index || a.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                })
            });
            if let Some(v) = addr {
                out.push((v, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// The IPv6 addresses of link `index` as the kernel lists them, with their flags.
    pub fn ipv6_addrs(&mut self, index: u32) -> Result<Vec<Addr6>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        let msgs = self.request(
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
            "dump IPv6 addresses",
        )?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index || a.header.family != AddressFamily::Inet6 {
                continue;
            }
            let addr = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V6(v)) => Some(*v),
                _ => None,
            });
            // IFA_FLAGS (32 bits) supersedes the header's 8-bit flags when present.
            let flags = a
                .attributes
                .iter()
                .find_map(|x| match x {
                    AddressAttribute::Flags(f) => Some(f.bits()),
                    _ => None,
                })
                .unwrap_or(u32::from(a.header.flags.bits()));
            if let Some(addr) = addr {
                out.push(Addr6 {
                    addr,
                    prefix: a.header.prefix_len,
                    link_scope: a.header.scope != AddressScope::Universe,
                    flags,
                });
            }
        }
        Ok(out)
    }

    /// Whether the main table has an IPv6 default route (`::/0`).
    pub fn has_default_route_v6(&mut self) -> Result<bool> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        let msgs = self.request(
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
            "dump IPv6 routes",
        )?;
        Ok(msgs.into_iter().any(|m| {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                return false;
            };
            let table = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            r.header.address_family == AddressFamily::Inet6
                && r.header.destination_prefix_length == 0
                && table.unwrap_or(u32::from(r.header.table)) == u32::from(libc::RT_TABLE_MAIN)
                && r.header.kind == netlink_packet_route::route::RouteType::Unicast
        }))
    }

    /// Adds an IPv6 address without duplicate address detection: the VM link has one other
    /// host, whose addresses berth chose, and a tentative address could not be used to answer
    /// the VM until DAD finished (an existing identical address is not an error).
    pub fn add_ipv6(&mut self, index: u32, addr: Ipv6Addr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Local(addr.into()));
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let r = self.request(
            RouteNetlinkMessage::NewAddress(msg),
            flags,
            &format!("add {addr}/{prefix}"),
        );
        unless_errno(r, libc::EEXIST).map(|_| ())
    }

    /// The IPv4 default route of the main table: (gateway if any, output interface if any).
    pub fn default_route_v4(&mut self) -> Result<Option<(Option<Ipv4Addr>, Option<u32>)>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let msgs = self.request(
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_DUMP,
            "dump routes",
        )?;
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let table = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            if r.header.address_family != AddressFamily::Inet
                || r.header.destination_prefix_length != 0
                || table.unwrap_or(u32::from(r.header.table)) != u32::from(libc::RT_TABLE_MAIN)
            {
                continue;
            }
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            return Ok(Some((gw, oif)));
        }
        Ok(None)
    }

    /// Creates a bridge (forward delay 0, so ports forward at once) with the given MAC and MTU.
    pub fn create_bridge(&mut self, name: &str, mac: MacAddr, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            // No multicast snooping: with one port there is nothing to save, and snooping
            // could keep the VM's DHCPv6 Solicits to ff02::1:2 (a group the bridge device
            // never joins) from berth's packet socket.
            LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::ForwardDelay(0),
                InfoBridge::MulticastSnooping(false),
            ])),
        ]));
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            flags,
            &format!("create bridge {name}"),
        )?;
        Ok(())
    }

    fn set_link(
        &mut self,
        index: u32,
        attrs: Vec<LinkAttribute>,
        up: bool,
        op: &str,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes = attrs;
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK, op)?;
        Ok(())
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_link(
            index,
            vec![LinkAttribute::Mtu(mtu)],
            false,
            &format!("set mtu {mtu} on link {index}"),
        )
    }

    /// Enslaves link `index` to bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.set_link(
            index,
            vec![LinkAttribute::Controller(master)],
            false,
            &format!("enslave link {index}"),
        )
    }

    /// Brings a link up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_link(index, vec![], true, &format!("set link {index} up"))
    }

    /// Enables IPv4 forwarding on one link (`net.ipv4.conf.<dev>.forwarding`), through
    /// netlink so that it works where /proc/sys is read-only, as in unprivileged pods.
    pub fn enable_forwarding(&mut self, index: u32) -> Result<()> {
        const IPV4_DEVCONF_FORWARDING: u16 = 1;
        self.set_ipv4_devconf(index, IPV4_DEVCONF_FORWARDING, 1, "enable forwarding")
    }

    /// Turns on strict reverse-path filtering on a link (its `rp_filter` = 1): a packet
    /// arriving there is dropped unless the route back to its source leaves by the same link.
    /// Over netlink, like forwarding, so it works with a read-only /proc/sys.
    pub fn enable_rp_filter(&mut self, index: u32) -> Result<()> {
        const IPV4_DEVCONF_RP_FILTER: u16 = 8;
        self.set_ipv4_devconf(index, IPV4_DEVCONF_RP_FILTER, 1, "enable rp_filter")
    }

    /// Sets one per-link IPv4 setting (`IPV4_DEVCONF_*`, what /proc/sys/net/ipv4/conf/LINK/
    /// shows) through IFLA_AF_SPEC.
    fn set_ipv4_devconf(&mut self, index: u32, key: u16, value: u32, what: &str) -> Result<()> {
        const IFLA_INET_CONF: u16 = 1;
        let mut b = NlBuf::default();
        b.nest(libc::AF_INET as u16, |b| {
            b.nest(IFLA_INET_CONF, |b| b.put(key, &value.to_ne_bytes()))
        });
        let attrs = vec![LinkAttribute::AfSpecUnknown(b.buf)];
        self.set_link(index, attrs, false, &format!("{what} on link {index}"))
    }

    /// Adds an IPv4 address to a link (an existing identical address is not an error).
    pub fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr.into()));
        msg.attributes.push(AddressAttribute::Address(addr.into()));
        let bcast = u32::from(addr) | (u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0));
        msg.attributes
            .push(AddressAttribute::Broadcast(bcast.into()));
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let r = self.request(
            RouteNetlinkMessage::NewAddress(msg),
            flags,
            &format!("add {addr}/{prefix}"),
        );
        unless_errno(r, libc::EEXIST).map(|_| ())
    }

    /// Deletes a link by index; a link that is already gone is not an error.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let r = self.request(
            RouteNetlinkMessage::DelLink(msg),
            NLM_F_ACK,
            &format!("delete link {index}"),
        );
        unless_errno(r, libc::ENODEV).map(|_| ())
    }

    /// Deletes a link by name if it exists.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<()> {
        match self.link(name)? {
            Some(l) => self.delete_link(l.index),
            None => Ok(()),
        }
    }
}

/// A request's result with the kernel's answer `errno` (such as ENODEV for a link that is
/// gone, EEXIST for an address that is there) taken as nothing to do: `Ok(None)`.
fn unless_errno<T>(result: Result<T>, errno: i32) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(errno) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        mtu: 0,
        mac: None,
        master: None,
        kind: None,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(b) if b.len() == 6 => {
                link.mac = Some(MacAddr(b[..6].try_into().unwrap()))
            }
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}
