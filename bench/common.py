"""
What the benchmarks share: reading /proc (peak RSS, CPU seconds, a
server's descendants and a sampler thread), incompressible test files and
their sha256, starting and stopping servers.
"""

import hashlib
import os
import signal
import threading

from tests.support.daemon import spawnServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


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
