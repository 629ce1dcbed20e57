//! Property tests: random user data and metadata round-trip through the image (read back with
//! the crate's own reader, which does not share code with the writer), and two builds of the
//! same input are byte-identical.

mod common;

use std::path::Path;

use proptest::prelude::*;
use seed::isoread::{read_tree, Namespace, Node};
use seed::{build_image, Format, Input, Metadata, Options};
use serde_json::Value;

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::ConfigDrive), Just(Format::NoCloud)]
}

fn opts(format: Format, mac: bool) -> Options {
    common::options(format, mac)
}

fn userdata_paths(format: Format) -> &'static [&'static str] {
    match format {
        Format::ConfigDrive => &[
            "openstack/2012-08-10/user_data",
            "openstack/latest/user_data",
        ],
        Format::NoCloud => &["user-data"],
    }
}

fn metadata_path(format: Format) -> &'static str {
    match format {
        Format::ConfigDrive => "openstack/latest/meta_data.json",
        Format::NoCloud => "meta-data",
    }
}

/// JSON values of a few levels, with arbitrary Unicode strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn userdata_round_trips_byte_for_byte(
        ud in prop::collection::vec(any::<u8>(), 0..9000),
        format in format(),
        mac in any::<bool>(),
    ) {
        let input = Input { userdata: Some(ud.clone()), metadata: None };
        let img = build_image(&input, &opts(format, mac)).unwrap();
        for ns in [Namespace::RockRidge, Namespace::Joliet] {
            let tree = read_tree(&img, ns).unwrap();
            for p in userdata_paths(format) {
                prop_assert_eq!(&tree[*p], &Node::File(ud.clone()), "{:?} {}", ns, p);
            }
        }
    }

    #[test]
    fn json_metadata_keys_and_values_round_trip(
        entries in prop::collection::vec((any::<String>(), json_value()), 0..6),
        format in format(),
    ) {
        let given: Metadata = entries.into_iter().collect();
        let text = serde_json::to_string(&given).unwrap();
        let parsed = seed::metadata::parse(Path::new("/metadata"), text.as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &given);
        let img = build_image(&Input { userdata: None, metadata: Some(parsed) }, &opts(format, false)).unwrap();
        let tree = read_tree(&img, Namespace::RockRidge).unwrap();
        let Node::File(bytes) = &tree[metadata_path(format)] else { panic!("not a file") };
        let written: Metadata = serde_json::from_slice(bytes).unwrap();
        // The user's keys come first, in the user's order, with the user's values...
        let head: Vec<_> = written.iter().take(given.len()).collect();
        prop_assert_eq!(head, given.iter().collect::<Vec<_>>());
        // ...and what berth adds is only what was missing.
        for (k, v) in written.iter().skip(given.len()) {
            prop_assert!(given.get(k).is_none_or(|g| g.is_null() || g == ""), "{} overwrote {:?}", k, v);
        }
    }

    #[test]
    fn two_builds_are_byte_identical(
        ud in prop::option::of(prop::collection::vec(any::<u8>(), 0..5000)),
        md in prop::collection::vec(("[a-z]{1,8}", "[ -~]{0,20}"), 0..5),
        format in format(),
        mac in any::<bool>(),
    ) {
        let metadata: Metadata = md.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        let input = Input { userdata: ud, metadata: Some(metadata) };
        let a = build_image(&input, &opts(format, mac)).unwrap();
        let b = build_image(&input, &opts(format, mac)).unwrap();
        prop_assert!(a == b);
    }

    #[test]
    fn metadata_parser_never_panics(text in "\\PC{0,200}") {
        let _ = seed::metadata::parse(Path::new("/metadata"), text.as_bytes());
    }
}

/// Timestamps are pinned: builds a second apart are identical too.
#[test]
fn builds_across_seconds_are_identical() {
    let input = common::input(Some(b"#cloud-config\n"), Some("uuid: x\n"));
    for format in [Format::ConfigDrive, Format::NoCloud] {
        let a = build_image(&input, &opts(format, true)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = build_image(&input, &opts(format, true)).unwrap();
        assert!(a == b, "{format}: builds differ");
    }
}

/// Sizes around sector boundaries, up to the 1 MiB limit.
#[test]
fn userdata_at_sector_boundaries_round_trips() {
    for len in [0, 1, 2047, 2048, 2049, 4096, 65_535, 1 << 20] {
        let ud: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
        let input = Input {
            userdata: Some(ud.clone()),
            metadata: None,
        };
        let img = build_image(&input, &opts(Format::ConfigDrive, false)).unwrap();
        let tree = read_tree(&img, Namespace::RockRidge).unwrap();
        assert_eq!(
            tree["openstack/latest/user_data"],
            Node::File(ud),
            "len {len}"
        );
        assert_eq!(img.len() % 2048, 0);
    }
}
