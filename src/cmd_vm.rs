//! `berth vm`: boot a kernel with disks and a NIC, its serial console on this terminal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use netplumb::tap::Tap as HostTap;
use netplumb::MacAddr;
use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::serial::SerialHub;
use vmm::vnc::{VncConfig, VncServer};
use vmm::{ExitReason, LinuxBoot, MachineConfig};

use crate::exit::Failure;
use crate::machine::{self, MachineSpec, NetSpec, VhostMode};
use crate::{console, imageboot, lifecycle, metrics};

/// Arguments of `berth vm`.
#[derive(clap::Args)]
pub struct VmArgs {
    /// Kernel image: a bzImage or an uncompressed ELF vmlinux. Without it, berth boots the
    /// first disk's own kernel: it finds the kernel, initramfs and arguments in the image
    /// (grub.cfg, boot loader entries, /vmlinuz; see docs/imageboot.md), and KERNEL, INITRD
    /// (`none` for no initramfs) and KERNEL_CMDLINE, or --initrd and --cmdline, override them.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (initramfs).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line [default with --kernel: console=ttyS0 reboot=k panic=1].
    #[arg(long)]
    cmdline: Option<String>,
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
    /// A virtio-net NIC on a tap: tap=NAME[,mac=MAC][,mtu=N][,vhost=auto|on|off][,queues=N].
    /// The MAC defaults to one derived from the tap's name (stable across runs), the MTU to
    /// 1500. vhost: the kernel's vhost-net serves the queues (auto: when /dev/vhost-net
    /// opens, else berth's own datapath; on: or exit code 16; off: never). queues: RX/TX
    /// queue pairs (multiqueue tap), 1 to 16, default one per vCPU.
    #[arg(long, value_name = "SPEC")]
    net: Option<String>,
    /// Seconds the guest gets to power off after SIGTERM/SIGINT (its ACPI power button is
    /// pressed) before the VM is stopped. Default: BERTH_SHUTDOWN_TIMEOUT, else 60.
    #[arg(long, value_name = "SECONDS")]
    shutdown_timeout: Option<u64>,
    /// seccomp filters per thread: on (the default: a forbidden syscall is reported on one
    /// line and ends berth with exit code 14), log (allowed and logged by the kernel), or off.
    /// Default: BERTH_SECCOMP, else on. See docs/security.md.
    #[arg(long, value_name = "on|log|off")]
    pub seccomp: Option<String>,
    /// Serve the guest's screen (a 1024x768 framebuffer, its console with console=tty0),
    /// keyboard and pointer (a virtio-input tablet) over VNC on ADDR:PORT, e.g. 127.0.0.1:5900.
    #[arg(long, value_name = "ADDR:PORT")]
    vnc: Option<std::net::SocketAddr>,
    /// The memory balloon: `off`, or `on` with options `reporting=on|off` (free page
    /// reporting: memory the guest frees goes back to the host), `stats=SECONDS` (ask the
    /// guest for memory statistics that often; 0: never) and `size=MIB` (balloon size at boot:
    /// memory taken from the guest). Default: on,reporting=on,stats=0,size=0.
    #[arg(long, value_name = "SPEC", default_value = "on")]
    balloon: String,
    /// Serve Prometheus metrics (vCPU exits, disk and NIC counters, memory, balloon) over HTTP
    /// at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9100. Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Offer the guest hardware virtualization (VMX/SVM), so it can run VMs itself; hidden
    /// by default.
    #[arg(long)]
    nested: bool,
    /// File whose first line is the VNC password (only 8 bytes count). Default: the
    /// VNC_PASSWORD environment variable. Without either, berth serves VNC only on a loopback
    /// address (127.0.0.1, ::1), unless --vnc-insecure.
    #[arg(long, value_name = "FILE", requires = "vnc")]
    vnc_password_file: Option<PathBuf>,
    /// Serve VNC without a password on a non-loopback address: anyone who can reach it can
    /// watch the console and type into the guest.
    #[arg(long, requires = "vnc")]
    vnc_insecure: bool,
}

/// The VNC password from `--vnc-password-file` or VNC_PASSWORD.
fn vnc_password(file: Option<&Path>) -> Result<Option<Vec<u8>>, Failure> {
    let pw = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| Failure::file(f, e))?;
            text.lines().next().unwrap_or("").to_owned()
        }
        None => match std::env::var("VNC_PASSWORD") {
            Ok(p) => p,
            Err(_) => return Ok(None),
        },
    };
    if pw.is_empty() {
        return Err(Failure::Usage(
            "the VNC password is empty; put it on the first line of --vnc-password-file \
             (or in VNC_PASSWORD), or give neither for no password (loopback only)"
                .into(),
        ));
    }
    Ok(Some(pw.into_bytes()))
}

