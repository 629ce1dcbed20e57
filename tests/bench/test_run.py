#!/usr/bin/env python3
"""Unit tests of tests/bench/run's lab I/O parsing (no lab, no VMM): python3 tests/bench/test_run.py"""

import importlib.machinery
import importlib.util
import subprocess
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
_loader = importlib.machinery.SourceFileLoader("bench_run", str(HERE / "run"))
_spec = importlib.util.spec_from_loader("bench_run", _loader)
br = importlib.util.module_from_spec(_spec)
_loader.exec_module(br)

NET_LOG = """\
[   12.7] BENCH net_secs - 4
[   12.7] BENCH net_udp_secs - 3
BENCH-CPU qemu-off start CPU_0/KVM=1000 qemu-system-x86=500 l1_busy=1000 l1_total=2000 l1_cpus=2
BENCH net_tcp_rx qemu-off 100.0
BENCH net_tcp_rx qemu-off 110.0
BENCH net_tcp_tx qemu-off 50.0
BENCH net_tcp_tx qemu-off 60.0
BENCH net_udp_tx qemu-off 2.0
BENCH net_udp_tx qemu-off 2.5
BENCH-CPU qemu-off end CPU_0/KVM=6000 qemu-system-x86=3000 l1_busy=9000 l1_total=12000 l1_cpus=2
BENCH net_tcp_rx qemu-vhost 300.0
BENCH net_tcp_rx qemu-vhost 320.0
BENCH net_tcp_tx qemu-vhost 400.0
BENCH net_tcp_tx qemu-vhost 420.0
BENCH net_udp_tx qemu-vhost 5.0
BENCH net_udp_tx qemu-vhost 5.5
BENCH-NOTE berth-off: this berth has no vhost option
BENCH net_tcp_rx berth-off 200.0
BENCH net_tcp_rx berth-off 210.0
BENCH net_tcp_tx berth-off 90.0
BENCH net_tcp_tx berth-off 95.0
BENCH net_udp_tx berth-off 4.0
BENCH net_udp_tx berth-off 4.5
BENCH-FAIL berth-vhost: berth did not run the guest: unknown or bad option "vhost=on"
BENCH-DONE net
"""


