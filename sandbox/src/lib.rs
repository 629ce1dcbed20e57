//! berth's confinement after set-up (docs/security.md):
//!
//! - **seccomp per thread type**: every thread installs the allow-list of its [`ThreadKind`]
//!   (see [`filters`]) as it starts, before it runs any code that sees guest or network
//!   input; anything else traps to a SIGSYS handler that names the syscall on one line and
//!   ends berth with exit code [`EXIT_SECCOMP`]. [`Mode::Log`] lets the kernel log instead.
//! - **one spawner thread** creates every thread after [`init`], so no thread inherits a
//!   stricter filter from its creator (filters stack).
//! - **privileges**: each thread drops the capabilities it does not need at start, and
//!   [`lockdown`] (on the main thread, once the tap, bridge, nftables table and DHCP socket
//!   exist) switches the whole process to an unprivileged uid/gid, drops the main thread's
//!   capabilities, sets no_new_privs and restricts the file system with Landlock.
//!
//! Without [`init`] (library tests, other programs) [`spawn`] is a plain thread spawn and
//! [`enter`] does nothing.

pub mod filters;
mod names;

use std::cell::Cell;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use seccompiler::SeccompAction;

/// Exit code when a thread makes a syscall its filter forbids (docs/operations.md).
pub const EXIT_SECCOMP: i32 = 14;

/// What a forbidden syscall does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No filters (debugging only).
    Off,
    /// Filters that allow everything but have the kernel log what they would forbid
    /// (SECCOMP_RET_LOG: dmesg / the audit log, `type=1326`).
    Log,
    /// The default: the one-line report and exit [`EXIT_SECCOMP`].
    Kill,
}

impl Mode {
    /// Parses `on`/`kill`, `log` or `off` (BERTH_SECCOMP, `berth vm --seccomp`).
    pub fn parse(v: &str) -> Result<Mode, String> {
        match v.trim() {
            "" | "on" | "kill" => Ok(Mode::Kill),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            other => Err(format!(
                "BERTH_SECCOMP={other:?} is not on, log or off; leave it unset for the default (on)"
            )),
        }
    }

    /// The mode BERTH_SECCOMP asks for (default [`Mode::Kill`]).
    pub fn from_env() -> Result<Mode, String> {
        Mode::parse(&std::env::var("BERTH_SECCOMP").unwrap_or_default())
    }
}

/// The thread types, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread after [`lockdown`]: waits for the VM and rebuilds it on a reboot.
    Main,
    /// A vCPU: KVM_RUN and the device models behind port and MMIO exits.
    Vcpu,
    /// A virtio-blk worker.
    Block,
    /// A virtio-net worker.
    Net,
    /// The virtio-balloon worker.
    Balloon,
    /// The /metrics HTTP server.
    Metrics,
    /// VNC server threads.
    Vnc,
    /// The DHCP server.
    Dhcp,
    /// The control socket.
    Control,
    /// SIGTERM/SIGINT handling and the shutdown timer.
    Signals,
    /// The serial console's standard input.
    Console,
    /// The thread that creates all others.
    Spawner,
}

