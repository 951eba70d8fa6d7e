"""
The P2P-address front-end end to end: a real annexd daemon with P2P
listeners, real git-annex clients linked with C{git annex p2p --link} over
the generic C{p2p-annex::} transport (contrib/git-annex-p2p-annexd).
"""

import hashlib
import io
import os
import socket

from twisted.trial import unittest

from annexd.p2p.command import p2p
from annexd.p2p.frontend import AddressBook
from tests.support.annex import AnnexCommandError, cluster_for
from tests.support.daemon import freePort, shortTempDir, startDaemon

CONTRIB = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "contrib")


def poll(predicate, failure, timeout=30.0):
    """
    Wait (blocking: the daemon is another process) until C{predicate()}
    holds, at most C{timeout} seconds.
    """
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(failure)


def command(*args):
    """
    Run C{annexd p2p ARGS}: (status, stdout, stderr).
    """
    out, err = io.StringIO(), io.StringIO()
    status = p2p(list(args), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


class _Raw:
    """
    A raw P2P client on a unix socket, for what git-annex never sends.
    """

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")

    def send(self, line):
        self.file.write(line + b"\n")
        self.file.flush()

    def line(self):
        return self.file.readline().rstrip(b"\n")

    def close(self):
        self.file.close()
        self.sock.close()


class P2PAddressTests(unittest.TestCase):
    """
    A daemon exposing the gateway, the cluster and one node on P2P
    addresses.
    """

    def setUp(self):
        self.cluster = cluster_for(self)
        self.env = self.cluster.env
        self.env.env["PATH"] = CONTRIB + os.pathsep + self.env.env["PATH"]
        # (unix socket paths are short: not under trial's directory)
        self.sockets = os.path.realpath(shortTempDir(self))
        self.gwSock = os.path.join(self.sockets, "gw.sock")
        self.clusterSock = os.path.join(self.sockets, "cluster.sock")
        self.nodePort = freePort()
        gateway = self.cluster.gateway.path
        self.daemon = startDaemon(self, self.env.env, [
            "--repo", gateway,
            "--p2p", "unix:%s" % (self.gwSock,),
            "--p2p", "unix:%s mycluster" % (self.clusterSock,),
            "--p2p", "tcp:%d:interface=127.0.0.1 node1" % (self.nodePort,),
            "--wideopen"])
        self.gitDir = gateway
        self.book = poll(lambda: (len(AddressBook.read(gateway)) == 3
                                  and AddressBook.read(gateway)),
                         "the daemon did not publish its 3 addresses")

    def addressOf(self, target):
        for address, uuid, name in self.book:
            if name == target:
                return address, uuid
        raise KeyError(target)

    def link(self, target, name):
        status, out, err = command(self.gitDir, "--gen-addresses",
                                   "--target", target)
        self.assertEqual((status, err), (0, ""))
        [line] = out.splitlines()
        self.env.annex(self.cluster.client.path, "p2p", "--link", "--name",
                       name, input=line + "\n")
        return line

    def sha256(self, data):
        return hashlib.sha256(data).hexdigest()

    def test_addresses(self):
        """
        Every listener is published with its target, in annexd's address
        book and in git-annex's p2paddrs.
        """
        names = {name: address for address, uuid, name in self.book}
        self.assertEqual(set(names), {"gateway", "mycluster", "node1"})
        self.assertEqual(names["gateway"], "p2p-annex::annexd:" + self.gwSock)
        self.assertEqual(names["node1"],
                         "p2p-annex::annexd:127.0.0.1:%d" % (self.nodePort,))
        with open(os.path.join(self.gitDir, "annex", "creds",
                               "p2paddrs")) as f:
            self.assertEqual(set(f.read().split()), set(names.values()))
        status, out, err = command(self.gitDir)
        self.assertEqual(status, 0)
        self.assertIn("mycluster", out)

    def test_gateway(self):
        """
        copy --to, get --from and drop --from the gateway itself.
        """
        self.link("gateway", "gwp2p")
        data = os.urandom(200000)
        key = self.cluster.add_file("g.bin", data)
        self.cluster.client_annex("copy", "--to", "gwp2p", "g.bin")
        self.assertEqual(self.cluster.node_sha256(self.cluster.gateway, key),
                         self.sha256(data))
        self.cluster.client_annex("drop", "--force", "g.bin")
        self.cluster.client_annex("get", "--from", "gwp2p", "g.bin")
        with open(os.path.join(self.cluster.client.path, "g.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.cluster.client_annex("drop", "--from", "gwp2p", "g.bin")
        self.assertFalse(self.cluster.node_has(self.cluster.gateway, key))

    def test_cluster(self):
        """
        copy --to the cluster's address fans out to every node; get and
        drop through it.
        """
        self.link("mycluster", "clp2p")
        _, clusterUUID = self.addressOf("mycluster")
        self.assertEqual(self.cluster.client_git(
            "config", "remote.clp2p.annex-uuid").strip(),
            clusterUUID.decode())
        data = os.urandom(300000)
        key = self.cluster.add_file("c.bin", data)
        self.cluster.client_annex("copy", "--to", "clp2p", "c.bin")
        for node in self.cluster.nodes:
            self.assertEqual(self.cluster.node_sha256(node, key),
                             self.sha256(data), node.name)
        self.assertIn(self.cluster.nodes[0].uuid, self.cluster.whereis(key))
        self.cluster.client_annex("drop", "--force", "c.bin")
        self.cluster.client_annex("get", "--from", "clp2p", "c.bin")
        with open(os.path.join(self.cluster.client.path, "c.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.cluster.client_annex("drop", "--from", "clp2p", "c.bin")
        for node in self.cluster.nodes:
            self.assertFalse(self.cluster.node_has(node, key), node.name)

    def test_node(self):
        """
        A proxied node on its own TCP address.
        """
        self.link("node1", "n1p2p")
        data = b"node one only\n" * 1000
        key = self.cluster.add_file("n.txt", data)
        self.cluster.client_annex("copy", "--to", "n1p2p", "n.txt")
        self.assertEqual(self.cluster.node_sha256("node1", key),
                         self.sha256(data))
        self.assertFalse(self.cluster.node_has("node2", key))

    def test_gitPushPull(self):
        """
        git push and git fetch/pull through the P2P remote (CONNECT).
        """
        self.link("gateway", "gwp2p")
        self.cluster.add_file("pushed.txt", "pushed through p2p\n")
        self.cluster.client_git("push", "gwp2p", "main:p2ptest")
        head = self.cluster.client_git("rev-parse", "HEAD").strip()
        self.assertEqual(self.env.git(self.gitDir, "rev-parse",
                                      "p2ptest").strip(), head)
        # A new commit on the gateway, fetched back.
        self.env.git(self.gitDir, "update-ref", "refs/heads/other", head)
        self.cluster.client_git("fetch", "gwp2p")
        self.assertEqual(self.cluster.client_git(
            "rev-parse", "gwp2p/other").strip(), head)
        self.cluster.client_git("pull", "--ff-only", "gwp2p", "p2ptest")

    def test_wrongToken(self):
        """
        A wrong token: AUTH-FAILURE, the connection is closed, no link.
        """
        address, _ = self.addressOf("gateway")
        wrong = address + ":" + "0" * 128
        error = self.assertRaises(
            AnnexCommandError, self.env.annex, self.cluster.client.path,
            "p2p", "--link", "--name", "bad", input=wrong + "\n")
        self.assertIn(b"authenticate", error.stderr.lower())
        self.assertIsNone(self.env.config(self.cluster.client.path,
                                          "remote.bad.url"))
        raw = _Raw(self.gwSock)
        self.addCleanup(raw.close)
        raw.send(b"AUTH c0ffee " + b"1" * 128)
        self.assertEqual(raw.line(), b"AUTH-FAILURE")
        self.assertEqual(raw.line(), b"")

    def test_beforeAuth(self):
        """
        Requests before AUTH are refused; AUTH still works afterwards.
        """
        status, out, err = command(self.gitDir, "--gen-addresses",
                                   "--target", "gateway")
        token = out.strip().rsplit(":", 1)[1]
        raw = _Raw(self.gwSock)
        self.addCleanup(raw.close)
        for line in (b"VERSION 4", b"CHECKPRESENT SHA256E-s1--" + b"a" * 64,
                     b"GET 0 x SHA256E-s1--" + b"a" * 64, b"nonsense"):
            raw.send(line)
            self.assertTrue(raw.line().startswith(b"ERROR"), line)
        raw.send(b"AUTH c0ffee " + token.encode())
        self.assertEqual(raw.line(),
                         b"AUTH-SUCCESS " + self.cluster.gateway.uuid.encode())
        raw.send(b"VERSION 4")
        self.assertEqual(raw.line(), b"VERSION 4")

    def test_revoke(self):
        """
        A token revoked while its connection is idle keeps that connection
        but is refused on the next one.
        """
        line = self.link("gateway", "gwp2p")
        token = line.rsplit(":", 1)[1]
        raw = _Raw(self.gwSock)
        self.addCleanup(raw.close)
        raw.send(b"AUTH c0ffee " + token.encode())
        self.assertTrue(raw.line().startswith(b"AUTH-SUCCESS"))
        status, out, err = command(self.gitDir, "--revoke", token)
        self.assertEqual((status, out), (0, "revoked 1 token\n"))
        raw.send(b"VERSION 4")
        self.assertEqual(raw.line(), b"VERSION 4")
        self.cluster.add_file("r.txt", "after revocation\n")
        error = self.assertRaises(AnnexCommandError, self.cluster.client_annex,
                                  "copy", "--to", "gwp2p", "r.txt")
        self.assertIn(b"authenticate", error.stderr.lower())
        again = _Raw(self.gwSock)
        self.addCleanup(again.close)
        again.send(b"AUTH c0ffee " + token.encode())
        self.assertEqual(again.line(), b"AUTH-FAILURE")

    def test_notifyChange(self):
        """
        NOTIFYCHANGE answers CHANGED with the sha of a ref that changed.
        """
        status, out, err = command(self.gitDir, "--gen-addresses",
                                   "--target", "gateway")
        token = out.strip().rsplit(":", 1)[1]
        raw = _Raw(self.gwSock)
        self.addCleanup(raw.close)
        raw.send(b"AUTH c0ffee " + token.encode())
        self.assertTrue(raw.line().startswith(b"AUTH-SUCCESS"))
        raw.send(b"VERSION 4")
        self.assertEqual(raw.line(), b"VERSION 4")
        raw.send(b"NOTIFYCHANGE")
        self.cluster.add_file("n.txt", "notify\n")
        head = self.cluster.client_git("rev-parse", "HEAD").strip()
        # The watcher takes its baseline after NOTIFYCHANGE arrives: push
        # new refs until it notices one (bounded).
        import select
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.cluster.client_git("push", "-q", self.gitDir,
                                    "HEAD:refs/heads/n%d" % (
                                        time.monotonic_ns(),))
            if select.select([raw.sock], [], [], 2)[0]:
                break
        self.assertEqual(raw.line(), b"CHANGED " + head.encode())
