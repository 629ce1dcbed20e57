//! Independent readers agree on every image: isoinfo (Rock Ridge and Joliet listings and
//! extraction), blkid (label), xorriso and 7z (extraction), and this crate's own reader; and
//! what they read is the user's data, byte for byte, in the contract's layout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::*;
use seed::isoread::{self, Namespace, Node};
use seed::Format;

type Tree = BTreeMap<String, Node>;

fn isoinfo_list(iso: &Path, flag: &str) -> BTreeSet<String> {
    let out = run(Command::new(tool("isoinfo", "genisoimage"))
        .args([flag, "-f", "-i"])
        .arg(iso));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches('/').to_string())
        .collect()
}

fn isoinfo_extract(iso: &Path, flag: &str, path: &str) -> Vec<u8> {
    run(Command::new(tool("isoinfo", "genisoimage"))
        .args([flag, "-x", &format!("/{path}"), "-i"])
        .arg(iso))
    .stdout
}

/// Every file and directory under `root`, as paths relative to it.
fn dir_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &path, out);
            } else {
                out.insert(rel, Node::File(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

fn blkid(iso: &Path, tag: &str) -> String {
    let out = run(Command::new(tool("blkid", "util-linux"))
        .args(["-p", "-o", "value", "-s", tag])
        .arg(iso));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The paths the contract's layout requires for this input.
fn expected_paths(format: Format, userdata: bool, mac: bool) -> BTreeSet<String> {
    let mut p = BTreeSet::new();
    match format {
        Format::ConfigDrive => {
            p.insert("openstack".to_string());
            for v in ["2012-08-10", "latest"] {
                p.insert(format!("openstack/{v}"));
                p.insert(format!("openstack/{v}/meta_data.json"));
                if userdata {
                    p.insert(format!("openstack/{v}/user_data"));
                }
                if mac {
                    p.insert(format!("openstack/{v}/network_data.json"));
                }
            }
        }
        Format::NoCloud => {
            p.extend(["meta-data".to_string(), "user-data".to_string()]);
            if mac {
                p.insert("network-config".to_string());
            }
        }
    }
    p
}

fn check_image(
    dir: &Path,
    name: &str,
    userdata: Option<&[u8]>,
    md: Option<&str>,
    format: Format,
    mac: bool,
) {
    let input = input(userdata, md);
    let iso = build_to(dir, &format!("{name}.iso"), &input, &options(format, mac));
    let img = std::fs::read(&iso).unwrap();
    let ctx = format!("{name} {format} mac={mac}");

    // Our reader: both name spaces hold the same tree, in the contract's layout.
    let ours = isoread::read_tree(&img, Namespace::RockRidge).unwrap();
    assert_eq!(
        isoread::read_tree(&img, Namespace::Joliet).unwrap(),
        ours,
        "{ctx}: Joliet"
    );
    let paths: BTreeSet<String> = ours.keys().cloned().collect();
    assert_eq!(
        paths,
        expected_paths(format, userdata.is_some(), mac),
        "{ctx}: layout"
    );

    // User data byte for byte, wherever the layout puts it.
    let ud_paths: Vec<&String> = paths
        .iter()
        .filter(|p| p.ends_with("user_data") || *p == "user-data")
        .collect();
    for p in &ud_paths {
        assert_eq!(
            ours[*p],
            Node::File(userdata.unwrap_or_default().to_vec()),
            "{ctx}: {p}"
        );
    }
    // Metadata: valid JSON object whose first keys are the user's, in the user's order.
    let md_path = if format == Format::ConfigDrive {
        "openstack/latest/meta_data.json"
    } else {
        "meta-data"
    };
    let Node::File(md_bytes) = &ours[md_path] else {
        panic!("{ctx}: {md_path} is a directory")
    };
    let written: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(md_bytes).unwrap();
    let given = input.metadata.clone().unwrap_or_default();
    let n = given.len();
    assert_eq!(
        written.iter().take(n).collect::<Vec<_>>(),
        given.iter().collect::<Vec<_>>(),
        "{ctx}"
    );

    // isoinfo: Rock Ridge and Joliet listings and extraction agree with ours.
    for flag in ["-R", "-J"] {
        assert_eq!(
            isoinfo_list(&iso, flag),
            paths,
            "{ctx}: isoinfo {flag} listing"
        );
        for (p, node) in &ours {
            if let Node::File(bytes) = node {
                assert_eq!(
                    &isoinfo_extract(&iso, flag, p),
                    bytes,
                    "{ctx}: isoinfo {flag} -x {p}"
                );
            }
        }
    }

    // xorriso (Rock Ridge) and 7z extraction agree with ours.
    let xo = dir.join(format!("{name}.xorriso"));
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-abort_on", "WARNING", "-osirrox", "on", "-indev"])
        .arg(&iso)
        .args(["-extract", "/"])
        .arg(&xo));
    assert_eq!(dir_tree(&xo), ours, "{ctx}: xorriso extraction");
    let sz = dir.join(format!("{name}.7z"));
    run(Command::new(tool("7z", "p7zip-full"))
        .args(["x", "-y"])
        .arg(format!("-o{}", sz.display()))
        .arg(&iso));
    assert_eq!(dir_tree(&sz), ours, "{ctx}: 7z extraction");

    // blkid: the label cloud-init looks for.
    let label = if format == Format::ConfigDrive {
        "config-2"
    } else {
        "cidata"
    };
    assert_eq!(blkid(&iso, "LABEL"), label, "{ctx}: blkid label");
    assert_eq!(blkid(&iso, "TYPE"), "iso9660", "{ctx}: blkid type");
    assert_eq!(isoread::volume_label(&img, false).unwrap(), label);
    assert_eq!(isoread::volume_label(&img, true).unwrap(), label);
}

#[test]
fn readers_agree_on_config_drive_images() {
    let dir = tempfile::tempdir().unwrap();
    for (name, ud, md) in samples() {
        for mac in [true, false] {
            let n = format!("c2-{name}-{mac}");
            check_image(dir.path(), &n, ud.as_deref(), md, Format::ConfigDrive, mac);
        }
    }
}

#[test]
fn readers_agree_on_nocloud_images() {
    let dir = tempfile::tempdir().unwrap();
    for (name, ud, md) in samples() {
        for mac in [true, false] {
            let n = format!("nc-{name}-{mac}");
            check_image(dir.path(), &n, ud.as_deref(), md, Format::NoCloud, mac);
        }
    }
}

#[test]
fn isoinfo_reports_rock_ridge_and_joliet() {
    let dir = tempfile::tempdir().unwrap();
    let iso = build_to(
        dir.path(),
        "d.iso",
        &input(Some(b"x"), None),
        &options(Format::ConfigDrive, true),
    );
    let out = run(Command::new(tool("isoinfo", "genisoimage"))
        .args(["-d", "-i"])
        .arg(&iso));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Volume id: config-2"), "{text}");
    assert!(text.contains("Joliet with UCS level 3 found"), "{text}");
    assert!(
        text.contains("Rock Ridge signatures version 1 found"),
        "{text}"
    );
}
