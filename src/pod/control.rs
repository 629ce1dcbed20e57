//! The control socket: `berth status` (the chart's liveness probe) asks the running entrypoint
//! for its state over a unix socket — abstract by default, so a read-only root filesystem is
//! no obstacle. One JSON request line, one JSON reply line.
//!
//! An abstract socket has no file permissions, and every container of a pod shares the network
//! namespace it lives in, so the server checks each peer's credentials (SO_PEERCRED): only the
//! uid berth started as, or the uid in BERTH_CONTROL_UID, may talk to it. Clients are served
//! concurrently (at most [`MAX_CLIENTS`] at once), each within [`CLIENT_DEADLINE`] in total, so
//! a stalled client cannot hold up the liveness probe.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use vmm::virtio::balloon::{BalloonShared, PFN_SHIFT, STAT_NAMES};
use vmm::vnc::serial::SerialHub;

use crate::lifecycle::Lifecycle;
use crate::metrics::{samples_json, Exporter};

/// What the entrypoint is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Fetching the image, preparing disks and network.
    Starting,
    /// The VM runs.
    Running,
    /// The guest rebooted; a new VM is being built.
    Rebooting,
    /// Shutting down.
    Stopping,
}

impl State {
    /// Its name in the status and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Rebooting => "rebooting",
            State::Stopping => "stopping",
        }
    }
}

/// The state `berth status` reports.
pub struct Status {
    /// Current state.
    pub state: State,
    /// When the current VM started.
    pub since: Instant,
    /// Boots so far (1 after the first).
    pub boots: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disks, in guest order.
    pub disks: Vec<String>,
    /// Network facts (pod IP, VM IP, MAC), if networking is set up.
    pub net: Option<Value>,
    /// Whether the VM holds its DHCP lease.
    pub lease: Option<Box<dyn Fn() -> bool + Send>>,
    /// The balloon, if the VM has one.
    pub balloon: Option<Arc<BalloonShared>>,
    /// The metrics (the same samples as /metrics go into the status).
    pub metrics: Option<Arc<Mutex<Exporter>>>,
    /// VNC viewers connected now, if VNC is on.
    pub vnc_clients: Option<Box<dyn Fn() -> usize + Send>>,
}

impl Status {
    fn to_json(&self) -> Value {
        json!({
            "state": self.state.name(),
            "uptime_seconds": self.since.elapsed().as_secs(),
            "boots": self.boots,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "disks": self.disks,
            "network": self.net,
            "lease_given": self.lease.as_ref().map(|f| f()),
            "balloon": self.balloon.as_deref().map(balloon_json),
        })
    }
}

/// The balloon's state, counters and the guest's latest memory statistics (in bytes, as the
/// guest reports them). Asks the guest for fresh statistics for the next query.
pub fn balloon_json(b: &BalloonShared) -> Value {
    b.request_stats();
    let s = b.snapshot();
    let page = 1u64 << PFN_SHIFT;
    let mut stats = serde_json::Map::new();
    for (name, v) in STAT_NAMES.iter().zip(s.stats.values) {
        if let Some(v) = v {
            stats.insert((*name).into(), v.into());
        }
    }
    json!({
        "active": s.active,
        "reporting": b.config().reporting,
        "target_bytes": u64::from(s.target_pages) * page,
        "actual_bytes": u64::from(s.actual_pages) * page,
        "inflated_pages": s.inflated_pages,
        "deflated_pages": s.deflated_pages,
        "free_page_reports": s.reports,
        "reported_bytes": s.reported_bytes,
        "rejected_ranges": s.rejected,
        "guest_stats": stats,
        "guest_stats_age_seconds": s.stats.updated.map(|t| t.elapsed().as_secs()),
    })
}

/// A shared status.
pub type SharedStatus = Arc<Mutex<Status>>;

pub(super) fn address(name: &str) -> std::io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(name),
    }
}

/// Clients served at once; more are closed at once (the probe retries).
pub const MAX_CLIENTS: usize = 8;
/// The time a client has, in total, to send its request line and take the reply.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);

/// Who may use the socket: peers whose uid is one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The uids allowed.
    pub uids: Vec<u32>,
}

impl Access {
    /// The effective uid of this process now (call it before any privilege drop, so the
    /// probe, which runs as the container's user, keeps working), plus `extra`
    /// (BERTH_CONTROL_UID).
    pub fn own_uid_and(extra: Option<u32>) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let mut uids = vec![me];
        uids.extend(extra.filter(|u| *u != me));
        Access { uids }
    }
}

