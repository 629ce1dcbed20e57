//! Unit tests of the responder: the state machine, every option, and a no-panic sweep over
//! random and mutated frames.

use super::*;
use crate::dhcp::wire::{CLIENT_PORT, SERVER_PORT};

const VM: MacAddr = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
const SERVER: MacAddr = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x54]);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn config() -> DhcpConfig {
    DhcpConfig {
        client_mac: VM,
        client_ip: ip("192.168.254.2"),
        server_ip: ip("192.168.254.1"),
        netmask: ip("255.255.255.252"),
        broadcast: ip("192.168.254.3"),
        router: ip("192.168.254.1"),
        dns: vec![
            ip("10.96.0.10"),
            ip("10.96.0.11"),
            ip("10.96.0.12"),
            ip("10.96.0.13"),
        ],
        search: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        hostname: "vm-0".into(),
        mtu: 1450,
    }
}

/// A client frame: 0.0.0.0:68 -> 255.255.255.255:67 (ports swapped by build_frame's order).
fn client_frame(
    mac: MacAddr,
    ty: MessageType,
    ciaddr: Ipv4Addr,
    extra: &[(u8, Vec<u8>)],
    flags: u16,
) -> Vec<u8> {
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&mac.0);
    let msg = DhcpMessage {
        op: 1,
        htype: 1,
        hlen: 6,
        xid: 0x1234_5678,
        flags,
        ciaddr,
        chaddr,
        ..Default::default()
    };
    let mut opts = Vec::new();
    options::put(&mut opts, code::MESSAGE_TYPE, &[ty as u8]);
    for (c, v) in extra {
        options::put(&mut opts, *c, v);
    }
    let mut f = build_frame(
        mac,
        MacAddr::BROADCAST,
        ciaddr,
        Ipv4Addr::BROADCAST,
        &msg.emit(&opts),
    );
    f[34..36].copy_from_slice(&CLIENT_PORT.to_be_bytes());
    f[36..38].copy_from_slice(&SERVER_PORT.to_be_bytes());
    f
}

/// A frame from the VM with only the message type option and no flags.
fn vm_frame(ty: MessageType, ciaddr: Ipv4Addr) -> Vec<u8> {
    client_frame(VM, ty, ciaddr, &[], 0)
}

/// Parses a reply frame (server -> client port) into (dst MAC, dst IP, message).
fn reply(f: &[u8]) -> (MacAddr, Ipv4Addr, DhcpMessage) {
    assert_eq!(&f[6..12], &SERVER.0);
    assert_eq!(u16::from_be_bytes([f[36], f[37]]), CLIENT_PORT);
    let dst_ip = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    (
        MacAddr(f[..6].try_into().unwrap()),
        dst_ip,
        DhcpMessage::parse(&f[42..]).unwrap(),
    )
}

fn msg_type(m: &DhcpMessage) -> u8 {
    m.option(code::MESSAGE_TYPE).unwrap()[0]
}

