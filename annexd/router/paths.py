# -*- test-case-name: tests.test_paths -*-
"""
What reaching a node costs, measured.

git-annex orders a cluster's nodes by their configured cost, and its
defaults only say what kind of url a remote has (a local path 100, ssh
200, one more per gateway in between).  A gateway in front of nodes in
other datacentres needs to know the path: how long a request takes to come
back and how fast content flows, measured on the requests it relays.

A L{PathMeter} per node keeps two moving averages: the latency of a
round trip (CHECKPRESENT, the start of a GET) and the throughput of
downloads of at least L{MIN_TRANSFER} bytes; and how many transfers are in
flight to the node right now, through any cluster.  From them it estimates
how many seconds a download of a given size would take
(L{PathMeter.estimate}):

    (latency + size / throughput) * (1 + transfers in flight)

Until a node has been measured, and again once its measurements are older
than L{PathMeter.memory} seconds (so that a node that was slow is tried
again after a while, and a node that was fast is not trusted forever), the
estimate comes from a prior for its kind of path (L{PRIORS}), one hop more
for each gateway in between.

A cost the user configured (C{remote.NAME.annex-cost}) still counts: it
scales the estimate (cost 200 doubles it, 50 halves it; see
L{annexd.router.cluster.ClusterNode.weight}), so that a node the user
marked expensive is used only when it is much faster.
"""

import time

#: Downloads smaller than this say more about latency than throughput.
MIN_TRANSFER = 256 * 1024

#: Weight of a new sample in the moving averages.
ALPHA = 0.3

#: Latency (seconds) and throughput (bytes per second) assumed per kind of
#: path until measured: a repository on this machine, or one reached over
#: a network (ssh, HTTP, P2P addresses).  Each further hop (another gateway)
#: adds the network latency and divides the throughput by 1.5.
PRIORS = {
    "local": (0.002, 800e6),
    "network": (0.020, 100e6),
}


class PathMeter:
    """
    The measured cost of reaching one node.

    @ivar latency: the moving average of round trips (seconds), or L{None}.
    @ivar throughput: the moving average of download rates (bytes per
        second), or L{None}.
    @ivar busy: transfers in flight to the node.
    @ivar memory: seconds for which a measurement is trusted.
    """

    def __init__(self, kind="network", hops=1, clock=time.monotonic,
                 memory=300.0):
        latency, throughput = PRIORS[kind]
        for _ in range(max(0, hops - 1)):
            latency += PRIORS["network"][0]
            throughput /= 1.5
        self.priorLatency = latency
        self.priorThroughput = throughput
        self.latency = None
        self.throughput = None
        self.busy = 0
        self.memory = memory
        self.clock = clock
        self._latencyAt = None
        self._throughputAt = None

    @staticmethod
    def _average(old, sample):
        return sample if old is None else old + ALPHA * (sample - old)

    def observeLatency(self, seconds):
        """
        A round trip to the node took C{seconds}.
        """
        if self._stale(self._latencyAt):
            self.latency = None
        self.latency = self._average(self.latency, max(0.0, seconds))
        self._latencyAt = self.clock()

    def observeTransfer(self, size, seconds):
        """
        C{size} bytes came from the node in C{seconds}; small transfers are
        ignored (see L{MIN_TRANSFER}).
        """
        if size < MIN_TRANSFER or seconds <= 0:
            return
        if self._stale(self._throughputAt):
            self.throughput = None
        self.throughput = self._average(self.throughput, size / seconds)
        self._throughputAt = self.clock()

    def _stale(self, at):
        return at is None or self.clock() - at > self.memory

    def currentLatency(self):
        return (self.priorLatency if self._stale(self._latencyAt)
                else self.latency)

    def currentThroughput(self):
        return (self.priorThroughput if self._stale(self._throughputAt)
                else self.throughput)

    def estimate(self, size=0):
        """
        @param size: the bytes to download (0: a round trip only).
        @return: the seconds a download of C{size} bytes would take now.
        """
        seconds = self.currentLatency() + size / self.currentThroughput()
        return seconds * (1 + self.busy)

    def begin(self):
        """
        A transfer to or from the node starts.
        """
        self.busy += 1

    def end(self):
        """
        A transfer to or from the node is over.
        """
        self.busy = max(0, self.busy - 1)

    def status(self):
        """
        @return: a dict for monitoring: C{latency} (seconds),
            C{throughput} (bytes per second), C{measured} (whether either
            comes from measurements), C{busy}.
        """
        return {
            "latency": self.currentLatency(),
            "throughput": self.currentThroughput(),
            "measured": not (self._stale(self._latencyAt)
                             and self._stale(self._throughputAt)),
            "busy": self.busy,
        }
