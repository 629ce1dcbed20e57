//! IPv6 namespace tests: a dual-stack and an IPv6-only pod namespace, berth's plumbing with
//! its router advertisements and DHCPv6 server, and a "vm" namespace that configures itself
//! like a guest: the kernel's SLAAC, rdisc6 (ndisc6) reading the advertisement, and
//! dhclient -6 and dhcpcd taking the DHCPv6 address. Needs root, `ip`, `nft`, rdisc6,
//! dhclient and dhcpcd (scripts/setup installs them).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use netplumb::{Dhcp6Server, MacAddr, NetConfig, PodNetwork};
use serde_json::Value;

/// What the peers' listeners bind to.
const ANY: &str = "::";
const CLIENT_IP6: &str = "2001:db8:1::1";
const POD_IP6: &str = "2001:db8:1::2";
const DNS6: &str = "fd00:96::10";
const VM_MAC: &str = "52:54:00:12:34:56";
/// The SLAAC (EUI-64) address of VM_MAC in the default VM /64: berth's default VM_IP6.
const VM_IP6: &str = "fd62:6572:7468:0:5054:ff:fe12:3456";

/// Adds IPv6 to a pod from [`Pod::with`]: 2001:db8:1::1/64 on the client, ::2 on the pod
/// (without DAD, as CNIs configure them), a default route, and an IPv6 nameserver first in
/// resolv.conf.
fn with_ipv6(pod: &Pod) {
    pod.client.ip(&[
        "addr",
        "add",
        &format!("{CLIENT_IP6}/64"),
        "dev",
        "c0",
        "nodad",
    ]);
    pod.pod.ip(&[
        "addr",
        "add",
        &format!("{POD_IP6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    pod.pod
        .ip(&["-6", "route", "add", "default", "via", CLIENT_IP6]);
    let text = std::fs::read_to_string(&pod.resolv).unwrap();
    std::fs::write(&pod.resolv, format!("nameserver {DNS6}\n{text}")).unwrap();
}

fn config(pod: &Pod) -> NetConfig {
    NetConfig {
        hostname: "vm6".into(),
        vm_mac: VM_MAC.parse::<MacAddr>().unwrap(),
        resolv_conf: pod.resolv.clone(),
        ..NetConfig::default()
    }
}

/// Polls `f` until it is true or `limit` passes.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The table nft itself writes from the documented text: the oracle for ours.
fn nft6_oracle() -> Value {
    let text = format!(
        "table ip6 berth {{\n chain antispoof {{\n  type filter hook prerouting priority raw; policy accept;\n  \
         iifname \"br0\" ip6 saddr :: return\n  \
         iifname \"br0\" ip6 saddr != fd62:6572:7468::/64 ip6 saddr != fe80::/10 drop\n  \
         iifname \"eth0\" ip6 saddr fd62:6572:7468::/64 drop\n }}\n \
         chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n  \
         ip6 daddr {POD_IP6} tcp dport 5900 return\n  ip6 daddr {POD_IP6} dnat to {VM_IP6}\n }}\n \
         chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  \
         ip6 saddr fd62:6572:7468::/64 snat to {POD_IP6}\n }}\n}}\n"
    );
    nft_json_of_text("ip6", &text)
}

/// Sets up berth in the pod, joins the VM side to the bridge and waits for the kernel's
/// SLAAC in the "vm" namespace to form VM_IP6 and the default route from berth's RA.
fn bring_up(pod: &Pod) -> (PodNetwork, Dhcp6Server, Netns) {
    let cfg = config(pod);
    let vm = pod.vm_side(VM_MAC);
    let c = cfg.clone();
    let (net, ra) = pod.pod.run(move || {
        let net = PodNetwork::setup(&c).unwrap();
        let ra = Dhcp6Server::spawn(&c.bridge, net.ipv6_config().unwrap()).unwrap();
        (net, ra)
    });
    assert_eq!(net.info().ip6.unwrap().to_string(), POD_IP6);
    pod.pod
        .ip(&["link", "set", "vmport", "master", "br0", "up"]);
    let ok = wait_for(Duration::from_secs(20), || {
        let a = vm.ip(&["-6", "addr", "show", "dev", "vmnic"]);
        let r = vm.ip(&["-6", "route", "show", "default"]);
        a.contains(VM_IP6) && !a.contains("tentative") && r.contains("via fe80::1")
    });
    assert!(
        ok,
        "SLAAC: {}\n{}",
        vm.ip(&["-6", "addr"]),
        vm.ip(&["-6", "route"])
    );
    (net, ra, vm)
}

/// rdisc6 reads the advertisement: prefix, MTU, flags, DNS servers, search list, source.
fn check_rdisc6(vm: &Netns) {
    let out = vm.exec(&["rdisc6", "-1", "-w", "3000", "vmnic"]);
    for want in [
        "Stateful address conf.    :          Yes",
        "Stateful other conf.      :          Yes",
        "Router lifetime           :         1800",
        "Prefix                   : fd62:6572:7468::/64",
        "MTU                      :         1450",
        &format!("Recursive DNS server     : {DNS6}"),
        "DNS search list          : default.svc.cluster.local svc.cluster.local cluster.local corp.example.com",
        "from fe80::1",
    ] {
        assert!(out.contains(want), "rdisc6 lacks {want:?}:\n{out}");
    }
    // The link MTU is what the guest's kernel took from the RA.
    let mtu = vm.exec(&["cat", "/proc/sys/net/ipv6/conf/vmnic/mtu"]);
    assert_eq!(mtu.trim(), "1450");
}

/// TCP and UDP to the pod's IPv6 address reach the VM (from the client's address), except
/// tcp/5900; the VM's outbound traffic leaves with the pod's IPv6 address.
fn check_nat(pod: &Pod, vm: &Netns) {
    vm.run(|| serve(ANY, "vm", &[22, 8080, 5900], &[5353]));
    pod.pod.run(|| serve(ANY, "pod", &[5900], &[]));
    let got = pod.client.run(|| {
        let p = POD_IP6;
        (
            tcp_get(&format!("[{p}]:22")).unwrap(),
            tcp_get(&format!("[{p}]:8080")).unwrap(),
            tcp_get(&format!("[{p}]:5900")).unwrap(),
            udp_get(&format!("[{p}]:5353")).unwrap(),
        )
    });
    assert_eq!(got.0, format!("vm:22:{CLIENT_IP6}"));
    assert_eq!(got.1, format!("vm:8080:{CLIENT_IP6}"));
    assert_eq!(
        got.2,
        format!("pod:5900:{CLIENT_IP6}"),
        "tcp/5900 stays in the pod"
    );
    assert_eq!(got.3 .0, format!("vm-udp:5353:{CLIENT_IP6}"));
    assert_eq!(
        got.3 .1.ip().to_string(),
        POD_IP6,
        "reply from the pod address"
    );
    pod.client.run(|| serve(ANY, "client", &[9000], &[9001]));
    let (tcp, udp) = vm.run(|| {
        (
            tcp_get(&format!("[{CLIENT_IP6}]:9000")).unwrap(),
            udp_get(&format!("[{CLIENT_IP6}]:9001")).unwrap().0,
        )
    });
    assert_eq!(tcp, format!("client:9000:{POD_IP6}"));
    assert_eq!(udp, format!("client-udp:9001:{POD_IP6}"));
}

/// dhclient runs its script with a clean environment: the dump path is written into it.
const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
env | grep -E '^(reason|new_)' | sort >> DUMP
exit 0
"#;

/// dhclient -6 takes the DHCPv6 address with the DNS servers and search list.
fn check_dhclient(vm: &Netns) {
    let dir = TempDir::new("dhc6");
    let script = dir.path("script");
    let dump = dir.path("dump");
    let text = DHCLIENT_SCRIPT.replace("DUMP", dump.to_str().unwrap());
    std::fs::write(&script, text).unwrap();
    run(&["chmod", "+x", script.to_str().unwrap()]);
    let (lf, pf) = (dir.path("leases"), dir.path("pid"));
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &vm.name, "dhclient", "-6", "-d", "-1"])
        .args(["-sf", script.to_str().unwrap()])
        .args(["-lf", lf.to_str().unwrap(), "-pf", pf.to_str().unwrap()])
        .arg("vmnic")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&dump).unwrap_or_default();
    let bound = wait_for(Duration::from_secs(20), || read().contains("reason=BOUND6"));
    // SAFETY: signals our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let text = read();
    assert!(bound, "dhclient -6 did not bind:\n{text}");
    for want in [
        format!("new_ip6_address={VM_IP6}"),
        format!("new_dhcp6_name_servers={DNS6}"),
        "new_dhcp6_domain_search=default.svc.cluster.local. svc.cluster.local. cluster.local. corp.example.com.".to_string(),
    ] {
        assert!(text.contains(&want), "dhclient lacks {want:?}:\n{text}");
    }
}

