//! `berth vm`: boot a kernel with disks, its serial console on this terminal.

use std::path::PathBuf;

use vmm::block::{open_disk, DiskFormat, DiskOptions};
use vmm::virtio::block::Block;
use vmm::{ExitReason, LinuxBoot, MachineConfig, Vm};

use crate::exit::Failure;
use crate::{console, lifecycle};

/// Arguments of `berth vm`.
#[derive(clap::Args)]
pub struct VmArgs {
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
    /// A virtio-blk disk: PATH[,readonly][,format=raw|qcow2][,serial=ID]. Repeatable; the
    /// guest sees them as /dev/vda, /dev/vdb, ... in order. Without format= the format is
    /// detected, which is only safe for images the guest cannot turn into qcow2 headers:
    /// give format=raw for raw disks a guest writes.
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// Seconds the guest gets to power off after SIGTERM/SIGINT (its ACPI power button is
    /// pressed) before the VM is stopped. Default: BERTH_SHUTDOWN_TIMEOUT, else 60.
    #[arg(long, value_name = "SECONDS")]
    shutdown_timeout: Option<u64>,
}

/// One `--disk` argument.
#[derive(Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Image path.
    pub path: PathBuf,
    /// Open read-only.
    pub read_only: bool,
    /// Declared format.
    pub format: Option<DiskFormat>,
    /// Serial (GET_ID).
    pub serial: Option<String>,
}

/// Parses `PATH[,readonly][,format=raw|qcow2][,serial=ID]`.
pub fn parse_disk(spec: &str) -> Result<DiskSpec, String> {
    let mut parts = spec.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| {
        format!("--disk {spec:?}: no path; use --disk PATH[,readonly][,format=raw|qcow2]")
    })?;
    let mut d = DiskSpec {
        path: PathBuf::from(path),
        read_only: false,
        format: None,
        serial: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "readonly" || opt == "ro" => d.read_only = true,
            Some(("format", "raw")) => d.format = Some(DiskFormat::Raw),
            Some(("format", "qcow2")) => d.format = Some(DiskFormat::Qcow2),
            Some(("serial", s)) if s.len() <= 20 => d.serial = Some(s.to_owned()),
            _ => {
                return Err(format!(
                    "--disk {spec:?}: unknown option {opt:?}; options are readonly, \
                     format=raw|qcow2, serial=ID (up to 20 bytes)"
                ))
            }
        }
    }
    Ok(d)
}

/// Runs the VM until it stops.
pub fn run(args: VmArgs) -> Result<ExitReason, Failure> {
    lifecycle::block_signals();
    let timeout = match args.shutdown_timeout {
        Some(s) => lifecycle::parse_timeout(&s.to_string()),
        None => lifecycle::shutdown_timeout_from_env(),
    }
    .map_err(Failure::Usage)?;
    for f in std::iter::once(&args.kernel).chain(args.initrd.as_ref()) {
        std::fs::File::open(f).map_err(|e| Failure::file(f, e))?;
    }
    let specs = args
        .disks
        .iter()
        .map(|s| parse_disk(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Usage)?;
    let config = MachineConfig {
        vcpus: args.cpus,
        memory_mib: args.memory,
    };
    let mut vm = Vm::new(config, Box::new(std::io::stdout()))?;
    for (i, d) in specs.iter().enumerate() {
        let opts = DiskOptions {
            read_only: d.read_only,
            format: d.format,
        };
        let backend = open_disk(&d.path, opts).map_err(|e| Failure::Disk(e.to_string()))?;
        let serial = d.serial.clone().unwrap_or_else(|| format!("berth-disk{i}"));
        vm.add_virtio(Box::new(Block::new(backend, d.read_only, &serial)))?;
    }
    let kernel = vm.load_linux(&LinuxBoot {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
    })?;
    eprintln!(
        "berth: booting {} ({:?}) with {} vCPU(s), {} MiB, {} disk(s)",
        args.kernel.display(),
        kernel.format,
        args.cpus,
        args.memory,
        specs.len()
    );
    lifecycle::watch_signals(vm.power_button(), vm.control(), timeout);
    let _terminal = console::attach_stdin(vm.serial_input(), vm.control());
    match vm.run()? {
        ExitReason::Failed(why) => Err(Failure::GuestFailed(why)),
        ExitReason::Stopped(why) if why == lifecycle::TIMEOUT_REASON => {
            Err(Failure::ShutdownTimeout(format!(
                "{why} ({} s); disks were flushed",
                timeout.as_secs()
            )))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        assert_eq!(
            parse_disk("/a.qcow2").unwrap(),
            DiskSpec {
                path: "/a.qcow2".into(),
                read_only: false,
                format: None,
                serial: None
            }
        );
        let d = parse_disk("/b.img,readonly,format=raw,serial=xyz").unwrap();
        assert!(d.read_only);
        assert_eq!(d.format, Some(DiskFormat::Raw));
        assert_eq!(d.serial.as_deref(), Some("xyz"));
        for bad in [
            "",
            ",readonly",
            "/a,format=vmdk",
            "/a,bogus",
            "/a,serial=123456789012345678901",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
    }
}