class LabIo(unittest.TestCase):
    def rows(self, scenario, text):
        ctx, res = br.Ctx(False, HERE), br.Results()
        br.lab_rows(ctx, res, scenario, text)
        return ctx, res

    def test_failed_configuration_fails_only_its_rows(self):
        ctx, res = self.rows("bench-net", NET_LOG)
        whats = [r["what"] for r in res.rows]
        # Per kind: best-of-each and vhost=off both come out; vhost=on both is FAILED.
        self.assertEqual(len(res.rows), 6, whats)
        self.assertEqual(len(res.failures), 3)
        for f in res.failures:
            self.assertIn("berth vhost=on", f["reason"])
            self.assertIn("vhost=on", f["reason"])
        best_tx = next(r for r in res.rows if "TCP send: best of each" in r["what"])
        self.assertIn("berth vhost=off vs QEMU vhost=on", best_tx["what"])
        self.assertIn("(berth vhost=on FAILED)", best_tx["what"])
        self.assertEqual(best_tx["qemu"]["median"], 410.0)
        self.assertEqual(best_tx["berth"]["median"], 92.5)
        off_rx = next(r for r in res.rows if "TCP receive: berth vhost=off vs QEMU vhost=off" in r["what"])
        self.assertAlmostEqual(off_rx["ratio"], 205.0 / 105.0)

    def test_a_configuration_not_asked_for_is_not_run_not_failed(self):
        # As with BENCH_NET_CONFIGS='berth-off qemu-off qemu-vhost': berth-vhost never ran.
        log = "\n".join(l for l in NET_LOG.splitlines() if "berth-vhost" not in l) + "\n"
        _, res = self.rows("bench-net", log)
        best_tx = next(r for r in res.rows if "TCP send: best of each" in r["what"])
        self.assertIn("(berth vhost=on not run)", best_tx["what"])
        self.assertNotIn("FAILED", best_tx["what"])

    def test_general_failure_fails_the_scenario(self):
        with self.assertRaises(br.Failed):
            self.rows("bench-net", NET_LOG + "BENCH-FAIL cannot create tap bt0\n")
        with self.assertRaises(br.Failed):  # timed out: no BENCH-DONE
            self.rows("bench-net", NET_LOG.replace("BENCH-DONE net\n", ""))

    def test_cpu_profile_is_the_difference_of_the_snapshots(self):
        cpu = br.cpu_profile(NET_LOG)
        p = cpu["qemu-off"]
        # 10000 ms of L1 CPU over 2 CPUs = a 5 s window; 5000 ms of vCPU = 100% of one CPU.
        self.assertEqual(p["window_s"], 5.0)
        self.assertEqual(p["threads"]["CPU_0/KVM"], 100.0)
        self.assertEqual(p["threads"]["qemu-system-x86"], 50.0)
        self.assertEqual(p["l1_busy_pct"], 80.0)

    def test_disk_rows_take_qemus_faster_aio(self):
        log = "BENCH disk_mib - 64\nBENCH disk_fio_secs - 3\n"
        for job in ("rr1", "rr32", "rw1", "rw32", "sr", "sw"):
            log += f"BENCH disk_{job} berth 10\nBENCH disk_{job} berth 12\n"
            log += f"BENCH disk_{job} qemu-threads 8\nBENCH disk_{job} qemu-threads 9\n"
            log += f"BENCH disk_{job} qemu-io_uring 20\nBENCH disk_{job} qemu-io_uring 30\n"
        _, res = self.rows("bench-disk", log + "BENCH-DONE disk\n")
        self.assertEqual(len(res.rows), 6)
        self.assertFalse(res.failures)
        for r in res.rows:
            self.assertIn("berth vs QEMU aio=io_uring", r["what"])
            self.assertEqual(r["qemu"]["median"], 25.0)
        # Ranges apart: a claim; no "(ranges overlap)".
        self.assertEqual(br.verdict(res.rows[0]), "0.44x worse")

    def test_raw_only_gives_raw_rows(self):
        log = "BENCH disk_mib - 64\nBENCH disk_fio_secs - 3\n"
        for job in ("rr1", "rr32", "rw1", "rw32", "sr", "sw"):
            for c in ("berth-raw", "qemu-threads-raw", "qemu-io_uring-raw"):
                log += f"BENCH disk_{job} {c} 10\n"
        _, res = self.rows("bench-disk", log + "BENCH-DONE disk\n")
        self.assertEqual(len(res.rows), 6)
        self.assertFalse(res.failures)
        self.assertTrue(all(r["what"].startswith("lab disk raw:") for r in res.rows))
        # A configuration asked for that produced nothing still fails its rows.
        _, res = self.rows("bench-disk", log + "BENCH-FAIL berth: fio rr1: 0 of 1 runs reported\nBENCH-DONE disk\n")
        self.assertEqual(len(res.failures), 6)
        self.assertIn("fio rr1: 0 of 1 runs reported", res.failures[0]["reason"])

    def test_metrics_cost_rows(self):
        log = "BENCH disk_mib - 64\nBENCH disk_fio_secs - 3\n"
        for job in ("rr1", "rr32", "rw1", "rw32", "sr", "sw"):
            for c in ("berth", "qemu-threads", "qemu-io_uring"):
                log += f"BENCH disk_{job} {c} 10\n"
            log += f"BENCH disk_{job} berth-metrics 9\nBENCH disk_{job} berth-metrics 11\n"
        _, res = self.rows("bench-disk", log + "BENCH-DONE disk\n")
        # berth --metrics is not a berth candidate for the berth-vs-QEMU rows ...
        self.assertEqual(len(res.rows), 6)
        self.assertTrue(all(r["berth"]["median"] == 10 for r in res.rows))
        # ... but has a row of its own per job.
        own = [o for o in res.own if "--metrics" in o["what"]]
        self.assertEqual(len(own), 6)
        self.assertEqual(own[0]["berth"]["median"], 10.0)
        self.assertEqual(own[0]["berth"]["n"], 2)

    def test_overlapping_ranges_are_said(self):
        row = {"ratio": 1.2, "better": "higher",
               "berth": br.stats([10, 14]), "qemu": br.stats([9, 11])}
        self.assertEqual(br.verdict(row), "1.20x better (ranges overlap)")


