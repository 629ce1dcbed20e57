//! A tiny writer for netlink messages and attributes (TLVs), for the messages that
//! netlink-packet-route has no types for (nf_tables, partial devconf updates).

/// Marks an attribute whose payload is itself a list of attributes.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
/// `struct nlmsghdr` length.
pub(crate) const NLMSG_HDRLEN: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages and attributes to a byte buffer, fixing up lengths as it goes.
#[derive(Default)]
pub(crate) struct NlBuf {
    pub(crate) buf: Vec<u8>,
}

impl NlBuf {
    /// Starts a message (`struct nlmsghdr`); finish it with [`NlBuf::end_msg`].
    pub(crate) fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        start
    }

    /// Writes the message length started at `start`.
    pub(crate) fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Appends raw bytes (a family header such as `struct nfgenmsg`), padded to 4.
    pub(crate) fn raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Appends one attribute.
    pub(crate) fn put(&mut self, ty: u16, data: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.raw(data);
    }

    /// Appends a NUL-terminated string attribute.
    pub(crate) fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    /// Appends a big-endian u32 attribute (nf_tables' integers are in network order).
    pub(crate) fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Appends a nested attribute whose content `f` writes.
    pub(crate) fn nest(&mut self, ty: u16, f: impl FnOnce(&mut NlBuf)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One parsed reply: the message type and, for NLMSG_ERROR, the errno (0 = ACK) and the
/// sequence number of the request it answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) ty: u16,
    pub(crate) seq: u32,
    pub(crate) errno: Option<i32>,
}

/// NLMSG_ERROR (an error or an ACK).
pub(crate) const NLMSG_ERROR: u16 = 2;

/// Splits a datagram from the kernel into replies; stops at the first malformed header.
pub(crate) fn parse_replies(mut data: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            break;
        }
        let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
        let errno = (ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4)
            .then(|| -i32::from_ne_bytes(data[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].try_into().unwrap()));
        // The error's own seq is the request's; fall back to the echoed header's.
        out.push(Reply { ty, seq, errno });
        data = &data[align4(len).min(data.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lengths_and_padding() {
        let mut b = NlBuf::default();
        let m = b.begin_msg(0x0a00, 1, 7);
        b.raw(&[2, 0, 0, 0]);
        b.nest(4, |b| {
            b.put_str(1, "berth"); // 4 + 6 bytes, padded to 12
            b.put_be32(2, 0x64);
        });
        b.end_msg(m);
        let v = &b.buf;
        assert_eq!(
            u32::from_ne_bytes(v[0..4].try_into().unwrap()) as usize,
            v.len()
        );
        assert_eq!(v.len(), 16 + 4 + 4 + 12 + 8);
        assert_eq!(u16::from_ne_bytes(v[20..22].try_into().unwrap()), 24);
        assert_eq!(
            u16::from_ne_bytes(v[22..24].try_into().unwrap()),
            4 | NLA_F_NESTED
        );
        assert_eq!(&v[28..34], b"berth\0");
        assert_eq!(&v[40..44], &[0, 0, 0, 0x64]);
    }

    #[test]
    fn parses_acks_and_errors() {
        let mut d = Vec::new();
        for (seq, err) in [(1u32, 0i32), (2, -17)] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&err.to_ne_bytes());
            d.extend_from_slice(&[0; 16]);
        }
        d.extend_from_slice(&[1, 2, 3]); // trailing junk is ignored
        let r = parse_replies(&d);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Reply {
                ty: NLMSG_ERROR,
                seq: 1,
                errno: Some(0)
            }
        );
        assert_eq!(r[1].errno, Some(17));
    }
}
