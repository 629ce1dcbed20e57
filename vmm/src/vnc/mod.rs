//! A minimal RFB (VNC) server for the guest's console: it shows the [`Framebuffer`] and types
//! into the guest's PS/2 keyboard.
//!
//! Threads: one accepts connections; one polls KVM's dirty log of the framebuffer (about 30
//! times a second, and only while some client waits for an incremental update, so an idle
//! console costs nothing); each client has a reader (its messages, keys) and a writer
//! (framebuffer updates). A client that misbehaves is disconnected; nothing it sends reaches
//! the VM except key events.

pub mod auth;
pub mod encode;
pub mod limits;
pub mod proto;
pub mod serial;
mod session;
pub mod ws;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::devices::i8042::KeyboardInput;
use crate::framebuffer::Framebuffer;
use crate::virtio::input::PointerInput;

#[doc(hidden)]
pub use session::fuzz_session;

/// Default most simultaneous viewers.
pub const DEFAULT_MAX_CLIENTS: usize = 8;
/// How often the dirty log is read while a client waits for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(33);
/// Time a client gets, in total, to finish the handshake (typing the password included).
pub const DEFAULT_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(30);
/// Default most simultaneous connections from one source address (an IPv4 address or an
/// IPv6 /64): half the slots, so one source cannot take them all.
pub const DEFAULT_MAX_PER_SOURCE: usize = 4;
/// Default back-off after the first failed password from a source (doubled per failure).
pub const DEFAULT_AUTH_BACKOFF: Duration = Duration::from_secs(1);
/// Default shortest time between two framebuffer updates to one viewer (30 per second).
pub const DEFAULT_UPDATE_INTERVAL: Duration = Duration::from_millis(33);
/// Default shortest time between two full (non-incremental) updates to one viewer: viewers
/// ask for those at connect and after a format change, a loop asking for them is an attack.
pub const DEFAULT_FULL_UPDATE_INTERVAL: Duration = Duration::from_millis(250);
/// Time a write to a client may block before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections being refused at once (over the limit); more are closed without a word.
const MAX_REFUSING: usize = 4;

/// How to serve.
#[derive(Clone, Debug)]
pub struct VncConfig {
    /// Address to listen on (port 5900 in a pod).
    pub addr: SocketAddr,
    /// VNC password (only its first 8 bytes count); `None` for no authentication.
    pub password: Option<Vec<u8>>,
    /// Most simultaneous viewers.
    pub max_clients: usize,
    /// Desktop name shown by viewers.
    pub name: String,
    /// Serve without a password on a non-loopback address (VNC_INSECURE, --vnc-insecure).
    pub insecure: bool,
    /// Total time a client has for the handshake.
    pub handshake_deadline: Duration,
    /// Most simultaneous connections from one source address.
    pub max_per_source: usize,
    /// Back-off after the first failed password from a source, doubled per failure.
    pub auth_backoff: Duration,
    /// Shortest time between two updates to one viewer.
    pub update_interval: Duration,
    /// Shortest time between two full (non-incremental) updates to one viewer.
    pub full_update_interval: Duration,
}

impl VncConfig {
    /// Listen on `addr` without a password (allowed on loopback addresses only, unless
    /// `insecure` is set), with the default limits.
    pub fn new(addr: SocketAddr) -> Self {
        VncConfig {
            addr,
            password: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            name: "berth".into(),
            insecure: false,
            handshake_deadline: DEFAULT_HANDSHAKE_DEADLINE,
            max_per_source: DEFAULT_MAX_PER_SOURCE,
            auth_backoff: DEFAULT_AUTH_BACKOFF,
            update_interval: DEFAULT_UPDATE_INTERVAL,
            full_update_interval: DEFAULT_FULL_UPDATE_INTERVAL,
        }
    }

    /// Whether this console may be served: `Err` (why) for a non-loopback address without a
    /// password unless `insecure`; `Ok(Some(warning))` when it is served open anyway.
    pub fn exposure(&self) -> Result<Option<String>, String> {
        if self.password.is_some() || self.addr.ip().is_loopback() {
            return Ok(None);
        }
        if self.insecure {
            return Ok(Some(format!(
                "WARNING: the VNC console on {} has NO PASSWORD: anyone who can reach it can \
                 watch the console and type into the VM",
                self.addr
            )));
        }
        Err(format!(
            "refusing to serve the VNC console on {} without a password: anyone who can reach \
             it could watch the console and type into the VM",
            self.addr
        ))
    }
}

/// State shared by the server's threads.
struct Shared {
    fb: Arc<Framebuffer>,
    /// Replaced when the VM is rebuilt (reboot).
    keyboard: Mutex<Option<KeyboardInput>>,
    config: VncConfig,
    clients: Mutex<Vec<Arc<session::Client>>>,
    /// Wakes the dirty-log poller when a client starts waiting (paired with `clients`).
    poll_wake: Condvar,
    active: AtomicUsize,
    refusing: AtomicUsize,
    sources: limits::Sources,
    stop: AtomicBool,
    /// The serial console served at /serial, if any.
    serial: Mutex<Option<Arc<serial::SerialHub>>>,
    /// Where pointer events go, if anywhere (a virtio-input tablet).
    pointer: Mutex<Option<Arc<PointerInput>>>,
}

