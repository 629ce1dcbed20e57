"""Unit tests of the lab harness itself (no QEMU needed): python3 tests/lab/test_berthlab.py"""

import os
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from berthlab import scenario as sc_mod  # noqa: E402
from berthlab import runner  # noqa: E402
from berthlab.console import Console, clean, stream_process  # noqa: E402
from unittest import mock  # noqa: E402

HEADER = """\
#!/bin/sh
# description: a test scenario
# timeout: 42
# needs: berth
# expect: L2-UP cpus=1
# expect: (?i)reset
# reject: Kernel panic
# expect: NOT-A-HEADER-AFTER-CODE
echo hi
# expect: IGNORED
"""


class ScenarioTest(unittest.TestCase):
    def load(self, text=HEADER):
        d = tempfile.mkdtemp()
        p = Path(d) / "x.sh"
        p.write_text(text)
        return sc_mod.Scenario.load(p)

    def test_headers(self):
        sc = self.load()
        self.assertEqual(sc.name, "x")
        self.assertEqual(sc.description, "a test scenario")
        self.assertEqual(sc.timeout, 42)
        self.assertEqual(sc.needs, ["berth"])
        self.assertEqual(sc.expect, ["L2-UP cpus=1", "(?i)reset", "NOT-A-HEADER-AFTER-CODE"])
        self.assertEqual(sc.reject, ["Kernel panic"])

    def test_vmm_tests_need(self):
        import os
        from unittest import mock
        from berthlab import cli
        needy = self.load("# needs: berth vmm-tests\necho\n")
        plain = self.load("# needs: berth\necho\n")
        self.assertEqual(cli.get_extra_bins([plain]), ([], {}))
        with tempfile.NamedTemporaryFile() as f:
            with mock.patch.dict(os.environ, {"VMM_TESTS_BIN": f.name}):
                self.assertEqual(cli.get_extra_bins([plain, needy]), ([Path(f.name)], {}))
        # A binary that cannot be had makes the scenario "not run" (a failure), not a skip.
        with mock.patch.dict(os.environ, {"VMM_TESTS_BIN": "/nonexistent/vmm-tests"}):
            bins, not_run = cli.get_extra_bins([needy])
        self.assertEqual(bins, [])
        self.assertIn("not run", not_run[needy.name])

    def test_default_timeout(self):
        self.assertEqual(self.load("# description: d\necho\n").timeout, sc_mod.DEFAULT_TIMEOUT)

    def judge(self, out, **kw):
        sc = self.load("# expect: L2-UP cpus=1\n# expect: (?i)reset\n# reject: Kernel panic\n")
        args = dict(begun=True, ended=True, rc=0, timed_out=False) | kw
        return sc_mod.judge(sc, out, **args)

    def test_pass(self):
        self.assertEqual(self.judge("L2-UP cpus=1 mem_kb=1\nberth: guest requested RESET\n").status,
                         sc_mod.PASS)

    def test_missing_expect_and_reject(self):
        v = self.judge("L2-UP cpus=2\nKernel panic - not syncing\n")
        self.assertEqual(v.status, sc_mod.FAIL)
        self.assertEqual(len(v.reasons), 3)

    def test_skip(self):
        v = self.judge("SKIP: no tap device\n")
        self.assertEqual((v.status, v.reasons), (sc_mod.SKIP, ["no tap device"]))

    def test_timeout_rc_and_not_run(self):
        ok = "L2-UP cpus=1\nreset\n"
        self.assertIn("timed out", self.judge(ok, timed_out=True, rc=137).reasons[0])
        self.assertIn("rc=3", self.judge(ok, rc=3).reasons[0])
        self.assertIn("END", self.judge(ok, ended=False, rc=None).reasons[0])
        self.assertIn("never started", self.judge("", begun=False).reasons[0])


