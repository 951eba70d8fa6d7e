"""
Tests for L{annexd.router.paths}: what reaching a node costs, measured.
"""

import hashlib
import os
import shlex
import sys

from twisted.internet import reactor
from twisted.internet.interfaces import IConsumer
from twisted.trial import unittest
from zope.interface import implementer

from annexd.annex.state import GatewayState
from annexd.protocol.keys import Key
from annexd.router.paths import MIN_TRANSFER, PRIORS, PathMeter
from annexd.router.router import Router
from tests.support import throttle

MiB = 1024 * 1024


class PathMeterTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.now = 0.0
        self.meter = PathMeter("network", clock=lambda: self.now, memory=60)

    def test_prior(self):
        """
        Unmeasured, the estimate is the prior of the path's kind.
        """
        latency, throughput = PRIORS["network"]
        self.assertAlmostEqual(self.meter.estimate(10 * MiB),
                               latency + 10 * MiB / throughput)
        self.assertFalse(self.meter.status()["measured"])

    def test_hops(self):
        """
        Each gateway in between adds a network latency and divides the
        throughput by 1.5: a node behind another gateway is estimated
        slower than the same kind of node reached directly.
        """
        direct = PathMeter("network")
        behind = PathMeter("network", hops=2)
        self.assertAlmostEqual(behind.priorLatency, 2 * direct.priorLatency)
        self.assertAlmostEqual(behind.priorThroughput,
                               direct.priorThroughput / 1.5)
        self.assertLess(PathMeter("local").estimate(MiB), direct.estimate(MiB))
        self.assertLess(direct.estimate(MiB), behind.estimate(MiB))

    def test_measured(self):
        """
        Measurements replace the prior: a moving average of round trips
        and of download rates.
        """
        self.meter.observeLatency(0.5)
        self.meter.observeTransfer(10 * MiB, 10.0)
        self.assertEqual(self.meter.estimate(MiB), 0.5 + 1.0)
        self.meter.observeLatency(1.5)
        self.assertAlmostEqual(self.meter.currentLatency(), 0.8)
        self.assertTrue(self.meter.status()["measured"])

    def test_smallTransfersIgnored(self):
        """
        Downloads below L{MIN_TRANSFER} do not count as throughput.
        """
        self.meter.observeTransfer(MIN_TRANSFER - 1, 100.0)
        self.assertIsNone(self.meter.throughput)
        self.meter.observeTransfer(MIN_TRANSFER, 1.0)
        self.assertEqual(self.meter.throughput, MIN_TRANSFER)

    def test_busy(self):
        """
        Every transfer in flight adds the whole estimate again.
        """
        alone = self.meter.estimate(MiB)
        self.meter.begin()
        self.meter.begin()
        self.assertAlmostEqual(self.meter.estimate(MiB), 3 * alone)
        self.meter.end()
        self.meter.end()
        self.meter.end()
        self.assertEqual(self.meter.busy, 0)

    def test_forgotten(self):
        """
        Measurements older than the meter's memory give way to the prior,
        and a new measurement then starts a fresh average.
        """
        self.meter.observeTransfer(MiB, 100.0)
        self.now += 61
        self.assertEqual(self.meter.currentThroughput(),
                         self.meter.priorThroughput)
        self.meter.observeTransfer(MiB, 1.0)
        self.assertEqual(self.meter.throughput, MiB)


class ThrottledNodeTests(unittest.TestCase):
    """
    A cluster of two real ssh nodes (through the fixture's fake ssh), one of
    which serves downloads slowly (its C{annex-shell} is throttled): once
    the gateway has measured that, downloads of keys both nodes hold come
    from the fast one.
    """

    timeout = 120

    RATE = 1 * MiB

    def setUp(self):
        from tests.support.annex import cluster_for
        self.cluster = cluster_for(self, nodes=2)
        env, gw = self.cluster.env, self.cluster.gateway.path
        slow = os.path.join(self.cluster.base_dir, "slowshell")
        with open(slow, "w") as f:
            f.write("#!/bin/sh\nexec %s %s %d -- git-annex-shell \"$@\"\n" % (
                shlex.quote(sys.executable), shlex.quote(throttle.__file__),
                self.RATE))
        os.chmod(slow, 0o755)
        for node in self.cluster.nodes:
            name = "node%d" % (self.cluster.nodes.index(node) + 1)
            env.git(gw, "config", "remote.%s.url" % name,
                    "ssh://localhost" + node.path)
        env.git(gw, "config", "remote.node1.annex-shell", slow)
        state = GatewayState.load(gw)
        self.router = Router(reactor, state, environment=env.env, share=True)
        self.addCleanup(self.router.close)
        self.repository = self.router.resolve(
            self.cluster.cluster_uuid.encode(), state.uuid)

    async def store(self, data):
        key = Key.parse(b"SHA256E-s%d--%s.bin" % (
            len(data), hashlib.sha256(data).hexdigest().encode()))
        upload = await self.repository.put(key, b"f.bin")
        consumer = upload.receive(len(data))
        consumer.write(data)
        outcome = await upload.finish(True)
        self.assertEqual(len(outcome.uuids), 2, outcome)
        return key

    async def fetch(self, key):
        download = await self.repository.get(key, b"f.bin", 0)
        received = []

        @implementer(IConsumer)
        class Collect:
            def registerProducer(self, producer, streaming):
                pass

            def unregisterProducer(self):
                pass

            def write(self, data):
                received.append(data)
        self.assertIs(await download.deliver(Collect()), True)
        await download.finish(True)
        return download.node.name, hashlib.sha256(b"".join(received)).digest()

    async def test_fastNodeServes(self):
        """
        The first download comes from node1 (the nodes look alike, and
        node1 comes first); it is measured slow, and the next downloads
        come from node2.
        """
        contents = [os.urandom(2 * MiB + i) for i in range(4)]
        keys = [await self.store(data) for data in contents]
        served = []
        for key, data in zip(keys, contents):
            name, digest = await self.fetch(key)
            self.assertEqual(digest, hashlib.sha256(data).digest())
            served.append(name)
        meters = {name: self.router.paths[(node.uuid.encode(), None)].status()
                  for name, node in zip(["node1", "node2"], self.cluster.nodes)}
        self.assertEqual(served, ["node1", "node2", "node2", "node2"], meters)
        slow = self.router.paths[(self.cluster.nodes[0].uuid.encode(), None)]
        self.assertLess(slow.throughput, 2 * self.RATE)
