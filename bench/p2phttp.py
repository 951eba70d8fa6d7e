"""
Benchmark: a large file to and from a 3-node cluster over annex+http, through
annexd and through git-annex's own gateway, in the same run.

    python bench/p2phttp.py [--size-mib 1024] [--repeat 1] [--keep DIR]
                         [--profile FILE]

One cluster (L{tests.support.annex.build_cluster}: a bare gateway, 3 bare
nodes, a client) is served twice over HTTP on 127.0.0.1:

  - by annexd: C{annexd --repo GATEWAY --http tcp:PORT --wideopen};
  - by git-annex: C{git-annex p2phttp -J4 --wideopen --bind 127.0.0.1
    --port PORT2}, run in the gateway repository (the multicall binary
    itself, so the pid measured is the server's).

The client has two remotes for the gateway, C{gw} (annexUrl pointing at
annexd) and C{ref} (annexUrl pointing at p2phttp); both have the gateway's
uuid, so git-annex gives it the proxied remotes C{gw-mycluster} and
C{ref-mycluster}.  Each round, for each server (the order alternates from
round to round):

  1. PUT: the content is dropped from the cluster (and the nodes are checked
     to be empty), then C{git annex copy --to X-mycluster FILE} is timed and
     every node's copy is checked by sha256;
  2. GET: the client's copy is dropped, then C{git annex get --from
     X-mycluster FILE} is timed and the client's file is checked by sha256.

Throughput figures are MiB/s of the client command's wall time; ratios are
annexd over git-annex p2phttp (1.0 = as fast).  During each transfer a
thread samples, every 0.25 s, the resident size of the server process and of
all its descendants (both servers run a C{git-annex-shell p2pstdio}
session per node; then C{git cat-file}, C{git annex merge}, ...).  The server's peak RSS growth is
its kernel high-water mark (VmHWM, reset just before the transfer) minus its
resident size before the transfer; the descendants' figure is the peak of
their summed resident sizes (sampled, so a short-lived spike may be missed).
CPU seconds are the server's (utime + stime) and its descendants' (summed
from the samples, so approximate) during the transfer.

With C{--profile FILE} annexd runs under cProfile and writes its statistics
to FILE when it stops (figures are then slower than normal).
"""

import os
import sys

if __name__ == "__main__":
    # Run as a script: the repository's root, so that annexd and tests
    # import without an install.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))

import argparse
import hashlib
import platform
import signal
import statistics
import subprocess
import tempfile
import threading
import time

from annexd import gitannex
from tests.support.annex import _rmtree, build_cluster
from tests.support.daemon import annexdArgv, freePort, spawnServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024
FILE = "big.bin"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

# twistd ends by re-raising the signal that stopped it, so the statistics
# are written by a reactor shutdown trigger, not after main() returns.
_START_PROFILED = (
    "import cProfile, sys\n"
    "from twisted.internet import reactor\n"
    "from annexd.cli import main\n"
    "path, args = sys.argv[1], sys.argv[2:]\n"
    "profile = cProfile.Profile()\n"
    "def dump():\n"
    "    profile.disable()\n"
    "    profile.dump_stats(path)\n"
    "reactor.addSystemEventTrigger('after', 'shutdown', dump)\n"
    "profile.enable()\n"
    "main(args)\n")

SERVERS = ("annexd", "p2phttp")
REMOTES = {"annexd": "gw", "p2phttp": "ref"}
LABELS = {"annexd": "annexd", "p2phttp": "git-annex p2phttp"}


# ------------------------------------------------------------------ /proc

def _status(pid, field):
    """
    A field of C{/proc/PID/status} in bytes (0 when the process is gone).
    """
    try:
        with open("/proc/%d/status" % (pid,)) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def resetPeak(pid):
    """
    Reset the kernel's peak-RSS mark of process C{pid}; return its current
    RSS.
    """
    try:
        with open("/proc/%d/clear_refs" % (pid,), "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status(pid, "VmRSS")


def cpuSeconds(pid):
    """
    utime + stime of process C{pid}, in seconds (None when it is gone).
    """
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def descendants(pid):
    """
    The pids of every descendant of C{pid}.
    """
    found = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % (parent,))
        except OSError:
            continue
        for tid in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (parent, tid)) as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


