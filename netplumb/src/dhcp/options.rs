//! DHCP option encoding and decoding: long options split per RFC 3396, the domain search
//! list (option 119) per RFC 3397 with RFC 1035 name compression.

use std::collections::HashMap;

/// Option codes berth reads or writes.
pub mod code {
    /// Padding.
    pub const PAD: u8 = 0;
    /// Subnet mask.
    pub const SUBNET_MASK: u8 = 1;
    /// Router.
    pub const ROUTER: u8 = 3;
    /// Domain name servers.
    pub const DNS: u8 = 6;
    /// Host name.
    pub const HOSTNAME: u8 = 12;
    /// Domain name (the first search domain, for clients without option 119).
    pub const DOMAIN_NAME: u8 = 15;
    /// Interface MTU.
    pub const MTU: u8 = 26;
    /// Broadcast address.
    pub const BROADCAST: u8 = 28;
    /// Requested IP address.
    pub const REQUESTED_IP: u8 = 50;
    /// Lease time.
    pub const LEASE_TIME: u8 = 51;
    /// DHCP message type.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier.
    pub const SERVER_ID: u8 = 54;
    /// Renewal (T1) time.
    pub const RENEWAL_TIME: u8 = 58;
    /// Rebinding (T2) time.
    pub const REBINDING_TIME: u8 = 59;
    /// Domain search list.
    pub const DOMAIN_SEARCH: u8 = 119;
    /// End of options.
    pub const END: u8 = 255;
}

/// Parses an options field into (code, value) pairs, concatenating repeated codes as RFC 3396
/// requires. `None` if an option runs past the end of the field.
pub fn parse(mut data: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    while let Some((&c, rest)) = data.split_first() {
        match c {
            code::PAD => data = rest,
            code::END => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                match out.iter_mut().find(|(k, _)| *k == c) {
                    Some((_, v)) => v.extend_from_slice(value),
                    None => out.push((c, value.to_vec())),
                }
                data = &rest[usize::from(len)..];
            }
        }
    }
    Some(out)
}

/// Appends an option, split into 255-byte pieces if longer (RFC 3396).
pub fn put(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    if value.is_empty() {
        out.extend_from_slice(&[code, 0]);
    }
    for chunk in value.chunks(255) {
        out.push(code);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// Encodes a domain search list as RFC 1035 names with compression pointers relative to
/// the start of the option data (RFC 3397). Names must already be valid
/// (see `resolv::valid_domain`).
pub fn encode_search(domains: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for d in domains {
        let labels: Vec<&str> = d.split('.').collect();
        let mut i = 0;
        loop {
            if i == labels.len() {
                out.push(0);
                break;
            }
            let suffix = labels[i..].join(".");
            if let Some(&off) = seen.get(&suffix) {
                out.extend_from_slice(&(0xc000 | off as u16).to_be_bytes());
                break;
            }
            // A pointer holds 14 bits: suffixes past that offset are written out in full.
            if out.len() < 0x4000 {
                seen.insert(suffix, out.len());
            }
            out.push(labels[i].len() as u8);
            out.extend_from_slice(labels[i].as_bytes());
            i += 1;
        }
    }
    out
}

/// Decodes an RFC 3397 search list; `None` on a malformed or looping list.
pub fn decode_search(data: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let mut labels: Vec<String> = Vec::new();
        let mut p = pos;
        let mut jumped = false;
        let mut hops = 0;
        loop {
            let len = *data.get(p)?;
            if len == 0 {
                if !jumped {
                    pos = p + 1;
                }
                break;
            } else if len & 0xc0 == 0xc0 {
                let target = usize::from(u16::from_be_bytes([len, *data.get(p + 1)?]) & 0x3fff);
                if !jumped {
                    pos = p + 2;
                }
                jumped = true;
                hops += 1;
                if hops > 128 || target >= data.len() {
                    return None;
                }
                p = target;
            } else if len & 0xc0 != 0 {
                return None;
            } else {
                let label = data.get(p + 1..p + 1 + usize::from(len))?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                p += 1 + usize::from(len);
            }
        }
        out.push(labels.join("."));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_list_matches_rfc3397_example() {
        // RFC 3397 section 2: eng.apple.com, marketing.apple.com.
        let enc = encode_search(&["eng.apple.com".into(), "marketing.apple.com".into()]);
        let mut want = b"\x03eng\x05apple\x03com\x00\x09marketing".to_vec();
        want.extend_from_slice(&[0xc0, 0x04]);
        assert_eq!(enc, want);
        assert_eq!(
            decode_search(&enc).unwrap(),
            ["eng.apple.com", "marketing.apple.com"]
        );
    }

    #[test]
    fn kubernetes_search_list_round_trips_compressed() {
        let list: Vec<String> = [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "example.com",
        ]
        .map(String::from)
        .to_vec();
        let enc = encode_search(&list);
        assert!(enc.len() < list.iter().map(|d| d.len() + 2).sum::<usize>());
        assert_eq!(decode_search(&enc).unwrap(), list);
    }

    #[test]
    fn decode_rejects_loops_and_truncation() {
        assert_eq!(decode_search(&[0xc0, 0x00]), None);
        assert_eq!(decode_search(&[3, b'a', b'b']), None);
        assert_eq!(decode_search(&[0x40]), None);
    }

    #[test]
    fn long_options_split_and_concatenate() {
        let value: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        put(&mut out, code::DNS, &value);
        assert_eq!(out.len(), 600 + 3 * 2);
        out.push(code::END);
        let parsed = parse(&out).unwrap();
        assert_eq!(parsed, vec![(code::DNS, value)]);
        assert_eq!(parse(&[code::DNS, 4, 1, 2]), None);
        assert_eq!(
            parse(&[code::PAD, code::PAD, code::END, 9, 9]).unwrap(),
            vec![]
        );
    }
}
