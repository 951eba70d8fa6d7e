"""
Multi-gateway clusters: a cluster served by two gateways that reach each
other over ssh (git-annex's C{extendcluster}), with annexd as one of them.

git-annex's gateways rely on the client's BYPASS to avoid sending a request
round the gateways forever, and BYPASS exists only from protocol version 2
on: a version 0 or 1 client makes them recurse (shared/spec/p2p-protocol.md
section 5.4).  annexd always speaks version 4 with BYPASS to other gateways,
so no client can.
"""

import hashlib
import os
import sys

from twisted.internet import reactor
from twisted.trial import unittest

from annexd.nodes.process import spawnP2P
from annexd.protocol.client import P2PClient
from annexd.protocol.keys import Key
from tests.support.annex import cluster_for
from tests.test_gateway_faults import CLIENT_UUID, processesMentioning, pollUntil

MiB = 1024 * 1024


def keyOf(data):
    return Key.parse(b"SHA256E-s%d--%s.bin" % (
        len(data), hashlib.sha256(data).hexdigest().encode()))


def extendCluster(cluster):
    """
    Add a second gateway C{gwb.git} to the fixture's cluster, with its own
    node C{node4}; the two gateways are each other's ssh remotes (through the
    fixture's fake ssh).  Returns C{(gwb path, node4 path, node4 uuid)}.
    """
    env, gw = cluster.env, cluster.gateway.path
    base = cluster.base_dir
    gwb = os.path.join(base, "gwb.git")
    node4 = os.path.join(base, "nodes", "node4.git")
    env.run(["git", "clone", "-q", "--bare", gw, gwb], cwd=base)
    env.annex(gwb, "init", "gwb")
    env.run(["git", "clone", "-q", "--bare", gw, node4], cwd=base)
    env.annex(node4, "init", "node4")
    env.git(gwb, "remote", "add", "gw", "ssh://localhost" + gw)
    env.git(gwb, "fetch", "-q", "gw")
    env.annex(gwb, "extendcluster", "gw", cluster.name)
    env.git(gwb, "remote", "add", "node4", node4)
    env.git(gwb, "config", "remote.node4.annex-cluster-node", cluster.name)
    env.git(gwb, "fetch", "-q", "--all")
    env.annex(gwb, "updatecluster")
    env.git(gw, "remote", "add", "gwb", "ssh://localhost" + gwb)
    env.git(gw, "fetch", "-q", "gwb")
    env.annex(gw, "extendcluster", "gwb", cluster.name)
    env.annex(gw, "updatecluster")
    return gwb, node4, env.git(node4, "config", "annex.uuid").strip()


class MultiGatewayTests(unittest.TestCase):
    """
    annexd as a gateway of a cluster that has another gateway.
    """

    timeout = 300

    def setUp(self):
        self.cluster = cluster_for(self, nodes=2)
        self.gwb, self.node4, self.node4UUID = extendCluster(self.cluster)

    def environment(self, otherGateway):
        """
        The environment of annexd-shell: the fake ssh reaches the other
        gateway through C{otherGateway} ("annexd" or "git-annex").
        """
        env = dict(self.cluster.env.env)
        if otherGateway == "annexd":
            env["FAKESSH_FORCED_COMMAND"] = "%s -m annexd.shell" % (sys.executable,)
        return env

    async def session(self, version, otherGateway):
        command = "git-annex-shell 'p2pstdio' '%s' '%s' --uuid %s" % (
            self.cluster.gateway.path, CLIENT_UUID, self.cluster.cluster_uuid)
        args = [sys.executable, "-m", "annexd.shell", "-c", command]
        bridge = spawnP2P(reactor, sys.executable, args,
                          self.environment(otherGateway), peer="annexd-shell")
        client = P2PClient(bridge.connection,
                           self.cluster.cluster_uuid.encode())
        await client.handshake(version)
        return bridge, client

    def holders(self, key):
        digest = key.name.split(b".")[0].decode()
        paths = [(n.uuid, n.path) for n in self.cluster.nodes]
        paths.append((self.node4UUID, self.node4))
        found = set()
        for uuid, path in paths:
            where = self.cluster.env.run(
                ["git-annex", "contentlocation", key.raw.decode()],
                cwd=path, check=False).stdout.decode().strip()
            if where:
                with open(os.path.join(path, where), "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() == digest:
                        found.add(uuid)
        return found

    async def roundTrip(self, version, otherGateway):
        bridge, client = await self.session(version, otherGateway)
        self.assertEqual(client.version, version)
        data = os.urandom(MiB + 3)
        key = keyOf(data)
        upload = await client.put(key, b"multi.bin")
        upload.receive(len(data)).write(data)
        outcome = await upload.finish(True)
        self.assertTrue(outcome.ok)
        everyNode = {n.uuid for n in self.cluster.nodes} | {self.node4UUID}
        self.assertEqual(self.holders(key), everyNode)
        self.assertTrue(await client.checkPresent(key))
        removed = await client.remove(key)
        self.assertTrue(removed.ok)
        self.assertEqual(self.holders(key), set())
        bridge.connection.close()
        await bridge.ended
        # Every process of the session is gone: nothing recursed.
        await pollUntil(lambda: not processesMentioning(self.cluster.base_dir))

    async def test_version1ThroughAnnexd(self):
        """
        A protocol 1 client (no BYPASS) reaches every node of both gateways
        through annexd, with annexd also as the other gateway, and nothing
        recurses.
        """
        await self.roundTrip(1, "annexd")

    async def test_version0ThroughGitAnnex(self):
        """
        A protocol 0 client reaches every node through annexd when the
        other gateway is git-annex's own: annexd's BYPASS keeps git-annex
        from sending the request back.
        """
        await self.roundTrip(0, "git-annex")

    async def test_version4(self):
        """
        A protocol 4 client gets the same result.
        """
        await self.roundTrip(4, "git-annex")
