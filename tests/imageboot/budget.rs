//! Hostile images that cost too much rather than being damaged: a grub.cfg that expands 32 KiB
//! variables into thousands of values and arguments, and a 2 GiB sparse initramfs (a few
//! blocks in the image, 2 GiB once extracted). Both must end in one line and exit 5, quickly,
//! with a small peak memory (measured as the child's maximum resident set from wait4).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::TempDir;
use crate::{debian_disk, debian_grub_cfg, debian_tree, UUID};

/// What a measured `berth inspect-image --boot` run did.
struct Run {
    code: Option<i32>,
    stderr: String,
    /// Peak resident memory of berth itself (VmHWM just before it exits), in bytes.
    peak: u64,
    took: Duration,
}

/// `VmHWM` of a process, in bytes.
fn vm_hwm(pid: libc::pid_t) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Runs `berth inspect-image --boot IMAGE ARGS` and measures its peak memory exactly: the
/// child is traced (PTRACE_TRACEME) so it stops as it exits, while its memory still exists,
/// and its VmHWM is read then. (wait4's ru_maxrss would also count the test process's own
/// peak, which a spawned child inherits as its starting point.)
fn inspect_measured(image: &Path, args: &[&str]) -> Run {
    let t0 = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["inspect-image", "--boot", "--format", "raw"])
        .args(args)
        .arg(image)
        .env_remove("KERNEL")
        .env_remove("INITRD")
        .env_remove("KERNEL_CMDLINE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: ptrace(PTRACE_TRACEME) is a plain system call, safe between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped by the waitpid loop below, which must see the ptrace stops std's wait() hides.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let mut peak = 0;
    let mut exec_seen = false;
    let code = loop {
        let mut st = 0;
        // SAFETY: waits for our own child (std does not wait for it: the Child was taken
        // apart above); ptrace requests go to that stopped tracee from this, its tracer, thread.
        unsafe {
            assert_eq!(libc::waitpid(pid, &mut st, 0), pid);
            if libc::WIFEXITED(st) {
                break Some(libc::WEXITSTATUS(st));
            }
            if libc::WIFSIGNALED(st) {
                break None;
            }
            let sig = libc::WSTOPSIG(st);
            let mut deliver = 0;
            if sig == libc::SIGTRAP && !exec_seen {
                // The stop after exec: ask for a stop at exit too.
                exec_seen = true;
                libc::ptrace(
                    libc::PTRACE_SETOPTIONS,
                    pid,
                    0,
                    libc::PTRACE_O_TRACEEXIT as libc::c_long,
                );
            } else if st >> 8 == libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8) {
                peak = vm_hwm(pid);
            } else {
                deliver = sig;
            }
            libc::ptrace(libc::PTRACE_CONT, pid, 0, deliver as libc::c_long);
        }
    };
    let mut err = String::new();
    use std::io::Read;
    stderr.read_to_string(&mut err).unwrap();
    eprintln!(
        "{args:?}: exit {code:?} after {:?}, peak {} KiB: {err}",
        t0.elapsed(),
        peak >> 10
    );
    assert!(peak > 0, "no exit stop seen");
    Run {
        code,
        stderr: err,
        peak,
        took: t0.elapsed(),
    }
}