impl ThreadKind {
    /// Every thread type.
    pub const ALL: [ThreadKind; 12] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Balloon,
        ThreadKind::Metrics,
        ThreadKind::Vnc,
        ThreadKind::Dhcp,
        ThreadKind::Control,
        ThreadKind::Signals,
        ThreadKind::Console,
        ThreadKind::Spawner,
    ];

    /// Its name in messages and in BERTH_SECCOMP_SELFTEST.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Block => "block",
            ThreadKind::Net => "net",
            ThreadKind::Balloon => "balloon",
            ThreadKind::Metrics => "metrics",
            ThreadKind::Vnc => "vnc",
            ThreadKind::Dhcp => "dhcp",
            ThreadKind::Control => "control",
            ThreadKind::Signals => "signals",
            ThreadKind::Console => "console",
            ThreadKind::Spawner => "spawner",
        }
    }

    fn from_name(s: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

type Job = Box<dyn FnOnce() + Send>;

struct State {
    mode: Mode,
    /// The uid/gid [`lockdown`] switches to (the process runs as root and may).
    switch: Option<(u32, u32)>,
    /// A thread type that makes a forbidden syscall right after its filter is installed
    /// (BERTH_SECCOMP_SELFTEST, for the test that a violation is reported and fatal).
    selftest: Option<ThreadKind>,
    spawner: Option<Mutex<Sender<Job>>>,
}

static STATE: OnceLock<State> = OnceLock::new();

thread_local! {
    /// This thread's type, for the SIGSYS report (a const initialiser: safe to read from a
    /// signal handler, no lazy initialisation).
    static KIND: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// How berth confines itself; see [`init`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The seccomp mode.
    pub mode: Mode,
    /// The uid and gid to switch to at [`lockdown`] (`None`: keep the uid).
    pub switch: Option<(u32, u32)>,
}

/// The uid/gid the pod entrypoint switches to when it runs as root: BERTH_UID/BERTH_GID,
/// default 65534 (nobody/nogroup); BERTH_UID=0 keeps root (without capabilities).
pub fn switch_from_env(default: Option<(u32, u32)>) -> Result<Option<(u32, u32)>, String> {
    let get = |name: &str| -> Result<Option<u32>, String> {
        match std::env::var(name) {
            Err(_) => Ok(None),
            Ok(v) => v.trim().parse::<u32>().map(Some).map_err(|_| {
                format!("{name}={v:?} is not a numeric id; give a uid/gid number like 65534")
            }),
        }
    };
    let uid = get("BERTH_UID")?;
    let gid = get("BERTH_GID")?;
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    Ok(match (uid, default) {
        (Some(0), _) => None,
        (Some(u), _) => Some((u, gid.unwrap_or(u))),
        (None, Some((u, g))) => Some((u, gid.unwrap_or(g))),
        (None, None) => None,
    })
}

/// Sets berth's confinement up: the SIGSYS handler and the spawner thread. Call once, first
/// thing, before any other thread exists.
pub fn init(opts: Options) -> Result<(), String> {
    let selftest = match std::env::var("BERTH_SECCOMP_SELFTEST") {
        Ok(v) => Some(ThreadKind::from_name(&v).ok_or_else(|| {
            format!("BERTH_SECCOMP_SELFTEST={v:?} is not a thread type (vcpu, block, ...)")
        })?),
        Err(_) => None,
    };
    install_sigsys_handler().map_err(|e| format!("cannot install the SIGSYS handler: {e}"))?;
    let spawner = if opts.mode == Mode::Off {
        None
    } else {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                // The first job (sent once the state is set) confines this thread.
                for job in rx {
                    job();
                }
            })
            .map_err(|e| format!("cannot start the spawner thread: {e}"))?;
        Some(Mutex::new(tx))
    };
    STATE
        .set(State {
            mode: opts.mode,
            switch: opts.switch,
            selftest,
            spawner,
        })
        .map_err(|_| "sandbox::init called twice".to_string())?;
    if let Some(tx) = STATE.get().and_then(|s| s.spawner.as_ref()) {
        let job: Job = Box::new(|| enter(ThreadKind::Spawner));
        let _ = tx.lock().expect("spawner lock poisoned").send(job);
    }
    if opts.mode == Mode::Log {
        eprintln!(
            "berth: seccomp: log mode (BERTH_SECCOMP=log): syscalls outside a thread's \
             allow-list are allowed and logged by the kernel (dmesg, audit type=1326)"
        );
    } else if opts.mode == Mode::Off {
        eprintln!("berth: seccomp: off (BERTH_SECCOMP=off): threads run without filters");
    }
    Ok(())
}

/// A thread started with [`spawn`].
pub struct Handle<T> {
    thread: JoinHandle<()>,
    result: Arc<Mutex<Option<T>>>,
}

