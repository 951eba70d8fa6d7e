"""
The workloads of C{python -m bench}, run for one configuration at a time
(see L{bench.fixture}), with the state reset between them and every result
checked before it counts.

Workloads (C{TARGET} is C{NAME-mycluster} for a gateway, the node itself
for a direct configuration):

  - C{put-big}: C{git annex copy --to TARGET big.bin} (a gateway fans it
    out to the 3 nodes); every target node's copy is checked by sha256;
  - C{put-big-node} (gateways only): the same to the proxied node
    C{NAME-node1};
  - C{get-big}: the client's copy dropped, C{git annex get --from TARGET
    big.bin}; the client's file is checked by sha256;
  - C{put-small}, C{get-small}: the same with the directory of small
    (4 KiB) files, every file checked on every target node / in the client;
  - C{checkpresent} (HTTP only): L{bench.load} at each concurrency against
    the target's uuid (the cluster's, or node1's for C{n1http}), every key
    present; every answer must be C{{"present": true}};
  - C{drop-small}: C{git annex drop --from TARGET small} (no C{--force}:
    git-annex checks the client's copy, as a user's drop does); no target
    node may hold any of the keys afterwards;
  - C{put-big-ssh-node}, C{get-big-ssh-node}: C{put-big}/C{get-big} with
    the node behind ssh, node4, as the target (C{NAME-node4} through every
    gateway; C{n4ssh} directly); the node's copy after a PUT, the client's
    after a GET checked by sha256;
  - C{put-big-http-node}, C{get-big-http-node}: the same with the node
    behind annex+http, node5 (C{NAME-node5} through annexd, which alone
    can proxy it; C{n5http} directly).

Configurations take part in the workloads of what they reach (see
L{bench.fixture.Config.serves}): the node1 direct ones in the cluster
workloads, C{n4ssh} and C{n5http} in their node's only.

Before a PUT the nodes (all five) must not hold the content (checked on
disk); before a GET, a checkpresent or a drop, the target nodes must hold
it.  The state is brought there through the configuration's own remote,
not timed (C{drop --force --from TARGET} / C{copy --to TARGET}); if that
does not work, through the other configurations' remotes (git-annex's
gateway over ssh first; C{gw-mycluster}, C{node1path} and C{gw-node4}
always), and at last by C{git annex dropkey} in the node itself.  Every
configuration ends with no node holding anything.

A client command's process group may live on after the command (a
session's server side committing its git-annex branch): the runner waits
for it (at most L{LEFTOVER_GRACE} seconds, untimed) before the next
command, instead of killing it midway and leaving git's lock files behind.

Every timed command also gets the CPU seconds of each role (client, ssh
wrappers, gateway, node; L{CPUWatch}).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from bench.fixture import BIG, SMALLDIR, FixtureError
from bench.common import ROOT, MiB, Sampler, _status, cpuSeconds, descendants

WORKLOADS = ("put-big", "get-big", "put-big-node", "put-small", "get-small",
             "checkpresent", "drop-small", "put-big-ssh-node",
             "get-big-ssh-node", "put-big-http-node", "get-big-http-node")

#: The workloads of the nodes on other hosts -> their target (a key of
#: L{bench.fixture.WHERE}).
NODE_WORKLOADS = {"put-big-ssh-node": "ssh-node",
                  "get-big-ssh-node": "ssh-node",
                  "put-big-http-node": "http-node",
                  "get-big-http-node": "http-node"}

#: Where each workload goes (a key of L{bench.fixture.WHERE}).
TARGETS = dict({w: "cluster" for w in WORKLOADS}, **NODE_WORKLOADS)
TARGETS["put-big-node"] = "node"


def applicable(config, workload, nodeConfigs=None):
    """
    Whether C{workload} is run for C{config} (see L{Runner}).

    @param nodeConfigs: the names of the configurations the node workloads
        are limited to, or L{None}.
    """
    if nodeConfigs is not None and workload in NODE_WORKLOADS \
            and config.name not in nodeConfigs:
        return False
    if workload == "put-big-node" and not config.gateway:
        return False
    if workload == "checkpresent" and config.transport != "http":
        return False
    return config.serves(TARGETS[workload])


class WorkloadError(Exception):
    """
    A workload failed: a command errored, or content did not check out.
    """


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _name(pid):
    """
    The command line of C{pid}, or C{[comm]} for a kernel thread.
    """
    line = " ".join(os.path.basename(w) if "/" in w else w
                    for w in _cmdline(pid).split())
    if line:
        return line
    try:
        with open("/proc/%d/comm" % (pid,)) as f:
            return "[%s]" % (f.read().strip(),)
    except OSError:
        return "?"


def foreignCPU():
    """
    CPU seconds so far of every process outside this benchmark's process
    tree: C{{pid: seconds}}.
    """
    mine = set(descendants(os.getpid())) | {os.getpid()}
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in mine:
            seconds = cpuSeconds(int(name))
            if seconds is not None:
                found[int(name)] = seconds
    return found


class Foreign:
    """
    The CPU that processes outside the benchmark use while it runs, from
    snapshots (one before every timed command): a process is seen if it
    lives across two snapshots, or starts after the first one and is alive
    at a later one.
    """

    def __init__(self):
        self.baseline = foreignCPU()
        self.latest = dict(self.baseline)
        self.names = {}

    def snapshot(self):
        now = foreignCPU()
        for pid, seconds in now.items():
            if pid not in self.names and seconds - self.baseline.get(
                    pid, 0.0) >= 0.5:
                self.names[pid] = _name(pid)
        self.latest.update(now)

    def used(self):
        """
        C{[(seconds, pid, command line)]}, most first, over 1 CPU-s each.
        """
        used = []
        for pid, seconds in self.latest.items():
            delta = seconds - self.baseline.get(pid, 0.0)
            if delta >= 1.0:
                used.append((delta, pid, self.names.get(pid, "?")))
        return sorted(used, reverse=True)


class ShellWatch(threading.Thread):
    """
    Samples, every C{interval} seconds, the server side of the ssh sessions
    a client command opens: the client's descendants whose command line
    names the shell (C{pattern}, e.g. C{annexd.shell} or C{git-annex-shell})
    and the served repository (C{repo}), with their own descendants (the
    node sessions a gateway shell starts).

    @ivar peakShell: the highest peak RSS (VmHWM) of a session shell
        process (bytes).
    @ivar peakTotal: the highest summed RSS of the session shells and their
        descendants (bytes; sampled, so short spikes may be missed).
    @ivar sessions: the pids of the session shells seen.
    """

    def __init__(self, clientPid, pattern, repo, interval=0.25):
        super().__init__(daemon=True)
        self.clientPid = clientPid
        self.pattern = pattern
        self.repo = repo
        self.interval = interval
        self.peakShell = 0
        self.peakTotal = 0
        self.sessions = set()
        self._halt = threading.Event()

    def _sample(self):
        total = 0
        seen = set()
        for pid in descendants(self.clientPid):
            if pid not in self.sessions:
                line = _cmdline(pid)
                if self.pattern not in line or self.repo not in line:
                    continue
                self.sessions.add(pid)
            self.peakShell = max(self.peakShell, _status(pid, "VmHWM"),
                                 _status(pid, "VmRSS"))
            for p in [pid] + descendants(pid):
                if p not in seen:
                    seen.add(p)
                    total += _status(p, "VmRSS")
        self.peakTotal = max(self.peakTotal, total)

    def run(self):
        self._sample()
        while not self._halt.wait(self.interval):
            self._sample()

    def stop(self):
        self._halt.set()
        self.join()


#: Seconds a client command's process group may live on after the command
#: (see L{Runner._finish}).
LEFTOVER_GRACE = 20.0


def _groupMembers(pgid):
    """
    The pids of the live (not zombie) processes of process group C{pgid}.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % (name,)) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(name))
    return found


