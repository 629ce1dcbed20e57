//! A small stub resolver for the image fetch: `/etc/hosts` first, then A and AAAA queries over
//! UDP (TCP when the answer is truncated) to the nameservers of `/etc/resolv.conf`, with its
//! search list and `ndots`.
//!
//! Why not getaddrinfo: the pod image is FROM scratch and berth is linked statically, so glibc's
//! NSS modules are not there to load; this resolver reads the same files itself.

pub mod hosts;
pub mod wire;

use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::ResolvedSocketAddrs;
use ureq::unversioned::transport::NextTimeout;

use hosts::hosts_lookup;
use netplumb::ResolvConf;
use wire::{encode_query, parse_answer, Answer, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA};

/// Where the resolver reads its configuration, and the server port (53 except in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// resolv.conf(5) file; a missing file means glibc's defaults.
    pub resolv_conf: PathBuf,
    /// hosts(5) file, consulted first; a missing file is empty.
    pub hosts: PathBuf,
    /// UDP and TCP port of every nameserver.
    pub port: u16,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            resolv_conf: "/etc/resolv.conf".into(),
            hosts: "/etc/hosts".into(),
            port: 53,
        }
    }
}

/// Why a host name has no address.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Every candidate name is NXDOMAIN or has no A/AAAA record.
    #[error("no such host {host} (tried {})", tried.join(", "))]
    NotFound {
        /// The name from the URL.
        host: String,
        /// The fully qualified names asked for, in order.
        tried: Vec<String>,
    },
    /// No nameserver gave a usable answer (timeouts, SERVFAIL, unreachable).
    #[error("no DNS server answered for {host} ({servers}): {reason}")]
    NoAnswer {
        /// The name from the URL.
        host: String,
        /// The nameservers asked.
        servers: String,
        /// The last failure.
        reason: String,
    },
    /// The name cannot be put in a query.
    #[error(transparent)]
    BadName(#[from] wire::WireError),
}

impl DnsError {
    /// Whether asking again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DnsError::NoAnswer { .. })
    }
}

/// The resolver; also plugs into ureq as its name resolver.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    config: DnsConfig,
}

/// One server's verdict on one name.
enum Verdict {
    Addrs(Vec<IpAddr>),
    /// NXDOMAIN, or no A/AAAA record: try the next candidate name.
    NoSuchName,
}

impl Resolver {
    /// A resolver reading the given files.
    pub fn new(config: DnsConfig) -> Self {
        Resolver { config }
    }

    /// The addresses of `host` (an IP literal is returned as is), IPv4 first.
    pub fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let hosts = std::fs::read_to_string(&self.config.hosts).unwrap_or_default();
        let found = hosts_lookup(&hosts, host);
        if !found.is_empty() {
            return Ok(found);
        }
        // A missing or unreadable file means glibc's defaults.
        let conf = ResolvConf::read(&self.config.resolv_conf).unwrap_or_default();
        let servers = conf.resolver_nameservers();
        let tried = conf.candidates(host);
        let mut failure = None;
        for name in &tried {
            match self.query_servers(&conf, &servers, name)? {
                Ok(Verdict::Addrs(addrs)) => return Ok(addrs),
                Ok(Verdict::NoSuchName) => {}
                Err(reason) => failure = Some(reason),
            }
        }
        match failure {
            Some(reason) => Err(DnsError::NoAnswer {
                host: host.to_string(),
                servers: servers
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason,
            }),
            None => Err(DnsError::NotFound {
                host: host.to_string(),
                tried,
            }),
        }
    }

    /// Asks `servers` in turn, `attempts` rounds, until one gives a verdict on `name`.
    fn query_servers(
        &self,
        conf: &ResolvConf,
        servers: &[IpAddr],
        name: &str,
    ) -> Result<Result<Verdict, String>, DnsError> {
        let mut last = String::from("no nameserver");
        for _ in 0..conf.attempts {
            for &ns in servers {
                let server = SocketAddr::new(ns, self.config.port);
                match ask(server, name, conf.timeout) {
                    Ok(verdict) => return Ok(Ok(verdict)),
                    Err(Failure::Wire(e @ wire::WireError::BadName(_))) => return Err(e.into()),
                    Err(e) => last = format!("{server}: {e}"),
                }
            }
        }
        Ok(Err(last))
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("timed out")]
    Timeout,
    #[error("server failure (rcode {0})")]
    Rcode(u8),
}

fn random_id() -> u16 {
    // RandomState is seeded from the OS per instance: enough for unpredictable query IDs.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u16
}

/// Sends the A and AAAA queries for `name` to one server and waits for both answers.
fn ask(server: SocketAddr, name: &str, timeout: Duration) -> Result<Verdict, Failure> {
    let id = random_id();
    let types = [TYPE_A, TYPE_AAAA];
    let queries = [
        encode_query(id, name, TYPE_A)?,
        encode_query(id.wrapping_add(1), name, TYPE_AAAA)?,
    ];
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (IpAddr::from([0u8; 4]), 0).into(),
        SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(server)?; // only the server's replies get through
    for q in &queries {
        sock.send(q)?;
    }
    let deadline = Instant::now() + timeout;
    let mut answers: [Option<Answer>; 2] = [None, None];
    let mut buf = [0u8; 1232];
    while answers.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e.into()),
        };
        for i in 0..2 {
            let qid = id.wrapping_add(i as u16);
            if let (None, Ok(ans)) = (&answers[i], parse_answer(&buf[..n], qid, name, types[i])) {
                answers[i] = Some(if ans.truncated {
                    ask_tcp(server, &queries[i], qid, name, types[i], deadline)?
                } else {
                    ans
                });
            }
        }
    }
    let [a, aaaa] = answers;
    let mut addrs = Vec::new();
    let mut nxdomain = false;
    for ans in [a.as_ref(), aaaa.as_ref()].into_iter().flatten() {
        match ans.rcode {
            0 => addrs.extend(&ans.addrs),
            RCODE_NXDOMAIN => nxdomain = true,
            rcode => return Err(Failure::Rcode(rcode)),
        }
    }
    if !addrs.is_empty() {
        return Ok(Verdict::Addrs(addrs));
    }
    // A definite "no" needs the A answer at least; a lone AAAA timeout is not a verdict.
    match (a, nxdomain) {
        (Some(_), _) | (None, true) => Ok(Verdict::NoSuchName),
        (None, false) => Err(Failure::Timeout),
    }
}

/// Repeats one query over TCP (RFC 7766) after a truncated UDP answer.
fn ask_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    name: &str,
    qtype: u16,
    deadline: Instant,
) -> Result<Answer, Failure> {
    let left = |d: Instant| {
        let t = d.saturating_duration_since(Instant::now());
        (!t.is_zero()).then_some(t).ok_or(Failure::Timeout)
    };
    let mut tcp = TcpStream::connect_timeout(&server, left(deadline)?)?;
    tcp.set_read_timeout(Some(left(deadline)?))?;
    tcp.set_write_timeout(Some(left(deadline)?))?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    tcp.write_all(&framed)?;
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    tcp.read_exact(&mut msg)?;
    Ok(parse_answer(&msg, id, name, qtype)?)
}

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri
            .host()
            .ok_or_else(|| ureq::Error::BadUri(format!("{uri}: no host")))?;
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        // The DnsError rides inside an io::Error so that the caller can tell DNS apart.
        let addrs = self.lookup(host).map_err(io::Error::other)?;
        let mut out = self.empty();
        for ip in addrs.into_iter().take(16) {
            out.push(SocketAddr::new(ip, port));
        }
        Ok(out)
    }
}
