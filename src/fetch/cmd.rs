//! `berth fetch`: the image fetch on its own, for tests and for debugging a pod's download.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{ensure_image, FetchError, FetchRequest};
use crate::exit::Failure;

/// Arguments of `berth fetch`; each falls back to the pod's environment variable.
#[derive(Args)]
pub struct FetchArgs {
    /// The image's http(s) URL [default: $IMG_SOURCE].
    url: Option<String>,
    /// A file name in --dir, or an absolute path [default: $IMG_TARGET].
    #[arg(long)]
    target: Option<String>,
    /// The expected SHA-256 of the download, in hex [default: $IMG_SHA256].
    #[arg(long)]
    sha256: Option<String>,
    /// The image directory.
    #[arg(long, default_value = super::IMAGE_DIR)]
    dir: PathBuf,
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        Failure::Fetch(e.to_string())
    }
}

/// Runs `berth fetch`: prints the image's path on stdout; errors are one line on stderr and
/// exit code 10.
pub fn run(args: FetchArgs) -> ExitCode {
    let result = FetchRequest::from_env().and_then(|mut req| {
        req.source = args.url.or(req.source);
        req.target = args.target.or(req.target);
        req.sha256 = args.sha256.or(req.sha256);
        req.image_dir = args.dir;
        ensure_image(&req)
    });
    match result {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let f = Failure::from(e);
            eprintln!("berth: {f}");
            ExitCode::from(f.code())
        }
    }
}
