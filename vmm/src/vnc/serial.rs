//! The serial console (COM1) over WebSocket, at path [`SERIAL_PATH`] on the VNC port, for
//! browser terminals such as xterm.js: what the guest writes to COM1 (which still goes to
//! stdout, `kubectl logs`) is streamed to each connected terminal in binary messages, and what
//! a terminal sends (binary or text messages) is typed into COM1.
//!
//! Authentication: when the console has a password, the client's first message must be that
//! password (all of its bytes; the browser's WebSocket API cannot set headers), checked in
//! constant time, within the handshake deadline and under the per-source back-off of VNC
//! passwords. A wrong one gets the text message `authentication failed` and the connection
//! closes. Terminals share the VNC server's slots and per-source limits.
//!
//! Memory: each terminal has a backlog of at most [`BACKLOG`] bytes of output; a terminal that
//! falls further behind loses the oldest bytes (the guest is never slowed down by a viewer).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::devices::serial::SerialInput;

/// The WebSocket path of the serial console.
pub const SERIAL_PATH: &str = "/serial";
/// Output kept for one terminal that has not sent it yet; older bytes are dropped beyond it.
pub const BACKLOG: usize = 64 * 1024;

/// One connected terminal's pending output.
pub struct Subscriber {
    state: Mutex<Pending>,
    ready: Condvar,
}

struct Pending {
    bytes: VecDeque<u8>,
    closed: bool,
}

impl Subscriber {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.state.lock().expect("serial subscriber lock poisoned")
    }

    fn push(&self, b: &[u8]) {
        let mut p = self.lock();
        let b = &b[b.len().saturating_sub(BACKLOG)..];
        let over = (p.bytes.len() + b.len()).saturating_sub(BACKLOG);
        p.bytes.drain(..over);
        p.bytes.extend(b);
        drop(p);
        self.ready.notify_all();
    }

    /// Waits for output; `None` once closed.
    pub fn next(&self) -> Option<Vec<u8>> {
        let mut p = self.lock();
        loop {
            if p.closed {
                return None;
            }
            if !p.bytes.is_empty() {
                return Some(p.bytes.drain(..).collect());
            }
            p = self.ready.wait(p).expect("serial subscriber lock poisoned");
        }
    }

    /// Ends [`Subscriber::next`].
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Connects COM1 to WebSocket terminals: its [`SerialHub::tee`] goes where the VM's console
/// output goes, its input is the VM's [`SerialInput`] (replaced when the VM is rebuilt).
#[derive(Default)]
pub struct SerialHub {
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    input: Mutex<Option<SerialInput>>,
}

impl SerialHub {
    /// A hub with no terminals and no input yet.
    pub fn new() -> Arc<Self> {
        Arc::new(SerialHub::default())
    }

    /// A console output that writes to `inner` and copies what was written to every terminal.
    pub fn tee(self: &Arc<Self>, inner: Box<dyn Write + Send>) -> Box<dyn Write + Send> {
        Box::new(Tee {
            hub: self.clone(),
            inner,
        })
    }

    /// Terminals type into `input` from now on (the VM was built or rebuilt).
    pub fn set_input(&self, input: Option<SerialInput>) {
        *self.input.lock().expect("serial input lock poisoned") = input;
    }

    /// Where terminals type into right now (`None` between VMs).
    pub fn input(&self) -> Option<SerialInput> {
        self.input
            .lock()
            .expect("serial input lock poisoned")
            .clone()
    }

    /// A new terminal: it gets everything written from now on.
    pub fn subscribe(&self) -> Arc<Subscriber> {
        let s = Arc::new(Subscriber {
            state: Mutex::new(Pending {
                bytes: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        self.lock().push(s.clone());
        s
    }

    /// The terminal left (its [`Subscriber::next`] ends).
    pub fn unsubscribe(&self, s: &Arc<Subscriber>) {
        s.close();
        self.lock().retain(|x| !Arc::ptr_eq(x, s));
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Subscriber>>> {
        self.subscribers.lock().expect("serial hub lock poisoned")
    }

    fn publish(&self, b: &[u8]) {
        for s in self.lock().iter() {
            s.push(b);
        }
    }
}

struct Tee {
    hub: Arc<SerialHub>,
    inner: Box<dyn Write + Send>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Terminals get the bytes even when stdout fails (a closed pipe must not blind them).
        self.hub.publish(buf);
        let _ = self.inner.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Whether `answer` equals `password`, in time that depends only on their lengths.
pub(super) fn password_matches(answer: &[u8], password: &[u8]) -> bool {
    answer.len() == password.len()
        && answer
            .iter()
            .zip(password)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_bounded_and_keeps_the_newest() {
        let hub = SerialHub::new();
        let sub = hub.subscribe();
        let mut out = hub.tee(Box::new(io::sink()));
        for i in 0..100u8 {
            out.write_all(&[i; 1024]).unwrap();
        }
        let got = sub.next().unwrap();
        assert_eq!(got.len(), BACKLOG);
        assert_eq!(got[BACKLOG - 1], 99);
        assert_eq!(got[0], 100 - (BACKLOG / 1024) as u8);
        hub.unsubscribe(&sub);
        assert!(sub.next().is_none());
        out.write_all(b"nobody listens").unwrap();
    }

    #[test]
    fn passwords() {
        assert!(password_matches(b"secret", b"secret"));
        assert!(!password_matches(b"secreT", b"secret"));
        assert!(!password_matches(b"secret2", b"secret"));
        assert!(!password_matches(b"", b"secret"));
    }
}