#: The roles of L{CPUWatch}, in report order.
ROLES = ("client", "ssh", "gateway", "node")


def _children(pid):
    found = []
    try:
        tasks = os.listdir("/proc/%d/task" % (pid,))
    except OSError:
        return found
    for tid in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                found.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


class CPUWatch(threading.Thread):
    """
    The CPU seconds used during a timed command by each role: C{client}
    (the client's git-annex and its helpers), C{ssh} (the ssh wrappers:
    benchssh, the fake ssh, C{sh -c}), C{gateway} (the gateway's process:
    git-annex-shell in the gateway, annexd-shell, the annexd daemon, the
    gateway's p2phttp, and their helpers), C{node} (the node's server:
    git-annex-shell in a node, node5's p2phttp, and their helpers).

    Every C{interval} seconds it walks the process trees under the client
    command and the long-running servers, reading each process's
    utime+stime; a process counts with the most seen of it, minus what it
    had used when first seen if it was already alive at the start (the
    servers, pooled node sessions).  A process's last C{interval} of CPU
    before it exits may be missed, and so may a process shorter than
    C{interval}.

    @ivar roots: C{[(pid, role)]}: trees to walk and the role of their
        root; descendants inherit their parent's role unless their command
        line names one (L{classify}).
    """

    def __init__(self, roots, gateway, nodes, interval=0.1):
        super().__init__(daemon=True)
        self.roots = list(roots)
        self.gateway = gateway
        self.nodes = list(nodes)
        self.interval = interval
        self.start_ = {}
        self.latest = {}
        self.roles = {}
        self._halt = threading.Event()
        self._sample(first=True)

    def classify(self, pid, inherited):
        line = _cmdline(pid)
        if any(n in line for n in self.nodes) and (
                "git-annex-shell" in line or "p2phttp" in line):
            return "node"
        if self.gateway in line and "git-annex-shell" in line:
            return "gateway"
        if "annexd.shell" in line or "annexd.cli" in line:
            return "gateway"
        if "benchssh" in line or "fakessh" in line or line.startswith(
                "sh -c ") or line.startswith("/bin/sh -c "):
            return "ssh"
        return inherited

    def _sample(self, first=False):
        for root, role in self.roots:
            todo = [(root, role)]
            while todo:
                pid, parentRole = todo.pop()
                cpu = cpuSeconds(pid)
                if cpu is None:
                    continue
                if pid not in self.roles:
                    self.roles[pid] = (parentRole if pid == root
                                       else self.classify(pid, parentRole))
                    self.start_[pid] = cpu if first else 0.0
                self.latest[pid] = max(self.latest.get(pid, 0.0), cpu)
                todo.extend((c, self.roles[pid]) for c in _children(pid))

    def run(self):
        while not self._halt.wait(self.interval):
            self._sample()

    def stop(self):
        """
        @return: C{{role: CPU seconds}}.
        """
        self._halt.set()
        self.join()
        self._sample()
        used = dict.fromkeys(ROLES, 0.0)
        for pid, role in self.roles.items():
            used[role] = used.get(role, 0.0) + max(
                0.0, self.latest[pid] - self.start_[pid])
        return used


