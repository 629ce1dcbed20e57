//! Fuzzes the router advertisement and DHCPv6 responder over raw Ethernet frames, and the
//! DHCPv6 message parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netplumb::dhcp6::{msg, wire, Config6, Responder6};
use netplumb::MacAddr;

fn r_router() -> [u8; 16] {
    "fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
}

fuzz_target!(|data: &[u8]| {
    let ip = |s: &str| s.parse().unwrap();
    let cfg = Config6 {
        // A fixed client MAC that fuzz inputs can hit: bytes 6..12 of a frame.
        client_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
        client_ip: ip("fd62:6572:7468::2"),
        prefix: ip("fd62:6572:7468::"),
        router: ip("fe80::1"),
        dns: vec![ip("fd00::10"), ip("fd00::11")],
        search: vec!["svc.cluster.local".into(), "cluster.local".into()],
        mtu: 1450,
    };
    let mut r = Responder6::new(cfg, MacAddr([0x02, 0, 0, 0, 0, 2]));
    if let Some(reply) = r.handle(data) {
        // Every answer is IPv6 from the router; a DHCPv6 answer (UDP) parses as a message.
        assert_eq!(&reply[12..14], &[0x86, 0xdd]);
        assert_eq!(&reply[22..38], &r_router());
        if reply[20] == wire::NH_UDP {
            assert!(msg::Message::parse(&reply[62..]).is_some());
        }
    }
    let _ = msg::Message::parse(data);
});
