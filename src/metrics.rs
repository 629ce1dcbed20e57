//! The `/metrics` endpoint: berth's counters in the Prometheus (OpenMetrics) text format,
//! served over plain HTTP on `berth vm --metrics ADDR:PORT` or the pod's `BERTH_METRICS`.
//!
//! The endpoint faces the pod network, so the server is deliberately small and strict: one
//! thread of its own (seccomp kind `metrics`), one connection at a time, a request of at most
//! [`MAX_REQUEST`] bytes that must arrive within [`DEADLINE`], the reply written within the same
//! deadline, then the connection is closed. Only `GET /metrics` (and `/`) is answered.
//!
//! What is exported: the VM counters of [`vmm::metrics`] (vCPU exits, disks, NICs), and gauges
//! refreshed at every scrape from [`Facts`] (state, boots, uptime, size, RSS, balloon, DHCP,
//! VNC). `berth status --json` carries the same samples ([`samples_json`]).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use vmm::metrics::{Labels, VmMetrics};
use vmm::virtio::balloon::{BalloonShared, PFN_SHIFT, STAT_NAMES};

/// Largest request accepted (request line and headers).
pub const MAX_REQUEST: usize = 4096;
/// Time a client has to send its request, and again to take the reply.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// What the gauges are set from at each scrape.
#[derive(Default)]
pub struct Facts {
    /// "starting", "running", "rebooting", "stopping".
    pub state: &'static str,
    /// Boots so far.
    pub boots: u64,
    /// When the current boot started.
    pub since: Option<Instant>,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The balloon, if any.
    pub balloon: Option<Arc<BalloonShared>>,
    /// Whether the VM holds its DHCP lease (pod only).
    pub lease: Option<bool>,
    /// VNC viewers connected now (when VNC is on).
    pub vnc_clients: Option<usize>,
}

/// Gathers the facts at scrape time (from the pod's status, or `berth vm`'s own).
pub type FactSource = Box<dyn Fn() -> Facts + Send>;

const STATES: [&str; 4] = ["starting", "running", "rebooting", "stopping"];

/// The registry with every berth metric, and the gauges refreshed at scrape time.
pub struct Exporter {
    registry: Registry,
    vm: Arc<VmMetrics>,
    facts: FactSource,
    rss: Option<File>,
    state: Family<Labels, Gauge>,
    boots: Counter,
    uptime: Gauge,
    vcpus: Gauge,
    memory: Gauge,
    resident: Gauge,
    balloon: Family<Labels, Gauge>,
    balloon_totals: Family<Labels, Counter>,
    guest_stats: Family<Labels, Gauge>,
    lease: Gauge,
    vnc: Gauge,
}

impl Exporter {
    /// Registers every metric. Opens /proc/self/statm for the RSS now, while berth may still
    /// open files (before it confines itself).
    pub fn new(facts: FactSource) -> Arc<Mutex<Exporter>> {
        let mut registry = Registry::default();
        let vm = Arc::new(VmMetrics::register(&mut registry));
        let e = Exporter {
            vm,
            facts,
            rss: File::open("/proc/self/statm").ok(),
            state: Family::default(),
            boots: Counter::default(),
            uptime: Gauge::default(),
            vcpus: Gauge::default(),
            memory: Gauge::default(),
            resident: Gauge::default(),
            balloon: Family::default(),
            balloon_totals: Family::default(),
            guest_stats: Family::default(),
            lease: Gauge::default(),
            vnc: Gauge::default(),
            registry,
        };
        let mut e = e;
        let r = &mut e.registry;
        r.register(
            "berth_vm_state",
            "1 for the VM's current state",
            e.state.clone(),
        );
        r.register(
            "berth_vm_boots",
            "Boots of the VM (a guest reboot is one more)",
            e.boots.clone(),
        );
        r.register(
            "berth_vm_uptime_seconds",
            "Seconds since the current boot",
            e.uptime.clone(),
        );
        r.register("berth_vm_vcpus", "vCPUs of the VM", e.vcpus.clone());
        r.register(
            "berth_vm_memory_bytes",
            "Guest memory size",
            e.memory.clone(),
        );
        r.register(
            "berth_resident_memory_bytes",
            "Resident memory of the berth process (guest memory it holds included)",
            e.resident.clone(),
        );
        r.register(
            "berth_balloon_bytes",
            "Balloon size: what the host asks (target) and what the guest gave (actual)",
            e.balloon.clone(),
        );
        r.register(
            "berth_balloon_released_bytes",
            "Guest memory released to the host, by how (reporting: free page reporting, \
             inflate: balloon inflation)",
            e.balloon_totals.clone(),
        );
        r.register(
            "berth_balloon_guest_stat",
            "The guest's memory statistics from the balloon (bytes, or counts for faults and swap)",
            e.guest_stats.clone(),
        );
        r.register(
            "berth_dhcp_lease_bound",
            "1 while the VM holds the lease berth's DHCP server gave it",
            e.lease.clone(),
        );
        r.register("berth_vnc_clients", "VNC viewers connected", e.vnc.clone());
        Arc::new(Mutex::new(e))
    }

