//! Hostile images: a valid GPT + ext4 image is mutated at random (partition table with and
//! without fixed-up checksums, superblock, group descriptors, inodes, directories, extents,
//! grub.cfg) and `berth inspect-image --boot` must end with success or a clean refusal (exit 0
//! or 5) within a time limit and a 1 GiB address-space limit: never a panic, an abort or a hang.
//! Random grub.cfgs (token soup, random nested programs with doubling variables, recursion,
//! self-sourcing and long test chains, one statement repeated thousands of times) run the same
//! way, and must also stay within the evaluator's budget (a few seconds, small memory).
//!
//! BERTH_FUZZ_SEED=N reproduces a run; BERTH_FUZZ_ROUNDS=N changes its length (default 300).

use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{disk, Part, TempDir};
use crate::{debian_grub_cfg, debian_tree, UUID};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Recomputes the primary GPT's entry and header checksums, so mutated fields get parsed.
fn fix_gpt(f: &fs::File) {
    let mut hdr = [0u8; 92];
    f.read_exact_at(&mut hdr, 512).unwrap();
    let mut entries = vec![0u8; 128 * 128];
    f.read_exact_at(&mut entries, 1024).unwrap();
    hdr[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
    hdr[16..20].fill(0);
    let c = crc32(&hdr);
    hdr[16..20].copy_from_slice(&c.to_le_bytes());
    f.write_all_at(&hdr, 512).unwrap();
}

fn seed() -> u64 {
    std::env::var("BERTH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn rounds() -> u64 {
    std::env::var("BERTH_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// Runs inspect-image with limits; returns the exit code or a description of the failure.
fn run_limited(image: &Path) -> Result<i32, String> {
    run_limited_in(image, 1 << 30, Duration::from_secs(30))
}

/// Runs inspect-image with an address-space limit of `mem` bytes and a time limit.
fn run_limited_in(image: &Path, mem: u64, time: Duration) -> Result<i32, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["inspect-image", "--boot", "--format", "raw"])
        .arg(image)
        .env_remove("KERNEL")
        .env_remove("INITRD")
        .env_remove("KERNEL_CMDLINE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: mem,
                rlim_max: mem,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return match st.code() {
                Some(c @ (0 | 5)) => Ok(c),
                Some(c) => Err(format!("exit {c}: {err}")),
                None => Err(format!("killed by a signal ({st:?}): {err}")),
            };
        }
        if t0.elapsed() > time {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {time:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn build(d: &TempDir, csum: bool) -> (std::path::PathBuf, u64) {
    let cfg = debian_grub_cfg(UUID, "6.1.0-10-amd64", "6.1.0-9-amd64", "");
    let t = debian_tree(d, if csum { "tc" } else { "tn" }, Some(&cfg));
    let root = d.join("root.ext4");
    // 1 KiB blocks keep the metadata dense; without metadata_csum damage reaches the parsers.
    let f = fs::File::create(&root).unwrap();
    f.set_len(4 << 20).unwrap();
    let mut args = vec!["-q", "-F", "-b", "1024", "-U", UUID];
    if !csum {
        args.extend(["-O", "^metadata_csum"]);
    }
    crate::util::run(
        Command::new("mkfs.ext4")
            .args(&args)
            .arg("-d")
            .arg(&t.0)
            .arg(&root)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"),
    );
    let img = d.join(if csum { "fuzz-c.raw" } else { "fuzz-n.raw" });
    disk(
        &img,
        "gpt",
        &[Part {
            contents: Some(&root),
            mib: 4,
            sfdisk_type: "L",
        }],
    );
    (img, 1 << 20)
}

#[test]
fn mutated_images_never_panic_hang_or_exhaust_memory() {
    let seed = seed();
    let rounds = rounds();
    eprintln!("fuzz: seed {seed} ({rounds} rounds; BERTH_FUZZ_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let d = TempDir::new("fuzz");
    let images = [build(&d, true), build(&d, false)];
    let mut outcomes = [0u32; 2];
    for round in 0..rounds {
        let (img, part) = &images[(round % 2) as usize];
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img)
            .unwrap();
        let len = f.metadata().unwrap().len();
        // Where to hit: the GPT, the ext4 metadata near the partition start, or anywhere.
        let region = match rng.below(5) {
            0 => (0, 34 * 512),
            1 => (*part + 1024, 2048),
            2 => (*part, 64 * 1024),
            3 => (*part, 1 << 20),
            _ => (0, len),
        };
        let mut saved = Vec::new();
        for _ in 0..1 + rng.below(24) {
            // Bytes, bit flips, and whole little-endian fields (counts, offsets, sizes).
            let off = (region.0 + rng.below(region.1)).min(len - 4) & !3;
            let mut old = [0u8; 4];
            f.read_exact_at(&mut old, off).unwrap();
            let v = u32::from_le_bytes(old);
            let new = match rng.below(7) {
                0 => 0,
                1 => u32::MAX,
                2 => v ^ (1 << rng.below(32)),
                3 => 0x7fff_ffff,
                4 => v.wrapping_add(1 + rng.below(16) as u32),
                5 => (v & !0xff) | rng.below(256) as u32,
                _ => rng.next() as u32,
            };
            f.write_all_at(&new.to_le_bytes(), off).unwrap();
            saved.push((off, old));
        }
        let mut gpt = None;
        if region.0 == 0 && rng.below(2) == 0 {
            let mut g = vec![0u8; 34 * 512];
            f.read_exact_at(&mut g, 0).unwrap();
            fix_gpt(&f);
            gpt = Some(g);
        }
        match run_limited(img) {
            Ok(c) => outcomes[usize::from(c != 0)] += 1,
            Err(e) => {
                let keep = d.0.with_extension(format!("failed-{round}.raw"));
                let _ = fs::copy(img, &keep);
                panic!(
                    "round {round} (seed {seed}): {e}; image kept at {}",
                    keep.display()
                );
            }
        }
        if let Some(g) = gpt {
            f.write_all_at(&g, 0).unwrap();
        }
        for (off, old) in saved.into_iter().rev() {
            f.write_all_at(&old, off).unwrap();
        }
    }
    eprintln!("fuzz: {} booted, {} refused", outcomes[0], outcomes[1]);
    assert!(
        outcomes[1] > 0,
        "no mutation was ever refused: the mutations do not reach the parsers"
    );
}

/// The size of the grub.cfg slot rewritten in place each round (half of the per-file budget).
const SLOT: usize = 256 << 10;

/// An image whose grub.cfg is a [`SLOT`]-sized file stored contiguously; returns the image and
/// where the file's bytes are in it.
fn build_slot(d: &TempDir) -> (std::path::PathBuf, u64) {
    let marker: Vec<u8> = (0..SLOT)
        .map(|i| {
            if i % 64 == 0 {
                b'\n'
            } else {
                b"#GRUBFUZZ"[i % 9]
            }
        })
        .collect();
    let t = debian_tree(d, "ts", None);
    t.file("/boot/grub/grub.cfg", &marker);
    let root = d.join("slot.ext4");
    let f = fs::File::create(&root).unwrap();
    f.set_len(4 << 20).unwrap();
    crate::util::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024", "-U", UUID, "-d"])
            .arg(&t.0)
            .arg(&root)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"),
    );
    let img = d.join("slot.raw");
    disk(
        &img,
        "gpt",
        &[Part {
            contents: Some(&root),
            mib: 4,
            sfdisk_type: "L",
        }],
    );
    let bytes = fs::read(&img).unwrap();
    let at = bytes
        .windows(SLOT)
        .position(|w| w == marker.as_slice())
        .expect("mkfs.ext4 stored the grub.cfg contiguously");
    (img, at as u64)
}

/// A random grub.cfg: token soup, a random nested program, or one statement repeated.
fn random_cfg(rng: &mut Rng) -> String {
    const SOUP: &[&str] = &[
        "if",
        "then",
        "else",
        "fi",
        "{",
        "}",
        ";",
        "\n",
        "menuentry",
        "submenu",
        "function",
        "f",
        "'q'",
        "\"$a\"",
        "$a",
        "${a}",
        "[",
        "]",
        "-o",
        "-a",
        "!",
        "=",
        "set",
        "a=$a$a",
        "linux",
        "initrd",
        "/boot/vmlinuz-6.1.0-10-amd64",
        "source",
        "$prefix/grub.cfg",
        "load_env",
        "default=0>1",
        "\\",
        "#",
    ];
    let mut s = String::new();
    match rng.below(3) {
        0 => {
            for _ in 0..rng.below(4000) {
                s += SOUP[rng.below(SOUP.len() as u64) as usize];
                s.push(' ');
            }
        }
        1 => {
            s += "a=0123456789abcdef\n";
            let len = rng.below(SLOT as u64) as usize;
            while s.len() < len {
                s += &statement(rng, 0);
                s.push('\n');
            }
        }
        _ => {
            // One statement many times, `@` numbered (so each stores a new variable, entry..).
            s += "a=0123456789abcdef\n";
            s += &"a=$a$a\n".repeat(rng.below(16) as usize);
            let one = statement(rng, 1);
            for i in 0..rng.below(20_000) {
                let one = one.replace('@', &i.to_string());
                if s.len() + one.len() >= SLOT - 100 {
                    break;
                }
                s += &one;
                s.push('\n');
            }
        }
    }
    s
}

/// A random statement, with blocks nested up to a few levels.
fn statement(rng: &mut Rng, depth: u32) -> String {
    let body = |rng: &mut Rng| {
        if depth > 3 {
            return "true".to_owned();
        }
        (0..1 + rng.below(4))
            .map(|_| statement(rng, depth + 1))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let n = rng.below(100);
    match rng.below(22) {
        0 => "a=$a$a".into(),
        1 => format!("set v@{n}=\"$a\" w@{n}=$a"),
        2 => format!("true {}", "$a ".repeat(rng.below(200) as usize)),
        3 => "[ -e /boot/$a ]".into(),
        4 => format!(
            "[ x = y {}]",
            "-o x = y ".repeat(rng.below(30_000) as usize)
        ),
        5 => format!("f{}", rng.below(4)),
        6 => format!("function f{} {{ {} }}", rng.below(4), body(rng)),
        7 => format!(
            "if [ -n \"$a\" ]; then {}; else {}; fi",
            body(rng),
            body(rng)
        ),
        8 => format!("menuentry 'm@{n}' --id m{n} {{ {} }}", body(rng)),
        9 => format!("submenu 's{n}' {{ {} }}", body(rng)),
        10 => "source $prefix/grub.cfg".into(),
        11 => "configfile (hd0,gpt1)/boot/grub/grub.cfg".into(),
        12 => "load_env".into(),
        13 => format!("search --no-floppy --fs-uuid --set=root {UUID}"),
        14 => "linux /boot/vmlinuz-6.1.0-10-amd64 root=/dev/vda1 $a".into(),
        15 => "initrd /boot/initrd.img-6.1.0-10-amd64".into(),
        16 => format!("set default={}", rng.below(5)),
        17 => format!("set default='s{n}>m{}'", rng.below(100)),
        18 => "unset a".into(),
        19 => format!("[ {}x ]", "! ".repeat(rng.below(100_000) as usize)),
        20 => "b=$a$b".into(),
        _ => format!("set default=\"$a\"; search --file --set=r /boot/$a{n}"),
    }
}

#[test]
fn random_grub_cfgs_stay_within_the_budget() {
    let seed = seed();
    let rounds = rounds() / 2;
    eprintln!("grub fuzz: seed {seed} ({rounds} rounds; BERTH_FUZZ_SEED={seed} repeats it)");
    let mut rng = Rng(seed);
    let d = TempDir::new("grubfuzz");
    let (img, at) = build_slot(&d);
    let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    let mut outcomes = [0u32; 2];
    let mut slowest = Duration::ZERO;
    for round in 0..rounds {
        let cfg = random_cfg(&mut rng);
        let mut slot = cfg.into_bytes();
        slot.truncate(SLOT - 1);
        // The rest of the file is one comment: the file keeps its size, nothing else runs.
        slot.push(b'\n');
        slot.resize(SLOT, b'#');
        f.write_all_at(&slot, at).unwrap();
        // Well under the budget's worst case: 256 MiB of address space, 20 s (debug build).
        let t0 = Instant::now();
        let r = run_limited_in(&img, 256 << 20, Duration::from_secs(20));
        slowest = slowest.max(t0.elapsed());
        match r {
            Ok(c) => outcomes[usize::from(c != 0)] += 1,
            Err(e) => {
                let keep = d.0.with_extension(format!("grub-failed-{round}.cfg"));
                let _ = fs::write(&keep, &slot);
                panic!(
                    "round {round} (seed {seed}): {e}; grub.cfg kept at {}",
                    keep.display()
                );
            }
        }
    }
    eprintln!(
        "grub fuzz: {} booted, {} refused, slowest {slowest:?}",
        outcomes[0], outcomes[1]
    );
}
