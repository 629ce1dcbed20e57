//! Namespace tests with real peers: a "client" namespace reaches the pod IP, berth's
//! plumbing runs in a "pod" namespace, and a "vm" namespace behind the bridge plays the VM
//! and takes its lease with busybox udhcpc. Needs root, `ip`, `nft` and busybox.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use netplumb::{DhcpServer, Error, MacAddr, NetConfig, PodNetwork};
use serde_json::Value;

/// What the peers' listeners bind to: IPv4 only, so peers show as IPv4 addresses.
const ANY: &str = "0.0.0.0";

fn config(pod: &Pod, hostname: &str) -> NetConfig {
    NetConfig {
        hostname: hostname.into(),
        vm_mac: MacAddr::from_hostname(hostname),
        resolv_conf: pod.resolv.clone(),
        ..NetConfig::default()
    }
}

fn reference_rules(pod_ip: &str, vm_ip: &str, keep_vnc: bool) -> String {
    let vnc = if keep_vnc {
        format!("ip daddr {pod_ip} tcp dport 5900 return\n")
    } else {
        String::new()
    };
    format!(
        "table ip berth {{\n chain antispoof {{\n  type filter hook prerouting priority raw; policy accept;\n  \
         iifname \"br0\" ip saddr 0.0.0.0 udp dport 67 return\n  iifname \"br0\" ip saddr != {vm_ip} drop\n  \
         iifname \"eth0\" ip saddr 192.168.254.0/30 drop\n }}\n chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n  {vnc}  ip daddr {pod_ip} dnat to {vm_ip}\n }}\n \
         chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr {vm_ip} snat to {pod_ip}\n }}\n}}\n"
    )
}

/// The same table written by the nft CLI from text, in a scratch namespace: the oracle.
fn nft_oracle(pod_ip: &str, vm_ip: &str, keep_vnc: bool) -> Value {
    nft_json_of_text("ip", &reference_rules(pod_ip, vm_ip, keep_vnc))
}

fn link_json(ns: &Netns, dev: &str) -> Option<Value> {
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-d", "-j", "link", "show", dev])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone())
}

fn assert_nothing_left(pod: &Netns, cfg: &NetConfig) {
    assert!(
        !pod.exec_ok(&["nft", "list", "table", "ip", "berth"]),
        "table left behind"
    );
    assert!(link_json(pod, &cfg.bridge).is_none(), "bridge left behind");
    assert!(link_json(pod, &cfg.tap).is_none(), "tap left behind");
}

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# Dumps every variable udhcpc exports (they are the lowercase ones), then configures the
# interface from the lease.
env | grep '^[a-z]' | sort > "$DUMP.$1"
if [ "$1" = bound ]; then
    ip addr add "$ip/$subnet" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip route add default via "$router" dev "$interface"
fi
exit 0
"#;