/// dhcpcd (what many images use) follows the RA's M flag to DHCPv6 and binds VM_IP6 with
/// the DNS servers and search list.
fn check_dhcpcd(vm: &Netns) {
    let dir = TempDir::new("dhcpcd");
    let script = dir.path("script");
    let dump = dir.path("dump");
    let text = DHCLIENT_SCRIPT.replace("DUMP", dump.to_str().unwrap());
    std::fs::write(&script, text).unwrap();
    run(&["chmod", "+x", script.to_str().unwrap()]);
    // In the foreground until it has bound (its oneshot mode exits after the RA alone).
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &vm.name, "dhcpcd", "-B", "-6", "-t", "20"])
        .args(["-f", "/dev/null", "-c", script.to_str().unwrap()])
        .args(["-o", "domain_name_servers", "-o", "domain_search", "vmnic"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&dump).unwrap_or_default();
    // REBOOT6 (Confirm, then the remembered lease) when /var/lib/dhcpcd holds one from
    // an earlier run, BOUND6 otherwise: both are a bound address.
    let bound = wait_for(Duration::from_secs(20), || {
        let t = read();
        t.contains("reason=BOUND6") || t.contains("reason=REBOOT6")
    });
    // SIGTERM, so that it stops its privilege-separation helpers too.
    // SAFETY: signals our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let text = read();
    let has = |w: &str| text.lines().any(|l| l.starts_with(w));
    assert!(bound, "dhcpcd did not bind:\n{text}");
    for want in [
        format!("new_dhcp6_ia_na1_ia_addr1={VM_IP6}"),
        format!("new_dhcp6_name_servers={DNS6}"),
        "new_dhcp6_domain_search=default.svc.cluster.local svc.cluster.local cluster.local corp.example.com".to_string(),
    ] {
        assert!(has(&want), "dhcpcd lacks {want:?}:\n{text}");
    }
}

