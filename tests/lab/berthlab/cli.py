"""The `lab` command line: build, run, demo, list. See tests/lab/README.md."""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import demo, images, modes, paths, report, runner
from . import scenario as sc_mod
from .console import Console


def say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def new_logdir() -> Path:
    """A fresh target/lab-logs/<UTC timestamp>/, pointed to by target/lab-logs/latest.

    Only the newest $LAB_KEEP_LOGS (default 30) run directories are kept.
    """
    d = paths.LOG_ROOT / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while d.exists():
        n += 1
        d = d.with_name(d.name.split(".")[0] + f".{n}")
    d.mkdir(parents=True)
    latest = paths.LOG_ROOT / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(d.name)
    keep = int(os.environ.get("LAB_KEEP_LOGS", "30"))
    runs = sorted(p for p in paths.LOG_ROOT.iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name[:1].isdigit())
    for old in runs[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return d


def get_berth(scenarios: list) -> tuple:
    """Build berth if a scenario needs it. Returns (path or None, {name: reason not run})."""
    needy = [s for s in scenarios if "berth" in s.needs]
    if not needy:
        return None, {}
    try:
        return images.berth_binary(), {}
    except images.BuildError as e:
        print(f"lab: ERROR: {e}", file=sys.stderr)
        first = str(e).splitlines()[0]
        return None, {s.name: f"not run: {first}" for s in needy}


def get_extra_bins(scenarios: list) -> tuple:
    """Build the test binaries scenarios need (`# needs: vmm-tests`).

    Returns ([paths for L1's /lab/bin], {name: reason not run}).
    """
    needy = [s for s in scenarios if "vmm-tests" in s.needs]
    if not needy:
        return [], {}
    try:
        t0 = time.monotonic()
        path = images.vmm_tests_binary()
        say(f"vmm unit tests: {path} ({time.monotonic() - t0:.0f}s)")
        return [path], {}
    except images.BuildError as e:
        print(f"lab: ERROR: {e}", file=sys.stderr)
        first = str(e).splitlines()[0]
        return [], {s.name: f"not run: {first}" for s in needy}


# How many fresh L1s may take over from one that died (tests/lab/README.md): two clean-clone CI
# runs on 2026-12-05 lost three L1s each (in berth-gate, berth-metrics, net-mq).
MAX_L1_RETRIES = 5


def run_in_l1(scenarios: list, berth, console: Console, extra_bins=None) -> tuple:
    """One L1 boot that runs `scenarios`: (outer QEMU's exit status, whether it timed out)."""
    plan = [(s.path, s.timeout, False) for s in scenarios]
    with images.private_l1_path() as private:
        imgs = images.l1_image(plan, berth, private, extra_bins)
        return runner.run_l1(scenarios, imgs, console, images.l1_disks(scenarios))


def execute(scenarios: list, mode=None, berth=None) -> int:
    """Build what is needed, run `scenarios` in the chosen mode, report. Returns exit status.

    `mode` (a (mode, reason) pair) and `berth` skip the probe and the build when already known.
    """
    not_run = {}
    if berth is None:
        berth, not_run = get_berth(scenarios)
    extra_bins, failed_bins = get_extra_bins([s for s in scenarios if s.name not in not_run])
    not_run.update(failed_bins)
    runnable = [s for s in scenarios if s.name not in not_run]
    try:
        disks = images.l1_disks(runnable)
    except images.BuildError as e:
        print(f"lab: ERROR: {e}", file=sys.stderr)
        not_run.update({s.name: f"not run: {e}" for s in runnable if s.l1_disks})
        runnable = [s for s in runnable if s.name not in not_run]
        disks = images.l1_disks(runnable)
    l2 = images.l2_images()
    mode, reason = mode or modes.choose(berth, l2)
    say(f"mode {mode}: {reason}")
    logdir = new_logdir()
    console = Console(logdir / "console.log")
    t0 = time.monotonic()
    overhead = None
    retried = []
    try:
        if runnable and mode == "direct":
            runner.run_direct(runnable, berth, l2, console, disks, extra_bins)
        elif runnable:
            rc, timed_out = run_in_l1(runnable, berth, console, extra_bins)
            for attempt in range(1, MAX_L1_RETRIES + 1):
                again = (runner.unfinished(runnable, console)
                         if runner.l1_crashed(console, timed_out) else [])
                if not again:
                    break
                # L1 is an emulated nested hypervisor (TCG + SVM); its own kernel has been seen
                # to die (a stack overflow in KVM's vCPU path; with the 6.12 L1 twice in one CI
                # run) while berth's guest was healthy a moment before. A fresh L1 runs what the
                # dead one had not finished, at most MAX_L1_RETRIES times.
                names = [s.name for s in again]
                retried += [n for n in names if n not in retried]
                how = (f"stuck in {hung}, killed by the harness" if (hung := console.markers.pop(
                    "L1-HUNG", None)) else f"its kernel died; outer QEMU rc={rc}")
                say(f"L1 CRASHED ({how}): RETRYING {', '.join(names)} in a fresh L1 (retry "
                    f"{attempt} of {MAX_L1_RETRIES}); the earlier attempts stay in console.log")
                console.feed(f"lab: ==== L1 CRASHED: RETRYING {' '.join(names)} in a fresh L1 ====")
                console.markers.pop("L1-READY", None)
                console.current = None
                rc, timed_out = run_in_l1(again, berth, console, extra_bins)
            if timed_out:
                say(f"ERROR: outer QEMU hit its timeout ({runner.outer_timeout(runnable)}s) and was killed")
            for marker in ("L1-READY", "L1-DONE"):
                if marker not in console.markers:
                    say(f"ERROR: L1 never printed {marker} (outer QEMU rc={rc})")
            if "L1-ERROR" in console.markers:
                say(f"ERROR: {console.markers['L1-ERROR']}")
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        console.close()
    total = time.monotonic() - t0
    results = runner.judge_all(scenarios, console, logdir, not_run)
    if mode == "l1" and runnable:
        overhead = total - sum(r.seconds for r in results)
    failed = report.summary(results, logdir / "console.log", total, mode)
    if retried:
        say(f"NOTE: L1 CRASHED; {', '.join(retried)} ran again in a fresh L1 (results above "
            "are from that run; the crashed attempt is in console.log)")
    report.record_costs(results, mode, overhead)
    return 1 if failed else 0


def cmd_run(args) -> int:
    try:
        scenarios = sc_mod.select(args.scenarios)
    except KeyError as e:
        say(str(e.args[0]))
        return 2
    if not args.scenarios:
        left = [n for n in sc_mod.discover() if n.startswith(sc_mod.ON_REQUEST_PREFIXES)]
        say(f"NOT RUN (on request only, name them to run them): {', '.join(left)}")
    return execute(scenarios)


def cmd_build(args) -> int:
    scenarios = sc_mod.select([])
    try:
        berth = images.berth_binary()
    except images.BuildError as e:
        say(f"ERROR: {e}")
        berth = None
    plan = [(s.path, s.timeout, False) for s in scenarios]
    imgs = images.l1_image(plan, berth)
    for key, value in imgs.items():
        print(f"{key}={value}")
    print(f"BERTH_BIN={berth or '(not built)'}")
    return 0 if berth else 1


def cmd_list(args) -> int:
    costs = report.load_costs()
    scenarios = sc_mod.discover()
    width = max(len(n) for n in scenarios)
    print(f"{'scenario':<{width}}  {'timeout':>7}  {'last cost':<16}  description")
    for name, sc in scenarios.items():
        cost = report.describe_cost(costs.get(name))
        print(f"{name:<{width}}  {sc.timeout:>6}s  {cost:<16}  {sc.description}")
    overhead = costs.get(report.OVERHEAD, {}).get("l1")
    if overhead:
        print(f"(plus ~{overhead['secs']:.0f}s per `lab run` in l1 mode: image build, L1 boot "
              "and shutdown)")
    return 0


def cmd_demo(args) -> int:
    shell = demo.interactive()
    with tempfile.TemporaryDirectory(prefix="lab-demo.") as tmp:
        sc = demo.write_scenario(Path(tmp), shell)
        try:
            berth = images.berth_binary()
        except images.BuildError as e:
            say(f"ERROR: {e}")
            return 1
        l2 = images.l2_images()
        mode, reason = modes.choose(berth, l2)
        if mode != "direct":
            print(demo.BANNER_L1.format(reason=reason), flush=True)
        if not shell:
            say("stdin is not a terminal: the demo guest runs l2.action=reboot and ends by itself")
            return execute([sc], mode=(mode, reason), berth=berth)
        if mode == "direct":
            say(f"mode direct: {reason}")
            print(demo.HINTS, flush=True)
            return demo.run_attached([str(berth), "vm", "--kernel", l2["L2_KERNEL"],
                                      "--initrd", l2["L2_INITRD"], "--cpus", "2",
                                      "--memory", "512", "--cmdline",
                                      "console=ttyS0 quiet panic=-1 reboot=k l2.action=shell"])
        with images.private_l1_path() as private:
            imgs = images.l1_image([(sc.path, sc.timeout, True)], berth, private)
            print(demo.HINTS, flush=True)
            # No mux, no signals: every key (Ctrl-C, Ctrl-A) passes through to L1 and berth.
            serial = ["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"]
            return demo.run_attached(runner.l1_command(imgs, serial))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="lab", description="berth's KVM lab: real-guest tests (see tests/lab/README.md)",
        epilog="env: LAB_MODE=auto|l1|direct, BERTH_BIN, BERTH_CACHE, LAB_L1_CPU, LAB_L1_MEM")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build berth and the guest images (reusing the cache)")
    p = sub.add_parser("run", help="run scenarios (default: all) and report PASS/FAIL")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    sub.add_parser("demo", help="boot the demo guest with its console on this terminal")
    sub.add_parser("list", help="list scenarios with their last measured cost")
    args = ap.parse_args(argv)
    handler = {"build": cmd_build, "run": cmd_run, "demo": cmd_demo, "list": cmd_list}[args.cmd]
    try:
        return handler(args)
    except images.BuildError as e:
        say(f"ERROR: {e}")
        return 1
