"""The pod image: `podman build` of the repository's Containerfile from the prebuilt static
berth binary, in a throw-away podman storage (its own --root/--runroot). The image must be
under 20 MB, hold only /berth and the CA bundle, and run `/berth --version`.

podman works on this project's machines with runc (crun fails there: cgroup hybrid mode), so a
missing or failing podman FAILS this test, with the reason in capitals; it never skips
silently. scripts/setup installs podman and runc."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import unittest
from pathlib import Path

from chartlib import REPO

CONTAINERFILE = REPO / "Containerfile"
BIN = Path(os.environ.get("BERTH_BIN", REPO / "target/x86_64-unknown-linux-gnu/release/berth"))
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TAG = "localhost/berth-chart-test:ci"
MAX_BYTES = 20 * 1000 * 1000
RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
             "--network", "none"]


def is_static_elf(path: Path) -> bool:
    """An x86-64 ELF without a PT_INTERP program header (no dynamic loader needed)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, = struct.unpack("<I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return False
    return True


class Image(unittest.TestCase):
    tmp: str
    podman: list[str]

    @classmethod
    def setUpClass(cls) -> None:
        exe = shutil.which("podman")
        if exe is None:
            raise AssertionError("PODMAN IS NOT INSTALLED: run scripts/setup (it installs podman and runc)")
        if shutil.which("runc") is None:
            raise AssertionError("RUNC IS NOT INSTALLED: run scripts/setup (podman needs runc here; crun fails "
                                 "on this machine kind's cgroup hybrid mode)")
        if not BIN.exists():
            raise AssertionError(f"THE STATIC BERTH BINARY {BIN} IS MISSING: tests/chart/run builds it with "
                                 "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release "
                                 "--target x86_64-unknown-linux-gnu (or set BERTH_BIN)")
        cls.tmp = tempfile.mkdtemp(prefix="berth-image-test.", dir="/var/tmp")
        cls.podman = [exe, "--root", f"{cls.tmp}/root", "--runroot", f"{cls.tmp}/runroot",
                      "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
                      "--events-backend", "none"]
        ctx = Path(cls.tmp) / "ctx"
        ctx.mkdir()
        shutil.copy2(BIN, ctx / "berth")
        shutil.copyfile(CA_BUNDLE, ctx / "ca-certificates.crt")
        cls.build = cls.run_podman("build", "--runtime", "runc", "-f", str(CONTAINERFILE), "-t", TAG, str(ctx),
                                   timeout=600)
        if cls.build.returncode != 0:
            raise AssertionError("PODMAN BUILD FAILED ON THIS MACHINE (rc=%d):\n%s\n%s"
                                 % (cls.build.returncode, cls.build.stdout[-3000:], cls.build.stderr[-3000:]))

    @classmethod
    def tearDownClass(cls) -> None:
        if getattr(cls, "podman", None):
            cls.run_podman("rmi", "-af", timeout=120)
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def run_podman(cls, *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cls.podman + list(args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def test_binary_is_static(self) -> None:
        self.assertTrue(is_static_elf(BIN), f"{BIN} is not a static ELF (has PT_INTERP)")

    def test_build_skipped_the_source_stage(self) -> None:
        # The default target never pulls the build image, so it builds offline.
        self.assertNotIn("debian:bookworm", self.build.stdout + self.build.stderr)

    def test_size_under_20_mb(self) -> None:
        r = self.run_podman("image", "inspect", "--format", "{{.Size}}", TAG)
        self.assertEqual(r.returncode, 0, r.stderr)
        size = int(r.stdout.strip())
        print(f"\n    image size: {size} bytes ({size / 1e6:.1f} MB), binary {BIN.stat().st_size} bytes",
              flush=True)
        self.assertLess(size, MAX_BYTES)

    def test_contains_only_berth_and_the_ca_bundle(self) -> None:
        archive = Path(self.tmp) / "image.tar"
        r = self.run_podman("image", "save", "--format", "docker-archive", "-o", str(archive), TAG)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(archive.stat().st_size, MAX_BYTES)
        files: dict[str, tarfile.TarInfo] = {}
        dirs: set[str] = set()
        with tarfile.open(archive) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
            for layer in manifest[0]["Layers"]:
                with tarfile.open(fileobj=outer.extractfile(layer)) as lt:  # type: ignore[arg-type]
                    for m in lt.getmembers():
                        name = m.name.lstrip("./").rstrip("/")
                        if m.isdir():
                            dirs.add(name)
                        else:
                            files[name] = m
            config = json.load(outer.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        self.assertEqual(sorted(files), ["berth", "etc/ssl/certs/ca-certificates.crt"])
        self.assertTrue(dirs <= {"etc", "etc/ssl", "etc/ssl/certs"}, dirs)
        self.assertTrue(files["berth"].isfile() and files["berth"].mode & 0o111, "berth is not executable")
        self.assertEqual(files["berth"].size, BIN.stat().st_size)
        self.assertEqual(files["etc/ssl/certs/ca-certificates.crt"].size, CA_BUNDLE.stat().st_size)
        cfg = config["config"]
        self.assertEqual(cfg["Entrypoint"], ["/berth"])
        self.assertEqual(cfg["Cmd"], ["pod"])
        self.assertEqual(cfg.get("User"), "0:0")

    def test_version_runs(self) -> None:
        r = self.run_podman("run", "--rm", *RUN_FLAGS, "--cap-drop", "ALL", "--read-only", TAG, "--version")
        self.assertEqual(r.returncode, 0, f"PODMAN RUN FAILED: {r.stdout}{r.stderr}")
        self.assertRegex(r.stdout.strip(), r"^berth \d+\.\d+\.\d+")

    def test_bind_mounted_kvm_is_blocked_by_the_device_cgroup(self) -> None:
        """Evidence for chart/berth/README.md: a hostPath /dev/kvm (a bind mount of the node) is not
        enough in an unprivileged container; runc's device cgroup denies it unless the runtime
        adds the device (--device here; a device plugin or runtime config in Kubernetes)."""
        if not os.path.exists("/dev/kvm"):
            self.skipTest("NO /dev/KVM ON THIS MACHINE: THE DEVICE-CGROUP EVIDENCE DID NOT RUN")
        common = ["run", "--rm", *RUN_FLAGS, "--cap-drop", "ALL", "--read-only"]
        vm = ["vm", "--kernel", "/berth", "--memory", "64"]
        bind = self.run_podman(*common, "-v", "/dev/kvm:/dev/kvm", TAG, *vm)
        self.assertEqual(bind.returncode, 4, f"bind-mounted /dev/kvm: {bind.stderr}")
        self.assertIn("/dev/kvm", bind.stderr)
        dev = self.run_podman(*common, "--device", "/dev/kvm", TAG, *vm)
        # Past /dev/kvm: the "kernel" (berth itself) is rejected instead (exit 5).
        self.assertNotEqual(dev.returncode, 4, f"--device /dev/kvm: {dev.stderr}")
        self.assertNotIn("permission", dev.stderr)


if __name__ == "__main__":
    unittest.main()
