"""The summary table, failure details, and the per-scenario cost history (`lab list`)."""

import json
import time

from . import paths
from .scenario import FAIL, PASS, SKIP

OVERHEAD = "_l1-boot-build-and-shutdown"


def summary(results: list, console_log, total_secs: float, mode: str) -> int:
    """Print failure details and the summary table. Returns the number of failures."""
    for r in results:
        if r.verdict.status == FAIL:
            print(f"\n--- FAIL {r.scenario.name}: " + "; ".join(r.verdict.reasons))
            if r.lines:
                print(f"--- last {min(30, len(r.lines))} console lines of {r.scenario.name}:")
                for line in r.lines[-30:]:
                    print(f"    {line}")
            print(f"--- logs: {r.log or '(no scenario log)'}  and  {console_log}")
    for r in results:
        if r.verdict.status == SKIP:
            print(f"\n*** SKIPPED {r.scenario.name.upper()}: {r.verdict.reasons[0].upper()} ***")

    width = max([len(r.scenario.name) for r in results] + [8])
    print(f"\n{'scenario':<{width}}  {'result':<7}  {'secs':>6}")
    print(f"{'-' * width}  {'-' * 7}  {'-' * 6}")
    for r in results:
        print(f"{r.scenario.name:<{width}}  {r.verdict.status:<7}  {r.seconds:6.1f}")
    print(f"{'(total, ' + mode + ')':<{width}}  {'':<7}  {total_secs:6.1f}")
    print(f"logs: {console_log.parent}")

    counts = {s: sum(r.verdict.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    line = f"lab: {counts[PASS]} passed, {counts[FAIL]} failed"
    if counts[SKIP]:
        line += f", {counts[SKIP]} skipped"
    print(line)
    return counts[FAIL]


def load_costs() -> dict:
    try:
        return json.loads(paths.COSTS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def record_costs(results: list, mode: str, overhead: float | None) -> None:
    """Remember each scenario's last measured cost per mode (shown by `lab list`).

    The file maps scenario name -> mode -> {secs, result, when}.
    """
    costs = load_costs()
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for r in results:
        if r.seconds > 0:
            costs.setdefault(r.scenario.name, {})[mode] = {
                "secs": round(r.seconds, 1), "result": r.verdict.status, "when": when}
    if overhead is not None:
        costs.setdefault(OVERHEAD, {})[mode] = {"secs": round(overhead, 1), "when": when}
    paths.COSTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = paths.COSTS_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(costs, indent=1, sort_keys=True) + "\n")
    tmp.replace(paths.COSTS_FILE)


def describe_cost(entry: dict | None) -> str:
    """'12s PASS (l1)' style text for `lab list`, from a costs entry (mode -> measurement)."""
    if not entry:
        return "never run"
    parts = []
    for mode in ("l1", "direct"):
        m = entry.get(mode)
        if isinstance(m, dict) and "secs" in m:
            parts.append(f"{m['secs']:.0f}s {m.get('result', '')} ({mode})".replace("  ", " "))
    return ", ".join(parts) or "never run"
