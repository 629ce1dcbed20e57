//! One viewer: the handshake, then a reader (client messages) and a writer (updates).

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::encode::{
    Converter, Encoder, PixelFormat, Rect, ENCODING_RAW, ENCODING_ZLIB, ENCODING_ZRLE,
};
use super::limits::{DeadlineStream, SourceKey};
use super::proto::{self, ClientMessage, ServerInit};
use super::serial::{self, SerialHub};
use super::{ws, Shared};
use crate::devices::i8042::keymap::{self, LEFT_SHIFT};
use crate::devices::i8042::KeyboardInput;
use crate::framebuffer::Framebuffer;
use crate::virtio::input::PointerInput;

/// Encodings the server produces, best first.
const PREFERENCE: [i32; 3] = [ENCODING_ZRLE, ENCODING_ZLIB, ENCODING_RAW];
/// X11 keysyms of the Shift keys.
const SHIFT_KEYSYMS: [u32; 2] = [0xffe1, 0xffe2];

#[derive(Clone, Copy, Debug)]
struct Request {
    incremental: bool,
    rect: Rect,
}

/// What the reader tells the writer.
struct State {
    format: PixelFormat,
    encoding: i32,
    request: Option<Request>,
    /// Lines changed since they were last sent.
    dirty: Vec<bool>,
    closed: bool,
}

/// A connected viewer, as the server's other threads see it.
pub(super) struct Client {
    state: Mutex<State>,
    changed: Condvar,
    stream: Option<TcpStream>,
}

