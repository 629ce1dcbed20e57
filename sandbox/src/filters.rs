//! The seccomp allow-list of each thread type: one function per [`ThreadKind`], each the
//! syscalls that thread's loop makes and nothing else. To let a thread type make a new syscall,
//! add it to that type's function here (and say why in a comment); `BERTH_SECCOMP=log` shows
//! which syscalls a change needs (see docs/security.md).
//!
//! A thread inherits the filter of the thread that created it and adds its own; the kernel
//! runs both and the stricter answer wins. Every thread is therefore created by the spawner
//! thread ([`crate::spawn`]), whose list is the union of all the others, so each thread ends up
//! with exactly its own list.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

use crate::ThreadKind;

/// `ioctl` requests are allowed by their type byte (bits 8..16) where a whole driver's set is
/// fine: 0xAE for KVM (on the fds berth holds), 0x12 for block devices (size, discard).
const IOCTL_KVM: u64 = 0xAE;
const IOCTL_BLOCK: u64 = 0x12;
/// vhost (VHOST_VIRTIO, 0xAF): only ever issued on the /dev/vhost-net fd berth opened.
const IOCTL_VHOST: u64 = 0xAF;
/// Single requests from drivers whose other requests must stay out (b'T' also holds TIOCSTI).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
/// Attaching and detaching the queues of a multiqueue tap (virtio-net VQ_PAIRS_SET).
const TUNSETQUEUE: u64 = 0x4004_54d9;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const FIONBIO: u64 = 0x5421;

