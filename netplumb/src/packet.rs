//! The AF_PACKET socket and the server thread that the DHCPv4 ([`crate::dhcp`]) and the
//! router/DHCPv6 ([`crate::dhcp6`]) servers share; each brings its own BPF filter, ethertype
//! and [`Handler`].
//!
//! A packet socket sees the client's frames whatever port of the bridge they arrive on (a
//! VM's tap or a test veth) and needs no address on the client side, which a UDP socket
//! would. `what` ("dhcp", "dhcp6") starts every error text and log line, so each server's
//! messages stay its own.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::MacAddr;

fn last(op: &str) -> Error {
    Error::io(op, io::Error::last_os_error())
}

/// An AF_PACKET socket bound to one interface and ethertype, with a BPF filter attached.
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    ethertype: u16,
}

/// Opens a packet socket for `ethertype` frames on interface `iface`, attaches classic BPF
/// `filter` (the kernel copies it) so the thread wakes only for the frames it serves, and
/// returns it with the interface's MAC (the source of the server's replies).
pub(crate) fn packet_socket(
    iface: &str,
    ethertype: u16,
    filter: &[libc::sock_filter],
    what: &str,
) -> Result<(PacketSocket, MacAddr)> {
    let name = CString::new(iface)
        .map_err(|_| Error::io("interface name", io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: plain FFI calls with valid arguments; every fd is owned right after creation.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        if ifindex == 0 {
            return Err(last(&format!("{what}: find interface {iface}")));
        }
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ethertype.to_be()),
        );
        if fd < 0 {
            return Err(last(&format!("{what}: open packet socket")));
        }
        let fd = OwnedFd::from_raw_fd(fd);
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
            return Err(last(&format!("{what}: attach socket filter")));
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex;
        let sp = &sll as *const libc::sockaddr_ll as *const libc::sockaddr;
        if libc::bind(
            fd.as_raw_fd(),
            sp,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(last(&format!("{what}: bind packet socket to {iface}")));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) < 0 {
            return Err(last(&format!("{what}: read MAC of {iface}")));
        }
        let hw = ifr.ifr_ifru.ifru_hwaddr.sa_data;
        let mac = MacAddr(std::array::from_fn(|i| hw[i] as u8));
        let sock = PacketSocket {
            fd,
            ifindex,
            ethertype,
        };
        Ok((sock, mac))
    }
}

impl PacketSocket {
    /// Sends Ethernet `frame` out of the interface to the destination MAC in its header.
    pub(crate) fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sends `frame` to a fully initialised sockaddr_ll.
        let r = unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = self.ethertype.to_be();
            to.sll_ifindex = self.ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            let tp = &to as *const libc::sockaddr_ll as *const libc::sockaddr;
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                tp,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame into `buf` without blocking: its length, or `None` for nothing
    /// (EAGAIN and friends: poll again) or a frame this host sent (our own replies).
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: receives into `buf` and a zeroed sockaddr_ll of the size passed.
        let (len, pkttype) = unsafe {
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let fp = &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr;
            let r = libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                fp,
                &mut flen,
            );
            (r, from.sll_pkttype)
        };
        if len < 0 || pkttype == libc::PACKET_OUTGOING {
            return None;
        }
        Some(len as usize)
    }
}

/// What a server does on its thread; [`ServerThread`] runs the loop around it.
pub(crate) trait Handler: Send + 'static {
    /// Called each time the loop wakes, before it waits again (at `now`): does timed work
    /// and returns how long the wait may last at most (`None`: until a frame or stop).
    fn tick(&mut self, _sock: &PacketSocket, _now: Instant) -> Option<Duration> {
        None
    }

    /// Handles one received `frame` (woken at `now`), answering on `sock` if it wants to.
    fn frame(&mut self, sock: &PacketSocket, frame: &[u8], now: Instant);
}

/// A server's thread and the eventfd that stops it. [`ServerThread::shutdown`] (or dropping
/// it) stops the thread and waits for it.
pub(crate) struct ServerThread {
    stop: OwnedFd,
    thread: Option<sandbox::Handle<()>>,
}

impl ServerThread {
    /// Starts thread "berth-`what`" of sandbox `kind` running `handler` on `sock` until
    /// stopped.
    pub(crate) fn spawn(
        what: &'static str,
        kind: sandbox::ThreadKind,
        sock: PacketSocket,
        handler: impl Handler,
    ) -> Result<ServerThread> {
        // SAFETY: eventfd returns a new fd or -1.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(last(&format!("{what}: eventfd")));
        }
        // SAFETY: `stop` is a fresh fd owned by nobody else.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let stop_rd = stop
            .try_clone()
            .map_err(|e| Error::io(format!("{what}: dup eventfd"), e))?;
        let thread = sandbox::spawn(format!("berth-{what}"), kind, move || {
            serve(what, sock, stop_rd, handler)
        })
        .map_err(|e| Error::io(format!("{what}: spawn thread"), e))?;
        Ok(ServerThread {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it; does nothing the second time.
    pub(crate) fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
            unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), 8) };
            let _ = t.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The thread's loop: waits for a frame, the handler's next timed work or the stop eventfd;
