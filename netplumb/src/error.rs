//! The crate's error type: one variant per thing an operator can fix, each with a one-line
//! message that names the fix.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// Everything that can go wrong while plumbing the pod's network or serving DHCP.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a network change with EPERM.
    #[error("{op}: permission denied: berth needs CAP_NET_ADMIN (add capability NET_ADMIN to the container's securityContext)")]
    NoNetAdmin {
        /// The operation that was refused.
        op: String,
    },
    /// /dev/net/tun (or the configured tun device) cannot be opened.
    #[error("cannot open {path}: {source}: pass the tun device into the container (e.g. a device plugin or --device /dev/net/tun)")]
    NoTunDevice {
        /// The device path that was tried.
        path: PathBuf,
        /// Why opening it failed.
        source: io::Error,
    },
    /// VM_IP and VM_GW are not two distinct host addresses of one /30.
    #[error("VM_IP={vm_ip} and VM_GW={vm_gw} must be the two distinct host addresses of one /30 (e.g. VM_GW=192.168.254.1 VM_IP=192.168.254.2): fix VM_IP or VM_GW")]
    BadVmSubnet {
        /// The VM's address.
        vm_ip: Ipv4Addr,
        /// The gateway (bridge) address.
        vm_gw: Ipv4Addr,
    },
    /// VM_IP6 and VM_GW6 are not two distinct unicast addresses of one /64.
    #[error("VM_IP6={vm_ip6} and VM_GW6={vm_gw6} must be two distinct global or unique local addresses of one /64 (e.g. VM_GW6=fd62:6572:7468::1 VM_IP6=fd62:6572:7468::2): fix VM_IP6 or VM_GW6")]
    BadVmSubnet6 {
        /// The VM's IPv6 address.
        vm_ip6: Ipv6Addr,
        /// The bridge's IPv6 address.
        vm_gw6: Ipv6Addr,
    },
    /// The VM's /30 overlaps the pod's own subnet, so routing to the VM would be ambiguous.
    #[error("VM_GW/30 ({vm_gw}/30) overlaps the pod network {pod_ip}/{prefix}: choose VM_IP and VM_GW outside it")]
    VmSubnetOverlapsPod {
        /// The gateway (bridge) address.
        vm_gw: Ipv4Addr,
        /// The pod's address.
        pod_ip: Ipv4Addr,
        /// The pod's prefix length.
        prefix: u8,
    },
    /// The VM link's /64 overlaps the pod's IPv6 network.
    #[error("VM_GW6's /64 ({vm_gw6}/64) overlaps the pod's IPv6 network {pod_ip6}/{prefix}: choose VM_IP6 and VM_GW6 outside it, or set NO_IPV6")]
    VmSubnet6OverlapsPod {
        /// The bridge's IPv6 address.
        vm_gw6: Ipv6Addr,
        /// The pod's IPv6 address.
        pod_ip6: Ipv6Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// An environment variable holds something that does not parse.
    #[error("{var}={value:?} is not valid: {why}")]
    BadValue {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What a valid value looks like.
        why: &'static str,
    },
    /// The pod's interface does not exist.
    #[error("pod interface {iface} not found: set the pod interface name (default eth0) to an existing interface")]
    NoPodInterface {
        /// The interface name.
        iface: String,
    },
    /// The pod's interface has no IPv4 address and no usable IPv6 one either.
    #[error("pod interface {iface} has no IPv4 address and no usable IPv6 one (a global address with an IPv6 default route): berth needs an IPv4, dual-stack or IPv6 pod network")]
    NoPodIpv4 {
        /// The interface name.
        iface: String,
    },
    /// The pod has no IPv4 default route.
    #[error("the pod has no IPv4 default route: the CNI must install one (check the pod's network setup)")]
    NoDefaultRoute,
    /// An IPv6-only pod where IPv6 forwarding cannot be turned on.
    #[error("cannot enable IPv6 forwarding (/proc/sys/net/ipv6/conf/all/forwarding: {source}): set the pod sysctl net.ipv6.conf.all.forwarding=1 (securityContext.sysctls)")]
    NoIpv6Forwarding {
        /// Why writing the sysctl failed.
        source: io::Error,
    },
    /// resolv.conf cannot be read.
    #[error("cannot read {path}: {source}: mount a readable resolv.conf or point berth at one")]
    ResolvConf {
        /// The path that was read.
        path: PathBuf,
        /// Why reading failed.
        source: io::Error,
    },
    /// The kernel lacks nftables (or its NAT support): the node must load the modules.
    #[error(
        "{op}: {source}: the node's kernel has no nftables NAT; load nf_tables, nft_chain_nat \
         and nft_nat on the node (modprobe), as most CNIs already do"
    )]
    NoNftables {
        /// The operation that failed.
        op: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// A netlink request failed for another reason.
    #[error("{op}: {source}: check the pod's network namespace for conflicting links or rules")]
    Netlink {
        /// The operation that failed.
        op: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// Another system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation that failed.
        op: String,
        /// The error.
        source: io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Classifies an error returned by a netlink request: EPERM means the capability is missing.
    pub(crate) fn netlink(op: impl Into<String>, source: io::Error) -> Self {
        let op = op.into();
        match source.raw_os_error() {
            Some(libc::EPERM) => Error::NoNetAdmin { op },
            // No nfnetlink family, or an unknown expression/chain type (module not loaded).
            Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) | Some(libc::ENOENT)
                if op.contains("nfnetlink") || op.contains("nftables") =>
            {
                Error::NoNftables { op, source }
            }
            _ => Error::Netlink { op, source },
        }
    }

    /// Wraps an I/O error with the operation's name (EPERM still means no CAP_NET_ADMIN).
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        let op = op.into();
        if source.raw_os_error() == Some(libc::EPERM) {
            Error::NoNetAdmin { op }
        } else {
            Error::Io { op, source }
        }
    }
}
