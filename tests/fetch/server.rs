//! A small threaded HTTP/1.1 test server for one image, with the misbehaviours the fetch must
//! survive: no Range support, a connection dropped or stalled mid-body, a slow trickle,
//! redirects, 404 and 503. It serves HTTPS too, with a certificate from a throwaway CA.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// How the server behaves; changeable while it runs.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Honour `Range` (with `If-Range` against the ETag).
    pub ranges: bool,
    /// The first this-many GETs of /img end after `cut_at` body bytes...
    pub cut_first: usize,
    /// ...after this many body bytes...
    pub cut_at: usize,
    /// ...by stalling (sleeping this long) instead of closing the connection.
    pub stall: Option<Duration>,
    /// Send the body in chunks of this many bytes with a pause after each.
    pub trickle: Option<(usize, Duration)>,
    /// Where /away redirects to (any URL, for example another server's).
    pub away: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            ranges: true,
            cut_first: 0,
            cut_at: 0,
            stall: None,
            trickle: None,
            away: String::new(),
        }
    }
}

impl Opts {
    /// A slow server (8 KiB every 10 ms), so a test can act while a download is under way.
    pub fn trickling() -> Self {
        Opts {
            trickle: Some((8 << 10, Duration::from_millis(10))),
            ..Opts::default()
        }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
}

struct State {
    payload: Vec<u8>,
    opts: Mutex<Opts>,
    seen: Mutex<Vec<Seen>>,
    image_gets: AtomicUsize,
    stop: AtomicBool,
}

/// A running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
    https: bool,
}

const ETAG: &str = "\"berth-test-v1\"";

/// A throwaway CA named `ca_name`: its certificate (PEM) and the rustls configuration of a
/// server for localhost and 127.0.0.1 with a certificate it signed.
pub fn tls_setup(ca_name: &str) -> (String, Arc<rustls::ServerConfig>) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der_key)
        .unwrap();
    (ca.pem(), Arc::new(config))
}

impl Server {
    /// Serves `payload` at /img over plain HTTP.
    pub fn start(payload: Vec<u8>, opts: Opts) -> Self {
        Self::start_with(payload, opts, None)
    }

    /// Serves `payload` at /img, over TLS when `tls` is given.
    pub fn start_with(
        payload: Vec<u8>,
        opts: Opts,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            payload,
            opts: Mutex::new(opts),
            seen: Mutex::new(Vec::new()),
            image_gets: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        let https = tls.is_some();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                let (st, tls) = (st.clone(), tls.clone());
                thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
                    match tls {
                        Some(cfg) => {
                            let conn = rustls::ServerConnection::new(cfg).unwrap();
                            let mut s = rustls::StreamOwned::new(conn, tcp);
                            handle(&st, &mut s, addr);
                            s.conn.send_close_notify();
                            let _ = s.flush();
                        }
                        None => {
                            let mut s = tcp;
                            handle(&st, &mut s, addr);
                            let _ = s.shutdown(Shutdown::Both);
                        }
                    }
                });
            }
        });
        Server { addr, state, https }
    }

    /// The URL of `path` on this server, by IP address.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Changes the behaviour for the following requests.
    pub fn set(&self, f: impl FnOnce(&mut Opts)) {
        f(&mut self.state.opts.lock().unwrap());
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// GETs of /img so far.
    pub fn image_gets(&self) -> usize {
        self.state.image_gets.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn handle<S: Read + Write>(st: &State, s: &mut S, addr: SocketAddr) {
    let Some(seen) = read_request(s) else { return };
    st.seen.lock().unwrap().push(seen.clone());
    let opts = st.opts.lock().unwrap().clone();
    let redirect = |s: &mut S, code: &str, to: &str| {
        let head = format!(
            "HTTP/1.1 {code}\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes());
    };
    match seen.path.as_str() {
        "/img" => {}
        "/redirect" => return redirect(s, "302 Found", "/img"),
        "/redirect-abs" => return redirect(s, "301 Moved", &format!("http://{addr}/redirect")),
        "/loop" => return redirect(s, "302 Found", "/loop"),
        "/away" => return redirect(s, "302 Found", &opts.away),
        "/busy" => return status(s, "503 Service Unavailable"),
        _ => return status(s, "404 Not Found"),
    }
    let n = st.image_gets.fetch_add(1, Ordering::SeqCst);
    let len = st.payload.len();
    let start = match (&seen.range, opts.ranges) {
        (Some(r), true) if seen.if_range.as_deref().is_none_or(|v| v == ETAG) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok()),
        _ => None,
    };
    let head = match start {
        Some(first) if first >= len => {
            let msg = format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(msg.as_bytes());
            return;
        }
        Some(first) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{}/{len}\r\nContent-Length: {}\r\n",
            len - 1,
            len - first
        ),
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n"),
    };
    let accept = if opts.ranges {
        "Accept-Ranges: bytes\r\n"
    } else {
        ""
    };
    let head = format!("{head}{accept}ETag: {ETAG}\r\nConnection: close\r\n\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut body = &st.payload[start.unwrap_or(0)..];
    if n < opts.cut_first {
        body = &body[..opts.cut_at.min(body.len())];
    }
    let chunk = opts.trickle.map_or(64 << 10, |(c, _)| c);
    for part in body.chunks(chunk) {
        if s.write_all(part).and_then(|_| s.flush()).is_err() {
            return;
        }
        // Re-read so a test can speed the trickle up mid-transfer.
        if let Some((_, pause)) = st.opts.lock().unwrap().trickle {
            thread::sleep(pause);
        }
    }
    if n < opts.cut_first {
        if let Some(stall) = opts.stall {
            thread::sleep(stall);
        }
    }
}

fn status<S: Write>(s: &mut S, code: &str) {
    let body = format!("{code}\n");
    let msg = format!(
        "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes());
}

fn read_request<S: Read>(s: &mut S) -> Option<Seen> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut seen = Seen {
        path,
        range: None,
        if_range: None,
    };
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
            return Some(seen);
        }
        let (k, v) = line.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "range" => seen.range = Some(v.trim().to_string()),
            "if-range" => seen.if_range = Some(v.trim().to_string()),
            _ => {}
        }
    }
}

/// Writes `pem` to `path` (the CA bundle the fetch is told to trust).
pub fn write_ca(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
}