class IperfAwk(unittest.TestCase):
    """IPERF_AWK (tests/lab/lib/bench.sh) under busybox awk, as in L1 and L2."""

    def run_awk(self, json_text):
        lib = HERE.parent / "lab" / "lib" / "bench.sh"
        p = subprocess.run(["busybox", "sh", "-c", f'. "{lib}"; awk "$IPERF_AWK"'],
                           input=json_text, capture_output=True, text=True, check=True)
        return p.stdout.strip()

    def test_receiver_and_sender_sums(self):
        j = ('{\n\t"end":\t{\n\t\t"sum_sent":\t{\n\t\t\t"seconds":\t4.01,\n\t\t\t"bytes":\t5000000,\n'
             '\t\t},\n\t\t"sum_received":\t{\n\t\t\t"seconds":\t4.02,\n\t\t\t"bytes":\t4999000,\n\t\t}\n\t}\n}\n')
        self.assertEqual(self.run_awk(j), "sent=5000000 recv=4999000 secs=4.02")

    def test_error(self):
        j = '{\n\t"start":\t{},\n\t"error":\t"unable to connect to server: Connection refused"\n}\n'
        self.assertEqual(self.run_awk(j), "error unable to connect to server: Connection refused")


class NetReport(unittest.TestCase):
    """report() of tests/lab/scenarios/bench-net.sh under busybox sh: the receiver's count."""

    def report(self, lines, repeats=1):
        import tempfile
        scen = (HERE.parent / "lab" / "scenarios" / "bench-net.sh").read_text()
        fn = scen[scen.index("report() {"):]
        fn = fn[:fn.index("\n}\n") + 3]
        with tempfile.TemporaryDirectory() as d:
            Path(d, "out-cfg.log").write_text("".join(l + "\r\n" for l in lines if "tcp_rx" in l))
            Path(d, "l1-cfg.log").write_text("".join(l + "\n" for l in lines if "tcp_rx" not in l))
            p = subprocess.run(["busybox", "sh", "-c", f"IP=true R={repeats}\n{fn}\nreport cfg"],
                               cwd=d, capture_output=True, text=True, check=True)
        return p.stdout

    OK = ["GUEST-NET tcp_rx n=1048576 sent=1048576 recv=1048576 secs=2.0",
          "GUEST-NET tcp_tx n=1048576 sent=1179648 recv=1179000 secs=1.0",
          "GUEST-NET udp_tx n=0 sent=6400 recv=6400 secs=1.0 loss=0"]

    def test_counts_that_match(self):
        out = self.report(self.OK)
        self.assertNotIn("BENCH-FAIL", out)
        self.assertIn("BENCH net_tcp_rx cfg 4.2", out)  # 1 MiB in 2 s = 4.2 Mbit/s
        self.assertIn("BENCH net_tcp_tx cfg 9.4", out)
        self.assertIn("BENCH net_short_bytes cfg 648", out)
        self.assertIn("BENCH net_udp_tx cfg 0.10", out)  # 100 packets in 1 s

    def test_a_short_receiver_fails(self):
        # The old nc sink: 5120 bytes of 32 MiB.
        lines = [self.OK[0].replace("recv=1048576", "recv=5120")] + self.OK[1:]
        out = self.report(lines)
        self.assertIn("BENCH-FAIL cfg: tcp_rx: the receiver counted 5120 bytes of 1048576 sent", out)
        self.assertNotIn("BENCH net_tcp_rx", out)

    def test_missing_and_failed_transfers_fail(self):
        out = self.report(self.OK[:2] + ["GUEST-NET udp_tx n=0 error unable to connect"], repeats=2)
        self.assertIn("BENCH-FAIL cfg: udp_tx: iperf3 failed: unable to connect", out)
        self.assertIn("BENCH-FAIL cfg: tcp_rx: 1 of 2 transfers reported", out)


if __name__ == "__main__":
    unittest.main()
