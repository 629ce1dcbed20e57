//! The pod side as a whole: discover the pod's network, build bridge + tap + NAT, tear down.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use crate::config::{NetConfig, VNC_PORT};
use crate::dhcp::DhcpConfig;
use crate::error::{Error, Result};
use crate::nft::{NatSpec, Nft};
use crate::resolv::DnsConfig;
use crate::rtnl::Rtnl;
use crate::tap::Tap;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What berth learns about the pod's network before taking it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod interface's name.
    pub iface: String,
    /// Its index.
    pub ifindex: u32,
    /// Its first IPv4 address: the pod IP the VM takes over.
    pub ip: Ipv4Addr,
    /// That address's prefix length.
    pub prefix: u8,
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

    fn discover_with(rtnl: &mut Rtnl, cfg: &NetConfig) -> Result<PodInfo> {
        let iface = cfg.pod_iface.clone();
        let link = rtnl.link(&iface)?.ok_or_else(|| Error::NoPodInterface {
            iface: iface.clone(),
        })?;
        let (ip, prefix) =
            *rtnl
                .ipv4_addrs(link.index)?
                .first()
                .ok_or_else(|| Error::NoPodIpv4 {
                    iface: iface.clone(),
                })?;
        let (gateway, _) = rtnl.default_route_v4()?.ok_or(Error::NoDefaultRoute)?;
        let dns = DnsConfig::read(&cfg.resolv_conf)?;
        Ok(PodInfo {
            iface,
            ifindex: link.index,
            ip,
            prefix,
            mtu: link.mtu,
            gateway,
            dns,
        })
    }
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
        if overlaps(info.ip, info.prefix, cfg.vm_gw, 30) {
            let (vm_gw, pod_ip, prefix) = (cfg.vm_gw, info.ip, info.prefix);
            return Err(Error::VmSubnetOverlapsPod {
                vm_gw,
                pod_ip,
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
        self.rtnl.add_ipv4(br.index, cfg.vm_gw, 30)?;
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
        self.enable_forwarding(br.index)?;
        let spec = NatSpec {
            pod_ip: self.info.ip,
            vm_ip: cfg.vm_ip,
            keep_vnc: !cfg.no_vnc,
            vnc_port: VNC_PORT,
            keep_ports: cfg.keep_ports.clone(),
            vm_bridge: cfg.bridge.clone(),
            pod_iface: self.info.iface.clone(),
        };
        self.nft.install(&spec)?;
        log::info!(
            "pod network: {} ({}/{}) -> {} via {} {}/30, tap {}, mtu {}",
            self.info.iface,
            self.info.ip,
            self.info.prefix,
            cfg.vm_ip,
            cfg.bridge,
            cfg.vm_gw,
            cfg.tap,
            mtu
        );
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

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::warn!("pod network teardown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::overlaps;

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
