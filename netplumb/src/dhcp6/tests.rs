use super::*;
use wire::SERVER_PORT;

const VM: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const BR: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57]);

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn cfg() -> Config6 {
    Config6 {
        client_mac: VM,
        client_ip: ip("fd62:6572:7468:0:5054:ff:fe12:3456"),
        prefix: ip("fd62:6572:7468::"),
        router: ROUTER_LL,
        dns: vec![ip("fd00::10"), ip("fd00::11")],
        search: vec!["svc.cluster.local".into(), "cluster.local".into()],
        mtu: 1450,
    }
}

fn rs(hop_limit: u8) -> Vec<u8> {
    let mut f = build_icmp(
        VM,
        multicast_mac(ip("ff02::2")),
        ip("fe80::5054:ff:fe12:3456"),
        ip("ff02::2"),
        ICMP_RS,
        &[0; 4],
    );
    f[21] = hop_limit;
    f
}

fn dhcp_frame(from: MacAddr, msg: &[u8]) -> Vec<u8> {
    // A client's datagram: from port 546 to 547 (build_udp writes 547 as the source; the
    // responder only reads the destination, so swap them).
    let mut f = build_udp(
        from,
        multicast_mac(ip("ff02::1:2")),
        ip("fe80::5054:ff:fe12:3456"),
        ip("ff02::1:2"),
        SERVER_PORT,
        msg,
    );
    f[54..56].copy_from_slice(&546u16.to_be_bytes());
    f
}

fn client_msg(t: u8, extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![t, 0xab, 0xcd, 0xef];
    put(
        &mut m,
        opt::CLIENTID,
        &[0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56],
    );
    for (c, v) in extra {
        put(&mut m, *c, v);
    }
    m
}

fn ia_na(iaid: u32) -> (u16, Vec<u8>) {
    let mut v = iaid.to_be_bytes().to_vec();
    v.extend_from_slice(&[0; 8]);
    (opt::IA_NA, v)
}

/// The DHCPv6 message inside a reply frame.
fn reply_msg(f: &[u8]) -> Vec<u8> {
    assert_eq!(u16::from_be_bytes([f[54], f[55]]), 547);
    assert_eq!(u16::from_be_bytes([f[56], f[57]]), 546);
    f[62..].to_vec()
}

fn ia_addr(m: &Message) -> Option<Ipv6Addr> {
    let ia = m.option(opt::IA_NA)?;
    let opts = msg::parse_options(&ia[12..])?;
    let a = opts.iter().find(|(c, _)| *c == opt::IAADDR)?.1;
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).unwrap()))
}

#[test]
fn solicitation_gets_a_full_advertisement() {
    let mut r = Responder6::new(cfg(), BR);
    let f = r.handle(&rs(255)).expect("an RA");
    assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    let p = parse_frame(&f).unwrap();
    assert_eq!((p.src_ip, p.dst_ip), (ROUTER_LL, ip("ff02::1")));
    let Packet::Icmp {
        ty,
        hop_limit,
        body,
        ..
    } = p.packet
    else {
        panic!()
    };
    assert_eq!((ty, hop_limit), (ICMP_RA, 255));
    assert_eq!(body[1], 0xc0, "M and O flags");
    assert_eq!(u16::from_be_bytes([body[2], body[3]]), RA_LIFETIME);
    // Walk the options: type -> value.
    let mut opts = std::collections::HashMap::new();
    let mut o = &body[12..];
    while !o.is_empty() {
        let len = usize::from(o[1]) * 8;
        opts.insert(o[0], o[2..len].to_vec());
        o = &o[len..];
    }
    assert_eq!(opts[&1], BR.0);
    assert_eq!(opts[&5][2..], 1450u32.to_be_bytes());
    let pi = &opts[&3];
    assert_eq!((pi[0], pi[1]), (64, 0xc0));
    assert_eq!(pi[14..30], ip("fd62:6572:7468::").octets());
    assert_eq!(opts[&25][6..22], ip("fd00::10").octets());
    assert_eq!(opts[&25][22..38], ip("fd00::11").octets());
    assert!(opts[&31][6..].starts_with(b"\x03svc\x07cluster\x05local\x00\x07cluster\x05local\x00"));
    // Off-link solicitations (hop limit below 255) are invalid.
    assert!(r.handle(&rs(64)).is_none());
    assert_eq!(r.advertisement(), f);
}

#[test]
fn solicit_request_renew_rebind() {
    let mut r = Responder6::new(cfg(), BR);
    let adv = r
        .handle(&dhcp_frame(VM, &client_msg(ty::SOLICIT, &[ia_na(7)])))
        .unwrap();
    assert_eq!(&adv[..6], &VM.0, "unicast to the client's MAC");
    let adv = reply_msg(&adv);
    let m = Message::parse(&adv).unwrap();
    assert_eq!((m.ty, m.xid), (ty::ADVERTISE, [0xab, 0xcd, 0xef]));
    assert_eq!(ia_addr(&m), Some(cfg().client_ip));
    assert_eq!(m.option(opt::PREFERENCE), Some(&[255][..]));
    assert_eq!(m.option(opt::DNS_SERVERS).unwrap().len(), 32);
    assert_eq!(r.binding(), Binding::Advertised);
    let server_id = m.option(opt::SERVERID).unwrap().to_vec();
    assert_eq!(server_id, [0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x57]);
    // A Request for another server is not ours.
    let other = (opt::SERVERID, vec![0, 3, 0, 1, 1, 2, 3, 4, 5, 6]);
    assert!(r
        .handle(&dhcp_frame(
            VM,
            &client_msg(ty::REQUEST, &[ia_na(7), other])
        ))
        .is_none());
    for t in [ty::REQUEST, ty::RENEW] {
        let req = client_msg(t, &[ia_na(7), (opt::SERVERID, server_id.clone())]);
        let rep = reply_msg(&r.handle(&dhcp_frame(VM, &req)).unwrap());
        let m = Message::parse(&rep).unwrap();
        assert_eq!(m.ty, ty::REPLY);
        assert_eq!(ia_addr(&m), Some(cfg().client_ip));
        assert_eq!(r.binding(), Binding::Bound);
    }
    let rep = reply_msg(
        &r.handle(&dhcp_frame(VM, &client_msg(ty::REBIND, &[ia_na(7)])))
            .unwrap(),
    );
    assert_eq!(
        ia_addr(&Message::parse(&rep).unwrap()),
        Some(cfg().client_ip)
    );
    let rel = client_msg(ty::RELEASE, &[ia_na(7), (opt::SERVERID, server_id)]);
    assert!(r.handle(&dhcp_frame(VM, &rel)).is_some());
    assert_eq!(r.binding(), Binding::Free);
}