/// A parsed `--net`.
#[derive(Debug, PartialEq, Eq)]
pub struct NetArg {
    /// Tap name.
    pub tap: String,
    /// MAC.
    pub mac: MacAddr,
    /// MTU.
    pub mtu: u16,
    /// The datapath.
    pub vhost: VhostMode,
    /// Queue pairs (`None`: one per vCPU).
    pub queues: Option<u16>,
}

/// Parses `tap=NAME[,mac=MAC][,mtu=N][,vhost=auto|on|off]`.
pub fn parse_net(spec: &str) -> Result<NetArg, String> {
    let usage =
        "use --net tap=NAME[,mac=52:54:00:12:34:56][,mtu=1500][,vhost=auto|on|off][,queues=N]";
    let (mut tap, mut mac, mut mtu) = (None, None, 1500u16);
    let mut vhost = VhostMode::Auto;
    let mut queues = None;
    for opt in spec.split(',') {
        match opt.split_once('=') {
            Some(("tap", n)) if !n.is_empty() && n.len() < 16 => tap = Some(n.to_owned()),
            Some(("mac", m)) => {
                mac = Some(
                    m.parse::<MacAddr>()
                        .map_err(|e| format!("--net {spec:?}: {e}; {usage}"))?,
                )
            }
            Some(("mtu", m)) => {
                mtu = m
                    .parse()
                    .ok()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| format!("--net {spec:?}: mtu must be 68 to 65535; {usage}"))?
            }
            Some(("queues", q)) => {
                queues = Some(machine::parse_queues(q).ok_or_else(|| {
                    format!(
                        "--net {spec:?}: queues must be 1 to {}; {usage}",
                        vmm::virtio::net::MAX_QUEUE_PAIRS
                    )
                })?)
            }
            Some(("vhost", v)) => {
                vhost = VhostMode::parse(v).ok_or_else(|| {
                    format!("--net {spec:?}: vhost must be auto, on or off; {usage}")
                })?
            }
            _ => {
                return Err(format!(
                    "--net {spec:?}: unknown or bad option {opt:?}; {usage}"
                ))
            }
        }
    }
    let tap = tap.ok_or_else(|| format!("--net {spec:?}: no tap name; {usage}"))?;
    let mac = mac.unwrap_or_else(|| MacAddr::from_hostname(&tap));
    Ok(NetArg {
        tap,
        mac,
        mtu,
        vhost,
        queues,
    })
}