/// A running server; dropping it stops listening and disconnects every viewer.
pub struct VncServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl VncServer {
    /// Listens on `config.addr` and serves `fb`; key events go to `keyboard` if given.
    /// Fails with `PermissionDenied` where [`VncConfig::exposure`] refuses.
    pub fn start(
        config: VncConfig,
        fb: Arc<Framebuffer>,
        keyboard: Option<KeyboardInput>,
    ) -> io::Result<Self> {
        config
            .exposure()
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
        let listener = TcpListener::bind(config.addr)?;
        let local_addr = listener.local_addr()?;
        let sources = limits::Sources::new(config.max_per_source, config.auth_backoff);
        let shared = Arc::new(Shared {
            fb,
            keyboard: Mutex::new(keyboard),
            config,
            clients: Mutex::new(Vec::new()),
            poll_wake: Condvar::new(),
            active: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            sources,
            stop: AtomicBool::new(false),
            serial: Mutex::new(None),
            pointer: Mutex::new(None),
        });
        let s = shared.clone();
        sandbox::spawn("vnc-accept", sandbox::ThreadKind::Vnc, move || {
            accept_loop(&s, &listener)
        })?;
        let s = shared.clone();
        sandbox::spawn("vnc-poll", sandbox::ThreadKind::Vnc, move || poll_loop(&s))?;
        Ok(VncServer { shared, local_addr })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends key events to `keyboard` from now on (the VM was rebuilt).
    pub fn set_keyboard(&self, keyboard: Option<KeyboardInput>) {
        *self.shared.keyboard.lock().expect("keyboard lock poisoned") = keyboard;
    }

    /// Serves the serial console of `hub` over WebSocket at [`serial::SERIAL_PATH`] from now
    /// on (`None`: not any more, for new connections).
    pub fn set_serial(&self, hub: Option<Arc<serial::SerialHub>>) {
        *self.shared.serial.lock().expect("serial lock poisoned") = hub;
    }

    /// Sends pointer events to `pointer` from now on (`None`: drop them).
    pub fn set_pointer(&self, pointer: Option<Arc<PointerInput>>) {
        *self.shared.pointer.lock().expect("pointer lock poisoned") = pointer;
    }

    /// Viewers connected right now (past the handshake or in it).
    pub fn clients(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        let clients = self.shared.clients.lock().expect("clients lock poisoned");
        for c in clients.iter() {
            c.close();
        }
        self.shared.poll_wake.notify_all();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else {
            // EMFILE and friends: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let deadline = Instant::now() + shared.config.handshake_deadline;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let source = limits::SourceKey::of(peer.ip());
        if !shared.sources.open(source) {
            refuse(shared, stream, "too many VNC connections from your address");
            continue;
        }
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.config.max_clients {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            shared.sources.close(source);
            refuse(shared, stream, "too many VNC connections");
            continue;
        }
        let s = shared.clone();
        let spawned = sandbox::spawn("vnc-client", sandbox::ThreadKind::Vnc, move || {
            session::serve(&s, stream, source, deadline);
            s.sources.close(source);
            s.active.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            shared.sources.close(source);
        }
    }
}

/// Tells a client over a limit why it is turned away, on a short-lived thread.
fn refuse(shared: &Arc<Shared>, stream: TcpStream, reason: &'static str) {
    if shared.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
        shared.refusing.fetch_sub(1, Ordering::SeqCst);
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let s = shared.clone();
    let _ = sandbox::spawn("vnc-refuse", sandbox::ThreadKind::Vnc, move || {
        // A total deadline here too: a refused peer cannot trickle this thread alive.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut io = limits::DeadlineStream::new(&stream, deadline);
        let mut io2 = limits::DeadlineStream::new(&stream, deadline);
        let _ = proto::refuse(&mut io, &mut io2, reason);
        s.refusing.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Reads the framebuffer's dirty log while some client waits, and hands the changed lines to
/// every client.
fn poll_loop(shared: &Shared) {
    loop {
        {
            let mut clients = shared.clients.lock().expect("clients lock poisoned");
            while !shared.stop.load(Ordering::SeqCst) && !clients.iter().any(|c| c.waiting()) {
                clients = shared
                    .poll_wake
                    .wait(clients)
                    .expect("clients lock poisoned");
            }
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
        }
        std::thread::sleep(POLL_INTERVAL);
        let lines = shared.fb.take_dirty_lines();
        if lines.is_empty() {
            continue;
        }
        let clients = shared.clients.lock().expect("clients lock poisoned");
        for c in clients.iter() {
            c.mark_dirty(&lines);
        }
    }
}
