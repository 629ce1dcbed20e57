//! DNS messages (RFC 1035): the A/AAAA query berth sends and the parts of an answer it reads.
//!
//! Only what a stub resolver needs: one question per message, answers scanned for A and AAAA
//! records (CNAME chains are followed by the recursive server, whose answer section carries the
//! final addresses). Every length is bounds-checked: a malformed answer is an error, never a
//! panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record type A (IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type AAAA (IPv6 address).
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Response code: the name does not exist.
pub const RCODE_NXDOMAIN: u8 = 3;

/// A parsed answer to one of our queries.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The message ID (matches the query's).
    pub id: u16,
    /// TC: the answer did not fit in UDP; ask again over TCP.
    pub truncated: bool,
    /// The response code (0 = no error, 3 = NXDOMAIN, 2 = SERVFAIL, ...).
    pub rcode: u8,
    /// The A and AAAA addresses of the answer section, in order.
    pub addrs: Vec<IpAddr>,
}

/// Why a message could not be built or read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The name has an empty or over-long label, or is longer than 253 characters.
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    /// The message ends inside a field.
    #[error("truncated DNS message")]
    Short,
    /// A compressed name loops or points forward.
    #[error("bad name compression in DNS message")]
    BadPointer,
    /// The message is not an answer to our question.
    #[error("DNS answer does not match the question")]
    Mismatch,
}

/// Encodes a recursive query for `name` (without trailing dot) and record type `qtype`.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, WireError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(WireError::BadName(name.to_string()));
    }
    let mut m = Vec::with_capacity(18 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0x0100u16.to_be_bytes()); // RD: ask for recursion
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT 1, no other sections
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(WireError::BadName(name.to_string()));
        }
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(m)
}

/// A bounds-checked reader over a message.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Short)?;
        let s = self.msg.get(self.pos..end).ok_or(WireError::Short)?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a possibly compressed name at the cursor, lower-cased, labels joined by dots.
    fn name(&mut self) -> Result<String, WireError> {
        let mut out = String::new();
        let mut pos = self.pos;
        let mut jumped = false;
        // Pointers must go strictly backwards, so following them always terminates; the
        // hop limit is a second guard.
        let mut hops = 0;
        loop {
            let len = *self.msg.get(pos).ok_or(WireError::Short)? as usize;
            match len {
                0 => {
                    if !jumped {
                        self.pos = pos + 1;
                    }
                    return Ok(out);
                }
                l if l & 0xc0 == 0xc0 => {
                    let lo = *self.msg.get(pos + 1).ok_or(WireError::Short)? as usize;
                    let target = ((l & 0x3f) << 8) | lo;
                    hops += 1;
                    if target >= pos || hops > 64 {
                        return Err(WireError::BadPointer);
                    }
                    if !jumped {
                        self.pos = pos + 2;
                        jumped = true;
                    }
                    pos = target;
                }
                l if l > 63 => return Err(WireError::BadPointer),
                l => {
                    let label = self.msg.get(pos + 1..pos + 1 + l).ok_or(WireError::Short)?;
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
                    if out.len() > 255 {
                        return Err(WireError::BadPointer);
                    }
                    pos += 1 + l;
                }
            }
        }
    }
}

