//! Ethernet / IPv4 / UDP / BOOTP framing of DHCP messages, parsed defensively: anything
//! malformed is `None`, never a panic.

use std::net::Ipv4Addr;

use super::options;
use crate::MacAddr;

/// UDP port of the DHCP server.
pub const SERVER_PORT: u16 = 67;
/// UDP port of the DHCP client.
pub const CLIENT_PORT: u16 = 68;
const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const BOOTP_FIXED: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// BOOTP clients may drop messages shorter than the original 300-byte BOOTP packet.
const MIN_BOOTP_LEN: usize = 300;

/// A BOOTP/DHCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpMessage {
    /// 1 = BOOTREQUEST, 2 = BOOTREPLY.
    pub op: u8,
    /// Hardware type (1 = Ethernet).
    pub htype: u8,
    /// Hardware address length (6 for Ethernet).
    pub hlen: u8,
    /// Transaction id.
    pub xid: u32,
    /// Seconds since the client started.
    pub secs: u16,
    /// Flags (0x8000 = broadcast).
    pub flags: u16,
    /// Client's current address.
    pub ciaddr: Ipv4Addr,
    /// "Your" address.
    pub yiaddr: Ipv4Addr,
    /// Next server address.
    pub siaddr: Ipv4Addr,
    /// Relay agent address.
    pub giaddr: Ipv4Addr,
    /// Client hardware address (16 bytes; the MAC is the first 6).
    pub chaddr: [u8; 16],
    /// Options, repeated codes already concatenated.
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Default for DhcpMessage {
    fn default() -> Self {
        let z = Ipv4Addr::UNSPECIFIED;
        DhcpMessage {
            op: 0,
            htype: 0,
            hlen: 0,
            xid: 0,
            secs: 0,
            flags: 0,
            ciaddr: z,
            yiaddr: z,
            siaddr: z,
            giaddr: z,
            chaddr: [0; 16],
            options: Vec::new(),
        }
    }
}

impl DhcpMessage {
    /// An option's value.
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    /// An option holding exactly one IPv4 address.
    pub fn option_ip(&self, code: u8) -> Option<Ipv4Addr> {
        let v: [u8; 4] = self.option(code)?.try_into().ok()?;
        Some(v.into())
    }

    /// The client's MAC (the first six bytes of chaddr).
    pub fn client_mac(&self) -> MacAddr {
        MacAddr(self.chaddr[..6].try_into().unwrap())
    }

    /// Parses the UDP payload of a DHCP message.
    pub fn parse(d: &[u8]) -> Option<DhcpMessage> {
        if d.len() < BOOTP_FIXED + 4 || d[BOOTP_FIXED..BOOTP_FIXED + 4] != MAGIC {
            return None;
        }
        let ip = |o: usize| Ipv4Addr::new(d[o], d[o + 1], d[o + 2], d[o + 3]);
        Some(DhcpMessage {
            op: d[0],
            htype: d[1],
            hlen: d[2],
            xid: u32::from_be_bytes(d[4..8].try_into().ok()?),
            secs: u16::from_be_bytes([d[8], d[9]]),
            flags: u16::from_be_bytes([d[10], d[11]]),
            ciaddr: ip(12),
            yiaddr: ip(16),
            siaddr: ip(20),
            giaddr: ip(24),
            chaddr: d[28..44].try_into().ok()?,
            options: options::parse(&d[BOOTP_FIXED + 4..])?,
        })
    }

    /// Serializes the message; `raw_options` is an already encoded options field (without END).
    pub fn emit(&self, raw_options: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; BOOTP_FIXED];
        d[0] = self.op;
        d[1] = self.htype;
        d[2] = self.hlen;
        d[4..8].copy_from_slice(&self.xid.to_be_bytes());
        d[8..10].copy_from_slice(&self.secs.to_be_bytes());
        d[10..12].copy_from_slice(&self.flags.to_be_bytes());
        d[12..16].copy_from_slice(&self.ciaddr.octets());
        d[16..20].copy_from_slice(&self.yiaddr.octets());
        d[20..24].copy_from_slice(&self.siaddr.octets());
        d[24..28].copy_from_slice(&self.giaddr.octets());
        d[28..44].copy_from_slice(&self.chaddr);
        d.extend_from_slice(&MAGIC);
        d.extend_from_slice(raw_options);
        d.push(options::code::END);
        if d.len() < MIN_BOOTP_LEN {
            d.resize(MIN_BOOTP_LEN, 0);
        }
        d
    }
}

