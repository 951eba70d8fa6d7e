"""
A real git-annex client using annexd as an annex+http remote: the cluster
and a proxied node, through the daemon started as an operator starts it.
"""

import hashlib
import json
import os
import time

from twisted.trial import unittest

from tests.support.annex import _text, cluster_for
from tests.support.daemon import startDaemon

REMOTE = "gw"
CLUSTER = "gw-mycluster"
NODE1 = "gw-node1"


class HTTPGatewayMixin:
    """
    A cluster whose client reaches the gateway's annex through annexd's
    HTTP API (its git remote stays the gateway's path).
    """

    daemonOptions = ("--wideopen",)

    def setUpGateway(self):
        self.cluster = cluster_for(self)
        self.daemon = startDaemon(
            self, self.cluster.env.env,
            ["--repo", self.cluster.gateway.path] + list(self.daemonOptions))
        self.useHTTP(self.daemon.annexUrl())

    def useHTTP(self, annexUrl):
        self.cluster.client_git("config", "remote.%s.annexUrl" % (REMOTE,),
                                annexUrl)

    def client(self, *args, check=True, env=None):
        return self.cluster.env.run(["git-annex", *args],
                                    cwd=self.cluster.client.path,
                                    check=check, env=env)

    def writeFile(self, name, size):
        """
        A file of C{size} random bytes in the client, added and committed.

        @return: (key, sha256 hex)
        """
        path = os.path.join(self.cluster.client.path, name)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            remaining = size
            while remaining:
                block = os.urandom(min(remaining, 1 << 20))
                digest.update(block)
                f.write(block)
                remaining -= len(block)
        self.client("add", "--quiet", name)
        self.cluster.client_git("commit", "-q", "-m", "add " + name)
        key = _text(self.client("lookupkey", name).stdout).strip()
        return key, digest.hexdigest()


