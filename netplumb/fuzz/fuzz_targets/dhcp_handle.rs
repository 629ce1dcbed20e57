//! Fuzzes the DHCP responder over raw Ethernet frames, and the parsers it uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netplumb::dhcp::{options, wire, DhcpConfig, Responder};
use netplumb::MacAddr;

fuzz_target!(|data: &[u8]| {
    let ip = |s: &str| s.parse().unwrap();
    let cfg = DhcpConfig {
        // A fixed client MAC that fuzz inputs can hit: bytes 6..12 and 70..76 of a frame.
        client_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
        client_ip: ip("192.168.254.2"),
        server_ip: ip("192.168.254.1"),
        netmask: ip("255.255.255.252"),
        broadcast: ip("192.168.254.3"),
        router: ip("192.168.254.1"),
        dns: vec![ip("10.96.0.10"), ip("10.96.0.11"), ip("10.96.0.12")],
        search: vec!["svc.cluster.local".into(), "cluster.local".into()],
        hostname: "fuzz".into(),
        mtu: 1450,
    };
    let mut r = Responder::new(cfg, MacAddr([0x02, 0, 0, 0, 0, 2]));
    if let Some(reply) = r.handle(data) {
        assert!(wire::DhcpMessage::parse(&reply[42..]).is_some());
    }
    let _ = wire::DhcpMessage::parse(data);
    let _ = options::decode_search(data);
});