/// ends on stop or when the socket fails.
fn serve(what: &str, sock: PacketSocket, stop: OwnedFd, mut handler: impl Handler) {
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        let timeout = handler.tick(&sock, now).map_or(-1, |d| {
            // Rounded up, so that the handler's time has come when poll times out.
            i32::try_from(d.as_millis())
                .unwrap_or(i32::MAX)
                .saturating_add(1)
        });
        let mut fds = [
            libc::pollfd {
                fd: sock.fd.as_raw_fd(),
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
            log::error!("{what}: poll: {}", io::Error::last_os_error());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && fds[0].revents & libc::POLLIN == 0
        {
            log::error!(
                "{what}: packet socket failed (revents {:#x})",
                fds[0].revents
            );
            return;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue; // the handler's timeout
        }
        let Some(len) = sock.recv(&mut buf) else {
            continue;
        };
        handler.frame(&sock, &buf[..len], now);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{packet_socket, Handler, PacketSocket, ServerThread};
    use crate::error::Error;

    /// IEEE 802 local experimental ethertype 1: nothing else on the host sends it.
    const ETH_P_TEST: u16 = 0x88b5;
    /// Every ethertype: such a socket also sees the frames the host sends.
    const ETH_P_ALL: u16 = 0x0003;

    /// Classic BPF that accepts only ETH_P_TEST frames.
    fn test_frames() -> [libc::sock_filter; 4] {
        let s = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
        [
            s(0x28, 0, 0, 12),                    // ldh [12]  ethertype
            s(0x15, 0, 1, u32::from(ETH_P_TEST)), // jeq #test else drop
            s(0x06, 0, 0, 0x40000),               // ret accept
            s(0x06, 0, 0, 0),                     // ret drop
        ]
    }

    #[test]
    fn errors_name_the_server_and_the_interface() {
        let Err(e) = packet_socket("nosuch0", ETH_P_TEST, &test_frames(), "dhcp6") else {
            panic!("an interface that does not exist has a packet socket");
        };
        assert!(
            e.to_string().starts_with("dhcp6: find interface nosuch0: "),
            "{e}"
        );
        let Err(e) = packet_socket("bad\0name", ETH_P_TEST, &test_frames(), "dhcp") else {
            panic!("a name with a NUL has a packet socket");
        };
        assert!(e.to_string().starts_with("interface name: "), "{e}");
    }

    /// Counts the loop's wake-ups and the frames it hands over.
    struct Count {
        ticks: Arc<AtomicUsize>,
        frames: Arc<AtomicUsize>,
    }

    impl Handler for Count {
        fn tick(&mut self, _sock: &PacketSocket, _now: Instant) -> Option<Duration> {
            self.ticks.fetch_add(1, Ordering::SeqCst);
            Some(Duration::from_millis(20))
        }

        fn frame(&mut self, _sock: &PacketSocket, frame: &[u8], _now: Instant) {
            assert_eq!(&frame[14..], b"berth packet test");
            self.frames.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The serve loop wakes for the handler's timeout, hands over a frame another socket
    /// sends on lo once (an ETH_P_ALL socket also sees the copy lo sends: the loop drops
    /// it), and stops at once when asked.
    #[test]
    fn server_thread_times_out_receives_and_stops() {
        let (sock, _) = match packet_socket("lo", ETH_P_ALL, &test_frames(), "test") {
            Ok(s) => s,
            Err(Error::NoNetAdmin { .. }) => {
                eprintln!("skipped: packet sockets need CAP_NET_RAW (run as root)");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let (sender, _) = packet_socket("lo", ETH_P_TEST, &test_frames(), "test").unwrap();
        let (ticks, frames) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let handler = Count {
            ticks: ticks.clone(),
            frames: frames.clone(),
        };
        let mut server =
            ServerThread::spawn("test", sandbox::ThreadKind::Dhcp, sock, handler).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            ticks.load(Ordering::SeqCst) >= 5,
            "the 20 ms timeout did not wake the loop"
        );
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ETH_P_TEST.to_be_bytes());
        frame.extend_from_slice(b"berth packet test");
        sender.send(&frame).unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while frames.load(Ordering::SeqCst) == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(frames.load(Ordering::SeqCst), 1);
        let t = Instant::now();
        server.shutdown();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
}
