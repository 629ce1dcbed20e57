//! The pod entrypoint (`berth`, `berth pod`): turns the pod's environment and mounted files
//! into a running VM, and keeps the VM's life tied to the pod's.
//!
//! Order: configuration (every problem reported at once), the base image (fetched if needed)
//! and the pet overlay, extra disks, pod networking (bridge, tap, NAT, DHCP), the cloud-init
//! seed drive, then the VM. A guest reboot builds a fresh VM on the same disks and tap; a guest
//! power-off ends berth with 0; SIGTERM presses the power button (see `lifecycle`).

pub mod config;
pub mod control;
pub mod serial_console;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use netplumb::config::Env;
use netplumb::{Dhcp6Server, DhcpServer, NetConfig, PodNetwork};
use serde_json::json;
use vmm::block::overlay::{ensure_overlay_with, extra_disks, pet_overlay_path, root_device};
use vmm::block::DiskFormat;
use vmm::framebuffer::{Framebuffer, FramebufferConfig};
use vmm::vnc::serial::SerialHub;
use vmm::vnc::{VncConfig, VncServer};
use vmm::{ExitReason, LinuxBoot, MachineConfig};

use crate::exit::Failure;
use crate::fetch::{ensure_image, FetchRequest};
use crate::imageboot;
use crate::lifecycle::{self, Lifecycle};
use crate::machine::{self, DiskSpec, MachineSpec, NetSpec};
use crate::metrics;
use config::PodConfig;
use control::{State, Status};

/// The uid and gid the entrypoint switches to after set-up when it runs as root and
/// BERTH_UID/BERTH_GID do not say otherwise: nobody/nogroup (docs/security.md).
pub const DEFAULT_IDS: Option<(u32, u32)> = Some((65534, 65534));

/// Kernel command line when KERNEL is given without KERNEL_CMDLINE.
pub const DEFAULT_CMDLINE: &str = "console=tty0 console=ttyS0 panic=1";

fn log(msg: impl std::fmt::Display) {
    eprintln!("berth: {msg}");
}

