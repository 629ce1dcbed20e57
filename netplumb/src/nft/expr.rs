//! A typed encoder for the few nf_tables expressions berth's NAT rules need, matching what
//! `nft --debug=netlink` shows for the equivalent rules (constants from
//! `linux/netfilter/nf_tables.h`).

use crate::nlattr::NlBuf;

// NFTA_EXPR_*
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
// NFTA_PAYLOAD_*
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
// NFTA_META_*
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
// NFTA_CMP_*
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
// NFTA_IMMEDIATE_*
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
// NFTA_DATA_* and NFTA_VERDICT_*
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
// NFTA_BITWISE_*
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
// NFTA_NAT_*
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;

/// `NFT_REG_VERDICT`: the register an immediate verdict goes to.
pub const REG_VERDICT: u32 = 0;
/// `NFT_REG_1`: the first 128-bit data register, the one nft uses for single matches.
pub const REG_1: u32 = 1;
/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u32 = 2;
/// `NFPROTO_IPV6`.
pub const NFPROTO_IPV6: u32 = 10;

/// Where a payload load starts (`enum nft_payload_bases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    /// The link-layer header.
    LinkLayer = 0,
    /// The IP header.
    Network = 1,
    /// The transport (TCP/UDP/...) header.
    Transport = 2,
}

/// Keys of the meta expression (`enum nft_meta_keys`), only the ones berth uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// The input interface's name (16 bytes, NUL-padded).
    IifName = 6,
    /// The layer-4 protocol number.
    L4Proto = 16,
}

/// Comparison operators (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// Equal.
    Eq = 0,
    /// Not equal.
    Neq = 1,
}

/// Verdicts (`NF_ACCEPT`, `NFT_RETURN`, ...) as the kernel's signed codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop the packet.
    Drop = 0,
    /// Accept the packet.
    Accept = 1,
    /// Stop evaluating this chain and return to the caller (for a base chain: its policy).
    Return = -5,
}

/// NAT kinds (`enum nft_nat_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Rewrite the source.
    Snat = 0,
    /// Rewrite the destination.
    Dnat = 1,
}

/// One nf_tables expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `[ payload load <len>b @ <base> header + <offset> => reg <dreg> ]`
    Payload {
        /// Header the offset is relative to.
        base: PayloadBase,
        /// Byte offset.
        offset: u32,
        /// Byte count.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `[ meta load <key> => reg <dreg> ]`
    Meta {
        /// What to load.
        key: MetaKey,
        /// Destination register.
        dreg: u32,
    },
    /// `[ cmp <op> reg <sreg> <data> ]`
    Cmp {
        /// Source register.
        sreg: u32,
        /// Operator.
        op: CmpOp,
        /// Value compared against, in packet byte order.
        data: Vec<u8>,
    },
    /// `[ bitwise reg <dreg> = ( reg <sreg> & <mask> ) ^ <xor> ]`
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// The mask, in packet byte order.
        mask: Vec<u8>,
        /// The value XORed in afterwards (same length as `mask`).
        xor: Vec<u8>,
    },
    /// `[ immediate reg <dreg> <data> ]`
    Immediate {
        /// Destination register.
        dreg: u32,
        /// The value.
        data: Vec<u8>,
    },
    /// `[ immediate reg 0 <verdict> ]`
    Verdict(Verdict),
    /// `[ nat <kind> ip|ip6 addr_min reg <reg> ]`
    Nat {
        /// SNAT or DNAT.
        kind: NatKind,
        /// [`NFPROTO_IPV4`] or [`NFPROTO_IPV6`]: the address family of the new address.
        family: u32,
        /// Register holding the new address.
        addr_reg: u32,
    },
}

impl Expr {
    /// The expression's kernel name (`NFTA_EXPR_NAME`).
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Nat { .. } => "nat",
        }
    }

    /// Writes the expression as the content of one `NFTA_LIST_ELEM`.
    pub(crate) fn encode(&self, b: &mut NlBuf) {
        b.put_str(NFTA_EXPR_NAME, self.name());
        b.nest(NFTA_EXPR_DATA, |b| match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                b.put_be32(NFTA_PAYLOAD_DREG, *dreg);
                b.put_be32(NFTA_PAYLOAD_BASE, *base as u32);
                b.put_be32(NFTA_PAYLOAD_OFFSET, *offset);
                b.put_be32(NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Meta { key, dreg } => {
                b.put_be32(NFTA_META_KEY, *key as u32);
                b.put_be32(NFTA_META_DREG, *dreg);
            }
            Expr::Cmp { sreg, op, data } => {
                b.put_be32(NFTA_CMP_SREG, *sreg);
                b.put_be32(NFTA_CMP_OP, *op as u32);
                b.nest(NFTA_CMP_DATA, |b| b.put(NFTA_DATA_VALUE, data));
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                b.put_be32(NFTA_BITWISE_SREG, *sreg);
                b.put_be32(NFTA_BITWISE_DREG, *dreg);
                b.put_be32(NFTA_BITWISE_LEN, mask.len() as u32);
                b.nest(NFTA_BITWISE_MASK, |b| b.put(NFTA_DATA_VALUE, mask));
                b.nest(NFTA_BITWISE_XOR, |b| b.put(NFTA_DATA_VALUE, xor));
            }
            Expr::Immediate { dreg, data } => {
                b.put_be32(NFTA_IMMEDIATE_DREG, *dreg);
                b.nest(NFTA_IMMEDIATE_DATA, |b| b.put(NFTA_DATA_VALUE, data));
            }
            Expr::Verdict(v) => {
                b.put_be32(NFTA_IMMEDIATE_DREG, REG_VERDICT);
                b.nest(NFTA_IMMEDIATE_DATA, |b| {
                    b.nest(NFTA_DATA_VERDICT, |b| {
                        b.put_be32(NFTA_VERDICT_CODE, *v as i32 as u32)
                    })
                });
            }
            Expr::Nat {
                kind,
                family,
                addr_reg,
            } => {
                b.put_be32(NFTA_NAT_TYPE, *kind as u32);
                b.put_be32(NFTA_NAT_FAMILY, *family);
                b.put_be32(NFTA_NAT_REG_ADDR_MIN, *addr_reg);
            }
        });
    }
}

