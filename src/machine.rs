//! Building a VM from a description of its parts: kernel, disks and NIC. Shared by `berth vm`
//! and the pod entrypoint, which builds the VM again (same disks, same tap) when the guest
//! reboots.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm::block::{open_disk, DiskFormat, DiskOptions};
use vmm::metrics::{CountingDisk, CountingNet, VmMetrics};
use vmm::virtio::balloon::{Balloon, BalloonConfig, BalloonShared};
use vmm::virtio::block::{Block, MAX_QUEUES};
use vmm::virtio::input::{Input, PointerInput};
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
    /// Request queues offered to the guest; `None` is one per vCPU. Capped at
    /// [`vmm::virtio::block::MAX_QUEUES`].
    pub queues: Option<u16>,
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
    /// The balloon's state, kept across reboots (its target and counters), if it has one.
    pub balloon: Option<Arc<BalloonShared>>,
    /// The VNC viewer's pointer, kept across reboots, if there is a VNC console: a
    /// virtio-input tablet, the last virtio device so the others keep their PCI slots.
    pub pointer: Option<Arc<PointerInput>>,
    /// Where vCPUs, disks and the NIC count what they do, if anywhere.
    pub metrics: Option<Arc<VmMetrics>>,
}

/// The name the guest gives disk `i` (vda, vdb, ...; vdaa after vdz).
pub fn disk_name(i: usize) -> String {
    let letters = |mut n: usize| {
        let mut s = Vec::new();
        loop {
            s.push(b'a' + (n % 26) as u8);
            if n < 26 {
                break;
            }
            n = n / 26 - 1;
        }
        s.reverse();
        String::from_utf8(s).expect("ASCII")
    };
    format!("vd{}", letters(i))
}

/// How to spell a balloon setting (`berth vm --balloon`, the pod's BALLOON_* variables).
pub const BALLOON_USAGE: &str = "use --balloon off, or on[,reporting=on|off][,stats=SECONDS]\
                                 [,size=MIB]";

/// Parses `off`, or `on` followed by options, or the options alone:
/// `reporting=on|off`, `stats=SECONDS` (0: only on request), `size=MIB` (initial balloon
/// size). `None` means no balloon device.
pub fn parse_balloon(spec: &str) -> Result<Option<BalloonConfig>, String> {
    let mut c = BalloonConfig::default();
    for opt in spec.split(',').map(str::trim) {
        match opt.split_once('=') {
            None if opt == "off" && !spec.contains(',') => return Ok(None),
            None if opt == "on" => {}
            Some(("reporting", v)) => {
                c.reporting = parse_switch(v).ok_or_else(|| {
                    format!("--balloon {spec:?}: reporting must be on or off; {BALLOON_USAGE}")
                })?
            }
            Some(("stats", v)) => {
                let secs: u64 = v.parse().ok().filter(|s| *s <= 3600).ok_or_else(|| {
                    format!("--balloon {spec:?}: stats must be 0 to 3600 seconds; {BALLOON_USAGE}")
                })?;
                c.stats_interval = (secs > 0).then(|| Duration::from_secs(secs));
            }
            Some(("size", v)) => {
                c.size_mib = v.parse().map_err(|_| {
                    format!("--balloon {spec:?}: size must be a number of MiB; {BALLOON_USAGE}")
                })?
            }
            _ => {
                return Err(format!(
                    "--balloon {spec:?}: unknown option {opt:?}; {BALLOON_USAGE}"
                ))
            }
        }
    }
    Ok(Some(c))
}

/// `on`/`off` and their usual synonyms.
pub fn parse_switch(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => Some(true),
        "off" | "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// The tablet the VNC console's pointer drives, for a framebuffer of `fb`'s size. Creates
/// the eventfd its worker sleeps on: call it before berth confines itself.
pub fn pointer_state(
    fb: vmm::framebuffer::FramebufferConfig,
) -> Result<Arc<PointerInput>, Failure> {
    PointerInput::new(fb.width, fb.height)
        .map_err(|e| Failure::Setup(format!("cannot set up the VNC pointer: {e}")))
}

/// The balloon's shared state for a guest of `memory_mib`, checking the initial size against
/// it (create it before berth confines itself: it opens a timer and an eventfd).
pub fn balloon_state(
    config: BalloonConfig,
    memory_mib: u64,
) -> Result<Arc<BalloonShared>, Failure> {
    if config.size_mib > memory_mib {
        return Err(Failure::Usage(format!(
            "a balloon of {} MiB is larger than the guest's {memory_mib} MiB; give a size \
             from 0 to {memory_mib}",
            config.size_mib
        )));
    }
    BalloonShared::new(config, memory_mib)
        .map_err(|e| Failure::Setup(format!("cannot set up the balloon: {e}")))
}

/// Parses `PATH[,readonly][,format=raw|qcow2][,serial=ID][,queues=N]`.
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
        queues: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "readonly" || opt == "ro" => d.read_only = true,
            Some(("format", "raw")) => d.format = Some(DiskFormat::Raw),
            Some(("format", "qcow2")) => d.format = Some(DiskFormat::Qcow2),
            Some(("serial", s)) if s.len() <= 20 => d.serial = Some(s.to_owned()),
            Some(("queues", n)) => {
                d.queues = Some(parse_disk_queues(n).map_err(|e| format!("--disk {spec:?}: {e}"))?)
            }
            _ => {
                return Err(format!(
                    "--disk {spec:?}: unknown option {opt:?}; options are readonly, \
                     format=raw|qcow2, serial=ID (up to 20 bytes), queues=N (1-{MAX_QUEUES})"
                ))
            }
        }
    }
    Ok(d)
}