/// Runs the entrypoint until the VM ends.
pub fn run() -> Result<ExitReason, Failure> {
    let env: Env = std::env::vars().collect();
    let cfg = PodConfig::from_env(&env).map_err(|errs| Failure::Config(errs.join("\nberth: ")))?;
    // Before anything is set up: a pod that would expose an open console fails at once (exit
    // code 15, docs/operations.md) instead of running with a console nobody secured.
    cfg.check_console().map_err(Failure::InsecureConsole)?;
    let lc = Lifecycle::start(cfg.shutdown_timeout);
    log(format!("config: {}", cfg.summary()));

    let status = Arc::new(Mutex::new(Status {
        state: State::Starting,
        since: Instant::now(),
        boots: 0,
        vcpus: cfg.vcpus,
        memory_mib: cfg.ram_mb,
        disks: Vec::new(),
        net: None,
        lease: None,
        balloon: None,
        metrics: None,
        vnc_clients: None,
    }));
    let access = control::Access::own_uid_and(cfg.control_uid);
    // COM1 for `berth console` (control socket) and WebSocket terminals (/serial on the VNC
    // port); rewired to each VM built.
    let serial = SerialHub::new();
    control::serve_with_console(
        &cfg.control_socket,
        status.clone(),
        Some(lc.clone()),
        access,
        Some(serial.clone()),
    )
    .map_err(|e| {
        Failure::Setup(format!(
            "cannot listen on the control socket {}: {e}; set BERTH_CONTROL_SOCKET",
            cfg.control_socket
        ))
    })?;

    let (root, base) = root_disk(&cfg)?;
    let mut disks: Vec<DiskSpec> = root.iter().cloned().collect();
    for extra in extra_disks(&cfg.root).map_err(|e| Failure::Disk(e.to_string()))? {
        log(format!("extra disk {}", extra.display()));
        disks.push(raw_disk(extra, false));
    }

    let mut netcfg = NetConfig::from_env_map(&env).map_err(|e| Failure::Network(e.to_string()))?;
    let pairs = crate::machine::queue_pairs(cfg.vcpus, cfg.net_queues);
    netcfg.tap_queues = pairs;
    if let Some(m) = cfg.metrics {
        netcfg.keep_ports.push(m.port());
    }
    let mut pod_net = PodNetwork::setup(&netcfg).map_err(|e| Failure::Network(e.to_string()))?;
    let info = pod_net.info().clone();
    if let Some(ip) = info.ip {
        log(format!(
            "network: the VM ({} at {}) takes over pod IP {ip} on {} (MTU {})",
            netcfg.vm_mac, netcfg.vm_ip, info.iface, info.mtu
        ));
    }
    // Which IPv6 address the VM takes over, or why it gets none (always one line).
    log(&info.ipv6_status);
    if let Some(ip6) = info.ip6 {
        log(format!(
            "network: the VM ({} at {}) takes over pod IPv6 {ip6} on {} (MTU {})",
            netcfg.vm_mac,
            netcfg.vm_ip6(),
            info.iface,
            info.mtu
        ));
    }
    let dhcp6 = match pod_net.ipv6_config() {
        Some(c) if !netcfg.no_dhcp => Some(
            Dhcp6Server::spawn(&netcfg.bridge, c).map_err(|e| Failure::Network(e.to_string()))?,
        ),
        _ => None,
    };
    let dhcp = if netcfg.no_dhcp {
        log("NO_DHCP is set: no DHCP server, router advertisements or DHCPv6; configure the guest's address yourself");
        None
    } else if info.ip.is_none() {
        None // IPv6-only pod: an IPv4 lease would lead nowhere.
    } else {
        Some(Arc::new(
            DhcpServer::spawn(&netcfg.bridge, pod_net.dhcp_config())
                .map_err(|e| Failure::Network(e.to_string()))?,
        ))
    };
    let taps = pod_net
        .tap_fds()
        .map_err(|e| Failure::Network(e.to_string()))?;

    let seed_out = cfg
        .path("/image")
        .join(format!("{}-seed.iso", cfg.hostname));
    let sources = seed::Sources {
        userdata: cfg.path("/userdata"),
        metadata: cfg.path("/metadata"),
    };
    let options = seed::Options {
        format: cfg.seed_format,
        hostname: cfg.hostname.clone(),
        mac: Some(netcfg.vm_mac),
        ipv4: info.ip.is_some(),
        ipv6: info.ip6.map(|_| seed::Ipv6Seed {
            address: netcfg.vm_ip6(),
            prefix: 64,
            gateway: netcfg.vm_gw6,
            dns: info.dns.nameservers6.clone(),
            search: info.dns.search.clone(),
        }),
    };
    if let Some(iso) = seed::build_drive(&sources, &options, &seed_out)
        .map_err(|e| Failure::Input(e.to_string()))?
    {
        log(format!("cloud-init seed drive {}", iso.display()));
        disks.push(DiskSpec {
            path: iso,
            read_only: true,
            format: Some(DiskFormat::Raw),
            serial: Some("berth-seed".into()),
            confine_backing: false,
            queues: None,
        });
    }

    for d in &mut disks {
        d.queues = cfg.disk_queues;
    }

    // Kept alive as long as VMs are built: the image's kernel lives in unnamed files.
    let (boot, _image_files) = kernel(&cfg, root.as_ref())?;
    {
        let mut s = status.lock().expect("status lock poisoned");
        s.disks = disks.iter().map(|d| d.path.display().to_string()).collect();
        s.net = Some(json!({
            "pod_ip": info.ip.map(|a| a.to_string()),
            "vm_ip": info.ip.map(|_| netcfg.vm_ip.to_string()),
            "gateway": info.ip.map(|_| netcfg.vm_gw.to_string()),
            "pod_ip6": info.ip6.map(|a| a.to_string()),
            "vm_ip6": info.ip6.map(|_| netcfg.vm_ip6().to_string()),
            "mac": netcfg.vm_mac.to_string(),
            "mtu": info.mtu,
        }));
        if let Some(d) = dhcp.clone() {
            s.lease = Some(Box::new(move || d.lease_bound()));
        }
    }
    let balloon = match cfg.balloon {
        Some(c) => Some(machine::balloon_state(c, cfg.ram_mb)?),
        None => None,
    };
    status.lock().expect("status lock poisoned").balloon = balloon.clone();
    // Counters always run (`berth status --json` shows them); the endpoint only on request.
    let exporter = metrics::Exporter::new(facts_of(status.clone()));
    let vm_metrics = exporter
        .lock()
        .expect("exporter lock poisoned")
        .vm_metrics();
    status.lock().expect("status lock poisoned").metrics = Some(exporter.clone());
    // With a VNC console the viewer's pointer reaches the guest through a tablet.
    let pointer = if cfg.no_vnc {
        None
    } else {
        Some(crate::machine::pointer_state(FramebufferConfig::default())?)
    };
    let spec = MachineSpec {
        balloon,
        pointer: pointer.clone(),
        metrics: Some(vm_metrics),
        config: MachineConfig {
            vcpus: cfg.vcpus,
            memory_mib: cfg.ram_mb,
            nested: cfg.nested,
        },
        boot,
        disks,
        net: Some(NetSpec {
            taps,
            mac: netcfg.vm_mac.0,
            mtu: u16::try_from(info.mtu).unwrap_or(1500),
            // Opened now, as root: after confine() /dev/vhost-net cannot be opened, and every
            // VM a guest reboot builds reuses this handle.
            vhost: crate::machine::open_vhost(cfg.vhost, "BERTH_VHOST", pairs)?,
            vhost_required: cfg.vhost == crate::machine::VhostMode::On,
        }),
    };
    // berth's own servers (VNC, metrics) listen on the pod's IPv4 address where there is
    // one, else on its IPv6 address.
    let pod_ip = info
        .ip
        .map(std::net::IpAddr::from)
        .or(info.ip6.map(std::net::IpAddr::from));
    let vnc = if cfg.no_vnc {
        log("NO_VNC is set: no VNC console; tcp/5900 goes to the VM like every other port");
        None
    } else {
        let ip = pod_ip.ok_or_else(|| Failure::Network("the pod has no address for VNC".into()))?;
        Some(start_vnc(
            std::net::SocketAddr::new(ip, VNC_PORT),
            &env,
            cfg.vnc_insecure,
            &serial,
            pointer,
        )?)
    };
    if let Some(c) = &vnc {
        let server = c.server.clone();
        status.lock().expect("status lock poisoned").vnc_clients =
            Some(Box::new(move || server.clients()));
    }
    if let Some(m) = cfg.metrics {
        let addr = match m {
            config::MetricsAt::PodIp(p) => {
                let ip = pod_ip.ok_or_else(|| {
                    Failure::Network("the pod has no address for the metrics endpoint".into())
                })?;
                std::net::SocketAddr::new(ip, p)
            }
            config::MetricsAt::Addr(a) => a,
        };
        let at = metrics::serve(addr, exporter).map_err(|e| {
            Failure::Setup(format!(
                "cannot serve metrics on {addr}: {e}; free the port or change BERTH_METRICS"
            ))
        })?;
        log(format!("metrics on http://{at}/metrics"));
    }
    // The NIC's counters: the one netlink socket kept, read-only (RTM_GETLINK of the tap).
    crate::machine::count_nic_in_kernel(&spec);
    // No netlink after the drop: close the sockets, keep the plumbing (the tap fd is ours).
    pod_net.leave_in_place();
    drop(pod_net);
    confine(&cfg, &spec, base.as_deref())?;
    let result = run_vm(
        &spec,
        &lc,
        &status,
        vnc.as_ref(),
        &serial,
        cfg.shutdown_timeout.as_secs(),
    );
    status.lock().expect("status lock poisoned").state = State::Stopping;
    drop(dhcp);
    drop(dhcp6);
    result
}

