//! cloud-init's own config-drive and NoCloud readers (Debian's cloud-init package, run with
//! Debian's python3) parse every image and return the user's data.
//!
//! The package is unpacked (not installed: it would run on this machine's next boot) by
//! `scripts/setup` into /var/cache/berth/cloud-init, or `$BERTH_CLOUDINIT_DIR`. Without it the
//! tests fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use seed::metadata::instance_uuid;
use seed::Format;
use serde_json::Value;

fn cloudinit_pythonpath() -> PathBuf {
    let root = std::env::var_os("BERTH_CLOUDINIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth/cloud-init"));
    let pkgs = root.join("usr/lib/python3/dist-packages");
    assert!(
        pkgs.join("cloudinit/sources/DataSourceConfigDrive.py")
            .exists(),
        "cloud-init is not unpacked in {}: run scripts/setup",
        root.display()
    );
    pkgs
}

/// Extracts the image with xorriso (the Rock Ridge view a guest's mount gives) and runs the
/// reader script on it.
fn cloudinit_read(dir: &Path, iso: &Path, format: Format, mac: bool) -> Value {
    let tree = iso.with_extension("tree");
    run(Command::new(tool("xorriso", "xorriso"))
        .args(["-abort_on", "WARNING", "-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/"])
        .arg(&tree));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cloudinit_read.py");
    let mut cmd = Command::new(tool("python3", "python3"));
    cmd.env_clear()
        .env("PYTHONPATH", cloudinit_pythonpath())
        .env("PATH", "/usr/bin:/bin")
        .arg(script)
        .arg(format.to_string())
        .arg(&tree);
    if mac {
        cmd.arg(MAC);
    }
    let out = run(cmd.current_dir(dir));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "reader output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check(format: Format) {
    let dir = tempfile::tempdir().unwrap();
    for (name, ud, md_text) in samples() {
        for mac in [true, false] {
            let ctx = format!("{name} {format} mac={mac}");
            let input = input(ud.as_deref(), md_text);
            let iso = build_to(
                dir.path(),
                &format!("{name}-{mac}.iso"),
                &input,
                &options(format, mac),
            );
            let seen = cloudinit_read(dir.path(), &iso, format, mac);

            assert_eq!(
                seen["userdata_hex"],
                hex(ud.as_deref().unwrap_or_default()),
                "{ctx}: user data"
            );
            // Every key the user gave reaches cloud-init unchanged.
            let given = input.metadata.clone().unwrap_or_default();
            for (k, v) in &given {
                assert_eq!(&seen["metadata"][k], v, "{ctx}: metadata key {k}");
            }
            let id = given
                .get("uuid")
                .or_else(|| given.get("instance-id"))
                .and_then(Value::as_str)
                .map_or_else(|| instance_uuid("vm-0"), str::to_string);
            assert_eq!(seen["instance-id"], id, "{ctx}: instance-id");
            let host = given
                .get("hostname")
                .and_then(Value::as_str)
                .unwrap_or("vm-0");
            assert_eq!(seen["metadata"]["local-hostname"], host, "{ctx}: host name");
            if format == Format::ConfigDrive {
                assert_eq!(seen["version"], 2, "{ctx}: read as config drive v2");
            }
            if mac {
                let want = serde_json::json!([{"mac": MAC, "dhcp4": true}]);
                assert_eq!(seen["interfaces"], want, "{ctx}: network");
            } else {
                assert!(
                    seen.get("interfaces").is_none(),
                    "{ctx}: no network description"
                );
            }
        }
    }
}

#[test]
fn cloudinit_reads_config_drive() {
    check(Format::ConfigDrive);
}

#[test]
fn cloudinit_reads_nocloud() {
    check(Format::NoCloud);
}

/// The IPv6 side (a dual-stack or IPv6-only pod) reaches cloud-init as a static address with
/// a default route, DNS servers and search list, in both formats.
#[test]
fn cloudinit_reads_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    for format in [Format::ConfigDrive, Format::NoCloud] {
        for ipv4 in [true, false] {
            let ctx = format!("{format} ipv4={ipv4}");
            let mut opts = options(format, true);
            opts.ipv4 = ipv4;
            opts.ipv6 = Some(seed::Ipv6Seed {
                address: "fd62:6572:7468:0:5054:ff:fe12:3456".parse().unwrap(),
                prefix: 64,
                gateway: "fd62:6572:7468::1".parse().unwrap(),
                dns: vec!["fd00:96::10".parse().unwrap()],
                search: vec!["svc.cluster.local".into()],
            });
            let input = input(Some(b"#cloud-config\n"), None);
            let iso = build_to(
                dir.path(),
                &format!("v6-{format}-{ipv4}.iso"),
                &input,
                &opts,
            );
            let seen = cloudinit_read(dir.path(), &iso, format, true);
            let iface = &seen["interfaces"][0];
            assert_eq!(iface["mac"], MAC, "{ctx}");
            assert_eq!(iface["dhcp4"], ipv4, "{ctx}");
            let v6 = iface["ipv6"].to_string();
            for want in ["fd62:6572:7468:0:5054:ff:fe12:3456", "fd62:6572:7468::1"] {
                assert!(v6.contains(want), "{ctx}: {want} not in {v6}");
            }
            let all = seen.to_string();
            assert!(all.contains("fd00:96::10"), "{ctx}: no DNS server: {all}");
        }
    }
}
