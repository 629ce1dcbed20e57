//! The pod's resolver configuration: `/etc/resolv.conf` (nameservers, search list, options) and
//! `/etc/hosts`, read the way glibc reads them.

use std::net::IpAddr;
use std::time::Duration;

/// What `/etc/resolv.conf` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Nameserver addresses in file order (glibc uses the first three; so do we).
    pub nameservers: Vec<IpAddr>,
    /// Search domains, from the last `search` or `domain` line.
    pub search: Vec<String>,
    /// Names with at least this many dots are tried as given before the search list.
    pub ndots: usize,
    /// How long to wait for one server's answer.
    pub timeout: Duration,
    /// How many rounds over the servers.
    pub attempts: u32,
}

impl Default for ResolvConf {
    /// glibc's defaults, including the local server when no `nameserver` line exists.
    fn default() -> Self {
        ResolvConf {
            nameservers: vec![IpAddr::from([127, 0, 0, 1])],
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

impl ResolvConf {
    /// Parses resolv.conf text; unknown lines and options are ignored, like glibc does.
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf {
            nameservers: Vec::new(),
            ..Default::default()
        };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scoped IPv6 address (fe80::1%eth0) keeps only its address part.
                    let addr = words.next().and_then(|w| w.split('%').next()?.parse().ok());
                    if let Some(addr) = addr {
                        if conf.nameservers.len() < 3 {
                            conf.nameservers.push(addr);
                        }
                    }
                }
                Some("search") => {
                    conf.search = words.map(|d| d.trim_end_matches('.').to_string()).collect();
                    conf.search.retain(|d| !d.is_empty());
                }
                Some("domain") => {
                    conf.search = words.next().map(|d| d.to_string()).into_iter().collect();
                }
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
        if conf.nameservers.is_empty() {
            conf.nameservers = ResolvConf::default().nameservers;
        }
        conf
    }

    /// The fully qualified names to try for `name`, in order (resolv.conf(5), `ndots`).
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

/// The addresses `/etc/hosts` text gives `name` (case-insensitive, trailing dot ignored).
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    text.lines()
        .filter_map(|line| {
            let mut words = line.split('#').next()?.split_whitespace();
            let addr: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(addr)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_resolv_conf() {
        let c = ResolvConf::parse(
            "# generated\nsearch ns.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\noptions ndots:5 timeout:2 attempts:3 rotate\n",
        );
        assert_eq!(c.nameservers, vec![IpAddr::from([10, 96, 0, 10])]);
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
        let many = ResolvConf::parse("nameserver 1.1.1.1\nnameserver ::1\nnameserver 2.2.2.2\nnameserver 3.3.3.3\noptions ndots:99 timeout:0");
        assert_eq!(many.nameservers.len(), 3);
        assert_eq!((many.ndots, many.timeout), (15, Duration::from_secs(1)));
    }

    #[test]
    fn hosts_file() {
        let h = "127.0.0.1 localhost\n# 10.0.0.1 img\n10.0.0.2 img.local Img # pod\n::1 img\n";
        assert_eq!(
            hosts_lookup(h, "IMG."),
            vec![IpAddr::from([10, 0, 0, 2]), "::1".parse().unwrap()]
        );
        assert!(hosts_lookup(h, "other").is_empty());
    }
}
