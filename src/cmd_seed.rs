//! `berth seed`: builds the cloud-init seed drive on its own, for operators and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use seed::{Format, MacAddr, MacParseError, Options, SeedError, Sources};

use crate::exit::Failure;

/// Arguments of `berth seed`.
#[derive(clap::Args)]
pub struct SeedArgs {
    /// User data (cloud-config, script, MIME multipart, gzip), copied byte for byte
    /// [default: /userdata].
    #[arg(long)]
    userdata: Option<PathBuf>,
    /// Metadata, YAML or a JSON object [default: /metadata].
    #[arg(long)]
    metadata: Option<PathBuf>,
    /// Drive layout: config-2 (OpenStack config drive) or nocloud
    /// [default: $SEED_FORMAT, else config-2].
    #[arg(long)]
    format: Option<String>,
    /// The VM's host name [default: $HOSTNAME, else this machine's host name].
    #[arg(long)]
    hostname: Option<String>,
    /// MAC of the VM's NIC; when given, the drive configures DHCP on that NIC.
    #[arg(long)]
    mac: Option<String>,
    /// Where to write the ISO image (replaced atomically).
    #[arg(long)]
    output: PathBuf,
}

/// Runs `berth seed`; prints one `berth: ` line and returns the exit code.
pub fn run(args: SeedArgs) -> ExitCode {
    match build(args) {
        Ok(msg) => {
            eprintln!("berth: {msg}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("berth: {}", f.to_string().replace('\n', " "));
            ExitCode::from(f.code())
        }
    }
}

fn build(args: SeedArgs) -> Result<String, Failure> {
    // A file named on the command line must exist; the defaults may be absent.
    for path in args.userdata.iter().chain(&args.metadata) {
        std::fs::metadata(path).map_err(|e| Failure::file(path, e))?;
    }
    let defaults = Sources::default();
    let sources = Sources {
        userdata: args.userdata.unwrap_or(defaults.userdata),
        metadata: args.metadata.unwrap_or(defaults.metadata),
    };
    let format = match args.format.or_else(|| std::env::var("SEED_FORMAT").ok()) {
        Some(f) => f.parse::<Format>().map_err(failure)?,
        None => Format::default(),
    };
    let mac = match args.mac {
        Some(m) => Some(m.parse::<MacAddr>().map_err(|e| bad_mac(&m, e))?),
        None => None,
    };
    let options = Options {
        format,
        hostname: args.hostname.unwrap_or_else(default_hostname),
        mac,
        ipv6: None,
        ipv4: true,
    };
    match seed::build_drive(&sources, &options, &args.output).map_err(failure)? {
        Some(out) => Ok(format!(
            "wrote {format} seed drive {} for host {}",
            out.display(),
            options.hostname
        )),
        None => Err(Failure::File(format!(
            "no seed data: neither {} nor {} exists, nothing written; pass --userdata or --metadata",
            sources.userdata.display(),
            sources.metadata.display()
        ))),
    }
}

/// `$HOSTNAME` (set in every pod), else the kernel's host name.
fn default_hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// A `--mac` that cannot be a NIC's MAC: bad input (exit code 8).
fn bad_mac(value: &str, e: MacParseError) -> Failure {
    let fix = match e {
        MacParseError::Syntax => "give six hex pairs such as 52:54:00:12:34:56".to_string(),
        other => other.to_string(),
    };
    Failure::Input(format!("invalid MAC address {value:?}; {fix}"))
}

fn failure(e: SeedError) -> Failure {
    let msg = e.to_string();
    if e.is_bad_input() {
        Failure::Input(msg)
    } else if matches!(e, SeedError::Image(_)) {
        Failure::Setup(msg)
    } else {
        Failure::File(msg)
    }
}
