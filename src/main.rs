//! `berth`: the pod entrypoint and local command line of the berth VM runner.

mod cmd_overlay;
mod cmd_seed;
mod cmd_vm;
mod console;
mod exit;
mod fetch;
mod imageboot;
mod lifecycle;
mod machine;
mod metrics;
mod pod;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A minimalist VM runner for Kubernetes: one pod, one KVM virtual machine.
#[derive(Parser)]
#[command(name = "berth", version, about)]
struct Cli {
    /// Without a command, berth is the pod entrypoint (`berth pod`).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The pod entrypoint: run the VM the pod's environment describes (the default).
    Pod,
    /// Ask the running entrypoint for its state; exit 0 while the VM runs (liveness probe).
    Status {
        /// Print the whole JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running entrypoint to shut the guest down (ACPI power button), reset it, or
    /// set the balloon's size (`balloon MIB`: memory taken from the guest; 0 gives it all back).
    Control {
        /// What to do.
        #[arg(value_parser = ["shutdown", "reset", "balloon"])]
        action: String,
        /// With `balloon`: the balloon size in MiB.
        mib: Option<u64>,
    },
    /// Attach this terminal to the running VM's serial console (through the control socket);
    /// detach with Ctrl-].
    Console,
    /// Boot a Linux kernel in a VM with its serial console on this terminal.
    ///
    /// Type Ctrl-A x to stop the VM from an interactive terminal.
    Vm(cmd_vm::VmArgs),
    /// Build the cloud-init seed drive (config-2 or NoCloud ISO) from user data and metadata.
    Seed(cmd_seed::SeedArgs),
    /// Manage qcow2 pet overlays (the VM's root disk on a shared, never-written base).
    Overlay(cmd_overlay::OverlayArgs),
    /// Download the base image like the pod entrypoint does (for tests and debugging).
    #[command(hide = true)]
    Fetch(fetch::cmd::FetchArgs),
    /// Show the kernel, initramfs and command line berth finds in a disk image.
    #[command(hide = true)]
    InspectImage(imageboot::cmd::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Pod) {
        Command::Pod => confine(None, pod::DEFAULT_IDS).and_then(|()| pod::run()),
        Command::Status { json } => return pod::status_command(json),
        Command::Control { action, mib } => return pod::control_command(&action, mib),
        Command::Console => return pod::console_command(),
        Command::Vm(args) => {
            confine(args.seccomp.as_deref(), None).and_then(|()| cmd_vm::run(args))
        }
        Command::Seed(args) => return cmd_seed::run(args),
        Command::Overlay(args) => return cmd_overlay::run(args),
        Command::Fetch(args) => return fetch::cmd::run(args),
        Command::InspectImage(args) => return imageboot::cmd::run(args),
    };
    finish(result)
}

/// Sets the sandbox up (docs/security.md) before any thread starts: the seccomp mode from
/// `flag` or BERTH_SECCOMP, the uid/gid to switch to from BERTH_UID/BERTH_GID (or
/// `default_ids` when running as root).
fn confine(flag: Option<&str>, default_ids: Option<(u32, u32)>) -> Result<(), exit::Failure> {
    let mode = match flag {
        Some(f) => sandbox::Mode::parse(f),
        None => sandbox::Mode::from_env(),
    }
    .map_err(exit::Failure::Usage)?;
    let switch = sandbox::switch_from_env(default_ids).map_err(exit::Failure::Usage)?;
    sandbox::init(sandbox::Options { mode, switch }).map_err(exit::Failure::Sandbox)
}

fn finish(result: Result<vmm::ExitReason, exit::Failure>) -> ExitCode {
    match result {
        Ok(reason) => {
            eprintln!("berth: {reason}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("berth: {f}");
            ExitCode::from(f.code())
        }
    }
}
