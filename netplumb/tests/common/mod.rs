//! Helpers for the namespace tests: network namespaces that are always deleted (a guard),
//! running code inside one, and shell commands as independent oracles.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a peer waits to connect or for an answer.
pub const T: Duration = Duration::from_secs(10);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    // Short enough for names like "/run/netns/..": pid + counter make it unique per run.
    format!(
        "np{}-{}-{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its output if it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and reports whether it succeeded.
pub fn ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A network namespace made with `ip netns add`, deleted on drop (also when a test panics).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let ns = Netns { name: unique(tag) };
        run(&["ip", "netns", "add", &ns.name]);
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `ip netns exec NS ARGS...`
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Like [`Netns::exec`] but returns success instead of panicking.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        ok(&v)
    }

    /// Runs `f` on a new thread that has joined this namespace; sockets it opens stay in it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Like [`Netns::run`] without waiting: for servers that outlive the call.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only the calling thread's network ns.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pod namespace whose eth0 (MTU 1450, 10.213.0.2/24, default via the client) is a veth
/// to a client namespace (10.213.0.1/24), plus a resolv.conf with three nameservers.
pub struct Pod {
    pub client: Netns,
    pub pod: Netns,
    pub dir: TempDir,
    pub resolv: PathBuf,
}

pub const CLIENT_IP: &str = "10.213.0.1";
pub const POD_IP: &str = "10.213.0.2";
pub const NAMESERVERS: [&str; 3] = ["10.96.0.10", "10.96.0.11", "10.96.0.12"];
pub const SEARCH: [&str; 4] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
    "corp.example.com",
];

impl Pod {
    /// Builds the namespaces; `addr` and `route` allow making a broken pod.
    pub fn with(addr: bool, route: bool) -> Pod {
        let client = Netns::new("cl");
        let pod = Netns::new("pod");
        run(&[
            "ip",
            "link",
            "add",
            "c0",
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.name,
        ]);
        client.ip(&["link", "set", "c0", "mtu", "1450", "up"]);
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "c0"]);
        pod.ip(&["link", "set", "eth0", "mtu", "1450", "up"]);
        if addr {
            pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]);
        }
        if addr && route {
            pod.ip(&["route", "add", "default", "via", CLIENT_IP]);
        }
        let dir = TempDir::new("pod");
        let resolv = dir.path("resolv.conf");
        let mut text = format!("search {}\n", SEARCH.join(" "));
        for ns in NAMESERVERS {
            text += &format!("nameserver {ns}\n");
        }
        text += "options ndots:5\n";
        std::fs::write(&resolv, text).unwrap();
        Pod {
            client,
            pod,
            dir,
            resolv,
        }
    }

    pub fn new() -> Pod {
        Pod::with(true, true)
    }

    /// A "vm" namespace with a veth `vmnic` (MAC `mac`) whose peer `vmport` sits in the
    /// pod namespace, down and not yet enslaved.
    pub fn vm_side(&self, mac: &str) -> Netns {
        let vm = Netns::new("vm");
        run(&[
            "ip",
            "link",
            "add",
            "vmport",
            "netns",
            &self.pod.name,
            "type",
            "veth",
            "peer",
            "name",
            "vmnic",
            "netns",
            &vm.name,
        ]);
        vm.ip(&["link", "set", "vmnic", "address", mac, "up"]);
        vm
    }
}

/// Whether `path` exists (for the tun device check).
pub fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

/// TCP listeners and UDP echoers on address `any` ("0.0.0.0" or "::") of the current
/// namespace that answer "<tag>:<port>:<peer ip>" ("<tag>-udp:..." over UDP).
pub fn serve(any: &str, tag: &'static str, tcp: &[u16], udp: &[u16]) {
    for &port in tcp {
        let l = TcpListener::bind((any, port)).unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let peer = c.peer_addr().unwrap().ip();
                let _ = write!(c, "{tag}:{port}:{peer}");
            }
        });
    }
    for &port in udp {
        let s = UdpSocket::bind((any, port)).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(format!("{tag}-udp:{port}:{}", from.ip()).as_bytes(), from);
            }
        });
    }
}

/// What a [`serve`] TCP listener at `addr` answers.
pub fn tcp_get(addr: &str) -> Result<String, std::io::Error> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut c = TcpStream::connect_timeout(&addr, T)?;
    c.set_read_timeout(Some(T))?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok(s)
}

/// What a [`serve`] UDP echoer at `addr` answers, and from where.
pub fn udp_get(addr: &str) -> Result<(String, SocketAddr), std::io::Error> {
    let to: SocketAddr = addr.parse().unwrap();
    let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    s.set_read_timeout(Some(T))?;
    s.send_to(b"ping", to)?;
    let mut buf = [0u8; 128];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// The `berth` table of `family` ("ip", "ip6") in `ns` as `nft -j` lists it, without
/// handles and metainfo (they differ run to run).
pub fn nft_json(ns: &Netns, family: &str) -> serde_json::Value {
    let out = ns.exec(&["nft", "-j", "list", "table", family, "berth"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut items: Vec<serde_json::Value> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("metainfo").is_none())
        .cloned()
        .collect();
    for i in &mut items {
        for (_, obj) in i.as_object_mut().unwrap().iter_mut() {
            obj.as_object_mut().unwrap().remove("handle");
        }
    }
    serde_json::Value::Array(items)
}

/// The `berth` table of `family` that the nft CLI writes from `text`, in a scratch
/// namespace, as [`nft_json`] lists it: the oracle for the table netplumb writes.
pub fn nft_json_of_text(family: &str, text: &str) -> serde_json::Value {
    let scratch = Netns::new("ref");
    let dir = TempDir::new("ref");
    let f = dir.path("rules.nft");
    std::fs::write(&f, text).unwrap();
    scratch.exec(&["nft", "-f", f.to_str().unwrap()]);
    nft_json(&scratch, family)
}
