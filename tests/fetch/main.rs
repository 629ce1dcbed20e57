//! `berth fetch` (the pod's image download) against local servers: resume, restart, checksum,
//! SIGKILL mid-download, concurrent fetchers, redirects, HTTP errors, TLS with a test CA, and
//! name resolution through a test resolv.conf and DNS responder. All traffic stays on 127.0.0.1.

mod dns;
mod server;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use server::{Opts, Server};
use sha2::{Digest, Sha256};

/// A scratch directory with an image dir, an empty hosts file and a resolv.conf.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("berth-fetch-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("image")).unwrap();
        std::fs::write(dir.join("hosts"), "").unwrap();
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A file in the image directory.
    fn image(&self, name: &str) -> PathBuf {
        self.0.join("image").join(name)
    }

    /// `berth fetch URL --target NAME` in a clean environment (no proxies, no system DNS).
    fn cmd(&self, url: &str, target: &str, env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(["fetch", url, "--target", target, "--dir"])
            .arg(self.path("image"))
            .env_clear()
            .env("BERTH_RESOLV_CONF", self.path("resolv.conf"))
            .env("BERTH_HOSTS", self.path("hosts"))
            .env("BERTH_DNS_PORT", "9") // nothing listens there: a stray lookup fails fast
            .env("IMG_FETCH_BACKOFF_MS", "20")
            .env("IMG_FETCH_TIMEOUT", "5")
            .envs(env.iter().copied());
        c
    }

    fn fetch(&self, url: &str, target: &str, env: &[(&str, &str)]) -> Run {
        Run(self
            .cmd(url, target, env)
            .output()
            .expect("run berth fetch"))
    }

    /// Names in the image directory, sorted.
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("image"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run(Output);

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// Asserts success and returns the printed path.
    fn ok(&self) -> PathBuf {
        assert!(
            self.0.status.success(),
            "berth fetch failed: {}",
            self.stderr()
        );
        PathBuf::from(String::from_utf8_lossy(&self.0.stdout).trim())
    }

    /// Asserts exit code 10 and returns the error line (the last line, `berth: ...`).
    fn failed(&self) -> String {
        assert_eq!(self.0.status.code(), Some(10), "stderr: {}", self.stderr());
        let err = self.stderr();
        let last = err.lines().last().unwrap_or_default().to_string();
        assert!(last.starts_with("berth: "), "{err}");
        last
    }
}

/// Deterministic pseudo-random bytes (an image that compresses to nothing would hide bugs).
fn payload(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const LEN: usize = 1_234_567;

#[test]
fn complete_download_with_sha256() {
    let s = Scratch::new();
    let data = payload(LEN);
    let srv = Server::start(data.clone(), Opts::default());
    let run = s.fetch(
        &srv.url("/img"),
        "c.qcow2",
        &[("IMG_SHA256", &sha_hex(&data))],
    );
    assert_eq!(run.ok(), s.image("c.qcow2"));
    assert_eq!(std::fs::read(s.image("c.qcow2")).unwrap(), data);
    assert_eq!(s.listing(), vec![".c.qcow2.lock", "c.qcow2"]);
    let err = run.stderr();
    assert!(err.contains("(100%) at "), "a final progress line: {err}");
    assert!(err.lines().all(|l| l.starts_with("berth: ")), "{err}");
    // The second start uses the file without asking the server.
    s.fetch(&srv.url("/img"), "c.qcow2", &[]).ok();
    assert_eq!(srv.image_gets(), 1);
}

#[test]
fn interrupted_download_resumes_with_range() {
    let s = Scratch::new();
    let data = payload(LEN);
    let opts = Opts {
        cut_first: 1,
        cut_at: 300_000,
        ..Opts::default()
    };
    let srv = Server::start(data.clone(), opts);
    let run = s.fetch(
        &srv.url("/img"),
        "c.qcow2",
        &[("IMG_SHA256", &sha_hex(&data))],
    );
    run.ok();
    assert_eq!(std::fs::read(s.image("c.qcow2")).unwrap(), data);
    let seen = srv.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=300000-"));
    assert_eq!(seen[1].if_range.as_deref(), Some("\"berth-test-v1\""));
    assert!(run.stderr().contains("resuming"), "{}", run.stderr());
}

#[test]
fn stalled_download_times_out_and_resumes() {
    let s = Scratch::new();
    let data = payload(LEN);
    let opts = Opts {
        cut_first: 1,
        cut_at: 500_000,
        stall: Some(Duration::from_secs(6)),
        ..Opts::default()
    };
    let srv = Server::start(data.clone(), opts);
    let t = Instant::now();
    s.fetch(&srv.url("/img"), "c.qcow2", &[("IMG_FETCH_TIMEOUT", "1")])
        .ok();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "idle timeout, not the stall"
    );
    assert_eq!(std::fs::read(s.image("c.qcow2")).unwrap(), data);
    assert_eq!(srv.seen()[1].range.as_deref(), Some("bytes=500000-"));
}