/// Drops what set-up needed before the first boot (docs/security.md): /dev/kvm stays open,
/// the disks (and the base image an overlay reads) are handed to the unprivileged uid, and
/// only the disks, /image, /tmp and the kernel files stay reachable.
fn confine(
    cfg: &PodConfig,
    spec: &MachineSpec,
    base: Option<&std::path::Path>,
) -> Result<(), Failure> {
    vmm::keep_kvm_open()?;
    let mut l = sandbox::Lockdown::default();
    l.read_write.push(cfg.path("/image"));
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
    if let Some(b) = base {
        l.read_only.push(b.to_path_buf());
        l.chown.push(b.to_path_buf());
    }
    l.read_only.push(spec.boot.kernel.clone());
    l.read_only.extend(spec.boot.initrd.clone());
    let said = sandbox::lockdown(&l).map_err(|e| {
        Failure::Sandbox(format!(
            "cannot drop privileges: {e}; set BERTH_SECCOMP=off and BERTH_UID=0 to debug"
        ))
    })?;
    log(format!("confined: {said}"));
    Ok(())
}

/// The VNC console's port on the pod IP.
pub const VNC_PORT: u16 = 5900;

/// The framebuffer every boot draws into, and the VNC server that shows it (it outlives
/// reboots: viewers stay connected while the VM is rebuilt).
pub struct Console {
    fb: Arc<Framebuffer>,
    server: Arc<VncServer>,
}

