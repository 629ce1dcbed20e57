//! The entrypoint's configuration: the contract's environment variables and berth's own,
//! validated together so every problem is reported at once, one line each.

use std::path::PathBuf;
use std::time::Duration;

use netplumb::config::Env;

use crate::lifecycle;
use crate::machine::VhostMode;

/// Default vCPUs (IMG_VCPU).
pub const DEFAULT_VCPUS: u8 = 1;
/// Default memory in MiB (IMG_RAM_MB).
pub const DEFAULT_RAM_MB: u64 = 512;
/// Smallest memory the entrypoint accepts for a cloud image.
pub const MIN_RAM_MB: u64 = 64;
/// Default control socket: an abstract unix socket, so it needs no writable filesystem.
pub const DEFAULT_CONTROL_SOCKET: &str = "@berth-control";

/// Where the metrics endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAt {
    /// `BERTH_METRICS=PORT`: on the pod IP (kept out of the VM's DNAT, like VNC's 5900).
    PodIp(u16),
    /// `BERTH_METRICS=ADDR:PORT`: exactly there.
    Addr(std::net::SocketAddr),
}

impl MetricsAt {
    /// The TCP port.
    pub fn port(self) -> u16 {
        match self {
            MetricsAt::PodIp(p) => p,
            MetricsAt::Addr(a) => a.port(),
        }
    }
}

/// What the pod asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodConfig {
    /// HOSTNAME: names the pet overlay and the VM.
    pub hostname: String,
    /// IMG_VCPU.
    pub vcpus: u8,
    /// IMG_RAM_MB.
    pub ram_mb: u64,
    /// KERNEL: a kernel to boot instead of the image's own.
    pub kernel: Option<PathBuf>,
    /// INITRD: an initramfs (with KERNEL, or instead of the image's own).
    pub initrd: Option<PathBuf>,
    /// KERNEL_CMDLINE: with KERNEL (or to replace the image's command line).
    pub cmdline: Option<String>,
    /// SEED_FORMAT: config-2 (default) or nocloud.
    pub seed_format: seed::Format,
    /// BERTH_SHUTDOWN_TIMEOUT.
    pub shutdown_timeout: Duration,
    /// BERTH_ROOT: where /image, /userdata, /metadata, /volumes and /dev/vm are looked up
    /// (default `/`; tests point it elsewhere).
    pub root: PathBuf,
    /// BERTH_CONTROL_SOCKET: `@name` for an abstract socket, else a path.
    pub control_socket: String,
    /// BERTH_CONTROL_UID: a uid allowed on the control socket besides berth's own.
    pub control_uid: Option<u32>,
    /// NO_VNC.
    pub no_vnc: bool,
    /// BERTH_NESTED: offer the guest hardware virtualization (VMX/SVM).
    pub nested: bool,
    /// BERTH_DISK_QUEUES: request queues per disk (default one per vCPU).
    pub disk_queues: Option<u16>,
    /// VNC_PASSWORD is set (the value itself is not kept here).
    pub vnc_password: bool,
    /// VNC_INSECURE: serve the console without a password anyway.
    pub vnc_insecure: bool,
    /// BERTH_VHOST: which datapath serves the NIC (auto, on, off).
    pub vhost: VhostMode,
    /// BERTH_NET_QUEUES: the NIC's queue pairs (`None`: one per vCPU).
    pub net_queues: Option<u16>,
    /// BERTH_METRICS: where to serve /metrics (off when unset).
    pub metrics: Option<MetricsAt>,
    /// The balloon (BALLOON, BALLOON_REPORTING, BALLOON_STATS_INTERVAL, BALLOON_SIZE_MIB);
    /// `None` with BALLOON=off.
    pub balloon: Option<vmm::virtio::balloon::BalloonConfig>,
}

