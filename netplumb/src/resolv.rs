//! Reading the pod's resolv.conf: every IPv4 nameserver and the search list.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::error::{Error, Result};

/// The DNS settings the VM inherits from the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Every IPv4 nameserver, in file order, without duplicates (DHCPv4 cannot carry IPv6 ones).
    pub nameservers: Vec<Ipv4Addr>,
    /// The search domains, without trailing dots.
    pub search: Vec<String>,
}

impl DnsConfig {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<DnsConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
            path: path.into(),
            source,
        })?;
        Ok(DnsConfig::parse(&text))
    }

    /// Parses resolv.conf text as resolv.conf(5) does: `nameserver` lines accumulate, and the
    /// last `search` or `domain` line sets the search list. Unlike glibc (which stops at 3),
    /// every nameserver is kept: the VM's resolver decides how many it uses.
    pub fn parse(text: &str) -> DnsConfig {
        let mut cfg = DnsConfig::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // An IPv6 server may carry a zone (%eth0); DHCPv4 has no place for it.
                    match words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        Some(IpAddr::V4(a)) if !cfg.nameservers.contains(&a) => {
                            cfg.nameservers.push(a)
                        }
                        Some(IpAddr::V4(_)) => {}
                        _ => log::debug!("resolv.conf: skipping non-IPv4 nameserver line {line:?}"),
                    }
                }
                Some("search") | Some("domain") => {
                    cfg.search = words
                        .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                        .filter(|d| {
                            let ok = valid_domain(d);
                            if !ok {
                                log::warn!("resolv.conf: skipping invalid search domain {d:?}");
                            }
                            ok
                        })
                        .collect();
                }
                _ => {}
            }
        }
        cfg
    }
}

/// A name that fits DNS wire format: labels of 1..=63 bytes, at most 253 bytes in all.
pub(crate) fn valid_domain(d: &str) -> bool {
    !d.is_empty() && d.len() <= 253 && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_style_file() {
        let c = DnsConfig::parse(
            "# generated\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\nnameserver 10.96.0.11 # second\n\tnameserver   10.96.0.12\n\
             nameserver fd00::10\nnameserver 10.96.0.10\nnameserver 10.96.0.13\noptions ndots:5\n",
        );
        assert_eq!(
            c.nameservers,
            ["10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.13"]
                .map(|s| s.parse::<Ipv4Addr>().unwrap())
        );
        assert_eq!(
            c.search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
    }

    #[test]
    fn last_search_or_domain_wins_and_junk_is_skipped() {
        let c =
            DnsConfig::parse("search a.example b.example\ndomain Corp.Example.\nnameserver nope\n");
        assert_eq!(c.search, ["corp.example"]);
        assert!(c.nameservers.is_empty());
        let long = "x".repeat(64);
        let c = DnsConfig::parse(&format!("search ok.example {long}.example a..b\n"));
        assert_eq!(c.search, ["ok.example"]);
        assert_eq!(DnsConfig::parse(""), DnsConfig::default());
    }

    #[test]
    fn unreadable_file_is_a_resolv_conf_error() {
        let e = DnsConfig::read(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert!(matches!(e, Error::ResolvConf { .. }));
        assert!(e.to_string().contains("/nonexistent/resolv.conf"));
    }
}