fn start_vnc(
    addr: std::net::SocketAddr,
    env: &Env,
    insecure: bool,
    serial: &Arc<SerialHub>,
    pointer: Option<Arc<vmm::virtio::input::PointerInput>>,
) -> Result<Console, Failure> {
    let fb = Arc::new(
        Framebuffer::new(FramebufferConfig::default())
            .map_err(|e| Failure::Setup(format!("framebuffer: {e}")))?,
    );
    let mut config = VncConfig::new(addr);
    config.password = env.raw("VNC_PASSWORD").map(|p| p.as_bytes().to_vec());
    config.insecure = insecure;
    let warning = config.exposure().map_err(Failure::InsecureConsole)?;
    let has_password = config.password.is_some();
    let server = VncServer::start(config, fb.clone(), None).map_err(|e| {
        Failure::Setup(format!(
            "cannot serve VNC on {addr}: {e}; free the port or set NO_VNC"
        ))
    })?;
    if let Some(w) = warning {
        log(format!("{w} (VNC_INSECURE is set)"));
    } else {
        log(format!(
            "VNC console on {} ({})",
            server.local_addr(),
            if has_password {
                "password from VNC_PASSWORD"
            } else {
                "no password"
            }
        ));
    }
    server.set_serial(Some(serial.clone()));
    // The tablet outlives reboots (each new VM's device takes it over), so it is set once.
    server.set_pointer(pointer);
    Ok(Console {
        fb,
        server: Arc::new(server),
    })
}

/// What the metrics gauges show, read from the entrypoint's status at each scrape.
fn facts_of(status: control::SharedStatus) -> metrics::FactSource {
    Box::new(move || {
        let s = status.lock().expect("status lock poisoned");
        metrics::Facts {
            state: s.state.name(),
            boots: u64::from(s.boots),
            since: Some(s.since),
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            balloon: s.balloon.clone(),
            lease: s.lease.as_ref().map(|f| f()),
            vnc_clients: s.vnc_clients.as_ref().map(|f| f()),
        }
    })
}

