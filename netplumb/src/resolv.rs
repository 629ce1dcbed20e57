//! Reading resolv.conf(5) the way glibc reads it, for both of berth's users of the file: the pod
//! network hands the VM the pod's IPv4 nameservers and search list by DHCP ([`DnsConfig`]), and
//! the image fetch's stub resolver asks the nameservers of both families with the search list,
//! `ndots`, `timeout` and `attempts` ([`ResolvConf`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// glibc's MAXNS: how many nameservers its stub resolver asks.
const MAXNS: usize = 3;

/// What a resolv.conf says: every nameserver, the search list and the resolver options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Every nameserver address, IPv4 and IPv6, in file order, duplicates kept; an IPv6
    /// address's zone (`fe80::1%eth0`) is dropped. Empty when the file names none: see
    /// [`ResolvConf::resolver_nameservers`] for what a stub resolver asks then.
    pub nameservers: Vec<IpAddr>,
    /// The search domains of the last `search` or `domain` line (a `domain` line names one),
    /// without trailing dots.
    pub search: Vec<String>,
    /// `options ndots:N` (at most 15): names with at least this many dots are tried as given
    /// before the search list.
    pub ndots: usize,
    /// `options timeout:N` (1 to 30 s): how long to wait for one server's answer.
    pub timeout: Duration,
    /// `options attempts:N` (1 to 5): how many rounds over the servers.
    pub attempts: u32,
}

