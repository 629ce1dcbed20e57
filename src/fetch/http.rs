//! HTTP(S) for the fetch: the ureq agent (rustls, berth's resolver, timeouts, redirect limit)
//! and one download attempt that resumes the part file with `Range` when it can.

use std::io::{self, Read, Write};
use std::path::Path;

use ureq::http::HeaderMap;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::transport::DefaultConnector;
use ureq::Agent;

use super::dns::Resolver;
use super::error::{classify, AttemptError, FetchError};
use super::part::PartFiles;
use super::progress::{size, Progress};
use super::{log, NetConfig, DEFAULT_CA_FILE};

/// The agent for all attempts of one fetch. With `https_only` (the source is an https:// URL)
/// every request, redirects included, must stay on HTTPS: a redirect to http:// fails before
/// connecting, so a man in the middle of one hop cannot swap the image.
pub fn agent(net: &NetConfig, https_only: bool) -> Result<Agent, FetchError> {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .https_only(https_only)
        .max_redirects(net.max_redirects)
        .timeout_connect(Some(net.timeout))
        .timeout_send_request(Some(net.timeout))
        .timeout_recv_response(Some(net.timeout))
        // An idle limit, not a total one: a big image on a slow link may take hours.
        .timeout_per_read(Some(net.timeout))
        .tls_config(TlsConfig::builder().root_certs(root_certs(net)?).build())
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(Agent::with_parts(
        config,
        DefaultConnector::new(),
        Resolver::new(net.dns.clone()),
    ))
}