impl PodConfig {
    /// Reads and checks the variables; on failure returns every problem found.
    pub fn from_env(env: &Env) -> Result<PodConfig, Vec<String>> {
        let mut errs = Vec::new();
        let hostname = match env.value("HOSTNAME") {
            Some(h) if valid_hostname(h) => h.to_owned(),
            Some(h) => {
                errs.push(format!(
                    "HOSTNAME={h:?} cannot name the pet disk: use letters, digits, '-' and '.', \
                     not starting with '.' (a StatefulSet pod name works)"
                ));
                String::new()
            }
            None => {
                errs.push(
                    "HOSTNAME is not set: it names the pet disk /image/$HOSTNAME.qcow2; run in a \
                     pod (Kubernetes sets it) or export it"
                        .into(),
                );
                String::new()
            }
        };
        let vcpus = match env.value("IMG_VCPU").map(str::parse::<u8>) {
            None => DEFAULT_VCPUS,
            Some(Ok(n)) if (1..=vmm::arch::mptable::MAX_CPUS).contains(&n) => n,
            _ => {
                errs.push(format!(
                    "IMG_VCPU={:?} is not a vCPU count from 1 to {}",
                    env.raw("IMG_VCPU").unwrap_or_default(),
                    vmm::arch::mptable::MAX_CPUS
                ));
                DEFAULT_VCPUS
            }
        };
        let ram_mb = match env.value("IMG_RAM_MB").map(str::parse::<u64>) {
            None => DEFAULT_RAM_MB,
            Some(Ok(n)) if (MIN_RAM_MB..=1 << 22).contains(&n) => n,
            _ => {
                errs.push(format!(
                    "IMG_RAM_MB={:?} is not a memory size in MiB from {MIN_RAM_MB} to 4194304",
                    env.raw("IMG_RAM_MB").unwrap_or_default()
                ));
                DEFAULT_RAM_MB
            }
        };
        let kernel = env.value("KERNEL").map(PathBuf::from);
        let initrd = env.value("INITRD").map(PathBuf::from);
        let cmdline = env.raw("KERNEL_CMDLINE").map(str::to_owned);
        let seed_format = match env.value("SEED_FORMAT").map(str::parse::<seed::Format>) {
            None => seed::Format::default(),
            Some(Ok(f)) => f,
            Some(Err(_)) => {
                errs.push(format!(
                    "SEED_FORMAT={:?} is not config-2 or nocloud",
                    env.raw("SEED_FORMAT").unwrap_or_default()
                ));
                seed::Format::default()
            }
        };
        let shutdown_timeout = match env.value("BERTH_SHUTDOWN_TIMEOUT") {
            None => Duration::from_secs(lifecycle::DEFAULT_SHUTDOWN_TIMEOUT),
            Some(v) => lifecycle::parse_timeout(v).unwrap_or_else(|e| {
                errs.push(e);
                Duration::from_secs(lifecycle::DEFAULT_SHUTDOWN_TIMEOUT)
            }),
        };
        let root = PathBuf::from(env.value("BERTH_ROOT").unwrap_or("/"));
        if !root.is_absolute() {
            errs.push(format!("BERTH_ROOT={:?} must be an absolute path", root));
        }
        let control_socket = env
            .value("BERTH_CONTROL_SOCKET")
            .unwrap_or(DEFAULT_CONTROL_SOCKET)
            .to_owned();
        let control_uid = match env.value("BERTH_CONTROL_UID") {
            None => None,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(uid) => Some(uid),
                Err(_) => {
                    errs.push(format!(
                        "BERTH_CONTROL_UID={v:?} is not a numeric uid; set it to the uid (a number) \
                         of the client allowed on the control socket, or unset it"
                    ));
                    None
                }
            },
        };
        let vhost = match env.value("BERTH_VHOST") {
            None => VhostMode::Auto,
            Some(v) => VhostMode::parse(v.trim()).unwrap_or_else(|| {
                errs.push(format!(
                    "BERTH_VHOST={v:?} is not auto, on or off; set one of them or unset it (auto)"
                ));
                VhostMode::Auto
            }),
        };
        let net_queues = match env.value("BERTH_NET_QUEUES") {
            None => None,
            Some(v) => crate::machine::parse_queues(v).or_else(|| {
                errs.push(format!(
                    "BERTH_NET_QUEUES={v:?} is not 1 to {}; set the NIC's queue pairs or unset it \
                     (one per vCPU)",
                    vmm::virtio::net::MAX_QUEUE_PAIRS
                ));
                None
            }),
        };
        let disk_queues = match env.value("BERTH_DISK_QUEUES") {
            None => None,
            Some(v) => match crate::machine::parse_disk_queues(v) {
                Ok(q) => Some(q),
                Err(e) => {
                    errs.push(format!("BERTH_DISK_QUEUES: {e}, or unset it"));
                    None
                }
            },
        };
        let balloon = balloon_from_env(env, ram_mb, &mut errs);
        let metrics = match env.value("BERTH_METRICS") {
            None => None,
            Some(v) => match (v.parse::<u16>(), v.parse::<std::net::SocketAddr>()) {
                (Ok(p), _) if p > 0 => Some(MetricsAt::PodIp(p)),
                (_, Ok(a)) if a.port() > 0 => Some(MetricsAt::Addr(a)),
                _ => {
                    errs.push(format!(
                        "BERTH_METRICS={v:?} is not a port (served on the pod IP) or ADDR:PORT; \
                         e.g. 9100, or unset it for no metrics endpoint"
                    ));
                    None
                }
            },
        };
        if metrics.is_some_and(|m| m.port() == netplumb::config::VNC_PORT) && !env.flag("NO_VNC") {
            errs.push(
                "BERTH_METRICS uses port 5900, which the VNC console has; choose another port \
                 (9100 is usual)"
                    .into(),
            );
        }
        let cfg = PodConfig {
            metrics,
            balloon,
            hostname,
            vcpus,
            ram_mb,
            kernel,
            initrd,
            cmdline,
            seed_format,
            shutdown_timeout,
            root,
            control_socket,
            control_uid,
            no_vnc: env.flag("NO_VNC"),
            nested: env.flag("BERTH_NESTED"),
            disk_queues,
            vnc_password: env.value("VNC_PASSWORD").is_some(),
            vnc_insecure: env.flag("VNC_INSECURE"),
            vhost,
            net_queues,
        };
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs)
        }
    }

    /// Whether the console may start: `Err` (the one-line reason and fix) when VNC is on, has
    /// no password and VNC_INSECURE is not set. The pod's console listens on the pod IP,
    /// reachable from the whole cluster, so an open one would let anyone there watch the
    /// guest's console (where cloud-init often prints credentials) and type into it.
    pub fn check_console(&self) -> Result<(), String> {
        if self.no_vnc || self.vnc_password || self.vnc_insecure {
            return Ok(());
        }
        Err(
            "refusing to serve the VNC console on the pod IP without a password: anyone in \
             the cluster could watch the guest's console and type into it; set VNC_PASSWORD \
             (the chart does, from a Secret), or NO_VNC=1 for no console, or VNC_INSECURE=1 \
             to serve it without a password anyway"
                .into(),
        )
    }

    /// A path under [`PodConfig::root`].
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// The one-line summary printed at start.
    pub fn summary(&self) -> String {
        let kernel = match &self.kernel {
            Some(k) => format!("kernel={}", k.display()),
            None => "kernel=from the image".into(),
        };
        format!(
            "hostname={} vcpus={} memory={}MiB {kernel} seed={} vnc={} nested={} balloon={} shutdown_timeout={}s",
            self.hostname,
            self.vcpus,
            self.ram_mb,
            match self.seed_format {
                seed::Format::ConfigDrive => "config-2",
                seed::Format::NoCloud => "nocloud",
            },
            if self.no_vnc { "off" } else { "on" },
            if self.nested { "on" } else { "off" },
            match self.balloon {
                None => "off",
                Some(b) if b.reporting => "on+reporting",
                Some(_) => "on",
            },
            self.shutdown_timeout.as_secs()
        )
    }
}

