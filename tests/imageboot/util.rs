//! Building small disk images for the imageboot tests: file trees, `mkfs.ext4 -d`, sfdisk
//! partition tables, and running `berth inspect-image`.

use std::fs;
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = base.join(format!("imageboot-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Recognisable fake contents of a file: its name repeated to `len` bytes.
pub fn fake(name: &str, len: usize) -> Vec<u8> {
    name.bytes()
        .chain(b"|".iter().copied())
        .cycle()
        .take(len)
        .collect()
}

/// A file tree under construction.
pub struct Tree(pub PathBuf);

impl Tree {
    pub fn new(dir: &TempDir, name: &str) -> Tree {
        let p = dir.join(name);
        fs::create_dir_all(&p).unwrap();
        Tree(p)
    }

    pub fn file(&self, path: &str, data: &[u8]) -> &Self {
        let p = self.0.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
        self
    }

    /// A kernel or initrd with fake contents named after it.
    pub fn fake(&self, path: &str) -> &Self {
        self.file(path, &fake(path, 40_000))
    }

    pub fn link(&self, path: &str, target: &str) -> &Self {
        let p = self.0.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
        self
    }

    pub fn dir(&self, path: &str) -> &Self {
        fs::create_dir_all(self.0.join(path.trim_start_matches('/'))).unwrap();
        self
    }

    /// The directories that make a tree look like an installed root file system.
    pub fn os_root(&self) -> &Self {
        self.dir("etc").dir("usr/bin").dir("usr/sbin").dir("boot")
    }
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/setup)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mkfs.ext4 -d tree` into a new file of `mib` MiB.
pub fn ext4(tree: &Tree, out: &Path, mib: u64, uuid: &str, label: &str) {
    let f = fs::File::create(out).unwrap();
    f.set_len(mib << 20).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, "-L", label, "-d"])
        .arg(&tree.0)
        .arg(out)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin"));
}

/// A partition to put on a disk: its contents (a file) and its sfdisk type.
pub struct Part<'a> {
    pub contents: Option<&'a Path>,
    pub mib: u64,
    pub sfdisk_type: &'a str,
}

/// Copies the non-zero 64 KiB blocks of `src` into `dst` at `offset` (images are sparse).
pub fn copy_into(src: &Path, dst: &fs::File, offset: u64) {
    let data = fs::read(src).unwrap();
    for (i, chunk) in data.chunks(65536).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            dst.write_all_at(chunk, offset + i as u64 * 65536).unwrap();
        }
    }
}

/// A disk with a `label` ("gpt" or "dos") table made by sfdisk, partitions from 1 MiB on in
/// order (for "dos", a fifth entry and later go into an extended partition as logical ones).
pub fn disk(out: &Path, label: &str, parts: &[Part]) {
    let mut script = format!("label: {label}\n");
    let mut offsets = Vec::new();
    let mut start = 1u64 << 20;
    let logical = label == "dos" && parts.len() > 4;
    for (i, p) in parts.iter().enumerate() {
        if logical && i == 3 {
            script += &format!("start={}, type=5\n", start / 512);
            start += 1 << 20;
        }
        if logical && i >= 3 {
            // Each logical partition follows its EBR.
            start += 1 << 20;
        }
        script += &format!(
            "start={}, size={}, type={}\n",
            start / 512,
            (p.mib << 20) / 512,
            p.sfdisk_type
        );
        offsets.push(start);
        start += p.mib << 20;
    }
    let f = fs::File::create(out).unwrap();
    f.set_len(start + (2 << 20)).unwrap();
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(out)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk package; run scripts/setup)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "sfdisk: {}\n{script}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (p, off) in parts.iter().zip(offsets) {
        if let Some(c) = p.contents {
            copy_into(c, &f, off);
        }
    }
}

/// `berth inspect-image --boot --extract DIR IMAGE` with extra environment.
pub fn inspect(image: &Path, extract: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.args(["inspect-image", "--boot", "--extract"])
        .arg(extract)
        .arg(image)
        .env_remove("KERNEL")
        .env_remove("INITRD")
        .env_remove("KERNEL_CMDLINE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// What a successful `inspect` extracted: (kernel, initrd, cmdline).
pub fn extracted(out: &Output, dir: &Path) -> (Vec<u8>, Option<Vec<u8>>, String) {
    assert!(
        out.status.success(),
        "inspect-image failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let initrd = fs::read(dir.join("initrd")).ok();
    (
        fs::read(dir.join("kernel")).unwrap(),
        initrd,
        fs::read_to_string(dir.join("cmdline")).unwrap(),
    )
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("PATH=$PATH:/usr/sbin:/sbin command -v {cmd}"),
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
