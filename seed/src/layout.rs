//! The files of each drive format: paths, metadata documents and the network description.

use serde_json::json;
use std::collections::BTreeMap;

use crate::metadata::Metadata;
use crate::{Format, Ipv6Seed, MacAddr, Options};

/// The config-drive versions written; cloud-init reads `latest` first.
const CONFIG_DRIVE_VERSIONS: [&str; 2] = ["2012-08-10", "latest"];

/// The image's files (path -> contents) and its volume label.
pub(crate) fn files(
    format: Format,
    metadata: &Metadata,
    userdata: Option<&[u8]>,
    options: &Options,
) -> (&'static str, BTreeMap<String, Vec<u8>>) {
    let mac = options.mac;
    let (v4, v6) = (options.ipv4, options.ipv6.as_ref());
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
                    files.insert(
                        format!("{dir}/network_data.json"),
                        network_data(mac, v4, v6),
                    );
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
                files.insert(
                    "network-config".into(),
                    network_config(mac, v4, v6).into_bytes(),
                );
            }
            ("cidata", files)
        }
    }
}

/// OpenStack `network_data.json`: one physical link, matched by MAC, configured by DHCP for
/// IPv4 and with the static VM_IP6/64 via VM_GW6 for IPv6.
fn network_data(mac: MacAddr, v4: bool, v6: Option<&Ipv6Seed>) -> Vec<u8> {
    let mut networks = Vec::new();
    let mut services = Vec::new();
    if v4 {
        networks.push(json!({
            "id": "network0",
            "type": "ipv4_dhcp",
            "link": "eth0",
            "network_id": "network0",
        }));
    }
    if let Some(v6) = v6 {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(v6.prefix.min(128)))
            .unwrap_or(0);
        networks.push(json!({
            "id": "network1",
            "type": "ipv6",
            "link": "eth0",
            "network_id": "network1",
            "ip_address": v6.address.to_string(),
            "netmask": std::net::Ipv6Addr::from(mask).to_string(),
            "routes": [{
                "network": "::",
                "netmask": "::",
                "gateway": v6.gateway.to_string(),
            }],
        }));
        for a in &v6.dns {
            services.push(json!({"type": "dns", "address": a.to_string()}));
        }
    }
    let doc = json!({
        "links": [{
            "id": "eth0",
            "type": "phy",
            "ethernet_mac_address": mac.to_string(),
        }],
        "networks": networks,
        "services": services,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("network data serialises");
    bytes.push(b'\n');
    bytes
}

/// NoCloud network config version 2: DHCP on the NIC with `mac`, and the static IPv6 side.
fn network_config(mac: MacAddr, v4: bool, v6: Option<&Ipv6Seed>) -> String {
    let mut s = format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{mac}\"\n    dhcp4: {v4}\n"
    );
    if let Some(v6) = v6 {
        // gateway6 rather than a `routes` entry to ::/0: cloud-init's v2 parser files such
        // a route under the DHCPv4 subnet with a /64 prefix, gateway6 it reads as the IPv6
        // subnet's gateway (netplan accepts both).
        s += &format!(
            "    addresses: [\"{}/{}\"]\n    gateway6: \"{}\"\n",
            v6.address, v6.prefix, v6.gateway
        );
        if !v6.dns.is_empty() || !v6.search.is_empty() {
            let list = |v: Vec<String>| {
                v.iter()
                    .map(|x| format!("\"{x}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let dns = list(v6.dns.iter().map(|a| a.to_string()).collect());
            s += &format!(
                "    nameservers:\n      addresses: [{dns}]\n      search: [{}]\n",
                list(v6.search.clone())
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(mac: Option<MacAddr>, ipv6: Option<Ipv6Seed>) -> Options {
        Options {
            format: Format::ConfigDrive,
            hostname: "vm-0".into(),
            mac,
            ipv4: true,
            ipv6,
        }
    }

    fn v6() -> Ipv6Seed {
        Ipv6Seed {
            address: "fd62:6572:7468::2".parse().unwrap(),
            prefix: 64,
            gateway: "fd62:6572:7468::1".parse().unwrap(),
            dns: vec!["fd00::10".parse().unwrap()],
            search: vec!["svc.cluster.local".into()],
        }
    }

    #[test]
    fn ipv6_network_description() {
        let mac = Some("52:54:00:00:00:01".parse().unwrap());
        let md = Metadata::new();
        let (_, f) = files(Format::ConfigDrive, &md, None, &opts(mac, Some(v6())));
        let nd: serde_json::Value =
            serde_json::from_slice(&f["openstack/latest/network_data.json"]).unwrap();
        assert_eq!(nd["networks"][0]["type"], "ipv4_dhcp");
        let n = &nd["networks"][1];
        assert_eq!(n["type"], "ipv6");
        assert_eq!(n["ip_address"], "fd62:6572:7468::2");
        assert_eq!(n["netmask"], "ffff:ffff:ffff:ffff::");
        assert_eq!(n["routes"][0]["gateway"], "fd62:6572:7468::1");
        assert_eq!(nd["services"][0]["address"], "fd00::10");
        // IPv6-only: no IPv4 network.
        let mut o = opts(mac, Some(v6()));
        o.ipv4 = false;
        let (_, f) = files(Format::NoCloud, &md, None, &o);
        let nc = String::from_utf8(f["network-config"].clone()).unwrap();
        assert_eq!(
            nc,
            "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"52:54:00:00:00:01\"\n    dhcp4: false\n    \
             addresses: [\"fd62:6572:7468::2/64\"]\n    gateway6: \"fd62:6572:7468::1\"\n    \
             nameservers:\n      addresses: [\"fd00::10\"]\n      search: [\"svc.cluster.local\"]\n"
        );
        let (_, f) = files(Format::ConfigDrive, &md, None, &o);
        let nd: serde_json::Value =
            serde_json::from_slice(&f["openstack/latest/network_data.json"]).unwrap();
        assert_eq!(nd["networks"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn config_drive_layout() {
        let md = Metadata::new();
        let mac = Some("52:54:00:00:00:01".parse().unwrap());
        let (label, f) = files(
            Format::ConfigDrive,
            &md,
            Some(b"#!/bin/sh\n"),
            &opts(mac, None),
        );
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
        let (_, f) = files(Format::ConfigDrive, &md, None, &opts(None, None));
        assert_eq!(f.len(), 2, "no user data, no MAC: only meta_data.json");
    }

    #[test]
    fn nocloud_layout() {
        let (label, f) = files(Format::NoCloud, &Metadata::new(), None, &opts(None, None));
        assert_eq!(label, "cidata");
        assert_eq!(f["user-data"], b"");
        assert!(!f.contains_key("network-config"));
    }
}
