//! The control socket: `berth status` (the chart's liveness probe) asks the running entrypoint
//! for its state over a unix socket — abstract by default, so a read-only root filesystem is
//! no obstacle. One JSON request line, one JSON reply line.

use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::lifecycle::Lifecycle;

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
    fn name(self) -> &'static str {
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
        })
    }
}

/// A shared status.
pub type SharedStatus = Arc<Mutex<Status>>;

fn address(name: &str) -> std::io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(name),
    }
}

/// Serves requests on `name` from a thread of its own: `status`, and with a lifecycle,
/// `shutdown` (press the power button) and `reset`.
pub fn serve(name: &str, status: SharedStatus, lc: Option<Arc<Lifecycle>>) -> std::io::Result<()> {
    if !name.starts_with('@') {
        // A stale socket file from an earlier run of the same pod would make bind fail.
        let _ = std::fs::remove_file(name);
    }
    let listener = UnixListener::bind_addr(&address(name)?)?;
    sandbox::spawn("control", sandbox::ThreadKind::Control, move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = answer(conn, &status, lc.as_deref());
        }
    })?;
    Ok(())
}

fn answer(conn: UnixStream, status: &SharedStatus, lc: Option<&Lifecycle>) -> std::io::Result<()> {
    let mut line = String::new();
    // Bounded: a client cannot make the server buffer more than one short line.
    BufReader::new((&conn).take(4096)).read_line(&mut line)?;
    let req: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
    let done = |ok: bool| {
        if ok {
            json!({ "ok": true })
        } else {
            json!({ "error": "no VM is running" })
        }
    };
    let reply = match (req.get("cmd").and_then(Value::as_str), lc) {
        (Some("status") | None, _) => status.lock().expect("status lock poisoned").to_json(),
        (Some("shutdown"), Some(lc)) => done(lc.press_power_button()),
        (Some("reset"), Some(lc)) => done(lc.reset_vm()),
        (Some(other), _) => json!({ "error": format!("unknown command {other:?}") }),
    };
    let mut w = &conn;
    writeln!(w, "{reply}")
}

use std::io::Read;

/// `berth status`: asks the entrypoint; returns the reply.
pub fn query(name: &str) -> std::io::Result<Value> {
    request(name, "status")
}

/// Sends one command (`status`, `shutdown`, `reset`); returns the reply.
pub fn request(name: &str, cmd: &str) -> std::io::Result<Value> {
    let conn = UnixStream::connect_addr(&address(name)?)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = &conn;
    writeln!(w, "{}", json!({ "cmd": cmd }))?;
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
        }));
        serve(&name, status.clone(), None).unwrap();
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
}
