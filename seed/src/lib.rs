//! berth's cloud-init seed drive: the `/userdata` and `/metadata` ConfigMap files turned into
//! an ISO9660 image (Joliet + Rock Ridge) that the VMM attaches as a read-only disk.
//!
//! Two layouts are written: the OpenStack config drive (label `config-2`, the default and the
//! original Berth's) and NoCloud (label `cidata`). User data is copied byte for byte; metadata
//! (YAML or JSON) is completed with what cloud-init needs. The same input always gives the same
//! image bytes. See `seed/README.md` for the operator's view.

mod iso;
pub mod isoread;
mod layout;
pub mod metadata;

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use ethmac::{MacAddr, MacParseError};
pub use metadata::Metadata;

/// Largest user data or metadata file accepted: 1 MiB, Kubernetes' own limit for a ConfigMap.
pub const MAX_INPUT_BYTES: u64 = 1 << 20;

/// The drive's layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// OpenStack config drive, label `config-2`.
    #[default]
    ConfigDrive,
    /// NoCloud, label `cidata`.
    NoCloud,
}

impl FromStr for Format {
    type Err = SeedError;

    fn from_str(s: &str) -> Result<Self, SeedError> {
        match s.to_ascii_lowercase().as_str() {
            "config-2" | "configdrive" | "config-drive" | "openstack" => Ok(Format::ConfigDrive),
            "nocloud" | "cidata" => Ok(Format::NoCloud),
            _ => Err(SeedError::BadFormat(s.to_string())),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::ConfigDrive => "config-2",
            Format::NoCloud => "nocloud",
        })
    }
}

/// Why a seed drive could not be built. Each message names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// An input file exists but cannot be read.
    #[error("cannot read {}: {source}; {}", path.display(), read_fix(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An input file is larger than [`MAX_INPUT_BYTES`].
    #[error("{} is over the {limit}-byte limit for seed files; keep it under 1 MiB (gzip user data, cloud-init unpacks it)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// Metadata that is not valid YAML or JSON.
    #[error("invalid {syntax} in {} at line {line}, column {column}: {message}; fix the metadata (YAML or a JSON object)", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// "YAML", "JSON" or "text".
        syntax: &'static str,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
        /// The parser's message.
        message: String,
    },
    /// Metadata that parses but is not a mapping.
    #[error("metadata in {} is {found}, not a mapping; write key: value pairs (YAML) or a JSON object", path.display())]
    NotMapping {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        found: &'static str,
    },
    /// A host name cloud-init cannot use.
    #[error("invalid host name {0:?}; use letters, digits, '-' and '.', at most 253 characters")]
    BadHostname(String),
    /// An unknown drive format.
    #[error("unknown seed format {0:?}; use config-2 or nocloud")]
    BadFormat(String),
    /// The image cannot be written.
    #[error("cannot write {}: {source}; check that its directory exists and is writable", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The ISO writer failed (a bug, not bad input).
    #[error(transparent)]
    Image(#[from] iso::WriteError),
}

fn read_fix(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "check its permissions",
        std::io::ErrorKind::IsADirectory => "mount the ConfigMap key as a file (subPath)",
        _ => "check the file",
    }
}

impl SeedError {
    /// True when the input (metadata, user data, options) is at fault rather than the
    /// file system: the `berth` command exits with code 8 for these.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            SeedError::Read { .. } | SeedError::Write { .. } | SeedError::Image(_)
        )
    }
}

/// Where the seed files are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// User data, passed through byte for byte. Default `/userdata`.
    pub userdata: PathBuf,
    /// Metadata, YAML or JSON. Default `/metadata`.
    pub metadata: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            userdata: PathBuf::from("/userdata"),
            metadata: PathBuf::from("/metadata"),
        }
    }
}

/// What the drive describes besides the user's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Layout of the drive.
    pub format: Format,
    /// The VM's host name (the pod's): the default `hostname`/`name`, and the seed of the
    /// instance UUID.
    pub hostname: String,
    /// The VM NIC's MAC: when set, the drive describes DHCP on that NIC.
    pub mac: Option<MacAddr>,
    /// The VM's IPv6 side, when the pod has one: described as a static address so that
    /// cloud-init configures it even where router advertisements are filtered.
    pub ipv6: Option<Ipv6Seed>,
    /// Whether the VM has an IPv4 side (DHCPv4 on the NIC); false in an IPv6-only pod.
    pub ipv4: bool,
}

/// The VM's IPv6 configuration as the drive describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Seed {
    /// The VM's address (VM_IP6).
    pub address: std::net::Ipv6Addr,
    /// Its prefix length (64).
    pub prefix: u8,
    /// The default gateway (VM_GW6).
    pub gateway: std::net::Ipv6Addr,
    /// IPv6 DNS servers.
    pub dns: Vec<std::net::Ipv6Addr>,
    /// The DNS search list.
    pub search: Vec<String>,
}

/// The seed files' contents, as read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Input {
    /// User data bytes, if the file exists.
    pub userdata: Option<Vec<u8>>,
    /// Parsed metadata, if the file exists.
    pub metadata: Option<Metadata>,
}

/// Reads the seed files; `None` when neither exists (no drive is built then).
pub fn read(sources: &Sources) -> Result<Option<Input>, SeedError> {
    let userdata = read_limited(&sources.userdata)?;
    let metadata = match read_limited(&sources.metadata)? {
        Some(bytes) => Some(metadata::parse(&sources.metadata, &bytes)?),
        None => None,
    };
    if userdata.is_none() && metadata.is_none() {
        return Ok(None);
    }
    Ok(Some(Input { userdata, metadata }))
}

/// The file's bytes, `None` if it does not exist, an error if it is over the limit.
fn read_limited(path: &Path) -> Result<Option<Vec<u8>>, SeedError> {
    let read_err = |source| SeedError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    // Read one byte past the limit rather than trusting the size in the inode.
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(SeedError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_INPUT_BYTES,
        });
    }
    Ok(Some(bytes))
}

/// Checks that `name` is usable as a host name (RFC 1123 characters, 1 to 253 long).
pub fn check_hostname(name: &str) -> Result<(), SeedError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(SeedError::BadHostname(name.to_string()))
    }
}

/// Builds the image bytes for `input`. Deterministic: same input and options, same bytes.
pub fn build_image(input: &Input, options: &Options) -> Result<Vec<u8>, SeedError> {
    check_hostname(&options.hostname)?;
    let md = metadata::complete(
        input.metadata.clone().unwrap_or_default(),
        options.format,
        &options.hostname,
    );
    let (label, files) = layout::files(options.format, &md, input.userdata.as_deref(), options);
    Ok(iso::write_image(label, &files)?)
}

/// Reads `sources` and writes the drive to `output` atomically. Returns `None` (and writes
/// nothing) when neither seed file exists.
pub fn build_drive(
    sources: &Sources,
    options: &Options,
    output: &Path,
) -> Result<Option<PathBuf>, SeedError> {
    let Some(input) = read(sources)? else {
        return Ok(None);
    };
    let image = build_image(&input, options)?;
    write_atomic(output, &image)?;
    Ok(Some(output.to_path_buf()))
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, and renames it over `path`,
/// so a crash leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SeedError> {
    let write_err = |source| SeedError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| write_err(std::io::ErrorKind::InvalidInput.into()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}
