"""Scenario files and how their output is judged.

A scenario is a shell script tests/lab/scenarios/<name>.sh whose leading comment lines carry
headers:

    # description: one line shown by `lab list`
    # timeout: 120            seconds inside L1 (default 300)
    # needs: berth            the berth binary must be built (optional)
    # expect: REGEX           must match somewhere in the scenario's output (any number)
    # reject: REGEX           must not match anywhere (any number)
    # l1-disk: NAME           guest-images/NAME.sh builds an image attached to L1 as a virtio
                              disk with serial NAME (writes discarded); in direct mode its path
                              is in $LAB_DISK_<NAME> (upper case, - as _)

Regexes are Python `re` syntax, searched over the whole output with re.MULTILINE (so ^ and $
match at line ends); `(?i)` makes one case-insensitive. A line starting with `SKIP:` marks the
scenario as skipped, with the rest of the line as the reason.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

DEFAULT_TIMEOUT = 300
_HEADER = re.compile(r"^#\s*([a-z0-9-]+):\s?(.*)$")


@dataclass
class Scenario:
    """One scenario file and its parsed headers."""

    name: str
    path: Path
    description: str = ""
    timeout: int = DEFAULT_TIMEOUT
    needs: list = field(default_factory=list)
    expect: list = field(default_factory=list)
    reject: list = field(default_factory=list)
    l1_disks: list = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "Scenario":
        """Parse the header comments at the top of `path` (stops at the first non-comment)."""
        sc = cls(name=path.stem, path=path)
        for line in path.read_text().splitlines():
            if line.startswith("#!"):
                continue
            if not line.startswith("#"):
                break
            m = _HEADER.match(line)
            if not m:
                continue
            key, value = m.group(1), m.group(2).strip()
            if key == "description":
                sc.description = value
            elif key == "timeout":
                sc.timeout = int(value)
            elif key == "needs":
                sc.needs += value.split()
            elif key == "expect":
                sc.expect.append(value)
            elif key == "reject":
                sc.reject.append(value)
            elif key == "l1-disk":
                sc.l1_disks += value.split()
        for rx in sc.expect + sc.reject:
            re.compile(rx)  # a broken regex fails at load time, naming the file below
        return sc


def discover(directory: Path = paths.SCENARIO_DIR) -> dict:
    """All scenarios in `directory`, by name, in name order."""
    return {p.stem: Scenario.load(p) for p in sorted(directory.glob("*.sh"))}


# Scenarios whose name starts with one of these run only when named: benchmarks (run by
# tests/bench/run) are measurements, not tests, and would cost CI minutes for nothing; stress
# scenarios are known to break the emulated L1 itself (its kernel, not berth) and would make
# CI fail for the lab's sake. `lab run` names the ones it leaves out.
ON_REQUEST_PREFIXES = ("bench-", "stress-")


def select(names, directory: Path = paths.SCENARIO_DIR) -> list:
    """The scenarios named (all but the on-request ones if none), in the order given; unknown
    names raise KeyError."""
    found = discover(directory)
    if not names:
        return [s for n, s in found.items() if not n.startswith(ON_REQUEST_PREFIXES)]
    missing = [n for n in names if n.removesuffix(".sh") not in found]
    if missing:
        raise KeyError(f"unknown scenario(s): {', '.join(missing)}; known: {', '.join(found)}")
    return [found[n.removesuffix(".sh")] for n in names]


PASS, FAIL, SKIP = "PASS", "FAIL", "SKIPPED"


@dataclass
class Verdict:
    """The judged result of one scenario run."""

    status: str
    reasons: list = field(default_factory=list)


def judge(sc: Scenario, output: str, *, begun: bool, ended: bool, rc, timed_out: bool) -> Verdict:
    """Turn a scenario's console output and markers into PASS / FAIL / SKIPPED."""
    if not begun:
        return Verdict(FAIL, ["never started (the lab died before reaching it)"])
    for line in output.splitlines():
        if line.startswith("SKIP:"):
            return Verdict(SKIP, [line[len("SKIP:"):].strip() or "no reason given"])
    reasons = []
    if timed_out:
        reasons.append(f"timed out after {sc.timeout}s")
    elif not ended:
        reasons.append("no END marker (the lab stopped or hit its outer timeout)")
    elif rc not in (0, None):
        reasons.append(f"scenario script exited rc={rc}")
    for rx in sc.expect:
        if not re.search(rx, output, re.MULTILINE):
            reasons.append(f"expected /{rx}/ not found")
    for rx in sc.reject:
        m = re.search(rx, output, re.MULTILINE)
        if m:
            reasons.append(f"rejected /{rx}/ found: {m.group(0)!r}")
    return Verdict(FAIL if reasons else PASS, reasons)
