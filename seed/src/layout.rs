//! The files of each drive format: paths, metadata documents and the network description.

use serde_json::json;
use std::collections::BTreeMap;

use crate::metadata::Metadata;
use crate::{Format, MacAddr};

/// The config-drive versions written; cloud-init reads `latest` first.
const CONFIG_DRIVE_VERSIONS: [&str; 2] = ["2012-08-10", "latest"];

/// The image's files (path -> contents) and its volume label.
pub(crate) fn files(
    format: Format,
    metadata: &Metadata,
    userdata: Option<&[u8]>,
    mac: Option<MacAddr>,
) -> (&'static str, BTreeMap<String, Vec<u8>>) {
    let mut files = BTreeMap::new();
    // Serialising a map of JSON values cannot fail.
    let mut md = serde_json::to_vec_pretty(metadata).expect("metadata serialises");
    md.push(b'\n');
    match format {
        Format::ConfigDrive => {
            for version in CONFIG_DRIVE_VERSIONS {
                let dir = format!("openstack/{version}");
                files.insert(format!("{dir}/meta_data.json"), md.clone());
                if let Some(ud) = userdata {
                    files.insert(format!("{dir}/user_data"), ud.to_vec());
                }
                if let Some(mac) = mac {
                    files.insert(format!("{dir}/network_data.json"), network_data(mac));
                }
            }
            ("config-2", files)
        }
        Format::NoCloud => {
            // JSON is YAML, and cloud-init reads meta-data with a YAML loader.
            files.insert("meta-data".into(), md);
            // NoCloud needs a user-data file even when there is nothing in it.
            files.insert("user-data".into(), userdata.unwrap_or_default().to_vec());
            if let Some(mac) = mac {
                files.insert("network-config".into(), network_config(mac).into_bytes());
            }
            ("cidata", files)
        }
    }
}

/// OpenStack `network_data.json`: one physical link, matched by MAC, configured by DHCP.
fn network_data(mac: MacAddr) -> Vec<u8> {
    let doc = json!({
        "links": [{
            "id": "eth0",
            "type": "phy",
            "ethernet_mac_address": mac.to_string(),
        }],
        "networks": [{
            "id": "network0",
            "type": "ipv4_dhcp",
            "link": "eth0",
            "network_id": "network0",
        }],
        "services": [],
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("network data serialises");
    bytes.push(b'\n');
    bytes
}

/// NoCloud network config version 2: DHCP on the NIC with `mac`.
fn network_config(mac: MacAddr) -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    dhcp4: true\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_drive_layout() {
        let md = Metadata::new();
        let mac = Some("52:54:00:00:00:01".parse().unwrap());
        let (label, f) = files(Format::ConfigDrive, &md, Some(b"#!/bin/sh\n"), mac);
        assert_eq!(label, "config-2");
        let names: Vec<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "openstack/2012-08-10/meta_data.json",
                "openstack/2012-08-10/network_data.json",
                "openstack/2012-08-10/user_data",
                "openstack/latest/meta_data.json",
                "openstack/latest/network_data.json",
                "openstack/latest/user_data",
            ]
        );
        let (_, f) = files(Format::ConfigDrive, &md, None, None);
        assert_eq!(f.len(), 2, "no user data, no MAC: only meta_data.json");
    }

    #[test]
    fn nocloud_layout() {
        let (label, f) = files(Format::NoCloud, &Metadata::new(), None, None);
        assert_eq!(label, "cidata");
        assert_eq!(f["user-data"], b"");
        assert!(!f.contains_key("network-config"));
    }
}
