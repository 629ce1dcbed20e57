"""Reading a lab console: timestamping, logging, and splitting it into scenario sections.

The console is a stream of text lines: L1's serial console (QEMU's stdout) in the lab, or the
output of scenarios run directly on the host. Scenario sections are delimited by marker lines
that the L1 /init (guest-images/l1/init) prints, and that direct mode prints the same way:

    === SCENARIO <name> BEGIN timeout=<s>
    === SCENARIO <name> TIMEOUT after <s>s
    === SCENARIO <name> END rc=<rc> secs=<s>
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-Z\\-_]|c)")
BEGIN = re.compile(r"=== SCENARIO (\S+) BEGIN")
TIMEOUT = re.compile(r"=== SCENARIO (\S+) TIMEOUT")
LAB_MARKERS = ("L1-READY", "L1-ERROR", "L1-DONE")
END = re.compile(r"=== SCENARIO (\S+) END rc=(-?\d+)(?: secs=([\d.]+))?")


def clean(raw: str) -> str:
    """Drop terminal escape sequences and carriage returns (SeaBIOS clears the screen)."""
    return _ANSI.sub("", raw).replace("\r", "")


@dataclass
class Section:
    """Everything one scenario printed, plus what its markers said."""

    name: str
    lines: list = field(default_factory=list)
    begun: bool = False
    ended: bool = False
    timed_out: bool = False
    rc: int | None = None
    started: float = 0.0   # host seconds since the console started
    finished: float | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def seconds(self, now: float) -> float:
        """Host wall-clock seconds the scenario took (so far, if it never ended)."""
        return (self.finished if self.finished is not None else now) - self.started


class Console:
    """Consumes console lines: echoes them with elapsed time, logs them, splits sections."""

    def __init__(self, log_path: Path, echo: bool = True):
        self.t0 = time.monotonic()
        self.log = open(log_path, "w", encoding="utf-8")
        self.echo = echo
        self.sections: dict[str, Section] = {}
        self.current: Section | None = None
        self.tail: list = []  # last lines of the whole console
        self.markers: dict = {}  # first line seen for each of LAB_MARKERS
        self.last_line_at = 0.0  # elapsed() when the last line came

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def feed(self, raw: str) -> None:
        """Handle one console line."""
        line = clean(raw.rstrip("\n"))
        now = self.elapsed()
        self.last_line_at = now
        stamped = f"[{now:7.1f}] {line}"
        self.log.write(stamped + "\n")
        self.log.flush()
        if self.echo:
            print(stamped, flush=True)
        self.tail = (self.tail + [line])[-60:]
        for marker in LAB_MARKERS:
            if marker in line and marker not in self.markers:
                self.markers[marker] = line
        self._split(line, now)

    def _split(self, line: str, now: float) -> None:
        if m := BEGIN.search(line):
            sec = Section(m.group(1), begun=True, started=now)
            self.sections[sec.name] = sec
            self.current = sec
            return
        if (m := TIMEOUT.search(line)) and m.group(1) in self.sections:
            self.sections[m.group(1)].timed_out = True
            self.sections[m.group(1)].lines.append(line)
            return
        if (m := END.search(line)) and m.group(1) in self.sections:
            sec = self.sections[m.group(1)]
            sec.ended, sec.rc, sec.finished = True, int(m.group(2)), now
            if self.current is sec:
                self.current = None
            return
        if self.current is not None:
            self.current.lines.append(line)

    def close(self) -> None:
        now = self.elapsed()
        for sec in self.sections.values():
            if sec.finished is None:
                sec.finished = now
        self.log.close()


def stream_process(cmd, console: Console, timeout: float, stdin=subprocess.DEVNULL,
                   env=None, cwd=None, watchdog=None) -> tuple:
    """Run `cmd` (its own process group), feeding each output line to `console`.

    Returns (returncode, timed_out). On timeout the whole process group is killed. `watchdog`,
    if given, is asked about once a second; when it returns a reason (a string) the group is
    killed at once and the reason goes to the console (the run does not count as timed out:
    the caller decides what the watchdog's verdict means).
    """
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=cwd, start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def reader():
        for raw in iter(proc.stdout.readline, b""):
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if watchdog is not None and (reason := watchdog()):
                console.feed(f"lab: WATCHDOG: {reason}")
                kill_group(proc)
                break
            try:
                item = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if item is None:
                break
            console.feed(item)
    except KeyboardInterrupt:
        kill_group(proc)
        raise
    if timed_out:
        kill_group(proc)
    rc = proc.wait()
    return rc, timed_out


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group led by `proc` (it was started with start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        print(f"lab: warning: process {proc.pid} did not die", file=sys.stderr)
