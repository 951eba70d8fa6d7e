"""
Tests for L{bench} (C{python -m bench}, issue 7): a reduced run with the real
git-annex must complete with every content check passing.  Timing is never
asserted.
"""

import os
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
        report whose tables name every configuration and every workload.
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
        self.assertIn("None: every workload ran and every checksum matched.",
                      report)
        self.assertIn("## Targets", report)
        self.assertNotIn("Aborted", report)
