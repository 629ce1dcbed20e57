"""Running scenarios, inside the emulated L1 or directly on the host, and judging them."""

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import scenario as sc_mod
from .console import Console, stream_process
from .paths import LIB_DIR

# Outer QEMU: TCG with an emulated SVM CPU, so L1's kvm_amd gives a real /dev/kvm.
L1_APPEND = "console=ttyS0 panic=-1 quiet"
L1_BOOT_ALLOWANCE = 120    # seconds for QEMU start + L1 boot + module loading + shutdown
PER_SCENARIO_SLACK = 5
# L1's /init kills a scenario at its timeout and prints END at once. When no END comes this long
# after the timeout, L1 itself is stuck (seen in CI: an L2 vCPU wedged in L1's KVM and L1 never
# returned from killing berth); waiting for the outer timeout (the sum of every scenario's
# timeout) would overrun CI's budget, so the harness kills L1 and runs the rest in a fresh one.
HANG_GRACE = 60
# A scenario whose console stays silent this long is on a wedged L1 too: in passing runs the
# longest silence was 45 s (bench-disk between fio runs; 42 s in berth-balloon, 33 s in
# berth-gate), while a wedged L1 in CI printed nothing for 20 minutes until the scenario's
# timeout (berth-gate's is 900 s). 180 s is four times the longest passing silence.
# LAB_SILENCE_LIMIT overrides it (0: no limit).
SILENCE_LIMIT = 180


def qemu_binary() -> str:
    q = os.environ.get("LAB_QEMU") or shutil.which("qemu-system-x86_64")
    if not q:
        raise SystemExit("lab: qemu-system-x86_64 not found; run scripts/setup (as root)")
    return q


def disk_env_name(name: str) -> str:
    """LAB_DISK_<NAME>: the variable naming an l1-disk image in direct mode."""
    return "LAB_DISK_" + name.upper().replace("-", "_").replace(":", "_")


def l1_command(images: dict, serial: list | None = None, disks: dict | None = None) -> list:
    """The outer QEMU command line booting L1 with the given images.

    `disks` ({name: qcow2 path}) become virtio disks with serial=name; snapshot=on sends L1's
    writes to a throwaway overlay, so the cached image is never changed.
    """
    drives = []
    for n, (name, path) in enumerate((disks or {}).items()):
        fmt = "raw" if name.endswith(":file") else "qcow2"
        disk_serial = name.replace(":", "-")
        drives += ["-drive", f"file={path},if=none,id=labdisk{n},format={fmt},snapshot=on",
                   "-device", f"virtio-blk-pci,drive=labdisk{n},serial={disk_serial}"]
    return [
        qemu_binary(), "-accel", "tcg,thread=multi", "-cpu", os.environ.get("LAB_L1_CPU", "max"),
        "-smp", "2", "-m", os.environ.get("LAB_L1_MEM", "5G"), "-M", "q35",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        *(serial or ["-serial", "stdio"]),
        "-kernel", images["L1_KERNEL"], "-initrd", images["L1_INITRD"], "-append", L1_APPEND,
        *drives,
    ]


def outer_timeout(scenarios: list) -> int:
    """The whole L1 run may take the sum of the scenarios' timeouts plus boot allowance."""
    return L1_BOOT_ALLOWANCE + sum(s.timeout + PER_SCENARIO_SLACK for s in scenarios)


@dataclass
class Result:
    scenario: sc_mod.Scenario
    verdict: sc_mod.Verdict
    seconds: float
    lines: list
    log: Path | None = None


def l1_watchdog(scenarios: list, console: Console):
    """A watchdog for stream_process: a reason to kill L1 when it is stuck, else None.

    L1 is stuck when it does not come up within L1_BOOT_ALLOWANCE, when the running scenario
    has printed nothing for SILENCE_LIMIT seconds, or when it has not ended HANG_GRACE seconds
    after its timeout. L1's /init prints END as soon as the
    killed scenario's shell is reaped, and SIGKILL ends berth even in a deadlock of its own, so a
    missing END means L1's kernel is wedged (in CI: a 2-vCPU L2's vCPU stalled, then L1 never
    finished killing it): that is L1's failure like a crash, and `unfinished` sends the stuck
    scenario and those after it to a fresh L1, once.
    """
    timeouts = {s.name: s.timeout for s in scenarios}
    started = console.elapsed()
    silence = float(os.environ.get("LAB_SILENCE_LIMIT", SILENCE_LIMIT))

    def check():
        now = console.elapsed()
        if "L1-READY" not in console.markers:
            if now - started > L1_BOOT_ALLOWANCE:
                console.markers["L1-HUNG"] = "L1 did not come up"
                return f"L1 did not come up within {L1_BOOT_ALLOWANCE}s (no ready marker): killing it"
            return None
        sec = console.current
        if sec is None or sec.ended or sec.name not in timeouts:
            return None
        quiet = now - max(console.last_line_at, sec.started)
        if silence > 0 and quiet > silence:
            console.markers["L1-HUNG"] = sec.name
            return (f"L1 IS STUCK: {sec.name} has printed nothing for {quiet:.0f}s (passing runs "
                    f"stay under a minute); killing L1")
        over = now - sec.started - timeouts[sec.name]
        if over > HANG_GRACE:
            console.markers["L1-HUNG"] = sec.name
            return (f"L1 IS STUCK: {sec.name} has not ended {over:.0f}s after its "
                    f"{timeouts[sec.name]}s timeout; killing L1")
        return None

    return check


