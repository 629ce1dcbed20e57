//! The pod side as a whole: discover the pod's network ([`crate::podinfo`]), build bridge + tap +
//! NAT, tear down.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use crate::config::{NetConfig, VNC_PORT};
use crate::dhcp::DhcpConfig;
use crate::dhcp6::Config6;
use crate::error::{Error, Result};
use crate::nft::{NatSpec, NatSpec6, Nft};
use crate::podinfo::{PodInfo, ROUTER_LL};
use crate::rtnl::Rtnl;
use crate::tap::Tap;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// IPv6 forwarding has no per-device switch the kernel honours for forwarding (ip6_forward
/// checks `all`) nor a netlink interface to set it, so this one sysctl is the way: writable
/// where /proc/sys is, or set for the pod (`securityContext.sysctls`, it is namespaced).
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
/// Whether IPv6 prefixes a/alen and b/blen share an address.
fn overlaps6(a: Ipv6Addr, alen: u8, b: Ipv6Addr, blen: u8) -> bool {
    let len = alen.min(blen).min(128);
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(a) & mask == u128::from(b) & mask
}

/// Whether prefixes a/alen and b/blen share an address.
fn overlaps(a: Ipv4Addr, alen: u8, b: Ipv4Addr, blen: u8) -> bool {
    let len = alen.min(blen).min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// The plumbing berth installed: bridge with VM_GW/30, the tap in it, forwarding, and the
/// `ip berth` NAT table. [`PodNetwork::teardown`] (or dropping it) removes all of it.
///
/// It keeps its own netlink sockets, so it tears down in the namespace it was set up in
/// even if dropped on a thread that lives elsewhere.
pub struct PodNetwork {
    cfg: NetConfig,
    info: PodInfo,
    rtnl: Rtnl,
    nft: Nft,
    tap: Option<Tap>,
    bridge_index: Option<u32>,
    active: bool,
}

impl PodNetwork {
    /// Sets up the pod's network for the VM. Idempotent across restarts of berth in the same
    /// pod: a bridge, tap or table left behind by a killed berth is replaced.
    pub fn setup(cfg: &NetConfig) -> Result<PodNetwork> {
        cfg.validate()?;
        let mut rtnl = Rtnl::open()?;
        let info = PodInfo::discover_with(&mut rtnl, cfg)?;
        if let Some(pod_ip) = info
            .ip
            .filter(|&ip| overlaps(ip, info.prefix, cfg.vm_gw, 30))
        {
            let (vm_gw, prefix) = (cfg.vm_gw, info.prefix);
            return Err(Error::VmSubnetOverlapsPod {
                vm_gw,
                pod_ip,
                prefix,
            });
        }
        if let Some(pod_ip6) = info
            .ip6
            .filter(|&a| overlaps6(a, info.prefix6, cfg.vm_gw6, 64))
        {
            let (vm_gw6, prefix) = (cfg.vm_gw6, info.prefix6);
            return Err(Error::VmSubnet6OverlapsPod {
                vm_gw6,
                pod_ip6,
                prefix,
            });
        }
        let nft = Nft::open()?;
        let mut net = PodNetwork {
            cfg: cfg.clone(),
            info,
            rtnl,
            nft,
            tap: None,
            bridge_index: None,
            active: true,
        };
        // On error `net` is dropped here, which removes whatever was already created.
        net.build()?;
        Ok(net)
    }

    fn build(&mut self) -> Result<()> {
        let (cfg, mtu) = (self.cfg.clone(), self.info.mtu);
        self.rtnl.delete_link_by_name(&cfg.tap)?;
        self.rtnl.delete_link_by_name(&cfg.bridge)?;
        // A fixed bridge MAC (the VM's with the last bit flipped) keeps the gateway's MAC
        // stable for the guest's ARP cache across restarts, whatever the tap's MAC is.
        self.rtnl
            .create_bridge(&cfg.bridge, cfg.vm_mac.bridge_mac(), mtu)?;
        let br = self.rtnl.link(&cfg.bridge)?.ok_or_else(|| Error::Netlink {
            op: format!("create bridge {}", cfg.bridge),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
        self.bridge_index = Some(br.index);
        if self.info.ip.is_some() {
            self.rtnl.add_ipv4(br.index, cfg.vm_gw, 30)?;
        }
        let tap = Tap::create_queues(&cfg.tun_device, &cfg.tap, cfg.tap_queues.max(1))?;
        let tap_link = self.rtnl.link(tap.name())?.ok_or_else(|| Error::Netlink {
            op: format!("create tap {}", cfg.tap),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })?;
        self.tap = Some(tap);
        self.rtnl.set_mtu(tap_link.index, mtu)?;
        self.rtnl.set_master(tap_link.index, br.index)?;
        self.rtnl.set_up(tap_link.index)?;
        self.rtnl.set_up(br.index)?;
        // Any table of a family the pod no longer has (a restart after a CNI change) goes.
        self.nft.remove()?;
        self.nft.remove6()?;
        if let Some(pod_ip) = self.info.ip {
            self.enable_forwarding(br.index)?;
            let spec = NatSpec {
                pod_ip,
                vm_ip: cfg.vm_ip,
                keep_vnc: !cfg.no_vnc,
                vnc_port: VNC_PORT,
                keep_ports: cfg.keep_ports.clone(),
                vm_bridge: cfg.bridge.clone(),
                pod_iface: self.info.iface.clone(),
            };
            self.nft.install(&spec)?;
            log::info!(
                "pod network: {} ({pod_ip}/{}) -> {} via {} {}/30, tap {}, mtu {}",
                self.info.iface,
                self.info.prefix,
                cfg.vm_ip,
                cfg.bridge,
                cfg.vm_gw,
                cfg.tap,
                mtu
            );
        }
        if self.info.ip6.is_some() {
            if let Some(off) = enable_ipv6_forwarding(self.info.ip.is_none())? {
                self.info.ip6 = None;
                self.info.ipv6_status = off;
            }
        }
        if let Some(pod_ip6) = self.info.ip6 {
            self.rtnl.add_ipv6(br.index, ROUTER_LL, 64)?;
            self.rtnl.add_ipv6(br.index, cfg.vm_gw6, 64)?;
            let spec = NatSpec6 {
                pod_ip: pod_ip6,
                vm_ip: cfg.vm_ip6(),
                keep_vnc: !cfg.no_vnc,
                vnc_port: VNC_PORT,
                keep_ports: cfg.keep_ports.clone(),
                vm_bridge: cfg.bridge.clone(),
                pod_iface: self.info.iface.clone(),
            };
            self.nft.install6(&spec)?;
            log::info!(
                "pod network: {} ({pod_ip6}/{}) -> {} via {} {}/64",
                self.info.iface,
                self.info.prefix6,
                cfg.vm_ip6(),
                cfg.bridge,
                cfg.vm_gw6,
            );
        }
        Ok(())
    }

    /// Forwarding is what ip_forward=1 turns on: the global switch where /proc/sys is
    /// writable, and per device over netlink (the pod interface and the bridge are the only
    /// input devices of forwarded traffic) where it is read-only, as in unprivileged pods.
    fn enable_forwarding(&mut self, bridge: u32) -> Result<()> {
        if let Err(e) = std::fs::write(IP_FORWARD, "1\n") {
            log::debug!("{IP_FORWARD}: {e}; enabling forwarding per device instead");
        }
        self.rtnl.enable_forwarding(self.info.ifindex)?;
        self.rtnl.enable_forwarding(bridge)?;
        // The pod side's reverse-path check: a packet arriving on the pod interface with a
        // source that routes elsewhere (the VM's /30 behind the bridge) is a forgery.
        self.rtnl.enable_rp_filter(self.info.ifindex)
    }

    /// The router advertisement and DHCPv6 settings for the VM; `None` when the VM has no
    /// IPv6 side.
    pub fn ipv6_config(&self) -> Option<Config6> {
        self.info.ip6?;
        Some(Config6::new(&self.cfg, &self.info))
    }

    /// What was discovered about the pod.
    pub fn info(&self) -> &PodInfo {
        &self.info
    }

    /// The config this network was built from.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The tap (for its name and flags).
    pub fn tap(&self) -> Option<&Tap> {
        self.tap.as_ref()
    }

    /// New fds of every queue of the tap (one per virtio-net queue pair), in order.
    pub fn tap_fds(&self) -> Result<Vec<OwnedFd>> {
        self.tap
            .as_ref()
            .ok_or_else(|| Error::io("tap fd", std::io::Error::from_raw_os_error(libc::EBADF)))?
            .queue_fds()
    }

    /// A new fd of the tap for the VMM's virtio-net device.
    pub fn tap_fd(&self) -> Result<OwnedFd> {
        self.tap
            .as_ref()
            .ok_or_else(|| Error::io("tap fd", std::io::Error::from_raw_os_error(libc::EBADF)))?
            .try_clone_fd()
    }

    /// The DHCP settings for the VM: its lease, the pod's MTU and DNS, the hostname.
    pub fn dhcp_config(&self) -> DhcpConfig {
        DhcpConfig::new(&self.cfg, &self.info)
    }

    /// Leaves the bridge, tap and NAT table in place when this is dropped: berth drops
    /// CAP_NET_ADMIN before the VM runs, so it could not remove them later; they live in the
    /// pod's network namespace and go with it, and [`PodNetwork::setup`] replaces leftovers.
    /// Dropping this then only closes the netlink sockets.
    pub fn leave_in_place(&mut self) {
        self.active = false;
    }

    /// Removes the NAT table, the tap and the bridge. Safe to call more than once.
    pub fn teardown(&mut self) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        let mut first = self.nft.remove().err();
        if let Err(e) = self.nft.remove6() {
            first.get_or_insert(e);
        }
        // Delete the tap explicitly: the VMM may still hold a dup of its fd.
        if let Some(tap) = self.tap.take() {
            if let Err(e) = self.rtnl.delete_link_by_name(tap.name()) {
                first.get_or_insert(e);
            }
        }
        if let Some(br) = self.bridge_index.take() {
            if let Err(e) = self.rtnl.delete_link(br) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Turns IPv6 forwarding on (see [`IPV6_FORWARD`]). Where the sysctl is read-only and off,
/// the VM gets no IPv6: `Ok(Some(line))` with the one line saying how to fix it, or an
/// error when IPv6 is all the pod has (`required`).
fn enable_ipv6_forwarding(required: bool) -> Result<Option<String>> {
    let err = match std::fs::write(IPV6_FORWARD, "1\n") {
        Ok(()) => return Ok(None),
        Err(e) => e,
    };
    if std::fs::read_to_string(IPV6_FORWARD).is_ok_and(|v| v.trim() == "1") {
        return Ok(None);
    }
    if required {
        return Err(Error::NoIpv6Forwarding { source: err });
    }
    Ok(Some(format!(
        "ipv6: off: cannot enable IPv6 forwarding ({IPV6_FORWARD}: {err}): set the pod sysctl \
         net.ipv6.conf.all.forwarding=1 (securityContext.sysctls) for the VM to get IPv6"
    )))
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::warn!("pod network teardown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{overlaps, overlaps6};

    #[test]
    fn ipv6_prefix_overlap() {
        let ip = |s: &str| s.parse().unwrap();
        let gw = ip("fd62:6572:7468::1");
        assert!(overlaps6(ip("fd62:6572:7468::5"), 128, gw, 64));
        assert!(overlaps6(ip("fd62:6572::5"), 32, gw, 64));
        assert!(!overlaps6(ip("fd62:6572:7468:1::5"), 64, gw, 64));
        assert!(!overlaps6(ip("2001:db8::2"), 64, gw, 64));
        assert!(overlaps6(ip("2001:db8::2"), 0, gw, 64));
    }

    #[test]
    fn prefix_overlap() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(overlaps(ip("192.168.254.7"), 24, ip("192.168.254.1"), 30));
        assert!(overlaps(ip("192.168.254.2"), 32, ip("192.168.254.1"), 30));
        assert!(!overlaps(ip("192.168.254.5"), 32, ip("192.168.254.1"), 30));
        assert!(!overlaps(ip("10.213.0.2"), 24, ip("192.168.254.1"), 30));
        assert!(overlaps(ip("10.0.0.1"), 0, ip("192.168.254.1"), 30));
    }
}