/// The refusal every over-budget image must give: one line, exit 5, naming the override.
fn assert_refused(r: &Run, what: &[&str]) {
    assert_eq!(r.code, Some(5), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    for w in what {
        assert!(r.stderr.contains(w), "{w:?} not in: {}", r.stderr);
    }
    assert!(r.stderr.contains("KERNEL=<bzImage>"), "{}", r.stderr);
}

#[test]
fn grub_cfg_bomb_ends_in_one_line_with_little_memory() {
    let d = TempDir::new("bomb");
    // A 32 KiB variable made by doubling, then stored again and again under new names and
    // passed as thousands of arguments: ~60 KB of grub.cfg asking for hundreds of MiB.
    let mut bomb = String::from("a=0123456789abcdef\n");
    bomb += &"a=$a$a\n".repeat(11);
    for line in 0..60 {
        let vars: String = (0..100).map(|i| format!(" v{line}_{i}=$a")).collect();
        bomb += &format!("set{vars}\n");
    }
    bomb += &format!(
        "menuentry x {{ linux /boot/vmlinuz-6.1.0-10-amd64 {} }}\n",
        "$a ".repeat(2000)
    );
    let cfg = debian_grub_cfg(UUID, "6.1.0-10-amd64", "6.1.0-9-amd64", &bomb);
    let t = debian_tree(&d, "t", Some(&cfg));
    let img = debian_disk(&d, &t, UUID);
    let r = inspect_measured(&img, &[]);
    assert_refused(
        &r,
        &[
            "/boot/grub/grub.cfg on partition 3",
            "the image's grub.cfg goes over berth's limit of 16777216 bytes",
        ],
    );
    // The budget is 16 MiB made in total; berth itself is a few MiB.
    assert!(
        r.peak < 48 << 20,
        "peak memory {} MiB (the bomb asks for hundreds)",
        r.peak >> 20
    );
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
}

#[test]
fn grub_cfg_with_a_long_test_chain_is_evaluated_or_refused_never_aborts() {
    // `[ a = b -o a = b -o ... ]`: each -o was a level of recursion, and 20000 of them
    // overflowed berth's stack (an abort, exit by SIGABRT) though the file is only 180 KB.
    // Now the chain is evaluated in a loop: it is true, so default=1 picks the submenu.
    let d = TempDir::new("chain");
    let chain = |n| {
        format!(
            "if [ {}x = x ]; then set default=1; fi\n",
            "a = b -o ".repeat(n)
        )
    };
    let cfg = debian_grub_cfg(UUID, "6.1.0-10-amd64", "6.1.0-9-amd64", &chain(20_000));
    let t = debian_tree(&d, "t", Some(&cfg));
    let img = debian_disk(&d, &t, UUID);
    let r = inspect_measured(&img, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.peak < 48 << 20, "peak memory {} MiB", r.peak >> 20);
    // Four times as long: over the budget, one line.
    let d = TempDir::new("chain4");
    let cfg = debian_grub_cfg(UUID, "6.1.0-10-amd64", "6.1.0-9-amd64", &chain(80_000));
    let t = debian_tree(&d, "t", Some(&cfg));
    let img = debian_disk(&d, &t, UUID);
    let r = inspect_measured(&img, &[]);
    assert_refused(
        &r,
        &[
            "/boot/grub/grub.cfg on partition 3",
            "goes over berth's limit",
        ],
    );
}

#[test]
fn sparse_2_gib_initrd_is_refused_before_it_is_read() {
    let d = TempDir::new("sparse");
    let t = debian_tree(&d, "t", None);
    // mkfs.ext4 -d keeps holes: the file takes no blocks in the 16 MiB file system.
    let initrd = t.0.join("boot/initrd.img-6.1.0-10-amd64");
    fs::remove_file(&initrd).unwrap();
    fs::File::create(&initrd).unwrap().set_len(2 << 30).unwrap();
    let img = debian_disk(&d, &t, UUID);
    // The pod's default guest (512 MiB) may unpack at most 256 MiB.
    let r = inspect_measured(&img, &[]);
    assert_refused(
        &r,
        &[
            "initramfs /boot/initrd.img-6.1.0-10-amd64 is 2048 MiB",
            "more than the 256 MiB the guest can unpack",
            "IMG_RAM_MB",
        ],
    );
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
    assert!(r.peak < 48 << 20, "peak memory {} MiB", r.peak >> 20);
    // The limit follows the guest's memory: just below 4 GiB, 2 GiB does not fit yet.
    let r = inspect_measured(&img, &["--memory", "4095"]);
    assert_refused(&r, &["more than the 2047 MiB"]);
}

#[test]
fn an_initrd_within_half_of_guest_memory_still_boots() {
    let d = TempDir::new("sparse-ok");
    let t = debian_tree(&d, "t", None);
    let initrd = t.0.join("boot/initrd.img-6.1.0-10-amd64");
    fs::remove_file(&initrd).unwrap();
    fs::File::create(&initrd)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let img = debian_disk(&d, &t, UUID);
    let r = inspect_measured(&img, &["--memory", "64"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = inspect_measured(&img, &["--memory", "39"]);
    assert_refused(&r, &["is 20 MiB, more than the 19 MiB"]);
}