impl<T> Handle<T> {
    /// Waits for the thread and returns its result (`Err` if it panicked).
    pub fn join(self) -> std::thread::Result<T> {
        self.thread.join()?;
        let value = self.result.lock().expect("result lock poisoned").take();
        value.ok_or_else(|| Box::new("the thread left no result") as Box<dyn std::any::Any + Send>)
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// The std handle (to signal the thread).
    pub fn join_handle(&self) -> &JoinHandle<()> {
        &self.thread
    }
}

/// Starts `f` on a new thread named `name` that first installs the filter of `kind`. After
/// [`init`] the spawner thread creates it (see [`filters`] for why).
pub fn spawn<F, T>(name: impl Into<String>, kind: ThreadKind, f: F) -> io::Result<Handle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let result = Arc::new(Mutex::new(None));
    let slot = result.clone();
    let body = move || {
        enter(kind);
        let v = f();
        *slot.lock().expect("result lock poisoned") = Some(v);
    };
    let builder = std::thread::Builder::new().name(name.into());
    let spawner = STATE.get().and_then(|s| s.spawner.as_ref());
    let thread = match spawner {
        None => builder.spawn(body)?,
        Some(tx) => {
            // A new thread inherits its creator's signal mask: give it the caller's, as a
            // plain spawn would (the lifecycle blocks SIGTERM/SIGINT everywhere but in the
            // thread that waits for them).
            let mask = SigMask::current();
            let (rtx, rrx) = mpsc::channel();
            let job: Job = Box::new(move || {
                mask.set();
                let _ = rtx.send(builder.spawn(body));
            });
            tx.lock()
                .expect("spawner lock poisoned")
                .send(job)
                .map_err(|_| io::Error::other("the spawner thread is gone"))?;
            rrx.recv()
                .map_err(|_| io::Error::other("the spawner thread is gone"))??
        }
    };
    Ok(Handle { thread, result })
}

/// A thread's signal mask.
struct SigMask(libc::sigset_t);

// SAFETY: a sigset_t is plain data.
unsafe impl Send for SigMask {}

impl SigMask {
    fn current() -> SigMask {
        // SAFETY: reads this thread's mask into a zeroed set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            SigMask(set)
        }
    }

    fn set(&self) {
        // SAFETY: sets this thread's mask from an initialised set.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Confines the calling thread as `kind`: drops its capabilities (keeping CAP_SETUID and
/// CAP_SETGID for the coming uid switch when one is planned), sets no_new_privs and installs
/// the thread type's seccomp filter. Does nothing before [`init`]. A failure ends berth with
/// one line and [`EXIT_SECCOMP`]: running unconfined is not an option once asked for.
pub fn enter(kind: ThreadKind) {
    KIND.with(|k| k.set(kind as u8));
    let Some(st) = STATE.get() else { return };
    if let Err(e) = confine(st, kind) {
        eprintln!(
            "berth: sandbox: cannot confine the {} thread: {e}; set BERTH_SECCOMP=off to run \
             without seccomp",
            kind.name()
        );
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(EXIT_SECCOMP) };
    }
    if st.selftest == Some(kind) {
        eprintln!(
            "berth: BERTH_SECCOMP_SELFTEST: the {} thread makes a forbidden syscall (uname)",
            kind.name()
        );
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname fills the struct; it is in no allow-list, so the filter stops it.
        unsafe { libc::uname(&mut u) };
    }
}

