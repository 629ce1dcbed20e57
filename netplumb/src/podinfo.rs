//! What berth learns about the pod's network before taking it over ([`PodInfo`]), and the
//! bridge's IPv6 router address ([`ROUTER_LL`]).
//!
//! The DHCP servers build their settings from these ([`crate::DhcpConfig::new`],
//! [`crate::Config6::new`]) and [`crate::pod`] builds the plumbing from them and hands the
//! servers' settings out: these types live here, below both, so that `dhcp` and `dhcp6` do not
//! import `pod` (which imports them, an import cycle).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::NetConfig;
use crate::error::{Error, Result};
use crate::resolv::DnsConfig;
use crate::rtnl::{Addr6, Rtnl};

/// The link-local address of the bridge: the VM's IPv6 router (the source of router
/// advertisements and DHCPv6 replies, and the VM's default gateway).
pub const ROUTER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// What berth learns about the pod's network before taking it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod interface's name.
    pub iface: String,
    /// Its index.
    pub ifindex: u32,
    /// Its first IPv4 address: the pod IP the VM takes over; `None` in an IPv6-only pod.
    pub ip: Option<Ipv4Addr>,
    /// That address's prefix length (0 without one).
    pub prefix: u8,
    /// The global IPv6 address the VM takes over; `None`: no IPv6 for the VM (see
    /// [`choose_ipv6`] for why).
    pub ip6: Option<Ipv6Addr>,
    /// That address's prefix length (0 without one).
    pub prefix6: u8,
    /// One line for the operator saying which IPv6 address the VM takes over or why it gets
    /// no IPv6 (berth's entrypoint prints it).
    pub ipv6_status: String,
    /// Its MTU, handed to the VM by DHCP.
    pub mtu: u32,
    /// The default route's gateway (some CNIs use a device route without one).
    pub gateway: Option<Ipv4Addr>,
    /// Nameservers and search list from resolv.conf.
    pub dns: DnsConfig,
}

impl PodInfo {
    /// Reads the pod interface, the default route and resolv.conf of the current namespace.
    pub fn discover(cfg: &NetConfig) -> Result<PodInfo> {
        Self::discover_with(&mut Rtnl::open()?, cfg)
    }

    /// [`PodInfo::discover`] on netlink socket `rtnl` ([`crate::PodNetwork::setup`] keeps it).
    pub(crate) fn discover_with(rtnl: &mut Rtnl, cfg: &NetConfig) -> Result<PodInfo> {
        let iface = cfg.pod_iface.clone();
        let link = rtnl.link(&iface)?.ok_or_else(|| Error::NoPodInterface {
            iface: iface.clone(),
        })?;
        let v4 = rtnl.ipv4_addrs(link.index)?.first().copied();
        let (v6, ipv6_status) = if cfg.no_ipv6 {
            (None, "ipv6: off: NO_IPV6 is set".to_string())
        } else {
            choose_ipv6(
                &iface,
                &rtnl.ipv6_addrs(link.index)?,
                rtnl.has_default_route_v6()?,
            )
        };
        if v4.is_none() && v6.is_none() {
            return Err(Error::NoPodIpv4 {
                iface: iface.clone(),
            });
        }
        let gateway = match v4 {
            Some(_) => rtnl.default_route_v4()?.ok_or(Error::NoDefaultRoute)?.0,
            None => None,
        };
        let dns = DnsConfig::read(&cfg.resolv_conf)?;
        Ok(PodInfo {
            iface,
            ifindex: link.index,
            ip: v4.map(|(a, _)| a),
            prefix: v4.map_or(0, |(_, p)| p),
            ip6: v6.map(|(a, _)| a),
            prefix6: v6.map_or(0, |(_, p)| p),
            ipv6_status,
            mtu: link.mtu,
            gateway,
            dns,
        })
    }
}

/// Which of the pod interface's IPv6 addresses the VM takes over, and the one log line
/// saying so or why the VM gets no IPv6: it needs a usable global address (not link-local,
/// tentative, deprecated or temporary) and an IPv6 default route. With several, the oldest
/// wins (the one the CNI configured first, as for IPv4): the kernel lists a link's IPv6
/// addresses of one scope newest first, so that is the last usable one.
pub fn choose_ipv6(
    iface: &str,
    addrs: &[Addr6],
    default_route: bool,
) -> (Option<(Ipv6Addr, u8)>, String) {
    let mut usable: Vec<&Addr6> = addrs.iter().filter(|a| a.usable_global()).collect();
    usable.reverse();
    let Some(first) = usable.first() else {
        let why = if addrs.iter().any(|a| !a.usable_global() && !a.link_scope) {
            "its global IPv6 addresses are tentative, deprecated or temporary"
        } else if addrs.is_empty() {
            "it has no IPv6 address"
        } else {
            "it has only a link-local IPv6 address"
        };
        return (None, format!("ipv6: off: {iface}: {why}"));
    };
    if !default_route {
        return (
            None,
            format!(
                "ipv6: off: {iface} has {} but the pod has no IPv6 default route",
                first.addr
            ),
        );
    }
    let others = usable.len() - 1;
    let why = if others == 0 {
        format!("ipv6: the VM takes over {}/{}", first.addr, first.prefix)
    } else {
        let rest: Vec<String> = usable[1..].iter().map(|a| a.addr.to_string()).collect();
        format!(
            "ipv6: the VM takes over {}/{}, the oldest of {} global addresses on {iface} (not {})",
            first.addr,
            first.prefix,
            usable.len(),
            rest.join(", ")
        )
    };
    (Some((first.addr, first.prefix)), why)
}

#[cfg(test)]
mod tests {
    use super::choose_ipv6;
    use crate::rtnl::Addr6;

    fn a6(addr: &str, link_scope: bool, flags: u32) -> Addr6 {
        let prefix = 64;
        let addr = addr.parse().unwrap();
        Addr6 {
            addr,
            prefix,
            link_scope,
            flags,
        }
    }

    #[test]
    fn ipv6_choice_and_reason() {
        let ll = a6("fe80::1", true, 0x80);
        let g1 = a6("2001:db8::5", false, 0x80);
        let g2 = a6("fd00::5", false, 0x80);
        let tentative = a6("2001:db8::6", false, 0x40);
        let (c, why) = choose_ipv6("eth0", &[ll, g1], true);
        assert_eq!(c, Some((g1.addr, 64)));
        assert_eq!(why, "ipv6: the VM takes over 2001:db8::5/64");
        // Newest first, as the kernel lists them: g1 is the oldest.
        let (c, why) = choose_ipv6("eth0", &[ll, tentative, g2, g1], true);
        assert_eq!(c, Some((g1.addr, 64)));
        assert!(
            why.contains("oldest of 2 global") && why.contains("not fd00::5"),
            "{why}"
        );
        let (c, why) = choose_ipv6("eth0", &[ll], true);
        assert_eq!(
            (c, why.as_str()),
            (
                None,
                "ipv6: off: eth0: it has only a link-local IPv6 address"
            )
        );
        let (c, why) = choose_ipv6("eth0", &[ll, tentative], true);
        assert!(c.is_none() && why.contains("tentative"), "{why}");
        let (c, why) = choose_ipv6("eth0", &[], true);
        assert!(c.is_none() && why.contains("no IPv6 address"), "{why}");
        let (c, why) = choose_ipv6("eth0", &[g1], false);
        assert!(
            c.is_none() && why.contains("no IPv6 default route"),
            "{why}"
        );
    }
}
