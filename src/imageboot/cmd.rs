//! `berth inspect-image IMAGE`: prints what berth finds in an image (hidden; for tests and
//! for operators wondering why an image does not boot).

use std::path::PathBuf;
use std::process::ExitCode;

use vmm::block::DiskFormat;

use super::{inspect, prepare, Budget, ImageBootError, Overrides};

/// Arguments of `berth inspect-image`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The image (raw or qcow2, with its backing chain).
    image: PathBuf,
    /// The image's format; probed when not given.
    #[arg(long, value_parser = ["raw", "qcow2"])]
    format: Option<String>,
    /// Also extract the files and print the final boot choice, honouring KERNEL, INITRD and
    /// KERNEL_CMDLINE like `berth vm` does.
    #[arg(long)]
    boot: bool,
    /// With --boot: also copy the kernel, initramfs and command line into this directory (as
    /// `kernel`, `initrd`, `cmdline`).
    #[arg(long, value_name = "DIR", requires = "boot")]
    extract: Option<PathBuf>,
    /// The guest memory in MiB to size the limits for (the initramfs may take half of it), as
    /// IMG_RAM_MB or `berth vm --memory` would give it.
    #[arg(long, value_name = "MIB", default_value_t = crate::pod::config::DEFAULT_RAM_MB)]
    memory: u64,
}

/// Runs `berth inspect-image`: the report on stdout, errors as one `berth:` line on stderr
/// (exit 5 when no kernel can be found, 9 when the disk cannot be opened).
pub fn run(args: InspectArgs) -> ExitCode {
    let format = match args.format.as_deref() {
        Some("raw") => Some(DiskFormat::Raw),
        Some("qcow2") => Some(DiskFormat::Qcow2),
        _ => None,
    };
    let budget = Budget::for_guest_memory(args.memory);
    let result = if args.boot {
        prepare(&args.image, format, &Overrides::from_env(), &budget).and_then(|b| {
            if let Some(dir) = &args.extract {
                let io = ImageBootError::Host;
                std::fs::create_dir_all(dir).map_err(io)?;
                std::fs::copy(&b.kernel, dir.join("kernel")).map_err(io)?;
                if let Some(i) = &b.initrd {
                    std::fs::copy(i, dir.join("initrd")).map_err(io)?;
                }
                std::fs::write(dir.join("cmdline"), &b.cmdline).map_err(io)?;
            }
            let initrd = b.initrd.as_ref().map(|p| {
                let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                format!("{len} bytes")
            });
            let kernel_len = std::fs::metadata(&b.kernel).map(|m| m.len()).unwrap_or(0);
            Ok(format!(
                "boot: {}\nkernel-bytes: {kernel_len}\ninitrd: {}\ncmdline: {}",
                b.description,
                initrd.unwrap_or_else(|| "none".into()),
                b.cmdline
            ))
        })
    } else {
        inspect(&args.image, format, &budget).map(|i| i.report())
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::from(match e {
                ImageBootError::Disk(_) => 9,
                _ => 5,
            })
        }
    }
}
