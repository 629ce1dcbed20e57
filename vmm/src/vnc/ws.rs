//! WebSocket on the VNC port, for browser viewers (noVNC) that cannot open raw TCP.
//!
//! The same listener serves both: an RFB server speaks first ("RFB 003.008\n"), so a peer that
//! sends `GET ` within [`DETECT_WINDOW`] of connecting is an HTTP client; anything else is
//! served plain RFB after that window. The HTTP request head is parsed here (httparse), the
//! WebSocket framing after the upgrade is tungstenite's. Inside the WebSocket the RFB session
//! is the same as over TCP, VNC authentication included (as noVNC does it), under the same
//! handshake deadline, per-source limits and back-off: those are counted per TCP connection
//! before any byte is read.
//!
//! Memory per WebSocket connection is bounded by [`ws_config`]: a 4 KiB read buffer, incoming
//! frames and messages of at most [`MAX_MESSAGE`] bytes (a bigger one ends the connection),
//! outgoing updates cut into messages of at most [`CHUNK`] bytes with at most two queued.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use super::limits::DeadlineStream;

/// How long a new connection has to send `GET ` before it is taken for an RFB client (which
/// waits for the server to speak first). Plain RFB viewers see the greeting this much later.
pub const DETECT_WINDOW: Duration = Duration::from_millis(250);
/// Longest HTTP request head accepted.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// Largest incoming WebSocket frame or message (RFB client messages are small; a clipboard
/// paste bigger than this ends the connection).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Largest outgoing WebSocket message: framebuffer updates are cut into pieces this big.
pub const CHUNK: usize = 64 * 1024;
/// WebSocket paths that lead to the VNC console (noVNC's default path is `websockify`).
pub const VNC_PATHS: [&str; 2] = ["/", "/websockify"];

/// The small page any other HTTP request gets, with status 404.
const NOT_FOUND: &str = "berth VNC console: this port speaks RFB (VNC) and, for browser \
viewers such as noVNC, RFB over WebSocket at path /websockify (VNC password \
authentication inside); the serial console, where served, is a WebSocket at /serial. \
There is nothing else here.\n";

/// The tungstenite limits of one connection.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * CHUNK + 64)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Whether the peer on `stream` is an HTTP client: it sent `GET ` within [`DETECT_WINDOW`]
/// (and before `deadline`). Nothing is consumed.
pub(super) fn is_http(stream: &TcpStream, deadline: Instant) -> io::Result<bool> {
    let end = deadline.min(Instant::now() + DETECT_WINDOW);
    let mut buf = [0u8; 4];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.peek(&mut buf) {
            // The peer closed its sending side (`nc </dev/null`): not HTTP; it still gets the
            // RFB greeting, as before the WebSocket existed.
            Ok(0) => return Ok(false),
            Ok(n) if !b"GET ".starts_with(&buf[..n]) => return Ok(false),
            Ok(4) => return Ok(true),
            // A prefix of "GET ": peek returns at once while those bytes wait, so pause.
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a WebSocket client asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The VNC console (RFB inside the WebSocket).
    Vnc,
    /// The serial console ([`super::serial`]).
    Serial,
}

/// A parsed upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// Where to.
    pub endpoint: Endpoint,
    /// The Sec-WebSocket-Accept value to answer with.
    pub accept: String,
    /// The subprotocol chosen (`binary` when offered, as noVNC does).
    pub protocol: Option<&'static str>,
}

/// Why an HTTP request is not served, with the status line to answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed or not a WebSocket handshake: 400.
    BadRequest(&'static str),
    /// Another path: 404 with a small page.
    NotFound,
}

/// Parses a request head (the bytes up to and including the empty line).
pub fn parse_request(head: &[u8]) -> Result<Upgrade, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(Refusal::BadRequest("incomplete or pipelined request")),
        Err(_) => return Err(Refusal::BadRequest("malformed request")),
    }
    if req.method != Some("GET") {
        return Err(Refusal::BadRequest("only GET is served"));
    }
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Err(Refusal::NotFound);
    }
    let endpoint = if VNC_PATHS.contains(&path) {
        Endpoint::Vnc
    } else if path == super::serial::SERIAL_PATH {
        Endpoint::Serial
    } else {
        return Err(Refusal::NotFound);
    };
    if !has_token("connection", "upgrade") || header("sec-websocket-version") != Some("13") {
        return Err(Refusal::BadRequest("not a WebSocket version 13 handshake"));
    }
    let key = header("sec-websocket-key")
        .ok_or(Refusal::BadRequest("no Sec-WebSocket-Key"))?
        .trim();
    Ok(Upgrade {
        endpoint,
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        protocol: has_token("sec-websocket-protocol", "binary").then_some("binary"),
    })
}

/// Reads an HTTP request head from `stream` by `deadline`, at most [`MAX_REQUEST_HEAD`] bytes.
fn read_head(stream: &TcpStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut r = DeadlineStream::new(stream, deadline);
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request too long",
            ));
        }
        // Byte-sized reads once near the end would be slow; a WebSocket client sends nothing
        // after its head until answered, so reading ahead cannot swallow frames.
        let want = (MAX_REQUEST_HEAD - head.len()).min(buf.len());
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