/// Boots the VM, again after every guest reset, until it powers off or is stopped.
fn run_vm(
    spec: &MachineSpec,
    lc: &Lifecycle,
    status: &control::SharedStatus,
    console: Option<&Console>,
    serial: &Arc<SerialHub>,
    timeout: u64,
) -> Result<ExitReason, Failure> {
    loop {
        if lc.terminating() {
            return Ok(ExitReason::Stopped("signal before the VM started".into()));
        }
        let (mut vm, kernel) =
            machine::build_with_console(spec, serial.tee(Box::new(std::io::stdout())))?;
        serial.set_input(Some(vm.serial_input()));
        if let Some(c) = console {
            vm.add_framebuffer(c.fb.clone())?;
            c.server.set_keyboard(Some(vm.keyboard()));
        }
        {
            let mut s = status.lock().expect("status lock poisoned");
            s.boots += 1;
            s.since = Instant::now();
            s.state = State::Running;
            log(format!(
                "boot {}: {} ({:?}), {} vCPU(s), {} MiB, {} disk(s)",
                s.boots,
                spec.boot.kernel.display(),
                kernel.format,
                spec.config.vcpus,
                spec.config.memory_mib,
                spec.disks.len()
            ));
        }
        lc.set_current(Some((vm.power_button(), vm.control())));
        let reason = vm.run()?;
        lc.set_current(None);
        serial.set_input(None);
        if let Some(c) = console {
            c.server.set_keyboard(None);
        }
        match reason {
            ExitReason::Reset(_) if !lc.terminating() => {
                status.lock().expect("status lock poisoned").state = State::Rebooting;
                log(format!(
                    "{reason}: restarting the VM on the same disks and network"
                ));
            }
            ExitReason::Failed(why) => return Err(Failure::GuestFailed(why)),
            ExitReason::Stopped(why) if why == lifecycle::TIMEOUT_REASON => {
                return Err(Failure::ShutdownTimeout(format!(
                    "{why} ({timeout} s); disks were flushed"
                )))
            }
            other => return Ok(other),
        }
    }
}

fn raw_disk(path: PathBuf, read_only: bool) -> DiskSpec {
    DiskSpec {
        path,
        read_only,
        format: Some(DiskFormat::Raw),
        serial: None,
        confine_backing: false,
        queues: None,
    }
}

/// The root disk: /dev/vm/root (raw) if present, else the pet overlay on the base image
/// (fetched first if needed), else none (only with KERNEL); with the base image's path.
fn root_disk(cfg: &PodConfig) -> Result<(Option<DiskSpec>, Option<PathBuf>), Failure> {
    if let Some(dev) = root_device(&cfg.root) {
        log(format!(
            "root disk {} (raw, from /dev/vm/root)",
            dev.display()
        ));
        return Ok((Some(raw_disk(dev, false)), None));
    }
    let mut req = FetchRequest::from_env().map_err(|e| Failure::Fetch(e.to_string()))?;
    req.image_dir = cfg.path("/image");
    if req.target.is_none() {
        if cfg.kernel.is_some() {
            log("no IMG_TARGET and no /dev/vm/root: booting KERNEL without a root disk");
            return Ok((None, None));
        }
        return Err(Failure::Config(
            "nothing to boot: set IMG_SOURCE and IMG_TARGET (a cloud image), provide \
             /dev/vm/root, or set KERNEL"
                .into(),
        ));
    }
    let base = ensure_image(&req).map_err(|e| Failure::Fetch(e.to_string()))?;
    let overlay = pet_overlay_path(&cfg.root, &cfg.hostname).ok_or_else(|| {
        Failure::Config(format!("HOSTNAME={:?} cannot name a disk", cfg.hostname))
    })?;
    // The base came from IMG_SOURCE: it may not reach files outside /image.
    let (state, notes) = ensure_overlay_with(&base, &overlay, None, true).map_err(Failure::from)?;
    for note in notes {
        log(note);
    }
    log(format!(
        "root disk {} ({state:?} on base {})",
        overlay.display(),
        base.display()
    ));
    Ok((
        Some(DiskSpec {
            path: overlay,
            read_only: false,
            format: Some(DiskFormat::Qcow2),
            serial: Some("berth-root".into()),
            confine_backing: true,
            queues: None,
        }),
        Some(base),
    ))
}

