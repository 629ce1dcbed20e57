//! What a hostile network peer can cost the VNC server, bounded: connections per source
//! address, an exponential back-off after failed passwords (per source), and a total deadline
//! on the handshake (not a per-read timeout, which a peer trickling one byte at a time resets
//! forever).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest back-off after failed passwords.
pub const MAX_AUTH_BACKOFF: Duration = Duration::from_secs(30);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Sources remembered at most (live connections always are; failure records of quiet sources
/// are evicted oldest first beyond this).
const MAX_SOURCES: usize = 4096;

/// Where a connection comes from, for the limits: the IPv4 address, or the /64 of an IPv6
/// address (one host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    /// The key of a peer at `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => SourceKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(IpAddr::V4(v4)),
                None => {
                    let mut seg = v6.segments();
                    seg[4..].fill(0);
                    SourceKey(IpAddr::V6(seg.into()))
                }
            },
        }
    }
}

#[derive(Debug)]
struct Source {
    conns: usize,
    failures: u32,
    /// No password answer from this source is checked before this instant.
    blocked_until: Option<Instant>,
    last_failure: Option<Instant>,
}

impl Source {
    fn idle(&self, now: Instant) -> bool {
        self.conns == 0
            && self
                .last_failure
                .is_none_or(|t| now.duration_since(t) > FORGET_AFTER)
    }
}

/// Per-source state shared by the server's threads.
#[derive(Debug)]
pub struct Sources {
    max_per_source: usize,
    backoff: Duration,
    map: Mutex<HashMap<SourceKey, Source>>,
}

impl Sources {
    /// At most `max_per_source` connections per source; the first back-off after a failed
    /// password is `backoff`, doubled per further failure up to [`MAX_AUTH_BACKOFF`].
    pub fn new(max_per_source: usize, backoff: Duration) -> Self {
        Sources {
            max_per_source,
            backoff,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, Source>> {
        self.map.lock().expect("sources lock poisoned")
    }

    /// Counts a new connection from `key`; false if the source already holds its share.
    pub fn open(&self, key: SourceKey) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_SOURCES && !map.contains_key(&key) {
            map.retain(|_, s| !s.idle(now));
            if map.len() >= MAX_SOURCES {
                // Still full of failure records: forget the oldest quiet one.
                let oldest = map
                    .iter()
                    .filter(|(_, s)| s.conns == 0)
                    .min_by_key(|(_, s)| s.last_failure)
                    .map(|(k, _)| *k);
                match oldest {
                    Some(k) => {
                        map.remove(&k);
                    }
                    None => return false,
                }
            }
        }
        let s = map.entry(key).or_insert(Source {
            conns: 0,
            failures: 0,
            blocked_until: None,
            last_failure: None,
        });
        if s.conns >= self.max_per_source {
            return false;
        }
        s.conns += 1;
        true
    }

    /// A connection from `key` ended.
    pub fn close(&self, key: SourceKey) {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(s) = map.get_mut(&key) {
            s.conns = s.conns.saturating_sub(1);
            if s.idle(now) {
                map.remove(&key);
            }
        }
    }

    /// Waits until `key` may have a password checked again; an error (TimedOut) if that is
    /// after `deadline`, after sleeping until the deadline (so the peer learns nothing early).
    pub fn wait_turn(&self, key: SourceKey, deadline: Instant) -> io::Result<()> {
        let until = self.lock().get(&key).and_then(|s| s.blocked_until);
        let Some(until) = until else { return Ok(()) };
        let now = Instant::now();
        if until > deadline {
            std::thread::sleep(deadline.saturating_duration_since(now));
            return Err(io::ErrorKind::TimedOut.into());
        }
        std::thread::sleep(until.saturating_duration_since(now));
        Ok(())
    }

    /// A wrong password from `key`: the next answer from there waits `backoff * 2^(n-1)`
    /// after this one (n failures in a row), at most [`MAX_AUTH_BACKOFF`].
    pub fn failed(&self, key: SourceKey) {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(s) = map.get_mut(&key) {
            s.failures = s.failures.saturating_add(1);
            let delay = self
                .backoff
                .saturating_mul(1 << (s.failures - 1).min(16))
                .min(MAX_AUTH_BACKOFF);
            s.blocked_until = Some(now + delay);
            s.last_failure = Some(now);
        }
    }

    /// A right password from `key`: its back-off is over.
    pub fn succeeded(&self, key: SourceKey) {
        if let Some(s) = self.lock().get_mut(&key) {
            s.failures = 0;
            s.blocked_until = None;
            s.last_failure = None;
        }
    }
}

/// Reads and writes on a stream that give up once `deadline` has passed, however slowly the
/// peer trickles: each call gets only the time left.
pub struct DeadlineStream<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl<'a> DeadlineStream<'a> {
    /// `stream` until `deadline`.
    pub fn new(stream: &'a TcpStream, deadline: Instant) -> Self {
        DeadlineStream { stream, deadline }
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        let mut s = self.stream;
        s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_keys() {
        let k = |s: &str| SourceKey::of(s.parse().unwrap());
        assert_eq!(k("10.0.0.1"), k("::ffff:10.0.0.1"));
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
    }

    #[test]
    fn per_source_limit_and_backoff() {
        let s = Sources::new(2, Duration::from_millis(100));
        let a = SourceKey::of("10.0.0.1".parse().unwrap());
        let b = SourceKey::of("10.0.0.2".parse().unwrap());
        assert!(s.open(a) && s.open(a));
        assert!(!s.open(a), "third from the same source");
        assert!(s.open(b), "another source is not affected");
        s.close(a);
        assert!(s.open(a));
        for n in 1..=3u32 {
            s.failed(a);
            let until = s.lock()[&a].blocked_until.unwrap();
            let want = Duration::from_millis(100 * (1 << (n - 1)));
            let got = until.duration_since(Instant::now());
            assert!(
                got <= want && got + Duration::from_millis(50) > want,
                "{n}: {got:?}"
            );
        }
        // A deadline before the turn: refused (after waiting out the deadline).
        let t0 = Instant::now();
        assert!(s
            .wait_turn(a, Instant::now() + Duration::from_millis(50))
            .is_err());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        s.succeeded(a);
        assert!(s.wait_turn(a, Instant::now()).is_ok());
        // Quiet sources with no failures are forgotten when their last connection ends.
        s.close(b);
        assert!(!s.lock().contains_key(&b));
    }
}
