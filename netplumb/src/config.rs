//! The network configuration berth's entrypoint hands to [`crate::PodNetwork::setup`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::{MacAddr, MacParseError};

/// Default address the VM gets by DHCP.
pub const DEFAULT_VM_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 254, 2);
/// Default address of the bridge, the VM's gateway.
pub const DEFAULT_VM_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 254, 1);
/// The VM link's IPv6 /64: a unique local prefix whose 40-bit global id spells "berth" in
/// ASCII (62 65 72 74 68), so it is recognisable in a guest's `ip -6 addr`.
pub const DEFAULT_VM_NET6: Ipv6Addr = Ipv6Addr::new(0xfd62, 0x6572, 0x7468, 0, 0, 0, 0, 0);
/// Default IPv6 address of the bridge (`VM_GW6`), the VM's DNS-free router and DHCPv6 server.
pub const DEFAULT_VM_GW6: Ipv6Addr = Ipv6Addr::new(0xfd62, 0x6572, 0x7468, 0, 0, 0, 0, 1);
/// The TCP port kept in the pod for berth's VNC server unless `NO_VNC` is set.
pub const VNC_PORT: u16 = 5900;

/// How berth wires the VM into the pod's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The VM's address (`VM_IP`).
    pub vm_ip: Ipv4Addr,
    /// The bridge's address and the VM's default gateway (`VM_GW`); same /30 as `vm_ip`.
    pub vm_gw: Ipv4Addr,
    /// `NO_VNC`: DNAT tcp/5900 to the VM too instead of keeping it for berth's VNC server.
    pub no_vnc: bool,
    /// `NO_DHCP`: do not run the DHCP responder, nor router advertisements and DHCPv6.
    pub no_dhcp: bool,
    /// More TCP ports on the pod IP kept in the pod for berth's own servers (the metrics
    /// endpoint) instead of forwarded to the VM.
    pub keep_ports: Vec<u16>,
    /// `NO_IPV6`: leave the pod's IPv6 side alone (no IPv6 for the VM).
    pub no_ipv6: bool,
    /// The VM's IPv6 address (`VM_IP6`); `None`: the SLAAC (EUI-64) address of `vm_mac` in
    /// `vm_gw6`'s /64, see [`NetConfig::vm_ip6`].
    pub vm_ip6: Option<Ipv6Addr>,
    /// The bridge's IPv6 address (`VM_GW6`); its /64 is the VM link's prefix.
    pub vm_gw6: Ipv6Addr,
    /// The VM NIC's MAC (`VM_MAC`, else derived from the hostname).
    pub vm_mac: MacAddr,
    /// The hostname handed to the VM (DHCP option 12); empty means none is sent.
    pub hostname: String,
    /// The pod's interface whose IPv4 address the VM takes over.
    pub pod_iface: String,
    /// The resolv.conf whose nameservers and search list the VM gets.
    pub resolv_conf: PathBuf,
    /// The bridge's name.
    pub bridge: String,
    /// The tap's name.
    pub tap: String,
    /// The tun clone device.
    pub tun_device: PathBuf,
    /// Queues of the tap, one per virtio-net queue pair (IFF_MULTI_QUEUE when more than one);
    /// set by berth from the vCPU count and BERTH_NET_QUEUES, not read from the environment here.
    pub tap_queues: u16,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            vm_ip: DEFAULT_VM_IP,
            vm_gw: DEFAULT_VM_GW,
            no_vnc: false,
            no_dhcp: false,
            keep_ports: Vec::new(),
            no_ipv6: false,
            vm_ip6: None,
            vm_gw6: DEFAULT_VM_GW6,
            vm_mac: MacAddr::from_hostname(""),
            hostname: String::new(),
            pod_iface: "eth0".into(),
            resolv_conf: "/etc/resolv.conf".into(),
            bridge: "br0".into(),
            tap: "berthtap0".into(),
            tun_device: "/dev/net/tun".into(),
            tap_queues: 1,
        }
    }
}