/// Parses a disk's request queue count: 1 to [`MAX_QUEUES`].
pub fn parse_disk_queues(n: &str) -> Result<u16, String> {
    match n.trim().parse::<u16>() {
        Ok(q) if (1..=MAX_QUEUES).contains(&q) => Ok(q),
        _ => Err(format!(
            "queues={n:?} is not a number from 1 to {MAX_QUEUES}; give the request queues per \
             disk (default: one per vCPU)"
        )),
    }
}

/// Makes the NIC's counters come from the tap's kernel counters (rtnetlink), which see the
/// frames of both datapaths, vhost-net's included. Call it during set-up, before berth confines
/// itself: it opens the netlink socket the metrics keep. If that fails, berth's in-process
/// datapath counts the frames it moves (and says so: vhost-net's frames are then not counted).
pub fn count_nic_in_kernel(spec: &MachineSpec) {
    let (Some(m), Some(net)) = (&spec.metrics, &spec.net) else {
        return;
    };
    let Some(tap) = net.taps.first() else { return };
    let r = vmm::linkstats::LinkCounters::for_tap(tap)
        .and_then(|link| m.count_nic_in_kernel("eth0", link));
    if let Err(e) = r {
        eprintln!(
            "berth: metrics: cannot read the tap's counters over rtnetlink ({e}); the NIC is \
             counted in berth's own datapath only, not what vhost-net moves"
        );
    }
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
    if let Some(m) = &spec.metrics {
        vm.set_metrics(m.clone());
    }
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
        if let Some(m) = &spec.metrics {
            backend = Box::new(CountingDisk::new(backend, m.disk(&disk_name(i))));
        }
        // One queue per vCPU by default, so each vCPU submits without sharing a ring lock.
        let queues = d.queues.unwrap_or(u16::from(spec.config.vcpus));
        let block = Block::new(backend, d.read_only, &serial).with_queues(queues);
        vm.add_virtio(Box::new(block))?;
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
            let mut backend: Box<dyn vmm::virtio::net::tap::NetBackend> = Box::new(tap);
            if let Some(m) = spec.metrics.as_ref().filter(|m| !m.nic_in_kernel("eth0")) {
                // Every queue pair counts into the one NIC's counters.
                backend = Box::new(CountingNet::new(backend, m.nic("eth0")));
            }
            backends.push(backend);
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
    if let Some(b) = &spec.balloon {
        vm.add_virtio(Box::new(Balloon::new(b.clone())))?;
    }
    if let Some(p) = &spec.pointer {
        vm.add_virtio(Box::new(Input::new(p.clone())))?;
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
                confine_backing: false,
                queues: None,
            }
        );
        let d = parse_disk("/b.img,readonly,format=raw,serial=xyz,queues=4").unwrap();
        assert_eq!(d.queues, Some(4));
        assert!(d.read_only);
        assert_eq!(d.format, Some(DiskFormat::Raw));
        assert_eq!(d.serial.as_deref(), Some("xyz"));
        for bad in [
            "",
            ",readonly",
            "/a,format=vmdk",
            "/a,bogus",
            "/a,queues=0",
            "/a,queues=17",
            "/a,queues=two",
            "/a,serial=123456789012345678901",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_names_follow_the_guest() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52].map(disk_name).to_vec();
        assert_eq!(names, ["vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba"]);
    }

    #[test]
    fn balloon_specs() {
        assert_eq!(parse_balloon("off").unwrap(), None);
        assert_eq!(parse_balloon("on").unwrap(), Some(BalloonConfig::default()));
        let c = parse_balloon("on,reporting=off,stats=5,size=64")
            .unwrap()
            .unwrap();
        assert!(!c.reporting);
        assert_eq!(c.stats_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.size_mib, 64);
        let c = parse_balloon("stats=0").unwrap().unwrap();
        assert_eq!(c.stats_interval, None);
        for bad in [
            "",
            "maybe",
            "reporting=sometimes",
            "stats=-1",
            "stats=9999",
            "size=lots",
            "off,size=1",
        ] {
            let e = parse_balloon(bad).unwrap_err();
            assert!(e.contains("--balloon") && !e.contains('\n'), "{bad}: {e}");
        }
        assert!(balloon_state(
            BalloonConfig {
                size_mib: 300,
                ..Default::default()
            },
            256
        )
        .is_err());
    }
}
