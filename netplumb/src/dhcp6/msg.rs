//! DHCPv6 messages (RFC 8415): a type, a transaction id and options, parsed with bounds.

/// DHCPv6 message types.
pub mod ty {
    /// SOLICIT.
    pub const SOLICIT: u8 = 1;
    /// ADVERTISE.
    pub const ADVERTISE: u8 = 2;
    /// REQUEST.
    pub const REQUEST: u8 = 3;
    /// CONFIRM.
    pub const CONFIRM: u8 = 4;
    /// RENEW.
    pub const RENEW: u8 = 5;
    /// REBIND.
    pub const REBIND: u8 = 6;
    /// REPLY.
    pub const REPLY: u8 = 7;
    /// RELEASE.
    pub const RELEASE: u8 = 8;
    /// DECLINE.
    pub const DECLINE: u8 = 9;
    /// INFORMATION-REQUEST.
    pub const INFORMATION_REQUEST: u8 = 11;
}

/// DHCPv6 option codes.
pub mod opt {
    /// OPTION_CLIENTID.
    pub const CLIENTID: u16 = 1;
    /// OPTION_SERVERID.
    pub const SERVERID: u16 = 2;
    /// OPTION_IA_NA.
    pub const IA_NA: u16 = 3;
    /// OPTION_IA_TA.
    pub const IA_TA: u16 = 4;
    /// OPTION_IAADDR.
    pub const IAADDR: u16 = 5;
    /// OPTION_PREFERENCE.
    pub const PREFERENCE: u16 = 7;
    /// OPTION_STATUS_CODE.
    pub const STATUS_CODE: u16 = 13;
    /// OPTION_RAPID_COMMIT.
    pub const RAPID_COMMIT: u16 = 14;
    /// OPTION_DNS_SERVERS (RFC 3646).
    pub const DNS_SERVERS: u16 = 23;
    /// OPTION_DOMAIN_LIST (RFC 3646).
    pub const DOMAIN_LIST: u16 = 24;
    /// OPTION_IA_PD.
    pub const IA_PD: u16 = 25;
    /// OPTION_INFORMATION_REFRESH_TIME.
    pub const INFORMATION_REFRESH_TIME: u16 = 32;
}

/// Status codes.
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0;
    /// NoAddrsAvail.
    pub const NO_ADDRS_AVAIL: u16 = 2;
    /// NotOnLink.
    pub const NOT_ON_LINK: u16 = 4;
    /// NoPrefixAvail.
    pub const NO_PREFIX_AVAIL: u16 = 6;
}

/// The most options a message may carry before it is dropped: a real client sends under 15,
/// and the bound keeps a hostile guest's 64 KiB of one-byte options from costing anything.
pub const MAX_OPTIONS: usize = 64;

/// A parsed DHCPv6 message. Options borrow from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The message type.
    pub ty: u8,
    /// The 24-bit transaction id.
    pub xid: [u8; 3],
    /// The options in order, (code, value).
    pub options: Vec<(u16, &'a [u8])>,
}

/// Splits an options field into (code, value) pairs; `None` if one runs past the end or
/// there are more than [`MAX_OPTIONS`].
pub fn parse_options(mut d: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while !d.is_empty() {
        if d.len() < 4 || out.len() == MAX_OPTIONS {
            return None;
        }
        let code = u16::from_be_bytes([d[0], d[1]]);
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        let value = d.get(4..4 + len)?;
        out.push((code, value));
        d = &d[4 + len..];
    }
    Some(out)
}

impl<'a> Message<'a> {
    /// Parses a client message (not a relay message: there is no relay on the VM link).
    pub fn parse(d: &'a [u8]) -> Option<Message<'a>> {
        if d.len() < 4 {
            return None;
        }
        Some(Message {
            ty: d[0],
            xid: [d[1], d[2], d[3]],
            options: parse_options(&d[4..])?,
        })
    }

    /// The first option with `code`.
    pub fn option(&self, code: u16) -> Option<&'a [u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| *v)
    }

    /// Every option with `code`.
    pub fn all(&self, code: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.options
            .iter()
            .filter(move |(c, _)| *c == code)
            .map(|(_, v)| *v)
    }
}

/// Appends one option.
pub fn put(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// A status code option's value.
pub fn status_value(code: u16, text: &str) -> Vec<u8> {
    let mut v = code.to_be_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_bounded() {
        let mut d = vec![ty::SOLICIT, 1, 2, 3];
        put(&mut d, opt::CLIENTID, &[0, 3, 0, 1, 2, 0, 0, 0, 0, 1]);
        put(&mut d, opt::RAPID_COMMIT, &[]);
        let m = Message::parse(&d).unwrap();
        assert_eq!((m.ty, m.xid), (1, [1, 2, 3]));
        assert_eq!(m.option(opt::RAPID_COMMIT), Some(&[][..]));
        assert_eq!(m.option(opt::CLIENTID).unwrap().len(), 10);
        // Truncated option, and too many options.
        assert!(Message::parse(&d[..d.len() - 1]).is_none());
        let mut many = vec![ty::SOLICIT, 0, 0, 0];
        for _ in 0..=MAX_OPTIONS {
            put(&mut many, 99, &[]);
        }
        assert!(Message::parse(&many).is_none());
        assert!(Message::parse(&[1, 2]).is_none());
    }
}