#[test]
fn dual_stack_pod() {
    let pod = Pod::new();
    with_ipv6(&pod);
    let (net, ra, vm) = bring_up(&pod);
    assert_eq!(net.info().ip.unwrap().to_string(), POD_IP);
    assert_eq!(nft_json(&pod.pod, "ip6"), nft6_oracle());
    // Multicast snooping off, so the VM's DHCPv6 Solicits to ff02::1:2 reach berth's socket.
    let br: Value =
        serde_json::from_str(&pod.pod.ip(&["-d", "-j", "link", "show", "br0"])).unwrap();
    assert_eq!(br[0]["linkinfo"]["info_data"]["mcast_snooping"], 0);
    assert_eq!(
        pod.pod
            .exec(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
            .trim(),
        "1"
    );
    check_rdisc6(&vm);
    check_nat(&pod, &vm);
    check_dhclient(&vm);
    check_dhcpcd(&vm);
    assert!(ra.lease_bound(), "dhclient's Request was answered");
    drop(ra);
    drop(net);
    assert!(!pod.pod.exec_ok(&["nft", "list", "table", "ip6", "berth"]));
}

#[test]
fn ipv6_only_pod() {
    let pod = Pod::with(false, false);
    with_ipv6(&pod);
    let (net, _ra, vm) = bring_up(&pod);
    assert_eq!(net.info().ip, None);
    assert!(
        !pod.pod.exec_ok(&["nft", "list", "table", "ip", "berth"]),
        "no IPv4 table in an IPv6-only pod"
    );
    check_rdisc6(&vm);
    check_nat(&pod, &vm);
}

#[test]
fn no_ipv6_leaves_ipv6_alone() {
    let pod = Pod::new();
    with_ipv6(&pod);
    let cfg = NetConfig {
        no_ipv6: true,
        ..config(&pod)
    };
    let net = pod.pod.run(move || PodNetwork::setup(&cfg).unwrap());
    assert_eq!(net.info().ip6, None);
    assert!(net.ipv6_config().is_none());
    assert!(!pod.pod.exec_ok(&["nft", "list", "table", "ip6", "berth"]));
    assert!(pod.pod.exec_ok(&["nft", "list", "table", "ip", "berth"]));
}

#[test]
fn ipv6_choice_is_one_line() {
    // Only the kernel's link-local address on eth0: IPv4 only, and the line says why.
    let pod = Pod::new();
    let cfg = config(&pod);
    let net = pod.pod.run(move || PodNetwork::setup(&cfg).unwrap());
    assert_eq!(net.info().ip6, None);
    assert_eq!(
        net.info().ipv6_status,
        "ipv6: off: eth0: it has only a link-local IPv6 address"
    );
    drop(net);
    // Two global addresses: the oldest wins, the line names the other.
    with_ipv6(&pod);
    pod.pod
        .ip(&["addr", "add", "2001:db8:1::3/64", "dev", "eth0", "nodad"]);
    let cfg = config(&pod);
    let net = pod.pod.run(move || PodNetwork::setup(&cfg).unwrap());
    assert_eq!(net.info().ip6.unwrap().to_string(), POD_IP6);
    assert_eq!(
        net.info().ipv6_status,
        "ipv6: the VM takes over 2001:db8:1::2/64, the oldest of 2 global addresses on eth0 (not 2001:db8:1::3)"
    );
}

/// A guest soliciting as fast as it can gets at most one advertisement per 3 s (RFC 4861's
/// MIN_DELAY_BETWEEN_RAS), not one per solicitation.
#[test]
fn solicitation_flood_is_rate_limited() {
    let pod = Pod::new();
    with_ipv6(&pod);
    let (_net, _ra, vm) = bring_up(&pod);
    let (sent, ras) = vm.run(|| {
        // SAFETY: plain socket calls on a fresh AF_PACKET socket owned by this closure.
        unsafe {
            let proto = (libc::ETH_P_IPV6 as u16).to_be() as i32;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
            assert!(fd >= 0);
            let idx = libc::if_nametoindex(c"vmnic".as_ptr()) as i32;
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = idx;
            let sp = &sll as *const libc::sockaddr_ll as *const libc::sockaddr;
            let slen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            assert_eq!(libc::bind(fd, sp, slen), 0);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            let tp = &tv as *const libc::timeval as *const libc::c_void;
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tp, 16);
            // A router solicitation from the VM's MAC: :: to ff02::2, hop limit 255.
            let mac: MacAddr = VM_MAC.parse().unwrap();
            let mut f = vec![0x33, 0x33, 0, 0, 0, 2];
            f.extend_from_slice(&mac.0);
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 8, 58, 255]);
            f.extend_from_slice(&[0; 16]);
            f.extend_from_slice(&"ff02::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
            f.extend_from_slice(&[133, 0, 0, 0, 0, 0, 0, 0]);
            let start = Instant::now();
            let (mut sent, mut ras) = (0, 0);
            let mut buf = [0u8; 2048];
            while start.elapsed() < Duration::from_secs(4) {
                if libc::sendto(fd, f.as_ptr().cast(), f.len(), 0, sp, slen) > 0 {
                    sent += 1;
                }
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
                if n > 54 && buf[20] == 58 && buf[54] == 134 {
                    ras += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            libc::close(fd);
            (sent, ras)
        }
    });
    assert!(sent > 100, "{sent} solicitations sent");
    assert!(
        (1..=3).contains(&ras),
        "{ras} advertisements for {sent} solicitations in 4 s"
    );
}

/// UDP receiver in the current namespace reporting each datagram's source address.
fn udp6_sources(port: u16) -> std::sync::mpsc::Receiver<std::net::IpAddr> {
    let s = UdpSocket::bind(("::", port)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            if tx.send(from.ip()).is_err() {
                return;
            }
        }
    });
    rx
}

