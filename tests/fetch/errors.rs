//! Failures: each is exit code 10 with one clear line, retried only when a retry can help.

use std::process::Command;

use crate::server::{Opts, Server};
use crate::{payload, Run, Scratch, LEN};

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
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["fetch", "--target", "/nonexistent/c.qcow2"])
        .env_clear()
        .output()
        .unwrap();
    let err = Run(out).failed();
    assert!(
        err.contains("/nonexistent/c.qcow2 does not exist and IMG_SOURCE is not set"),
        "{err}"
    );
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
