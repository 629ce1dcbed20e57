//! The VM's tap device: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, handed to the VMM as an fd.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// `IFF_TAP`: an Ethernet-level device.
pub const IFF_TAP: u16 = 0x0002;
/// `IFF_NO_PI`: no packet-information prefix on reads and writes.
pub const IFF_NO_PI: u16 = 0x1000;
/// `IFF_VNET_HDR`: each frame carries a `virtio_net_hdr`, so the VMM can pass offloads through.
pub const IFF_VNET_HDR: u16 = 0x4000;
/// One fd per queue (a multiqueue tap).
pub const IFF_MULTI_QUEUE: u16 = 0x0100;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

/// `struct ifreq` with the `ifr_flags` member of its union.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReqFlags {
    fn new(name: &str, flags: u16) -> IfReqFlags {
        let mut r = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }
}

/// An open tap. It is not persistent: the kernel removes it when the last fd closes.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// The other queues of a multiqueue tap.
    more: Vec<OwnedFd>,
}

impl Tap {
    /// Creates tap `name` through the tun clone device `tun_device` (normally /dev/net/tun).
    pub fn create(tun_device: &Path, name: &str) -> Result<Tap> {
        Tap::create_queues(tun_device, name, 1)
    }

    /// Creates tap `name` with `queues` queues (IFF_MULTI_QUEUE when more than one): one fd
    /// per queue, all opened now (they cannot be opened after berth drops CAP_NET_ADMIN).
    pub fn create_queues(tun_device: &Path, name: &str, queues: u16) -> Result<Tap> {
        let flags = if queues > 1 { IFF_MULTI_QUEUE } else { 0 };
        let (fd, name) = Tap::open_queue(tun_device, name, flags)?;
        let mut more = Vec::new();
        for _ in 1..queues {
            more.push(Tap::open_queue(tun_device, &name, flags)?.0);
        }
        Ok(Tap { fd, name, more })
    }

    fn open_queue(tun_device: &Path, name: &str, flags: u16) -> Result<(OwnedFd, String)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(tun_device)
            .map_err(|source| Error::NoTunDevice {
                path: tun_device.into(),
                source,
            })?;
        let fd = OwnedFd::from(file);
        let mut req = IfReqFlags::new(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | flags);
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is laid out as.
        let rc =
            unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(Error::io(
                format!("create tap {name} (TUNSETIFF)"),
                std::io::Error::last_os_error(),
            ));
        }
        let len = req
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(libc::IFNAMSIZ);
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        Ok((fd, name))
    }

    /// New fds of every queue, in order (one for a single-queue tap).
    pub fn queue_fds(&self) -> Result<Vec<OwnedFd>> {
        std::iter::once(&self.fd)
            .chain(&self.more)
            .map(|fd| fd.try_clone().map_err(|e| Error::io("dup tap fd", e)))
            .collect()
    }

    /// The interface name the kernel gave the tap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The flags the device was created with (TUNGETIFF).
    pub fn flags(&self) -> Result<u16> {
        let mut req = IfReqFlags::new("", 0);
        // SAFETY: TUNGETIFF fills a struct ifreq, which `req` is laid out as.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNGETIFF as _,
                &mut req as *mut IfReqFlags,
            )
        };
        if rc < 0 {
            return Err(Error::io("TUNGETIFF", std::io::Error::last_os_error()));
        }
        Ok(req.flags as u16)
    }

    /// A new fd for the same tap queue, for the VMM (which sets TUNSETOFFLOAD and
    /// TUNSETVNETHDRSZ itself). The tap lives until every such fd is closed.
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.fd.try_clone().map_err(|e| Error::io("dup tap fd", e))
    }

    /// Gives up the tap, returning its fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Gives up the tap, returning the fds of all its queues in order.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        std::iter::once(self.fd).chain(self.more).collect()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tun_device_names_the_fix() {
        let e = Tap::create(Path::new("/nonexistent/net/tun"), "t0").unwrap_err();
        assert!(matches!(e, Error::NoTunDevice { .. }));
        assert!(e.to_string().contains("/dev/net/tun"), "{e}");
    }

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::offset_of!(IfReqFlags, flags), 16);
    }
}