fn confine(st: &State, kind: ThreadKind) -> Result<(), String> {
    if kind != ThreadKind::Main {
        drop_thread_caps(st.switch.is_some())?;
    }
    set_no_new_privs()?;
    let mismatch = match st.mode {
        Mode::Off => return Ok(()),
        Mode::Log => SeccompAction::Log,
        Mode::Kill => SeccompAction::Trap,
    };
    for prog in filters::build(kind, mismatch) {
        seccompiler::apply_filter(&prog).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

fn set_no_new_privs() -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Drops this thread's capabilities; `keep_setid` keeps CAP_SETUID/CAP_SETGID if held, for
/// glibc's credential broadcast at the uid switch (which then clears them).
fn drop_thread_caps(keep_setid: bool) -> Result<(), String> {
    use caps::{CapSet, Capability, CapsHashSet};
    let err = |e: caps::errors::CapsError| format!("capabilities: {e}");
    let mut keep = CapsHashSet::new();
    if keep_setid {
        let have = caps::read(None, CapSet::Permitted).map_err(err)?;
        for c in [Capability::CAP_SETUID, Capability::CAP_SETGID] {
            if have.contains(&c) {
                keep.insert(c);
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::set(None, CapSet::Effective, &keep).map_err(err)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err)?;
    Ok(())
}

/// What [`lockdown`] may still reach on the file system.
#[derive(Debug, Clone, Default)]
pub struct Lockdown {
    /// Files and directories berth reads and writes after set-up (disks, /image, /tmp, the
    /// devices it holds).
    pub read_write: Vec<PathBuf>,
    /// Files and directories it only reads (kernel, initramfs, read-only disks).
    pub read_only: Vec<PathBuf>,
    /// Files the unprivileged gid gets access to before the switch (the disks berth writes,
    /// and the images it reopens on a reboot): their group becomes that gid, with read access,
    /// and write access for those in `read_write`. The owner stays, so a berth restarted as
    /// root without CAP_DAC_OVERRIDE (the chart drops it) can still open them.
    pub chown: Vec<PathBuf>,
}

/// Drops what set-up needed, on the main thread, before the guest runs: switches to the
/// unprivileged uid/gid (all threads), drops the main thread's capabilities and bounding set,
/// restricts the file system (Landlock, this thread and every thread created afterwards) and
/// installs the main thread's filter. Returns one line saying what was enforced.
pub fn lockdown(l: &Lockdown) -> Result<String, String> {
    let Some(st) = STATE.get() else {
        return Err("sandbox::lockdown before sandbox::init".into());
    };
    let mut said = Vec::new();
    // The bounding set needs CAP_SETPCAP, so it goes first; a missing capability is fine.
    for c in caps::all() {
        let _ = caps::drop(None, caps::CapSet::Bounding, c);
    }
    match st.switch {
        None => {
            // SAFETY: getuid has no failure mode.
            said.push(format!("uid {}", unsafe { libc::getuid() }));
        }
        Some((uid, gid)) => match switch_ids(uid, gid, l) {
            Ok(()) => said.push(format!("uid {uid} gid {gid}")),
            Err(e) => {
                eprintln!(
                    "berth: cannot switch to uid {uid} gid {gid} ({e}); staying uid 0 without \
                     capabilities: give the container CAP_SETUID, CAP_SETGID and CAP_CHOWN, or \
                     set BERTH_UID=0 to silence this"
                );
                said.push("uid 0 (switch failed)".into());
            }
        },
    }
    // caps::clear on Permitted drops Effective too.
    let err = |e: caps::errors::CapsError| format!("capabilities: {e}");
    caps::clear(None, caps::CapSet::Ambient).map_err(err)?;
    caps::clear(None, caps::CapSet::Inheritable).map_err(err)?;
    caps::clear(None, caps::CapSet::Effective).map_err(err)?;
    caps::clear(None, caps::CapSet::Permitted).map_err(err)?;
    said.push("no capabilities".into());
    set_no_new_privs()?;
    said.push("no_new_privs".into());

    said.push(landlock::restrict(l)?);
    // The spawner creates every later thread: restricted, they are too.
    if let Some(tx) = &st.spawner {
        let (rtx, rrx) = mpsc::channel();
        let rules = l.clone();
        let job: Job = Box::new(move || {
            let _ = rtx.send(landlock::restrict(&rules));
        });
        let _ = tx.lock().expect("spawner lock poisoned").send(job);
        rrx.recv()
            .map_err(|_| "the spawner thread is gone".to_string())??;
    }
    said.push(match st.mode {
        Mode::Kill => "seccomp on".into(),
        Mode::Log => "seccomp log".into(),
        Mode::Off => "seccomp off".into(),
    });
    enter(ThreadKind::Main);
    Ok(said.join(", "))
}

fn switch_ids(uid: u32, gid: u32, l: &Lockdown) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for p in &l.chown {
        std::os::unix::fs::chown(p, None, Some(gid))
            .map_err(|e| format!("chown {}: {e}", p.display()))?;
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let grant = if l.read_write.contains(p) {
            0o060
        } else {
            0o040
        };
        let mut perm = meta.permissions();
        perm.set_mode(perm.mode() | grant);
        std::fs::set_permissions(p, perm).map_err(|e| format!("chmod {}: {e}", p.display()))?;
    }
    let last = |what: &str| format!("{what}: {}", io::Error::last_os_error());
    // glibc applies these to every thread of the process (the setxid broadcast), so the
    // threads already running lose root and their remaining capabilities too.
    // SAFETY: plain credential syscalls with integer arguments and a one-element array.
    unsafe {
        if libc::setgroups(1, &gid) != 0 {
            return Err(last("setgroups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(last("setresgid"));
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(last("setresuid"));
        }
    }
    Ok(())
}

mod landlock {
    use landlock::{
        path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };

    use super::Lockdown;

    /// Restricts the calling thread (and threads it creates later) to `l`'s paths.
    pub(crate) fn restrict(l: &Lockdown) -> Result<String, String> {
        let abi = ABI::V5;
        let err = |e: landlock::RulesetError| format!("landlock: {e}");
        // Files named through /proc/self/fd are memfds (the image's kernel and initramfs):
        // Landlock takes no rule for them (EBADFD) and does not restrict them either.
        let visible = |v: &[std::path::PathBuf]| -> Vec<std::path::PathBuf> {
            v.iter()
                .filter(|p| !p.starts_with("/proc"))
                .cloned()
                .collect()
        };
        let (read_write, read_only) = (visible(&l.read_write), visible(&l.read_only));
        let status = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .map_err(err)?
            .create()
            .map_err(err)?
            .add_rules(path_beneath_rules(&read_write, AccessFs::from_all(abi)))
            .map_err(err)?
            .add_rules(path_beneath_rules(&read_only, AccessFs::from_read(abi)))
            .map_err(err)?
            .restrict_self()
            .map_err(err)?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => "landlock enforced".into(),
            RulesetStatus::PartiallyEnforced => {
                "landlock partly enforced (older kernel ABI)".into()
            }
            RulesetStatus::NotEnforced => {
                "landlock not enforced (the kernel lacks it or it is disabled)".into()
            }
        })
    }
}

/// The name of x86_64 syscall `nr` (`"?"` if unknown).
pub fn syscall_name(nr: i64) -> &'static str {
    names::NAMES
        .iter()
        .find(|(n, _)| i64::from(*n) == nr)
        .map(|(_, s)| *s)
        .unwrap_or("?")
}

fn install_sigsys_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with a valid SA_SIGINFO handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A fixed buffer for the SIGSYS report: no allocation in a signal handler.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// si_code of a SIGSYS raised by a seccomp filter (SECCOMP_RET_TRAP).
const SYS_SECCOMP: libc::c_int = 1;

/// The SIGSYS handler: one line naming the syscall, its number and the thread type, then
/// exit [`EXIT_SECCOMP`]. Only async-signal-safe work: a stack buffer, write, _exit.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code != SYS_SECCOMP {
        // Sent by kill(2) or the like, not by a filter: not ours to report; ignore it.
        return;
    }
    // siginfo_t for SIGSYS (x86_64): si_call_addr at byte 16, si_syscall (int) at 24.
    // SAFETY: as above; a SYS_SECCOMP siginfo carries these fields.
    let nr = unsafe { *(info.cast::<u8>().add(24).cast::<i32>()) };
    let kind = KIND.with(|k| k.get());
    let kind_name = ThreadKind::ALL
        .get(usize::from(kind))
        .map(|k| k.name())
        .unwrap_or("unknown");
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"berth: seccomp: the ");
    line.push(kind_name.as_bytes());
    line.push(b" thread made syscall ");
    line.push_num(nr as u64);
    line.push(b" (");
    line.push(syscall_name(i64::from(nr)).as_bytes());
    line.push(b"), which its allow-list forbids; berth stops (a bug or an exploit attempt: report it; BERTH_SECCOMP=log lets it through for debugging)\n");
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_SECCOMP);
    }
}

#[cfg(test)]
mod tests;