fn lease_vars(dump: &std::path::Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(dump)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

#[test]
fn vm_takes_over_the_pod_ip() {
    let pod = Pod::new();
    let cfg = config(&pod, "vm-test-0");
    let vm = pod.vm_side(&cfg.vm_mac.to_string());
    let c = cfg.clone();
    let (net, dhcp) = pod.pod.run(move || {
        let net = PodNetwork::setup(&c).unwrap();
        let dhcp = DhcpServer::spawn(&c.bridge, net.dhcp_config()).unwrap();
        (net, dhcp)
    });
    assert_eq!(net.info().ip.unwrap().to_string(), POD_IP);
    assert_eq!(net.info().mtu, 1450);

    // The tap: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, enslaved to the bridge, up.
    let tap = net.tap().unwrap();
    let flags = tap.flags().unwrap();
    use netplumb::tap::{IFF_NO_PI, IFF_TAP, IFF_VNET_HDR};
    assert_eq!(
        flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR),
        IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    );
    let j = link_json(&pod.pod, &cfg.tap).unwrap();
    assert_eq!(j["master"], "br0");
    assert_eq!(j["linkinfo"]["info_kind"], "tun");
    assert_eq!(j["linkinfo"]["info_data"]["type"], "tap");
    assert_eq!(j["linkinfo"]["info_data"]["pi"], false);
    assert_eq!(j["linkinfo"]["info_data"]["vnet_hdr"], true);
    assert_eq!(j["mtu"], 1450);
    let fd = net.tap_fd().unwrap();
    drop(fd); // a dup for the VMM; closing it keeps the tap
    assert!(link_json(&pod.pod, &cfg.tap).is_some());
    // The bridge holds VM_GW/30.
    let br = link_json(&pod.pod, "br0").unwrap();
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(br["address"], cfg.vm_mac.bridge_mac().to_string());
    let addrs = pod.pod.ip(&["-4", "-j", "addr", "show", "br0"]);
    assert!(
        addrs.contains("\"local\":\"192.168.254.1\",\"prefixlen\":30"),
        "{addrs}"
    );
    assert_eq!(
        pod.pod
            .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );
    // The NAT table, as nft itself would build it from text.
    assert_eq!(
        nft_json(&pod.pod, "ip"),
        nft_oracle(POD_IP, "192.168.254.2", true)
    );

    // The VM side joins the bridge and takes its lease with a real DHCP client.
    pod.pod
        .ip(&["link", "set", "vmport", "master", "br0", "up"]);
    let dir = TempDir::new("dhcp");
    let script = dir.path("script");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    run(&["chmod", "+x", script.to_str().unwrap()]);
    let dump = dir.path("lease");
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &vm.name, "busybox", "udhcpc", "-i", "vmnic", "-f", "-q", "-n", "-t",
            "10", "-T", "2",
        ])
        .args([
            "-O",
            "search",
            "-O",
            "mtu",
            "-O",
            "broadcast",
            "-s",
            script.to_str().unwrap(),
        ])
        .env("DUMP", &dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "udhcpc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lease = lease_vars(&dump.with_extension("bound"));
    let want = [
        ("ip", "192.168.254.2"),
        ("subnet", "255.255.255.252"),
        ("router", "192.168.254.1"),
        ("broadcast", "192.168.254.3"),
        ("serverid", "192.168.254.1"),
        ("dns", &NAMESERVERS.join(" ")),
        ("search", &SEARCH.join(" ")),
        ("domain", SEARCH[0]),
        ("hostname", "vm-test-0"),
        ("mtu", "1450"),
        ("lease", "4294967295"),
        ("opt58", "ffffffff"),
        ("opt59", "ffffffff"),
    ];
    for (k, v) in want {
        assert_eq!(
            lease.get(k).map(String::as_str),
            Some(v),
            "option {k}; lease: {lease:?}"
        );
    }
    assert_eq!(link_json(&vm, "vmnic").unwrap()["mtu"], 1450);

    // Inbound: any port, TCP and UDP, reaches the VM; tcp/5900 stays in the pod.
    vm.run(|| serve(ANY, "vm", &[22, 8080, 5900], &[5353, 5900]));
    pod.pod.run(|| serve(ANY, "pod", &[5900], &[]));
    let from_client = pod.client.run(|| {
        let p = POD_IP;
        (
            tcp_get(&format!("{p}:22")).unwrap(),
            tcp_get(&format!("{p}:8080")).unwrap(),
            tcp_get(&format!("{p}:5900")).unwrap(),
            udp_get(&format!("{p}:5353")).unwrap(),
            udp_get(&format!("{p}:5900")).unwrap(),
        )
    });
    assert_eq!(from_client.0, format!("vm:22:{CLIENT_IP}"));
    assert_eq!(from_client.1, format!("vm:8080:{CLIENT_IP}"));
    assert_eq!(
        from_client.2, "pod:5900:10.213.0.1",
        "tcp/5900 must stay in the pod for VNC"
    );
    assert_eq!(from_client.3 .0, format!("vm-udp:5353:{CLIENT_IP}"));
    assert_eq!(
        from_client.3 .1.to_string(),
        format!("{POD_IP}:5353"),
        "reply comes from the pod IP"
    );
    assert_eq!(
        from_client.4 .0,
        format!("vm-udp:5900:{CLIENT_IP}"),
        "only tcp/5900 is kept"
    );

    // Outbound: the VM's traffic reaches the client with the pod IP as its source.
    pod.client.run(|| serve(ANY, "client", &[9000], &[9001]));
    let (tcp, udp) = vm.run(|| {
        (
            tcp_get(&format!("{CLIENT_IP}:9000")).unwrap(),
            udp_get(&format!("{CLIENT_IP}:9001")).unwrap().0,
        )
    });
    assert_eq!(tcp, format!("client:9000:{POD_IP}"));
    assert_eq!(udp, format!("client-udp:9001:{POD_IP}"));

    // Teardown leaves nothing behind; the test's own veth survives.
    dhcp.stop();
    let mut net = net;
    net.teardown().unwrap();
    net.teardown().unwrap(); // idempotent
    drop(net);
    assert_nothing_left(&pod.pod, &cfg);
    assert!(link_json(&pod.pod, "vmport").is_some());
    assert!(pod
        .client
        .run(|| tcp_get(&format!("{POD_IP}:8080")))
        .is_err());
}

