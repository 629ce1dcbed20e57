//! Helpers shared by the seed crate's integration tests: sample inputs, building images into
//! temporary directories, and running the independent readers (which must be installed:
//! `scripts/setup` does it; a missing reader fails the test rather than skipping it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use seed::{Format, Input, Options};

pub const MAC: &str = "52:54:00:12:34:56";

/// A command from the machine, or a failure that says how to install it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: run scripts/setup (Debian package {package})");
}

/// Runs a command, failing the test with its stderr if it does not succeed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn options(format: Format, mac: bool) -> Options {
    Options {
        format,
        hostname: "vm-0".into(),
        mac: mac.then(|| MAC.parse().unwrap()),
        ipv6: None,
        ipv4: true,
    }
}

/// Parses metadata text the way `seed::read` does.
pub fn input(userdata: Option<&[u8]>, metadata: Option<&str>) -> Input {
    Input {
        userdata: userdata.map(<[u8]>::to_vec),
        metadata: metadata
            .map(|m| seed::metadata::parse(Path::new("/metadata"), m.as_bytes()).unwrap()),
    }
}

/// Builds the image into `dir/name` and returns its path.
pub fn build_to(dir: &Path, name: &str, input: &Input, options: &Options) -> PathBuf {
    let image = seed::build_image(input, options).expect("build image");
    let path = dir.join(name);
    std::fs::write(&path, image).unwrap();
    path
}

/// A gzip member holding "hello\n" (cloud-init accepts gzipped user data): binary, with NULs.
pub const GZIP_USERDATA: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7,
    0x02, 0x00, 0x20, 0x30, 0x3a, 0x36, 0x06, 0x00, 0x00, 0x00,
];

pub const MIME_USERDATA: &[u8] = b"Content-Type: multipart/mixed; boundary=\"==B==\"\r\n\
MIME-Version: 1.0\r\n\r\n--==B==\r\nContent-Type: text/cloud-config\r\n\r\n\
#cloud-config\r\nruncmd: [[touch, /tmp/x]]\r\n--==B==\r\n\
Content-Type: text/x-shellscript\r\n\r\n#!/bin/sh\r\necho hi\r\n--==B==--\r\n";

/// A sample case: name, user data, metadata text.
pub type Sample = (&'static str, Option<Vec<u8>>, Option<&'static str>);

/// The sample cases every reader test runs.
pub fn samples() -> Vec<Sample> {
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        (
            "contract-example",
            Some(b"#cloud-config\nfqdn: cirros.example.com\n".to_vec()),
            Some("{ \"uuid\": \"093772fe-d6a3-4eea-84bc-5966661a0c3e\" }\n"),
        ),
        (
            "yaml-unicode",
            Some(b"#!/bin/sh\necho 'h\xc3\xa9llo'\n".to_vec()),
            Some("instance-id: i-42\nhostname: w\u{e9}b\nlabels:\n  - a\n  - \u{1f680}\n"),
        ),
        ("gzip-no-metadata", Some(GZIP_USERDATA.to_vec()), None),
        ("mime-multipart", Some(MIME_USERDATA.to_vec()), Some("")),
        (
            "metadata-only",
            None,
            Some("name: db\nmeta: {role: primary}\n"),
        ),
        ("big-binary", Some(big), Some("{\"uuid\": \"u-1\"}")),
        ("empty-userdata", Some(Vec::new()), None),
    ]
}
