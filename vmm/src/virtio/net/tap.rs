//! The host side of a virtio-net device: a tap opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
//! (by the caller), whose frames carry the same 12-byte header as virtio 1.x, so headers pass
//! through without translation.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use vm_memory::VolatileSlice;

/// Length of `virtio_net_hdr_v1` (with `num_buffers`), used on both sides.
pub const VNET_HDR_LEN: usize = 12;

/// Offloads the tap may hand to the guest (TUNSETOFFLOAD flags).
pub mod offload {
    /// Partial checksums.
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    /// TCPv4 segmentation offload.
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    /// TCPv6 segmentation offload.
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    /// TSO with ECN.
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    /// UDP fragmentation offload.
    pub const UFO: u32 = libc::TUN_F_UFO;
}

/// Where frames go and come from.
pub trait NetBackend: Send + AsRawFd {
    /// Reads one frame (header included) into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (header included).
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Writes one frame (header included) gathered from `parts` of guest memory, in order, as
    /// one frame. The default copies the parts into one buffer and calls
    /// [`NetBackend::write_frame`]; the tap hands them to the kernel with one `writev`.
    fn write_frame_gather(&mut self, parts: &[VolatileSlice<'_>]) -> io::Result<()> {
        self.write_frame(&gather(parts))
    }
    /// Tells the host which offloads the guest accepts.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// Lets the host steer frames to this queue (a queue pair the guest uses) or not. Only a
    /// multiqueue tap has something to do.
    fn set_queue_enabled(&mut self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }
}

const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;

/// Attaches (`enabled`) or detaches one queue of a multiqueue tap (TUNSETQUEUE): the kernel
/// steers frames only to attached queues. Attaching an attached queue, or detaching a
/// detached one, is not an error.
pub fn set_queue_enabled(fd: RawFd, enabled: bool) -> io::Result<()> {
    // SAFETY: ifreq is plain data, zeroes are valid; TUNSETQUEUE reads only ifr_flags.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_flags = if enabled {
        IFF_ATTACH_QUEUE
    } else {
        IFF_DETACH_QUEUE
    };
    // SAFETY: TUNSETQUEUE reads an ifreq from the pointer, valid for the call.
    if unsafe { libc::ioctl(fd, TUNSETQUEUE as _, &req) } < 0 {
        let e = io::Error::last_os_error();
        // EINVAL: already in that state.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Ok(())
}

/// The bytes of `parts`, in order, in one buffer.
pub fn gather(parts: &[VolatileSlice<'_>]) -> Vec<u8> {
    let mut frame = vec![0u8; parts.iter().map(|p| p.len()).sum()];
    let mut at = 0;
    for p in parts {
        at += p.copy_to(&mut frame[at..]);
    }
    frame
}

/// Most parts [`writev_frame`] passes in one `writev` (far below the kernel's `UIO_MAXIOV`).
pub const MAX_IOV: usize = 64;

/// Writes `parts` to `fd` as one frame with one `writev` (a copy through [`gather`] and one
/// `write` when there are more than [`MAX_IOV`]).
pub fn writev_frame(fd: RawFd, parts: &[VolatileSlice<'_>]) -> io::Result<()> {
    let n = if parts.len() > MAX_IOV {
        let frame = gather(parts);
        // SAFETY: writes from a valid buffer of the given length.
        unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) }
    } else {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        for (v, p) in iov.iter_mut().zip(parts) {
            *v = libc::iovec {
                iov_base: p.ptr_guard().as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
        }
        // SAFETY: each iovec is a VolatileSlice of guest memory, mapped and `len` bytes long
        // for as long as `parts` borrows it; the kernel only reads from them.
        unsafe { libc::writev(fd, iov.as_ptr(), parts.len() as libc::c_int) }
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A tap device.
pub struct Tap {
    fd: OwnedFd,
}

const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

impl Tap {
    /// Takes a tap fd opened with IFF_VNET_HDR; sets the header size and non-blocking mode.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer; fcntl on an owned fd.
        unsafe {
            if libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &size) < 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Tap { fd })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads into a valid, writable buffer of the given length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: writes from a valid buffer of the given length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn write_frame_gather(&mut self, parts: &[VolatileSlice<'_>]) -> io::Result<()> {
        writev_frame(self.fd.as_raw_fd(), parts)
    }

    fn set_queue_enabled(&mut self, enabled: bool) -> io::Result<()> {
        set_queue_enabled(self.fd.as_raw_fd(), enabled)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