/// Runs the VM until it stops.
pub fn run(args: VmArgs) -> Result<ExitReason, Failure> {
    let timeout = match args.shutdown_timeout {
        Some(s) => lifecycle::parse_timeout(&s.to_string()),
        None => lifecycle::shutdown_timeout_from_env(),
    }
    .map_err(Failure::Usage)?;
    // The console's policy is checked before anything is built: refusing is exit code 15.
    let vnc_config = match args.vnc {
        None => None,
        Some(addr) => {
            let mut config = VncConfig::new(addr);
            config.password = vnc_password(args.vnc_password_file.as_deref())?;
            config.insecure = args.vnc_insecure;
            if let Some(warning) = config.exposure().map_err(|e| {
                Failure::InsecureConsole(format!(
                    "{e}; give --vnc-password-file (or VNC_PASSWORD), listen on 127.0.0.1, or \
                     pass --vnc-insecure to serve it without a password anyway"
                ))
            })? {
                eprintln!("berth: {warning} (--vnc-insecure)");
            }
            Some(config)
        }
    };
    let lc = lifecycle::Lifecycle::start(timeout);
    for f in args.kernel.iter().chain(args.initrd.as_ref()) {
        std::fs::File::open(f).map_err(|e| Failure::file(f, e))?;
    }
    let balloon = match machine::parse_balloon(&args.balloon).map_err(Failure::Usage)? {
        Some(c) => Some(machine::balloon_state(c, args.memory)?),
        None => None,
    };
    // With a VNC console the viewer's pointer reaches the guest through a tablet.
    let pointer = match &vnc_config {
        Some(_) => Some(machine::pointer_state(FramebufferConfig::default())?),
        None => None,
    };
    let disks = args
        .disks
        .iter()
        .map(|s| machine::parse_disk(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Usage)?;
    let net = match &args.net {
        None => None,
        Some(spec) => {
            let n = parse_net(spec).map_err(Failure::Usage)?;
            let tun = Path::new("/dev/net/tun");
            let mut pairs = machine::queue_pairs(args.cpus, n.queues);
            let tap = match HostTap::create_queues(tun, &n.tap, pairs) {
                Ok(t) => t,
                // An existing single-queue tap refuses IFF_MULTI_QUEUE (EINVAL): with the
                // default (one pair per vCPU) use it with one pair; queues=N insists.
                Err(e) if pairs > 1 && n.queues.is_none() => {
                    let t =
                        HostTap::create(tun, &n.tap).map_err(|_| Failure::Setup(e.to_string()))?;
                    eprintln!(
                        "berth: network: tap {} is not multiqueue: 1 queue pair instead of {pairs} \
                         (create it with `ip tuntap add dev {} mode tap multi_queue vnet_hdr`)",
                        n.tap, n.tap
                    );
                    pairs = 1;
                    t
                }
                Err(e) if pairs > 1 => {
                    return Err(Failure::Setup(format!(
                        "{e}; queues={pairs} needs a multiqueue tap (`ip tuntap add dev {} mode \
                         tap multi_queue vnet_hdr`), or give queues=1",
                        n.tap
                    )))
                }
                Err(e) => return Err(Failure::Setup(e.to_string())),
            };
            Some(NetSpec {
                taps: tap.into_fds(),
                mac: n.mac.0,
                mtu: n.mtu,
                vhost: machine::open_vhost(n.vhost, "vhost", pairs)?,
                vhost_required: n.vhost == VhostMode::On,
            })
        }
    };
    let exporter = args.metrics.map(|addr| {
        let (balloon, vcpus, memory_mib) = (balloon.clone(), args.cpus, args.memory);
        let since = std::time::Instant::now();
        let e = metrics::Exporter::new(Box::new(move || metrics::Facts {
            state: "running",
            boots: 1,
            since: Some(since),
            vcpus,
            memory_mib,
            balloon: balloon.clone(),
            lease: None,
            vnc_clients: None,
        }));
        (addr, e)
    });
    let vm_metrics = exporter
        .as_ref()
        .map(|(_, e)| e.lock().expect("exporter lock poisoned").vm_metrics());
    // Kept alive until the kernel is loaded: extracted files are unnamed files.
    let (boot, _from_disk) = boot_files(&args, &disks)?;
    let spec = MachineSpec {
        config: MachineConfig {
            vcpus: args.cpus,
            memory_mib: args.memory,
            nested: args.nested,
        },
        boot,
        disks,
        net,
        balloon,
        pointer: pointer.clone(),
        metrics: vm_metrics,
    };
    machine::count_nic_in_kernel(&spec);
    // With a VNC console, COM1 is also served to WebSocket terminals (/serial on its port).
    let serial = vnc_config.as_ref().map(|_| SerialHub::new());
    let (mut vm, kernel) = match &serial {
        Some(hub) => machine::build_with_console(&spec, hub.tee(Box::new(std::io::stdout())))?,
        None => machine::build(&spec)?,
    };
    if let Some(hub) = &serial {
        hub.set_input(Some(vm.serial_input()));
    }
    vmm::keep_kvm_open()?;
    let _vnc = match vnc_config {
        None => None,
        Some(config) => {
            let addr = config.addr;
            let fb = Arc::new(
                Framebuffer::new(FramebufferConfig::default())
                    .map_err(|e| Failure::Setup(format!("framebuffer: {e}")))?,
            );
            vm.add_framebuffer(fb.clone())?;
            let server = VncServer::start(config, fb, Some(vm.keyboard()))
                .map_err(|e| Failure::Setup(format!("cannot serve VNC on {addr}: {e}")))?;
            server.set_serial(serial.clone());
            server.set_pointer(pointer.clone());
            eprintln!("berth: VNC console on {}", server.local_addr());
            Some(server)
        }
    };
    if let Some((addr, e)) = exporter {
        let at = metrics::serve(addr, e).map_err(|e| {
            Failure::Setup(format!(
                "cannot serve metrics on {addr}: {e}; free the port or choose another --metrics"
            ))
        })?;
        eprintln!("berth: metrics on http://{at}/metrics");
    }
    drop(_from_disk);
    eprintln!(
        "berth: booting {} ({:?}) with {} vCPU(s), {} MiB, {} disk(s){}",
        spec.boot.kernel.display(),
        kernel.format,
        args.cpus,
        args.memory,
        spec.disks.len(),
        if spec.net.is_some() { ", 1 NIC" } else { "" }
    );
    lockdown(&spec)?;
    lc.set_current(Some((vm.power_button(), vm.control())));
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

/// Drops what set-up needed before the guest runs (docs/security.md): `berth vm` keeps its
/// uid unless BERTH_UID asks for another (then the disks are handed to it).
fn lockdown(spec: &MachineSpec) -> Result<(), Failure> {
    let mut l = sandbox::Lockdown::default();
    l.read_write.push("/tmp".into());
    l.read_write.push("/dev/kvm".into());
    for d in &spec.disks {
        if d.read_only {
            l.read_only.push(d.path.clone());
        } else {
            l.read_write.push(d.path.clone());
        }
        l.chown.push(d.path.clone());
    }
    l.read_only.push(spec.boot.kernel.clone());
    l.read_only.extend(spec.boot.initrd.clone());
    let said = sandbox::lockdown(&l).map_err(|e| {
        Failure::Sandbox(format!(
            "cannot drop privileges: {e}; set BERTH_SECCOMP=off and BERTH_UID=0 to debug"
        ))
    })?;
    eprintln!("berth: confined: {said}");
    Ok(())
}

/// The kernel to boot: `--kernel`, or the first disk's own (see `imageboot`).
fn boot_files(
    args: &VmArgs,
    disks: &[machine::DiskSpec],
) -> Result<(LinuxBoot, Option<imageboot::BootFiles>), Failure> {
    if let Some(k) = &args.kernel {
        let cmdline = args.cmdline.clone();
        return Ok((
            LinuxBoot {
                kernel: k.clone(),
                initrd: args.initrd.clone(),
                cmdline: cmdline.unwrap_or_else(|| "console=ttyS0 reboot=k panic=1".into()),
            },
            None,
        ));
    }
    let first = disks.first().ok_or_else(|| {
        Failure::Usage("give --kernel, or a --disk whose image holds a kernel to boot".into())
    })?;
    let mut ov = imageboot::Overrides::from_env();
    if let Some(i) = &args.initrd {
        ov.initrd = Some(Some(i.clone()));
    }
    if let Some(c) = &args.cmdline {
        ov.cmdline = Some(c.clone());
    }
    let budget = imageboot::Budget::for_guest_memory(args.memory);
    let files = imageboot::prepare(&first.path, first.format, &ov, &budget)?;
    eprintln!("berth: boot from disk: {}", files.description);
    eprintln!("berth: kernel command line: {}", files.cmdline);
    let boot = LinuxBoot {
        kernel: files.kernel.clone(),
        initrd: files.initrd.clone(),
        cmdline: files.cmdline.clone(),
    };
    Ok((boot, Some(files)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_specs() {
        let n = parse_net("tap=tap0").unwrap();
        assert_eq!((n.tap.as_str(), n.mtu), ("tap0", 1500));
        assert_eq!(n.mac, MacAddr::from_hostname("tap0"), "stable default");
        let n = parse_net("tap=t1,mac=52:54:00:aa:bb:cc,mtu=1450").unwrap();
        assert_eq!(n.mac.0, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);
        assert_eq!(n.mtu, 1450);
        assert_eq!(n.vhost, VhostMode::Auto, "vhost defaults to auto");
        for (v, mode) in [
            ("auto", VhostMode::Auto),
            ("on", VhostMode::On),
            ("off", VhostMode::Off),
        ] {
            assert_eq!(parse_net(&format!("tap=t,vhost={v}")).unwrap().vhost, mode);
        }
        assert_eq!(parse_net("tap=t").unwrap().queues, None, "one per vCPU");
        assert_eq!(parse_net("tap=t,queues=4").unwrap().queues, Some(4));
        for bad in ["0", "17", "x", ""] {
            let e = parse_net(&format!("tap=t,queues={bad}")).unwrap_err();
            assert!(e.contains("queues must be 1 to 16"), "{e}");
        }
        let e = parse_net("tap=t,vhost=yes").unwrap_err();
        assert!(e.contains("vhost must be auto, on or off"), "{e}");
        for bad in [
            "",
            "mac=52:54:00:aa:bb:cc",
            "tap=",
            "tap=t,mtu=10",
            "tap=t,mac=zz",
            "tap=t,x=1",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }
}