/// BALLOON=on|off (default on), BALLOON_REPORTING=on|off (default on),
/// BALLOON_STATS_INTERVAL=SECONDS (default 0: statistics only when asked),
/// BALLOON_SIZE_MIB=N (balloon size at boot, default 0).
fn balloon_from_env(
    env: &Env,
    ram_mb: u64,
    errs: &mut Vec<String>,
) -> Option<vmm::virtio::balloon::BalloonConfig> {
    use crate::machine::parse_switch;
    let mut switch = |name: &str, default: bool| match env.value(name) {
        None => default,
        Some(v) => parse_switch(v).unwrap_or_else(|| {
            errs.push(format!("{name}={v:?} is not on or off"));
            default
        }),
    };
    let on = switch("BALLOON", true);
    let reporting = switch("BALLOON_REPORTING", true);
    let stats = match env.value("BALLOON_STATS_INTERVAL") {
        None => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s <= 3600 => s,
            _ => {
                errs.push(format!(
                    "BALLOON_STATS_INTERVAL={v:?} is not a number of seconds from 0 (only on \
                     request) to 3600"
                ));
                0
            }
        },
    };
    let size_mib = match env.value("BALLOON_SIZE_MIB") {
        None => 0,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= ram_mb => n,
            _ => {
                errs.push(format!(
                    "BALLOON_SIZE_MIB={v:?} is not a size in MiB from 0 to IMG_RAM_MB ({ram_mb})"
                ));
                0
            }
        },
    };
    on.then_some(vmm::virtio::balloon::BalloonConfig {
        reporting,
        stats_interval: (stats > 0).then(|| Duration::from_secs(stats)),
        size_mib,
    })
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && !h.starts_with('.')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        let c = PodConfig::from_env(&Env::from([("HOSTNAME", "vm-0")])).unwrap();
        assert_eq!((c.vcpus, c.ram_mb), (DEFAULT_VCPUS, DEFAULT_RAM_MB));
        assert_eq!(c.control_socket, DEFAULT_CONTROL_SOCKET);
        assert_eq!(c.path("/image"), PathBuf::from("/image"));
        let c = PodConfig::from_env(&Env::from([
            ("HOSTNAME", "vm-0"),
            ("IMG_VCPU", "4"),
            ("IMG_RAM_MB", "2048"),
            ("SEED_FORMAT", "nocloud"),
            ("BERTH_ROOT", "/tmp/pod"),
            ("NO_VNC", "1"),
            ("BERTH_DISK_QUEUES", "2"),
        ]))
        .unwrap();
        assert_eq!((c.vcpus, c.ram_mb, c.no_vnc), (4, 2048, true));
        assert_eq!(c.disk_queues, Some(2));
        assert_eq!(c.seed_format, seed::Format::NoCloud);
        assert_eq!(c.path("/image"), PathBuf::from("/tmp/pod/image"));
        assert!(c.summary().contains("vcpus=4 memory=2048MiB"));
        assert_eq!(c.vhost, VhostMode::Auto);
        let c = PodConfig::from_env(&Env::from([("HOSTNAME", "vm-0"), ("BERTH_VHOST", "off")]))
            .unwrap();
        assert_eq!(c.vhost, VhostMode::Off);
        assert_eq!(c.net_queues, None);
        let c = PodConfig::from_env(&Env::from([
            ("HOSTNAME", "vm-0"),
            ("BERTH_NET_QUEUES", "2"),
        ]))
        .unwrap();
        assert_eq!(c.net_queues, Some(2));
        let b = c.balloon.unwrap();
        assert!(b.reporting && b.stats_interval.is_none() && b.size_mib == 0);
        let c = PodConfig::from_env(&Env::from([
            ("HOSTNAME", "vm-0"),
            ("BALLOON_REPORTING", "off"),
            ("BALLOON_STATS_INTERVAL", "10"),
            ("BALLOON_SIZE_MIB", "128"),
        ]))
        .unwrap();
        let b = c.balloon.unwrap();
        assert!(!b.reporting && b.size_mib == 128);
        assert_eq!(b.stats_interval, Some(Duration::from_secs(10)));
        let c = PodConfig::from_env(&Env::from([("HOSTNAME", "vm-0"), ("BALLOON", "off")]));
        assert_eq!(c.unwrap().balloon, None);
        let metrics = |v: &str| {
            PodConfig::from_env(&Env::from([("HOSTNAME", "vm-0"), ("BERTH_METRICS", v)]))
                .map(|c| c.metrics)
        };
        assert_eq!(metrics("9100").unwrap(), Some(MetricsAt::PodIp(9100)));
        assert_eq!(
            metrics("127.0.0.1:9200").unwrap(),
            Some(MetricsAt::Addr("127.0.0.1:9200".parse().unwrap()))
        );
        for bad in ["0", "x:1", "9100x", "5900"] {
            let e = metrics(bad).unwrap_err();
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(e[0].contains("BERTH_METRICS"), "{e:?}");
        }
    }

    #[test]
    fn console_is_secure_by_default() {
        let cfg = |pairs: &[(&str, &str)]| {
            let env: Env = [("HOSTNAME", "vm-0")]
                .iter()
                .chain(pairs)
                .map(|(k, v)| (*k, *v))
                .collect();
            PodConfig::from_env(&env).unwrap()
        };
        let err = cfg(&[]).check_console().unwrap_err();
        assert!(err.contains("without a password") && err.contains("VNC_PASSWORD"));
        assert!(!err.contains('\n'));
        // An empty password (an empty Secret key) is no password.
        assert!(cfg(&[("VNC_PASSWORD", "")]).check_console().is_err());
        assert!(cfg(&[("VNC_PASSWORD", "pw")]).check_console().is_ok());
        assert!(cfg(&[("NO_VNC", "1")]).check_console().is_ok());
        let open = cfg(&[("VNC_INSECURE", "1")]);
        assert!(open.vnc_insecure && open.check_console().is_ok());
    }

    #[test]
    fn every_problem_is_reported() {
        let errs = PodConfig::from_env(&Env::from([
            ("IMG_VCPU", "0"),
            ("IMG_RAM_MB", "lots"),
            ("SEED_FORMAT", "iso"),
            ("BERTH_SHUTDOWN_TIMEOUT", "0"),
            ("BERTH_CONTROL_UID", "nobody"),
            ("BERTH_VHOST", "yes"),
            ("BERTH_NET_QUEUES", "0"),
            ("BERTH_DISK_QUEUES", "0"),
        ]))
        .unwrap_err();
        assert_eq!(errs.len(), 9, "{errs:#?}");
        for (e, word) in errs.iter().zip([
            "HOSTNAME",
            "IMG_VCPU",
            "IMG_RAM_MB",
            "SEED_FORMAT",
            "BERTH_SHUTDOWN_TIMEOUT",
            "BERTH_CONTROL_UID",
            "BERTH_VHOST",
            "BERTH_NET_QUEUES",
            "BERTH_DISK_QUEUES",
        ]) {
            assert!(e.contains(word), "{e}");
            assert!(!e.contains('\n'));
        }
        let errs = PodConfig::from_env(&Env::from([
            ("HOSTNAME", "vm-0"),
            ("BALLOON", "maybe"),
            ("BALLOON_REPORTING", "2"),
            ("BALLOON_STATS_INTERVAL", "-3"),
            ("BALLOON_SIZE_MIB", "600"),
        ]))
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:#?}");
        for (e, word) in errs.iter().zip([
            "BALLOON=",
            "BALLOON_REPORTING",
            "BALLOON_STATS_INTERVAL",
            "BALLOON_SIZE_MIB",
        ]) {
            assert!(e.contains(word), "{e}");
        }
        let errs = PodConfig::from_env(&Env::from([("HOSTNAME", "../x")])).unwrap_err();
        assert!(errs[0].contains("HOSTNAME"));
    }
}