/// The image's own kernel, initramfs and command line (read through the root disk), with
/// KERNEL/INITRD/KERNEL_CMDLINE overriding each part; without a root disk, KERNEL as given.
fn kernel(
    cfg: &PodConfig,
    root: Option<&DiskSpec>,
) -> Result<(LinuxBoot, Option<imageboot::BootFiles>), Failure> {
    let Some(root) = root else {
        let k = cfg
            .kernel
            .as_ref()
            .ok_or_else(|| Failure::Config("no root disk and no KERNEL: nothing to boot".into()))?;
        for f in std::iter::once(k).chain(cfg.initrd.as_ref()) {
            std::fs::File::open(f).map_err(|e| Failure::file(f, e))?;
        }
        let boot = LinuxBoot {
            kernel: k.clone(),
            initrd: cfg.initrd.clone(),
            cmdline: cfg
                .cmdline
                .clone()
                .unwrap_or_else(|| DEFAULT_CMDLINE.into()),
        };
        return Ok((boot, None));
    };
    let budget = imageboot::Budget::for_guest_memory(cfg.ram_mb);
    let files = imageboot::prepare(
        &root.path,
        root.format,
        &imageboot::Overrides::from_env(),
        &budget,
    )?;
    log(format!("boot: {}", files.description));
    log(format!("kernel command line: {}", files.cmdline));
    let boot = LinuxBoot {
        kernel: files.kernel.clone(),
        initrd: files.initrd.clone(),
        cmdline: files.cmdline.clone(),
    };
    Ok((boot, Some(files)))
}

fn socket_name() -> String {
    std::env::var("BERTH_CONTROL_SOCKET")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| config::DEFAULT_CONTROL_SOCKET.into())
}

/// `berth control shutdown|reset|balloon MIB`: asks the entrypoint to press the guest's power
/// button, to reset the VM, or to set the balloon's size.
pub fn control_command(action: &str, mib: Option<u64>) -> std::process::ExitCode {
    let name = socket_name();
    let req = match (action, mib) {
        ("balloon", Some(m)) => json!({ "cmd": "balloon", "mib": m }),
        ("balloon", None) => {
            eprintln!("berth: balloon: give the balloon size in MiB (0 gives all memory back)");
            return std::process::ExitCode::from(2);
        }
        (_, Some(_)) => {
            eprintln!("berth: {action} takes no size; only `berth control balloon MIB` does");
            return std::process::ExitCode::from(2);
        }
        (a, None) => json!({ "cmd": a }),
    };
    match control::request_json(&name, &req) {
        Ok(v) if v["ok"] == true => std::process::ExitCode::SUCCESS,
        Ok(v) => {
            eprintln!(
                "berth: {action}: {}",
                v["error"].as_str().unwrap_or("refused")
            );
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!(
                "berth: no berth entrypoint answers on {name}: {e}; is the VM running in this pod?"
            );
            std::process::ExitCode::from(2)
        }
    }
}

/// `berth console`: the running VM's serial console on this terminal (Ctrl-] detaches).
pub fn console_command() -> std::process::ExitCode {
    serial_console::attach(&socket_name())
}

/// `berth status`: prints the entrypoint's state; exit 0 while the VM runs.
pub fn status_command(json_out: bool) -> std::process::ExitCode {
    let name = socket_name();
    match control::query(&name) {
        Ok(v) => {
            if json_out {
                println!("{v}");
            } else {
                println!(
                    "state={} uptime={}s boots={} lease_given={}",
                    v["state"].as_str().unwrap_or("?"),
                    v["uptime_seconds"],
                    v["boots"],
                    v["lease_given"]
                );
            }
            if v["state"] == "running" {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!(
                "berth: no berth entrypoint answers on {name}: {e}; is the VM running in this pod?"
            );
            std::process::ExitCode::from(2)
        }
    }
}
