//! The base image of the pod: used where it is, or downloaded once into the image volume.
//!
//! [`ensure_image`] implements the contract's IMG_SOURCE / IMG_TARGET rules (see
//! docs/fetch.md): an existing target is used as is; otherwise the image is downloaded from
//! IMG_SOURCE (http or https) into `.NAME.part` next to it, resumed with `Range` after an
//! interruption, retried with exponential backoff, checked against IMG_SHA256 when given, and
//! only then renamed to `NAME`. So a target that exists is always a complete download, which
//! fixes the original's defect of booting from a partial one. An flock on `.NAME.lock` makes
//! pods that share the volume download once.

pub mod cmd;
pub mod dns;
mod error;
mod http;
mod part;
mod progress;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::FetchError;

use error::AttemptError;
use part::PartFiles;

/// The CA bundle read when SSL_CERT_FILE is not set (the Mozilla roots built into berth serve
/// when this file does not exist either).
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where relative IMG_TARGET names live.
pub const IMAGE_DIR: &str = "/image";

/// How to reach the server, and how hard to try.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Retries after the first attempt (IMG_FETCH_RETRIES, default 5). An attempt that grows
    /// the part file past its previous best gives the retries back.
    pub retries: u32,
    /// The first pause between attempts, doubled each time (IMG_FETCH_BACKOFF_MS, default 1 s).
    pub backoff: Duration,
    /// The longest pause between attempts (60 s).
    pub max_backoff: Duration,
    /// Connect, response and per-read idle timeout (IMG_FETCH_TIMEOUT seconds, default 30).
    pub timeout: Duration,
    /// Redirects followed (10).
    pub max_redirects: u32,
    /// PEM bundle of trusted CAs (SSL_CERT_FILE); None reads [`DEFAULT_CA_FILE`] if present.
    pub ca_file: Option<PathBuf>,
    /// The resolver's files and port.
    pub dns: dns::DnsConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            retries: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            max_redirects: 10,
            ca_file: None,
            dns: dns::DnsConfig::default(),
        }
    }
}

/// What image the pod wants.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// IMG_SOURCE: the http(s) URL of the image.
    pub source: Option<String>,
    /// IMG_TARGET: a file name in `image_dir`, or an absolute path.
    pub target: Option<String>,
    /// IMG_SHA256: the expected hex SHA-256 of the download.
    pub sha256: Option<String>,
    /// The image volume, [`IMAGE_DIR`] in the pod.
    pub image_dir: PathBuf,
    /// Network settings.
    pub net: NetConfig,
}

impl FetchRequest {
    /// The request the pod's environment describes (variables listed in docs/fetch.md).
    pub fn from_env() -> Result<Self, FetchError> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let mut net = NetConfig::default();
        if let Some(v) = var("IMG_FETCH_RETRIES") {
            net.retries = parse_setting(&v)
                .filter(|n| *n <= 100)
                .ok_or_else(|| bad("IMG_FETCH_RETRIES", v, "a retry count (0-100)"))?;
        }
        if let Some(v) = var("IMG_FETCH_BACKOFF_MS") {
            let ms =
                parse_setting(&v).ok_or_else(|| bad("IMG_FETCH_BACKOFF_MS", v, "milliseconds"))?;
            net.backoff = Duration::from_millis(ms);
        }
        if let Some(v) = var("IMG_FETCH_TIMEOUT") {
            let s = parse_setting(&v)
                .filter(|s| *s > 0)
                .ok_or_else(|| bad("IMG_FETCH_TIMEOUT", v, "seconds (at least 1)"))?;
            net.timeout = Duration::from_secs(s);
        }
        net.ca_file = var("SSL_CERT_FILE").map(PathBuf::from);
        // Test hooks: another resolv.conf, hosts file and DNS port (undocumented for users).
        if let Some(p) = var("BERTH_RESOLV_CONF") {
            net.dns.resolv_conf = p.into();
        }
        if let Some(p) = var("BERTH_HOSTS") {
            net.dns.hosts = p.into();
        }
        if let Some(v) = var("BERTH_DNS_PORT") {
            net.dns.port =
                parse_setting(&v).ok_or_else(|| bad("BERTH_DNS_PORT", v, "a UDP port"))?;
        }
        Ok(FetchRequest {
            source: var("IMG_SOURCE"),
            target: var("IMG_TARGET"),
            sha256: var("IMG_SHA256"),
            image_dir: IMAGE_DIR.into(),
            net,
        })
    }
}

fn parse_setting<T: std::str::FromStr>(v: &str) -> Option<T> {
    v.trim().parse().ok()
}

fn bad(name: &'static str, value: String, expected: &'static str) -> FetchError {
    FetchError::BadSetting {
        name,
        value,
        expected,
    }
}

/// Writes one `berth: ` line to the log (stderr).
pub(crate) fn log(msg: impl std::fmt::Display) {
    eprintln!("berth: {msg}");
}

