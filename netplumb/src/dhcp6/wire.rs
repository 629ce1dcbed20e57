//! Ethernet / IPv6 / UDP and ICMPv6 framing for the router and DHCPv6 server, parsed
//! defensively: anything malformed is `None`, never a panic.

use std::net::Ipv6Addr;

use crate::MacAddr;

/// UDP port of DHCPv6 servers and relays.
pub const SERVER_PORT: u16 = 547;
/// UDP port of DHCPv6 clients.
pub const CLIENT_PORT: u16 = 546;
/// IPv6 next header: UDP.
pub const NH_UDP: u8 = 17;
/// IPv6 next header: ICMPv6.
pub const NH_ICMPV6: u8 = 58;
const ETH_HLEN: usize = 14;
const IP6_HLEN: usize = 40;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// What a frame to the router or the DHCPv6 server carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// An ICMPv6 message (type, code, body after the 4-byte header) with its hop limit.
    Icmp {
        /// ICMPv6 type.
        ty: u8,
        /// ICMPv6 code.
        code: u8,
        /// The IPv6 hop limit (255 for neighbour discovery that stayed on the link).
        hop_limit: u8,
        /// The message after type, code and checksum.
        body: &'a [u8],
    },
    /// A UDP datagram to the DHCPv6 server port.
    Udp {
        /// Source port.
        src_port: u16,
        /// The datagram's payload.
        payload: &'a [u8],
    },
}

/// A parsed frame with the addresses it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// IPv6 source.
    pub src_ip: Ipv6Addr,
    /// IPv6 destination.
    pub dst_ip: Ipv6Addr,
    /// The payload.
    pub packet: Packet<'a>,
}

/// Parses an Ethernet frame carrying ICMPv6 or UDP to port 547 directly after the IPv6
/// header (clients send router solicitations and DHCPv6 without extension headers). The
/// checksums are not verified: a virtio-net guest with checksum offload sends partial ones.
pub fn parse_frame(f: &[u8]) -> Option<Frame<'_>> {
    if f.len() < ETH_HLEN + IP6_HLEN || u16::from_be_bytes([f[12], f[13]]) != ETHERTYPE_IPV6 {
        return None;
    }
    let src_mac = MacAddr(f[6..12].try_into().ok()?);
    let ip = &f[ETH_HLEN..];
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if ip[0] >> 4 != 6 || IP6_HLEN + plen > ip.len() {
        return None;
    }
    let src_ip = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
    let dst_ip = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
    let payload = &ip[IP6_HLEN..IP6_HLEN + plen];
    let packet = match ip[6] {
        NH_ICMPV6 if payload.len() >= 4 => Packet::Icmp {
            ty: payload[0],
            code: payload[1],
            hop_limit: ip[7],
            body: &payload[4..],
        },
        NH_UDP if payload.len() >= 8 => {
            let ulen = usize::from(u16::from_be_bytes([payload[4], payload[5]]));
            if u16::from_be_bytes([payload[2], payload[3]]) != SERVER_PORT
                || ulen < 8
                || ulen > payload.len()
            {
                return None;
            }
            Packet::Udp {
                src_port: u16::from_be_bytes([payload[0], payload[1]]),
                payload: &payload[8..ulen],
            }
        }
        _ => return None,
    };
    Some(Frame {
        src_mac,
        src_ip,
        dst_ip,
        packet,
    })
}

/// The Internet checksum of `data` with the IPv6 pseudo-header for `src`, `dst` and `nh`.
fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |d: &[u8]| {
        for c in d.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(data.len() as u32).to_be_bytes());
    add(&[0, 0, 0, nh]);
    add(data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33 + its last 32 bits).
pub fn multicast_mac(dst: Ipv6Addr) -> MacAddr {
    let o = dst.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// Builds an Ethernet + IPv6 frame around `l4` (an ICMPv6 message or UDP datagram whose
/// checksum field, at `csum_at`, is filled in here).
fn frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: u8,
    mut l4: Vec<u8>,
    csum_at: usize,
) -> Vec<u8> {
    let c = checksum6(src, dst, nh, &l4);
    // A computed 0 is sent as all ones (UDP over IPv6 must not carry 0).
    let c = if c == 0 { 0xffff } else { c };
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(ETH_HLEN + IP6_HLEN + l4.len());
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    // Hop limit 255: neighbour discovery requires it, and nothing here leaves the link.
    f.extend_from_slice(&[nh, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&l4);
    f
}

/// An ICMPv6 message (type, code, body) in a frame with hop limit 255, as neighbour
/// discovery requires.
pub fn build_icmp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ty: u8,
    body: &[u8],
) -> Vec<u8> {
    let mut l4 = vec![ty, 0, 0, 0];
    l4.extend_from_slice(body);
    frame(src_mac, dst_mac, src, dst, NH_ICMPV6, l4, 2)
}

/// A UDP datagram from the DHCPv6 server port to `dst_port`.
pub fn build_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&SERVER_PORT.to_be_bytes());
    l4.extend_from_slice(&dst_port.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    frame(src_mac, dst_mac, src, dst, NH_UDP, l4, 6)
}

/// Domain names in DNS wire format without compression, as DHCPv6 (RFC 8415 10) and the
/// DNSSL option (RFC 8106) require. Names must already be valid (`resolv::valid_domain`).
pub fn encode_names(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        for label in n.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse_and_checksum() {
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
        let (s, d): (Ipv6Addr, Ipv6Addr) = ("fe80::1".parse().unwrap(), "fe80::2".parse().unwrap());
        let mut f = build_udp(a, b, s, d, SERVER_PORT, b"hello");
        // Verify: the checksum over the pseudo-header and the datagram is 0.
        assert_eq!(checksum6(s, d, NH_UDP, &f[54..]), 0);
        let p = parse_frame(&f).unwrap();
        assert_eq!((p.src_mac, p.src_ip, p.dst_ip), (a, s, d));
        assert_eq!(
            p.packet,
            Packet::Udp {
                src_port: 547,
                payload: b"hello"
            }
        );
        // A payload length past the frame, and a UDP length past the payload, are rejected.
        f[19] = 200;
        assert!(parse_frame(&f).is_none());
        let mut f = build_udp(a, b, s, d, SERVER_PORT, b"hello");
        f[59] = 100;
        assert!(parse_frame(&f).is_none());
        let f = build_icmp(a, b, s, d, 134, &[1, 2, 3, 4]);
        assert_eq!(checksum6(s, d, NH_ICMPV6, &f[54..]), 0);
        assert_eq!(f[21], 255);
        assert!(matches!(
            parse_frame(&f).unwrap().packet,
            Packet::Icmp {
                ty: 134,
                hop_limit: 255,
                ..
            }
        ));
        for n in 0..f.len() {
            let _ = parse_frame(&f[..n]);
        }
    }

    #[test]
    fn names_are_uncompressed() {
        let n = encode_names(&["a.example".into(), "example".into()]);
        assert_eq!(n, b"\x01a\x07example\x00\x07example\x00");
        assert_eq!(
            multicast_mac("ff02::1:2".parse().unwrap()),
            MacAddr([0x33, 0x33, 0, 1, 0, 2])
        );
    }
}
