"""Choosing where scenarios run: inside the emulated L1 (`l1`) or directly on the host.

LAB_MODE=auto (default) probes: a host whose /dev/kvm is kvm_pvm (/sys/module/kvm_pvm exists)
or has no /dev/kvm uses the L1 lab without trying; otherwise berth is run once directly with
the L2 guest for up to PROBE_TIMEOUT seconds, and `direct` is chosen if the guest prints L2-UP.
"""

import os
import subprocess
from pathlib import Path

PROBE_TIMEOUT = 30
MODES = ("auto", "l1", "direct")


def requested() -> str:
    mode = os.environ.get("LAB_MODE", "auto")
    if mode not in MODES:
        raise SystemExit(f"lab: LAB_MODE must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def host_kvm_problem() -> str | None:
    """Why the host /dev/kvm surely cannot boot Linux, or None if it might."""
    if Path("/sys/module/kvm_pvm").exists():
        return "/dev/kvm is kvm_pvm (a software nested hypervisor that cannot boot Linux)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm on this host"
    return None


def probe_direct(berth: Path, l2_kernel: str, l2_initrd: str) -> tuple:
    """Try to boot the L2 guest with berth on the host. Returns (ok, explanation)."""
    cmd = [str(berth), "vm", "--kernel", l2_kernel, "--initrd", l2_initrd, "--cpus", "1",
           "--memory", "256", "--cmdline", "console=ttyS0 quiet panic=-1 reboot=k l2.action=reboot"]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=PROBE_TIMEOUT)
        out = proc.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode("utf-8", "replace")
    if "L2-UP" in out:
        return True, "berth booted the L2 guest directly on the host"
    last = out.strip().splitlines()[-1:] or ["no output"]
    return False, f"berth could not boot Linux on the host /dev/kvm ({last[0][:120]})"


def choose(berth: Path | None, l2: dict | None) -> tuple:
    """Decide the mode. Returns (mode, reason). `l2` holds L2_KERNEL/L2_INITRD for a probe."""
    mode = requested()
    if mode != "auto":
        return mode, f"LAB_MODE={mode}"
    problem = host_kvm_problem()
    if problem:
        return "l1", problem
    if berth is None or l2 is None:
        return "l1", "no berth binary to probe the host /dev/kvm with"
    ok, why = probe_direct(berth, l2["L2_KERNEL"], l2["L2_INITRD"])
    return ("direct" if ok else "l1"), why