/// The path of the base image, downloading it first if it is not there yet.
///
/// An existing target (a baked absolute path, or a finished download in the image directory)
/// is returned without any network access. Otherwise the image is downloaded under the
/// target's lock, and a part file is never renamed into place unless it is complete and,
/// when `sha256` is set, matches it.
pub fn ensure_image(req: &FetchRequest) -> Result<PathBuf, FetchError> {
    let target = target_path(req)?;
    if target.exists() {
        log(format!("using the image {}", target.display()));
        return Ok(target);
    }
    let url = req
        .source
        .as_deref()
        .ok_or_else(|| FetchError::NoSource(target.clone()))?;
    check_url(url)?;
    let sha256 = req.sha256.as_deref().map(check_sha256).transpose()?;
    let files = PartFiles::new(&target);
    let _lock = files.lock()?;
    if target.exists() {
        // Another pod finished the download while this one waited for the lock.
        log(format!(
            "using the image {} (downloaded by another process)",
            target.display()
        ));
        return Ok(target);
    }
    let https = url
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
    let agent = http::agent(&req.net, https)?;
    download(&agent, url, &files, &req.net)?;
    files.commit(url, sha256)?;
    log(format!("downloaded {url} to {}", target.display()));
    Ok(target)
}

/// The target path the request names.
fn target_path(req: &FetchRequest) -> Result<PathBuf, FetchError> {
    let name = req.target.as_deref().ok_or_else(|| FetchError::NoTarget {
        dir: req.image_dir.clone(),
    })?;
    let path = Path::new(name);
    if path.is_absolute() {
        if path.file_name().is_none() || name.ends_with('/') {
            return Err(FetchError::BadTarget(name.into(), "it names a directory"));
        }
        return Ok(path.to_path_buf());
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err(FetchError::BadTarget(
            name.into(),
            "a relative name must not contain '/'",
        ));
    }
    Ok(req.image_dir.join(name))
}

fn check_url(url: &str) -> Result<(), FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: ureq::http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(s) => return Err(bad(&format!("scheme {s} is not http or https"))),
        None => return Err(bad("it has no scheme")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(())
}

fn check_sha256(hex: &str) -> Result<&str, FetchError> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(bad("IMG_SHA256", hex.into(), "64 hex digits (a SHA-256)"))
    }
}

/// Attempts until the part file is complete, with exponential backoff between failures.
fn download(
    agent: &ureq::Agent,
    url: &str,
    files: &PartFiles,
    net: &NetConfig,
) -> Result<(), FetchError> {
    let mut failures = 0;
    let mut attempts = 0;
    let mut best = files.part_len();
    loop {
        attempts += 1;
        let (reason, mut error) = match http::attempt(agent, url, files, net) {
            Ok(()) => return Ok(()),
            Err(AttemptError::Fatal(e)) => return Err(e),
            Err(AttemptError::Transient { reason, error }) => (reason, error),
        };
        // Progress resets the count, so a long download over a flaky link gets through, while
        // a server that always fails at the same point still runs out of retries.
        let len = files.part_len();
        if len > best {
            best = len;
            failures = 0;
        }
        failures += 1;
        if failures > net.retries {
            if let FetchError::Network { attempts: a, .. } = &mut error {
                *a = attempts;
            }
            return Err(error);
        }
        let pause = net
            .backoff
            .saturating_mul(1 << (failures - 1).min(16))
            .min(net.max_backoff);
        log(format!(
            "attempt {attempts} failed: {reason}; retry {failures} of {} in {:.1} s",
            net.retries,
            pause.as_secs_f64()
        ));
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str) -> FetchRequest {
        FetchRequest {
            source: None,
            target: Some(target.into()),
            sha256: None,
            image_dir: "/image".into(),
            net: NetConfig::default(),
        }
    }

    #[test]
    fn target_rules() {
        assert_eq!(
            target_path(&req("c.qcow2")).unwrap(),
            Path::new("/image/c.qcow2")
        );
        assert_eq!(
            target_path(&req("/base/c.qcow2")).unwrap(),
            Path::new("/base/c.qcow2")
        );
        assert!(target_path(&req("a/b")).is_err());
        assert!(target_path(&req("..")).is_err());
        assert!(target_path(&req("/base/")).is_err());
        let mut r = req("x");
        r.target = None;
        assert!(matches!(target_path(&r), Err(FetchError::NoTarget { .. })));
    }

    #[test]
    fn url_and_checksum_rules() {
        assert!(check_url("https://img.example/c.qcow2").is_ok());
        assert!(check_url("http://10.0.0.1:8080/c").is_ok());
        for bad in ["ftp://h/c", "c.qcow2", "http:///c", "http://"] {
            assert!(
                matches!(check_url(bad), Err(FetchError::BadUrl { .. })),
                "{bad}"
            );
        }
        assert!(check_sha256(&"aB".repeat(32)).is_ok());
        assert!(check_sha256("abc").is_err());
        assert!(check_sha256(&"g".repeat(64)).is_err());
    }
}