/// The environment berth's entrypoint reads, with the contract's rules for a variable: one
/// snapshot serves [`NetConfig::from_env_map`] and the `berth` binary's pod configuration.
///
/// Built from `std::env::vars().collect()`, or in tests from an array of pairs
/// (`Env::from([("HOSTNAME", "vm-0")])`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The value of `name` exactly as set; `None` when unset or empty.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value of `name` without surrounding white space; `None` when unset or blank.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// True when a flag variable such as `NO_VNC` is set. The original tested
    /// `[ -n "$NO_VNC" ]`, so any non-empty value (even "0") turns it on.
    pub fn flag(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(vars: I) -> Env {
        Env(vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Env {
    fn from(vars: [(K, V); N]) -> Env {
        vars.into_iter().collect()
    }
}

fn ip(env: &Env, var: &'static str, default: Ipv4Addr) -> Result<Ipv4Addr> {
    match env.value(var) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| Error::BadValue {
            var,
            value: v.into(),
            why: "expected a dotted IPv4 address such as 192.168.254.2",
        }),
    }
}

fn ip6(env: &Env, var: &'static str) -> Result<Option<Ipv6Addr>> {
    match env.value(var) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| Error::BadValue {
            var,
            value: v.into(),
            why: "expected an IPv6 address such as fd62:6572:7468::2",
        }),
    }
}

/// The /64 prefix of `a` (its first 64 bits).
pub fn net64(a: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(a) & !(u64::MAX as u128))
}

impl NetConfig {
    /// The VM's IPv6 address: `VM_IP6`, else the address a SLAAC guest forms from its MAC
    /// (modified EUI-64, RFC 4291 appendix A) in the VM link's /64, so that a guest using
    /// SLAAC and one using DHCPv6 end up with the same address, the one the DNAT targets.
    pub fn vm_ip6(&self) -> Ipv6Addr {
        self.vm_ip6.unwrap_or_else(|| {
            let m = self.vm_mac.0;
            let iid = [m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
            let mut b = net64(self.vm_gw6).octets();
            b[8..].copy_from_slice(&iid);
            Ipv6Addr::from(b)
        })
    }

    /// Builds a validated config from environment variables: `VM_IP`, `VM_GW`, `NO_VNC`,
    /// `NO_DHCP`, `NO_IPV6`, `VM_IP6`, `VM_GW6`, `VM_MAC`, `HOSTNAME`, and berth's own `POD_IFACE` (default eth0) and
    /// `RESOLV_CONF` (default /etc/resolv.conf).
    pub fn from_env_map(env: &Env) -> Result<NetConfig> {
        let hostname = env.raw("HOSTNAME").unwrap_or_default().to_owned();
        let vm_mac = match env.value("VM_MAC") {
            None => MacAddr::from_hostname(&hostname),
            Some(v) => v.parse().map_err(|e: MacParseError| Error::BadValue {
                var: "VM_MAC",
                value: v.into(),
                why: match e {
                    MacParseError::Syntax => "expected six hex bytes like 02:00:00:12:34:56",
                    MacParseError::Multicast => "a multicast MAC cannot be a NIC's address",
                    MacParseError::Zero => "the all-zero MAC cannot be a NIC's address",
                },
            })?,
        };
        let mut cfg = NetConfig {
            vm_ip: ip(env, "VM_IP", DEFAULT_VM_IP)?,
            vm_gw: ip(env, "VM_GW", DEFAULT_VM_GW)?,
            no_vnc: env.flag("NO_VNC"),
            no_dhcp: env.flag("NO_DHCP"),
            no_ipv6: env.flag("NO_IPV6"),
            vm_ip6: ip6(env, "VM_IP6")?,
            vm_gw6: ip6(env, "VM_GW6")?.unwrap_or(DEFAULT_VM_GW6),
            vm_mac,
            hostname,
            ..NetConfig::default()
        };
        if let Some(v) = env.raw("POD_IFACE") {
            cfg.pod_iface = v.to_owned();
        }
        if let Some(v) = env.raw("RESOLV_CONF") {
            cfg.resolv_conf = v.into();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that VM_IP and VM_GW are the two host addresses of one /30, that the MAC is
    /// unicast, and that the interface names fit the kernel's limit.
    pub fn validate(&self) -> Result<()> {
        let (ip, gw) = (u32::from(self.vm_ip), u32::from(self.vm_gw));
        let host = |a: u32| a & 3 == 1 || a & 3 == 2;
        if ip & !3 != gw & !3 || ip == gw || !host(ip) || !host(gw) {
            return Err(Error::BadVmSubnet {
                vm_ip: self.vm_ip,
                vm_gw: self.vm_gw,
            });
        }
        let (ip6, gw6) = (self.vm_ip6(), self.vm_gw6);
        let special = |a: Ipv6Addr| {
            a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.segments()[0] == 0xfe80
        };
        if net64(ip6) != net64(gw6) || ip6 == gw6 || special(ip6) || special(gw6) {
            return Err(Error::BadVmSubnet6 {
                vm_ip6: ip6,
                vm_gw6: gw6,
            });
        }
        if self.vm_mac.is_multicast() || self.vm_mac.is_zero() {
            return Err(Error::BadValue {
                var: "VM_MAC",
                value: self.vm_mac.to_string(),
                why: "the VM's MAC must be unicast and non-zero",
            });
        }
        for (var, name) in [
            ("POD_IFACE", &self.pod_iface),
            ("bridge", &self.bridge),
            ("tap", &self.tap),
        ] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
                return Err(Error::BadValue {
                    var,
                    value: name.clone(),
                    why: "an interface name is 1 to 15 characters without '/', ':' or spaces",
                });
            }
        }
        Ok(())
    }

    /// The /30's netmask, 255.255.255.252.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::new(255, 255, 255, 252)
    }

