//! `berth`: the pod entrypoint and local command line of the berth VM runner.

mod console;
mod exit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmm::{ExitReason, LinuxBoot, MachineConfig, Vm};

use exit::Failure;

/// A minimalist VM runner for Kubernetes: one pod, one KVM virtual machine.
#[derive(Parser)]
#[command(name = "berth", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a Linux kernel in a VM with its serial console on this terminal.
    ///
    /// Type Ctrl-A x to stop the VM from an interactive terminal.
    Vm(VmArgs),
}

#[derive(clap::Args)]
struct VmArgs {
    /// Kernel image: a bzImage or an uncompressed ELF vmlinux.
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk (initramfs).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Vm(args) => run_vm(args),
    };
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

fn run_vm(args: VmArgs) -> Result<ExitReason, Failure> {
    for f in std::iter::once(&args.kernel).chain(args.initrd.as_ref()) {
        std::fs::File::open(f).map_err(|e| Failure::file(f, e))?;
    }
    let config = MachineConfig {
        vcpus: args.cpus,
        memory_mib: args.memory,
    };
    let mut vm = Vm::new(config, Box::new(std::io::stdout()))?;
    let kernel = vm.load_linux(&LinuxBoot {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
    })?;
    eprintln!(
        "berth: booting {} ({:?}) with {} vCPU(s) and {} MiB",
        args.kernel.display(),
        kernel.format,
        args.cpus,
        args.memory
    );
    let _terminal = console::attach_stdin(vm.serial_input(), vm.control());
    let reason = vm.run()?;
    match reason {
        ExitReason::Failed(why) => Err(Failure::GuestFailed(why)),
        other => Ok(other),
    }
}