#[test]
fn server_without_ranges_restarts() {
    let s = Scratch::new();
    let data = payload(LEN);
    let opts = Opts {
        ranges: false,
        cut_first: 1,
        cut_at: 400_000,
        ..Opts::default()
    };
    let srv = Server::start(data.clone(), opts);
    let run = s.fetch(&srv.url("/img"), "c.qcow2", &[]);
    run.ok();
    assert_eq!(std::fs::read(s.image("c.qcow2")).unwrap(), data);
    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].range.is_some(), "it asked to resume");
    assert!(run.stderr().contains("starting over"), "{}", run.stderr());
}

#[test]
fn checksum_mismatch_leaves_no_image() {
    let s = Scratch::new();
    let srv = Server::start(payload(LEN), Opts::default());
    let wrong = sha_hex(b"something else");
    let err = s
        .fetch(&srv.url("/img"), "c.qcow2", &[("IMG_SHA256", &wrong)])
        .failed();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        err.contains(&wrong) && err.contains(&sha_hex(&payload(LEN))),
        "{err}"
    );
    assert_eq!(
        s.listing(),
        vec![".c.qcow2.lock"],
        "no image and no part file"
    );
    // The next start downloads again rather than trusting anything left over.
    s.fetch(&srv.url("/img"), "c.qcow2", &[("IMG_SHA256", &wrong)])
        .failed();
    assert_eq!(srv.image_gets(), 2);
}

