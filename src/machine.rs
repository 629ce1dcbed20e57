//! Building a VM from a description of its parts: kernel, disks and NIC. Shared by `berth vm`
//! and the pod entrypoint, which builds the VM again (same disks, same tap) when the guest
//! reboots.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use vmm::block::{open_disk, DiskFormat, DiskOptions};
use vmm::virtio::block::Block;
use vmm::virtio::net::tap::Tap;
use vmm::virtio::net::Net;
use vmm::{LinuxBoot, LoadedKernel, MachineConfig, Vm};

use crate::exit::Failure;

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Image path.
    pub path: PathBuf,
    /// Open read-only.
    pub read_only: bool,
    /// Declared format (`None` probes it).
    pub format: Option<DiskFormat>,
    /// Serial (GET_ID).
    pub serial: Option<String>,
    /// Untrusted image: backing files must stay beneath each image's directory.
    pub confine_backing: bool,
}

/// The NIC: a tap fd opened with IFF_VNET_HDR, the MAC and the MTU the guest is told.
pub struct NetSpec {
    /// The tap; duplicated for every boot.
    pub tap: OwnedFd,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// The MTU announced in the virtio-net config.
    pub mtu: u16,
}

/// Everything a boot needs.
pub struct MachineSpec {
    /// vCPUs and memory.
    pub config: MachineConfig,
    /// Kernel, initrd, command line.
    pub boot: LinuxBoot,
    /// Disks in guest order (vda, vdb, ...).
    pub disks: Vec<DiskSpec>,
    /// The NIC, if any.
    pub net: Option<NetSpec>,
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
        confine_backing: false,
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

/// Creates the VM with its devices and loads the kernel; its serial console goes to stdout.
pub fn build(spec: &MachineSpec) -> Result<(Vm, LoadedKernel), Failure> {
    build_with_console(spec, Box::new(std::io::stdout()))
}

/// [`build`] with the serial console's output going to `console` (stdout teed to the
/// WebSocket serial console, `vmm::vnc::serial`).
pub fn build_with_console(
    spec: &MachineSpec,
    console: Box<dyn std::io::Write + Send>,
) -> Result<(Vm, LoadedKernel), Failure> {
    let mut vm = Vm::new(spec.config, console)?;
    for (i, d) in spec.disks.iter().enumerate() {
        let opts = DiskOptions {
            read_only: d.read_only,
            format: d.format,
            confine_backing: d.confine_backing,
        };
        let mut backend = open_disk(&d.path, opts).map_err(Failure::from)?;
        for note in backend.take_notes() {
            eprintln!("berth: {note}");
        }
        let serial = d.serial.clone().unwrap_or_else(|| format!("berth-disk{i}"));
        vm.add_virtio(Box::new(Block::new(backend, d.read_only, &serial)))?;
    }
    if let Some(net) = &spec.net {
        let fd = net
            .tap
            .try_clone()
            .map_err(|e| Failure::Setup(format!("cannot duplicate the tap fd: {e}")))?;
        let tap = Tap::new(fd).map_err(|e| {
            Failure::Setup(format!(
                "the tap does not take a 12-byte virtio-net header ({e}); open it with IFF_VNET_HDR"
            ))
        })?;
        vm.add_virtio(Box::new(Net::new(Box::new(tap), net.mac, net.mtu)))?;
    }
    let kernel = vm.load_linux(&spec.boot)?;
    Ok((vm, kernel))
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
                serial: None,
                confine_backing: false
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