/// UDP receivers in the current namespace that report each datagram's source address.
fn udp_sources(port: u16) -> std::sync::mpsc::Receiver<std::net::IpAddr> {
    let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
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

/// Sends one datagram from `src` (an address of the current namespace) to `dst`.
fn udp_from(src: &str, dst: &str) {
    let s = UdpSocket::bind((src, 0)).unwrap();
    s.send_to(b"x", dst).unwrap();
}

#[test]
fn spoofed_sources_do_not_leave_the_pod() {
    let pod = Pod::new();
    let cfg = config(&pod, "vm-spoof-0");
    let vm = pod.vm_side(&cfg.vm_mac.to_string());
    let c = cfg.clone();
    let net = pod.pod.run(move || PodNetwork::setup(&c).unwrap());
    pod.pod
        .ip(&["link", "set", "vmport", "master", "br0", "up"]);
    // The VM with its own address, plus two it has no right to: a neighbour's on the pod
    // network, and one from nowhere.
    vm.ip(&["addr", "add", "192.168.254.2/30", "dev", "vmnic"]);
    vm.ip(&["addr", "add", "10.213.0.77/32", "dev", "vmnic"]);
    vm.ip(&["addr", "add", "198.51.100.9/32", "dev", "vmnic"]);
    vm.ip(&["route", "add", "default", "via", "192.168.254.1"]);
    let got = pod.client.run(|| udp_sources(9100));
    let to = format!("{CLIENT_IP}:9100");
    for src in ["10.213.0.77", "198.51.100.9", "192.168.254.2"] {
        let to = to.clone();
        vm.run(move || udp_from(src, &to));
    }
    // The honest one arrives (as the pod IP, after SNAT); the forged ones never do.
    assert_eq!(got.recv_timeout(T).unwrap().to_string(), POD_IP);
    let late: Vec<_> =
        std::iter::from_fn(|| got.recv_timeout(Duration::from_millis(500)).ok()).collect();
    assert!(late.is_empty(), "spoofed packets left the pod: {late:?}");
    // Forged packets to the pod itself (to berth's own sockets) are dropped too.
    let pod_got = pod.pod.run(|| udp_sources(9101));
    vm.run(|| udp_from("198.51.100.9", "192.168.254.1:9101"));
    vm.run(|| udp_from("192.168.254.2", "192.168.254.1:9101"));
    assert_eq!(
        pod_got.recv_timeout(T).unwrap().to_string(),
        "192.168.254.2"
    );
    assert!(pod_got.recv_timeout(Duration::from_millis(300)).is_err());

    // The pod side's reverse-path check: a packet from the cluster claiming the VM's address
    // is dropped at the pod interface (before, it was DNATed on to the VM). The VM namespace
    // is told to accept packets from its own address, so only the pod can stop this one.
    assert_eq!(
        pod.pod
            .exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"])
            .trim(),
        "1"
    );
    vm.exec(&["sysctl", "-qw", "net.ipv4.conf.vmnic.accept_local=1"]);
    vm.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
    vm.exec(&["sysctl", "-qw", "net.ipv4.conf.vmnic.rp_filter=0"]);
    let vm_got = vm.run(|| udp_sources(5353));
    pod.client
        .ip(&["addr", "add", "192.168.254.2/32", "dev", "c0"]);
    let p = format!("{POD_IP}:5353");
    // First an honest packet (it arrives), then the forged one: once with the pod's strict
    // rp_filter, once with `all` loose (2), as many nodes set it, where only the nftables rule
    // holds.
    pod.client.run({
        let p = p.clone();
        move || udp_from(CLIENT_IP, &p)
    });
    assert_eq!(vm_got.recv_timeout(T).unwrap().to_string(), CLIENT_IP);
    for all in ["0", "2"] {
        pod.pod.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.all.rp_filter={all}"),
        ]);
        let p = p.clone();
        pod.client.run(move || udp_from("192.168.254.2", &p));
        assert!(
            vm_got.recv_timeout(Duration::from_millis(500)).is_err(),
            "a packet claiming the VM's address reached it (all.rp_filter={all})"
        );
    }
    drop(net);
}

