//! Ethernet MAC addresses for berth: parsing, printing, and a stable address derived from the
//! hostname.
//!
//! One type for every MAC berth handles: the pod network's (`netplumb`, `VM_MAC`, DHCP,
//! bridge), the seed drive's network description (`seed`) and `berth vm --net`. It is a crate
//! of its own so that `seed` can use it without netplumb's netlink dependencies.

#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

/// An Ethernet (EUI-48) MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// A stable, locally administered, unicast MAC derived from `hostname`, so that a pet VM
    /// keeps its MAC across pod restarts (guests that pin their NIC's MAC keep working).
    ///
    /// The bytes are FNV-1a-64 of the hostname (a fixed algorithm: stable across Rust
    /// versions, unlike `DefaultHasher`) with the locally administered bit set and the
    /// multicast bit cleared, so it cannot collide with a vendor OUI such as QEMU's 52:54:00.
    pub fn from_hostname(hostname: &str) -> MacAddr {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in hostname.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_be_bytes();
        MacAddr([(b[0] | 0x02) & !0x01, b[1], b[2], b[3], b[4], b[5]])
    }

    /// The bridge's MAC for a VM with this MAC: the same with the last bit flipped. Fixed,
    /// so the gateway's MAC in the guest's ARP cache survives berth restarts.
    pub fn bridge_mac(&self) -> MacAddr {
        let mut m = *self;
        m.0[5] ^= 1;
        m
    }

    /// True for a multicast (including broadcast) address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for the all-zero address.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// True if the locally administered bit is set.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

/// Why a string is not a usable MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacParseError {
    /// Not six colon- or dash-separated hex bytes.
    #[error("expected six hex bytes separated by ':' (e.g. 02:00:00:12:34:56)")]
    Syntax,
    /// A multicast or broadcast address cannot be a NIC's address.
    #[error("a multicast address cannot be a NIC's address (clear bit 0 of the first byte)")]
    Multicast,
    /// 00:00:00:00:00:00 cannot be a NIC's address.
    #[error("the all-zero address cannot be a NIC's address")]
    Zero,
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-`; one or two hex digits a byte, any case, as
    /// QEMU's `mac=` did for the original Berth), accepting only unicast, non-zero addresses.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let p = parts.next().ok_or(MacParseError::Syntax)?;
            if p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(MacParseError::Syntax);
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| MacParseError::Syntax)?;
        }
        if parts.next().is_some() {
            return Err(MacParseError::Syntax);
        }
        let mac = MacAddr(out);
        if mac.is_multicast() {
            return Err(MacParseError::Multicast);
        }
        if mac.is_zero() {
            return Err(MacParseError::Zero);
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    /// Lowercase and colon-separated, the form cloud-init compares with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        let m: MacAddr = "02:AB:cd:0e:f0:01".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xab, 0xcd, 0x0e, 0xf0, 0x01]);
        assert_eq!(m.to_string(), "02:ab:cd:0e:f0:01");
        assert_eq!("52-54-00-12-34-56".parse::<MacAddr>().unwrap().0[5], 0x56);
        // The cases of seed's former `Mac`.
        let mac: MacAddr = "52:54:00:AB:cd:0F".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<MacAddr>().unwrap(), mac);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f", // 05 is a multicast byte
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        // seed's `Mac` wanted two digits a byte; `VM_MAC` (like QEMU's `mac=`) takes one.
        assert_eq!(
            "6:54:0:ab:cd:f".parse::<MacAddr>().unwrap().0,
            [0x06, 0x54, 0, 0xab, 0xcd, 0x0f]
        );
    }

    #[test]
    fn parse_rejects_bad_input() {
        for s in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0g",
            "020:00:00:00:00:00",
            "02::00:00:00:00",
            "02:00:00-00:00:00",
            "+2:00:00:00:00:00",
        ] {
            assert_eq!(s.parse::<MacAddr>(), Err(MacParseError::Syntax), "{s}");
        }
        assert_eq!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(MacParseError::Multicast)
        );
        assert_eq!(
            "ff:ff:ff:ff:ff:ff".parse::<MacAddr>(),
            Err(MacParseError::Multicast)
        );
        assert_eq!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(MacParseError::Zero)
        );
    }

    #[test]
    fn hostname_mac_is_stable_local_unicast_and_distinct() {
        let a = MacAddr::from_hostname("cirros-test-0");
        assert_eq!(a, MacAddr::from_hostname("cirros-test-0"));
        assert_ne!(a, MacAddr::from_hostname("cirros-test-1"));
        // Pinned value: a change here would change every existing VM's MAC.
        assert_eq!(a.to_string(), "ca:ba:dc:04:ff:5b");
        for h in ["", "a", "web-0", "x".repeat(253).as_str()] {
            let m = MacAddr::from_hostname(h);
            assert!(
                m.is_local() && !m.is_multicast() && !m.is_zero(),
                "{h}: {m}"
            );
        }
    }
}