/// The trusted CAs: the bundle named by `ca_file`, else the usual bundle path if present, else
/// the Mozilla roots compiled in.
fn root_certs(net: &NetConfig) -> Result<RootCerts, FetchError> {
    let (path, explicit) = match &net.ca_file {
        Some(p) => (p.as_path(), true),
        None => (Path::new(DEFAULT_CA_FILE), false),
    };
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) if !explicit && e.kind() == io::ErrorKind::NotFound => return Ok(RootCerts::WebPki),
        Err(e) => return Err(ca_error(path, e.to_string())),
    };
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(ca_error(path, e.to_string())),
        }
    }
    if certs.is_empty() {
        return Err(ca_error(path, "no certificate in it".into()));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

fn ca_error(path: &Path, reason: String) -> FetchError {
    FetchError::CaFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// `(first byte, total size)` of a `Content-Range: bytes FIRST-LAST/TOTAL` header.
fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = headers.get("content-range")?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let first = range.split_once('-')?.0.trim().parse().ok()?;
    Some((first, total.trim().parse().ok()))
}

/// The size in a 416's `Content-Range: bytes */TOTAL`.
fn complete_size(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get("content-range")?.to_str().ok()?;
    v.strip_prefix("bytes */")?.trim().parse().ok()
}

/// What `If-Range` can carry: a strong ETag, else Last-Modified.
fn validator(headers: &HeaderMap) -> Option<String> {
    let get = |name| headers.get(name)?.to_str().ok().map(str::to_string);
    get("etag")
        .filter(|e| !e.starts_with("W/"))
        .or_else(|| get("last-modified"))
}

/// One GET of `url` into the part file: continues it with `Range` (and `If-Range`) when it has
/// bytes, starts it over when the server sends the whole image. `Ok` means the part is complete.
pub fn attempt(
    agent: &Agent,
    url: &str,
    files: &PartFiles,
    net: &NetConfig,
) -> Result<(), AttemptError> {
    // A refused resume (416, a wrong range) empties the part and goes again at once, once.
    for pass in 0..2 {
        match transfer(agent, url, files, net)? {
            Some(reason) if pass == 0 => log(format!("{reason}; starting over")),
            Some(reason) => return Err(AttemptError::network(url, reason)),
            None => return Ok(()),
        }
    }
    unreachable!("the second pass returns")
}

/// One request; `Ok(Some(reason))` when the part was emptied and a fresh start is needed.
fn transfer(
    agent: &Agent,
    url: &str,
    files: &PartFiles,
    net: &NetConfig,
) -> Result<Option<String>, AttemptError> {
    let offset = files.part_len();
    let mut req = agent.get(url).header("accept-encoding", "identity");
    if offset > 0 {
        req = req.header("range", format!("bytes={offset}-"));
        if let Some(v) = files.read_validator() {
            req = req.header("if-range", v);
        }
    }
    let resp = req
        .call()
        .map_err(|e| classify(url, e, net.max_redirects))?;
    let status = resp.status().as_u16();
    let (file, start, total) = match status {
        206 if offset > 0 => match content_range(resp.headers()) {
            Some((first, total)) if first == offset => (files.append()?, offset, total),
            _ => {
                files.restart(None)?;
                return Ok(Some(format!("{url} sent another byte range than asked")));
            }
        },
        200 => {
            if offset > 0 {
                log(format!(
                    "{url} sent the whole image instead of the rest (no range support, or the \
                     image changed): starting over"
                ));
            }
            let total = resp.body().content_length();
            (
                files.restart(validator(resp.headers()).as_deref())?,
                0,
                total,
            )
        }
        // The part is already whole (a kill between the last byte and the rename, maybe
        // while hashing): `bytes */TOTAL` says so.
        416 if offset > 0 && complete_size(resp.headers()) == Some(offset) => {
            log(format!("{} is already complete", files.part.display()));
            return Ok(None);
        }
        416 if offset > 0 => {
            files.restart(None)?;
            return Ok(Some(format!("{url} refused to resume at byte {offset}")));
        }
        408 | 429 | 500.. => {
            return Err(AttemptError::Transient {
                reason: format!("HTTP {status}"),
                error: FetchError::Status {
                    url: url.to_string(),
                    status,
                },
            })
        }
        _ => {
            return Err(AttemptError::Fatal(FetchError::Status {
                url: url.to_string(),
                status,
            }))
        }
    };
    let sized = |t: u64| format!(" of {}", size(t));
    if start > 0 {
        let of = total.map(sized).unwrap_or_default();
        log(format!("resuming {url} at {}{of}", size(start)));
    } else {
        let len = total.map(|t| format!(" ({})", size(t))).unwrap_or_default();
        log(format!(
            "downloading {url}{len} to {}",
            files.target.display()
        ));
    }
    let mut progress = Progress::new(start, total);
    let len = copy(
        resp.into_body().into_reader(),
        file,
        files,
        &mut progress,
        url,
    )?;
    if let Some(line) = progress.finish() {
        log(line);
    }
    match total {
        Some(t) if len < t => Err(AttemptError::network(
            url,
            format!("the connection closed at {} of {}", size(len), size(t)),
        )),
        Some(t) if len > t => {
            files.restart(None)?;
            Ok(Some(format!(
                "{url} sent more than its announced {t} bytes"
            )))
        }
        _ => Ok(None),
    }
}

/// Appends the body to the part file; returns the part's length at the end of the body.
fn copy(
    mut body: impl Read,
    mut file: std::fs::File,
    files: &PartFiles,
    progress: &mut Progress,
    url: &str,
) -> Result<u64, AttemptError> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(AttemptError::network(
                    url,
                    format!("the transfer broke off at {}: {e}", size(files.part_len())),
                ))
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| FetchError::write(&files.part, e))?;
        if let Some(line) = progress.add(n as u64) {
            log(line);
        }
    }
    Ok(files.part_len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn range_and_validator_headers() {
        let h = headers(&[("content-range", "bytes 100-999/1000")]);
        assert_eq!(content_range(&h), Some((100, Some(1000))));
        let h = headers(&[("content-range", "bytes 5-9/*")]);
        assert_eq!(content_range(&h), Some((5, None)));
        assert_eq!(content_range(&headers(&[("content-range", "junk")])), None);
        let h = headers(&[("content-range", "bytes */1000")]);
        assert_eq!((content_range(&h), complete_size(&h)), (None, Some(1000)));
        let h = headers(&[("etag", "W/\"x\""), ("last-modified", "Mon, 1 Jan 2024")]);
        assert_eq!(validator(&h).as_deref(), Some("Mon, 1 Jan 2024"));
        assert_eq!(
            validator(&headers(&[("etag", "\"v1\"")])).as_deref(),
            Some("\"v1\"")
        );
    }
}