    /// The /30's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.vm_gw) | 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_flags_and_raw_values() {
        let e = Env::from([("A", " x "), ("B", "  "), ("C", ""), ("D", "0")]);
        assert_eq!((e.value("A"), e.raw("A")), (Some("x"), Some(" x ")));
        assert_eq!((e.value("B"), e.raw("B")), (None, Some("  ")));
        assert_eq!((e.value("C"), e.raw("C")), (None, None));
        let flags = ["A", "B", "C", "D", "E"].map(|k| e.flag(k));
        assert_eq!(flags, [true, true, false, true, false]);
        let vars = [("A", " x "), ("B", "  "), ("C", ""), ("D", "0")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(vars.into_iter().collect::<Env>(), e);
    }

    #[test]
    fn defaults() {
        let c = NetConfig::from_env_map(&Env::from([("HOSTNAME", "vm-0")])).unwrap();
        assert_eq!(c.vm_ip, DEFAULT_VM_IP);
        assert_eq!(c.vm_gw, DEFAULT_VM_GW);
        assert!(!c.no_vnc && !c.no_dhcp);
        assert_eq!(c.vm_mac, MacAddr::from_hostname("vm-0"));
        assert_eq!(c.pod_iface, "eth0");
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 254, 3));
    }

    #[test]
    fn overrides() {
        let c = NetConfig::from_env_map(&Env::from([
            ("VM_IP", "10.1.1.5"),
            ("VM_GW", "10.1.1.6"),
            ("NO_VNC", "1"),
            ("NO_DHCP", "yes"),
            ("VM_MAC", "02:11:22:33:44:55"),
            ("POD_IFACE", "net1"),
            ("RESOLV_CONF", "/tmp/r"),
        ]))
        .unwrap();
        assert_eq!(
            (c.vm_ip, c.vm_gw),
            ("10.1.1.5".parse().unwrap(), "10.1.1.6".parse().unwrap())
        );
        assert!(c.no_vnc && c.no_dhcp);
        assert_eq!(c.vm_mac.to_string(), "02:11:22:33:44:55");
        assert_eq!(c.pod_iface, "net1");
        assert_eq!(c.resolv_conf, PathBuf::from("/tmp/r"));
        // Empty flags are unset, as in the original's `[ -n "$NO_VNC" ]`.
        let c = NetConfig::from_env_map(&Env::from([("NO_VNC", ""), ("NO_DHCP", "")])).unwrap();
        assert!(!c.no_vnc && !c.no_dhcp);
    }

    #[test]
    fn ipv6_defaults_and_overrides() {
        let c = NetConfig::from_env_map(&Env::from([("VM_MAC", "52:54:00:12:34:56")])).unwrap();
        assert!(!c.no_ipv6);
        assert_eq!(c.vm_gw6, DEFAULT_VM_GW6);
        // The kernel's EUI-64 address for this MAC (what `ip -6 addr` shows after SLAAC).
        assert_eq!(c.vm_ip6().to_string(), "fd62:6572:7468:0:5054:ff:fe12:3456");
        let c = NetConfig::from_env_map(&Env::from([
            ("VM_IP6", "fd00:1:2:3::9"),
            ("VM_GW6", "fd00:1:2:3::1"),
            ("NO_IPV6", "1"),
        ]))
        .unwrap();
        assert!(c.no_ipv6);
        assert_eq!(c.vm_ip6().to_string(), "fd00:1:2:3::9");
        for (k, v) in [("VM_IP6", "fd00::1::2"), ("VM_GW6", "10.0.0.1")] {
            let e = NetConfig::from_env_map(&Env::from([(k, v)])).unwrap_err();
            assert!(matches!(e, Error::BadValue { var, .. } if var == k), "{e}");
        }
        for (ip, gw) in [
            ("fd00:1:2:4::9", "fd00:1:2:3::1"), // other /64
            ("fd00:1:2:3::1", "fd00:1:2:3::1"), // equal
            ("fe80::2", "fe80::1"),             // link-local
        ] {
            let e =
                NetConfig::from_env_map(&Env::from([("VM_IP6", ip), ("VM_GW6", gw)])).unwrap_err();
            assert!(matches!(e, Error::BadVmSubnet6 { .. }), "{ip} {gw}: {e}");
            assert!(e.to_string().contains("/64"), "{e}");
        }
    }

    #[test]
    fn rejects_bad_subnets() {
        for (ip, gw) in [
            ("192.168.254.2", "192.168.254.2"), // equal
            ("192.168.254.2", "192.168.254.5"), // other /30
            ("192.168.254.0", "192.168.254.1"), // network address
            ("192.168.254.3", "192.168.254.1"), // broadcast address
            ("192.168.254.1", "192.168.254.3"),
        ] {
            let e =
                NetConfig::from_env_map(&Env::from([("VM_IP", ip), ("VM_GW", gw)])).unwrap_err();
            assert!(matches!(e, Error::BadVmSubnet { .. }), "{ip} {gw}: {e}");
            assert!(e.to_string().contains("/30"));
        }
        let ok = NetConfig::from_env_map(&Env::from([
            ("VM_IP", "192.168.254.1"),
            ("VM_GW", "192.168.254.2"),
        ]));
        assert!(ok.is_ok());
    }

    #[test]
    fn rejects_bad_values() {
        for (k, v) in [
            ("VM_IP", "300.1.1.1"),
            ("VM_GW", "x"),
            ("VM_MAC", "01:00:00:00:00:01"),
            ("VM_MAC", "zz"),
        ] {
            let e = NetConfig::from_env_map(&Env::from([(k, v)])).unwrap_err();
            assert!(
                matches!(e, Error::BadValue { var, .. } if var == k),
                "{k}={v}: {e}"
            );
        }
        let e = NetConfig::from_env_map(&Env::from([("POD_IFACE", "a-very-long-interface-name")]))
            .unwrap_err();
        assert!(matches!(e, Error::BadValue { .. }));
    }
}
