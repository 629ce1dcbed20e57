//! Runs a [`Responder6`] on an AF_PACKET socket bound to the bridge, on its own thread, and
//! sends the periodic router advertisements.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Binding, Config6, Responder6, RA_INTERVAL_SECS};
use crate::error::{Error, Result};
use crate::MacAddr;

const ETH_P_IPV6: u16 = 0x86dd;
/// RFC 4861 10: the least time between multicast router advertisements.
const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);

/// Whether a frame the responder answered was a router solicitation (ICMPv6 right after the
/// IPv6 header; DHCPv6 is UDP).
fn is_solicitation(request: &[u8]) -> bool {
    request.get(20) == Some(&super::wire::NH_ICMPV6)
}

/// A running router and DHCPv6 server. [`Dhcp6Server::stop`] (or dropping it) stops it.
pub struct Dhcp6Server {
    stop: OwnedFd,
    thread: Option<sandbox::Handle<()>>,
    bound: Arc<AtomicBool>,
}

fn last(op: &str) -> Error {
    Error::io(op, io::Error::last_os_error())
}

/// Classic BPF: accept only IPv6 frames whose next header is ICMPv6 type 133 (router
/// solicitation) or UDP to port 547, so the thread does not wake for the VM's traffic.
fn filter() -> [libc::sock_filter; 11] {
    let s = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        s(0x28, 0, 0, 12),      // 0: ldh [12]        ethertype
        s(0x15, 0, 8, 0x86dd),  // 1: jeq #IPv6 else drop
        s(0x30, 0, 0, 20),      // 2: ldb [20]        next header
        s(0x15, 0, 2, 58),      // 3: jeq #ICMPv6 else 6
        s(0x30, 0, 0, 54),      // 4: ldb [54]        ICMPv6 type
        s(0x15, 3, 4, 133),     // 5: jeq #RS accept else drop
        s(0x15, 0, 3, 17),      // 6: jeq #UDP else drop
        s(0x28, 0, 0, 56),      // 7: ldh [56]        UDP destination port
        s(0x15, 0, 1, 547),     // 8: jeq #547 else drop
        s(0x06, 0, 0, 0x40000), // 9: accept
        s(0x06, 0, 0, 0),       // 10: drop
    ]
}

fn packet_socket(iface: &str) -> Result<(OwnedFd, i32, MacAddr)> {
    let name = CString::new(iface)
        .map_err(|_| Error::io("interface name", io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: plain FFI calls with valid arguments; every fd is owned right after creation.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        if ifindex == 0 {
            return Err(last(&format!("dhcp6: find interface {iface}")));
        }
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_IPV6.to_be()),
        );
        if fd < 0 {
            return Err(last("dhcp6: open packet socket"));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let f = filter();
        let prog = libc::sock_fprog {
            len: f.len() as u16,
            filter: f.as_ptr() as *mut _,
        };
        let p = &prog as *const libc::sock_fprog as *const libc::c_void;
        let plen = std::mem::size_of::<libc::sock_fprog>() as u32;
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            p,
            plen,
        ) < 0
        {
            return Err(last("dhcp6: attach socket filter"));
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_IPV6.to_be();
        sll.sll_ifindex = ifindex;
        let sp = &sll as *const libc::sockaddr_ll as *const libc::sockaddr;
        if libc::bind(
            fd.as_raw_fd(),
            sp,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(last(&format!("dhcp6: bind packet socket to {iface}")));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) < 0 {
            return Err(last(&format!("dhcp6: read MAC of {iface}")));
        }
        let hw = ifr.ifr_ifru.ifru_hwaddr.sa_data;
        let mac = MacAddr(std::array::from_fn(|i| hw[i] as u8));
        Ok((fd, ifindex, mac))
    }
}

