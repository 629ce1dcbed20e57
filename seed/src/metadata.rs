//! The user's metadata (YAML or JSON), parsed into an ordered JSON object and completed with
//! what cloud-init needs.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Format, SeedError};

/// A JSON object whose keys keep the order the user wrote them in.
pub type Metadata = Map<String, Value>;

/// Namespace of the version-5 UUIDs berth derives from host names (a fixed, random UUID).
const BERTH_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6b3f_41d2_9c1e_4d7a_a0f5_2e8c_7d19_b4a6);

/// The instance UUID berth uses for `hostname` when the metadata has none: stable across pod
/// restarts because a StatefulSet pod keeps its host name.
pub fn instance_uuid(hostname: &str) -> String {
    uuid::Uuid::new_v5(&BERTH_NAMESPACE, hostname.as_bytes()).to_string()
}

/// Parses metadata read from `path`. An empty (or blank) file is an empty mapping.
///
/// Text that starts with `{` is read as JSON; if that fails and it is not valid YAML either
/// (YAML flow mappings also start with `{`), the JSON error is reported.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Metadata, SeedError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(bytes, e.valid_up_to());
        syntax(path, "text", line, column, "not valid UTF-8".into())
    })?;
    // A byte order mark is legal in both JSON and YAML files written by editors.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Ok(Metadata::new());
    }
    let value = if text.trim_start().starts_with('{') {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            Err(json) => serde_saphyr::from_str::<Value>(text).map_err(|_| {
                let msg = json.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                syntax(path, "JSON", json.line() as u64, json.column() as u64, msg)
            })?,
        }
    } else {
        serde_saphyr::from_str::<Value>(text).map_err(|e| yaml_error(path, text, &e))?
    };
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Metadata::new()),
        other => Err(SeedError::NotMapping {
            path: path.to_path_buf(),
            found: kind(&other),
        }),
    }
}

fn syntax(path: &Path, syntax: &'static str, line: u64, column: u64, message: String) -> SeedError {
    SeedError::Syntax {
        path: path.to_path_buf(),
        syntax,
        line,
        column,
        message,
    }
}

