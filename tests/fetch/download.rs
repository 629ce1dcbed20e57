//! Downloads: complete, resumed, restarted, verified, killed and resumed, shared, redirected.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{Opts, Server};
use crate::{payload, sha_hex, wait_for_part, Run, Scratch, LEN};

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
    s.assert_image("c.qcow2", &data);
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
    s.assert_image("c.qcow2", &data);
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
    s.assert_image("c.qcow2", &data);
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
    s.assert_image("c.qcow2", &data);
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

#[test]
fn sigkill_mid_download_leaves_only_a_part_then_resumes() {
    let s = Scratch::new();
    let data = payload(LEN);
    let srv = Server::start(data.clone(), Opts::trickling());
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
    s.assert_image("c.qcow2", &data);
    let last = srv.seen().pop().unwrap();
    assert_eq!(last.range, Some(format!("bytes={left}-")));
    assert_eq!(s.listing(), vec![".c.qcow2.lock", "c.qcow2"]);
}

#[test]
fn a_complete_part_is_committed_without_downloading_again() {
    // As if killed after the last byte but before the rename.
    let s = Scratch::new();
    let data = payload(LEN);
    let srv = Server::start(data.clone(), Opts::default());
    std::fs::write(s.image(".c.qcow2.part"), &data).unwrap();
    std::fs::write(s.image(".c.qcow2.part.validator"), "\"berth-test-v1\"").unwrap();
    let run = s.fetch(
        &srv.url("/img"),
        "c.qcow2",
        &[("IMG_SHA256", &sha_hex(&data))],
    );
    run.ok();
    assert!(
        run.stderr().contains("already complete"),
        "{}",
        run.stderr()
    );
    s.assert_image("c.qcow2", &data);
    assert_eq!(srv.seen()[0].range, Some(format!("bytes={LEN}-")));
    assert_eq!(srv.seen().len(), 1);
    assert_eq!(s.listing(), vec![".c.qcow2.lock", "c.qcow2"]);
    // A part longer than the image is not complete: it starts over.
    std::fs::write(s.image(".d.qcow2.part"), payload(LEN + 10)).unwrap();
    s.fetch(&srv.url("/img"), "d.qcow2", &[]).ok();
    s.assert_image("d.qcow2", &data);
}

#[test]
fn concurrent_fetchers_download_once() {
    let s = Scratch::new();
    let data = payload(LEN);
    let srv = Server::start(data.clone(), Opts::trickling());
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
    s.assert_image("c.qcow2", &data);
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
    s.assert_image("c.qcow2", &data);
    let paths: Vec<String> = srv.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/redirect-abs", "/redirect", "/img"]);
    let err = s.fetch(&srv.url("/loop"), "d.qcow2", &[]).failed();
    assert!(err.contains("redirected more than 10 times"), "{err}");
}