/// The IPv6 anti-spoofing rules: from the VM, only sources in its /64 leave the pod (as the
/// pod address); from the pod's network, nobody may claim the VM's /64.
#[test]
fn spoofed_ipv6_sources_do_not_leave_the_pod() {
    let pod = Pod::new();
    with_ipv6(&pod);
    let (_net, _ra, vm) = bring_up(&pod);
    // Two addresses the VM has no right to: a neighbour's on the pod network, one from nowhere.
    for a in ["2001:db8:1::77/128", "2001:db8:99::9/128"] {
        vm.ip(&["addr", "add", a, "dev", "vmnic", "nodad"]);
    }
    let got = pod.client.run(|| udp6_sources(9100));
    let to = format!("[{CLIENT_IP6}]:9100");
    for src in ["2001:db8:1::77", "2001:db8:99::9", VM_IP6] {
        let to = to.clone();
        vm.run(move || {
            let s = UdpSocket::bind((src, 0)).unwrap();
            s.send_to(b"x", to.as_str()).unwrap();
        });
    }
    assert_eq!(got.recv_timeout(T).unwrap().to_string(), POD_IP6);
    let late: Vec<_> =
        std::iter::from_fn(|| got.recv_timeout(Duration::from_millis(500)).ok()).collect();
    assert!(late.is_empty(), "spoofed packets left the pod: {late:?}");

    // From the cluster side, a packet claiming an address in the VM's /64, sent to the pod's
    // address (DNATed to the VM if it got through), never reaches the VM.
    let vm_got = vm.run(|| udp6_sources(5353));
    pod.client.run(|| {
        let s = UdpSocket::bind((CLIENT_IP6, 0)).unwrap();
        s.send_to(b"x", format!("[{POD_IP6}]:5353")).unwrap();
    });
    assert_eq!(vm_got.recv_timeout(T).unwrap().to_string(), CLIENT_IP6);
    pod.client.ip(&[
        "addr",
        "add",
        "fd62:6572:7468::99/128",
        "dev",
        "c0",
        "nodad",
    ]);
    pod.client.run(|| {
        let s = UdpSocket::bind(("fd62:6572:7468::99", 0)).unwrap();
        s.send_to(b"x", format!("[{POD_IP6}]:5353")).unwrap();
    });
    assert!(
        vm_got.recv_timeout(Duration::from_millis(500)).is_err(),
        "a packet claiming the VM's /64 reached it"
    );
}

#[test]
fn vm_prefix_inside_the_pod_network_is_refused() {
    let pod = Pod::new();
    with_ipv6(&pod);
    let cfg = NetConfig {
        vm_gw6: "2001:db8:1::1:1".parse().unwrap(),
        ..config(&pod)
    };
    let e = pod
        .pod
        .run(move || PodNetwork::setup(&cfg).err().map(|e| e.to_string()));
    let e = e.expect("setup must fail");
    assert!(
        e.starts_with(
            "VM_GW6's /64 (2001:db8:1::1:1/64) overlaps the pod's IPv6 network 2001:db8:1::2/64"
        ),
        "{e}"
    );
    // Nothing was built.
    assert!(!pod.pod.exec_ok(&["ip", "link", "show", "br0"]));
}