class Runner:
    """
    Runs the workloads of the configurations of a L{Fixture}.

    @ivar results: C{{(config name, measurement): [figures, ...]}}, one
        figures dict per successful repeat.
    @ivar errors: C{[{repeat, config, workload, error}]}.
    """

    def __init__(self, fixture, workloads, concurrencies, cpDuration,
                 cpWarmup, log, nodeConfigs=None):
        """
        @param nodeConfigs: the configurations (names) that take part in
            the node workloads (L{NODE_WORKLOADS}), or L{None} for every
            one that can.
        """
        self.fx = fixture
        self.nodeConfigs = nodeConfigs
        #: How the nodes on other hosts were reached (see
        #: L{bench.fixture.Fixture.evidence}), set by the caller.
        self.evidence = None
        self.workloads = [w for w in WORKLOADS if w in workloads]
        self.concurrencies = concurrencies
        self.cpDuration = cpDuration
        self.cpWarmup = cpWarmup
        self.log = log
        self.results = {}
        self.errors = []
        self.loads = []
        self.foreign = Foreign()
        self.keysFile = os.path.join(fixture.workdir, "keys.txt")
        with open(self.keysFile, "w") as f:
            f.write("".join(key + "\n" for key in sorted(fixture.small)))
        mib = fixture.size / MiB
        self.bigTimeout = 300 + 2 * mib
        self.smallTimeout = 300 + fixture.files

    def noteLoad(self):
        """
        Record the 1-minute load average before a timed command (the
        benchmark's own previous commands count in it too), and the CPU
        used by processes outside the benchmark so far.
        """
        self.foreign.snapshot()
        try:
            with open("/proc/loadavg") as f:
                self.loads.append(float(f.read().split()[0]))
        except (OSError, ValueError):
            pass

    # ---------------------------------------------------------- commands

    def _popen(self, args):
        out = tempfile.TemporaryFile()
        process = subprocess.Popen(
            ["git-annex"] + list(args), cwd=self.fx.client,
            env=self.fx.env.env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
        return process, out

    def _finish(self, process, out, args, timeout, started, cpuWatch=None):
        """
        Wait for the client's command, then for what it left running in its
        process group (a session's server side finishing its work, e.g. a
        gateway's git-annex-shell committing its git-annex branch) for up to
        L{LEFTOVER_GRACE} seconds, and kill what remains.

        @return: the time (C{time.monotonic}) the command was seen to exit.
        """
        ended = None
        try:
            if cpuWatch is not None:
                # Wait for the client's exit without reaping it, and look
                # at its tree once more: a zombie's /proc stat still holds
                # its final CPU times.
                deadline = started + timeout
                while time.monotonic() < deadline:
                    try:
                        if os.waitid(os.P_PID, process.pid, os.WEXITED
                                     | os.WNOWAIT | os.WNOHANG) is not None:
                            break
                    except ChildProcessError:
                        break
                    time.sleep(0.01)
                ended = time.monotonic()
                cpuWatch._sample()
            process.wait(timeout=max(1, timeout - (time.monotonic()
                                                   - started)))
            if ended is None:
                ended = time.monotonic()
            # Killing a server side that is still committing would leave
            # git's lock files behind (refs/heads/git-annex.lock), and
            # every later git-annex command in that repository would fail.
            deadline = time.monotonic() + LEFTOVER_GRACE
            while _groupMembers(process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = _groupMembers(process.pid)
            if left:
                self.log("    killing what `git annex %s` left running after"
                         " %.0f s: %s" % (args[0], LEFTOVER_GRACE, "; ".join(
                             _name(pid)[:100] for pid in left)))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise WorkloadError("git annex %s timed out after %d s"
                                % (" ".join(args), timeout))
        finally:
            # Whatever the command left behind (ssh sessions, helpers).
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
        if process.returncode != 0:
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
            raise WorkloadError("git annex %s exited with %d:\n%s" % (
                " ".join(args), process.returncode, text[-4000:]))
        return ended

    def untimed(self, *args, timeout=3600):
        """
        Run C{git annex ARGS} in the client (state changes, not timed).
        """
        started = time.monotonic()
        process, out = self._popen(args)
        with out:
            self._finish(process, out, args, timeout, started)

    def measure(self, config, args, timeout):
        """
        Time C{git annex ARGS} in the client while sampling the servers of
        C{config}.

        @return: the figures: C{seconds}, C{server} (peak RSS of the
            configuration's server process: the daemon or p2phttp, else the
            ssh session's shell; bytes), C{shell} (peak RSS of the ssh
            session shells), C{total} (server-side peak: server process +
            its descendants + session shells and theirs).
        """
        self.fx.checkServers()
        os.sync()
        self.noteLoad()
        sampler = None
        if config.server:
            sampler = Sampler(self.fx.servers[config.server].process.pid)
            sampler.start()
        # Roles for the CPU figures: the configuration's server is the
        # gateway, unless it is a node's own (direct HTTP).
        roots = []
        for name, server in self.fx.servers.items():
            if name == config.server or name == "p2phttp-node5":
                roots.append((server.process.pid,
                              "node" if name.endswith(("node1", "node5"))
                              else "gateway"))
        started = time.monotonic()
        process, out = self._popen(args)
        cpuWatch = CPUWatch([(process.pid, "client")] + roots,
                            self.fx.gateway,
                            [n.path for n in self.fx.allNodes])
        cpuWatch.start()
        watch = None
        if config.shell:
            repo = (self.fx.gateway if config.gateway else
                    {n.name: n for n in self.fx.allNodes}[config.node].path)
            watch = ShellWatch(process.pid, config.shell, repo)
            watch.start()
        ended = None
        try:
            with out:
                ended = self._finish(process, out, args, timeout, started,
                                     cpuWatch)
        finally:
            seconds = (time.monotonic() if ended is None else ended) - started
            figures = self._rss(sampler, watch)
            cpu = cpuWatch.stop()
        figures["seconds"] = seconds
        for role, used in cpu.items():
            figures["cpu_" + role] = used
        return figures

    @staticmethod
    def _rss(sampler, watch):
        figures = {"server": None, "shell": None, "total": None,
                   "servercpu": None}
        total = 0
        if watch is not None:
            watch.stop()
            figures["shell"] = watch.peakShell
            figures["server"] = watch.peakShell
            total += watch.peakTotal
        if sampler is not None:
            stats = sampler.stop()
            figures["server"] = stats["rss"] + sampler.rssBefore
            figures["servercpu"] = stats["cpu"]
            figures["serverchildcpu"] = stats["childcpu"]
            total += figures["server"] + stats["children"]
        if sampler is not None or watch is not None:
            figures["total"] = total
        return figures

    # ------------------------------------------------------------- state

    def _files(self, which):
        if which == "big":
            return [BIG], {self.fx.big[0]: self.fx.big[1]}
        return [SMALLDIR], self.fx.small

    def _held(self, keys, nodes=None):
        return self.fx.present(list(keys), nodes)

    def ensureAbsent(self, config, which):
        """
        Make sure no node holds the content of C{which} (C{big}/C{small}).
        """
        files, sums = self._files(which)
        held = self._held(sums)
        if not any(held.values()):
            return
        # Through the configuration's own remotes for the nodes that hold
        # it, then through the other configurations' (git-annex's gateway
        # first).
        attempts = []
        others = sorted(self.fx.configs, key=lambda c: c.name != "gw")
        for candidate in [config] + others:
            for where in ("cluster", "node", "ssh-node", "http-node"):
                if not candidate.serves(where):
                    continue
                names = {n.name for n in self.fx.nodesFor(candidate, where)}
                target = candidate.target(where)
                if any(held[n] for n in names) and target not in attempts:
                    attempts.append(target)
        # The client's remotes that exist whatever the configurations.
        for target, nodes in (("gw-mycluster", ("node1", "node2", "node3")),
                              ("node1path", ("node1",)),
                              ("gw-node4", ("node4",))):
            if any(held[n] for n in nodes) and target not in attempts:
                attempts.append(target)
        for target in attempts:
            try:
                self.untimed("drop", "--quiet", "--force", "--from", target,
                             *files)
            except WorkloadError as e:
                self.log("    reset: drop --from %s failed: %s"
                         % (target, str(e).splitlines()[0]))
            held = self._held(sums)
            if not any(held.values()):
                return
        # At last in the nodes themselves (the client's location log may
        # then be wrong about them: a later copy checks the node anyway).
        for node in self.fx.allNodes:
            for key in sums:
                if self.fx.cluster.node_has(node, key):
                    self.log("    reset: dropkey %s in %s" % (key,
                                                               node.name))
                    self.fx.env.annex(node.path, "dropkey", "--quiet",
                                      "--force", key, check=False)
        if any(self._held(sums).values()):
            raise FixtureError("cannot empty the nodes of the %s files: %s"
                               % (which, self._held(sums)))

    def ensurePresent(self, config, which, where="cluster"):
        """
        Make sure the target nodes of C{config} for C{where} hold the
        content of C{which} (and the client too).
        """
        files, sums = self._files(which)
        self.ensureClient(which)
        nodes = self.fx.nodesFor(config, where)
        if all(c == len(sums) for c in self._held(sums, nodes).values()):
            return
        self.untimed("copy", "--quiet", "--to", config.target(where),
                     *files)
        if not all(c == len(sums)
                   for c in self._held(sums, nodes).values()):
            raise WorkloadError("cannot fill the target nodes with the %s"
                                " files: %s" % (which, self._held(sums)))

    def ensureClient(self, which):
        """
        Make sure the client holds the content of C{which} (from node1 by
        path, or any node through git-annex's gateway).
        """
        files, sums = self._files(which)
        names = self.fx.bigFile if which == "big" else self.fx.smallFiles
        if not self.fx.clientMismatches(names):
            return
        for source in ("node1path", "gw-mycluster"):
            try:
                self.untimed("get", "--quiet", "--from", source, *files)
            except WorkloadError:
                pass
            if not self.fx.clientMismatches(names):
                return
        raise FixtureError("the client lost the content of the %s files"
                           % (which,))

    # --------------------------------------------------------- workloads

    def _checkNodes(self, nodes, sums):
        problems = self.fx.mismatches(nodes, sums)
        if problems:
            raise WorkloadError("%d content problem(s) on the nodes: %s"
                                % (len(problems), "; ".join(problems[:5])))

    def _put(self, config, which, where):
        files, sums = self._files(which)
        self.ensureAbsent(config, "big")
        self.ensureAbsent(config, "small")
        self.ensureClient(which)
        timeout = self.bigTimeout if which == "big" else self.smallTimeout
        figures = self.measure(config, ["copy", "--quiet", "--to",
                                        config.target(where)] + files,
                               timeout)
        self._checkNodes(self.fx.nodesFor(config, where), sums)
        return figures

    def _get(self, config, which, where="cluster"):
        files, sums = self._files(which)
        names = self.fx.bigFile if which == "big" else self.fx.smallFiles
        self.ensurePresent(config, which, where)
        self.untimed("drop", "--quiet", "--force", *files)
        if len(self.fx.clientMismatches(names)) != len(names):
            raise WorkloadError("the client still has content after"
                                " dropping it")
        timeout = self.bigTimeout if which == "big" else self.smallTimeout
        figures = self.measure(config, ["get", "--quiet", "--from",
                                        config.target(where)] + files,
                               timeout)
        problems = self.fx.clientMismatches(names)
        if problems:
            raise WorkloadError("%d content problem(s) in the client: %s"
                                % (len(problems), "; ".join(problems[:5])))
        return figures

    def putBig(self, config):
        return self._put(config, "big", "cluster")

    def putBigNode(self, config):
        return self._put(config, "big", "node")

    def getBig(self, config):
        return self._get(config, "big")

    def putBigSshNode(self, config):
        return self._put(config, "big", "ssh-node")

    def getBigSshNode(self, config):
        return self._get(config, "big", "ssh-node")

    def putBigHttpNode(self, config):
        return self._put(config, "big", "http-node")

    def getBigHttpNode(self, config):
        return self._get(config, "big", "http-node")

    def putSmall(self, config):
        return self._put(config, "small", "cluster")

    def getSmall(self, config):
        return self._get(config, "small")

    def dropSmall(self, config):
        files, sums = self._files("small")
        self.ensurePresent(config, "small")
        figures = self.measure(config, ["drop", "--quiet", "--from",
                                        config.target("cluster")] + files,
                               self.smallTimeout)
        held = self._held(sums)
        if any(held.values()):
            raise WorkloadError("content left on the nodes after the drop:"
                                " %s" % (held,))
        return figures

    def checkpresent(self, config, concurrency):
        """
        Run the load client at C{concurrency} against the target's uuid.
        """
        self.ensurePresent(config, "small")
        self.fx.checkServers()
        self.noteLoad()
        server = self.fx.servers[config.server]
        uuid = (self.fx.cluster.cluster_uuid if config.gateway
                else self.fx.nodes[0].uuid)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                      if p])
        argv = [sys.executable, "-m", "bench.load", "--port",
                str(server.port), "--uuid", uuid,
                "--client", self.fx.cluster.client.uuid,
                "--keys", self.keysFile, "--concurrency", str(concurrency),
                "--duration", str(self.cpDuration),
                "--warmup", str(self.cpWarmup)]
        sampler = Sampler(server.process.pid)
        sampler.start()
        try:
            result = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=self.cpDuration + self.cpWarmup + 120)
        except subprocess.TimeoutExpired:
            raise WorkloadError("the load client timed out")
        finally:
            figures = self._rss(sampler, None)
        if result.returncode != 0:
            raise WorkloadError("the load client failed:\n%s"
                                % (result.stderr[-3000:],))
        load = json.loads(result.stdout)
        if load["errors"]:
            raise WorkloadError("%d error(s) at concurrency %d; first: %s"
                                % (load["errors"], concurrency,
                                   load["first_error"]))
        if not load["requests"]:
            raise WorkloadError("no request answered at concurrency %d"
                                % (concurrency,))
        figures.update(load)
        return figures

    # -------------------------------------------------------------- runs

    def applicable(self, config, workload):
        return applicable(config, workload, self.nodeConfigs)

    def _record(self, repeat, config, measurement, call, describe):
        try:
            figures = call()
        except (WorkloadError, FixtureError) as e:
            self.errors.append({"repeat": repeat, "config": config.name,
                                "workload": measurement, "error": str(e)})
            self.log("  %-9s %-16s ERROR: %s" % (
                config.name, measurement, str(e).splitlines()[0]
                if str(e) else type(e).__name__))
            if isinstance(e, FixtureError):
                raise
            return
        self.results.setdefault((config.name, measurement), []).append(
            figures)
        self.log("  %-9s %-16s %s" % (config.name, measurement,
                                      describe(figures)))

    def runConfig(self, config, repeat):
        """
        Run every selected workload for C{config} (in a fixed order: each
        leaves the state the next one wants), then empty the nodes.
        """
        for workload in self.workloads:
            self.runWorkload(config, workload, repeat)
        self.ensureAbsent(config, "big")
        self.ensureAbsent(config, "small")

    def runWorkload(self, config, workload, repeat):
        """
        Run C{workload} for C{config}, if it applies (every workload brings
        the state it needs about itself).
        """
        if not self.applicable(config, workload):
            return
        mib = self.fx.size / MiB
        files = self.fx.files

        def rate(unit, amount):
            def describe(f):
                server = ("" if f["server"] is None else
                          ", server peak %.0f MiB" % (f["server"] / MiB,))
                if f.get("servercpu") is not None:
                    server += ", server CPU %.2f s" % (f["servercpu"],)
                if f.get("cpu_client") is not None:
                    server += ", CPU s %s" % (" ".join(
                        "%s %.2f" % (role, f["cpu_" + role])
                        for role in ROLES),)
                return "%.2f s, %.1f %s%s" % (
                    f["seconds"], amount / f["seconds"], unit, server)
            return describe

        calls = {
            "put-big": (self.putBig, rate("MiB/s", mib)),
            "get-big": (self.getBig, rate("MiB/s", mib)),
            "put-big-node": (self.putBigNode, rate("MiB/s", mib)),
            "put-small": (self.putSmall, rate("files/s", files)),
            "get-small": (self.getSmall, rate("files/s", files)),
            "drop-small": (self.dropSmall, rate("files/s", files)),
            "put-big-ssh-node": (self.putBigSshNode, rate("MiB/s", mib)),
            "get-big-ssh-node": (self.getBigSshNode, rate("MiB/s", mib)),
            "put-big-http-node": (self.putBigHttpNode, rate("MiB/s", mib)),
            "get-big-http-node": (self.getBigHttpNode, rate("MiB/s", mib)),
        }
        if workload == "checkpresent":
            for n in self.concurrencies:
                self._record(
                    repeat, config, "checkpresent-c%d" % (n,),
                    lambda n=n: self.checkpresent(config, n),
                    lambda f: "%.0f req/s, p50 %.2f ms, p99 %.2f ms,"
                              " server peak %.0f MiB (load client cpu"
                              " %.1f s)" % (
                                  f["rps"], f["p50_ms"], f["p99_ms"],
                                  f["server"] / MiB, f["cpu"]))
            return
        call, describe = calls[workload]
        self._record(repeat, config, workload,
                     lambda: call(config), describe)
