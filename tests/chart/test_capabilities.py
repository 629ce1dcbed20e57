"""Why the chart grants exactly CAP_NET_ADMIN, CAP_NET_RAW, CAP_CHOWN, CAP_SETGID and CAP_SETUID
(chart/berth/README.md, "Security model"; the last three for the switch to the unprivileged uid
after set-up, docs/security.md): each operation berth does in the pod, run as root in a fresh network namespace with
only the given capabilities (setpriv --bounding-set), succeeds with the chart's set and fails
when the capability it needs is taken away. Opening /dev/kvm and creating a VM needs none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import unittest

from chartlib import cirros, container, find, render

# One operation per argument; exits 0 on success, 1 with the error on failure.
PROBE = r'''
import fcntl, os, socket, struct, subprocess, sys
op = sys.argv[1]
try:
    if op == "bridge":
        subprocess.run(["ip", "link", "add", "br0", "type", "bridge"], check=True, capture_output=True)
    elif op == "tap":
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"berthtap0", 0x0002 | 0x1000))  # TUNSETIFF
    elif op == "nftables":
        subprocess.run(["nft", "add", "table", "ip", "berth"], check=True, capture_output=True)
    elif op == "af_packet":
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800)).close()
    elif op == "chown":
        probe = f"/tmp/berth-cap-probe-{os.getpid()}"
        open(probe, "w").close()
        try:
            os.chown(probe, 65534, 65534)
        finally:
            try:
                os.unlink(probe)
            except OSError:
                pass
    elif op == "setgid":
        os.setgroups([65534])
        os.setresgid(65534, 65534, 65534)
    elif op == "setuid":
        os.setresuid(65534, 65534, 65534)
    elif op == "kvm":
        fd = os.open("/dev/kvm", os.O_RDWR)
        assert fcntl.ioctl(fd, 0xAE00) == 12          # KVM_GET_API_VERSION
        os.close(fcntl.ioctl(fd, 0xAE01, 0))          # KVM_CREATE_VM
except subprocess.CalledProcessError as e:
    print(f"{op}: {e.stderr.decode().strip()}", file=sys.stderr)
    sys.exit(1)
except Exception as e:
    print(f"{op}: {e}", file=sys.stderr)
    sys.exit(1)
'''

# operation -> the capability it needs (None: no capability).
NEEDS = {"bridge": "NET_ADMIN", "tap": "NET_ADMIN", "nftables": "NET_ADMIN", "af_packet": "NET_RAW",
         "chown": "CHOWN", "setgid": "SETGID", "setuid": "SETUID", "kvm": None}


def run_with_caps(op: str, caps: list[str]) -> subprocess.CompletedProcess[str]:
    bset = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    cmd = ["unshare", "--net", "--", "setpriv", f"--bounding-set={bset}", "--inh-caps=-all",
           "--", "/usr/bin/python3", "-c", PROBE, op]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


class Capabilities(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("NOT ROOT: THE CAPABILITY EVIDENCE NEEDS ROOT (unshare --net); DID NOT RUN")
        for tool in ("unshare", "setpriv"):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} missing: run scripts/setup (util-linux)")
        for tool in ("ip", "nft"):
            if shutil.which(tool, path="/usr/sbin:/sbin") is None:
                raise AssertionError(f"{tool} missing: run scripts/setup (iproute2, nftables)")
        objs, _ = render(cirros())
        sc = container(find(objs, "StatefulSet", "cirros-test"))["securityContext"]
        cls.chart_caps = sc["capabilities"]["add"]

    def test_chart_grants_net_admin_net_raw_and_the_uid_switch(self) -> None:
        self.assertEqual(self.chart_caps, ["NET_ADMIN", "NET_RAW", "CHOWN", "SETGID", "SETUID"])

    def test_each_operation_works_with_the_chart_capabilities(self) -> None:
        for op in NEEDS:
            with self.subTest(op):
                if op == "kvm" and not os.path.exists("/dev/kvm"):
                    self.skipTest("NO /dev/kvm ON THIS MACHINE")
                r = run_with_caps(op, self.chart_caps)
                self.assertEqual(r.returncode, 0, r.stderr)

    def test_each_capability_is_needed(self) -> None:
        for op, cap in NEEDS.items():
            if cap is None:
                continue
            with self.subTest(op):
                r = run_with_caps(op, [c for c in self.chart_caps if c != cap])
                self.assertEqual(r.returncode, 1, f"{op} worked without {cap}: {r.stderr}")
                self.assertRegex(r.stderr, r"(?i)not permitted|permission denied|EPERM")

    def test_kvm_needs_no_capability(self) -> None:
        if not os.path.exists("/dev/kvm"):
            self.skipTest("NO /dev/kvm ON THIS MACHINE: KVM PART DID NOT RUN")
        r = run_with_caps("kvm", [])
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main(argv=sys.argv)
