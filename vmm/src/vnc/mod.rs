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
pub mod proto;
mod session;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::devices::i8042::KeyboardInput;
use crate::framebuffer::Framebuffer;

#[doc(hidden)]
pub use session::fuzz_session;

/// Default most simultaneous viewers.
pub const DEFAULT_MAX_CLIENTS: usize = 8;
/// How often the dirty log is read while a client waits for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(33);
/// Time a client gets to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
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
}

impl VncConfig {
    /// Listen on `addr` without a password.
    pub fn new(addr: SocketAddr) -> Self {
        VncConfig {
            addr,
            password: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            name: "berth".into(),
        }
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
    stop: AtomicBool,
}

/// A running server; dropping it stops listening and disconnects every viewer.
pub struct VncServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl VncServer {
    /// Listens on `config.addr` and serves `fb`; key events go to `keyboard` if given.
    pub fn start(
        config: VncConfig,
        fb: Arc<Framebuffer>,
        keyboard: Option<KeyboardInput>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(config.addr)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            fb,
            keyboard: Mutex::new(keyboard),
            config,
            clients: Mutex::new(Vec::new()),
            poll_wake: Condvar::new(),
            active: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
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
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.config.max_clients {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            refuse(shared, stream);
            continue;
        }
        let s = shared.clone();
        let spawned = sandbox::spawn("vnc-client", sandbox::ThreadKind::Vnc, move || {
            session::serve(&s, stream);
            s.active.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            shared.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Tells a client over the limit why it is turned away, on a short-lived thread.
fn refuse(shared: &Arc<Shared>, stream: TcpStream) {
    if shared.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
        shared.refusing.fetch_sub(1, Ordering::SeqCst);
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let s = shared.clone();
    let _ = sandbox::spawn("vnc-refuse", sandbox::ThreadKind::Vnc, move || {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = proto::refuse(&mut &stream, &mut &stream, "too many VNC connections");
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
