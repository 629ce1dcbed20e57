"""`lab demo`: boot the demo guest (the L2 busybox with an interactive shell) under berth.

With a terminal on stdin, the console is attached to it: keystrokes go through the outer
QEMU's serial into L1, into berth's stdin, into the L2 guest's serial. Without one, the guest
runs `l2.action=reboot` so the demo finishes by itself, and is judged like a scenario.
"""

import subprocess
import sys
from pathlib import Path

from . import scenario as sc_mod

DEMO_SCRIPT = """\
# description: the demo guest: berth boots L2 with l2.action={action}
# timeout: {timeout}
# needs: berth
# expect: L2-UP
# expect: BERTH-EXIT rc=0
[ -x "$BERTH" ] || {{ echo "SKIP: no berth binary in this lab image"; exit 0; }}
# Raw mode: keystrokes (Ctrl-C too) reach the guest unchanged, one by one.
[ -t 0 ] && stty raw -echo
"$BERTH" vm --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --cpus 2 --memory 512 \\
    --cmdline "console=ttyS0 quiet panic=-1 reboot=k l2.action={action}"
rc=$?
[ -t 0 ] && stty sane
echo "BERTH-EXIT rc=$rc"
"""

BANNER_L1 = """\
lab demo: the host /dev/kvm cannot boot Linux ({reason}),
lab demo: so the demo runs through the KVM lab: QEMU emulation (TCG) boots an L1 Linux whose
lab demo: kvm_amd gives a real /dev/kvm, and berth boots the demo guest inside it.
lab demo: this takes ~1-2 minutes before the guest's shell appears."""

HINTS = """\
lab demo: in the guest shell try: grep -c processor /proc/cpuinfo; free; uname -a
lab demo: 'exit' ends the demo (the guest reboots, berth exits, L1 powers off).
lab demo: Ctrl-C goes to the guest; Ctrl-A x is berth's escape: it stops the VM."""


def interactive() -> bool:
    return sys.stdin.isatty()


def write_scenario(directory: Path, shell: bool) -> sc_mod.Scenario:
    """Write the demo scenario file into `directory` and load it."""
    action = "shell" if shell else "reboot"
    timeout = 3600 if shell else 150
    path = directory / "demo.sh"
    path.write_text(DEMO_SCRIPT.format(action=action, timeout=timeout))
    return sc_mod.Scenario.load(path)


def run_attached(cmd: list) -> int:
    """Run `cmd` with the user's terminal as its stdin/stdout (QEMU makes it raw)."""
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130
