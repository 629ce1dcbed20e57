//! Pod network plumbing for berth: the VM takes over the pod's IPv4 address, and its IPv6
//! address in a dual-stack or IPv6-only pod.
//!
//! [`PodNetwork::setup`] reads the pod's interface and resolv.conf, creates the bridge with
//! VM_GW/30 (and VM_GW6/64) and a tap enslaved to it, enables forwarding and installs the NAT
//! tables ([`nft`]); [`DhcpServer::spawn`] gives the VM its one lease, [`Dhcp6Server::spawn`]
//! its router advertisements and DHCPv6 address ([`dhcp6`]). Everything is netlink and
//! sockets: no external program runs. See README.md for the table and the DHCP options.

#![warn(missing_docs)]

pub mod config;
pub mod dhcp;
pub mod dhcp6;
pub mod error;
pub mod nft;
mod nlattr;
mod packet;
pub mod pod;
pub mod podinfo;
pub mod resolv;
pub mod rtnl;
pub mod tap;

pub use config::NetConfig;
pub use dhcp::{DhcpConfig, DhcpServer, Responder};
pub use dhcp6::{Config6, Dhcp6Server, Responder6};
pub use error::{Error, Result};
pub use ethmac::{MacAddr, MacParseError};
pub use pod::PodNetwork;
pub use podinfo::PodInfo;
pub use resolv::{DnsConfig, ResolvConf};