/// `ip saddr` (offset 12) or `ip daddr` (offset 16) `== addr`: a payload load and a cmp.
pub fn ip_addr_eq(offset: u32, addr: std::net::Ipv4Addr) -> [Expr; 2] {
    [
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len: 4,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: addr.octets().to_vec(),
        },
    ]
}

/// `ip saddr` (offset 12) or `ip daddr` (offset 16) `NET/PREFIX`: a payload load, the mask
/// and a cmp, as nft writes a prefix match.
pub fn ip_net_eq(offset: u32, net: std::net::Ipv4Addr, prefix: u8) -> [Expr; 3] {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    [
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len: 4,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: mask.to_be_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: (u32::from(net) & mask).to_be_bytes().to_vec(),
        },
    ]
}

/// `ip6 saddr` (offset 8) or `ip6 daddr` (offset 24) `== addr` (or `!=` with `op`).
pub fn ip6_addr_cmp(offset: u32, op: CmpOp, addr: std::net::Ipv6Addr) -> [Expr; 2] {
    [
        Expr::Payload {
            base: PayloadBase::Network,
            offset,
            len: 16,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data: addr.octets().to_vec(),
        },
    ]
}

/// `ip6 saddr` (offset 8) or `ip6 daddr` (offset 24) `NET/PREFIX` (or `!=` with `op`):
/// as nft writes it: a prefix on a byte boundary loads only the bytes it covers and compares
/// them; any other loads the whole address and masks it first.
pub fn ip6_net_cmp(offset: u32, op: CmpOp, net: std::net::Ipv6Addr, prefix: u8) -> Vec<Expr> {
    let prefix = u32::from(prefix.min(128));
    let len = if prefix % 8 == 0 { prefix / 8 } else { 16 };
    let mask: u128 = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    let masked = (u128::from(net) & mask).to_be_bytes()[..len as usize].to_vec();
    let mut v = vec![Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len,
        dreg: REG_1,
    }];
    if prefix % 8 != 0 {
        v.push(Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: mask.to_be_bytes()[..len as usize].to_vec(),
            xor: vec![0; len as usize],
        });
    }
    v.push(Expr::Cmp {
        sreg: REG_1,
        op,
        data: masked,
    });
    v
}

/// `iifname NAME`: the input interface's name, compared as nft does (NUL-padded to IFNAMSIZ).
pub fn iifname_eq(name: &str) -> [Expr; 2] {
    let mut data = vec![0u8; 16];
    let n = name.len().min(15);
    data[..n].copy_from_slice(&name.as_bytes()[..n]);
    [
        Expr::Meta {
            key: MetaKey::IifName,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks attributes as (type without flags, payload) pairs.
    fn attrs(mut d: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut v = Vec::new();
        while d.len() >= 4 {
            let len = u16::from_ne_bytes([d[0], d[1]]) as usize;
            let ty = u16::from_ne_bytes([d[2], d[3]]) & 0x3fff;
            v.push((ty, d[4..len].to_vec()));
            d = &d[((len + 3) & !3).min(d.len())..];
        }
        v
    }

    #[test]
    fn payload_encodes_like_nft() {
        // nft: [ payload load 4b @ network header + 16 => reg 1 ]
        let mut b = NlBuf::default();
        ip_addr_eq(16, "10.0.0.2".parse().unwrap())[0].encode(&mut b);
        let a = attrs(&b.buf);
        assert_eq!(a[0], (NFTA_EXPR_NAME, b"payload\0".to_vec()));
        let data = attrs(&a[1].1);
        assert_eq!(
            data,
            vec![
                (1, vec![0, 0, 0, 1]),
                (2, vec![0, 0, 0, 1]),
                (3, vec![0, 0, 0, 16]),
                (4, vec![0, 0, 0, 4])
            ]
        );
    }

    #[test]
    fn return_verdict_is_minus_five_in_network_order() {
        let mut b = NlBuf::default();
        Expr::Verdict(Verdict::Return).encode(&mut b);
        let a = attrs(&b.buf);
        assert_eq!(a[0].1, b"immediate\0");
        let data = attrs(&a[1].1);
        assert_eq!(data[0], (NFTA_IMMEDIATE_DREG, vec![0, 0, 0, 0]));
        let verdict = attrs(&attrs(&data[1].1)[0].1);
        assert_eq!(
            verdict[0],
            (NFTA_VERDICT_CODE, (-5i32).to_be_bytes().to_vec())
        );
    }

    #[test]
    fn cmp_carries_value_in_packet_order() {
        let mut b = NlBuf::default();
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: 5900u16.to_be_bytes().to_vec(),
        }
        .encode(&mut b);
        let data = attrs(&attrs(&b.buf)[1].1);
        assert_eq!(attrs(&data[2].1)[0], (NFTA_DATA_VALUE, vec![0x17, 0x0c]));
    }
}
