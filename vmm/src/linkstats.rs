//! A network interface's packet counters as the kernel keeps them, read over rtnetlink
//! (RTM_GETLINK, the IFLA_STATS64 attribute).
//!
//! When vhost-net serves a NIC the frames go between the guest and the tap inside the kernel and
//! berth never sees them, so the NIC's counters come from the tap's own: they count both
//! datapaths alike. The socket is opened during set-up and kept, so reading needs only `sendto`
//! and `recvfrom` (allowed to the metrics and control threads), no file access, no capability:
//! RTM_GETLINK is open to any user.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Counters of one interface, from the kernel's point of view (for a tap, `rx` is what the
/// process on the tap's fd wrote, `tx` what it was given to read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received by the interface.
    pub rx_packets: u64,
    /// Frames sent by the interface.
    pub tx_packets: u64,
    /// Bytes received (Ethernet frames, no virtio-net header).
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Received frames dropped.
    pub rx_dropped: u64,
    /// Frames to send dropped (for a tap: its reader did not keep up).
    pub tx_dropped: u64,
}

const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const IFLA_STATS64: u16 = 23;
/// The reply to one RTM_GETLINK is a few KiB; bigger ones are cut (and the stats attribute
/// comes early).
const REPLY_MAX: usize = 32 * 1024;
/// Stale replies (of a request that timed out) skipped before giving up.
const MAX_STALE: usize = 8;

/// An rtnetlink socket bound to one interface, by index.
pub struct LinkCounters {
    sock: OwnedFd,
    ifindex: u32,
    seq: u32,
}

impl LinkCounters {
    /// Opens a NETLINK_ROUTE socket (with a 1 s receive timeout) for the interface `ifindex`,
    /// and checks it answers.
    pub fn open(ifindex: u32) -> io::Result<LinkCounters> {
        // SAFETY: plain socket creation; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new socket nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO reads a timeval from the pointer, valid for the call.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut c = LinkCounters {
            sock,
            ifindex,
            seq: 0,
        };
        c.read()?;
        Ok(c)
    }

    /// Opens the counters of the tap behind `tap` (its name from TUNGETIFF, then its index).
    pub fn for_tap(tap: &impl AsFd) -> io::Result<LinkCounters> {
        // SAFETY: ifreq is plain data, zeroes are valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // TUNGETIFF = _IOR('T', 210, unsigned int).
        const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
        // SAFETY: TUNGETIFF writes an ifreq (name and flags) to the pointer, valid for the call.
        if unsafe { libc::ioctl(tap.as_fd().as_raw_fd(), TUNGETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel NUL-terminates the name within its IFNAMSIZ bytes.
        // SAFETY: ifr_name holds a NUL-terminated string (see above).
        let index = unsafe { libc::if_nametoindex(req.ifr_name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        LinkCounters::open(index)
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Asks the kernel for the interface's counters now.
    pub fn read(&mut self) -> io::Result<LinkStats> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = [0u8; NLMSG_HDR + IFINFOMSG];
        req[0..4].copy_from_slice(&((NLMSG_HDR + IFINFOMSG) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
        req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // ifinfomsg: family AF_UNSPEC, type 0, then the index.
        req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(self.ifindex as i32).to_ne_bytes());
        // SAFETY: sockaddr_nl is plain data; zeroes address the kernel (pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and the address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; REPLY_MAX];
        for _ in 0..MAX_STALE {
            // SAFETY: the buffer is valid for writes of its length.
            let n = unsafe {
                libc::recvfrom(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match parse_reply(&buf[..n as usize], self.seq)? {
                Some(s) => return Ok(s),
                None => continue,
            }
        }
        Err(io::Error::other("no rtnetlink reply for the interface"))
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The stats in one datagram of replies: `Ok(None)` when it answers another request.
fn parse_reply(b: &[u8], seq: u32) -> io::Result<Option<LinkStats>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let mut at = 0;
    while at + NLMSG_HDR <= b.len() {
        let len = u32_at(b, at).ok_or_else(bad)? as usize;
        let kind = u16_at(b, at + 4).ok_or_else(bad)?;
        if len < NLMSG_HDR || at + len > b.len() {
            return Err(bad());
        }
        let msg = &b[at..at + len];
        at += (len + 3) & !3;
        if u32_at(msg, 8) != Some(seq) {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                let errno = u32_at(msg, NLMSG_HDR).ok_or_else(bad)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            RTM_NEWLINK => return attrs_stats(&msg[NLMSG_HDR..]).map(Some).ok_or_else(bad),
            _ => {}
        }
    }
    Ok(None)
}

/// IFLA_STATS64 (struct rtnl_link_stats64) among the attributes after an ifinfomsg.
fn attrs_stats(body: &[u8]) -> Option<LinkStats> {
    let mut at = IFINFOMSG;
    while at + 4 <= body.len() {
        let len = usize::from(u16_at(body, at)?);
        let kind = u16_at(body, at + 2)? & 0x3fff;
        if len < 4 || at + len > body.len() {
            return None;
        }
        if kind == IFLA_STATS64 {
            let s = &body[at + 4..at + len];
            return Some(LinkStats {
                rx_packets: u64_at(s, 0)?,
                tx_packets: u64_at(s, 8)?,
                rx_bytes: u64_at(s, 16)?,
                tx_bytes: u64_at(s, 24)?,
                rx_dropped: u64_at(s, 48)?,
                tx_dropped: u64_at(s, 56)?,
            });
        }
        at += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback exists in every namespace: its counters move when packets go over it.
    #[test]
    fn loopback_counters_follow_traffic() {
        let mut lo = LinkCounters::open(1).expect("rtnetlink");
        let before = lo.read().unwrap();
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload = [7u8; 1000];
        for _ in 0..10 {
            s.send_to(&payload, s.local_addr().unwrap()).unwrap();
        }
        let after = lo.read().unwrap();
        // 10 datagrams of 1000 bytes plus IP/UDP/Ethernet headers, in each direction
        // (loopback counts a frame as sent and received); other traffic may add some.
        assert!(
            after.tx_packets - before.tx_packets >= 10,
            "{before:?} {after:?}"
        );
        assert!(
            after.rx_bytes - before.rx_bytes >= 10_000,
            "{before:?} {after:?}"
        );
        assert!(
            after.rx_bytes - before.rx_bytes < 1_000_000,
            "{before:?} {after:?}"
        );
    }

    #[test]
    fn a_missing_interface_is_an_error() {
        let e = LinkCounters::open(0x7fff_fff0)
            .err()
            .expect("no such interface");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }

    #[test]
    fn replies_are_checked() {
        // A truncated message, and one for another request.
        assert!(parse_reply(&[32, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0], 1).is_ok());
        let mut other = vec![0u8; 32];
        other[0] = 32;
        other[4] = RTM_NEWLINK as u8;
        other[8] = 9;
        assert_eq!(parse_reply(&other, 1).unwrap(), None);
        other[0] = 64;
        assert!(parse_reply(&other, 9).is_err());
    }
}