class Sampler(threading.Thread):
    """
    Samples a server process and its descendants every C{interval} seconds
    until L{stop}.

    @ivar rssBefore: the server's RSS when started.
    @ivar childrenBefore: the descendants' summed RSS when started.
    @ivar peakRSS: the highest server RSS sampled.
    @ivar peakChildren: the highest summed RSS of the descendants sampled.
    """

    def __init__(self, pid, interval=0.25):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self._halt = threading.Event()
        self.rssBefore = resetPeak(pid)
        self.cpuBefore = cpuSeconds(pid)
        self._childCPU = {}
        self._childFirst = {}
        self.maxChildren = 0
        self.childrenBefore = self._sampleChildren()
        for child, cpu in self._childCPU.items():
            self._childFirst[child] = cpu
        self.peakRSS = self.rssBefore
        self.peakChildren = self.childrenBefore

    def _sampleChildren(self):
        total = 0
        children = descendants(self.pid)
        self.maxChildren = max(self.maxChildren, len(children))
        for child in children:
            total += _status(child, "VmRSS")
            cpu = cpuSeconds(child)
            if cpu is not None:
                self._childCPU[child] = cpu
                self._childFirst.setdefault(child, 0.0)
        return total

    def run(self):
        while not self._halt.wait(self.interval):
            self.peakRSS = max(self.peakRSS, _status(self.pid, "VmRSS"))
            self.peakChildren = max(self.peakChildren,
                                    self._sampleChildren())

    def stop(self):
        """
        Stop sampling.

        @return: a dict: C{rss} (the server's peak RSS growth, bytes),
            C{children} (the descendants' peak summed RSS, bytes),
            C{childgrowth} (that minus their summed RSS before),
            C{cpu} and C{childcpu} (seconds during the transfer).
        """
        self._halt.set()
        self.join()
        self.peakChildren = max(self.peakChildren, self._sampleChildren())
        hwm = _status(self.pid, "VmHWM")
        cpu = cpuSeconds(self.pid)
        return {
            "rss": max(0, max(hwm, self.peakRSS) - self.rssBefore),
            "children": self.peakChildren,
            "childgrowth": max(0, self.peakChildren - self.childrenBefore),
            "cpu": (cpu - self.cpuBefore) if cpu is not None else 0.0,
            "childcpu": sum(cpu - self._childFirst[child]
                            for child, cpu in self._childCPU.items()),
            "nchildren": self.maxChildren,
        }


# ---------------------------------------------------------------- helpers

def makeFile(path, size):
    """
    Write C{size} bytes of incompressible data to C{path}; return its
    sha256 (hex).
    """
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        n = 0
        while left:
            chunk = (n.to_bytes(8, "big") + block[8:])[:min(left, MiB)]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
            n += 1
    return digest.hexdigest()


def sha256File(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4 * MiB)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def startServer(argv, cwd, env, port, log, executable=None, timeout=60):
    """
    Start a server in its own process group and wait until it accepts
    connections on 127.0.0.1:PORT.

    @rtype: L{tests.support.daemon.Daemon}
    """
    return spawnServer(argv, port, log, cwd=cwd, env=env,
                       executable=executable).waitListening(timeout)


def stopServers(servers):
    """
    Stop each server and anything left in its process group (node sessions,
    helpers).
    """
    for server in servers:
        try:
            server.stop()
        except OSError:
            pass
        try:
            os.killpg(server.process.pid, signal.SIGKILL)
        except OSError:
            pass


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


# ------------------------------------------------------------------ bench