impl Default for ResolvConf {
    /// What an empty file means: no nameserver, no search list, glibc's option defaults.
    fn default() -> Self {
        ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

impl ResolvConf {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<ResolvConf> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
            path: path.into(),
            source,
        })?;
        Ok(ResolvConf::parse(&text))
    }

    /// Parses resolv.conf text as resolv.conf(5) describes: `nameserver` lines accumulate
    /// (unparsable ones are skipped), the last `search` or `domain` line sets the search list,
    /// and `options` sets `ndots`, `timeout` and `attempts` (clamped to glibc's limits).
    /// Unknown lines and options are ignored, as glibc does.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => match words.next().and_then(nameserver) {
                    Some(addr) => conf.nameservers.push(addr),
                    None => log::debug!("resolv.conf: skipping nameserver line {line:?}"),
                },
                Some("search") => conf.search = search_list(words),
                Some("domain") => conf.search = search_list(words.take(1)),
                Some("options") => {
                    for opt in words {
                        let (key, val) = opt.split_once(':').unwrap_or((opt, ""));
                        let val: Option<u64> = val.parse().ok();
                        match (key, val) {
                            ("ndots", Some(n)) => conf.ndots = n.min(15) as usize,
                            ("timeout", Some(n)) => {
                                conf.timeout = Duration::from_secs(n.clamp(1, 30));
                            }
                            ("attempts", Some(n)) => conf.attempts = n.clamp(1, 5) as u32,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// The nameservers a stub resolver asks, as glibc's: the first three, or the local server
    /// 127.0.0.1 when the file names none.
    pub fn resolver_nameservers(&self) -> Vec<IpAddr> {
        if self.nameservers.is_empty() {
            return vec![IpAddr::from([127, 0, 0, 1])];
        }
        self.nameservers.iter().take(MAXNS).copied().collect()
    }

    /// The fully qualified names to try for `name`, in order (resolv.conf(5), `ndots`): a
    /// name with a trailing dot alone; one with at least `ndots` dots as given, then with each
    /// search domain; any other with each search domain, then as given.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

/// A `nameserver` address as glibc takes it: IPv4, or IPv6 with an optional `%zone` (dropped).
fn nameserver(word: &str) -> Option<IpAddr> {
    match word.split_once('%') {
        Some((addr, _zone)) => addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => word.parse().ok(),
    }
}

/// Search domains without their trailing dots; a domain that is only dots is dropped.
fn search_list<'a>(words: impl Iterator<Item = &'a str>) -> Vec<String> {
    words
        .map(|w| w.trim_end_matches('.'))
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// The DNS settings the VM inherits from the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Every IPv4 nameserver, in file order, without duplicates (DHCPv4 cannot carry IPv6 ones).
    pub nameservers: Vec<Ipv4Addr>,
    /// Every IPv6 nameserver the VM can reach through the NAT (link-local ones cannot be),
    /// in file order, without duplicates: for router advertisements (RDNSS) and DHCPv6.
    pub nameservers6: Vec<Ipv6Addr>,
    /// The search domains, lowercase, without trailing dots; names DNS wire format cannot
    /// carry are left out.
    pub search: Vec<String>,
}

impl DnsConfig {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<DnsConfig> {
        Ok(DnsConfig::from(&ResolvConf::read(path)?))
    }

    /// Parses resolv.conf text ([`ResolvConf::parse`]) and keeps what the VM gets.
    pub fn parse(text: &str) -> DnsConfig {
        DnsConfig::from(&ResolvConf::parse(text))
    }
}

impl From<&ResolvConf> for DnsConfig {
    /// Unlike glibc (which stops at 3), every IPv4 nameserver is kept: the VM's resolver decides
    /// how many it uses.
    fn from(conf: &ResolvConf) -> DnsConfig {
        let mut nameservers = Vec::new();
        let mut nameservers6 = Vec::new();
        for addr in &conf.nameservers {
            match addr {
                IpAddr::V4(a) if !nameservers.contains(a) => nameservers.push(*a),
                IpAddr::V4(_) => {}
                IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 || a.is_loopback() => {
                    log::debug!("resolv.conf: the VM cannot reach IPv6 nameserver {a}")
                }
                IpAddr::V6(a) if !nameservers6.contains(a) => nameservers6.push(*a),
                IpAddr::V6(_) => {}
            }
        }
        let search = conf
            .search
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .filter(|d| {
                let ok = valid_domain(d);
                if !ok {
                    log::warn!("resolv.conf: skipping invalid search domain {d:?}");
                }
                ok
            })
            .collect();
        DnsConfig {
            nameservers,
            nameservers6,
            search,
        }
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

    #[test]
    fn kubernetes_resolv_conf() {
        let c = ResolvConf::parse(
            "# generated\nsearch ns.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\noptions ndots:5 timeout:2 attempts:3 rotate\n",
        );
        assert_eq!(c.nameservers, vec![IpAddr::from([10, 96, 0, 10])]);
        assert_eq!(c.resolver_nameservers(), c.nameservers);
        assert_eq!(c.search.len(), 3);
        assert_eq!(
            (c.ndots, c.timeout, c.attempts),
            (5, Duration::from_secs(2), 3)
        );
        let names = c.candidates("img.example.com");
        assert_eq!(names[0], "img.example.com.ns.svc.cluster.local");
        assert_eq!(names.last().unwrap(), "img.example.com");
        assert_eq!(c.candidates("img.example.com."), vec!["img.example.com"]);
    }

    #[test]
    fn defaults_domain_and_limits() {
        let c = ResolvConf::parse("domain corp.example\nnameserver fe80::1%eth0\nnameserver x\n");
        assert_eq!(c.search, vec!["corp.example"]);
        assert_eq!(c.nameservers, vec!["fe80::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.candidates("a.b"), vec!["a.b", "a.b.corp.example"]);
        assert_eq!(c.candidates("a"), vec!["a.corp.example", "a"]);
        let empty = ResolvConf::parse("");
        assert_eq!(empty, ResolvConf::default());
        assert_eq!(
            empty.resolver_nameservers(),
            vec![IpAddr::from([127, 0, 0, 1])]
        );
        let many = ResolvConf::parse("nameserver 1.1.1.1\nnameserver ::1\nnameserver 2.2.2.2\nnameserver 3.3.3.3\noptions ndots:99 timeout:0");
        assert_eq!(many.nameservers.len(), 4);
        assert_eq!(many.resolver_nameservers(), many.nameservers[..3]);
        assert_eq!((many.ndots, many.timeout), (15, Duration::from_secs(1)));
    }

    #[test]
    fn both_users_read_one_file_alike() {
        // The pod's resolver and the VM see the same search list; the VM gets only the
        // IPv4 servers, all of them, once each.
        let text = "domain A.example. b.example\nnameserver fd00::1\nnameserver 10.0.0.1\n\
                    nameserver 10.0.0.2\nnameserver 10.0.0.1\nnameserver 10.0.0.3\n\
                    nameserver 10.0.0.1%eth0\nsearch ..\n";
        let conf = ResolvConf::parse(text);
        assert!(conf.search.is_empty(), "a search line of dots is empty");
        let conf = ResolvConf::parse(&text.replace("search ..\n", ""));
        assert_eq!(conf.search, ["A.example"], "a domain line names one domain");
        assert_eq!(conf.nameservers.len(), 5, "{:?}", conf.nameservers);
        assert_eq!(
            conf.resolver_nameservers(),
            ["fd00::1", "10.0.0.1", "10.0.0.2"].map(|s| s.parse::<IpAddr>().unwrap())
        );
        let dns = DnsConfig::from(&conf);
        assert_eq!(dns.search, ["a.example"]);
        assert_eq!(dns.nameservers6, ["fd00::1".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(
            dns.nameservers,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(|s| s.parse::<Ipv4Addr>().unwrap())
        );
    }
}