impl Client {
    fn new(height: u32, stream: Option<TcpStream>) -> Self {
        Client {
            state: Mutex::new(State {
                format: PixelFormat::XRGB8888,
                encoding: ENCODING_RAW,
                request: None,
                // A new viewer has seen nothing: its first incremental request gets it all.
                dirty: vec![true; height as usize],
                closed: false,
            }),
            changed: Condvar::new(),
            stream,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("client lock poisoned")
    }

    /// Whether the client waits for changes (so the dirty log must be polled).
    pub(super) fn waiting(&self) -> bool {
        let s = self.lock();
        !s.closed && s.request.is_some_and(|r| r.incremental)
    }

    /// Adds changed lines.
    pub(super) fn mark_dirty(&self, lines: &[(u32, u32)]) {
        let mut s = self.lock();
        for &(a, b) in lines {
            for d in s.dirty.iter_mut().take(b as usize).skip(a as usize) {
                *d = true;
            }
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Ends the session: both threads stop.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
        if let Some(s) = &self.stream {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Waits for an update to send: the rectangles, and the format and encoding to use. Paced
    /// by `pacing`: a viewer asking in a loop gets updates no faster than it allows.
    fn next_update(&self, pacing: &mut Pacing) -> Option<(Vec<Rect>, PixelFormat, i32)> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(req) = s.request {
                let now = Instant::now();
                if let Some(not_before) = pacing.not_before(req.incremental).filter(|t| *t > now) {
                    // The request may be replaced meanwhile; look again when allowed.
                    s = self
                        .changed
                        .wait_timeout(s, not_before - now)
                        .expect("client lock poisoned")
                        .0;
                    continue;
                }
                if let Some(rects) = take_rects(&mut s.dirty, req) {
                    s.request = None;
                    pacing.sent(req.incremental, now);
                    return Some((rects, s.format, s.encoding));
                }
            }
            s = self.changed.wait(s).expect("client lock poisoned");
        }
    }
}

/// When a viewer may have its next update: at most one per `interval`, and a full
/// (non-incremental) one at most once per `full_interval`, so a viewer that asks for the whole
/// screen in a loop cannot keep a core busy encoding it.
struct Pacing {
    interval: Duration,
    full_interval: Duration,
    last: Option<Instant>,
    last_full: Option<Instant>,
}

impl Pacing {
    /// The earliest time the next update may go out; `None`: at once.
    fn not_before(&self, incremental: bool) -> Option<Instant> {
        let after = |t: Option<Instant>, d: Duration| t.map(|t| t + d);
        let any = after(self.last, self.interval);
        let full = (!incremental)
            .then(|| after(self.last_full, self.full_interval))
            .flatten();
        any.max(full)
    }

    fn sent(&mut self, incremental: bool, now: Instant) {
        self.last = Some(now);
        if !incremental {
            self.last_full = Some(now);
        }
    }
}

/// The rectangles answering `req`, clearing the lines sent (when the request spans the
/// whole width); `None` if an incremental request has nothing to send yet.
fn take_rects(dirty: &mut [bool], req: Request) -> Option<Vec<Rect>> {
    let r = req.rect;
    let whole_width = r.x == 0;
    let lines = &mut dirty[r.y as usize..(r.y + r.h) as usize];
    if !req.incremental {
        if whole_width {
            lines.fill(false);
        }
        return Some(if r.w > 0 && r.h > 0 { vec![r] } else { vec![] });
    }
    let mut rects = Vec::new();
    let mut y = 0;
    while y < lines.len() {
        if !lines[y] {
            y += 1;
            continue;
        }
        let start = y;
        while y < lines.len() && lines[y] {
            if whole_width {
                lines[y] = false;
            }
            y += 1;
        }
        rects.push(Rect {
            x: r.x,
            y: r.y + start as u32,
            w: r.w,
            h: (y - start) as u32,
        });
    }
    (!rects.is_empty() && r.w > 0).then_some(rects)
}

/// Clips a requested rectangle to the screen.
fn clip(fb: &Framebuffer, x: u16, y: u16, w: u16, h: u16) -> Rect {
    let c = fb.config();
    let x = u32::from(x).min(c.width);
    let y = u32::from(y).min(c.height);
    Rect {
        x,
        y,
        w: u32::from(w).min(c.width - x),
        h: u32::from(h).min(c.height - y),
    }
}

/// Per-connection keyboard state: whether the viewer holds Shift.
#[derive(Default)]
struct Keys {
    shift: bool,
}

impl Keys {
    /// Types `keysym`, pressing Shift around it when the character needs Shift and the
    /// viewer did not hold it (clients such as vncdotool send 'A' without Shift).
    fn event(&mut self, kb: &KeyboardInput, keysym: u32, down: bool) {
        if SHIFT_KEYSYMS.contains(&keysym) {
            self.shift = down;
        }
        let Some((key, needs_shift)) = keymap::key_for_keysym(keysym) else {
            return;
        };
        if down && needs_shift == Some(true) && !self.shift {
            kb.key(LEFT_SHIFT, true);
            kb.key(key, true);
            kb.key(LEFT_SHIFT, false);
        } else {
            kb.key(key, down);
        }
    }
}

/// Applies one message to the client's state.
fn apply(
    msg: ClientMessage,
    client: &Client,
    fb: &Framebuffer,
    keyboard: Option<&KeyboardInput>,
    pointer: Option<&PointerInput>,
    keys: &mut Keys,
) {
    match msg {
        ClientMessage::SetPixelFormat(f) => client.lock().format = f,
        ClientMessage::SetEncodings(list) => {
            let best = list
                .iter()
                .find(|e| PREFERENCE.contains(e))
                .copied()
                .unwrap_or(ENCODING_RAW);
            client.lock().encoding = best;
        }
        ClientMessage::UpdateRequest {
            incremental,
            x,
            y,
            w,
            h,
        } => {
            client.lock().request = Some(Request {
                incremental,
                rect: clip(fb, x, y, w, h),
            });
            client.changed.notify_all();
        }
        ClientMessage::Key { down, keysym } => {
            if let Some(kb) = keyboard {
                keys.event(kb, keysym, down);
            }
        }
        ClientMessage::Pointer { mask, x, y } => {
            if let Some(p) = pointer {
                p.pointer(x, y, mask);
            }
        }
        ClientMessage::CutText => {}
    }
}

/// The per-source back-off around one client's password check.
struct Gate<'a> {
    shared: &'a Shared,
    source: SourceKey,
    deadline: Instant,
}

impl proto::AuthGate for Gate<'_> {
    fn wait_turn(&mut self) -> io::Result<()> {
        self.shared.sources.wait_turn(self.source, self.deadline)
    }

    fn result(&mut self, ok: bool) {
        if ok {
            self.shared.sources.succeeded(self.source);
        } else {
            self.shared.sources.failed(self.source);
        }
    }
}

/// Serves one connection from `source` until it leaves or misbehaves: plain RFB, or an HTTP
/// request (a WebSocket viewer, see [`super::ws`]); the handshake must be over by `deadline`.
pub(super) fn serve(shared: &Arc<Shared>, stream: TcpStream, source: SourceKey, deadline: Instant) {
    match ws::is_http(&stream, deadline) {
        Ok(false) => serve_tcp(shared, stream, source, deadline),
        Ok(true) => {
            let allow = shared.config.password.is_some() || shared.config.insecure;
            let hub = shared.serial.lock().expect("serial lock poisoned").clone();
            match ws::accept(stream, deadline, allow, hub.is_some()) {
                Some((ws::Endpoint::Vnc, conn)) => serve_ws(shared, conn, source, deadline),
                Some((ws::Endpoint::Serial, conn)) => {
                    if let Some(hub) = hub {
                        serve_serial(shared, &hub, conn, source, deadline);
                    }
                }
                None => {}
            }
        }
        Err(_) => {}
    }
}

