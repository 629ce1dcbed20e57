"""Building berth and the guest images (the guest-images/*.sh scripts do the real work)."""

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import paths

CARGO_CMD = ["cargo", "build", "--release", "--target", "x86_64-unknown-linux-gnu"]


class BuildError(RuntimeError):
    """An image or berth build failed; the message says what and where to look."""


def _eval_output(text: str) -> dict:
    """Parse the `KEY=value` lines (printf %q quoted) that the guest-images scripts print."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            out[key] = shlex.split(value)[0] if value else ""
    return out


def run_script(name: str, *args: str, env=None) -> dict:
    """Run guest-images/<name>; its progress lines go to stderr, its results are returned."""
    script = paths.GUEST_IMAGES / name
    proc = subprocess.run([str(script), *args], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise BuildError(f"{script} failed (rc={proc.returncode}); see the messages above")
    return _eval_output(proc.stdout)


def berth_binary(build: bool = True) -> Path:
    """The static berth binary: $BERTH_BIN if set, else built with cargo (static glibc)."""
    if os.environ.get("BERTH_BIN"):
        path = Path(os.environ["BERTH_BIN"]).resolve()
        if not path.is_file():
            raise BuildError(f"BERTH_BIN={path} does not exist")
        return path
    if build:
        print("lab: building berth: RUSTFLAGS='-C target-feature=+crt-static' "
              + " ".join(CARGO_CMD), file=sys.stderr, flush=True)
        env = {**os.environ, "RUSTFLAGS": "-C target-feature=+crt-static"}
        proc = subprocess.run(CARGO_CMD, cwd=paths.REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise BuildError(f"cargo build of berth failed (rc={proc.returncode}):\n{tail}")
    if not paths.BERTH_RELEASE.is_file():
        raise BuildError(f"no berth binary at {paths.BERTH_RELEASE}")
    return paths.BERTH_RELEASE


VMM_TESTS_CMD = ["cargo", "test", "-p", "vmm", "--lib", "--release", "--target",
                 "x86_64-unknown-linux-gnu", "--no-run", "--message-format=json"]


def vmm_tests_binary() -> Path:
    """The vmm crate's unit tests as one static binary, for scenarios with `# needs: vmm-tests`.

    $VMM_TESTS_BIN if set, else built with cargo (static glibc, as berth) and located through
    cargo's JSON messages; a copy named `vmm-tests` next to it is what L1 gets (as
    /lab/bin/vmm-tests: L1_EXTRA_BINS installs by file name).
    """
    if os.environ.get("VMM_TESTS_BIN"):
        path = Path(os.environ["VMM_TESTS_BIN"]).resolve()
        if not path.is_file():
            raise BuildError(f"VMM_TESTS_BIN={path} does not exist")
        return path
    print("lab: building the vmm unit tests: RUSTFLAGS='-C target-feature=+crt-static' "
          + " ".join(VMM_TESTS_CMD), file=sys.stderr, flush=True)
    env = {**os.environ, "RUSTFLAGS": "-C target-feature=+crt-static"}
    proc = subprocess.run(VMM_TESTS_CMD, cwd=paths.REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        raise BuildError(f"cargo test --no-run of vmm failed (rc={proc.returncode}):\n{tail}")
    exe = None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        target = msg.get("target", {})
        if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and target.get("name") == "vmm" and msg.get("profile", {}).get("test")):
            exe = Path(msg["executable"])
    if exe is None:
        raise BuildError("cargo test --no-run of vmm named no test executable")
    out = exe.parent.parent / "vmm-tests"
    tmp = out.with_suffix(".tmp")
    shutil.copyfile(exe, tmp)
    tmp.chmod(0o755)
    tmp.replace(out)
    return out


def l2_images() -> dict:
    """Build or reuse the L2 kernel + initramfs: {'L2_KERNEL': ..., 'L2_INITRD': ...}."""
    return run_script("l2-initramfs.sh")


def l1_disks(scenarios: list) -> dict:
    """Build or reuse the images scenarios attach with `# l1-disk: NAME`: {NAME: path}.

    guest-images/NAME.sh prints a line `..._IMAGE=path`. `NAME:file` attaches the image file's
    bytes instead of the disk it describes (for scenarios that serve the file itself).
    """
    disks = {}
    for sc in scenarios:
        for name in getattr(sc, "l1_disks", []):
            if name not in disks:
                out = run_script(f"{name.split(':')[0]}.sh")
                image = next((v for k, v in out.items() if k.endswith("IMAGE")), None)
                if not image:
                    raise BuildError(f"guest-images/{name}.sh printed no ..._IMAGE= line")
                disks[name] = image
    return disks


def l1_image(plan: list, berth: Path | None, private: Path | None = None,
             extra_bins: list | None = None) -> dict:
    """Build the L1 image for `plan`, a list of (scenario_path, timeout, tty: bool).

    With `private` (a path in the cache's filesystem), the image is also hard-linked there and
    that path is returned, so a concurrent run cannot swap it before QEMU opens it.
    `extra_bins` go to L1 as /lab/bin/<name>, with those of $L1_EXTRA_BINS.
    Returns L1_KERNEL, L1_INITRD, L2_KERNEL, L2_INITRD.
    """
    with tempfile.NamedTemporaryFile("w", prefix="lab-plan.", suffix=".txt") as f:
        for path, timeout, tty in plan:
            f.write(f"{path} {timeout}{' tty' if tty else ''}\n")
        f.flush()
        extra = os.environ.get("L1_EXTRA_BINS", "").split() + [str(b) for b in extra_bins or []]
        env = {"BERTH_BIN": str(berth) if berth else "", "L1_OUTPUT": str(private or ""),
               "L1_EXTRA_BINS": " ".join(extra)}
        return run_script("l1-image.sh", "--plan", f.name, env=env)


@contextlib.contextmanager
def private_l1_path():
    """A private, removed-afterwards name for one run's L1 image, next to the cache."""
    d = paths.cache_dir() / "l1"
    d.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="run.", suffix=".cpio", dir=d)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
