"""
The daemon as an operator runs it: SIGHUP reloads the gateway state without
dropping transfers in flight, SIGTERM drains, systemd socket activation.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import time

from twisted.trial import unittest

from tests.support.annex import cluster_for
from tests.support.daemon import annexdArgv, freePort, spawnServer, startDaemon
from tests.test_gateway_http import HTTPGatewayMixin


def waitFor(predicate, what, timeout=60):
    """
    Poll C{predicate} (with a bound) until it is true.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


class PutInFlight:
    """
    An HTTP PUT of C{data} to a cluster, sent by hand so that the test
    decides when the body ends.
    """

    def __init__(self, port, uuid, clientUUID, data):
        self.data = data
        digest = hashlib.sha256(data).hexdigest()
        self.key = "SHA256E-s%d--%s.bin" % (len(data), digest)
        self.digest = digest
        path = ("/git-annex/%s/v4/put?key=%s&clientuuid=%s" % (
            uuid, self.key, clientUUID))
        self.socket = socket.create_connection(("127.0.0.1", port), 30)
        self.socket.sendall((
            "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
            "X-git-annex-data-length: %d\r\n\r\n" % (
                path, len(data), len(data))).encode())

    def send(self, start, end):
        self.socket.sendall(self.data[start:end])

    def answer(self):
        """
        The JSON answer to the PUT, once the whole body is sent.
        """
        received = b""
        self.socket.settimeout(120)
        while b"\r\n\r\n" not in received:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise AssertionError("connection closed: %r" % (received,))
            received += chunk
        head, body = received.split(b"\r\n\r\n", 1)
        length = int([line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")][0])
        while len(body) < length:
            body += self.socket.recv(65536)
        self.socket.close()
        return json.loads(body)


class ReloadTests(HTTPGatewayMixin, unittest.TestCase):
    """
    SIGHUP after C{git annex updatecluster} added a node.
    """

    timeout = 600

    def setUp(self):
        self.cluster = cluster_for(self, nodes=3)
        gateway = self.cluster.gateway.path
        self.newNode = self.cluster.nodes[2]
        # The cluster starts with two nodes; the third joins later.
        self.cluster.env.git(self.cluster.gateway.path, "config", "--unset",
                             "remote.%s.annex-cluster-node"
                             % (self.newNode.name,))
        self.cluster.env.annex(self.cluster.gateway.path, "updatecluster")
        self.daemon = startDaemon(self, self.cluster.env.env,
                                  ["--repo", gateway, "--wideopen"])

    def test_newNodeAfterHangup(self):
        """
        An upload in flight while the daemon reloads completes (on the two
        old nodes); the next upload also reaches the node added before the
        reload.
        """
        cluster = self.cluster
        old = cluster.nodes[:2]
        data = os.urandom(8 << 20)
        put = PutInFlight(self.daemon.port, cluster.cluster_uuid,
                          cluster.client.uuid, data)
        put.send(0, len(data) // 2)
        # The nodes are receiving it.
        waitFor(lambda: all(partial(cluster, node, put.key) for node in old),
                "the in-flight upload to reach the nodes")
        cluster.env.git(cluster.gateway.path, "config",
                        "remote.%s.annex-cluster-node" % (self.newNode.name,),
                        cluster.name)
        cluster.env.annex(cluster.gateway.path, "updatecluster")
        os.kill(self.daemon.process.pid, signal.SIGHUP)
        waitFor(lambda: "reloaded the state" in self.daemon.output(),
                "the daemon to reload")
        put.send(len(data) // 2, len(data))
        self.assertEqual(put.answer()["stored"], True)
        for node in old:
            self.assertEqual(cluster.node_sha256(node, put.key), put.digest)
        self.assertIsNone(cluster.node_sha256(self.newNode, put.key))

        after = PutInFlight(self.daemon.port, cluster.cluster_uuid,
                            cluster.client.uuid, os.urandom(1 << 20))
        after.send(0, len(after.data))
        self.assertEqual(after.answer()["stored"], True)
        for node in cluster.nodes:
            self.assertEqual(cluster.node_sha256(node, after.key),
                             after.digest, node.name)
        self.assertIsNone(self.daemon.process.poll())


def partial(cluster, node, key):
    """
    Whether C{node} has started receiving C{key} (a partial file in its
    annex's tmp directory).
    """
    # The nodes are bare repositories.
    return os.path.exists(os.path.join(node.path, "annex", "tmp", key))


class StopTests(unittest.TestCase):
    """
    SIGTERM: stop accepting, let transfers finish up to the grace period,
    then fail them cleanly.
    """

    timeout = 600

    def start(self, grace):
        self.cluster = cluster_for(self, nodes=2)
        self.daemon = startDaemon(self, self.cluster.env.env, [
            "--repo", self.cluster.gateway.path, "--wideopen",
            "--shutdown-grace", str(grace)])

    def terminate(self):
        """
        SIGTERM to the daemon alone, as systemd's KillMode=mixed sends it
        (its node processes must live on to finish the transfers).
        """
        os.kill(self.daemon.process.pid, signal.SIGTERM)

    def refusing(self):
        try:
            socket.create_connection(("127.0.0.1", self.daemon.port), 1).close()
        except OSError:
            return True
        return False

    def test_drain(self):
        """
        An upload in flight when SIGTERM comes completes, while the daemon
        already refuses new connections; then the daemon exits (as twistd
        does: by the signal it was stopped with).
        """
        self.start(grace=120)
        cluster = self.cluster
        data = os.urandom(4 << 20)
        put = PutInFlight(self.daemon.port, cluster.cluster_uuid,
                          cluster.client.uuid, data)
        put.send(0, len(data) // 2)
        waitFor(lambda: all(partial(cluster, n, put.key)
                            for n in cluster.nodes),
                "the upload to reach the nodes")
        self.terminate()
        waitFor(self.refusing, "the daemon to stop accepting")
        self.assertIsNone(self.daemon.process.poll())
        put.send(len(data) // 2, len(data))
        self.assertEqual(put.answer()["stored"], True)
        for node in cluster.nodes:
            self.assertEqual(cluster.node_sha256(node, put.key), put.digest)
        self.assertEqual(self.daemon.process.wait(60), -signal.SIGTERM)
        self.assertIn("waiting up to", self.daemon.output())

    def test_graceOver(self):
        """
        An upload that does not finish within the grace period is failed:
        nothing is stored, and the daemon exits promptly.
        """
        self.start(grace=1)
        cluster = self.cluster
        data = os.urandom(4 << 20)
        put = PutInFlight(self.daemon.port, cluster.cluster_uuid,
                          cluster.client.uuid, data)
        put.send(0, len(data) // 2)
        waitFor(lambda: all(partial(cluster, n, put.key)
                            for n in cluster.nodes),
                "the upload to reach the nodes")
        self.terminate()
        self.assertEqual(self.daemon.process.wait(60), -signal.SIGTERM)
        self.assertIn("failing 1 transfers", self.daemon.output())
        for node in cluster.nodes:
            self.assertIsNone(cluster.node_sha256(node, put.key))
        put.socket.close()


class SocketActivationTests(HTTPGatewayMixin, unittest.TestCase):
    """
    Started by systemd-socket-activate with an inherited listening socket.
    """

    timeout = 600

    def setUp(self):
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise unittest.SkipTest("systemd-socket-activate is not installed "
                                    "(Debian package systemd)")
        self.cluster = cluster_for(self, nodes=2)
        port = freePort()
        # --fdname: Twisted wants LISTEN_FDNAMES, as systemd (227+) sets it.
        argv = [activate, "-l", "127.0.0.1:%d" % (port,),
                "--fdname=http"] + annexdArgv([
            "--repo", self.cluster.gateway.path, "--wideopen",
            "--http", "systemd:domain=INET:index=0"])
        self.daemon = spawnServer(argv, port, self.mktemp() + ".log",
                                  env=self.cluster.env.env, name="annexd")
        self.addCleanup(self.daemon.stop)
        self.useHTTP(self.daemon.annexUrl())

    def test_realClient(self):
        """
        The listening socket is systemd's (systemd-socket-activate starts
        annexd on the first connection, which annexd then serves): a client
        copies a file to the cluster through it and gets it back.
        """
        key, digest = self.writeFile("s.bin", 1 << 20)
        self.client("copy", "--to", "gw-" + self.cluster.name, "s.bin")
        for node in self.cluster.nodes:
            self.assertEqual(self.cluster.node_sha256(node, key), digest)
        self.client("drop", "s.bin")
        self.client("get", "--from", "gw-" + self.cluster.name, "s.bin")
        with open(os.path.join(self.cluster.client.path, "s.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)
        self.assertIsNone(self.daemon.process.poll())


class JSONLogTests(unittest.TestCase):
    """
    --log-format json: twisted.logger's JSON lines, one event per line.
    """

    timeout = 300

    def test_jsonLines(self):
        """
        Everything the daemon logs while starting, serving and stopping is
        a JSON event (parseable by twisted.logger.eventsFromJSONLogFile).
        """
        from twisted.logger import eventsFromJSONLogFile
        cluster = cluster_for(self, nodes=1)
        daemon = startDaemon(self, cluster.env.env, [
            "--repo", cluster.gateway.path, "--wideopen",
            "--log-format", "json"])
        import urllib.request
        with urllib.request.urlopen(daemon.url + "/gateway/config",
                                    timeout=30) as response:
            self.assertEqual(response.status, 200)
        os.kill(daemon.process.pid, signal.SIGTERM)
        daemon.process.wait(60)
        with open(daemon.log, "rb") as f:
            raw = f.read()
        lines = [line for line in raw.split(b"\n") if line.strip()]
        self.assertTrue(lines)
        with open(daemon.log, "r") as f:
            events = list(eventsFromJSONLogFile(f))
        # JSON lines are separated by \x1e (record separator) and newline.
        self.assertEqual(len(events), len(lines), raw[:2000])
        namespaces = {event.get("log_namespace") for event in events}
        self.assertIn("annexd.tap.GatewayService", namespaces)
        self.assertTrue(any("annexd starting" in event.get("log_format", "")
                            for event in events))