fn respond(stream: &TcpStream, deadline: Instant, status: &str, body: &str) {
    let mut w = DeadlineStream::new(stream, deadline);
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Answers the HTTP request on `stream` (its first bytes are `GET `): a WebSocket upgrade to a
/// known endpoint becomes a [`WsConn`]; anything else gets its error response and `None`.
/// `allow_ws` false (no password and not explicitly insecure) refuses every upgrade: without
/// a password any web page the user opens could reach a loopback console from the browser.
/// `serial`: whether the serial endpoint is served (otherwise it is a 404 like any other path).
pub(super) fn accept(
    stream: TcpStream,
    deadline: Instant,
    allow_ws: bool,
    serial: bool,
) -> Option<(Endpoint, WsConn)> {
    let head = match read_head(&stream, deadline) {
        Ok(h) => h,
        Err(_) => {
            respond(&stream, deadline, "400 Bad Request", "bad request\n");
            return None;
        }
    };
    let up = match parse_request(&head) {
        Ok(up) if up.endpoint == Endpoint::Serial && !serial => {
            respond(&stream, deadline, "404 Not Found", NOT_FOUND);
            return None;
        }
        Ok(up) => up,
        Err(Refusal::NotFound) => {
            respond(&stream, deadline, "404 Not Found", NOT_FOUND);
            return None;
        }
        Err(Refusal::BadRequest(why)) => {
            respond(&stream, deadline, "400 Bad Request", &format!("{why}\n"));
            return None;
        }
    };
    if !allow_ws {
        respond(
            &stream,
            deadline,
            "403 Forbidden",
            "the WebSocket console needs a VNC password (VNC_PASSWORD)\n",
        );
        return None;
    }
    let protocol = up
        .protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let mut w = DeadlineStream::new(&stream, deadline);
    write!(
        w,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        up.accept
    )
    .ok()?;
    WsConn::new(stream).ok().map(|c| (up.endpoint, c))
}

/// A WebSocket connection shared by a reader and a writer thread: the socket is non-blocking
/// and each side holds the lock only for a non-blocking tungstenite call, waiting in poll(2)
/// without it.
pub(super) struct WsConn {
    ws: Arc<Mutex<WebSocket<TcpStream>>>,
    fd: TcpStream,
}

impl WsConn {
    fn new(stream: TcpStream) -> io::Result<Self> {
        let fd = stream.try_clone()?;
        set_nonblocking(&stream)?;
        Ok(WsConn {
            ws: Arc::new(Mutex::new(WebSocket::from_raw_socket(
                stream,
                Role::Server,
                Some(ws_config()),
            ))),
            fd,
        })
    }

    /// A handle on the TCP socket (to shut it down from another thread).
    pub(super) fn socket(&self) -> io::Result<TcpStream> {
        self.fd.try_clone()
    }

    /// The reading half, giving the bytes of binary messages; reads fail after `deadline`.
    pub(super) fn reader(&self, deadline: Option<Instant>) -> io::Result<WsReader> {
        Ok(WsReader {
            ws: self.ws.clone(),
            fd: self.fd.try_clone()?,
            buf: Vec::new(),
            pos: 0,
            deadline,
        })
    }

    /// The writing half, sending each write as binary messages; a write that cannot finish
    /// within `timeout` (or by `deadline`) fails.
    pub(super) fn writer(
        &self,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> io::Result<WsWriter> {
        Ok(WsWriter {
            ws: self.ws.clone(),
            fd: self.fd.try_clone()?,
            timeout,
            deadline,
        })
    }
}

/// O_NONBLOCK with fcntl: std's `set_nonblocking` uses ioctl(FIONBIO), which the VNC threads'
/// seccomp filter does not allow (their only ioctls are KVM's).
fn set_nonblocking(s: &TcpStream) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor `s` owns, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(s.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(s.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn lock(ws: &Mutex<WebSocket<TcpStream>>) -> MutexGuard<'_, WebSocket<TcpStream>> {
    ws.lock().expect("websocket lock poisoned")
}

/// Waits until `fd` is ready for `events`, or fails with TimedOut at `until`.
fn wait(fd: &TcpStream, events: libc::c_short, until: Option<Instant>) -> io::Result<()> {
    loop {
        let timeout = match until {
            None => -1,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, timeout) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::ConnectionAborted.into()
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// See [`WsConn::reader`].
pub(super) struct WsReader {
    ws: Arc<Mutex<WebSocket<TcpStream>>>,
    fd: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    deadline: Option<Instant>,
}

impl WsReader {
    /// Reads from now on fail after `deadline` (`None`: wait forever).
    pub(super) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

impl WsReader {
    /// The next data message's payload, binary or text (for the serial console); `None` when
    /// the peer closed.
    pub(super) fn read_message(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let msg = lock(&self.ws).read();
            match msg {
                Ok(Message::Binary(b)) => return Ok(Some(b.to_vec())),
                Ok(Message::Text(t)) => return Ok(Some(t.as_bytes().to_vec())),
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {
                    return Ok(None)
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(&self.fd, libc::POLLIN, self.deadline)?
                }
                Err(e) => return Err(ws_error(e)),
            }
        }
    }
}

impl Read for WsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let msg = lock(&self.ws).read();
            match msg {
                Ok(Message::Binary(b)) => {
                    self.buf = b.to_vec();
                    self.pos = 0;
                }
                Ok(Message::Text(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message (RFB goes in binary messages)",
                    ))
                }
                Ok(Message::Close(_)) => return Ok(0),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(&self.fd, libc::POLLIN, self.deadline)?
                }
                Err(tungstenite::Error::ConnectionClosed) => return Ok(0),
                Err(e) => return Err(ws_error(e)),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// See [`WsConn::writer`].
pub(super) struct WsWriter {
    ws: Arc<Mutex<WebSocket<TcpStream>>>,
    fd: TcpStream,
    timeout: Duration,
    deadline: Option<Instant>,
}

impl WsWriter {
    /// Writes from now on fail after `deadline` (`None`: only the per-write timeout).
    pub(super) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Sends one text message.
    pub(super) fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(Message::text(text))
    }

    fn send(&mut self, msg: Message) -> io::Result<()> {
        let until = Some(match self.deadline {
            Some(d) => d.min(Instant::now() + self.timeout),
            None => Instant::now() + self.timeout,
        });
        let mut msg = Some(msg);
        loop {
            let r = {
                let mut ws = lock(&self.ws);
                match msg.take() {
                    Some(m) => ws.write(m).and_then(|()| ws.flush()),
                    None => ws.flush(),
                }
            };
            match r {
                Ok(()) => return Ok(()),
                // Queued but not all out yet (or the queue is full: keep the message).
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(tungstenite::Error::WriteBufferFull(m)) => msg = Some(*m),
                Err(e) => return Err(ws_error(e)),
            }
            wait(&self.fd, libc::POLLOUT, until)?;
        }
    }
}

impl Write for WsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK);
        self.send(Message::binary(buf[..n].to_vec()))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An in-memory peer for the fuzz harness: reads `input`, discards what is written.
struct Replay<'a> {
    input: &'a [u8],
}

impl Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The WebSocket input path on arbitrary bytes, as a hostile browser-side peer would send
/// them: an HTTP request head (up to the first empty line) parsed as the server parses it,
/// then WebSocket frames through tungstenite with the server's limits, the binary payloads
/// concatenated and run as an RFB session ([`super::fuzz_session`]). Must never panic.
#[doc(hidden)]
pub fn fuzz_ws_session(input: &[u8], password: Option<&[u8]>) {
    let split = input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(input.len(), |i| i + 4);
    let (head, frames) = input.split_at(split.min(MAX_REQUEST_HEAD).min(input.len()));
    let _ = parse_request(head);
    let _ = super::fuzz_session(&payloads(frames), password);
}

/// The concatenated binary payloads of the WebSocket frames in `frames` (client to server),
/// up to the first error.
fn payloads(frames: &[u8]) -> Vec<u8> {
    let mut ws =
        WebSocket::from_raw_socket(Replay { input: frames }, Role::Server, Some(ws_config()));
    let mut rfb = Vec::new();
    // The session's bytes stay bounded as the server's would: it reads as it goes.
    while rfb.len() < 4 * MAX_MESSAGE {
        match ws.read() {
            Ok(Message::Binary(b)) => rfb.extend_from_slice(&b),
            Ok(Message::Text(_)) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    rfb
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET /websockify HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n";

    #[test]
    fn fuzz_seed_reaches_the_rfb_session() {
        let seed = crate::fuzzing::seeds::vnc_ws_session();
        let at = seed.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(parse_request(&seed[..at]).is_ok());
        let rfb = payloads(&seed[at..]);
        assert!(rfb.starts_with(b"RFB 003.008\n\x01\x01"), "{rfb:?}");
        assert_eq!(rfb.len(), 12 + 2 + 20 + 16 + 10 + 16 + 6 + 10);
    }

    #[test]
    fn upgrade_requests() {
        let up = parse_request(REQ.as_bytes()).unwrap();
        // RFC 6455's example key and answer.
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.protocol, Some("binary"));
        assert_eq!(up.endpoint, Endpoint::Vnc);
        let other = REQ.replace("/websockify", "/etc/passwd");
        assert_eq!(parse_request(other.as_bytes()), Err(Refusal::NotFound));
        let plain = "GET /websockify HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(plain.as_bytes()), Err(Refusal::NotFound));
        let old = REQ.replace("Version: 13", "Version: 8");
        assert!(matches!(
            parse_request(old.as_bytes()),
            Err(Refusal::BadRequest(_))
        ));
        let pipelined = format!("{REQ}GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(
            parse_request(pipelined.as_bytes()),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse_request(b"\x16\x03\x01garbage\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
    }
}