def run_l1(scenarios: list, images: dict, console: Console, disks: dict | None = None) -> tuple:
    """Boot L1 once and let its /init run the scenarios. Returns (qemu rc, timed_out)."""
    cmd = l1_command(images, disks=disks)
    limit = outer_timeout(scenarios)
    console.feed(f"lab: outer QEMU (timeout {limit}s): {' '.join(cmd)}")
    return stream_process(cmd, console, limit, watchdog=l1_watchdog(scenarios, console))


def scenario_env(berth: Path | None, l2: dict, scratch: Path, disks: dict | None = None,
                 extra_bins: list | None = None) -> dict:
    """The environment a scenario gets (the same names as inside L1). On the host the extra
    binaries are not in /lab/bin: LAB_BIN_<NAME> (vmm-tests: LAB_BIN_VMM_TESTS) names each."""
    return {
        **{"LAB_BIN_" + Path(b).name.upper().replace("-", "_"): str(b) for b in extra_bins or []},
        **{disk_env_name(n): p for n, p in (disks or {}).items()},
        **os.environ,
        "BERTH": str(berth) if berth else "/nonexistent/berth",
        "QEMU": qemu_binary(),
        "L2_KERNEL": l2["L2_KERNEL"],
        "L2_INITRD": l2["L2_INITRD"],
        "SCRATCH": str(scratch),
        "LAB_MODE": "direct",
        "LAB_LIB": str(LIB_DIR),
    }


def run_direct(scenarios: list, berth: Path | None, l2: dict, console: Console,
               disks: dict | None = None, extra_bins: list | None = None) -> None:
    """Run the scenarios on the host, printing the same markers L1's /init prints."""
    for sc in scenarios:
        scratch = Path(tempfile.mkdtemp(prefix=f"lab-{sc.name}."))
        console.feed(f"=== SCENARIO {sc.name} BEGIN timeout={sc.timeout}")
        t0 = time.monotonic()
        rc, timed_out = stream_process(["sh", str(sc.path)], console, sc.timeout,
                                       env=scenario_env(berth, l2, scratch, disks, extra_bins),
                                       cwd=scratch)
        if timed_out:
            console.feed(f"=== SCENARIO {sc.name} TIMEOUT after {sc.timeout}s")
            rc = 137
        console.feed(f"=== SCENARIO {sc.name} END rc={rc} secs={time.monotonic() - t0:.1f}")
        shutil.rmtree(scratch, ignore_errors=True)


def l1_crashed(console: Console, timed_out: bool) -> bool:
    """Whether L1 came up and then died on its own: ready, never done, no error of its /init,
    and the outer QEMU exited rather than being killed at its timeout (L1 panics reboot, and
    -no-reboot turns that into an exit)."""
    m = console.markers
    return not timed_out and "L1-READY" in m and "L1-DONE" not in m and "L1-ERROR" not in m


def unfinished(scenarios: list, console: Console) -> list:
    """The scenarios whose END marker never came (the one running when L1 died, and the rest),
    but not one that hit its own timeout while L1 was alive: that is its failure, not L1's. The
    scenario L1 got stuck in (the watchdog's L1-HUNG) did time out, yet L1 could not end it."""
    hung = console.markers.get("L1-HUNG")
    return [s for s in scenarios
            if s.name == hung
            or not (sec := console.sections.get(s.name)) or not (sec.ended or sec.timed_out)]


def judge_all(scenarios: list, console: Console, logdir: Path, not_run: dict) -> list:
    """Judge each scenario from its console section and write <logdir>/<name>.log."""
    results = []
    now = console.elapsed()
    for sc in scenarios:
        if sc.name in not_run:
            verdict = sc_mod.Verdict(sc_mod.FAIL, [not_run[sc.name]])
            results.append(Result(sc, verdict, 0.0, []))
            continue
        sec = console.sections.get(sc.name)
        if sec is None:
            verdict = sc_mod.judge(sc, "", begun=False, ended=False, rc=None, timed_out=False)
            results.append(Result(sc, verdict, 0.0, []))
            continue
        verdict = sc_mod.judge(sc, sec.text, begun=sec.begun, ended=sec.ended, rc=sec.rc,
                               timed_out=sec.timed_out)
        log = logdir / f"{sc.name}.log"
        with open(log, "w", encoding="utf-8") as f:
            f.write(sec.text + "\n")
            f.write(f"--- {verdict.status} ({sec.seconds(now):.1f}s) "
                    + "; ".join(verdict.reasons) + "\n")
        results.append(Result(sc, verdict, sec.seconds(now), sec.lines, log))
    return results
