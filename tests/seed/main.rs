//! `berth seed` from the outside: exit codes 0, 3 and 8, one `berth: ` line on stderr, and an
//! image that matches what the library builds. (The image itself is tested in seed/tests.)

use std::path::Path;
use std::process::{Command, Output};

fn berth(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("seed")
        .args(args)
        .current_dir(dir)
        .env_remove("SEED_FORMAT")
        .env("HOSTNAME", "vm-0")
        .output()
        .expect("run berth")
}

/// The single stderr line, checked to start with `berth: `.
fn one_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    assert!(err.starts_with("berth: "), "{err:?}");
    err.trim_end().to_string()
}

/// A scratch directory, removed when dropped (the root package has no tempfile dependency).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A scratch directory holding user data `ud` and metadata `md`.
fn setup() -> TempDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("berth-seed-cli-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ud"), "#cloud-config\nfqdn: a.example\n").unwrap();
    std::fs::write(dir.join("md"), "{\"uuid\": \"u-1\"}\n").unwrap();
    TempDir(dir)
}

#[test]
fn builds_a_config_drive_and_a_nocloud_drive() {
    let dir = setup();
    let d = dir.path();
    let base = [
        "--userdata",
        "ud",
        "--metadata",
        "md",
        "--mac",
        "52:54:00:12:34:56",
    ];
    let out = berth(&[&base[..], &["--output", "c2.iso"]].concat(), d);
    assert_eq!(out.status.code(), Some(0), "{}", one_line(&out));
    assert!(one_line(&out).contains("wrote config-2 seed drive c2.iso for host vm-0"));

    let input = seed::read(&seed::Sources {
        userdata: d.join("ud"),
        metadata: d.join("md"),
    })
    .unwrap()
    .unwrap();
    let opts = seed::Options {
        format: seed::Format::ConfigDrive,
        hostname: "vm-0".into(),
        mac: Some("52:54:00:12:34:56".parse().unwrap()),
        ipv6: None,
        ipv4: true,
    };
    let want = seed::build_image(&input, &opts).unwrap();
    assert!(
        std::fs::read(d.join("c2.iso")).unwrap() == want,
        "CLI and library images differ"
    );

    // --format, or $SEED_FORMAT when --format is absent.
    let out = berth(
        &[&base[..], &["--format", "nocloud", "--output", "nc.iso"]].concat(),
        d,
    );
    assert_eq!(out.status.code(), Some(0), "{}", one_line(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "seed",
            "--userdata",
            "ud",
            "--hostname",
            "h1",
            "--output",
            "env.iso",
        ])
        .env("SEED_FORMAT", "nocloud")
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", one_line(&out));
    let img = std::fs::read(d.join("env.iso")).unwrap();
    assert_eq!(seed::isoread::volume_label(&img, false).unwrap(), "cidata");
}

#[test]
fn bad_input_exits_8_with_the_fix() {
    let dir = setup();
    let d = dir.path();
    std::fs::write(d.join("bad"), "uuid: a\nlist: [1, 2\n").unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--metadata", "bad"], "invalid YAML in bad at line "),
        (
            &["--userdata", "ud", "--mac", "52:54"],
            "invalid MAC address \"52:54\"; give six hex pairs",
        ),
        (
            &["--userdata", "ud", "--format", "iso"],
            "unknown seed format \"iso\"; use config-2 or nocloud",
        ),
        (
            &["--userdata", "ud", "--hostname", "a b"],
            "invalid host name \"a b\"",
        ),
        (&["--metadata", "big"], "big is over the 1048576-byte limit"),
    ];
    std::fs::write(d.join("big"), vec![b'#'; (1 << 20) + 1]).unwrap();
    for (args, want) in cases {
        let out = berth(&[args, &["--output", "o.iso"]].concat(), d);
        let line = one_line(&out);
        assert_eq!(out.status.code(), Some(8), "{args:?}: {line}");
        assert!(
            line.starts_with(&format!("berth: {want}")),
            "{args:?}: {line}"
        );
        assert!(!d.join("o.iso").exists(), "{args:?}: nothing written");
    }
}

#[test]
fn missing_files_exit_3() {
    let dir = setup();
    let d = dir.path();
    let out = berth(&["--userdata", "nope", "--output", "o.iso"], d);
    let line = one_line(&out);
    assert_eq!(out.status.code(), Some(3), "{line}");
    assert!(
        line.contains("cannot open nope") && line.contains("check the path"),
        "{line}"
    );

    // No files at all (the defaults /userdata and /metadata are absent here): no drive.
    if !Path::new("/userdata").exists() && !Path::new("/metadata").exists() {
        let out = berth(&["--output", "o.iso"], d);
        let line = one_line(&out);
        assert_eq!(out.status.code(), Some(3), "{line}");
        assert!(
            line.contains("no seed data") && line.contains("pass --userdata"),
            "{line}"
        );
    }
    // An output directory that does not exist.
    let out = berth(&["--userdata", "ud", "--output", "no/dir/o.iso"], d);
    let line = one_line(&out);
    assert_eq!(out.status.code(), Some(3), "{line}");
    assert!(
        line.starts_with("berth: cannot write no/dir/o.iso"),
        "{line}"
    );
    assert!(!d.join("o.iso").exists());
}