    /// The VM counters, for the devices and vCPUs.
    pub fn vm_metrics(&self) -> Arc<VmMetrics> {
        self.vm.clone()
    }

    fn rss_bytes(&self) -> Option<u64> {
        let f = self.rss.as_ref()?;
        let mut buf = [0u8; 128];
        let n = f.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * u64::try_from(page).ok()?)
    }

    /// Sets the gauges from the facts now.
    fn refresh(&self) {
        self.vm.refresh();
        let f = (self.facts)();
        for s in STATES {
            let v = i64::from(s == f.state);
            self.state
                .get_or_create(&vec![("state".into(), s.into())])
                .set(v);
        }
        catch_up(&self.boots, f.boots);
        self.uptime
            .set(f.since.map_or(0, |t| t.elapsed().as_secs() as i64));
        self.vcpus.set(i64::from(f.vcpus));
        self.memory.set((f.memory_mib << 20) as i64);
        if let Some(r) = self.rss_bytes() {
            self.resident.set(r as i64);
        }
        if let Some(b) = &f.balloon {
            b.request_stats();
            let s = b.snapshot();
            let page = 1i64 << PFN_SHIFT;
            let kind = |k: &str| vec![("kind".to_owned(), k.to_owned())];
            self.balloon
                .get_or_create(&kind("target"))
                .set(i64::from(s.target_pages) * page);
            self.balloon
                .get_or_create(&kind("actual"))
                .set(i64::from(s.actual_pages) * page);
            let how = |k: &str| vec![("how".to_owned(), k.to_owned())];
            catch_up(
                &self.balloon_totals.get_or_create(&how("reporting")),
                s.reported_bytes,
            );
            catch_up(
                &self.balloon_totals.get_or_create(&how("inflate")),
                s.inflated_pages << PFN_SHIFT,
            );
            for (name, v) in STAT_NAMES.iter().zip(s.stats.values) {
                if let Some(v) = v {
                    self.guest_stats
                        .get_or_create(&vec![("stat".into(), (*name).into())])
                        .set(v as i64);
                }
            }
        }
        if let Some(l) = f.lease {
            self.lease.set(i64::from(l));
        }
        if let Some(v) = f.vnc_clients {
            self.vnc.set(v as i64);
        }
    }

    /// The metrics in the text format, refreshed.
    pub fn render(&self) -> String {
        self.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Raises a counter to `value` (counters only go up; the sources are monotonic).
fn catch_up(c: &Counter<u64, AtomicU64>, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

/// The samples of `text` as a JSON object: `"name{labels}": value` (for `berth status
/// --json`, which carries the same counters as `/metrics`).
pub fn samples_json(text: &str) -> Value {
    let mut m = serde_json::Map::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                m.insert(name.to_owned(), serde_json::json!(v));
            }
        }
    }
    Value::Object(m)
}

