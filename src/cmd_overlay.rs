//! `berth overlay`: make the qcow2 pet overlay on a base image, for operators and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use vmm::block::overlay::{ensure_overlay_with, OverlayState};
use vmm::block::DiskFormat;

use crate::exit::Failure;

/// Arguments of `berth overlay`.
#[derive(Args)]
pub struct OverlayArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Create OUT as a qcow2 overlay backed by BASE, like
    /// `qemu-img create -f qcow2 -b BASE -F FMT OUT`.
    ///
    /// An existing OUT is kept if it is a qcow2 overlay on BASE and refused otherwise.
    Create(CreateArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// The base image; its absolute path is recorded in the overlay, and it is never written.
    #[arg(long, value_name = "BASE")]
    backing: PathBuf,
    /// Format of BASE; probed from its first bytes when not given.
    #[arg(long, value_enum)]
    backing_format: Option<Format>,
    /// The overlay to create.
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Raw,
    Qcow2,
}

/// Runs `berth overlay`; errors are one line on stderr and exit code 9 (13 when the overlay
/// is in use by another process).
pub fn run(args: OverlayArgs) -> ExitCode {
    let Action::Create(c) = args.action;
    let format = c.backing_format.map(|f| match f {
        Format::Raw => DiskFormat::Raw,
        Format::Qcow2 => DiskFormat::Qcow2,
    });
    match ensure_overlay_with(&c.backing, &c.out, format, false) {
        Ok((state, notes)) => {
            for note in notes {
                eprintln!("berth: {note}");
            }
            let what = match state {
                OverlayState::Created => "created",
                OverlayState::Reused => "kept existing",
            };
            eprintln!(
                "berth: {what} overlay {} on {}",
                c.out.display(),
                c.backing.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let f = Failure::from(e);
            eprintln!("berth: {f}");
            ExitCode::from(f.code())
        }
    }
}