fn server_init(shared: &Shared) -> ServerInit<'_> {
    let fb = &shared.fb;
    ServerInit {
        width: fb.config().width as u16,
        height: fb.config().height as u16,
        name: &shared.config.name,
    }
}

/// One plain RFB viewer.
fn serve_tcp(shared: &Arc<Shared>, stream: TcpStream, source: SourceKey, deadline: Instant) {
    let password = shared.config.password.as_deref();
    let mut r = DeadlineStream::new(&stream, deadline);
    let mut w = DeadlineStream::new(&stream, deadline);
    let mut gate = Gate {
        shared,
        source,
        deadline,
    };
    if proto::handshake_gated(&mut r, &mut w, password, &server_init(shared), &mut gate).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(super::WRITE_TIMEOUT));
    let (Ok(writer), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    run(shared, io::BufReader::new(stream), writer, closer, false);
}

/// One viewer over WebSocket: the same RFB session inside binary messages.
fn serve_ws(shared: &Arc<Shared>, conn: ws::WsConn, source: SourceKey, deadline: Instant) {
    let password = shared.config.password.as_deref();
    let (Ok(mut r), Ok(mut w), Ok(closer)) = (
        conn.reader(Some(deadline)),
        conn.writer(super::WRITE_TIMEOUT, Some(deadline)),
        conn.socket(),
    ) else {
        return;
    };
    let mut gate = Gate {
        shared,
        source,
        deadline,
    };
    if proto::handshake_gated(&mut r, &mut w, password, &server_init(shared), &mut gate).is_err() {
        let _ = closer.shutdown(Shutdown::Both);
        return;
    }
    r.set_deadline(None);
    w.set_deadline(None);
    run(shared, r, w, closer, true);
}