/// Parses an answer to the query (`id`, `name`, `qtype`); records of other types are skipped.
pub fn parse_answer(msg: &[u8], id: u16, name: &str, qtype: u16) -> Result<Answer, WireError> {
    let mut r = Reader { msg, pos: 0 };
    let got_id = r.u16()?;
    let flags = r.u16()?;
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    r.take(4)?; // NSCOUNT, ARCOUNT: not needed
    if got_id != id || flags & 0x8000 == 0 {
        return Err(WireError::Mismatch);
    }
    let truncated = flags & 0x0200 != 0;
    let rcode = (flags & 0x000f) as u8;
    let want = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    // Servers echo the question; a reply without it (some SERVFAILs) is still usable for its
    // rcode, but a different question is someone else's answer.
    if qdcount > 1 {
        return Err(WireError::Mismatch);
    }
    if qdcount == 1 {
        let qname = r.name()?;
        let t = r.u16()?;
        r.u16()?;
        if qname != want || t != qtype {
            return Err(WireError::Mismatch);
        }
    }
    let mut addrs = Vec::new();
    if !truncated {
        for _ in 0..ancount {
            r.name()?;
            let rtype = r.u16()?;
            let class = r.u16()?;
            r.take(4)?; // TTL
            let len = r.u16()? as usize;
            let data = r.take(len)?;
            match (rtype, class, data.len()) {
                (TYPE_A, CLASS_IN, 4) if qtype == TYPE_A => {
                    addrs.push(IpAddr::V4(Ipv4Addr::new(
                        data[0], data[1], data[2], data[3],
                    )));
                }
                (TYPE_AAAA, CLASS_IN, 16) if qtype == TYPE_AAAA => {
                    let b: [u8; 16] = data.try_into().expect("length checked");
                    addrs.push(IpAddr::V6(Ipv6Addr::from(b)));
                }
                _ => {}
            }
        }
    }
    Ok(Answer {
        id,
        truncated,
        rcode,
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply to `query` with the given flags and raw answer records appended.
    fn reply(query: &[u8], flags: u16, answers: &[&[u8]]) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for a in answers {
            m.extend_from_slice(a);
        }
        m
    }

    /// A record whose owner is a pointer to the question name (offset 12).
    fn record(rtype: u16, data: &[u8]) -> Vec<u8> {
        let mut r = vec![0xc0, 12];
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn query_layout() {
        let q = encode_query(0x1234, "img.example.", TYPE_A).unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x03img\x07example\x00\x00\x01\x00\x01");
        assert!(encode_query(1, "a..b", TYPE_A).is_err());
        assert!(encode_query(1, &"x".repeat(64), TYPE_A).is_err());
        assert!(encode_query(1, "", TYPE_A).is_err());
    }

    #[test]
    fn reads_addresses_through_a_cname() {
        let q = encode_query(7, "img.example", TYPE_A).unwrap();
        let mut cname = vec![0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2];
        cname.extend_from_slice(&[0xc0, 16]); // "example": a backwards pointer
        let a = record(TYPE_A, &[10, 1, 2, 3]);
        let aaaa = record(TYPE_AAAA, &[0; 16]); // wrong type for this query: skipped
        let m = reply(&q, 0x8180, &[&cname, &a, &aaaa]);
        let ans = parse_answer(&m, 7, "IMG.example.", TYPE_A).unwrap();
        assert_eq!(ans.addrs, vec![IpAddr::from([10, 1, 2, 3])]);
        assert_eq!((ans.rcode, ans.truncated), (0, false));
    }

    #[test]
    fn rcode_truncation_and_mismatches() {
        let q = encode_query(9, "nope.example", TYPE_AAAA).unwrap();
        let nx = parse_answer(&reply(&q, 0x8183, &[]), 9, "nope.example", TYPE_AAAA).unwrap();
        assert_eq!(nx.rcode, RCODE_NXDOMAIN);
        let tc = parse_answer(&reply(&q, 0x8380, &[]), 9, "nope.example", TYPE_AAAA).unwrap();
        assert!(tc.truncated);
        let m = reply(&q, 0x8180, &[]);
        assert_eq!(
            parse_answer(&m, 8, "nope.example", TYPE_AAAA),
            Err(WireError::Mismatch)
        );
        assert_eq!(
            parse_answer(&m, 9, "other.example", TYPE_AAAA),
            Err(WireError::Mismatch)
        );
        assert_eq!(
            parse_answer(&m, 9, "nope.example", TYPE_A),
            Err(WireError::Mismatch)
        );
        assert_eq!(
            parse_answer(&q, 9, "nope.example", TYPE_AAAA),
            Err(WireError::Mismatch)
        );
    }

    #[test]
    fn compression_loops_are_rejected() {
        let q = encode_query(1, "a", TYPE_A).unwrap();
        let mut m = reply(&q, 0x8180, &[&[0xc0, 19, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]]);
        assert_eq!(parse_answer(&m, 1, "a", TYPE_A), Err(WireError::BadPointer));
        m.truncate(m.len() - 3);
        assert!(parse_answer(&m, 1, "a", TYPE_A).is_err());
    }

    /// Fuzz-ish: random mutations and truncations of a valid answer never panic and never
    /// yield more addresses than the message holds.
    #[test]
    fn mutated_answers_never_panic() {
        let q = encode_query(0xbeef, "host.example", TYPE_A).unwrap();
        let a = record(TYPE_A, &[127, 0, 0, 1]);
        let base = reply(&q, 0x8180, &[&a, &a]);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            m.truncate((next() as usize) % (m.len() + 1));
            if let Ok(ans) = parse_answer(&m, 0xbeef, "host.example", TYPE_A) {
                assert!(ans.addrs.len() <= 2);
            }
        }
        let ok = parse_answer(&base, 0xbeef, "host.example", TYPE_A).unwrap();
        assert_eq!(ok.addrs, vec![IpAddr::from([127, 0, 0, 1]); 2]);
    }
}
