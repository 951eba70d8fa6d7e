"""
The markdown report of C{python -m bench}: machine facts, one table per
workload (min/median/max over the repeats, the ratio of each median to
git-annex's gateway on the same transport, peak RSS), the targets of
issue 7 and of the nodes on other hosts (measured ratio, met/missed), for
the workloads that ran, and any errors.

The workloads of the nodes on other hosts (L{bench.workloads.NODE_WORKLOADS})
are all compared with git-annex's gateway over ssh to the ssh node
(C{gw-node4}): for the annex+http node (which git-annex's gateway cannot
proxy), with the same direction to node4; their tables also give the
ratio to the node reached directly (no proxy) and the CPU seconds of each
side.
"""

import os
import platform
import statistics
import subprocess

from annexd import gitannex
from bench.fixture import BASELINE, BY_NAME, NODE4HOST
from bench.common import ROOT, MiB
from bench.workloads import NODE_WORKLOADS, ROLES, TARGETS

TITLES = {
    "put-big": "PUT one %(big)s file → the cluster (3-node fan-out;"
               " direct: node1)",
    "put-big-node": "PUT one %(big)s file → one proxied node"
                    " (`NAME-node1`)",
    "get-big": "GET one %(big)s file ← the cluster (direct: node1)",
    "put-small": "PUT %(files)d files of 4 KiB → the cluster (direct:"
                 " node1)",
    "get-small": "GET %(files)d files of 4 KiB ← the cluster (direct:"
                 " node1)",
    "drop-small": "DROP %(files)d files of 4 KiB from the cluster (direct:"
                  " node1)",
    "put-big-ssh-node": "PUT one %(big)s file → node4, a node behind ssh"
                        " (`NAME-node4`; direct: `n4ssh`)",
    "get-big-ssh-node": "GET one %(big)s file ← node4, a node behind ssh"
                        " (`NAME-node4`; direct: `n4ssh`)",
    "put-big-http-node": "PUT one %(big)s file → node5, a node behind"
                         " annex+http (`NAME-node5`; direct: `n5http`)",
    "get-big-http-node": "GET one %(big)s file ← node5, a node behind"
                         " annex+http (`NAME-node5`; direct: `n5http`)",
}
COMMANDS = {
    "put-big": "git annex copy --to %s big.bin",
    "put-big-node": "git annex copy --to %s big.bin",
    "get-big": "git annex get --from %s big.bin",
    "put-small": "git annex copy --to %s small",
    "get-small": "git annex get --from %s small",
    "drop-small": "git annex drop --from %s small",
    "put-big-ssh-node": "git annex copy --to %s big.bin",
    "get-big-ssh-node": "git annex get --from %s big.bin",
    "put-big-http-node": "git annex copy --to %s big.bin",
    "get-big-http-node": "git annex get --from %s big.bin",
}

#: The reference of each node workload: git-annex's gateway over ssh
#: (C{gw}) to the ssh node, in the same direction.
NODE_REFERENCE = {"put-big-ssh-node": "put-big-ssh-node",
                  "get-big-ssh-node": "get-big-ssh-node",
                  "put-big-http-node": "put-big-ssh-node",
                  "get-big-http-node": "get-big-ssh-node"}

#: The direct (no proxy) configuration of each node workload.
NODE_DIRECT = {"ssh-node": "n4ssh", "http-node": "n5http"}


def _mib(value):
    return "—" if value is None else "%.0f" % (value / MiB,)


def _fmt(value, digits=1):
    if value is None:
        return "—"
    if value >= 100:
        return "%.0f" % (value,)
    return "%.*f" % (digits, value)