class ClientOverHTTPTests(HTTPGatewayMixin, unittest.TestCase):
    """
    copy, get, drop, move and whereis over annex+http.
    """

    def setUp(self):
        self.setUpGateway()

    def assertOnNodes(self, key, digest, nodes):
        for node in self.cluster.nodes:
            expected = digest if node.name in nodes else None
            self.assertEqual(self.cluster.node_sha256(node, key), expected,
                             "%s on %s" % (key, node.name))

    def test_clusterRoundTrip(self):
        """
        Files of 0 B, 1 B, 1 MiB and 200 MiB go to every node of the
        cluster (checksums on the nodes), whereis shows them there, they
        come back with get, and drop --from the cluster removes them from
        every node.
        """
        cluster = self.cluster
        files = {}
        for name, size in (("empty", 0), ("one", 1), ("mib", 1 << 20),
                           ("big", 200 << 20)):
            files[name] = self.writeFile(name, size)
        self.client("copy", "--to", CLUSTER, *files)
        everyNode = {n.name for n in cluster.nodes}
        for name, (key, digest) in files.items():
            self.assertOnNodes(key, digest, everyNode)
            where = cluster.whereis(key)
            self.assertTrue({n.uuid for n in cluster.nodes} <= where, name)
        self.client("drop", "--force", *files)
        self.client("get", "--from", CLUSTER, *files)
        for name, (key, digest) in files.items():
            path = os.path.join(cluster.client.path, name)
            with open(path, "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest)
        self.client("drop", "--from", CLUSTER, "--force", *files)
        for name, (key, digest) in files.items():
            self.assertOnNodes(key, digest, set())
            self.assertFalse({n.uuid for n in cluster.nodes}
                             & cluster.whereis(key), name)

    def test_node(self):
        """
        copy --to, drop and get --from, move --to a proxied node.
        """
        cluster = self.cluster
        key, digest = self.writeFile("n.bin", 300000)
        self.client("copy", "--to", NODE1, "n.bin")
        self.assertOnNodes(key, digest, {"node1"})
        self.assertIn(cluster.node(1).uuid, cluster.whereis(key))
        self.client("drop", "n.bin")
        self.client("get", "--from", NODE1, "n.bin")
        self.client("drop", "--from", NODE1, "n.bin")
        self.assertOnNodes(key, digest, set())
        self.client("move", "--to", "gw-node2", "n.bin")
        self.assertOnNodes(key, digest, {"node2"})
        self.assertFalse(os.path.exists(os.path.join(
            cluster.client.path, "n.bin")) and os.path.isfile(
                os.path.realpath(os.path.join(cluster.client.path, "n.bin"))))

    def test_gatewayBranchRecordsPromptly(self):
        """
        The gateway's git-annex branch records the nodes an upload went to
        soon after it, without any client pushing.
        """
        cluster = self.cluster
        key, digest = self.writeFile("rec.bin", 1000)
        self.client("copy", "--to", CLUSTER, "rec.bin")
        deadline = time.monotonic() + 30
        while True:
            log = cluster.env.run(
                ["git", "cat-file", "-p", "git-annex:" + _locationLog(
                    cluster, key)], cwd=cluster.gateway.path, check=False)
            if log.returncode == 0 and all(
                    n.uuid in _text(log.stdout) for n in cluster.nodes):
                break
            self.assertLess(time.monotonic(), deadline,
                            "the gateway branch did not record the upload")
            time.sleep(0.1)


def _locationLog(cluster, key):
    result = cluster.env.run(["git-annex", "examinekey", "--format",
                              "${hashdirlower}${key}.log", key],
                             cwd=cluster.gateway.path)
    return _text(result.stdout).strip()


class TestremoteOverHTTPTests(HTTPGatewayMixin, unittest.TestCase):
    """
    git-annex's own testremote against the cluster and a node over
    annex+http.  Every HTTP remote shows 3 failures in the "unavailable
    remote" group, caused by the client (shared/spec/p2phttp.md section 6
    H); nothing else may fail.
    """

    def setUp(self):
        self.setUpGateway()

    def runTestremote(self, remote):
        started = time.monotonic()
        result = self.client("testremote", "--fast", remote, check=False)
        output = _text(result.stdout) + _text(result.stderr)
        report = "testremote --fast %s: exit %d after %.1f s\n%s" % (
            remote, result.returncode, time.monotonic() - started, output)
        failed = [line for line in output.splitlines() if "FAIL" in line]
        self.assertIn("3 out of", output, report)
        self.assertEqual(len(failed), 3, report)
        unavailable = output.split("unavailable remote", 1)
        self.assertEqual(len(unavailable), 2, report)
        # All three failures are in the "unavailable remote" group, which
        # comes after the others.
        before = unavailable[0]
        self.assertNotIn("FAIL", before.rsplit("\n", 3)[0], report)

    def test_cluster(self):
        """
        testremote --fast gw-mycluster.
        """
        self.runTestremote(CLUSTER)

    def test_node(self):
        """
        testremote --fast gw-node1.
        """
        self.runTestremote(NODE1)


class BadInputTests(HTTPGatewayMixin, unittest.TestCase):
    """
    Bad requests to the real daemon: each gets a clear answer, nothing is
    stored, and the daemon goes on serving.
    """

    def setUp(self):
        self.setUpGateway()
        self.data = os.urandom(2 << 20)
        digest = hashlib.sha256(self.data).hexdigest()
        self.key = "SHA256E-s%d--%s.bin" % (len(self.data), digest)

    def connection(self):
        import http.client
        return http.client.HTTPConnection("127.0.0.1", self.daemon.port,
                                          timeout=30)

    def url(self, uuid, endpoint, **query):
        from urllib.parse import urlencode
        query.setdefault("clientuuid", self.cluster.client.uuid)
        return "/git-annex/%s/v4/%s?%s" % (uuid, endpoint, urlencode(query))

    def assertNowhere(self):
        for node in self.cluster.nodes:
            self.assertFalse(self.cluster.node_has(node, self.key), node.name)

    def putOnce(self):
        """
        PUT the content to the cluster; whether it was stored.
        """
        conn = self.connection()
        conn.request("POST", self.url(self.cluster.cluster_uuid, "put",
                                      key=self.key),
                     body=self.data,
                     headers={"X-git-annex-data-length": str(len(self.data))})
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        return json.loads(response.read())["stored"]

    def assertServing(self):
        """
        A complete PUT to the cluster works: the daemon is fine.
        """
        self.assertTrue(self.putOnce())
        digest = hashlib.sha256(self.data).hexdigest()
        for node in self.cluster.nodes:
            self.assertEqual(self.cluster.node_sha256(node, self.key), digest)

    def test_disconnectMidPut(self):
        """
        A client that sends half a body and vanishes stores nothing.
        """
        import socket
        s = socket.create_connection(("127.0.0.1", self.daemon.port))
        head = ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                "X-git-annex-data-length: %d\r\n\r\n" % (
                    self.url(self.cluster.cluster_uuid, "put", key=self.key),
                    len(self.data), len(self.data))).encode()
        s.sendall(head + self.data[:len(self.data) // 2])
        s.close()
        self.assertNowhere()
        # The nodes' sessions of the abandoned upload end as the daemon
        # notices the client is gone; until then a new upload of the same
        # key may meet git-annex's "transfer already in progress" (and be
        # answered stored:false).  Within a bound, it is stored.
        deadline = time.monotonic() + 30
        while not self.putOnce():
            self.assertNowhere()
            self.assertLess(time.monotonic(), deadline,
                            "the daemon never stored the content again")
            time.sleep(0.2)
        self.assertServing()

    def test_shortAndLongBodies(self):
        """
        Bodies shorter or longer than X-git-annex-data-length: stored:false
        and nothing on the nodes.
        """
        for body in (self.data[:-1], self.data + b"x"):
            conn = self.connection()
            conn.request("POST", self.url(self.cluster.cluster_uuid, "put",
                                          key=self.key), body=body,
                         headers={"X-git-annex-data-length":
                                  str(len(self.data))})
            response = conn.getresponse()
            self.assertEqual(response.status, 200)
            self.assertEqual(json.loads(response.read())["stored"], False)
            self.assertNowhere()
        self.assertServing()

    def test_disconnectMidGet(self):
        """
        A client that stops reading a GET and vanishes: the daemon serves
        the next GET in full.
        """
        self.assertServing()
        import socket
        s = socket.create_connection(("127.0.0.1", self.daemon.port))
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % (
            self.url(self.cluster.cluster_uuid, "key/" + self.key),)).encode())
        s.recv(1000)
        s.close()
        conn = self.connection()
        conn.request("GET", self.url(self.cluster.cluster_uuid,
                                     "key/" + self.key))
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.read(), self.data)

    def test_badRequests(self):
        """
        Malformed keys, bad base64, unknown uuid, missing clientuuid, a
        64 KiB query string: 4xx answers, nothing stored.
        """
        cluster = self.cluster.cluster_uuid
        cases = [
            (self.url(cluster, "put", key="not a key"), 400),
            (self.url(cluster, "put", key="[!!]"), 400),
            (self.url("ffffffff-aaaa-4bbb-8ccc-000000000000", "put",
                      key=self.key), 404),
            ("/git-annex/%s/v4/put?key=%s" % (cluster, self.key), 400),
            (self.url(cluster, "put", key=self.key, x="y" * 65536), 414),
        ]
        for path, status in cases:
            conn = self.connection()
            # (The long request line is refused as soon as it is read: no
            # body, which the daemon would not read.)
            conn.request("POST", path,
                         body=self.data if status != 414 else None,
                         headers={"X-git-annex-data-length":
                                  str(len(self.data))})
            try:
                response = conn.getresponse()
            except ConnectionError:
                self.fail("%s: connection dropped without an answer" % path)
            self.assertEqual(response.status, status, path[:200])
            response.read()
            conn.close()
        self.assertNowhere()
        self.assertServing()

    def test_vanishedNode(self):
        """
        A node whose repository vanished: 502 with the reason on the node;
        the cluster still answers from the other nodes.
        """
        node = self.cluster.node(1)
        os.rename(node.path, node.path + ".gone")
        self.addCleanup(os.rename, node.path + ".gone", node.path)
        conn = self.connection()
        conn.request("POST", self.url(node.uuid, "checkpresent", key=self.key))
        response = conn.getresponse()
        body = response.read()
        self.assertEqual(response.status, 502, body)
        self.assertIn(b"node1", body)
        conn.request("POST", self.url(self.cluster.cluster_uuid,
                                      "checkpresent", key=self.key))
        response = conn.getresponse()
        self.assertEqual(json.loads(response.read()), {"present": False})
        # The cluster goes on without the node.
        self.assertTrue(self.putOnce())
        digest = hashlib.sha256(self.data).hexdigest()
        for other in self.cluster.nodes[1:]:
            self.assertEqual(self.cluster.node_sha256(other, self.key), digest)
