//! Building a VM from a description of its parts: kernel, disks and NIC. Shared by `berth vm`
//! and the pod entrypoint, which builds the VM again (same disks, same tap) when the guest
//! reboots.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm::block::{open_disk, DiskFormat, DiskOptions};
use vmm::virtio::block::Block;
use vmm::virtio::net::tap::Tap;
use vmm::virtio::net::vhost::VhostNet;
use vmm::virtio::net::{Net, NetVhost, MAX_QUEUE_PAIRS};
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

/// The NIC: tap fds opened with IFF_VNET_HDR (one per queue pair), the MAC and the MTU the
/// guest is told.
pub struct NetSpec {
    /// The tap's queues, one per virtio-net queue pair; duplicated for every boot.
    pub taps: Vec<OwnedFd>,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// The MTU announced in the virtio-net config.
    pub mtu: u16,
    /// vhost-net, one instance per queue pair (none: the in-process datapath), opened during
    /// set-up ([`open_vhost`]) and reused by every VM built.
    pub vhost: Vec<Arc<Mutex<VhostNet>>>,
    /// `vhost=on`: a VM whose NIC vhost cannot serve fails instead of falling back.
    pub vhost_required: bool,
}

/// Which datapath serves the NIC: `vhost=` in `--net`, BERTH_VHOST in a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VhostMode {
    /// vhost-net when /dev/vhost-net opens, else the in-process datapath.
    #[default]
    Auto,
    /// vhost-net or fail (exit code 16).
    On,
    /// Always the in-process datapath.
    Off,
}

impl VhostMode {
    /// `auto`, `on` or `off`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(VhostMode::Auto),
            "on" => Some(VhostMode::On),
            "off" => Some(VhostMode::Off),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            VhostMode::Auto => "auto",
            VhostMode::On => "on",
            VhostMode::Off => "off",
        }
    }
}

/// The NIC's queue pairs: `requested` (`queues=` in `--net`, BERTH_NET_QUEUES), else one per
/// vCPU, at most [`MAX_QUEUE_PAIRS`].
pub fn queue_pairs(vcpus: u8, requested: Option<u16>) -> u16 {
    requested
        .unwrap_or(u16::from(vcpus))
        .clamp(1, MAX_QUEUE_PAIRS)
}

/// Parses a queue-pair count: 1 to [`MAX_QUEUE_PAIRS`].
pub fn parse_queues(v: &str) -> Option<u16> {
    v.trim()
        .parse::<u16>()
        .ok()
        .filter(|n| (1..=MAX_QUEUE_PAIRS).contains(n))
}

/// Opens vhost-net as `mode` asks, one instance per queue pair (`setting` names where the
/// mode came from, for the messages), and says on one line which datapath will serve the NIC
/// and why. Call during set-up: the handles cannot be opened after the process confines
/// itself.
pub fn open_vhost(
    mode: VhostMode,
    setting: &str,
    pairs: u16,
) -> Result<Vec<Arc<Mutex<VhostNet>>>, Failure> {
    if mode == VhostMode::Off {
        eprintln!("berth: network: in-process datapath, {pairs} queue pair(s) ({setting}=off)");
        return Ok(Vec::new());
    }
    match (0..pairs)
        .map(|_| VhostNet::open().map(|v| Arc::new(Mutex::new(v))))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => {
            eprintln!(
                "berth: network: vhost-net datapath, the kernel serves the NIC's queues, \
                 {pairs} queue pair(s) ({setting}={})",
                mode.name()
            );
            Ok(v)
        }
        Err(e) if mode == VhostMode::On => Err(Failure::Vhost(format!(
            "{setting}=on but vhost-net is unusable: {e}; load the vhost_net module and give \
             berth /dev/vhost-net (chart: vhostNet), or set {setting}=auto or off"
        ))),
        Err(e) => {
            eprintln!(
                "berth: network: in-process datapath, {pairs} queue pair(s) ({setting}=auto; {e})"
            );
            Ok(Vec::new())
        }
    }
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

/// Creates the VM with its devices and loads the kernel.
pub fn build(spec: &MachineSpec) -> Result<(Vm, LoadedKernel), Failure> {
    let mut vm = Vm::new(spec.config, Box::new(std::io::stdout()))?;
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
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| Failure::Setup(format!("cannot duplicate the tap fd: {e}")))
        };
        let mut backends: Vec<Box<dyn vmm::virtio::net::tap::NetBackend>> = Vec::new();
        let mut vhost = Vec::new();
        for (i, fd) in net.taps.iter().enumerate() {
            let tap = Tap::new(dup(fd)?).map_err(|e| {
                Failure::Setup(format!(
                    "the tap does not take a 12-byte virtio-net header ({e}); open it with \
                     IFF_VNET_HDR"
                ))
            })?;
            backends.push(Box::new(tap));
            if let Some(handle) = net.vhost.get(i) {
                vhost.push(NetVhost {
                    handle: handle.clone(),
                    tap: File::from(dup(fd)?),
                    required: net.vhost_required,
                });
            }
        }
        vm.add_virtio(Box::new(Net::multiqueue(backends, net.mac, net.mtu, vhost)))?;
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