class Bench:
    def __init__(self, workdir, size, profile=None):
        self.workdir = workdir
        self.size = size
        self.servers = {}
        self.cluster = build_cluster(os.path.join(workdir, "cluster"))
        self.env = self.cluster.env
        self.client = self.cluster.client.path
        self.gateway = self.cluster.gateway.path
        self.filePath = os.path.join(self.client, FILE)
        self.sha256 = makeFile(self.filePath, size)
        self.annex("add", "--quiet", FILE)
        self.git("commit", "-q", "-m", "big")
        self.key = self.annex("lookupkey", FILE).strip()
        self.profile = profile

    def annex(self, *args, **kw):
        kw.setdefault("timeout", 3600)
        return self.env.annex(self.client, *args, **kw)

    def git(self, *args):
        return self.env.git(self.client, *args)

    def start(self):
        """
        Start both servers and point the client's remotes at them.
        """
        port = freePort()
        if self.profile:
            argv = [sys.executable, "-c", _START_PROFILED,
                    os.path.abspath(self.profile)]
        else:
            argv = annexdArgv([])
        argv += ["--repo", self.gateway,
                 "--http", "tcp:%d:interface=127.0.0.1" % (port,),
                 "--wideopen"]
        # In the checkout's root, so that annexd is importable from it.
        self.servers["annexd"] = startServer(
            argv, ROOT, self.env.env, port,
            os.path.join(self.workdir, "annexd.log"))
        port = freePort()
        binary, argv = self.env.gitannex.argv(
            "git-annex", "p2phttp", "-J4", "--wideopen",
            "--bind", "127.0.0.1", "--port", str(port))
        self.servers["p2phttp"] = startServer(
            argv, self.gateway, self.env.env, port,
            os.path.join(self.workdir, "p2phttp.log"), executable=binary)

        url = "ssh://localhost" + self.gateway
        self.git("remote", "add", REMOTES["p2phttp"], url)
        for name in SERVERS:
            remote = REMOTES[name]
            self.git("config", "remote.%s.annexUrl" % (remote,),
                     self.servers[name].annexUrl())
            # Asks the server for its uuid (records remote.X.annex-uuid),
            # which makes the proxied remotes X-mycluster, X-node1 appear.
            info = self.annex("info", remote)
            if "gateway to cluster: %s-mycluster" % (remote,) not in info:
                raise RuntimeError("%s: no cluster through %s:\n%s"
                                   % (name, remote, info))

    def stop(self):
        stopServers(self.servers.values())

    def cluster_remote(self, name):
        return "%s-mycluster" % (REMOTES[name],)

    def measure(self, name, *args):
        """
        Time C{git annex ARGS} in the client while sampling server C{name}.

        @return: (seconds, sampler figures)
        """
        server = self.servers[name]
        if server.process.poll() is not None:
            raise RuntimeError("%s exited:\n%s" % (name, server.output()))
        os.sync()
        sampler = Sampler(server.process.pid)
        sampler.start()
        start = time.perf_counter()
        try:
            self.annex(*args)
        finally:
            elapsed = time.perf_counter() - start
            figures = sampler.stop()
        return elapsed, figures

    def put(self, name):
        remote = self.cluster_remote(name)
        self.annex("drop", "--quiet", "--force", "--from", remote, FILE)
        for node in self.cluster.nodes:
            assert not self.cluster.node_has(node, self.key), node
        result = self.measure(name, "copy", "--quiet", "--to", remote, FILE)
        for node in self.cluster.nodes:
            got = self.cluster.node_sha256(node, self.key)
            assert got == self.sha256, (name, node.name, got, self.sha256)
        return result

    def get(self, name):
        remote = self.cluster_remote(name)
        self.annex("drop", "--quiet", "--force", FILE)
        assert not os.path.exists(os.path.realpath(self.filePath))
        result = self.measure(name, "get", "--quiet", "--from", remote, FILE)
        got = sha256File(self.filePath)
        assert got == self.sha256, (name, got, self.sha256)
        return result

    def round(self, number, results):
        order = SERVERS if number % 2 == 0 else SERVERS[::-1]
        for op in ("put", "get"):
            for name in order:
                elapsed, figures = getattr(self, op)(name)
                results[name, op].append((elapsed, figures))
                print("  %s %s: %.1f s, %.0f MiB/s, server RSS +%.1f MiB,"
                      " cpu %.1f s (%d children, %.1f s)" % (
                          name, op, elapsed, self.size / MiB / elapsed,
                          figures["rss"] / MiB, figures["cpu"],
                          figures["nchildren"], figures["childcpu"]),
                      file=sys.stderr)


# ----------------------------------------------------------------- report

