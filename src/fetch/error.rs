//! Why the image fetch failed: one variant per problem, each a one-line message that names the
//! fix, and whether a retry may help.

use std::io;
use std::path::{Path, PathBuf};

use super::dns::DnsError;

/// A failed image fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// IMG_TARGET is unset or empty.
    #[error("IMG_TARGET is not set; set it to a file name in {dir} or to the absolute path of an image baked into the container")]
    NoTarget {
        /// The image directory.
        dir: PathBuf,
    },
    /// IMG_TARGET is neither a plain file name nor an absolute path.
    #[error("IMG_TARGET {0:?} is not usable: {1}; use a plain file name (stored in /image) or an absolute path")]
    BadTarget(String, &'static str),
    /// The image is missing and there is nothing to download it from.
    #[error("{} does not exist and IMG_SOURCE is not set; set IMG_SOURCE to the image's http(s) URL or point IMG_TARGET at an existing image", .0.display())]
    NoSource(PathBuf),
    /// IMG_SOURCE is not an http(s) URL.
    #[error("IMG_SOURCE {url:?} is not usable: {reason}; set it to an http:// or https:// URL of a qcow2 image")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting (IMG_SHA256, IMG_FETCH_*) has a malformed value.
    #[error("{name}={value:?} is not valid: {expected}")]
    BadSetting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should look like.
        expected: &'static str,
    },
    /// The host name has no address.
    #[error("cannot resolve the host of {url}: {source}; check the host name in IMG_SOURCE and the pod's DNS (/etc/resolv.conf)")]
    Dns {
        /// The URL being fetched.
        url: String,
        /// The resolver's reason.
        source: DnsError,
    },
    /// The server could not be reached or kept dropping the transfer, after every retry.
    #[error("cannot download {url} after {attempts} attempts: {reason}; check that the server is reachable from the pod, or raise IMG_FETCH_RETRIES")]
    Network {
        /// The URL being fetched.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}; check that IMG_SOURCE names an existing image")]
    Status {
        /// The URL being fetched.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// Redirects went on longer than the limit.
    #[error("{url} redirected more than {limit} times; point IMG_SOURCE at the final URL")]
    Redirects {
        /// The URL being fetched.
        url: String,
        /// The redirect limit.
        limit: u32,
    },
    /// An https:// source redirected to plain http://.
    #[error("{url} redirected to {to}, which is not HTTPS; refusing to download the image without TLS (nothing was saved); point IMG_SOURCE at a URL that stays on https://")]
    Downgrade {
        /// The URL being fetched.
        url: String,
        /// Where the redirect pointed.
        to: String,
    },
    /// The TLS handshake or certificate check failed.
    #[error("TLS with {url} failed: {reason}; make the server's CA trusted (a PEM bundle in SSL_CERT_FILE, default /etc/ssl/certs/ca-certificates.crt) or fix the server's certificate")]
    Tls {
        /// The URL being fetched.
        url: String,
        /// The cause, as rustls names it.
        reason: String,
    },
    /// The CA bundle cannot be read or holds no certificate.
    #[error("cannot use the CA bundle {}: {reason}; point SSL_CERT_FILE at a PEM file of CA certificates", path.display())]
    CaFile {
        /// The bundle's path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The complete download does not have the expected SHA-256.
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}; the download was deleted; fix IMG_SHA256 or IMG_SOURCE")]
    Checksum {
        /// The URL fetched.
        url: String,
        /// IMG_SHA256.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// A file in the image directory cannot be created or written.
    #[error("cannot write {}: {source}; {}", path.display(), write_fix(source))]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

fn write_fix(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "free space on the image volume or make it (its PVC) larger"
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "mount the image volume (/image) writable for berth"
        }
        io::ErrorKind::NotFound => "mount the image volume (/image) or create the directory",
        _ => "check the image volume (/image)",
    }
}

impl FetchError {
    /// A write failure on `path`.
    pub fn write(path: &Path, source: io::Error) -> Self {
        FetchError::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The outcome of one failed attempt: give up now, or retry after a pause.
#[derive(Debug)]
pub enum AttemptError {
    /// Retrying cannot help (404, bad certificate, NXDOMAIN, disk full, checksum).
    Fatal(FetchError),
    /// Retrying may help (timeouts, resets, 5xx, a dropped transfer).
    Transient {
        /// A short reason for the log line.
        reason: String,
        /// What to report if no retry succeeds.
        error: FetchError,
    },
}

impl From<FetchError> for AttemptError {
    fn from(e: FetchError) -> Self {
        AttemptError::Fatal(e)
    }
}

impl AttemptError {
    /// A transient network failure on `url`.
    pub fn network(url: &str, reason: String) -> Self {
        AttemptError::Transient {
            error: FetchError::Network {
                url: url.to_string(),
                attempts: 0, // filled in when the retries run out
                reason: reason.clone(),
            },
            reason,
        }
    }
}

/// Sorts a ureq error on `url` into fatal and transient failures.
pub fn classify(url: &str, e: ureq::Error, max_redirects: u32) -> AttemptError {
    let fatal_url = |reason: String| {
        AttemptError::Fatal(FetchError::BadUrl {
            url: url.to_string(),
            reason,
        })
    };
    match e {
        ureq::Error::Io(io) => classify_io(url, io),
        ureq::Error::Rustls(tls) => tls_error(url, &tls),
        ureq::Error::Tls(reason) => AttemptError::Fatal(FetchError::Tls {
            url: url.to_string(),
            reason: reason.to_string(),
        }),
        ureq::Error::TooManyRedirects => AttemptError::Fatal(FetchError::Redirects {
            url: url.to_string(),
            limit: max_redirects,
        }),
        ureq::Error::BadUri(reason) => fatal_url(reason),
        ureq::Error::RequireHttpsOnly(to) => AttemptError::Fatal(FetchError::Downgrade {
            url: url.to_string(),
            to,
        }),
        ureq::Error::RedirectFailed => fatal_url("a redirect has no usable Location".into()),
        other => AttemptError::network(url, other.to_string()),
    }
}

fn tls_error(url: &str, e: &rustls::Error) -> AttemptError {
    AttemptError::Fatal(FetchError::Tls {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// I/O errors carry the resolver's and rustls' errors inside; the rest are network trouble.
fn classify_io(url: &str, io: io::Error) -> AttemptError {
    if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return tls_error(url, tls);
    }
    if io.get_ref().is_some_and(|i| i.is::<DnsError>()) {
        let inner = io.into_inner().expect("checked above");
        let dns = *inner.downcast::<DnsError>().expect("checked above");
        let transient = dns.is_transient();
        let reason = dns.to_string();
        let error = FetchError::Dns {
            url: url.to_string(),
            source: dns,
        };
        return if transient {
            AttemptError::Transient { reason, error }
        } else {
            AttemptError::Fatal(error)
        };
    }
    AttemptError::network(url, io.to_string())
}