/// The OpenMetrics text in the classic Prometheus text format (0.0.4): counters are declared
/// under their sample name (`x_total`), and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn to_classic(text: &str) -> String {
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let declared = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(declared.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Serves `/metrics` on `addr` from a thread of its own; returns the bound address.
pub fn serve(addr: SocketAddr, exporter: Arc<Mutex<Exporter>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    sandbox::spawn("berth-metrics", sandbox::ThreadKind::Metrics, move || {
        for conn in listener.incoming() {
            // One at a time, each within the deadline: a stalled client delays a scrape by at
            // most 2 x DEADLINE and holds no memory beyond MAX_REQUEST.
            match conn {
                Ok(c) => {
                    let _ = answer(c, &exporter);
                }
                // Out of descriptors or memory: back off instead of spinning.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })?;
    Ok(local)
}

/// Reads one request (bounded in size and time) and answers it.
fn answer(mut conn: TcpStream, exporter: &Mutex<Exporter>) -> std::io::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if req.windows(4).any(|w| w == b"\r\n\r\n") || req.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || req.len() >= MAX_REQUEST {
            break false;
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => req.extend_from_slice(&buf[..n.min(MAX_REQUEST - req.len())]),
            Err(_) => break false,
        }
    };
    let line = req
        .split(|&b| b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_owned())
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if !complete {
        (
            "400 Bad Request",
            "text/plain",
            "request too large, slow or incomplete\n".to_owned(),
        )
    } else if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else if path != "/metrics" && path != "/" && !path.starts_with("/metrics?") {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    } else {
        let text = exporter.lock().expect("exporter lock poisoned").render();
        // Prometheus asks for OpenMetrics in its Accept header; everything else (curl,
        // promtool, older scrapers) gets the classic text format.
        let head = String::from_utf8_lossy(&req).to_ascii_lowercase();
        if head.contains("application/openmetrics-text") {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        } else {
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                to_classic(&text),
            )
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let left = deadline.saturating_duration_since(Instant::now());
    conn.set_write_timeout(Some(left.max(Duration::from_millis(100)) + DEADLINE))?;
    conn.write_all(head.as_bytes())?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes())?;
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, req: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(req).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    /// Parses the OpenMetrics text strictly enough to catch malformed output: every sample
    /// belongs to a family declared by `# TYPE` (with the type's suffixes), values parse, and
    /// the text ends with `# EOF`. Returns the samples.
    fn parse(text: &str) -> Vec<(String, f64)> {
        let mut families: Vec<(String, String)> = Vec::new();
        let mut samples = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
        for l in &lines[..lines.len() - 1] {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (n, t) = rest.split_once(' ').unwrap();
                families.push((n.into(), t.into()));
                continue;
            }
            if l.starts_with("# HELP ") || l.starts_with("# UNIT ") {
                continue;
            }
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample {l:?}"));
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("value in {l:?}"));
            let bare = name.split('{').next().unwrap();
            let ok = families.iter().any(|(f, t)| {
                let suffixes: &[&str] = match t.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| bare == format!("{f}{s}"))
            });
            assert!(ok, "sample {bare} of no declared family");
            if name.contains('{') {
                assert!(name.ends_with('}'), "labels of {l:?}");
            }
            samples.push((name.to_owned(), v));
        }
        samples
    }

    /// `promtool check metrics` (Debian's prometheus package) on `text`, when installed.
    fn promtool_check(text: &str) {
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            eprintln!(
                "note: promtool not installed (apt-get install prometheus); skipped its check"
            );
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Prometheus' Python client parses `text` as OpenMetrics (strictly: it raises on any
    /// format error), from the venv scripts/setup makes, when it is there.
    fn openmetrics_parser_check(text: &str) {
        use std::process::{Command, Stdio};
        let venv = std::env::var("BERTH_VENV").unwrap_or_else(|_| "/opt/berth-venv".into());
        let py = format!("{venv}/bin/python");
        let script = "import sys\n\
            from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
            fams = list(text_string_to_metric_families(sys.stdin.read()))\n\
            print(len(fams), sum(len(f.samples) for f in fams))\n";
        let Ok(mut child) = Command::new(&py)
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            eprintln!("note: no {py} (scripts/setup); skipped the OpenMetrics parser check");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'prometheus_client'") {
            eprintln!("note: prometheus_client not in {venv} (scripts/setup); skipped its check");
            return;
        }
        assert!(out.status.success(), "OpenMetrics parser: {err}");
    }

    #[test]
    fn scrape_parses_and_counts_what_happened() {
        let boots = Arc::new(AtomicU64::new(2));
        let b2 = boots.clone();
        let balloon = BalloonShared::new(Default::default(), 512).unwrap();
        let since = Instant::now();
        let exporter = Exporter::new(Box::new(move || Facts {
            state: "running",
            boots: b2.load(std::sync::atomic::Ordering::SeqCst),
            since: Some(since),
            vcpus: 2,
            memory_mib: 512,
            balloon: Some(balloon.clone()),
            lease: Some(true),
            vnc_clients: Some(3),
        }));
        let vm = exporter.lock().unwrap().vm_metrics();
        vm.vcpu(0).count(vmm::metrics::ExitKind::MmioWrite);
        // A disk and a NIC, so their counters and histograms are in the text too.
        let _disk = vm.disk("vda");
        let _nic = vm.nic("eth0");
        let addr = serve("127.0.0.1:0".parse().unwrap(), exporter.clone()).unwrap();
        let reply = get(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; \
              version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
        );
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        let samples = parse(body);
        openmetrics_parser_check(body);
        // Without the Accept header: the classic format, which promtool checks.
        let classic = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        let (head, classic) = classic.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert!(
            classic.contains("# TYPE berth_vm_boots_total counter\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"));
        promtool_check(classic);
        let value = |n: &str| {
            samples
                .iter()
                .find(|(s, _)| s == n)
                .unwrap_or_else(|| panic!("{n} missing in\n{body}"))
                .1
        };
        assert_eq!(value(r#"berth_vm_state{state="running"}"#), 1.0);
        assert_eq!(value(r#"berth_vm_state{state="stopping"}"#), 0.0);
        assert_eq!(value("berth_vm_boots_total"), 2.0);
        assert_eq!(value("berth_vm_vcpus"), 2.0);
        assert_eq!(value("berth_vm_memory_bytes"), 512.0 * 1048576.0);
        assert!(value("berth_resident_memory_bytes") > 1e6);
        assert_eq!(value(r#"berth_balloon_bytes{kind="target"}"#), 0.0);
        assert_eq!(value("berth_dhcp_lease_bound"), 1.0);
        assert_eq!(value("berth_vnc_clients"), 3.0);
        assert_eq!(
            value(r#"berth_disk_bytes_total{disk="vda",op="write"}"#),
            0.0
        );
        assert_eq!(
            value(r#"berth_disk_operation_seconds_count{disk="vda",op="flush"}"#),
            0.0
        );
        assert_eq!(
            value(r#"berth_net_drops_total{nic="eth0",direction="tx"}"#),
            0.0
        );
        assert_eq!(
            value(r#"berth_vcpu_exits_total{vcpu="0",reason="mmio_write"}"#),
            1.0
        );
        // Counters follow their sources between scrapes.
        boots.store(3, std::sync::atomic::Ordering::SeqCst);
        let body = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(body.contains("berth_vm_boots_total 3\n"), "{body}");
        promtool_check(body.split_once("\r\n\r\n").unwrap().1);
        // The status JSON carries the same samples.
        let text = exporter.lock().unwrap().render();
        let j = samples_json(&text);
        assert_eq!(j["berth_vm_boots_total"], 3.0);
        assert_eq!(j[r#"berth_vm_state{state="running"}"#], 1.0);
    }

    #[test]
    fn bad_requests_get_errors_and_slow_ones_are_cut() {
        let exporter = Exporter::new(Box::new(Facts::default));
        let addr = serve("127.0.0.1:0".parse().unwrap(), exporter).unwrap();
        assert!(get(addr, b"GET /secret HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let huge = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 10000]].concat();
        assert!(get(addr, &huge).starts_with("HTTP/1.1 400"));
        // A client that never finishes its request is answered 400 after the deadline, and
        // the next client is served after it.
        let t = Instant::now();
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /metr").unwrap();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let waited = t.elapsed();
        assert!(waited < DEADLINE * 3, "served after {waited:?}");
        let mut rest = String::new();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = slow.read_to_string(&mut rest);
        assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
    }
}