/// The uid of the process at the other end of `conn` (SO_PEERCRED: the credentials it had
/// when it connected).
fn peer_uid(conn: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cred`, a ucred we own.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Serves requests on `name` from a thread of its own: `status`, and with a lifecycle,
/// `shutdown` (press the power button) and `reset`, to peers `access` allows. (The entrypoint
/// uses [`serve_with_console`].)
#[cfg(test)]
pub fn serve(
    name: &str,
    status: SharedStatus,
    lc: Option<Arc<Lifecycle>>,
    access: Access,
) -> std::io::Result<()> {
    serve_with_console(name, status, lc, access, None)
}

/// [`serve`], and with `serial`, `console` (`berth console`, [`super::serial_console`]).
pub fn serve_with_console(
    name: &str,
    status: SharedStatus,
    lc: Option<Arc<Lifecycle>>,
    access: Access,
    serial: Option<Arc<SerialHub>>,
) -> std::io::Result<()> {
    if !name.starts_with('@') {
        // A stale socket file from an earlier run of the same pod would make bind fail.
        let _ = std::fs::remove_file(name);
    }
    let listener = UnixListener::bind_addr(&address(name)?)?;
    let active = Arc::new(AtomicUsize::new(0));
    sandbox::spawn("control", sandbox::ThreadKind::Control, move || {
        for conn in listener.incoming().flatten() {
            let uid = match peer_uid(&conn) {
                Ok(uid) => uid,
                Err(_) => continue,
            };
            if !access.uids.contains(&uid) {
                refuse(&conn, uid, &access);
                continue;
            }
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                active.fetch_sub(1, Ordering::SeqCst);
                continue; // dropped: closed at once
            }
            let (status, lc, active2) = (status.clone(), lc.clone(), active.clone());
            let serial = serial.clone();
            // Through the spawner: this thread's filter does not let it create threads.
            let spawned =
                sandbox::spawn("control-client", sandbox::ThreadKind::Control, move || {
                    let _ = answer(conn, &status, lc.as_deref(), serial.as_ref());
                    active2.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    })?;
    Ok(())
}

/// Tells a peer with the wrong uid why it is turned away, without waiting for it: the reply
/// fits the socket buffer, so the write does not block.
fn refuse(conn: &UnixStream, uid: u32, access: &Access) {
    let _ = conn.set_nonblocking(true);
    let reply = json!({
        "error": format!(
            "permission denied: uid {uid} may not use the control socket (allowed: {:?}); \
             run the client as berth's user or set BERTH_CONTROL_UID",
            access.uids
        )
    });
    let mut w = conn;
    let _ = writeln!(w, "{reply}");
}

/// A reader that gives up once `deadline` has passed, however slowly the peer trickles.
struct DeadlineReader<'a> {
    conn: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.conn.set_read_timeout(Some(left))?;
        let mut r = self.conn;
        r.read(buf)
    }
}

fn answer(
    conn: UnixStream,
    status: &SharedStatus,
    lc: Option<&Lifecycle>,
    serial: Option<&Arc<SerialHub>>,
) -> std::io::Result<()> {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut line = String::new();
    // Bounded in size and in total time: a client cannot make the server buffer more than one
    // short line, nor keep its thread longer than the deadline.
    let reader = DeadlineReader {
        conn: &conn,
        deadline,
    };
    BufReader::new(reader.take(4096)).read_line(&mut line)?;
    let req: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
    let done = |ok: bool| {
        if ok {
            json!({ "ok": true })
        } else {
            json!({ "error": "no VM is running" })
        }
    };
    if req.get("cmd").and_then(Value::as_str) == Some("console") {
        return match serial {
            Some(hub) => super::serial_console::serve(conn, hub),
            None => {
                let mut w = &conn;
                writeln!(w, "{}", json!({ "error": "no serial console here" }))
            }
        };
    }
    let reply = match (req.get("cmd").and_then(Value::as_str), lc) {
        (Some("status") | None, _) => {
            let (mut v, exporter) = {
                let s = status.lock().expect("status lock poisoned");
                (s.to_json(), s.metrics.clone())
            };
            // Rendered without the status lock: the exporter takes it to read its facts.
            if let Some(e) = exporter {
                let text = e.lock().expect("exporter lock poisoned").render();
                v["metrics"] = samples_json(&text);
            }
            v
        }
        (Some("shutdown"), Some(lc)) => done(lc.press_power_button()),
        (Some("reset"), Some(lc)) => done(lc.reset_vm()),
        (Some("balloon"), _) => set_balloon(status, req.get("mib").and_then(Value::as_u64)),
        (Some(other), _) => json!({ "error": format!("unknown command {other:?}") }),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    conn.set_write_timeout(Some(left.max(Duration::from_millis(100))))?;
    let mut w = &conn;
    writeln!(w, "{reply}")
}

fn set_balloon(status: &SharedStatus, mib: Option<u64>) -> Value {
    let balloon = status.lock().expect("status lock poisoned").balloon.clone();
    match (balloon, mib) {
        (None, _) => json!({ "error": "the VM has no balloon (BALLOON=off)" }),
        (Some(_), None) => {
            json!({ "error": "give the balloon size in MiB: {\"cmd\":\"balloon\",\"mib\":N}" })
        }
        (Some(b), Some(m)) => match b.set_target_mib(m) {
            Ok(()) => json!({ "ok": true }),
            Err(e) => json!({ "error": e }),
        },
    }
}

/// `berth status`: asks the entrypoint; returns the reply.
pub fn query(name: &str) -> std::io::Result<Value> {
    request(name, "status")
}

/// Sends one command (`status`, `shutdown`, `reset`); returns the reply.
pub fn request(name: &str, cmd: &str) -> std::io::Result<Value> {
    request_json(name, &json!({ "cmd": cmd }))
}

/// Sends one request object; returns the reply.
pub fn request_json(name: &str, req: &Value) -> std::io::Result<Value> {
    let conn = UnixStream::connect_addr(&address(name)?)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = &conn;
    writeln!(w, "{req}")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip_on_an_abstract_socket() {
        let name = format!("@berth-test-{}", std::process::id());
        let status = Arc::new(Mutex::new(Status {
            state: State::Running,
            since: Instant::now(),
            boots: 1,
            vcpus: 2,
            memory_mib: 512,
            disks: vec!["/image/vm-0.qcow2".into()],
            net: Some(json!({"vm_ip": "192.168.254.2"})),
            lease: Some(Box::new(|| true)),
            balloon: None,
            metrics: None,
            vnc_clients: None,
        }));
        serve(&name, status.clone(), None, Access::own_uid_and(None)).unwrap();
        let v = query(&name).unwrap();
        assert_eq!(v["state"], "running");
        assert_eq!(v["vcpus"], 2);
        assert_eq!(v["lease_given"], true);
        assert_eq!(v["disks"][0], "/image/vm-0.qcow2");
        status.lock().unwrap().state = State::Rebooting;
        assert_eq!(query(&name).unwrap()["state"], "rebooting");
        // Garbage gets the status too, never a crash.
        let mut c = UnixStream::connect_addr(&address(&name).unwrap()).unwrap();
        c.write_all(&[0xff; 10000]).unwrap();
        assert!(query("@berth-test-nobody-listens").is_err());
        // Without a lifecycle (no VM), commands are refused, not crashed on.
        assert!(request(&name, "reset").unwrap()["error"].is_string());
    }

    fn test_status() -> SharedStatus {
        Arc::new(Mutex::new(Status {
            state: State::Running,
            since: Instant::now(),
            boots: 1,
            vcpus: 1,
            memory_mib: 256,
            disks: vec![],
            net: None,
            lease: None,
            balloon: None,
            metrics: None,
            vnc_clients: None,
        }))
    }

    #[test]
    fn balloon_target_over_the_socket() {
        let name = format!("@berth-test-balloon-{}", std::process::id());
        let status = test_status();
        serve(&name, status.clone(), None, Access::own_uid_and(None)).unwrap();
        let ask = |mib: Option<u64>| {
            let mut req = json!({ "cmd": "balloon" });
            if let Some(m) = mib {
                req["mib"] = m.into();
            }
            request_json(&name, &req).unwrap()
        };
        assert!(ask(Some(10)).unwrap_err_str().contains("no balloon"));
        let config = vmm::virtio::balloon::BalloonConfig::default();
        let b = BalloonShared::new(config, 256).unwrap();
        status.lock().unwrap().balloon = Some(b.clone());
        assert_eq!(ask(Some(100)), json!({ "ok": true }));
        assert_eq!(b.snapshot().target_pages, 100 * 256);
        assert!(ask(Some(257)).unwrap_err_str().contains("larger than"));
        assert!(ask(None).unwrap_err_str().contains("MiB"));
        let v = query(&name).unwrap();
        assert_eq!(v["balloon"]["target_bytes"], 100u64 << 20);
        assert_eq!(v["balloon"]["active"], false);
        assert_eq!(v["balloon"]["reporting"], true);
        // With an exporter, the status carries the same samples as /metrics.
        let b2 = b.clone();
        let e = Exporter::new(Box::new(move || crate::metrics::Facts {
            state: "running",
            boots: 4,
            balloon: Some(b2.clone()),
            ..Default::default()
        }));
        status.lock().unwrap().metrics = Some(e);
        let v = query(&name).unwrap();
        assert_eq!(v["metrics"]["berth_vm_boots_total"], 4.0);
        assert_eq!(
            v["metrics"][r#"berth_balloon_bytes{kind="target"}"#],
            (100u64 << 20) as f64
        );
    }

    trait ErrStr {
        fn unwrap_err_str(&self) -> String;
    }
    impl ErrStr for Value {
        fn unwrap_err_str(&self) -> String {
            self["error"].as_str().expect("an error reply").to_owned()
        }
    }

    #[test]
    fn stalled_clients_do_not_block_the_probe() {
        let name = format!("@berth-test-stall-{}", std::process::id());
        serve(&name, test_status(), None, Access::own_uid_and(None)).unwrap();
        let addr = address(&name).unwrap();
        // One client that connects and says nothing, one that trickles a byte every 300 ms
        // (each read succeeds, so only a total deadline ends it).
        let _silent = UnixStream::connect_addr(&addr).unwrap();
        let trickler = UnixStream::connect_addr(&addr).unwrap();
        let t = trickler.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut w = &t;
            for _ in 0..40 {
                if w.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..3 {
            let t0 = Instant::now();
            assert_eq!(query(&name).unwrap()["state"], "running");
            assert!(
                t0.elapsed() < Duration::from_millis(1500),
                "status took {:?} behind stalled clients",
                t0.elapsed()
            );
        }
        // The trickler is cut off at the deadline, not served forever.
        trickler
            .set_read_timeout(Some(CLIENT_DEADLINE * 3))
            .unwrap();
        let t0 = Instant::now();
        let mut rest = Vec::new();
        let _ = (&trickler).read_to_end(&mut rest);
        assert!(
            t0.elapsed() < CLIENT_DEADLINE * 2,
            "trickling client kept for {:?}",
            t0.elapsed()
        );
    }

    /// Connects to `name` as `uid` (fork + setuid; the child uses only async-signal-safe
    /// calls) and returns what the server sent before closing.
    fn request_as(name: &str, uid: u32, cmd: &str) -> Vec<u8> {
        let addr = address(name).unwrap();
        let abs = addr.as_abstract_name().unwrap().to_vec();
        // SAFETY: a zeroed sockaddr_un is valid; the name fits (checked by the assert).
        let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(abs.len() + 1 < sun.sun_path.len());
        for (i, b) in abs.iter().enumerate() {
            sun.sun_path[i + 1] = *b as libc::c_char;
        }
        let sun_len = (std::mem::size_of::<libc::sa_family_t>() + 1 + abs.len()) as u32;
        let req = format!("{}\n", json!({ "cmd": cmd })).into_bytes();
        let mut pipe = [0; 2];
        // SAFETY: pipe fills two fds into the array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child calls only async-signal-safe functions and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                libc::close(pipe[0]);
                if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0
                    || libc::connect(fd, (&sun as *const libc::sockaddr_un).cast(), sun_len) != 0
                {
                    libc::_exit(3);
                }
                libc::write(fd, req.as_ptr().cast(), req.len());
                let mut buf = [0u8; 512];
                loop {
                    let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 {
                        break;
                    }
                    libc::write(pipe[1], buf.as_ptr().cast(), n as usize);
                }
                libc::_exit(0);
            }
        }
        assert!(pid > 0, "fork failed");
        // SAFETY: closing our copy of the write end; the read end is ours.
        unsafe { libc::close(pipe[1]) };
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        let mut st = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child status {st:#x}"
        );
        out
    }

    #[test]
    fn peers_with_another_uid_are_refused() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to connect as another uid");
            return;
        }
        let name = format!("@berth-test-uid-{}", std::process::id());
        serve(&name, test_status(), None, Access::own_uid_and(Some(4242))).unwrap();
        let reply = String::from_utf8(request_as(&name, 65534, "status")).unwrap();
        assert!(
            reply.contains("permission denied: uid 65534") && !reply.contains("running"),
            "{reply}"
        );
        let reply = String::from_utf8(request_as(&name, 65534, "reset")).unwrap();
        assert!(reply.contains("permission denied"), "{reply}");
        // The configured uid and berth's own are served.
        let reply = String::from_utf8(request_as(&name, 4242, "status")).unwrap();
        assert!(reply.contains("\"state\":\"running\""), "{reply}");
        assert_eq!(query(&name).unwrap()["state"], "running");
    }
}