/// A DHCP message with the addresses it travelled between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// IPv4 source.
    pub src_ip: Ipv4Addr,
    /// The DHCP message.
    pub msg: DhcpMessage,
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses an Ethernet frame carrying a DHCP message to the server port. The IPv4 header
/// checksum is verified; the UDP checksum is not, because frames from a virtio-net guest
/// with checksum offload carry a partial one.
pub fn parse_frame(f: &[u8]) -> Option<Frame> {
    if f.len() < ETH_HLEN + 20 || u16::from_be_bytes([f[12], f[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let src_mac = MacAddr(f[6..12].try_into().ok()?);
    let ip = &f[ETH_HLEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl + 8 || total > ip.len() {
        return None;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff; // MF flag or an offset
    if ip[9] != libc::IPPROTO_UDP as u8 || frag != 0 || checksum(&ip[..ihl], 0) != 0 {
        return None;
    }
    let udp = &ip[ihl..total];
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if u16::from_be_bytes([udp[2], udp[3]]) != SERVER_PORT || ulen < 8 || ulen > udp.len() {
        return None;
    }
    let msg = DhcpMessage::parse(&udp[8..ulen])?;
    Some(Frame {
        src_mac,
        src_ip: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        msg,
    })
}

/// Builds an Ethernet + IPv4 + UDP frame from the server port to the client port.
pub fn build_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(ETH_HLEN + total);
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0x10]); // IPv4, IHL 5, TOS low delay as DHCP servers send
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
    f.extend_from_slice(&[64, libc::IPPROTO_UDP as u8, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let csum = checksum(&f[ip_start..ip_start + 20], 0);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
    let udp_start = f.len();
    f.extend_from_slice(&SERVER_PORT.to_be_bytes());
    f.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    // Pseudo-header: addresses, protocol, UDP length.
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let partial = u32::from(!checksum(&pseudo, 0));
    let mut csum = checksum(&f[udp_start..], partial);
    if csum == 0 {
        csum = 0xffff; // 0 means "no checksum" in UDP
    }
    f[udp_start + 6..udp_start + 8].copy_from_slice(&csum.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let msg = DhcpMessage {
            op: 1,
            htype: 1,
            hlen: 6,
            xid: 7,
            ..Default::default()
        };
        let f = build_frame(
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr::BROADCAST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            &msg.emit(&[]),
        );
        assert_eq!(checksum(&f[14..34], 0), 0);
        // UDP: sum over pseudo-header + segment is 0xffff (complement 0).
        let mut pseudo = f[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&f[38..40]);
        assert_eq!(checksum(&f[34..], u32::from(!checksum(&pseudo, 0))), 0);
    }

    #[test]
    fn frames_to_the_server_port_round_trip() {
        let msg = DhcpMessage {
            op: 1,
            htype: 1,
            hlen: 6,
            xid: 0xdead,
            options: vec![(53, vec![1])],
            ..Default::default()
        };
        let mut f = build_frame(
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr::BROADCAST,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            &msg.emit(&[53, 1, 1]),
        );
        assert_eq!(parse_frame(&f), None, "client port, not the server's");
        f[34..36].copy_from_slice(&CLIENT_PORT.to_be_bytes());
        f[36..38].copy_from_slice(&SERVER_PORT.to_be_bytes());
        let p = parse_frame(&f).unwrap();
        assert_eq!(p.msg, msg);
        assert_eq!(p.src_mac, MacAddr([2, 0, 0, 0, 0, 1]));
        f.extend_from_slice(&[0; 20]); // Ethernet padding is allowed
        assert!(parse_frame(&f).is_some());
        f[22] ^= 1; // corrupt the TTL: IP header checksum fails
        assert_eq!(parse_frame(&f), None);
    }
}