#[test]
fn discover_gets_an_offer_with_every_option() {
    let mut r = Responder::new(config(), SERVER);
    let out = r
        .handle(&vm_frame(MessageType::Discover, Ipv4Addr::UNSPECIFIED))
        .unwrap();
    let (dmac, dip, m) = reply(&out);
    assert_eq!(
        (dmac, dip),
        (VM, ip("192.168.254.2")),
        "unicast to the offered address"
    );
    assert_eq!(msg_type(&m), MessageType::Offer as u8);
    assert_eq!(
        (m.op, m.xid, m.yiaddr),
        (2, 0x1234_5678, ip("192.168.254.2"))
    );
    assert_eq!(m.option_ip(code::SERVER_ID), Some(ip("192.168.254.1")));
    assert_eq!(m.option_ip(code::SUBNET_MASK), Some(ip("255.255.255.252")));
    assert_eq!(m.option_ip(code::ROUTER), Some(ip("192.168.254.1")));
    assert_eq!(m.option_ip(code::BROADCAST), Some(ip("192.168.254.3")));
    let dns: Vec<Ipv4Addr> = m
        .option(code::DNS)
        .unwrap()
        .chunks(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect();
    assert_eq!(dns, config().dns, "all four DNS servers");
    assert_eq!(
        options::decode_search(m.option(code::DOMAIN_SEARCH).unwrap()).unwrap(),
        config().search
    );
    assert_eq!(
        m.option(code::DOMAIN_NAME).unwrap(),
        b"default.svc.cluster.local"
    );
    assert_eq!(m.option(code::HOSTNAME).unwrap(), b"vm-0");
    assert_eq!(m.option(code::MTU).unwrap(), &1450u16.to_be_bytes());
    for c in [code::LEASE_TIME, code::RENEWAL_TIME, code::REBINDING_TIME] {
        assert_eq!(m.option(c).unwrap(), &INFINITE.to_be_bytes());
    }
    assert_eq!(r.state(), LeaseState::Offered);
}

#[test]
fn broadcast_flag_gets_a_broadcast_reply() {
    let mut r = Responder::new(config(), SERVER);
    let out = r
        .handle(&client_frame(
            VM,
            MessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
            &[],
            0x8000,
        ))
        .unwrap();
    let (dmac, dip, _) = reply(&out);
    assert_eq!((dmac, dip), (MacAddr::BROADCAST, Ipv4Addr::BROADCAST));
}

#[test]
fn request_paths() {
    let mut r = Responder::new(config(), SERVER);
    let z = Ipv4Addr::UNSPECIFIED;
    let ours = (code::REQUESTED_IP, ip("192.168.254.2").octets().to_vec());
    let server = (code::SERVER_ID, ip("192.168.254.1").octets().to_vec());
    // SELECTING our offer.
    let (_, _, m) = reply(
        &r.handle(&client_frame(
            VM,
            MessageType::Request,
            z,
            &[ours.clone(), server.clone()],
            0,
        ))
        .unwrap(),
    );
    assert_eq!(msg_type(&m), MessageType::Ack as u8);
    assert_eq!(m.option(code::DNS).unwrap().len(), 16);
    assert_eq!(r.state(), LeaseState::Bound);
    // SELECTING another server's offer: silence.
    let other = (code::SERVER_ID, ip("10.9.9.9").octets().to_vec());
    assert_eq!(
        r.handle(&client_frame(
            VM,
            MessageType::Request,
            z,
            &[ours.clone(), other],
            0
        )),
        None
    );
    // INIT-REBOOT with a wrong address: broadcast NAK without lease options.
    let wrong = (code::REQUESTED_IP, ip("10.0.0.7").octets().to_vec());
    let (dmac, _, m) = reply(
        &r.handle(&client_frame(VM, MessageType::Request, z, &[wrong], 0))
            .unwrap(),
    );
    assert_eq!(
        (msg_type(&m), dmac),
        (MessageType::Nak as u8, MacAddr::BROADCAST)
    );
    assert_eq!((m.yiaddr, m.option(code::DNS)), (z, None));
    // RENEWING: ciaddr set, unicast to it.
    let (dmac, dip, m) = reply(
        &r.handle(&vm_frame(MessageType::Request, ip("192.168.254.2")))
            .unwrap(),
    );
    assert_eq!(
        (msg_type(&m), dmac, dip),
        (MessageType::Ack as u8, VM, ip("192.168.254.2"))
    );
    assert_eq!(m.ciaddr, ip("192.168.254.2"));
}

#[test]
fn inform_release_decline() {
    let mut r = Responder::new(config(), SERVER);
    let (_, dip, m) = reply(
        &r.handle(&vm_frame(MessageType::Inform, ip("192.168.254.2")))
            .unwrap(),
    );
    assert_eq!(
        (msg_type(&m), dip, m.yiaddr),
        (
            MessageType::Ack as u8,
            ip("192.168.254.2"),
            Ipv4Addr::UNSPECIFIED
        )
    );
    assert_eq!(
        m.option(code::LEASE_TIME),
        None,
        "no lease time in an INFORM answer"
    );
    assert!(m.option(code::DOMAIN_SEARCH).is_some());
    r.handle(&vm_frame(MessageType::Discover, Ipv4Addr::UNSPECIFIED));
    assert_eq!(
        r.handle(&vm_frame(MessageType::Decline, Ipv4Addr::UNSPECIFIED)),
        None
    );
    assert_eq!(r.state(), LeaseState::Declined);
    assert_eq!(
        r.handle(&vm_frame(MessageType::Release, ip("192.168.254.2"))),
        None
    );
    assert_eq!(r.state(), LeaseState::Free);
}

#[test]
fn other_clients_and_non_requests_are_ignored() {
    let mut r = Responder::new(config(), SERVER);
    let stranger = MacAddr([0x02, 0, 0, 0, 0, 9]);
    assert_eq!(
        r.handle(&client_frame(
            stranger,
            MessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
            &[],
            0
        )),
        None
    );
    assert_eq!(
        r.handle(&vm_frame(MessageType::Offer, Ipv4Addr::UNSPECIFIED)),
        None
    );
    let mut f = vm_frame(MessageType::Discover, Ipv4Addr::UNSPECIFIED);
    f[42] = 2; // BOOTREPLY
    assert_eq!(r.handle(&f), None);
    assert_eq!(r.state(), LeaseState::Free);
}

#[test]
fn minimal_config_omits_empty_options() {
    let cfg = DhcpConfig {
        dns: vec![],
        search: vec![],
        hostname: String::new(),
        ..config()
    };
    let mut r = Responder::new(cfg, SERVER);
    let (_, _, m) = reply(
        &r.handle(&vm_frame(MessageType::Discover, Ipv4Addr::UNSPECIFIED))
            .unwrap(),
    );
    for c in [
        code::DNS,
        code::DOMAIN_SEARCH,
        code::DOMAIN_NAME,
        code::HOSTNAME,
    ] {
        assert_eq!(m.option(c), None, "option {c}");
    }
    assert!(m.option(code::MTU).is_some());
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut r = Responder::new(config(), SERVER);
    let z = Ipv4Addr::UNSPECIFIED;
    let seeds: Vec<Vec<u8>> = [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
        MessageType::Release,
        MessageType::Decline,
    ]
    .into_iter()
    .map(|t| {
        client_frame(
            VM,
            t,
            z,
            &[
                (code::REQUESTED_IP, vec![192, 168, 254, 2]),
                (code::DOMAIN_SEARCH, vec![3, b'a', b'b', b'c', 0]),
            ],
            0,
        )
    })
    .collect();
    let mut answered = 0;
    for i in 0..20_000 {
        let frame = if i % 4 == 0 {
            let len = rng.below(700);
            (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            let mut f = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(8) {
                match rng.below(4) {
                    0 if !f.is_empty() => {
                        let p = rng.below(f.len());
                        f[p] = rng.next() as u8;
                    }
                    0 => {}
                    1 => f.truncate(rng.below(f.len() + 1)),
                    2 => {
                        // Mutate only the DHCP options so frames still pass the IP checks.
                        let p = 282 + rng.below(f.len().saturating_sub(282).max(1));
                        if p < f.len() {
                            f[p] = rng.next() as u8;
                        }
                    }
                    _ => f.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                }
            }
            f
        };
        if let Some(out) = r.handle(&frame) {
            answered += 1;
            // Whatever was answered must itself be a well-formed reply.
            let (_, _, m) = reply(&out);
            assert_eq!(m.op, 2);
        }
    }
    assert!(
        answered > 100,
        "mutations of valid requests should often still be answered: {answered}"
    );
}