class Report:
    def __init__(self, runner, configs, options, repeatsDone, elapsed,
                 other=""):
        self.runner = runner
        self.results = runner.results
        self.configs = configs
        self.options = options
        self.repeatsDone = repeatsDone
        self.elapsed = elapsed
        self.other = other
        self.mib = runner.fx.size / MiB
        self.files = runner.fx.files

    # ----------------------------------------------------------- values

    def values(self, config, measurement):
        """
        The per-repeat figure of C{measurement} (MiB/s, files/s, req/s).
        """
        runs = self.results.get((config, measurement), [])
        if measurement.startswith("checkpresent"):
            return [f["rps"] for f in runs]
        amount = self.mib if "big" in measurement else self.files
        return [amount / f["seconds"] for f in runs]

    def median(self, config, measurement, field=None):
        if field is None:
            values = self.values(config, measurement)
        else:
            values = [f[field] for f in self.results.get(
                (config, measurement), []) if f.get(field) is not None]
        return statistics.median(values) if values else None

    def peak(self, config, measurement, field):
        values = [f[field] for f in self.results.get((config, measurement),
                                                     [])
                  if f.get(field) is not None]
        return max(values) if values else None

    def ratio(self, config, measurement, field=None):
        base = BASELINE.get(BY_NAME[config].transport)
        reference = measurement
        if measurement in NODE_REFERENCE:
            base, reference = "gw", NODE_REFERENCE[measurement]
        if base is None or base not in {c.name for c in self.configs}:
            return None
        a = self.median(config, measurement, field)
        b = self.median(base, reference, field)
        if a is None or not b:
            return None
        return a / b

    # ----------------------------------------------------------- tables

    def nodeTable(self, workload):
        """
        The table of a node workload: throughput, the ratio to git-annex's
        gateway over ssh to node4 and to the direct configuration, CPU
        seconds (medians) and peak RSS.
        """
        where = NODE_WORKLOADS[workload]
        direct = NODE_DIRECT[where]
        reference = NODE_REFERENCE[workload]
        lines = ["### " + TITLES[workload] % {"big": "%d MiB" % (self.mib,)},
                 "",
                 "| configuration | transport | command | ok runs | min MiB/s"
                 " | median | max | ratio vs git-annex gateway over ssh →"
                 " node4 | ratio vs direct (`%s`) | CPU s: client | ssh |"
                 " gateway | node | total | server peak RSS MiB | server"
                 " side MiB |" % (direct,),
                 "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:"
                 "|---:|---:|---:|---:|"]
        names = {c.name for c in self.configs}
        directMedian = self.median(direct, workload) \
            if direct in names else None
        rows = [(config, workload, config.target(where), config.label)
                for config in self.configs
                if self.runner.applicable(config, workload)]
        if reference != workload and "gw" in names:
            # The reference row: git-annex's gateway to the ssh node.
            gw = BY_NAME["gw"]
            rows.insert(0, (gw, reference, gw.target("ssh-node"),
                            "*reference:* %s → node4 over ssh (from"
                            " %s)" % (gw.label, reference)))
        if not rows:
            return []
        for config, measurement, target, label in rows:
            values = sorted(self.values(config.name, measurement))
            cells = ["—"] * 3
            if values:
                cells = [_fmt(values[0]), _fmt(statistics.median(values)),
                         _fmt(values[-1])]
            ratio = self.ratio(config.name, measurement)
            mine = self.median(config.name, measurement)
            toDirect = (mine / directMedian if mine and directMedian
                        else None)
            cpu = [_fmt(self.median(config.name, measurement,
                                    "cpu_" + role), 2) for role in ROLES]
            totals = [sum(f.get("cpu_" + role) or 0.0 for role in ROLES)
                      for f in self.results.get((config.name, measurement),
                                                [])]
            cpu.append(_fmt(statistics.median(totals), 2) if totals
                       else "—")
            lines.append(
                "| %s | %s | `%s` | %d | %s | %s | %s | %s | %s | %s | %s"
                " | %s | %s | %s | %s | %s |" % (
                    label, config.transport,
                    COMMANDS[measurement] % (target,), len(values), *cells,
                    "—" if ratio is None else "%.2f" % (ratio,),
                    "—" if toDirect is None else "%.2f" % (toDirect,),
                    *cpu,
                    _mib(self.peak(config.name, measurement, "server")),
                    _mib(self.peak(config.name, measurement, "total"))))
        return lines

    def workloadTable(self, workload):
        if workload not in self.runner.workloads:
            return []
        if workload in NODE_WORKLOADS:
            return self.nodeTable(workload)
        lines = ["### " + TITLES[workload] % {
            "big": "%d MiB" % (self.mib,), "files": self.files}, "",
            "| configuration | transport | command | ok runs | min | median"
            " | max | ratio vs git-annex gateway | server peak RSS MiB"
            " | server side MiB |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        unit = "MiB/s" if "big" in workload else "files/s"
        lines[2] = lines[2].replace("| min | median | max |",
                                    "| min %s | median | max |" % (unit,))
        any_row = False
        for config in self.configs:
            if not self.runner.applicable(config, workload):
                continue
            any_row = True
            values = sorted(self.values(config.name, workload))
            target = config.target(TARGETS[workload])
            cells = ["—"] * 3
            if values:
                cells = [_fmt(values[0]), _fmt(statistics.median(values)),
                         _fmt(values[-1])]
            ratio = self.ratio(config.name, workload)
            lines.append("| %s | %s | `%s` | %d | %s | %s | %s | %s | %s"
                         " | %s |" % (
                             config.label, config.transport,
                             COMMANDS[workload] % (target,), len(values),
                             cells[0], cells[1], cells[2],
                             "—" if ratio is None else "%.2f" % (ratio,),
                             _mib(self.peak(config.name, workload,
                                            "server")),
                             _mib(self.peak(config.name, workload,
                                            "total"))))
        return lines if any_row else []

    def checkpresentTable(self):
        if "checkpresent" not in self.runner.workloads:
            return []
        lines = ["### checkpresent over HTTP (`POST /git-annex/UUID/v4/"
                 "checkpresent?key=K&clientuuid=C`, keys present, %s s per"
                 " level after %s s warm-up)" % (
                     _fmt(self.options.cp_duration),
                     _fmt(self.options.cp_warmup)), "",
                 "| configuration | clients | ok runs | min req/s | median"
                 " req/s | max req/s | ratio vs p2phttp -J16 | p50 ms | p99"
                 " ms | p99 ratio | server peak RSS MiB | load client CPU"
                 " s/run |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
                 "|---:|"]
        any_row = False
        for n in self.options.concurrency:
            measurement = "checkpresent-c%d" % (n,)
            for config in self.configs:
                if not self.runner.applicable(config, "checkpresent"):
                    continue
                any_row = True
                values = sorted(self.values(config.name, measurement))
                cells = ["—"] * 3
                if values:
                    cells = [_fmt(values[0]),
                             _fmt(statistics.median(values)),
                             _fmt(values[-1])]
                ratio = self.ratio(config.name, measurement)
                p99ratio = self.ratio(config.name, measurement, "p99_ms")
                lines.append(
                    "| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s"
                    " | %s |" % (
                        config.label, n, len(values), *cells,
                        "—" if ratio is None else "%.2f" % (ratio,),
                        _fmt(self.median(config.name, measurement,
                                         "p50_ms"), 2),
                        _fmt(self.median(config.name, measurement,
                                         "p99_ms"), 2),
                        "—" if p99ratio is None else "%.2f" % (p99ratio,),
                        _mib(self.peak(config.name, measurement, "server")),
                        _fmt(self.median(config.name, measurement, "cpu"))))
        return lines if any_row else []

    # ----------------------------------------------------------- targets

    def targets(self):
        """
        Each target of the workloads that ran (issue 7's, the nodes on
        other hosts'): C{(description, measured, met)} with C{met}
        True/False, or None when not measured (or informative only).
        """
        names = {c.name for c in self.configs}
        ran = set(self.runner.workloads)
        rows = []

        def best(measurement, candidates, field=None, low=False):
            got = [(self.median(c, measurement, field), c)
                   for c in candidates if c in names]
            got = [(v, c) for v, c in got if v is not None]
            if not got:
                return None, None
            return (min if low else max)(got)

        def compare(text, a, measurement, refs, factor, reference=None):
            if measurement.split("-c")[0] not in ran and \
                    measurement not in ran:
                return
            mine = self.median(a, measurement) if a in names else None
            ref, refName = best(reference or measurement, refs)
            if mine is None or not ref:
                rows.append((text, "not measured", None))
                return
            ratio = mine / ref
            rows.append((text, "%.2f× (%s %s vs %s %s)" % (
                ratio, a, _fmt(mine), refName, _fmt(ref)),
                None if factor is None else ratio >= factor))

        top = max(self.options.concurrency)
        cp = "checkpresent-c32"
        if "checkpresent" not in ran:
            pass
        elif top == 32:
            compare("checkpresent at 32 HTTP clients: annexd ≥ 10× p2phttp"
                    " -J16 (req/s)", "axh", cp, ["ref16"], 10)
            mine = self.median("axh", cp, "p99_ms")
            ref = self.median("ref16", cp, "p99_ms")
            if mine is None or ref is None:
                rows.append(("checkpresent at 32 HTTP clients: annexd p99 <"
                             " p2phttp -J16 p99", "not measured", None))
            else:
                rows.append(("checkpresent at 32 HTTP clients: annexd p99 <"
                             " p2phttp -J16 p99", "%.2f ms vs %.2f ms"
                             % (mine, ref), mine < ref))
        else:
            rows.append(("checkpresent at 32 HTTP clients (annexd ≥ 10×"
                         " p2phttp -J16, lower p99)",
                         "not measured (concurrency %s)" % (
                             ",".join(map(str, self.options.concurrency)),),
                         None))
        f = self.files
        compare("%d×4KiB PUT to the cluster: annexd HTTP ≥ 2× p2phttp"
                " (the faster of -J4/-J16)" % f, "axh", "put-small",
                ["ref4", "ref16"], 2)
        for a in ("ax", "axd"):
            compare("%d×4KiB PUT to the cluster: %s (ssh) ≥ 1.5× git-annex"
                    " gateway over ssh" % (f, a), a, "put-small", ["gw"],
                    1.5)
        compare("%d×4KiB PUT to the cluster: annexd HTTP ≥ 0.8× direct to"
                " node1 over HTTP" % f, "axh", "put-small", ["n1http"], 0.8)
        for a in ("ax", "axd"):
            compare("%d×4KiB PUT to the cluster: %s ≥ 0.8× direct to node1"
                    " over ssh" % (f, a), a, "put-small", ["n1ssh"], 0.8)
        compare("%d×4KiB GET from the cluster: annexd HTTP ≥ 0.9× direct"
                " over HTTP" % f, "axh", "get-small", ["n1http"], 0.9)
        for a in ("ax", "axd"):
            compare("%d×4KiB GET from the cluster: %s ≥ 0.9× direct over"
                    " ssh" % (f, a), a, "get-small", ["n1ssh"], 0.9)
        big = "%d MiB" % (self.mib,)
        compare("PUT %s to the cluster: annexd HTTP ≥ 1.5× p2phttp (the"
                " faster of -J4/-J16)" % big, "axh", "put-big",
                ["ref4", "ref16"], 1.5)
        for a in ("ax", "axd"):
            compare("PUT %s to the cluster: %s ≥ 1.5× git-annex gateway over"
                    " ssh" % (big, a), a, "put-big", ["gw"], 1.5)
        compare("GET %s from the cluster: annexd HTTP ≥ 1.2× p2phttp (the"
                " faster of -J4/-J16)" % big, "axh", "get-big",
                ["ref4", "ref16"], 1.2)
        compare("GET %s from the cluster: annexd HTTP ≥ 0.9× direct over"
                " HTTP" % big, "axh", "get-big", ["n1http"], 0.9)
        for a in ("ax", "axd"):
            compare("GET %s from the cluster: %s ≥ 0.9× direct over ssh"
                    % (big, a), a, "get-big", ["n1ssh"], 0.9)
        # The nodes on other hosts: annexd ≥ 1.2× git-annex's gateway over
        # ssh to the ssh node (same client transport: ssh); annexd over
        # HTTP against the same figure is informative (another transport
        # from the client).
        for workload, text in (
                ("put-big-ssh-node", "PUT %s to node4 (behind ssh)"),
                ("get-big-ssh-node", "GET %s from node4 (behind ssh)"),
                ("put-big-http-node", "PUT %s to node5 (behind annex+http)"),
                ("get-big-http-node", "GET %s from node5 (behind"
                                      " annex+http)")):
            text = text % (big,)
            for a in ("ax", "axd", "axh"):
                if a not in names or not self.runner.applicable(
                        BY_NAME[a], workload):
                    continue
                over = "ssh" if a != "axh" else "HTTP"
                compare("%s: %s (client over %s) ≥ 1.2× git-annex gateway"
                        " over ssh → node4%s" % (
                            text, a, over, "" if a != "axh" else
                            " (informative: not the same client"
                            " transport)"),
                        a, workload, ["gw"], None if a == "axh" else 1.2,
                        reference=NODE_REFERENCE[workload])
        # RSS: the annexd processes only (daemon, annexd-shell), not the
        # git-annex-shell node sessions they start.
        worst = []
        for a in ("ax", "axd", "axh"):
            if a not in names:
                continue
            for (config, measurement), runs in self.results.items():
                if config != a:
                    continue
                for figures in runs:
                    for field in ("server", "shell"):
                        if figures.get(field) is not None:
                            worst.append((figures[field], a, measurement))
        if worst:
            value, a, measurement = max(worst)
            rows.append(("annexd peak RSS < 150 MiB in every workload"
                         " (daemon and annexd-shell processes)",
                         "max %.0f MiB (%s, %s)" % (value / MiB, a,
                                                    measurement),
                         value < 150 * MiB))
        else:
            rows.append(("annexd peak RSS < 150 MiB in every workload",
                         "not measured", None))
        return rows

    def evidenceText(self):
        """
        How the nodes on other hosts were reached: the ssh sessions opened
        to node4's host (by whom), and the annexd daemon's node figures.
        """
        evidence = getattr(self.runner, "evidence", None)
        if not evidence or not any(w in NODE_WORKLOADS
                                   for w in self.runner.workloads):
            return []
        lines = ["## How the nodes on other hosts were reached", ""]
        sessions = evidence.get("sessions") or {}
        lines.append(
            "- ssh sessions opened to `%s` (node4's host; the fake ssh runs"
            " `git-annex-shell -c \"$SSH_ORIGINAL_COMMAND\"` there) during"
            " the run, by opener: %s." % (
                NODE4HOST, "; ".join("%s: %d" % (who, n) for who, n in
                                     sorted(sessions.items()))
                or "none"))
        metrics = evidence.get("metrics")
        if metrics:
            for node, what in (("node4", "ssh (`ssh://%s/…/node4.git`)"
                                % (NODE4HOST,)),
                               ("node5", "annex+http (`%s`)"
                                % (evidence.get("node5url", "?"),))):
                m = metrics.get(node, {})
                lines.append(
                    "- annexd daemon's `/metrics` at the end, node %s over"
                    " %s: %.2f GiB stored into it, %.2f GiB read from it,"
                    " %d sessions (connections) started." % (
                        node, what, m.get("upload", 0) / 2**30,
                        m.get("download", 0) / 2**30,
                        int(m.get("sessions", 0))))
        lines.append("- Neither node's url in the gateway is a local path,"
                     " so annexd reaches node4 only through"
                     " `annexd.nodes.ssh.SshNode` and node5 only through"
                     " `annexd.nodes.http.HttpNode` (the router's"
                     " `_connector`).")
        return lines + [""]

    def loadText(self):
        loads = sorted(self.runner.loads)
        if not loads:
            return ""
        return (" 1-minute load average before the timed commands (the"
                " benchmark's own work included): min %.1f, median %.1f,"
                " max %.1f." % (loads[0], statistics.median(loads),
                                loads[-1]))

    # ------------------------------------------------------------ whole

    def markdown(self):
        o = self.options
        partial = ("" if self.repeatsDone == o.repeat else
                   " — **partial: %d of %d repeats done**"
                   % (self.repeatsDone, o.repeat))
        nodesOnly = all(w in NODE_WORKLOADS for w in self.runner.workloads)
        title = ("annexd benchmark: nodes on other hosts (ssh, annex+http)"
                 if nodesOnly else "annexd benchmark (issue 7)")
        lines = [
            "# %s%s" % (title, partial), "",
            "`%s`, %s, %.0f min." % (o.commandLine, o.date,
                                       self.elapsed / 60), "",
            "Machine: %s" % (machine(),), "",
            "Other activity: %s%s" % (self.other, self.loadText()), "",
            "One fixture (a bare gateway that is the gateway of cluster"
            " `mycluster` with 3 bare nodes, and proxies two more nodes on"
            " \"other hosts\": node4 over ssh, node5 over annex+http; a"
            " client), one file of %d MiB and %d files of 4 KiB, %d"
            " repeat(s); %s; the order of the configurations alternates"
            " between repeats. Workloads: %s. Figures are min/median/max"
            " over the"
            " repeats that succeeded; a run counts only if the content"
            " checked out by sha256 (on every target node after a PUT, in"
            " the client after a GET; no node holds anything after a DROP;"
            " every checkpresent answered `present: true`). Ratios are"
            " medians divided by git-annex's gateway on the same transport"
            " (ssh: `gw`; HTTP: p2phttp -J16), for the nodes on other hosts"
            " by git-annex's gateway over ssh to the ssh node (`gw-node4`,"
            " same direction); above 1 is better (for p99: below 1 is"
            " better)."
            % (self.mib, self.files, o.repeat,
               "workload by workload, every configuration in turn"
               if getattr(o, "interleave", False) else
               "configuration by configuration, every workload in turn",
               ", ".join("`%s`" % (w,) for w in self.runner.workloads)), "",
            "## Configurations", "",
            "| remote | configuration | transport | wiring |",
            "|---|---|---|---|",
        ]
        for config in self.configs:
            lines.append("| `%s` | %s | %s | %s |" % (
                config.name, config.label, config.transport,
                WIRING[config.name]))
        lines += ["", NODES_WIRING, "", "## Targets", "",
                  "| target (medians) | measured | status |",
                  "|---|---|---|"]
        for text, measured, met in self.targets():
            lines.append("| %s | %s | %s |" % (
                text, measured, {True: "met", False: "**missed**",
                                 None: "n/a"}[met]))
        lines += ["", "## Results", ""]
        for workload in ("put-big", "put-big-node", "get-big", "put-small",
                         "get-small") + tuple(NODE_WORKLOADS):
            table = self.workloadTable(workload)
            if table:
                lines += table + [""]
        table = self.checkpresentTable()
        if table:
            lines += table + [""]
        table = self.workloadTable("drop-small")
        if table:
            lines += table + [""]
        lines += self.evidenceText()
        lines += ["## Errors", ""]
        if self.runner.errors:
            for e in self.runner.errors:
                lines.append("- repeat %d, `%s`, %s: %s" % (
                    e["repeat"] + 1, e["config"], e["workload"],
                    " ".join(e["error"].split())[:600]))
        else:
            lines.append("None: every workload ran and every checksum"
                         " matched.")
        lines += ["", "## How it is measured", "", METHOD]
        return "\n".join(lines) + "\n"


WIRING = {
    "node1path": "path remote to node1 (`git annex` copies locally)",
    "n1ssh": "`ssh://n1ssh/…/node1.git`; the fake ssh runs the requested"
             " `git-annex-shell` in node1",
    "n1http": "annexUrl to `git-annex p2phttp -J16 --wideopen` run in"
              " node1",
    "gw": "`ssh://gw/…/gateway.git`; forced command `git-annex-shell -c"
          " \"$SSH_ORIGINAL_COMMAND\"` (git-annex's proxy)",
    "ref4": "annexUrl to `git-annex p2phttp -J4 --wideopen` run in the"
            " gateway",
    "ref16": "annexUrl to `git-annex p2phttp -J16 --wideopen` run in the"
             " gateway",
    "ax": "`ssh://ax/…/gateway.git`; forced command `python -m"
          " annexd.shell --repo GW` (serves in-process)",
    "axd": "`ssh://axd/…/gateway.git`; forced command `python -m"
           " annexd.shell --repo GW --control SOCK` (relays to the daemon)",
    "axh": "annexUrl to `annexd --repo GW --http tcp:PORT --control SOCK"
           " --wideopen` (the daemon `axd` relays to)",
    "n4ssh": "`ssh://n4ssh/…/node4.git`; the fake ssh runs the requested"
             " `git-annex-shell` in node4",
    "n5http": "annexUrl to `git-annex p2phttp -J16 --wideopen` run in node5"
              " (the server the gateway's node5 remote names)",
}

NODES_WIRING = """\
The nodes on other hosts, in the gateway (proxied remotes,
`remote.NAME.annex-proxy=true`, listed in proxy.log by `git annex
updateproxy`; not cluster nodes; separate repositories, since a gateway
uses the cheapest remote of a uuid and cannot tell two apart):
`node4` with url `ssh://%s/…/node4.git` (the gateway's ssh is the
benchmark's fake ssh wrapper, whose host `%s` has the forced command
`git-annex-shell -c "$SSH_ORIGINAL_COMMAND"`), and `node5` with url and
annexUrl `annex+http://127.0.0.1:PORT/git-annex/` (`git-annex p2phttp -J16
--wideopen` in node5). The client sees them through every gateway remote
(`gw-node4`, `axd-node4`, `axh-node5`, ...); git-annex's own gateways
cannot proxy an annex+http node (`git annex copy --to gw-node5` fails:
\"Unable to connect to remote\"), so `NAME-node5` is measured through
annexd only.""" % (NODE4HOST, NODE4HOST)

METHOD = """\
- Every ssh remote goes through the fake ssh of `tests/support/annex.py`
  (the command is run locally, as sshd runs a forced command); git-annex
  uses `GIT_SSH_COMMAND` for all remotes (`GIT_ANNEX_USE_GIT_SSH=1`), set
  to a wrapper (`bin/benchssh`) that picks the forced command by the host
  of the remote's URL. HTTP servers listen on 127.0.0.1; the client has
  `annex.security.allowed-ip-addresses all`.
- CPU seconds (nodes on other hosts' tables; medians), by role, from
  `/proc/PID/stat` (utime+stime) of every process in the trees of the
  client's command and of the servers, walked every 0.1 s and once more
  when the client has exited (before it is reaped): "client" the client's
  git-annex and its helpers; "ssh" the ssh wrappers (benchssh, the fake
  ssh, `sh -c`); "gateway" git-annex-shell in the gateway, annexd-shell
  (in-process, or the relay of `axd`), the annexd daemon, the gateway's
  p2phttp, and their helpers; "node" git-annex-shell in node4 (or node1),
  node5's p2phttp, and their helpers. A process's last 0.1 s of CPU, or a
  process shorter than that, may be missed.
- Times are the wall time of the client's `git annex` command (or the load
  client's measured window); MiB/s and files/s are derived from them. The
  client is sequential (no `-J`). Before each timed command the page cache
  is synced (`sync`), not dropped.
- State between workloads: before a PUT no node may hold the content
  (checked on disk; emptied through the configuration's own remote if
  needed, untimed); before a GET, checkpresent or DROP the target nodes
  must hold it; each configuration ends with empty nodes.
- checkpresent: `python -m bench.load`, N asyncio clients, each on its own
  keep-alive connection, one request at a time, cycling over the keys of
  the small files (all present), with `Accept: application/json`; against
  the cluster's uuid (gateways) or node1's (`n1http`). Its CPU seconds are
  shown: close to the window (plus warm-up) means the load client itself
  was saturated. On a machine with few cores it competes with the server
  for CPU.
- Peak RSS: for a long-running server (annexd daemon, p2phttp), its kernel
  high-water mark (VmHWM, reset before the workload) — the absolute peak,
  not growth; for an ssh configuration without a daemon, the highest
  VmHWM of the per-session shell process (`git-annex-shell` serving the
  gateway or node1, or `annexd-shell`), sampled every 0.25 s. For `axd`
  the server figure is the daemon's; the relay's own figure is in the
  targets' RSS row when higher. "server side" adds the descendants (node
  sessions `git-annex-shell p2pstdio`, `git cat-file`, ...) and the
  session shells, each term at its own sampled peak (so it is an upper
  estimate); a process shorter than 0.25 s may be missed.
"""


def _run(args, cwd=None):
    try:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine():
    """
    One line of facts about this machine and the software measured.
    """
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import twisted
        tw = twisted.__version__
    except ImportError:
        tw = "?"
    annex = _run([gitannex.find().binary, "version", "--raw"])
    commit = _run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT)
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"],
                 cwd=ROOT)
    return ("%s; nproc %d (%s); memory %.1f GiB; Python %s; Twisted %s;"
            " git-annex %s; git %s; annexd %s%s" % (
                platform.platform(), len(os.sched_getaffinity(0)), cpu, mem,
                platform.python_version(), tw, annex,
                _run(["git", "--version"]).replace("git version ", ""),
                commit, " (with local changes)" if dirty else ""))
