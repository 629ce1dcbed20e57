//! Runs a [`Responder`] on an AF_PACKET socket bound to the bridge, on its own thread.
//!
//! A packet socket sees the client's frames whatever port of the bridge they arrive on (a
//! VM's tap or a test veth) and needs no address on the client side, which a UDP socket
//! would.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{DhcpConfig, LeaseState, Responder};
use crate::error::{Error, Result};
use crate::MacAddr;

const ETH_P_IP: u16 = 0x0800;

/// A running DHCP responder. [`DhcpServer::stop`] (or dropping it) stops the thread.
pub struct DhcpServer {
    stop: OwnedFd,
    thread: Option<sandbox::Handle<()>>,
    bound: Arc<AtomicBool>,
}

fn last(op: &str) -> Error {
    Error::io(op, io::Error::last_os_error())
}

/// Classic BPF: accept only unfragmented IPv4/UDP to port 67, so the thread does not wake
/// for every packet the VM forwards through the bridge.
fn dhcp_filter() -> [libc::sock_filter; 11] {
    let s = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        s(0x28, 0, 0, 12),      // ldh [12]            ethertype
        s(0x15, 0, 8, 0x0800),  // jeq #IPv4 else drop
        s(0x30, 0, 0, 23),      // ldb [23]            IP protocol
        s(0x15, 0, 6, 17),      // jeq #UDP else drop
        s(0x28, 0, 0, 20),      // ldh [20]            flags + fragment offset
        s(0x45, 4, 0, 0x1fff),  // jset #offset -> drop
        s(0xb1, 0, 0, 14),      // ldxb 4*([14]&0xf)   IP header length
        s(0x48, 0, 0, 16),      // ldh [x+16]          UDP destination port
        s(0x15, 0, 1, 67),      // jeq #67 else drop
        s(0x06, 0, 0, 0x40000), // ret accept
        s(0x06, 0, 0, 0),       // ret drop
    ]
}

fn packet_socket(iface: &str) -> Result<(OwnedFd, i32, MacAddr)> {
    let name = CString::new(iface)
        .map_err(|_| Error::io("interface name", io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: plain FFI calls with valid arguments; every fd is owned right after creation.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        if ifindex == 0 {
            return Err(last(&format!("dhcp: find interface {iface}")));
        }
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_IP.to_be()),
        );
        if fd < 0 {
            return Err(last("dhcp: open packet socket"));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let filter = dhcp_filter();
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut _,
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
            return Err(last("dhcp: attach socket filter"));
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_IP.to_be();
        sll.sll_ifindex = ifindex;
        let sp = &sll as *const libc::sockaddr_ll as *const libc::sockaddr;
        if libc::bind(
            fd.as_raw_fd(),
            sp,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(last(&format!("dhcp: bind packet socket to {iface}")));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) < 0 {
            return Err(last(&format!("dhcp: read MAC of {iface}")));
        }
        let hw = ifr.ifr_ifru.ifru_hwaddr.sa_data;
        let mac = MacAddr(std::array::from_fn(|i| hw[i] as u8));
        Ok((fd, ifindex, mac))
    }
}

impl DhcpServer {
    /// Starts serving `cfg` on interface `iface` (the bridge) of the current network
    /// namespace; replies come from the interface's MAC.
    pub fn spawn(iface: &str, cfg: DhcpConfig) -> Result<DhcpServer> {
        let (sock, ifindex, mac) = packet_socket(iface)?;
        // SAFETY: eventfd returns a new fd or -1.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(last("dhcp: eventfd"));
        }
        // SAFETY: `stop` is a fresh fd owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let stop_rd = stop
            .try_clone()
            .map_err(|e| Error::io("dhcp: dup eventfd", e))?;
        let responder = Responder::new(cfg, mac);
        let bound = Arc::new(AtomicBool::new(false));
        let bound2 = bound.clone();
        let thread = sandbox::spawn("berth-dhcp", sandbox::ThreadKind::Dhcp, move || {
            serve(sock, ifindex, stop_rd, responder, &bound2)
        })
        .map_err(|e| Error::io("dhcp: spawn thread", e))?;
        log::info!("dhcp: serving on {iface} ({mac})");
        Ok(DhcpServer {
            stop,
            thread: Some(thread),
            bound,
        })
    }

    /// Whether the VM holds the lease (its last REQUEST was acknowledged and not released).
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

impl Drop for DhcpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(sock: OwnedFd, ifindex: i32, stop: OwnedFd, mut responder: Responder, bound: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    loop {
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
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("dhcp: poll: {}", io::Error::last_os_error());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && fds[0].revents & libc::POLLIN == 0
        {
            log::error!("dhcp: packet socket failed (revents {:#x})", fds[0].revents);
            return;
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
        if len < 0 {
            continue; // EAGAIN and friends: poll again
        }
        if pkttype == libc::PACKET_OUTGOING {
            continue; // our own replies
        }
        let reply = responder.handle(&buf[..len as usize]);
        bound.store(responder.state() == LeaseState::Bound, Ordering::SeqCst);
        let Some(reply) = reply else {
            continue;
        };
        // SAFETY: sends `reply` to a fully initialised sockaddr_ll.
        let r = unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = ETH_P_IP.to_be();
            to.sll_ifindex = ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&reply[..6]);
            let tp = &to as *const libc::sockaddr_ll as *const libc::sockaddr;
            libc::sendto(
                sock.as_raw_fd(),
                reply.as_ptr().cast(),
                reply.len(),
                0,
                tp,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            log::warn!("dhcp: send reply: {}", io::Error::last_os_error());
        }
    }
}