impl Dhcp6Server {
    /// Starts advertising and serving `cfg` on interface `iface` (the bridge) of the current
    /// network namespace; frames come from the interface's MAC.
    pub fn spawn(iface: &str, cfg: Config6) -> Result<Dhcp6Server> {
        let (sock, ifindex, mac) = packet_socket(iface)?;
        // SAFETY: eventfd returns a new fd or -1.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(last("dhcp6: eventfd"));
        }
        // SAFETY: `stop` is a fresh fd owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let stop_rd = stop
            .try_clone()
            .map_err(|e| Error::io("dhcp6: dup eventfd", e))?;
        let (prefix, client) = (cfg.prefix, cfg.client_ip);
        let responder = Responder6::new(cfg, mac);
        let bound = Arc::new(AtomicBool::new(false));
        let bound2 = bound.clone();
        // The DHCPv4 thread's kind: the same calls (poll, recvfrom, sendto) on the same
        // kind of socket.
        let thread = sandbox::spawn("berth-dhcp6", sandbox::ThreadKind::Dhcp, move || {
            serve(sock, ifindex, stop_rd, responder, &bound2)
        })
        .map_err(|e| Error::io("dhcp6: spawn thread", e))?;
        log::info!("dhcp6: advertising {prefix}/64 and serving {client} on {iface} ({mac})");
        Ok(Dhcp6Server {
            stop,
            thread: Some(thread),
            bound,
        })
    }

    /// Whether the VM holds its DHCPv6 address (SLAAC-only guests never do).
    pub fn lease_bound(&self) -> bool {
        self.bound.load(Ordering::SeqCst)
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
            unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), 8) };
            let _ = t.join();
        }
    }
}

impl Drop for Dhcp6Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn send(sock: &OwnedFd, ifindex: i32, frame: &[u8]) {
    // SAFETY: sends `frame` to a fully initialised sockaddr_ll.
    let r = unsafe {
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_IPV6.to_be();
        to.sll_ifindex = ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        let tp = &to as *const libc::sockaddr_ll as *const libc::sockaddr;
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            tp,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        // ENETDOWN/ENXIO until the VMM has the tap up: the next advertisement retries.
        log::debug!("dhcp6: send: {}", io::Error::last_os_error());
    }
}

fn serve(
    sock: OwnedFd,
    ifindex: i32,
    stop: OwnedFd,
    mut responder: Responder6,
    bound: &AtomicBool,
) {
    let interval = Duration::from_secs(RA_INTERVAL_SECS);
    // The first advertisements come quickly (RFC 4861 6.2.4 allows three at up to 16 s),
    // for a guest that booted before berth's thread or ignores solicitations' answers.
    let mut initial = 3;
    let mut next = Instant::now();
    let mut last_ra: Option<Instant> = None;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= next {
            send(&sock, ifindex, &responder.advertisement());
            last_ra = Some(now);
            let wait = if initial > 0 {
                initial -= 1;
                Duration::from_secs(4)
            } else {
                interval
            };
            next = now + wait;
        }
        let timeout = next.saturating_duration_since(Instant::now()).as_millis() as i32 + 1;
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("dhcp6: poll: {}", io::Error::last_os_error());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && fds[0].revents & libc::POLLIN == 0
        {
            log::error!(
                "dhcp6: packet socket failed (revents {:#x})",
                fds[0].revents
            );
            return;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: receives into `buf` and a zeroed sockaddr_ll of the size passed.
        let (len, pkttype) = unsafe {
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let fp = &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr;
            let r = libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                fp,
                &mut flen,
            );
            (r, from.sll_pkttype)
        };
        if len < 0 || pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let reply = responder.handle(&buf[..len as usize]);
        bound.store(responder.binding() == Binding::Bound, Ordering::SeqCst);
        match reply {
            // The answer to a solicitation is the multicast advertisement: sent now, or at
            // most one per MIN_DELAY_BETWEEN_RAS (RFC 4861 6.2.6), however fast a guest
            // solicits.
            Some(_) if is_solicitation(&buf[..len as usize]) => {
                let earliest = last_ra.map_or(now, |t| t + MIN_DELAY_BETWEEN_RAS);
                next = next.min(earliest.max(Instant::now()));
            }
            Some(reply) => send(&sock, ifindex, &reply),
            None => {}
        }
    }
}