/// One syscall, either unconditionally or with a rule on its arguments.
enum Allow {
    Any(i64),
    /// `ioctl` whose request's type byte is one of these.
    Ioctl(&'static [u64]),
    /// `ioctl` with exactly one of these requests.
    IoctlReq(&'static [u64]),
    /// `socket` in one of these address families.
    Socket(&'static [u64]),
    /// `fcntl` with one of these commands.
    Fcntl(&'static [u64]),
}

use Allow::{Any, Fcntl, Ioctl, IoctlReq, Socket};

/// What every thread does: the Rust runtime and glibc (allocation, locks, thread exit,
/// logging to stderr, panics), and the SIGSYS handler's own report.
fn base() -> Vec<Allow> {
    vec![
        // Allocation: glibc's malloc grows arenas with brk/mmap and trims them with
        // madvise/munmap; mprotect for arena growth.
        Any(libc::SYS_brk),
        Any(libc::SYS_mmap),
        Any(libc::SYS_munmap),
        Any(libc::SYS_mprotect),
        Any(libc::SYS_madvise),
        Any(libc::SYS_mremap),
        // Locks, channels, condition variables, joins.
        Any(libc::SYS_futex),
        Any(libc::SYS_sched_yield),
        // Logging (eprintln!) and the SIGSYS report.
        Any(libc::SYS_write),
        Any(libc::SYS_writev),
        // Time: sleeps, timeouts, Instant (vDSO first, the syscall as fallback).
        Any(libc::SYS_clock_gettime),
        Any(libc::SYS_clock_nanosleep),
        Any(libc::SYS_nanosleep),
        // HashMap keys.
        Any(libc::SYS_getrandom),
        // Thread end: std frees the signal stack, glibc the TLS; exit/exit_group.
        Any(libc::SYS_sigaltstack),
        Any(libc::SYS_rt_sigprocmask),
        Any(libc::SYS_rt_sigreturn),
        Any(libc::SYS_exit),
        Any(libc::SYS_exit_group),
        Any(libc::SYS_close),
        // Debug builds of std check that an fd is open before closing it.
        Fcntl(&[libc::F_GETFD as u64]),
        // abort() on a panic (panic=abort) raises SIGABRT at itself.
        Any(libc::SYS_getpid),
        Any(libc::SYS_gettid),
        Any(libc::SYS_tgkill),
        // glibc changes credentials on every thread (the setxid broadcast) when the main
        // thread switches to the unprivileged uid; without CAP_SETUID/CAP_SETGID (gone after
        // the switch) these can only set the ids the thread already has.
        Any(libc::SYS_setresuid),
        Any(libc::SYS_setresgid),
        Any(libc::SYS_setgroups),
        // The cached sched_getaffinity of available_parallelism, and rseq/robust lists glibc
        // touches on thread exit.
        Any(libc::SYS_sched_getaffinity),
    ]
}

/// vCPU threads: KVM_RUN and the device models the guest reaches through port and MMIO
/// exits (the serial console writes to stdout; virtio activation builds a worker's epoll set
/// and eventfds, registers ioeventfds and irqfds, and asks the spawner for the worker thread;
/// a device reset stops the worker and flushes its disk; virtio-net activation and reset
/// configure and stop vhost-net).
fn vcpu() -> Vec<Allow> {
    vec![
        Ioctl(&[IOCTL_KVM, IOCTL_VHOST]),
        // virtio-net activation tells the tap which offloads the driver took, and leaves only
        // the first queue of a multiqueue tap attached.
        IoctlReq(&[TUNSETOFFLOAD, TUNSETQUEUE]),
        Any(libc::SYS_read),
        Any(libc::SYS_epoll_create1),
        Any(libc::SYS_epoll_ctl),
        Any(libc::SYS_eventfd2),
        Any(libc::SYS_fcntl),
        Any(libc::SYS_fsync),
        Any(libc::SYS_fdatasync),
        Any(libc::SYS_pwrite64),
        Any(libc::SYS_pread64),
        Any(libc::SYS_lseek),
    ]
}

/// virtio-blk workers: the disk I/O of raw and qcow2 images (imago), OFD locks, flushes.
fn block() -> Vec<Allow> {
    vec![
        // BLKDISCARD / BLKZEROOUT on block-device disks.
        Ioctl(&[IOCTL_BLOCK]),
        Any(libc::SYS_epoll_wait),
        Any(libc::SYS_epoll_pwait),
        Any(libc::SYS_epoll_ctl),
        Any(libc::SYS_read),
        Any(libc::SYS_pread64),
        Any(libc::SYS_pwrite64),
        Any(libc::SYS_preadv),
        Any(libc::SYS_pwritev),
        Any(libc::SYS_preadv2),
        Any(libc::SYS_pwritev2),
        Any(libc::SYS_fsync),
        Any(libc::SYS_fdatasync),
        Any(libc::SYS_fallocate),
        Any(libc::SYS_lseek),
        // OFD locks (F_OFD_SETLK/F_OFD_GETLK) and F_DUPFD.
        Any(libc::SYS_fcntl),
        Any(libc::SYS_fstat),
        Any(libc::SYS_newfstatat),
        Any(libc::SYS_statx),
        // imago: the file system's block size, and backing-file names relative to the image.
        Any(libc::SYS_fstatfs),
        Any(libc::SYS_readlink),
        Any(libc::SYS_getcwd),
        // The qcow2 layer may open a backing file on first access; Landlock limits where.
        Any(libc::SYS_openat),
        Any(libc::SYS_openat2),
        Any(libc::SYS_ftruncate),
    ]
}

/// virtio-net workers: frames between the guest's queues and the tap; the control queue's
/// VQ_PAIRS_SET attaches and detaches tap queues.
fn net() -> Vec<Allow> {
    vec![
        IoctlReq(&[TUNSETQUEUE]),
        Any(libc::SYS_epoll_wait),
        Any(libc::SYS_epoll_pwait),
        Any(libc::SYS_epoll_ctl),
        Any(libc::SYS_read),
        Any(libc::SYS_readv),
        Any(libc::SYS_recvfrom),
        Any(libc::SYS_sendto),
    ]
}

/// The virtio-balloon worker: its queues, the stats timer and request eventfd, and
/// madvise(MADV_DONTNEED) on guest memory the guest gave back (madvise is in [`base`]).
fn balloon() -> Vec<Allow> {
    vec![
        Any(libc::SYS_epoll_wait),
        Any(libc::SYS_epoll_pwait),
        Any(libc::SYS_epoll_ctl),
        Any(libc::SYS_read),
    ]
}

/// The /metrics server: accepts one TCP connection at a time, reads the request with a
/// timeout, writes the reply; reads berth's RSS from /proc/self/statm (opened before the
/// lockdown) with pread.
fn metrics() -> Vec<Allow> {
    vec![
        Any(libc::SYS_accept4),
        Any(libc::SYS_accept),
        Any(libc::SYS_read),
        Any(libc::SYS_recvfrom),
        Any(libc::SYS_sendto),
        Any(libc::SYS_setsockopt),
        Any(libc::SYS_shutdown),
        Any(libc::SYS_pread64),
    ]
}

/// VNC threads (accept, dirty-log poll, client reader and writer, refusal): TCP sockets the
/// listener accepts, and KVM_GET_DIRTY_LOG on the framebuffer's slot.
fn vnc() -> Vec<Allow> {
    vec![
        Ioctl(&[IOCTL_KVM]),
        Any(libc::SYS_accept4),
        Any(libc::SYS_accept),
        Any(libc::SYS_read),
        Any(libc::SYS_readv),
        Any(libc::SYS_recvfrom),
        Any(libc::SYS_sendto),
        Any(libc::SYS_sendmsg),
        Any(libc::SYS_setsockopt),
        Any(libc::SYS_getsockopt),
        Any(libc::SYS_getsockname),
        Any(libc::SYS_getpeername),
        Any(libc::SYS_shutdown),
        Any(libc::SYS_poll),
        Any(libc::SYS_ppoll),
        Any(libc::SYS_fcntl),
    ]
}

/// The DHCP server: one socket bound to the bridge, a poll loop with timeouts.
fn dhcp() -> Vec<Allow> {
    vec![
        Any(libc::SYS_read),
        Any(libc::SYS_recvfrom),
        Any(libc::SYS_recvmsg),
        Any(libc::SYS_sendto),
        Any(libc::SYS_sendmsg),
        Any(libc::SYS_poll),
        Any(libc::SYS_ppoll),
        Any(libc::SYS_setsockopt),
        Any(libc::SYS_getsockopt),
    ]
}

/// The control socket (status, shutdown, reset): an abstract Unix socket.
fn control() -> Vec<Allow> {
    vec![
        Any(libc::SYS_accept4),
        Any(libc::SYS_accept),
        Any(libc::SYS_read),
        Any(libc::SYS_recvfrom),
        Any(libc::SYS_sendto),
        Any(libc::SYS_setsockopt),
        // SO_PEERCRED.
        Any(libc::SYS_getsockopt),
        Any(libc::SYS_poll),
        Any(libc::SYS_ppoll),
        Any(libc::SYS_fcntl),
        Any(libc::SYS_shutdown),
        // Pressing the power button writes an eventfd; reset wakes the main thread.
        Any(libc::SYS_epoll_wait),
        // `berth status --json` carries the metrics, whose RSS comes from /proc/self/statm.
        Any(libc::SYS_pread64),
    ]
}

/// Signal handling (SIGTERM/SIGINT) and the shutdown timer.
fn signals() -> Vec<Allow> {
    vec![Any(libc::SYS_rt_sigtimedwait), Any(libc::SYS_read)]
}

/// The serial console's standard input (`berth vm`).
fn console() -> Vec<Allow> {
    vec![Any(libc::SYS_read), Any(libc::SYS_poll)]
}

/// The main thread after set-up: waits for the VM, stops its vCPUs (signals them), flushes
/// the disks, and on a guest reboot builds the next VM: KVM (the kept /dev/kvm fd), guest
/// memory, the disks and the kernel opened again by path (Landlock limits which paths), the
/// tap duplicated and configured (TUN ioctls), devices' eventfds; at the end, closes the VNC
/// listener by connecting to it. Stopping a VM stops vhost-net's queues (vhost ioctls).
fn main_thread() -> Vec<Allow> {
    vec![
        Ioctl(&[IOCTL_KVM, IOCTL_BLOCK, IOCTL_VHOST]),
        // The tap of each new VM; the terminal restored at the end (`berth vm`); the
        // non-blocking connect that wakes the VNC listener at the end.
        IoctlReq(&[TUNSETVNETHDRSZ, TUNSETOFFLOAD, TCGETS, TCSETS, FIONBIO]),
        Any(libc::SYS_shutdown),
        Socket(&[libc::AF_INET as u64, libc::AF_INET6 as u64]),
        Any(libc::SYS_connect),
        Any(libc::SYS_setsockopt),
        Any(libc::SYS_getsockopt),
        Any(libc::SYS_poll),
        Any(libc::SYS_ppoll),
        Any(libc::SYS_openat),
        Any(libc::SYS_openat2),
        Any(libc::SYS_read),
        Any(libc::SYS_readv),
        Any(libc::SYS_pread64),
        Any(libc::SYS_pwrite64),
        Any(libc::SYS_preadv),
        Any(libc::SYS_pwritev),
        Any(libc::SYS_lseek),
        Any(libc::SYS_fstat),
        Any(libc::SYS_newfstatat),
        Any(libc::SYS_statx),
        // imago (see block).
        Any(libc::SYS_fstatfs),
        Any(libc::SYS_readlink),
        Any(libc::SYS_getcwd),
        Any(libc::SYS_fcntl),
        Any(libc::SYS_flock),
        Any(libc::SYS_dup),
        Any(libc::SYS_fsync),
        Any(libc::SYS_fdatasync),
        Any(libc::SYS_fallocate),
        Any(libc::SYS_ftruncate),
        Any(libc::SYS_eventfd2),
        Any(libc::SYS_epoll_create1),
        Any(libc::SYS_epoll_ctl),
        Any(libc::SYS_rt_sigaction),
        Any(libc::SYS_getuid),
        Any(libc::SYS_geteuid),
        Any(libc::SYS_prctl),
    ]
}

/// The spawner: creates every thread after start-up, so its list holds all the others (a
/// child keeps its parent's filter) plus what creating a thread takes.
fn spawner() -> Vec<Allow> {
    let mut all = vec![
        Any(libc::SYS_clone),
        Any(libc::SYS_clone3),
        Any(libc::SYS_set_robust_list),
        Any(libc::SYS_rseq),
        // PR_SET_NAME in the new thread, before it installs its own filter.
        Any(libc::SYS_prctl),
        Any(libc::SYS_capget),
        Any(libc::SYS_capset),
        Any(libc::SYS_seccomp),
        Any(libc::SYS_landlock_create_ruleset),
        Any(libc::SYS_landlock_add_rule),
        Any(libc::SYS_landlock_restrict_self),
        Any(libc::SYS_ioctl),
        Any(libc::SYS_socket),
    ];
    for kind in ThreadKind::ALL {
        if kind != ThreadKind::Spawner {
            all.extend(list(kind));
        }
    }
    // Unconditional entries make argument rules redundant; keep the spawner's list plain.
    all.retain(|a| matches!(a, Any(_)));
    all
}

fn list(kind: ThreadKind) -> Vec<Allow> {
    let mut v = base();
    v.extend(match kind {
        ThreadKind::Main => main_thread(),
        ThreadKind::Vcpu => vcpu(),
        ThreadKind::Block => block(),
        ThreadKind::Net => net(),
        ThreadKind::Balloon => balloon(),
        ThreadKind::Metrics => metrics(),
        ThreadKind::Vnc => vnc(),
        ThreadKind::Dhcp => dhcp(),
        ThreadKind::Control => control(),
        ThreadKind::Signals => signals(),
        ThreadKind::Console => console(),
        ThreadKind::Spawner => spawner(),
    });
    v
}

/// The syscall numbers a thread type may make unconditionally, and those allowed with rules
/// on their arguments (for tests and docs).
pub fn allowed(kind: ThreadKind) -> Vec<i64> {
    let mut v: Vec<i64> = list(kind)
        .iter()
        .map(|a| match a {
            Any(n) => *n,
            Ioctl(_) | IoctlReq(_) => libc::SYS_ioctl,
            Fcntl(_) => libc::SYS_fcntl,
            Socket(_) => libc::SYS_socket,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("argument index below 6")
}

/// Whether a thread type may open files.
fn opens_files(kind: ThreadKind) -> bool {
    allowed(kind).contains(&libc::SYS_openat)
}

/// The compiled filters of a thread type, to install in order: for thread types that may not
/// open files, one that makes `openat` fail with EACCES instead of trapping, then the
/// allow-list (everything else `mismatch`). glibc's malloc opens
/// /proc/sys/vm/overcommit_memory once, from whichever thread first trims its arena, and
/// copes with a failure; the kernel takes the strictest answer of all filters, so `openat`
/// fails there and every other syscall is decided by the allow-list.
pub(crate) fn build(kind: ThreadKind, mismatch: SeccompAction) -> Vec<seccompiler::BpfProgram> {
    let deny_open = !opens_files(kind) && mismatch != SeccompAction::Log;
    let mut progs = Vec::new();
    // The EACCES filter goes first: installing a filter takes prctl and seccomp, which it
    // allows and the allow-list does not.
    if deny_open {
        let rules = BTreeMap::from([(libc::SYS_openat, Vec::new())]);
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
            seccompiler::TargetArch::x86_64,
        )
        .expect("allow differs from errno");
        progs.push(filter.try_into().expect("the filter compiles"));
    }
    progs.push(allow_list(kind, mismatch, deny_open));
    progs
}

fn allow_list(
    kind: ThreadKind,
    mismatch: SeccompAction,
    pass_open: bool,
) -> seccompiler::BpfProgram {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut plain = Vec::new();
    if pass_open {
        // Decided by the second filter (EACCES), see `build`.
        plain.push(libc::SYS_openat);
    }
    for a in list(kind) {
        match a {
            Any(n) => plain.push(n),
            Ioctl(types) => rules
                .entry(libc::SYS_ioctl)
                .or_default()
                .extend(types.iter().map(|t| {
                    SeccompRule::new(vec![cond(1, SeccompCmpOp::MaskedEq(0xff00), t << 8)])
                        .expect("one condition")
                })),
            IoctlReq(reqs) => rules
                .entry(libc::SYS_ioctl)
                .or_default()
                .extend(reqs.iter().map(|r| {
                    SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, *r)]).expect("one condition")
                })),
            Fcntl(cmds) => rules
                .entry(libc::SYS_fcntl)
                .or_default()
                .extend(cmds.iter().map(|c| {
                    SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, *c)]).expect("one condition")
                })),
            Socket(families) => {
                rules
                    .entry(libc::SYS_socket)
                    .or_default()
                    .extend(families.iter().map(|f| {
                        SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, *f)])
                            .expect("one condition")
                    }))
            }
        }
    }
    for n in plain {
        // An empty rule list allows the syscall whatever its arguments.
        rules.insert(n, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .expect("allow differs from the mismatch action");
    filter.try_into().expect("the filter compiles")
}