/// One serial terminal: the password as its first message (when there is one), then COM1's
/// output out and its messages in.
fn serve_serial(
    shared: &Arc<Shared>,
    hub: &Arc<SerialHub>,
    conn: ws::WsConn,
    source: SourceKey,
    deadline: Instant,
) {
    let (Ok(mut r), Ok(mut w), Ok(closer)) = (
        conn.reader(Some(deadline)),
        conn.writer(super::WRITE_TIMEOUT, Some(deadline)),
        conn.socket(),
    ) else {
        return;
    };
    if let Some(password) = shared.config.password.as_deref() {
        let mut gate = Gate {
            shared,
            source,
            deadline,
        };
        let Ok(Some(answer)) = r.read_message() else {
            let _ = closer.shutdown(Shutdown::Both);
            return;
        };
        use proto::AuthGate;
        if gate.wait_turn().is_err() {
            let _ = closer.shutdown(Shutdown::Both);
            return;
        }
        let ok = serial::password_matches(&answer, password);
        gate.result(ok);
        if !ok {
            let _ = w.send_text("authentication failed");
            let _ = closer.shutdown(Shutdown::Both);
            return;
        }
    }
    r.set_deadline(None);
    w.set_deadline(None);
    let sub = hub.subscribe();
    let s2 = sub.clone();
    let closer2 = closer.try_clone();
    let writer = sandbox::spawn("vnc-writer", sandbox::ThreadKind::Vnc, move || {
        while let Some(bytes) = s2.next() {
            if w.write_all(&bytes).is_err() {
                break;
            }
        }
        if let Ok(c) = closer2 {
            let _ = c.shutdown(Shutdown::Both);
        }
    });
    if writer.is_ok() {
        while let Ok(Some(bytes)) = r.read_message() {
            if let Some(input) = hub.input() {
                // Blocks while the guest does not drain its FIFO: back-pressure on this
                // terminal only.
                if !input.send(&bytes) {
                    break;
                }
            }
        }
    }
    hub.unsubscribe(&sub);
    let _ = closer.shutdown(Shutdown::Both);
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

/// The session after the handshake: this thread reads the viewer's messages, a writer thread
/// sends updates; `closer` shuts the connection down from either side. `padding_ones`: see
/// [`Converter::padding_ones`] (browser viewers).
fn run(
    shared: &Arc<Shared>,
    mut reader: impl io::Read,
    mut writer: impl Write + Send + 'static,
    closer: TcpStream,
    padding_ones: bool,
) {
    let fb = &shared.fb;
    let client = Arc::new(Client::new(fb.config().height, Some(closer)));
    shared
        .clients
        .lock()
        .expect("clients lock poisoned")
        .push(client.clone());

    let (c, f) = (client.clone(), fb.clone());
    let pacing = Pacing {
        interval: shared.config.update_interval,
        full_interval: shared.config.full_update_interval,
        last: None,
        last_full: None,
    };
    let writer = sandbox::spawn("vnc-writer", sandbox::ThreadKind::Vnc, move || {
        write_loop(&c, &f, &mut writer, pacing, padding_ones)
    });
    if writer.is_ok() {
        let mut keys = Keys::default();
        while let Ok(msg) = proto::read_message(&mut reader) {
            let incremental = matches!(
                msg,
                ClientMessage::UpdateRequest {
                    incremental: true,
                    ..
                }
            );
            let kb = shared
                .keyboard
                .lock()
                .expect("keyboard lock poisoned")
                .clone();
            let pointer = shared
                .pointer
                .lock()
                .expect("pointer lock poisoned")
                .clone();
            apply(msg, &client, fb, kb.as_ref(), pointer.as_deref(), &mut keys);
            if incremental {
                // Under the clients lock, so the poller cannot miss the wake-up.
                let _g = shared.clients.lock().expect("clients lock poisoned");
                shared.poll_wake.notify_all();
            }
        }
    }
    client.close();
    if let Ok(w) = writer {
        let _ = w.join();
    }
    shared
        .clients
        .lock()
        .expect("clients lock poisoned")
        .retain(|c| !Arc::ptr_eq(c, &client));
}

fn write_loop(
    client: &Client,
    fb: &Framebuffer,
    out: &mut impl Write,
    mut pacing: Pacing,
    padding_ones: bool,
) {
    let converter = |f| {
        let c = Converter::new(f);
        if padding_ones {
            c.padding_ones()
        } else {
            c
        }
    };
    let mut encoder = Encoder::default();
    let mut conv = converter(PixelFormat::XRGB8888);
    let mut buf = Vec::new();
    while let Some((rects, format, encoding)) = client.next_update(&mut pacing) {
        if conv.format() != format {
            conv = converter(format);
        }
        buf.clear();
        let sent = encoder
            .update(fb, &conv, encoding, &rects, &mut buf)
            .and_then(|()| out.write_all(&buf))
            .and_then(|()| out.flush());
        if sent.is_err() {
            client.close();
            return;
        }
    }
}

/// Runs a whole session over `input` (the bytes a client would send) against a small
/// framebuffer and keyboard, answering update requests as they come. For fuzzing and
/// randomized tests: it must never panic, whatever the input.
pub fn fuzz_session(input: &[u8], password: Option<&[u8]>) -> io::Result<()> {
    use crate::control::VmControl;
    use crate::devices::i8042::I8042;
    use crate::framebuffer::FramebufferConfig;

    thread_local! {
        static FB: Framebuffer = Framebuffer::new(FramebufferConfig { width: 64, height: 40 })
            .expect("framebuffer");
    }
    let kb = KeyboardInput::new(Arc::new(Mutex::new(I8042::new(Arc::new(
        VmControl::default(),
    )))));
    let pointer = PointerInput::new(64, 40)?;
    FB.with(|fb| {
        let mut r = input;
        let mut out = Vec::new();
        let init = ServerInit {
            width: 64,
            height: 40,
            name: "fuzz",
        };
        proto::handshake(&mut r, &mut out, password, &init)?;
        let client = Client::new(fb.config().height, None);
        let (mut keys, mut encoder) = (Keys::default(), Encoder::default());
        loop {
            let msg = proto::read_message(&mut r)?;
            apply(msg, &client, fb, Some(&kb), Some(&pointer), &mut keys);
            let update = {
                let mut s = client.lock();
                let ready = s.request.and_then(|req| take_rects(&mut s.dirty, req));
                ready.map(|rects| {
                    s.request = None;
                    (rects, s.format, s.encoding)
                })
            };
            if let Some((rects, format, encoding)) = update {
                out.clear();
                encoder.update(fb, &Converter::new(format), encoding, &rects, &mut out)?;
            }
        }
    })
}