class ConsoleTest(unittest.TestCase):
    def test_split(self):
        with tempfile.TemporaryDirectory() as d:
            c = Console(Path(d) / "console.log", echo=False)
            for line in ["noise", "L1-READY uptime=1", "=== SCENARIO a BEGIN timeout=5", "one\r",
                         "=== SCENARIO a END rc=0 secs=1.0", "=== SCENARIO b BEGIN timeout=5",
                         "two", "=== SCENARIO b TIMEOUT after 5s",
                         "=== SCENARIO b END rc=137 secs=5.0", "L1-DONE"]:
                c.feed(line + "\n")
            c.close()
            a, b = c.sections["a"], c.sections["b"]
            self.assertEqual((a.lines, a.rc, a.ended, a.timed_out), (["one"], 0, True, False))
            self.assertEqual((b.rc, b.timed_out), (137, True))
            self.assertIn("L1-READY", c.markers)
            self.assertIn("L1-DONE", c.markers)
            self.assertIn("] noise", (Path(d) / "console.log").read_text())

    def test_l1_crash_and_what_to_run_again(self):
        names = ["a", "b", "c"]
        scs = [type("S", (), {"name": n})() for n in names]
        with tempfile.TemporaryDirectory() as d:
            c = Console(Path(d) / "console.log", echo=False)
            for line in ["L1-READY uptime=1", "=== SCENARIO a BEGIN timeout=5",
                         "=== SCENARIO a END rc=1 secs=1.0", "=== SCENARIO b BEGIN timeout=5",
                         "Kernel panic - not syncing"]:
                c.feed(line + "\n")
            self.assertTrue(runner.l1_crashed(c, timed_out=False))
            self.assertFalse(runner.l1_crashed(c, timed_out=True), "a timeout is not a crash")
            # a failed but finished scenario is not run again; the running one and the rest are
            self.assertEqual([s.name for s in runner.unfinished(scs, c)], ["b", "c"])
            # a scenario that hit its own timeout failed by itself: not run again
            c.feed("=== SCENARIO b TIMEOUT after 5s\n")
            self.assertEqual([s.name for s in runner.unfinished(scs, c)], ["c"])
            c.feed("L1-DONE\n")
            self.assertFalse(runner.l1_crashed(c, timed_out=False))
            c.close()
        with tempfile.TemporaryDirectory() as d:
            c = Console(Path(d) / "console.log", echo=False)
            c.feed("L1-ERROR no kvm\n")
            self.assertFalse(runner.l1_crashed(c, timed_out=False), "L1 never came up")
            c.close()

    def stand_in_l1(self, script: str, scs: list, d: str) -> tuple:
        """Runs `script` as a stand-in L1 under the watchdog; (console, rc, timed_out, text),
        after checking that the watchdog ended it within 30 s."""
        import time
        c = Console(Path(d) / "console.log", echo=False)
        t0 = time.monotonic()
        rc, timed_out = stream_process(["sh", "-c", script], c, 60,
                                       watchdog=runner.l1_watchdog(scs, c))
        self.assertLess(time.monotonic() - t0, 30, "the watchdog did not stop the stand-in L1")
        self.assertFalse(timed_out)
        return c, rc, timed_out, (Path(d) / "console.log").read_text()

    def test_watchdog_kills_a_stuck_l1_and_the_rest_run_again(self):
        # A stand-in for L1: it comes up, starts scenario a (timeout 1 s), then neither ends nor
        # kills it and prints nothing more, as the stuck L1 did in CI.
        script = ("echo L1-READY uptime=1; echo '=== SCENARIO a BEGIN timeout=1'; "
                  "echo a-output; exec sleep 600")
        scs = [type("S", (), {"name": n, "timeout": 1})() for n in ("a", "b")]
        with tempfile.TemporaryDirectory() as d, \
                mock.patch.object(runner, "HANG_GRACE", 1):
            c, rc, timed_out, text = self.stand_in_l1(script, scs, d)
            self.assertNotEqual(rc, 0)
            self.assertIn("L1 IS STUCK: a", text)
            self.assertTrue(runner.l1_crashed(c, timed_out))
            # L1's own TIMEOUT marker came, but no END: L1 is stuck, so a runs again too
            c.feed("=== SCENARIO a TIMEOUT after 1s\n")
            self.assertEqual([s.name for s in runner.unfinished(scs, c)], ["a", "b"])
            c.close()

    def test_watchdog_kills_a_silent_l1_long_before_the_timeout(self):
        # A stand-in for the wedged L1 of a CI run: scenario a (timeout 600 s) prints a line,
        # then nothing at all.
        script = ("echo L1-READY uptime=1; echo '=== SCENARIO a BEGIN timeout=600'; "
                  "echo a-output; exec sleep 600")
        scs = [type("S", (), {"name": n, "timeout": 600})() for n in ("a", "b")]
        with tempfile.TemporaryDirectory() as d, \
                mock.patch.dict(os.environ, {"LAB_SILENCE_LIMIT": "2"}):
            c, rc, timed_out, text = self.stand_in_l1(script, scs, d)
            self.assertIn("L1 IS STUCK: a has printed nothing for", text)
            self.assertTrue(runner.l1_crashed(c, timed_out))
            self.assertEqual([s.name for s in runner.unfinished(scs, c)], ["a", "b"])
            c.close()
        # Output keeps it alive: a scenario that prints every half second for 4 s is not killed.
        script = ("echo L1-READY uptime=1; echo '=== SCENARIO a BEGIN timeout=600'; "
                  "for i in 1 2 3 4 5 6 7 8; do echo tick; sleep 0.5; done; "
                  "echo '=== SCENARIO a END rc=0 secs=4'; echo L1-DONE")
        with tempfile.TemporaryDirectory() as d, \
                mock.patch.dict(os.environ, {"LAB_SILENCE_LIMIT": "2"}):
            c, rc, _, text = self.stand_in_l1(script, scs[:1], d)
            self.assertEqual(rc, 0)
            self.assertNotIn("L1 IS STUCK", text)
            c.close()

    def test_watchdog_kills_an_l1_that_never_comes_up(self):
        scs = [type("S", (), {"name": "a", "timeout": 5})()]
        with tempfile.TemporaryDirectory() as d, \
                mock.patch.object(runner, "L1_BOOT_ALLOWANCE", 1):
            c = Console(Path(d) / "console.log", echo=False)
            rc, timed_out = stream_process(["sleep", "600"], c, 60,
                                           watchdog=runner.l1_watchdog(scs, c))
            self.assertFalse(timed_out)
            self.assertIn("L1 did not come up within", (Path(d) / "console.log").read_text())
            self.assertFalse(runner.l1_crashed(c, timed_out), "never up: not retried")
            c.close()

    def test_clean(self):
        self.assertEqual(clean("\x1bc\x1b[?7l\x1b[2JSeaBIOS\r"), "SeaBIOS")


class RealScenariosTest(unittest.TestCase):
    def test_all_scenarios_parse(self):
        found = sc_mod.discover()
        self.assertIn("qemu-microvm", found)
        for sc in found.values():
            self.assertTrue(sc.description, f"{sc.path} has no '# description:'")
            self.assertTrue(sc.expect, f"{sc.path} has no '# expect:'")


if __name__ == "__main__":
    unittest.main()
