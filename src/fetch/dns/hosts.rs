//! The pod's `/etc/hosts`, read the way glibc reads it. (resolv.conf is read by
//! [`netplumb::ResolvConf`], which the pod network shares.)

use std::net::IpAddr;

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
    fn hosts_file() {
        let h = "127.0.0.1 localhost\n# 10.0.0.1 img\n10.0.0.2 img.local Img # pod\n::1 img\n";
        assert_eq!(
            hosts_lookup(h, "IMG."),
            vec![IpAddr::from([10, 0, 0, 2]), "::1".parse().unwrap()]
        );
        assert!(hosts_lookup(h, "other").is_empty());
    }
}
