//! `build_drive`: reading the seed files, the size limit, error messages, and atomic output.

mod common;

use std::path::Path;

use seed::{build_drive, Format, SeedError, Sources, MAX_INPUT_BYTES};

fn sources(dir: &Path) -> Sources {
    Sources {
        userdata: dir.join("userdata"),
        metadata: dir.join("metadata"),
    }
}

/// Files in `dir` other than the inputs: the output and any leftovers.
fn others(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "userdata" && n != "metadata")
        .collect();
    v.sort();
    v
}

#[test]
fn no_files_no_drive() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seed.iso");
    let got = build_drive(
        &sources(dir.path()),
        &common::options(Format::ConfigDrive, true),
        &out,
    );
    assert!(got.unwrap().is_none());
    assert!(others(dir.path()).is_empty());
}

#[test]
fn either_file_alone_makes_a_drive() {
    for name in ["userdata", "metadata"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), "a: 1\n").unwrap();
        let out = dir.path().join("seed.iso");
        let got = build_drive(
            &sources(dir.path()),
            &common::options(Format::NoCloud, false),
            &out,
        );
        assert_eq!(got.unwrap().as_deref(), Some(out.as_path()));
        assert_eq!(others(dir.path()), ["seed.iso"]);
    }
}

#[test]
fn size_limit_is_one_mib() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seed.iso");
    let opts = common::options(Format::ConfigDrive, false);
    std::fs::write(
        dir.path().join("userdata"),
        vec![b'x'; MAX_INPUT_BYTES as usize],
    )
    .unwrap();
    assert!(build_drive(&sources(dir.path()), &opts, &out)
        .unwrap()
        .is_some());

    std::fs::write(
        dir.path().join("metadata"),
        vec![b' '; MAX_INPUT_BYTES as usize + 1],
    )
    .unwrap();
    let before = std::fs::read(&out).unwrap();
    let e = build_drive(&sources(dir.path()), &opts, &out).unwrap_err();
    assert!(matches!(e, SeedError::TooLarge { .. }), "{e:?}");
    assert!(e.is_bad_input());
    let msg = e.to_string();
    assert!(
        msg.contains("metadata is over the 1048576-byte limit"),
        "{msg}"
    );
    // A refused input leaves the previous drive untouched and no temporary file.
    assert_eq!(std::fs::read(&out).unwrap(), before);
    assert_eq!(others(dir.path()), ["seed.iso"]);
}

#[test]
fn bad_metadata_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("metadata");
    std::fs::write(&md, "uuid: a\nlist: [1, 2\nname: b\n").unwrap();
    let out = dir.path().join("seed.iso");
    let e = build_drive(
        &sources(dir.path()),
        &common::options(Format::ConfigDrive, false),
        &out,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("invalid YAML in {} at line ", md.display())),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(e.is_bad_input());
    assert!(others(dir.path()).is_empty(), "nothing written");

    std::fs::write(&md, "[1, 2]").unwrap();
    let msg = build_drive(
        &sources(dir.path()),
        &common::options(Format::ConfigDrive, false),
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("is a list, not a mapping"), "{msg}");
}

#[test]
fn unreadable_input_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where a file should be: what a ConfigMap mounted without subPath gives.
    std::fs::create_dir(dir.path().join("userdata")).unwrap();
    let e = build_drive(
        &sources(dir.path()),
        &common::options(Format::ConfigDrive, false),
        &dir.path().join("seed.iso"),
    )
    .unwrap_err();
    assert!(matches!(e, SeedError::Read { .. }), "{e:?}");
    assert!(!e.is_bad_input());
    assert!(e.to_string().contains("subPath"), "{e}");
}

#[test]
fn output_is_replaced_atomically() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("userdata"), "#cloud-config\n").unwrap();
    let out = dir.path().join("seed.iso");
    std::fs::write(&out, "old").unwrap();
    build_drive(
        &sources(dir.path()),
        &common::options(Format::ConfigDrive, false),
        &out,
    )
    .unwrap();
    assert_ne!(std::fs::read(&out).unwrap(), b"old");
    assert_eq!(others(dir.path()), ["seed.iso"]);

    // An output directory that does not exist: an error, and nothing left behind.
    let missing = dir.path().join("nope/seed.iso");
    let e = build_drive(
        &sources(dir.path()),
        &common::options(Format::ConfigDrive, false),
        &missing,
    )
    .unwrap_err();
    assert!(matches!(e, SeedError::Write { .. }), "{e:?}");
    assert_eq!(others(dir.path()), ["seed.iso"]);
}

#[test]
fn bad_hostname_and_options_are_refused() {
    let input = common::input(Some(b"x"), None);
    for bad in ["", "a b", "vm_0", &"a".repeat(254)] {
        let mut o = common::options(Format::ConfigDrive, false);
        o.hostname = bad.to_string();
        let e = seed::build_image(&input, &o).unwrap_err();
        assert!(
            matches!(e, SeedError::BadHostname(_)) && e.is_bad_input(),
            "{bad:?}"
        );
    }
    assert!("iso"
        .parse::<Format>()
        .unwrap_err()
        .to_string()
        .contains("use config-2 or nocloud"));
    assert_eq!("NoCloud".parse::<Format>().unwrap(), Format::NoCloud);
    assert_eq!("config-2".parse::<Format>().unwrap(), Format::ConfigDrive);
}
