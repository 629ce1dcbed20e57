//! berth confines itself (docs/security.md): run as a child process (`berth vm` with a tiny
//! ELF guest built here, which runs on any /dev/kvm), berth must
//! - end with exit code 14 and one line naming the syscall when a vCPU or worker thread makes
//!   a syscall outside its allow-list (BERTH_SECCOMP_SELFTEST makes the thread do it);
//! - after set-up, have every thread at CapEff 0, NoNewPrivs 1 and Seccomp 2, and with
//!   BERTH_UID, every thread on that uid;
//! - refuse a bad BERTH_SECCOMP with one line.
//!
//! cargo test --test sandbox (needs /dev/kvm)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("berth-sandbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An ELF64 "vmlinux" with one PT_LOAD segment at 1 MiB whose code halts forever with
/// interrupts off (`cli; hlt; jmp .-3`): the vCPU sleeps in KVM and costs nothing.
fn tiny_elf(dir: &Path) -> PathBuf {
    const LOAD: u64 = 0x10_0000;
    let code: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];
    let (ehsize, phsize) = (64u64, 56u64);
    let off = ehsize + phsize;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, System V
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    f.extend_from_slice(&ehsize.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(ehsize as u16).to_le_bytes());
    f.extend_from_slice(&(phsize as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&off.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(code);
    let p = dir.join("tiny.elf");
    std::fs::write(&p, f).unwrap();
    p
}

fn need_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "THESE TESTS NEED /dev/kvm: run them on a host with KVM"
    );
}

/// `berth vm` on the tiny guest with a raw disk (so a virtio-blk worker exists once the
/// guest... never activates it; the disk is opened and confined all the same).
fn berth_vm(dir: &Path, env: &[(&str, &str)], extra: &[&str]) -> Child {
    let kernel = tiny_elf(dir);
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args([
        "vm",
        "--memory",
        "64",
        "--shutdown-timeout",
        "1",
        "--kernel",
    ])
    .arg(&kernel)
    .arg("--disk")
    .arg(format!("{},format=raw", disk.display()))
    .args(extra)
    .env_remove("BERTH_SECCOMP")
    .env_remove("BERTH_UID")
    .env_remove("BERTH_GID")
    .env_remove("BERTH_SECCOMP_SELFTEST")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("run berth")
}

/// Waits (at most 60 s) for berth to exit; returns its exit code and stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&line);
            s.push('\n');
        }
        let _ = tx.send(s);
    });
    let text = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("berth did not exit within 60 s");
        });
    (child.wait().unwrap().code(), text)
}

fn forbidden_syscall_kills(thread: &str) {
    forbidden_syscall_kills_with(thread, &[]);
}

fn forbidden_syscall_kills_with(thread: &str, extra: &[&str]) {
    need_kvm();
    let dir = TempDir::new(thread);
    let child = berth_vm(&dir.0, &[("BERTH_SECCOMP_SELFTEST", thread)], extra);
    let (code, err) = finish(child);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("syscall 63 (uname)"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line naming the syscall, number and name; stderr:\n{err}"
    );
    assert!(lines[0].contains(&format!("the {thread} thread")), "{err}");
    assert_eq!(code, Some(14), "exit code 14; stderr:\n{err}");
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_thread_ends_berth_naming_it() {
    forbidden_syscall_kills("vcpu");
}

#[test]
fn a_forbidden_syscall_on_the_console_thread_ends_berth_naming_it() {
    forbidden_syscall_kills("console");
}

#[test]
fn a_forbidden_syscall_on_the_metrics_thread_ends_berth_naming_it() {
    forbidden_syscall_kills_with("metrics", &["--metrics", "127.0.0.1:0"]);
}

/// A free TCP port on loopback (bound, read, released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The metrics thread serves scrapes from the confined process: its filter allows what a
/// scrape takes (accept, socket I/O, pread of /proc/self/statm opened before the lockdown).
#[test]
fn metrics_are_served_by_the_confined_process() {
    use std::io::{Read, Write};
    need_kvm();
    let dir = TempDir::new("metrics");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = berth_vm(&dir.0, &[], &["--metrics", &addr]);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("berth: confined:") => break,
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "berth never said it is confined; stderr:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1000));
    let mut body = String::new();
    for _ in 0..2 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        body.clear();
        c.read_to_string(&mut body).unwrap();
    }
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(alive, "berth died serving a scrape:\n{body}");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("berth_vm_vcpus 1\n"), "{body}");
    let rss = body
        .lines()
        .find_map(|l| l.strip_prefix("berth_resident_memory_bytes "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(rss > 1 << 20, "RSS from the statm fd: {rss}\n{body}");
    assert!(
        body.contains(r#"berth_disk_bytes_total{disk="vda",op="read"}"#),
        "{body}"
    );
}

#[test]
fn log_mode_lets_the_forbidden_syscall_through() {
    need_kvm();
    let dir = TempDir::new("log");
    let mut child = berth_vm(
        &dir.0,
        &[("BERTH_SECCOMP_SELFTEST", "vcpu"), ("BERTH_SECCOMP", "log")],
        &[],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "berth keeps running in log mode"
    );
    let _ = child.kill();
    let (_, err) = finish(child);
    assert!(!err.contains("syscall 63"), "{err}");
}

#[test]
fn bad_seccomp_values_are_refused_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["vm", "--seccomp", "maybe", "--kernel", "/nonexistent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not on, log or off"), "{err}");
}

/// The fields of /proc/PID/task/TID/status for every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, std::collections::HashMap<String, String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let e = e.unwrap();
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let fields = status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect::<std::collections::HashMap<_, _>>();
        out.push((fields["Name"].clone(), fields));
    }
    out
}

/// Runs berth until it said it is confined, then checks every thread.
fn confined_threads(env: &[(&str, &str)], uid: &str) {
    need_kvm();
    let dir = TempDir::new(&format!("caps{uid}"));
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = berth_vm(&dir.0, env, &[]);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("berth: confined:") => break,
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "berth never said it is confined; stderr:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    // The vCPU and console threads start right after the message.
    std::thread::sleep(Duration::from_millis(1500));
    let all = threads(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"vcpu0"), "{names:?}");
    assert!(names.contains(&"signals"), "{names:?}");
    for (name, f) in &all {
        assert_eq!(f["CapEff"], "0000000000000000", "{name} CapEff");
        assert_eq!(f["CapPrm"], "0000000000000000", "{name} CapPrm");
        assert_eq!(f["NoNewPrivs"], "1", "{name} NoNewPrivs");
        assert_eq!(f["Seccomp"], "2", "{name} Seccomp");
        let uids: Vec<&str> = f["Uid"].split_whitespace().collect();
        assert_eq!(uids, [uid; 4], "{name} Uid");
    }
}

#[test]
fn after_set_up_every_thread_is_confined() {
    // SAFETY: geteuid has no failure mode.
    let uid = unsafe { libc::geteuid() }.to_string();
    confined_threads(&[], &uid);
}

#[test]
fn as_root_with_berth_uid_every_thread_switches() {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("NOT ROOT: the uid switch needs root; DID NOT RUN");
        return;
    }
    confined_threads(&[("BERTH_UID", "65534")], "65534");
}
