"""
Tests for L{bench} (C{python -m bench}, issue 7): a reduced run with the real
git-annex must complete with every content check passing.  Timing is never
asserted.
"""

import os
import re
import subprocess
import sys

from twisted.trial import unittest

from bench.fixture import CONFIGS
from bench.report import TITLES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SmokeTests(unittest.TestCase):
    """
    C{python -m bench --smoke} with a small fixture.
    """

    def test_smoke(self):
        """
        A smoke run (8 MiB, 20 files) of every configuration and workload
        exits 0 (no workload errored, every checksum matched) and writes a
        report whose tables name every configuration and every workload
        (the nodes on other hosts' too), and which shows that annexd
        reached node4 over ssh and node5 over HTTP.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        out = os.path.join(workdir, "RESULTS.md")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                      if p])
        result = subprocess.run(
            [sys.executable, "-m", "bench", "--smoke", "--size-mib", "8",
             "--files", "20", "--out", out],
            cwd=workdir, env=env, capture_output=True, text=True,
            timeout=900)
        self.assertEqual(result.returncode, 0,
                         "python -m bench --smoke failed:\n%s"
                         % (result.stderr[-6000:],))
        self.assertEqual(result.stdout.strip(), out)
        with open(out) as f:
            report = f.read()
        for config in CONFIGS:
            self.assertIn("| `%s` | %s |" % (config.name, config.label),
                          report)
            # A row of results, not only the list of configurations.
            self.assertIn("| %s | %s |" % (config.label, config.transport),
                          report)
        for workload, title in TITLES.items():
            self.assertIn("### " + title % {"big": "8 MiB", "files": 20},
                          report, workload)
        self.assertIn("### checkpresent over HTTP", report)
        # The nodes on other hosts: annexd reached node4 over ssh (its
        # daemon opened sessions to node4's host) and node5 over HTTP (the
        # daemon's node5 connections), as git-annex's gateway reached
        # node4.
        sessions = re.search(r"ssh sessions opened to `node4host`.*", report)
        self.assertIsNotNone(sessions, "no node4host sessions in the report")
        for opener in ("annexd daemon", "git-annex-shell (git-annex"
                                        " gateway)"):
            found = re.search(re.escape(opener) + r": (\d+)",
                              sessions.group(0))
            self.assertTrue(found and int(found.group(1)) >= 1,
                            "%s opened no ssh session to node4host: %s"
                            % (opener, sessions.group(0)))
        for node in ("node4", "node5"):
            started = re.search(
                r"node %s over .* (\d+) sessions \(connections\) started"
                % (node,), report)
            self.assertTrue(started and int(started.group(1)) >= 1,
                            "annexd started no session with %s" % (node,))
        self.assertIn("None: every workload ran and every checksum matched.",
                      report)
        self.assertIn("## Targets", report)
        self.assertNotIn("Aborted", report)
