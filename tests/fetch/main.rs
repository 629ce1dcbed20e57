//! `berth fetch` (the pod's image download) against local servers: resume, restart, checksum,
//! SIGKILL mid-download, concurrent fetchers, redirects, HTTP errors, TLS with a test CA, and
//! name resolution through a test resolv.conf and DNS responder. All traffic stays on 127.0.0.1.

mod dns;
mod download;
mod errors;
mod names;
mod server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

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

    /// Asserts that the image directory's NAME holds exactly `data` (without printing MiBs of
    /// bytes when it does not).
    fn assert_image(&self, name: &str, data: &[u8]) {
        let got = std::fs::read(self.image(name)).unwrap_or_else(|e| panic!("image/{name}: {e}"));
        assert!(
            got == data,
            "image/{name} holds {} bytes that are not the {} bytes served",
            got.len(),
            data.len()
        );
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

/// The size of most test images: not a multiple of any buffer size.
const LEN: usize = 1_234_567;

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
