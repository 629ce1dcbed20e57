use super::*;

#[test]
fn modes() {
    assert_eq!(Mode::parse("").unwrap(), Mode::Kill);
    assert_eq!(Mode::parse("on").unwrap(), Mode::Kill);
    assert_eq!(Mode::parse("log").unwrap(), Mode::Log);
    assert_eq!(Mode::parse("off").unwrap(), Mode::Off);
    assert!(Mode::parse("yes").is_err());
}

#[test]
fn names() {
    assert_eq!(syscall_name(libc::SYS_socket), "socket");
    assert_eq!(syscall_name(libc::SYS_uname), "uname");
    assert_eq!(syscall_name(100_000), "?");
}

/// Runs `f` in a forked child under `kind`'s filter (forbidden syscalls kill the process);
/// returns the child's exit code, or `Err(signal)` if a signal ended it.
fn under_filter(kind: ThreadKind, f: impl FnOnce() -> i32) -> Result<i32, i32> {
    let progs = filters::build(kind, SeccompAction::KillProcess);
    // SAFETY: the child makes only raw syscalls (no allocation, no locks) and _exits.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            for prog in &progs {
                if seccompiler::apply_filter(prog).is_err() {
                    libc::_exit(99);
                }
            }
            libc::_exit(f());
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        if libc::WIFSIGNALED(status) {
            Err(libc::WTERMSIG(status))
        } else {
            Ok(libc::WEXITSTATUS(status))
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

const KVM_RUN: u64 = 0xAE80;
const TIOCSTI: u64 = 0x5412;

#[test]
fn vcpu_filter_allows_kvm_ioctls_and_nothing_of_the_sort_of_sockets_or_files() {
    // KVM_RUN on a bad fd gets past the filter and fails in the kernel.
    let ok = under_filter(ThreadKind::Vcpu, || {
        let r = unsafe { libc::ioctl(-1, KVM_RUN as _) };
        i32::from(!(r == -1 && errno() == libc::EBADF))
    });
    assert_eq!(ok, Ok(0));
    for (what, call) in [
        (
            "socket",
            Box::new(|| unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) })
                as Box<dyn FnOnce() -> i32>,
        ),
        (
            "TIOCSTI",
            Box::new(|| unsafe { libc::ioctl(0, TIOCSTI as _, c"x".as_ptr()) }),
        ),
        (
            "execve",
            Box::new(|| unsafe {
                libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null())
            }),
        ),
    ] {
        assert_eq!(
            under_filter(ThreadKind::Vcpu, call),
            Err(libc::SIGSYS),
            "{what}"
        );
    }
}

#[test]
fn threads_that_may_not_open_files_get_eacces_from_openat() {
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::Vnc,
        ThreadKind::Net,
        ThreadKind::Signals,
    ] {
        let r = under_filter(kind, || unsafe {
            let fd = libc::open(c"/proc/sys/vm/overcommit_memory".as_ptr(), libc::O_RDONLY);
            i32::from(!(fd == -1 && errno() == libc::EACCES))
        });
        assert_eq!(r, Ok(0), "{}", kind.name());
    }
    // Where opening is allowed, it works.
    let r = under_filter(ThreadKind::Block, || unsafe {
        i32::from(libc::open(c"/proc/sys/vm/overcommit_memory".as_ptr(), libc::O_RDONLY) < 0)
    });
    assert_eq!(r, Ok(0));
}

#[test]
fn block_filter_allows_disk_io_and_ofd_locks() {
    let path = std::env::temp_dir().join(format!("sandbox-block-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let r = under_filter(ThreadKind::Block, || unsafe {
        let buf = [7u8; 512];
        let mut back = [0u8; 512];
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        let steps = [
            libc::pwrite(fd, buf.as_ptr().cast(), 512, 4096) == 512,
            libc::pread(fd, back.as_mut_ptr().cast(), 512, 4096) == 512,
            libc::fsync(fd) == 0,
            libc::fdatasync(fd) == 0,
            libc::fallocate(fd, 0, 0, 8192) == 0,
            libc::fcntl(fd, libc::F_OFD_SETLK, &lock) == 0,
            libc::lseek(fd, 0, libc::SEEK_END) == 8192,
        ];
        steps.iter().position(|ok| !ok).map_or(0, |i| 10 + i as i32)
    });
    let _ = std::fs::remove_file(&path);
    assert_eq!(r, Ok(0));
    assert_eq!(
        under_filter(ThreadKind::Block, || unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)
        }),
        Err(libc::SIGSYS)
    );
}

#[test]
fn main_filter_allows_inet_sockets_but_not_netlink_or_packet() {
    let inet = under_filter(ThreadKind::Main, || unsafe {
        i32::from(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) < 0)
    });
    assert_eq!(inet, Ok(0));
    for family in [libc::AF_NETLINK, libc::AF_PACKET, libc::AF_UNIX] {
        let r = under_filter(ThreadKind::Main, move || unsafe {
            libc::socket(family, libc::SOCK_RAW, 0)
        });
        assert_eq!(r, Err(libc::SIGSYS), "family {family}");
    }
}

#[test]
fn no_thread_may_exec_ptrace_or_change_its_namespaces() {
    for kind in ThreadKind::ALL {
        let allowed = filters::allowed(kind);
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_uname,
            libc::SYS_process_vm_writev,
        ] {
            assert!(
                !allowed.contains(&nr),
                "{} allows {}",
                kind.name(),
                syscall_name(nr)
            );
        }
    }
}

#[test]
fn the_spawner_allows_what_every_thread_it_creates_needs() {
    let spawner = filters::allowed(ThreadKind::Spawner);
    for kind in ThreadKind::ALL {
        for nr in filters::allowed(kind) {
            assert!(
                spawner.contains(&nr),
                "{} needs {}",
                kind.name(),
                syscall_name(nr)
            );
        }
    }
}

#[test]
fn only_main_block_and_spawner_may_open_files() {
    for kind in ThreadKind::ALL {
        let opens = filters::allowed(kind)
            .iter()
            .any(|n| [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2].contains(n));
        let expected = matches!(
            kind,
            ThreadKind::Main | ThreadKind::Block | ThreadKind::Spawner
        );
        assert_eq!(opens, expected, "{}", kind.name());
    }
}

/// VHOST_NET_SET_BACKEND (the last vhost ioctl a reset issues).
const VHOST_NET_SET_BACKEND: u64 = 0x4008_AF30;

/// vhost-net is configured on the vCPU thread (virtio activation and reset) and stopped on the
/// main thread (VM shutdown, reboot); no other thread may touch it. Fails on the old filters,
/// which killed berth at the first vhost ioctl.
#[test]
fn vhost_ioctls_on_vcpu_and_main_threads_only() {
    for kind in [ThreadKind::Vcpu, ThreadKind::Main] {
        let ok = under_filter(kind, || {
            let r = unsafe { libc::ioctl(-1, VHOST_NET_SET_BACKEND as _, 0usize) };
            i32::from(!(r == -1 && errno() == libc::EBADF))
        });
        assert_eq!(ok, Ok(0), "{}", kind.name());
    }
    for kind in [ThreadKind::Net, ThreadKind::Vnc, ThreadKind::Block] {
        let r = under_filter(kind, || unsafe {
            libc::ioctl(-1, VHOST_NET_SET_BACKEND as _, 0usize)
        });
        assert_eq!(r, Err(libc::SIGSYS), "{}", kind.name());
    }
}