fn yaml_error(path: &Path, text: &str, e: &serde_saphyr::Error) -> SeedError {
    let plain = e.without_snippet().to_string();
    let first = plain.lines().next().unwrap_or("").trim();
    // The library appends its own position; ours is added by SeedError.
    let message = first.split(" at line ").next().unwrap_or(first);
    // Drop advice addressed to programmers using the library ("set DuplicateKeyPolicy ...").
    let message = message
        .split(", set ")
        .next()
        .unwrap_or(message)
        .to_string();
    let (line, column) = match e.location() {
        Some(loc) if loc.line() > 0 => (loc.line(), loc.column()),
        // Errors without a position (e.g. a budget breach) point at the end of the text.
        _ => line_column(text.as_bytes(), text.len()),
    };
    syntax(path, "YAML", line, column, message)
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(bytes: &[u8], offset: usize) -> (u64, u64) {
    let before = &bytes[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line as u64, column as u64)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Adds what cloud-init needs and the user left out; the user's keys stay as given and first.
///
/// config-2: `uuid` (from `instance-id` if the user gave that, else derived from the host name),
/// `hostname` (from `local-hostname`, else `hostname`) and `name`.
/// NoCloud: `instance-id` (from `uuid`, else derived) and `local-hostname` (from `hostname`).
pub fn complete(mut md: Metadata, format: Format, hostname: &str) -> Metadata {
    let text = |md: &Metadata, key: &str| match md.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let id = text(&md, "uuid")
        .or_else(|| text(&md, "instance-id"))
        .unwrap_or_else(|| instance_uuid(hostname));
    match format {
        Format::ConfigDrive => {
            let host = text(&md, "hostname")
                .or_else(|| text(&md, "local-hostname"))
                .unwrap_or_else(|| hostname.to_string());
            fill(&mut md, "uuid", id);
            fill(&mut md, "hostname", host.clone());
            fill(&mut md, "name", host);
        }
        Format::NoCloud => {
            let host = text(&md, "local-hostname")
                .or_else(|| text(&md, "hostname"))
                .unwrap_or_else(|| hostname.to_string());
            fill(&mut md, "instance-id", id);
            fill(&mut md, "local-hostname", host);
        }
    }
    md
}

/// Sets `key` unless the user gave it a non-empty value.
fn fill(md: &mut Metadata, key: &str, value: String) {
    match md.get(key) {
        Some(Value::Null) | None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => return,
    }
    md.insert(key.to_string(), Value::String(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Metadata, SeedError> {
        parse(Path::new("/metadata"), text.as_bytes())
    }

    #[test]
    fn json_keeps_key_order_and_values() {
        let md = p(r#"{"z": 1, "a": {"y": [1, 2.5, "x"]}, "m": null}"#).unwrap();
        assert_eq!(md.keys().collect::<Vec<_>>(), ["z", "a", "m"]);
        assert_eq!(md["a"]["y"][1], serde_json::json!(2.5));
    }

    #[test]
    fn yaml_mapping_and_flow_mapping() {
        let md = p("uuid: abc\nmeta:\n  role: db\n").unwrap();
        assert_eq!(md["meta"]["role"], "db");
        assert_eq!(p("{uuid: abc, n: 2}").unwrap()["n"], 2);
    }

    #[test]
    fn empty_is_empty_mapping() {
        assert!(p("").unwrap().is_empty());
        assert!(p("  \n# only a comment\n").unwrap().is_empty());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = p("{\n  \"uuid\": \"x\",\n  \"a\" 1\n}").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("invalid JSON in /metadata at line 3, column 7"),
            "{msg}"
        );
        let e = p("a: 1\nb: [1, 2\nc: 3\n").unwrap_err().to_string();
        assert!(e.starts_with("invalid YAML in /metadata at line "), "{e}");
        let e = p("a: 1\n  b: 2\n").unwrap_err().to_string();
        assert!(e.contains("at line 2, column"), "{e}");
        let e = p("a: 1\na: 2\n").unwrap_err().to_string();
        let want = "duplicate mapping key: a; fix the metadata (YAML or a JSON object)";
        assert!(e.ends_with(want), "{e}");
        let e = parse(Path::new("/m"), b"a: 1\nb: \xff\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2, column 4"), "{e}");
    }

    #[test]
    fn non_mappings_are_refused() {
        for (text, found) in [
            ("- a\n- b\n", "a list"),
            ("42", "a number"),
            ("hello", "a string"),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(&format!("is {found}, not a mapping")), "{e}");
        }
    }

    #[test]
    fn completion_fills_only_missing_keys() {
        let md = complete(
            p(r#"{"b": 1, "uuid": "u-1"}"#).unwrap(),
            Format::ConfigDrive,
            "vm-0",
        );
        assert_eq!(
            md.keys().collect::<Vec<_>>(),
            ["b", "uuid", "hostname", "name"]
        );
        assert_eq!(
            (md["uuid"].as_str(), md["name"].as_str()),
            (Some("u-1"), Some("vm-0"))
        );
        let md = complete(p("hostname: web\n").unwrap(), Format::NoCloud, "vm-0");
        assert_eq!(md["local-hostname"], "web");
        assert_eq!(md["instance-id"], instance_uuid("vm-0"));
        let md = complete(
            p("instance-id: i-9\n").unwrap(),
            Format::ConfigDrive,
            "vm-0",
        );
        assert_eq!(md["uuid"], "i-9");
    }

    #[test]
    fn derived_uuid_is_stable_and_per_host() {
        assert_eq!(instance_uuid("vm-0"), instance_uuid("vm-0"));
        assert_ne!(instance_uuid("vm-0"), instance_uuid("vm-1"));
        assert_eq!(instance_uuid("vm-0").len(), 36);
    }
}