def table(results, size, repeats):
    mib = size / MiB

    def rates(name, op):
        return sorted(mib / elapsed for elapsed, _ in results[name, op])

    def median(name, op, field):
        return statistics.median(f[field] for _, f in results[name, op])

    def peak(name, op, field):
        return max(f[field] for _, f in results[name, op])

    lines = [
        "| transfer (%d MiB, 3 nodes, %d round%s) | min MiB/s | median MiB/s"
        " | max MiB/s | median s |" % (mib, repeats, "" if repeats == 1
                                       else "s"),
        "|---|---|---|---|---|",
    ]
    commands = {"put": "`git annex copy --to %s`",
                "get": "`git annex get --from %s`"}
    for op in ("put", "get"):
        for name in SERVERS:
            r = rates(name, op)
            lines.append("| %s %s via %s | %.0f | %.0f | %.0f | %.2f |" % (
                op.upper(), commands[op] % (
                    "%s-mycluster" % (REMOTES[name],)), LABELS[name],
                r[0], statistics.median(r), r[-1],
                statistics.median(e for e, _ in results[name, op])))
    ratio = {op: statistics.median(rates("annexd", op))
             / statistics.median(rates("p2phttp", op))
             for op in ("put", "get")}
    lines += [
        "",
        "| ratio (annexd / git-annex p2phttp, median throughput) | value |",
        "|---|---|",
        "| PUT to the cluster | %.2f |" % (ratio["put"],),
        "| GET from the cluster | %.2f |" % (ratio["get"],),
        "",
        "| peak RSS (max over rounds, MiB) | PUT | GET |",
        "|---|---|---|",
    ]
    for name in SERVERS:
        lines.append("| %s process: growth | %.1f | %.1f |" % (
            LABELS[name], peak(name, "put", "rss") / MiB,
            peak(name, "get", "rss") / MiB))
        lines.append("| %s descendants: peak total (growth) | %.1f (+%.1f)"
                     " | %.1f (+%.1f) |" % (
                         LABELS[name],
                         peak(name, "put", "children") / MiB,
                         peak(name, "put", "childgrowth") / MiB,
                         peak(name, "get", "children") / MiB,
                         peak(name, "get", "childgrowth") / MiB))
    lines += [
        "",
        "| CPU seconds during the transfer (median) | PUT | GET |",
        "|---|---|---|",
    ]
    for name in SERVERS:
        lines.append("| %s process | %.1f | %.1f |" % (
            LABELS[name], median(name, "put", "cpu"),
            median(name, "get", "cpu")))
        lines.append("| %s descendants (~) | %.1f | %.1f |" % (
            LABELS[name], median(name, "put", "childcpu"),
            median(name, "get", "childcpu")))
    worst = max(peak("annexd", op, "rss") for op in ("put", "get")) / MiB
    lines += [
        "",
        "annexd's peak RSS growth: %.1f MiB (target: under 64 MiB) — %s." % (
            worst, "met" if worst < 64 else "NOT met"),
    ]
    return "\n".join(lines)


def machine():
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    version = subprocess.run(
        [gitannex.find().binary, "version", "--raw"],
        capture_output=True, text=True).stdout.strip()
    return "%s, %d cores, %.0f GiB, Python %s, git-annex %s" % (
        platform.platform(), os.cpu_count(), mem, platform.python_version(),
        version)


def main(args):
    signal.signal(signal.SIGTERM, _terminate)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        workdir = os.path.realpath(args.keep)
    else:
        workdir = tempfile.mkdtemp(prefix="annexd-bench-http-")
    bench = None
    try:
        bench = Bench(workdir, args.size * MiB, profile=args.profile)
        bench.start()
        results = {(name, op): [] for name in SERVERS
                   for op in ("put", "get")}
        for i in range(args.repeats):
            bench.round(i, results)
            print("round %d done" % (i + 1), file=sys.stderr)
    finally:
        if bench is not None:
            bench.stop()
        if not args.keep:
            _rmtree(workdir)
    print(machine())
    print()
    print(table(results, bench.size, args.repeats))


def run():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", "--size", dest="size", type=int,
                        default=1024, help="MiB (1024)")
    parser.add_argument("--repeat", "--repeats", dest="repeats", type=int,
                        default=1, help="rounds (1)")
    parser.add_argument("--keep", help="work in DIR and keep it")
    parser.add_argument("--profile", metavar="FILE",
                        help="run annexd under cProfile, stats to FILE")
    args = parser.parse_args()
    main(args)


if __name__ == "__main__":
    run()