#[test]
fn rapid_commit_information_request_confirm_and_strangers() {
    let mut r = Responder6::new(cfg(), BR);
    let sol = client_msg(
        ty::SOLICIT,
        &[ia_na(1), ia_na(2), (opt::RAPID_COMMIT, vec![])],
    );
    let rep = reply_msg(&r.handle(&dhcp_frame(VM, &sol)).unwrap());
    let m = Message::parse(&rep).unwrap();
    assert_eq!(m.ty, ty::REPLY);
    assert!(m.option(opt::RAPID_COMMIT).is_some());
    assert_eq!(
        m.all(opt::IA_NA).count(),
        2,
        "the second IA gets NoAddrsAvail"
    );
    assert_eq!(r.binding(), Binding::Bound);

    let info = reply_msg(
        &r.handle(&dhcp_frame(VM, &client_msg(ty::INFORMATION_REQUEST, &[])))
            .unwrap(),
    );
    let m = Message::parse(&info).unwrap();
    assert!(m.option(opt::IA_NA).is_none());
    assert_eq!(
        m.option(opt::DOMAIN_LIST).unwrap(),
        b"\x03svc\x07cluster\x05local\x00\x07cluster\x05local\x00"
    );

    let confirm = |addr: &str| {
        let mut ia = 9u32.to_be_bytes().to_vec();
        ia.extend_from_slice(&[0; 8]);
        let mut a = ip(addr).octets().to_vec();
        a.extend_from_slice(&[0; 8]);
        put(&mut ia, opt::IAADDR, &a);
        client_msg(ty::CONFIRM, &[(opt::IA_NA, ia)])
    };
    for (addr, code) in [("fd62:6572:7468::99", 0u16), ("2001:db8::1", 4)] {
        let rep = reply_msg(&r.handle(&dhcp_frame(VM, &confirm(addr))).unwrap());
        let m = Message::parse(&rep).unwrap();
        let st = m.option(opt::STATUS_CODE).unwrap();
        assert_eq!(u16::from_be_bytes([st[0], st[1]]), code, "{addr}");
    }

    // Another MAC on the link, a message without client id, garbage: no answer.
    let stranger = MacAddr([2, 0, 0, 0, 0, 9]);
    assert!(r.handle(&dhcp_frame(stranger, &sol)).is_none());
    assert!(r.handle(&dhcp_frame(VM, &[ty::SOLICIT, 0, 0, 0])).is_none());
    assert!(r
        .handle(&dhcp_frame(VM, &[ty::SOLICIT, 0, 0, 0, 0, 1, 0, 9]))
        .is_none());
    assert!(r.handle(&[0; 10]).is_none());
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

/// The stable stand-in for the fuzz target: random frames and mutations of valid ones never
/// panic, and whatever is answered is a well-formed frame from the router.
#[test]
fn random_and_mutated_frames_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut r = Responder6::new(cfg(), BR);
    let server_id = (
        opt::SERVERID,
        vec![0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x57],
    );
    let mut seeds = vec![rs(255)];
    for (t, extra) in [
        (ty::SOLICIT, vec![ia_na(1), (opt::RAPID_COMMIT, vec![])]),
        (ty::REQUEST, vec![ia_na(1), server_id.clone()]),
        (ty::RENEW, vec![ia_na(1), server_id.clone()]),
        (ty::REBIND, vec![ia_na(1), (opt::IA_PD, vec![0; 12])]),
        (ty::CONFIRM, vec![ia_na(1)]),
        (ty::INFORMATION_REQUEST, vec![]),
        (ty::DECLINE, vec![ia_na(1), server_id.clone()]),
    ] {
        seeds.push(dhcp_frame(VM, &client_msg(t, &extra)));
    }
    let mut answered = 0;
    for i in 0..20_000 {
        let frame = if i % 4 == 0 {
            let len = rng.below(400);
            (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            let mut f = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(8) {
                match rng.below(4) {
                    0 => {
                        let p = rng.below(f.len());
                        if p < f.len() {
                            f[p] = rng.next() as u8;
                        }
                    }
                    1 => f.truncate(rng.below(f.len() + 1)),
                    2 => {
                        // Only the DHCPv6 message, so frames still pass the framing checks.
                        let p = 62 + rng.below(f.len().saturating_sub(62).max(1));
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
            assert_eq!(&out[22..38], &ROUTER_LL.octets());
            if out[20] == wire::NH_UDP {
                assert!(Message::parse(&out[62..]).is_some());
            }
        }
    }
    assert!(
        answered > 100,
        "mutations of valid requests are often answered: {answered}"
    );
}