/// Polls until the part file has at least `min` bytes.
fn wait_for_part(part: &Path, min: u64, child: &mut Child) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let len = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if len >= min {
            return len;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "berth fetch ended early"
        );
        assert!(Instant::now() < deadline, "the part file did not grow");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigkill_mid_download_leaves_only_a_part_then_resumes() {
    let s = Scratch::new();
    let data = payload(LEN);
    let opts = Opts {
        trickle: Some((8 << 10, Duration::from_millis(10))),
        ..Opts::default()
    };
    let srv = Server::start(data.clone(), opts);
    let mut child = s
        .cmd(&srv.url("/img"), "c.qcow2", &[])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_part(&s.image(".c.qcow2.part"), 200_000, &mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = std::fs::metadata(s.image(".c.qcow2.part")).unwrap().len();
    assert!(left > 0 && left < LEN as u64);
    assert!(
        !s.image("c.qcow2").exists(),
        "a partial image is never the base"
    );
    srv.set(|o| o.trickle = None);
    let run = s.fetch(
        &srv.url("/img"),
        "c.qcow2",
        &[("IMG_SHA256", &sha_hex(&data))],
    );
    run.ok();
    assert_eq!(std::fs::read(s.image("c.qcow2")).unwrap(), data);
    let last = srv.seen().pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={left}-")));
    assert_eq!(s.listing(), vec![".c.qcow2.lock", "c.qcow2"]);
}

#[test]
fn concurrent_fetchers_download_once() {
    let s = Scratch::new();
    let data = payload(LEN);
    let opts = Opts {
        trickle: Some((16 << 10, Duration::from_millis(10))),
        ..Opts::default()
    };
    let srv = Server::start(data.clone(), opts);
    let url = srv.url("/img");
    let mut first = s
        .cmd(&url, "c.qcow2", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_part(&s.image(".c.qcow2.part"), 1, &mut first);
    let second = s.cmd(&url, "c.qcow2", &[]).output().unwrap();
    let first = first.wait_with_output().unwrap();
    assert_eq!(Run(first).ok(), s.image("c.qcow2"));
    let second = Run(second);
    assert_eq!(second.ok(), s.image("c.qcow2"));
    assert!(second.stderr().contains("waiting"), "{}", second.stderr());
    assert!(second.stderr().contains("downloaded by another process"));
    assert_eq!(srv.image_gets(), 1, "one download for both");
    assert_eq!(std::fs::read(s.image("c.qcow2")).unwrap(), data);
}

#[test]
fn existing_images_are_used_as_is() {
    let s = Scratch::new();
    let srv = Server::start(payload(100), Opts::default());
    let baked = s.path("baked.qcow2");
    std::fs::write(&baked, b"baked").unwrap();
    let run = s.fetch(&srv.url("/img"), baked.to_str().unwrap(), &[]);
    assert_eq!(run.ok(), baked);
    std::fs::write(s.image("done.qcow2"), b"earlier download").unwrap();
    assert_eq!(
        s.fetch(&srv.url("/missing"), "done.qcow2", &[]).ok(),
        s.image("done.qcow2")
    );
    // No IMG_SOURCE at all is fine when the image exists.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["fetch", "--target", "done.qcow2", "--dir"])
        .arg(s.path("image"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(Run(out).ok(), s.image("done.qcow2"));
    assert!(srv.seen().is_empty(), "no request for an existing image");
    assert_eq!(std::fs::read(&baked).unwrap(), b"baked");
    // A missing absolute target is downloaded to that path.
    let abs = s.path("abs.qcow2");
    assert_eq!(
        s.fetch(&srv.url("/img"), abs.to_str().unwrap(), &[]).ok(),
        abs
    );
    assert_eq!(std::fs::read(&abs).unwrap(), payload(100));
}

#[test]
fn redirects_are_followed_and_limited() {
    let s = Scratch::new();
    let data = payload(50_000);
    let srv = Server::start(data.clone(), Opts::default());
    s.fetch(&srv.url("/redirect-abs"), "c.qcow2", &[]).ok();
    assert_eq!(std::fs::read(s.image("c.qcow2")).unwrap(), data);
    let paths: Vec<String> = srv.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/redirect-abs", "/redirect", "/img"]);
    let err = s.fetch(&srv.url("/loop"), "d.qcow2", &[]).failed();
    assert!(err.contains("redirected more than 10 times"), "{err}");
}

#[test]
fn http_errors_are_clear() {
    let s = Scratch::new();
    let srv = Server::start(payload(10), Opts::default());
    let err = s.fetch(&srv.url("/missing"), "c.qcow2", &[]).failed();
    assert!(
        err.contains("answered HTTP 404") && err.contains("IMG_SOURCE"),
        "{err}"
    );
    assert_eq!(srv.seen().len(), 1, "a 404 is not retried");
    let run = s.fetch(&srv.url("/busy"), "c.qcow2", &[("IMG_FETCH_RETRIES", "2")]);
    assert!(run.failed().contains("answered HTTP 503"));
    assert_eq!(srv.seen().len(), 4, "a 503 is retried");
    assert_eq!(s.listing(), vec![".c.qcow2.lock"]);
}

#[test]
fn unreachable_server_fails_after_retries() {
    let s = Scratch::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/img");
    let run = s.fetch(&url, "c.qcow2", &[("IMG_FETCH_RETRIES", "2")]);
    let err = run.failed();
    assert!(
        err.contains("after 3 attempts") && err.contains("IMG_FETCH_RETRIES"),
        "{err}"
    );
    assert_eq!(run.stderr().matches("retry ").count(), 2);
}

#[test]
fn bad_settings_are_clear() {
    let s = Scratch::new();
    let err = s.fetch("ftp://127.0.0.1/c", "c.qcow2", &[]).failed();
    assert!(err.contains("not http or https"), "{err}");
    let err = s
        .fetch("http://127.0.0.1:9/c", "c.qcow2", &[("IMG_SHA256", "abc")])
        .failed();
    assert!(err.contains("IMG_SHA256"), "{err}");
    let err = s.fetch("http://127.0.0.1:9/c", "a/b", &[]).failed();
    assert!(err.contains("IMG_TARGET"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "fetch",
            "http://127.0.0.1:9/c",
            "--target",
            "x",
            "--dir",
            "/nonexistent/b",
        ])
        .env_clear()
        .output()
        .unwrap();
    let err = Run(out).failed();
    assert!(
        err.contains("cannot write /nonexistent/b/.x.lock") && err.contains("mount"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["fetch", "http://127.0.0.1:9/c"])
        .env_clear()
        .output()
        .unwrap();
    assert!(Run(out).failed().contains("IMG_TARGET is not set"));
}

#[test]
fn write_failure_is_not_retried_and_leaves_no_image() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new();
    let srv = Server::start(payload(LEN), Opts::default());
    let mut c = s.cmd(&srv.url("/img"), "c.qcow2", &[]);
    // SAFETY: async-signal-safe calls only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            // A file size limit stands in for a full volume: writes past it fail with EFBIG.
            let lim = libc::rlimit {
                rlim_cur: 100_000,
                rlim_max: 100_000,
            };
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let err = Run(c.output().unwrap()).failed();
    assert!(
        err.contains("cannot write") && err.contains(".c.qcow2.part"),
        "{err}"
    );
    assert_eq!(srv.image_gets(), 1);
    assert!(!s.image("c.qcow2").exists());
}

#[test]
fn https_with_a_trusted_test_ca() {
    let s = Scratch::new();
    let data = payload(300_000);
    let (ca_pem, tls) = server::tls_setup("berth test CA");
    server::write_ca(&s.path("ca.pem"), &ca_pem);
    let srv = Server::start_with(data.clone(), Opts::default(), Some(tls));
    let ca = s.path("ca.pem");
    let ca = ca.to_str().unwrap();
    s.fetch(&srv.url("/img"), "c.qcow2", &[("SSL_CERT_FILE", ca)])
        .ok();
    assert_eq!(std::fs::read(s.image("c.qcow2")).unwrap(), data);
    // By name, through the hosts file, checked against the certificate's DNS name.
    std::fs::write(s.path("hosts"), "127.0.0.1 localhost\n").unwrap();
    let url = format!("https://localhost:{}/img", srv.addr.port());
    s.fetch(&url, "d.qcow2", &[("SSL_CERT_FILE", ca)]).ok();
    // Another CA: the handshake fails, with the cause, and is not retried.
    let (other_ca, _) = server::tls_setup("another CA");
    server::write_ca(&s.path("other.pem"), &other_ca);
    let other = s.path("other.pem");
    let err = s
        .fetch(
            &srv.url("/img"),
            "e.qcow2",
            &[("SSL_CERT_FILE", other.to_str().unwrap())],
        )
        .failed();
    assert!(
        err.contains("TLS with") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("SSL_CERT_FILE"), "{err}");
    let err = s
        .fetch(
            &srv.url("/img"),
            "e.qcow2",
            &[("SSL_CERT_FILE", "/nonexistent.pem")],
        )
        .failed();
    assert!(
        err.contains("cannot use the CA bundle /nonexistent.pem"),
        "{err}"
    );
    assert_eq!(srv.image_gets(), 2);
}

/// A resolv.conf for the test responder, and the environment pointing the fetch at it.
fn dns_setup(s: &Scratch, conf: &str, port: u16) -> [(&'static str, String); 1] {
    std::fs::write(s.path("resolv.conf"), conf).unwrap();
    [("BERTH_DNS_PORT", port.to_string())]
}

fn env_ref<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn host_names_resolve_through_resolv_conf() {
    let s = Scratch::new();
    let data = payload(100_000);
    let srv = Server::start(data.clone(), Opts::default());
    let lo = Ipv4Addr::LOCALHOST;
    let ns = dns::DnsServer::start(
        &[("img.berth.test", lo), ("big.berth.test", lo)],
        &["big.berth.test"],
    );
    let env = dns_setup(
        &s,
        "search other.test berth.test\noptions ndots:2\nnameserver 127.0.0.1\n",
        ns.port,
    );
    let env = env_ref(&env);
    let port = srv.addr.port();

    s.fetch(
        &format!("http://img.berth.test:{port}/img"),
        "a.qcow2",
        &env,
    )
    .ok();
    assert_eq!(std::fs::read(s.image("a.qcow2")).unwrap(), data);
    // One dot is fewer than ndots: the search list comes first.
    s.fetch(&format!("http://img:{port}/img"), "b.qcow2", &env)
        .ok();
    let asked: Vec<String> = ns
        .queries()
        .into_iter()
        .filter(|q| q.1 == 1)
        .map(|q| q.0)
        .collect();
    assert_eq!(
        asked,
        vec!["img.berth.test", "img.other.test", "img.berth.test"]
    );
    // A truncated UDP answer is asked again over TCP.
    s.fetch(
        &format!("http://big.berth.test:{port}/img"),
        "c.qcow2",
        &env,
    )
    .ok();
    assert!(ns.queries().contains(&("big.berth.test".into(), 1, true)));
    // /etc/hosts comes before DNS.
    std::fs::write(s.path("hosts"), "127.0.0.1 fromhosts\n").unwrap();
    let before = ns.queries().len();
    s.fetch(&format!("http://fromhosts:{port}/img"), "d.qcow2", &env)
        .ok();
    assert_eq!(ns.queries().len(), before);
}

#[test]
fn nxdomain_is_a_clear_error() {
    let s = Scratch::new();
    let ns = dns::DnsServer::start(&[], &[]);
    let env = dns_setup(&s, "search berth.test\nnameserver 127.0.0.1\n", ns.port);
    let err = s
        .fetch("http://nosuch.example:8080/img", "c.qcow2", &env_ref(&env))
        .failed();
    assert!(
        err.contains("cannot resolve") && err.contains("no such host nosuch.example"),
        "{err}"
    );
    assert!(err.contains("nosuch.example.berth.test"), "{err}");
    // A nameserver that never answers is a DNS failure too, after the retries.
    let env = dns_setup(
        &s,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        9,
    );
    let err = s
        .fetch(
            "http://img.example/c",
            "c.qcow2",
            &[("IMG_FETCH_RETRIES", "1"), ("BERTH_DNS_PORT", &env[0].1)],
        )
        .failed();
    assert!(err.contains("no DNS server answered"), "{err}");
}