#[test]
fn no_vnc_forwards_tcp_5900_too() {
    let pod = Pod::new();
    let cfg = NetConfig {
        no_vnc: true,
        ..config(&pod, "vm-novnc")
    };
    let vm = pod.vm_side(&cfg.vm_mac.to_string());
    let c = cfg.clone();
    let net = pod.pod.run(move || PodNetwork::setup(&c).unwrap());
    assert_eq!(
        nft_json(&pod.pod, "ip"),
        nft_oracle(POD_IP, "192.168.254.2", false)
    );
    pod.pod
        .ip(&["link", "set", "vmport", "master", "br0", "up"]);
    // A statically configured VM (NO_DHCP style).
    vm.ip(&["addr", "add", "192.168.254.2/30", "dev", "vmnic"]);
    vm.ip(&["route", "add", "default", "via", "192.168.254.1"]);
    vm.run(|| serve(ANY, "vm", &[5900], &[]));
    pod.pod.run(|| serve(ANY, "pod", &[5900], &[]));
    let got = pod
        .client
        .run(|| tcp_get(&format!("{POD_IP}:5900")).unwrap());
    assert_eq!(got, format!("vm:5900:{CLIENT_IP}"));
    drop(net); // Drop tears down
    assert_nothing_left(&pod.pod, &cfg);
}

#[test]
fn setup_replaces_leftovers_of_a_killed_berth() {
    let pod = Pod::new();
    let cfg = config(&pod, "vm-restart");
    // What a SIGKILLed berth might leave: a bridge, a persistent tap, an old table.
    pod.pod.ip(&["link", "add", "br0", "type", "bridge"]);
    pod.pod
        .ip(&["tuntap", "add", "dev", &cfg.tap, "mode", "tap"]);
    let dir = TempDir::new("old");
    let old = dir.path("old.nft");
    std::fs::write(&old, reference_rules("10.9.9.9", "192.168.254.2", false)).unwrap();
    pod.pod.exec(&["nft", "-f", old.to_str().unwrap()]);
    let c = cfg.clone();
    let net = pod.pod.run(move || PodNetwork::setup(&c).unwrap());
    assert_eq!(
        nft_json(&pod.pod, "ip"),
        nft_oracle(POD_IP, "192.168.254.2", true)
    );
    assert_eq!(
        link_json(&pod.pod, &cfg.tap).unwrap()["linkinfo"]["info_data"]["vnet_hdr"],
        true
    );
    // A second berth in the same pod (a restart before the first one's teardown).
    let c = cfg.clone();
    let net2 = pod.pod.run(move || PodNetwork::setup(&c).unwrap());
    assert_eq!(
        nft_json(&pod.pod, "ip"),
        nft_oracle(POD_IP, "192.168.254.2", true)
    );
    drop(net2);
    drop(net);
    assert_nothing_left(&pod.pod, &cfg);
}

#[test]
fn broken_pods_give_one_error_each() {
    let no_addr = Pod::with(false, false);
    let c = config(&no_addr, "x");
    let e = no_addr
        .pod
        .run(move || PodNetwork::setup(&c).err().unwrap());
    assert!(matches!(e, Error::NoPodIpv4 { .. }), "{e}");

    let no_route = Pod::with(true, false);
    let c = config(&no_route, "x");
    let e = no_route
        .pod
        .run(move || PodNetwork::setup(&c).err().unwrap());
    assert!(matches!(e, Error::NoDefaultRoute), "{e}");

    let pod = Pod::new();
    let c = NetConfig {
        pod_iface: "eth9".into(),
        ..config(&pod, "x")
    };
    let e = pod.pod.run(move || PodNetwork::setup(&c).err().unwrap());
    assert!(matches!(e, Error::NoPodInterface { .. }), "{e}");

    let c = NetConfig {
        resolv_conf: pod.dir.path("missing.conf"),
        ..config(&pod, "x")
    };
    let e = pod.pod.run(move || PodNetwork::setup(&c).err().unwrap());
    assert!(matches!(e, Error::ResolvConf { .. }), "{e}");

    // No tun device: fails after the bridge exists, which must be cleaned up again.
    let c = NetConfig {
        tun_device: "/nonexistent/tun".into(),
        ..config(&pod, "x")
    };
    let c2 = c.clone();
    let e = pod.pod.run(move || PodNetwork::setup(&c2).err().unwrap());
    assert!(matches!(e, Error::NoTunDevice { .. }), "{e}");
    assert_nothing_left(&pod.pod, &c);

    // Without CAP_NET_ADMIN (dropped from this thread's effective set).
    let c = config(&pod, "x");
    let e = pod.pod.run(move || {
        drop_cap_net_admin();
        PodNetwork::setup(&c).err().unwrap()
    });
    assert!(matches!(e, Error::NoNetAdmin { .. }), "{e}");
    assert!(e.to_string().contains("NET_ADMIN"));
}

/// Clears CAP_NET_ADMIN from the calling thread's effective capabilities.
fn drop_cap_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the ABI requires.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
        d[0].effective &= !(1 << 12); // CAP_NET_ADMIN
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
    }
}
