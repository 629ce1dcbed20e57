//! The files of each drive format: paths, metadata documents and the network description.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::json;

use crate::metadata::Metadata;
use crate::{Format, SeedError};

/// The config-drive versions written; cloud-init reads `latest` first.
const CONFIG_DRIVE_VERSIONS: [&str; 2] = ["2012-08-10", "latest"];

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = SeedError;

    /// Parses `52:54:00:12:34:56` (or with `-` separators), any case.
    fn from_str(s: &str) -> Result<Self, SeedError> {
        let bad = || SeedError::BadMac(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    /// Lowercase and colon-separated, the form cloud-init compares with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The image's files (path -> contents) and its volume label.
pub(crate) fn files(
    format: Format,
    metadata: &Metadata,
    userdata: Option<&[u8]>,
    mac: Option<Mac>,
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
fn network_data(mac: Mac) -> Vec<u8> {
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
fn network_config(mac: Mac) -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    dhcp4: true\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints_lowercase() {
        let mac: Mac = "52:54:00:AB:cd:0F".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<Mac>().unwrap(), mac);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

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
