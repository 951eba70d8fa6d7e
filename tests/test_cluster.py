"""
Tests for L{annexd.router.cluster}: a cluster of nodes served as one
repository (shared/spec/p2p-protocol.md sections 5.3 and 5.5, with the
forgiving failure handling the module docstring describes).

Most tests put a L{P2PServer} in front of a L{Cluster} of three
L{MemoryRepository} nodes, script the client by hand, and compare the exact
bytes the server writes with what git-annex's own cluster gateway sends.
Tests of the tee's backpressure drive the cluster's upload directly with a
fake producer, and pause or stop each node's sink by hand through the
producer the tee registered on it.  Where a node must really lose its
connection, it is a L{P2PClient} on a L{StringTransport}.

Everything runs synchronously; no reactor is involved.
"""

import os

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from annexd.interfaces import (
    IDownload, IRepository, IUpload, Outcome, ProtocolNotSupported,
    RepositoryError, RepositoryUnavailable)
from annexd.protocol.client import P2PClient
from annexd.protocol.framing import P2PConnection
from annexd.router.cluster import (
    Cluster, ClusterNode, IWantsPolicy, TeeConsumer, WantsEverything,
    gatewayBypass)
from tests.support.wire import Session
from tests.support.memory import MemoryRepository, keyFor

CLUSTER_UUID = b"c1c1c1c1-0000-4000-8000-cccccccccccc"
N1 = b"11111111-1111-4111-8111-111111111111"
N2 = b"22222222-2222-4222-8222-222222222222"
N3 = b"33333333-3333-4333-8333-333333333333"

CONTENT = b"hello world\n"
KEY = keyFor(CONTENT, b".txt")
ISO = b"an iso image, pretend\n"
ISO_KEY = keyFor(ISO, b".iso")
TEXT = b"a text file\n"
TEXT_KEY = keyFor(TEXT, b".txt")
OTHER = b"other content\n"
OTHER_KEY = keyFor(OTHER, b".txt")

#: The cluster's clock in every test, unless a test moves it.
NOW = 500


def line(*parts):
    """
    One protocol line from C{parts} (bytes, or keys as their raw bytes).
    """
    return b" ".join(getattr(p, "raw", p) for p in parts) + b"\n"


# -- doubles ------------------------------------------------------------------


@implementer(IWantsPolicy)
class WantsISOOnNode2:
    """
    A preferred-content policy: node2 wants C{.iso} files, nobody wants
    anything else.

    @ivar asked: every C{(node name, associatedFile)} asked about.
    """

    def __init__(self):
        self.asked = []

    def wants(self, node, key, associatedFile, present=None):
        self.asked.append((node.name, associatedFile))
        return node.name == "node2" and (associatedFile or b"").endswith(
            b".iso")


@implementer(IPushProducer)
class FakeProducer:
    """
    A streaming producer that records what its consumer asks of it.

    @ivar calls: C{"pause"}, C{"resume"}, C{"stop"}, in order.
    """

    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


@implementer(IConsumer)
class CollectingConsumer:
    """
    A consumer that keeps what it is given (for downloads driven directly).
    """

    def __init__(self):
        self.data = b""
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.data += data


class ClusterTestsMixin:
    """
    A cluster of three L{MemoryRepository} nodes, C{node1} to C{node3},
    costing 100, 200 and 300, and a cluster clock that reads C{self.now}.
    """

    def setUp(self):
        self.now = NOW
        self.repos = [MemoryRepository(uuid, chunkSize=5)
                      for uuid in (N1, N2, N3)]
        self.nodes = [ClusterNode(repo.uuid, "node%d" % (i + 1),
                                  100 * (i + 1), repo)
                      for i, repo in enumerate(self.repos)]
        self.cluster = self.makeCluster()

    def makeCluster(self, nodes=None, policy=None):
        return Cluster(CLUSTER_UUID, self.nodes if nodes is None else nodes,
                       policy=policy, clock=lambda: self.now, name="cluster")

    def session(self, version=4, cluster=None):
        """
        Start a session with the cluster: the unprompted AUTH-SUCCESS names
        the cluster, then C{version} is negotiated.
        """
        session = Session(self.cluster if cluster is None else cluster)
        self.assertEqual(session.received(), line(b"AUTH-SUCCESS",
                                                  CLUSTER_UUID))
        self.assertEqual(session.send(b"VERSION %d\n" % version),
                         b"VERSION %d\n" % version)
        self.addCleanup(self.endSession, session)
        return session

    def endSession(self, session):
        """
        The client goes away; the session must end without a failure.
        """
        if not session.connection.disconnected:
            session.connection.connectionLost()
        self.assertIsNone(self.successResultOf(session.served))

    def put(self, session, key=KEY, content=CONTENT, af=b"file.txt"):
        """
        A whole PUT from offset 0; return the server's final reply.
        """
        self.assertEqual(session.send(line(b"PUT", af, key)), b"PUT-FROM 0\n")
        return session.send(b"DATA %d\n" % len(content) + content
                            + b"VALID\n")

    def calls(self, repo, name):
        """
        The calls of C{name} made on C{repo}.
        """
        return [c for c in repo.calls if c[0] == name]

    def nodeClient(self, uuid, name="node2"):
        """
        A L{P2PClient} node speaking protocol 4 over a L{StringTransport}
        (no handshake: the node's side of the wire is scripted).

        @return: C{(client, connection, transport)}
        """
        transport = StringTransport()
        connection = P2PConnection(name)
        connection.makeConnection(transport)
        client = P2PClient(connection, uuid=uuid)
        client.version = 4
        return client, connection, transport


# -- the cluster as an IRepository -------------------------------------------


class InterfaceTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    The objects the cluster hands out provide the interfaces they claim.
    """

    def test_interfaces(self):
        """
        L{Cluster} is an L{IRepository}; its upload is an L{IUpload} whose
        consumer is an L{IConsumer}; its download is an L{IDownload};
        L{WantsEverything} and the test's policy are L{IWantsPolicy}s.
        """
        self.repos[0].add(CONTENT, KEY)
        self.assertTrue(verifyObject(IRepository, self.cluster))
        self.assertTrue(verifyObject(IWantsPolicy, WantsEverything()))
        self.assertTrue(verifyObject(IWantsPolicy, WantsISOOnNode2()))
        upload = self.successResultOf(self.cluster.put(OTHER_KEY, None))
        self.assertTrue(verifyObject(IUpload, upload))
        tee = upload.receive(len(OTHER))
        self.assertIsInstance(tee, TeeConsumer)
        self.assertTrue(verifyObject(IConsumer, tee))
        upload.abort("test over")
        download = self.successResultOf(self.cluster.get(KEY, None, 0))
        self.assertTrue(verifyObject(IDownload, download))
        self.successResultOf(download.finish(False))

    def test_nodesSortedByCost(self):
        """
        The cluster keeps its nodes cheapest first, whatever order they are
        given in.
        """
        cluster = self.makeCluster(nodes=list(reversed(self.nodes)))
        self.assertEqual([n.name for n in cluster.nodes],
                         ["node1", "node2", "node3"])



# -- PUT ----------------------------------------------------------------------


class PutTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    PUT through a server in front of the cluster: fan-out to every wanted
    node, one stream teed to all of them.
    """

    def test_put(self):
        """
        The whole exchange at version 4: C{PUT-FROM 0}, the client's DATA
        and VALID, then C{SUCCESS-PLUS} naming every node, cheapest first;
        every node holds exactly the content, verified.
        """
        session = self.session()
        self.assertEqual(self.put(session), line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo in self.repos:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})
            self.assertEqual(repo.calls, [
                ("put", KEY.raw, b"file.txt"),
                ("upload.receive", KEY.raw, 12),
                ("upload.finish", KEY.raw, True)])
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_putInPieces(self):
        """
        The payload may reach the cluster one byte at a time; every node
        still gets every byte once, in order.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        wire = b"DATA 12\n" + CONTENT + b"VALID\n"
        replies = b"".join(session.send(wire[i:i + 1])
                           for i in range(len(wire)))
        self.assertEqual(replies, line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo in self.repos:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def test_putVersion1(self):
        """
        A version 1 client gets plain C{SUCCESS}, not C{SUCCESS-PLUS}.
        """
        session = self.session(version=1)
        self.assertEqual(self.put(session), b"SUCCESS\n")
        for repo in self.repos:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def test_invalidVerdictForwarded(self):
        """
        The client's C{INVALID} reaches every node as its verdict (each
        node then verifies for itself, and this content is right).
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT + b"INVALID\n"),
                         line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo in self.repos:
            self.assertEqual(self.calls(repo, "upload.finish"),
                             [("upload.finish", KEY.raw, False)])

    def test_wrongContent(self):
        """
        Content that fails every node's verification is answered
        C{FAILURE}, and no node keeps it.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 12\nhello wOrld\nVALID\n"),
                         b"FAILURE\n")
        for repo in self.repos:
            self.assertEqual((repo.contents, repo.partial), ({}, {}))

    def test_nodePlusLists(self):
        """
        The uuids a node names in its own C{-PLUS} answer (a node that is
        another gateway) are passed on after its own.
        """
        self.repos[1].plusUUIDs = (b"behind-node2",)
        session = self.session()
        self.assertEqual(self.put(session), line(
            b"SUCCESS-PLUS", N1, N2, b"behind-node2", N3))

    def test_emptyContent(self):
        """
        Empty content (C{DATA 0}, C{VALID}) is stored on every node.
        """
        empty = keyFor(b"", b".txt")
        session = self.session()
        self.assertEqual(self.put(session, empty, b""),
                         line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo in self.repos:
            self.assertEqual(repo.contents, {empty.raw: b""})

    def test_clientHasNoContent(self):
        """
        C{DATA 0} and C{INVALID} (the client has no content after all) is
        passed to every node: C{FAILURE}, nothing stored.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 0\nINVALID\n"), b"FAILURE\n")
        for repo in self.repos:
            self.assertEqual(repo.contents, {})

    def test_dataPresent(self):
        """
        At version 4, C{DATA-PRESENT} is forwarded to every node instead of
        content; the answer names the nodes that have the content by now.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 0\n")
        self.repos[0].add(CONTENT, KEY)
        self.repos[2].add(CONTENT, KEY)
        self.assertEqual(session.send(b"DATA-PRESENT\n"),
                         line(b"SUCCESS-PLUS", N1, N3))
        for repo in self.repos:
            self.assertEqual(self.calls(repo, "upload.dataPresent"),
                             [("upload.dataPresent", KEY.raw)])

    def test_clientErrorAfterPutFrom(self):
        """
        The client's C{ERROR} after C{PUT-FROM} abandons the upload on
        every node, and the session goes on.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"ERROR changed my mind\n"), b"")
        for repo in self.repos:
            self.assertIsNotNone(repo.uploads[0].aborted)
            self.assertEqual(repo.contents, {})
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")


class PolicyTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    Preferred content decides where a PUT goes.
    """

    def setUp(self):
        ClusterTestsMixin.setUp(self)
        self.policy = WantsISOOnNode2()
        self.cluster = self.makeCluster(policy=self.policy)

    def test_wantedByOne(self):
        """
        C{a.iso}, wanted by node2 only, is offered to node2 only and stored
        there only; the policy sees the decoded associated file.
        """
        session = self.session()
        self.assertEqual(self.put(session, ISO_KEY, ISO, b"a.iso"),
                         line(b"SUCCESS-PLUS", N2))
        self.assertEqual(self.repos[1].contents, {ISO_KEY.raw: ISO})
        for repo in (self.repos[0], self.repos[2]):
            self.assertEqual(repo.calls, [])
            self.assertEqual(repo.contents, {})
        self.assertEqual(self.policy.asked, [
            ("node1", b"a.iso"), ("node2", b"a.iso"), ("node3", b"a.iso")])

    def test_wantedByNone(self):
        """
        C{b.txt}, wanted by no node, goes to every node (git-annex's
        fallback: rather everywhere than nowhere).
        """
        session = self.session()
        self.assertEqual(self.put(session, TEXT_KEY, TEXT, b"b.txt"),
                         line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo in self.repos:
            self.assertEqual(repo.contents, {TEXT_KEY.raw: TEXT})


class AlreadyHaveTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    Nodes that already have the content answer ALREADY-HAVE.
    """

    def test_oneHasIt(self):
        """
        node2 already has the content: it is not sent data, the others
        store it, and the answer names all three (node2 included: the
        content is there).
        """
        self.repos[1].add(CONTENT, KEY)
        session = self.session()
        reply = self.put(session)
        self.assertTrue(reply.startswith(b"SUCCESS-PLUS "), reply)
        uuids = reply.split()[1:]
        self.assertEqual(sorted(uuids), [N1, N2, N3])
        self.assertEqual(self.calls(self.repos[1], "upload.receive"), [])
        for repo in self.repos:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def test_allHaveIt(self):
        """
        When every node has the content, a version 4 client is told
        C{ALREADY-HAVE-PLUS} with every node's uuid, and no data is asked.
        """
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         line(b"ALREADY-HAVE-PLUS", N1, N2, N3))
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_allHaveItVersion1(self):
        """
        A version 1 client is told plain C{ALREADY-HAVE}.
        """
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        session = self.session(version=1)
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"ALREADY-HAVE\n")

    def test_oneHasItOthersFail(self):
        """
        One node has the content and the others cannot be reached: the
        content is in the cluster, so the answer is C{ALREADY-HAVE-PLUS}
        with that node.
        """
        self.repos[2].add(CONTENT, KEY)
        self.repos[0].failNext("put", RepositoryUnavailable("node1 down"))
        self.repos[1].failNext("put", RepositoryError(b"node2 says no"))
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         line(b"ALREADY-HAVE-PLUS", N3))


class ResumeTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    Nodes that kept different parts of an interrupted upload.
    """

    def test_resumeFromMinimum(self):
        """
        With 5, 3 and 8 bytes kept, the client is asked from the smallest
        offset (C{PUT-FROM 3}); each node is announced and given exactly
        the bytes beyond its own offset, and all end with the full,
        verified content.
        """
        for repo, kept in zip(self.repos, (5, 3, 8)):
            repo.partial[KEY.raw] = CONTENT[:kept]
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 3\n")
        wire = b"DATA 9\n" + CONTENT[3:] + b"VALID\n"
        replies = b"".join(session.send(wire[i:i + 2])
                           for i in range(0, len(wire), 2))
        self.assertEqual(replies, line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo, kept in zip(self.repos, (5, 3, 8)):
            self.assertEqual(self.calls(repo, "upload.receive"),
                             [("upload.receive", KEY.raw, 12 - kept)])
            upload = repo.uploads[0]
            self.assertEqual(upload.sink.written, 12 - kept)
            self.assertFalse(upload.sink.overrun)
            self.assertEqual(bytes(upload.data), CONTENT)
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})
            self.assertEqual(repo.partial, {})

    def test_oneNodeFromScratch(self):
        """
        One node with nothing kept makes the client send everything
        (C{PUT-FROM 0}); the others still get only their missing bytes.
        """
        self.repos[0].partial[KEY.raw] = CONTENT[:6]
        self.repos[2].partial[KEY.raw] = CONTENT[:11]
        session = self.session()
        self.assertEqual(self.put(session), line(b"SUCCESS-PLUS", N1, N2, N3))
        self.assertEqual(
            [self.calls(r, "upload.receive")[0][2] for r in self.repos],
            [6, 12, 1])
        for repo in self.repos:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def test_clientLostMidData(self):
        """
        A client that goes away mid-payload leaves every node with what it
        got; the next session is asked to resume from there.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        session.send(b"DATA 12\n" + CONTENT[:7])
        session.connection.connectionLost()
        for repo in self.repos:
            self.assertEqual(repo.contents, {})
            self.assertEqual(repo.partial, {KEY.raw: CONTENT[:7]})
        again = self.session()
        self.assertEqual(again.send(line(b"PUT", b"file.txt", KEY)),
                         b"PUT-FROM 7\n")
        self.assertEqual(again.send(b"DATA 5\n" + CONTENT[7:] + b"VALID\n"),
                         line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo in self.repos:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(0, len(CONTENT)), min_size=1, max_size=4),
           st.lists(st.integers(1, 5), min_size=1, max_size=12))
    def test_anyOffsetsAnyChunks(self, kept, chunks):
        """
        Whatever each node kept and however the payload is cut, every node
        is announced exactly its missing bytes, receives exactly those, and
        ends with the full content.
        """
        repos = [MemoryRepository(b"node-%d" % i) for i in range(len(kept))]
        for repo, n in zip(repos, kept):
            if n:
                repo.partial[KEY.raw] = CONTENT[:n]
        cluster = self.makeCluster(nodes=[
            ClusterNode(r.uuid, "n%d" % i, 100, r)
            for i, r in enumerate(repos)])
        upload = self.successResultOf(cluster.put(KEY, None))
        start = min(kept) if len(kept) == len(repos) else 0
        self.assertEqual(upload.offset, start)
        tee = upload.receive(12 - start)
        tee.registerProducer(FakeProducer(), True)
        pos = start
        i = 0
        while pos < 12:
            size = chunks[i % len(chunks)]
            i += 1
            tee.write(CONTENT[pos:pos + size])
            pos += size
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(tee.done), 12 - start)
        outcome = self.successResultOf(upload.finish(True))
        self.assertEqual(outcome, Outcome(True, tuple(r.uuid for r in repos)))
        for repo, n in zip(repos, kept):
            self.assertEqual(repo.uploads[0].sink.length, 12 - n)
            self.assertEqual(repo.uploads[0].sink.written, 12 - n)
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})


# -- failures -----------------------------------------------------------------


class PutFailureTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    A failing node is dropped from a PUT; the others complete.
    """

    def test_putUnavailable(self):
        """
        node2's put() fails (unreachable): the client is still asked for
        the content, node1 and node3 store it, and C{SUCCESS-PLUS} names
        exactly them.
        """
        self.repos[1].failNext("put", RepositoryUnavailable("node2 down"))
        session = self.session()
        self.assertEqual(self.put(session), line(b"SUCCESS-PLUS", N1, N3))
        self.assertEqual(self.repos[1].contents, {})
        self.assertEqual(self.repos[1].uploads, [])
        for repo in (self.repos[0], self.repos[2]):
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def test_finishFails(self):
        """
        node1's upload fails when finishing (ERROR after the data): it is
        left out of C{SUCCESS-PLUS}; the others are named.
        """
        self.repos[0].failNext("upload.finish",
                               RepositoryError(b"disk full"))
        session = self.session()
        self.assertEqual(self.put(session), line(b"SUCCESS-PLUS", N2, N3))
        self.assertEqual(self.repos[0].contents, {})

    def test_receiveFails(self):
        """
        node3 cannot take the announced content (its receive() raises): it
        is dropped, and node1 and node2 still get the content and are
        named.
        """
        self.repos[2].failNext("upload.receive",
                               RepositoryUnavailable("node3 broke"))
        session = self.session()
        self.assertEqual(self.put(session), line(b"SUCCESS-PLUS", N1, N2))
        for repo in self.repos[:2]:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})
        self.assertEqual(self.repos[2].contents, {})
        self.assertIsNotNone(self.repos[2].uploads[0].aborted)

    def test_everyNodeFailsPut(self):
        """
        When no node accepts the PUT, the client gets one C{ERROR} line
        (saying why) instead of C{PUT-FROM}, and the session goes on.
        """
        for repo in self.repos:
            repo.failNext("put", RepositoryUnavailable(
                repo.uuid[:8].decode() + " down"))
        session = self.session()
        reply = session.send(line(b"PUT", b"file.txt", KEY))
        self.assertTrue(reply.startswith(b"ERROR "), reply)
        self.assertEqual(reply.count(b"\n"), 1)
        self.assertIn(b"11111111 down", reply)
        self.assertFalse(session.transport.disconnecting)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_everyNodeFailsFinish(self):
        """
        When every node fails after the data, the PUT's answer is
        C{FAILURE}, and the session goes on.
        """
        for repo in self.repos:
            repo.failNext("upload.finish", RepositoryUnavailable("lost"))
        session = self.session()
        self.assertEqual(self.put(session), b"FAILURE\n")
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_sinkStopsMidStream(self):
        """
        node2's sink stops its producer in the middle of the payload (the
        node's transport died): node2's upload is aborted, keeping what it
        got for a resume, it is sent nothing more and not finished, and
        node1 and node3 complete and are named.
        """
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT[:4]), b"")
        upload = self.repos[1].uploads[0]
        upload.sink.producer.stopProducing()
        self.assertIsNotNone(upload.aborted)
        self.assertEqual(
            session.send(CONTENT[4:] + b"VALID\n"),
            line(b"SUCCESS-PLUS", N1, N3))
        self.assertEqual(upload.sink.written, 4)
        self.assertEqual(self.calls(self.repos[1], "upload.finish"), [])
        self.assertEqual(self.repos[1].contents, {})
        self.assertEqual(self.repos[1].partial, {KEY.raw: CONTENT[:4]})
        for repo in (self.repos[0], self.repos[2]):
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def clientNodeCluster(self):
        """
        Replace node2 with a L{P2PClient} on a scripted wire, start a PUT
        through a session, and answer it on the node's wire.

        @return: C{(session, nodeConnection, nodeTransport)}
        """
        client, connection, transport = self.nodeClient(N2)
        self.nodes[1].repository = client
        session = self.session()
        self.assertEqual(session.send(line(b"PUT", b"file.txt", KEY)), b"")
        self.assertEqual(transport.value(), line(b"PUT", b"file.txt", KEY))
        transport.clear()
        connection.dataReceived(b"PUT-FROM 0\n")
        self.assertEqual(session.received(), b"PUT-FROM 0\n")
        return session, connection, transport

    def test_nodeConnectionLostMidStream(self):
        """
        node2 is a real client session whose connection dies mid-payload
        (its transport stops the registered producer, as Twisted's
        transports do, then reports the loss): it is dropped, and the
        others complete.
        """
        session, connection, transport = self.clientNodeCluster()
        session.send(b"DATA 12\n" + CONTENT[:4])
        self.assertEqual(transport.value(), b"DATA 12\n" + CONTENT[:4])
        transport.producer.stopProducing()
        connection.connectionLost(Failure(ConnectionLost("node2 died")))
        self.assertEqual(session.send(CONTENT[4:] + b"VALID\n"),
                         line(b"SUCCESS-PLUS", N1, N3))
        self.assertEqual(transport.value(), b"DATA 12\n" + CONTENT[:4])
        for repo in (self.repos[0], self.repos[2]):
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_nodeLostBeforeData(self):
        """
        node2's connection is lost after its C{PUT-FROM} but before the
        client's DATA: registering on its dead sink stops the tee's branch
        at once, and the others complete.
        """
        session, connection, transport = self.clientNodeCluster()
        connection.connectionLost(Failure(ConnectionLost("node2 died")))
        self.assertEqual(session.send(b"DATA 12\n" + CONTENT + b"VALID\n"),
                         line(b"SUCCESS-PLUS", N1, N3))
        self.assertEqual(transport.value(), b"")
        for repo in (self.repos[0], self.repos[2]):
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def test_nodeConnectionLostSilently(self):
        """
        node2's connection is lost mid-payload without its transport
        stopping the producer: node2 fails when the upload finishes, is
        left out, and the others complete.
        """
        session, connection, transport = self.clientNodeCluster()
        session.send(b"DATA 12\n" + CONTENT[:4])
        connection.connectionLost(Failure(ConnectionLost("node2 died")))
        self.assertEqual(session.send(CONTENT[4:] + b"VALID\n"),
                         line(b"SUCCESS-PLUS", N1, N3))
        for repo in (self.repos[0], self.repos[2]):
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def test_nodeAnswersFailure(self):
        """
        node2, a real client session, stores nothing (C{FAILURE} after the
        data): it is left out.
        """
        session, connection, transport = self.clientNodeCluster()
        session.send(b"DATA 12\n" + CONTENT + b"VALID\n")
        self.assertEqual(transport.value(),
                         b"DATA 12\n" + CONTENT + b"VALID\n")
        self.assertEqual(session.received(), b"")
        connection.dataReceived(b"FAILURE\n")
        self.assertEqual(session.received(), line(b"SUCCESS-PLUS", N1, N3))


# -- backpressure -------------------------------------------------------------


class BackpressureTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    The tee holds the client back while any node is slow.
    """

    def startUpload(self):
        """
        Start a cluster upload of L{CONTENT} with a L{FakeProducer}
        registered on the tee.

        @return: C{(upload, tee, producer, membranes)}, the membranes being
            the producers the tee registered on each node's sink.
        """
        upload = self.successResultOf(self.cluster.put(KEY, b"file.txt"))
        tee = upload.receive(12)
        producer = FakeProducer()
        tee.registerProducer(producer, True)
        membranes = [repo.uploads[0].sink.producer for repo in self.repos]
        for membrane, repo in zip(membranes, self.repos):
            self.assertIsNotNone(membrane)
            self.assertTrue(repo.uploads[0].sink.streaming)
        self.assertEqual(len(set(map(id, membranes))), 3)
        return upload, tee, producer, membranes

    def test_pausedWhileAnyPaused(self):
        """
        The client's producer is paused when the first node pauses, stays
        paused while any node is, and is resumed once, when the last one
        resumes.
        """
        upload, tee, producer, (m1, m2, m3) = self.startUpload()
        self.assertEqual(producer.calls, [])
        m2.pauseProducing()
        self.assertEqual(producer.calls, ["pause"])
        m3.pauseProducing()
        m2.resumeProducing()
        self.assertEqual(producer.calls, ["pause"])
        m1.pauseProducing()
        m3.resumeProducing()
        self.assertEqual(producer.calls, ["pause"])
        m1.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        m1.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_repeatedPause(self):
        """
        A node that pauses twice before resuming is counted once: one
        resume from it releases the client.
        """
        upload, tee, producer, (m1, m2, m3) = self.startUpload()
        m1.pauseProducing()
        m1.pauseProducing()
        self.assertEqual(producer.calls, ["pause"])
        m1.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_writesWhilePausedStillDelivered(self):
        """
        Bytes the producer writes after a pause (already in flight) are not
        lost: every node gets them, and the upload completes.
        """
        upload, tee, producer, (m1, m2, m3) = self.startUpload()
        tee.write(CONTENT[:5])
        m1.pauseProducing()
        tee.write(CONTENT[5:])
        m1.resumeProducing()
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(tee.done), 12)
        self.assertEqual(self.successResultOf(upload.finish(True)),
                         Outcome(True, (N1, N2, N3)))
        for repo in self.repos:
            self.assertIsNone(repo.uploads[0].sink.producer)

    def test_lostWhilePausedReleases(self):
        """
        A node lost while it is the only paused one releases the pause; it
        is dropped, and its later pauses no longer hold the client back.
        """
        upload, tee, producer, (m1, m2, m3) = self.startUpload()
        tee.write(CONTENT[:3])
        m2.pauseProducing()
        self.assertEqual(producer.calls, ["pause"])
        m2.stopProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        self.assertIsNotNone(self.repos[1].uploads[0].aborted)
        m2.pauseProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        tee.write(CONTENT[3:])
        tee.unregisterProducer()
        self.assertEqual(self.successResultOf(upload.finish(True)),
                         Outcome(True, (N1, N3)))
        self.assertEqual(self.repos[1].uploads[0].sink.written, 3)
        self.assertEqual(self.repos[1].partial, {KEY.raw: CONTENT[:3]})

    def test_lostWhileOthersPaused(self):
        """
        A node lost while another is also paused does not release the
        client; the other's resume does.
        """
        upload, tee, producer, (m1, m2, m3) = self.startUpload()
        m1.pauseProducing()
        m3.pauseProducing()
        m3.stopProducing()
        self.assertEqual(producer.calls, ["pause"])
        m1.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_pauseThroughServer(self):
        """
        End to end: node2 is a real client session whose transport pauses
        its producer (a full write buffer); the client's transport is
        paused, and resumed when node2's transport resumes the producer;
        the PUT then completes on every node.
        """
        client, connection, transport = self.nodeClient(N2)
        self.nodes[1].repository = client
        session = self.session()
        session.send(line(b"PUT", b"file.txt", KEY))
        connection.dataReceived(b"PUT-FROM 0\n")
        self.assertEqual(session.received(), b"PUT-FROM 0\n")
        session.send(b"DATA 12\n" + CONTENT[:4])
        self.assertEqual(session.transport.producerState, "producing")
        transport.producer.pauseProducing()
        self.assertEqual(session.transport.producerState, "paused")
        session.send(CONTENT[4:] + b"VALID\n")
        self.assertEqual(transport.value(), b"PUT file.txt " + KEY.raw
                         + b"\nDATA 12\n" + CONTENT[:4])
        self.assertEqual(self.repos[0].uploads[0].sink.written, 4)
        transport.producer.resumeProducing()
        self.assertEqual(session.transport.producerState, "producing")
        self.assertTrue(transport.value().endswith(CONTENT + b"VALID\n"))
        connection.dataReceived(b"SUCCESS\n")
        self.assertEqual(session.received(), line(b"SUCCESS-PLUS",
                                                  N1, N2, N3))


# -- GET ----------------------------------------------------------------------


class GetTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    GET is served by one node.
    """

    def test_cheapestWithContent(self):
        """
        node1 lacks the content (it answers C{DATA 0}, C{INVALID}) and is
        skipped before anything reaches the client; node2, the cheapest
        that has it, serves it; node3 is not asked.
        """
        self.repos[1].add(CONTENT, KEY)
        self.repos[2].add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 12\n" + CONTENT + b"VALID\n")
        self.assertEqual(session.send(b"SUCCESS\n"), b"")
        self.assertEqual(self.repos[0].calls, [
            ("get", KEY.raw, b"file.txt", 0),
            ("download.deliver", KEY.raw),
            ("download.finish", KEY.raw, False)])
        self.assertEqual(self.repos[1].calls, [
            ("get", KEY.raw, b"file.txt", 0),
            ("download.deliver", KEY.raw),
            ("download.finish", KEY.raw, True)])
        self.assertEqual(self.repos[2].calls, [])
        self.assertEqual([n.busy for n in self.nodes], [0, 0, 0])

    def test_failingNodesSkipped(self):
        """
        Nodes whose get() fails (unreachable, or ERROR) are skipped; the
        next one serves.
        """
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        self.repos[0].failNext("get", RepositoryUnavailable("node1 down"))
        self.repos[1].failNext("get", RepositoryError(b"node2 says no"))
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 12\n" + CONTENT + b"VALID\n")
        session.send(b"SUCCESS\n")
        self.assertIs(self.repos[2].downloads[0].finished, True)

    def test_lackingNodeFailsToFinish(self):
        """
        A node that lacks the content and then fails when told so is still
        skipped (nothing was sent yet): the next node serves.
        """
        self.repos[1].add(CONTENT, KEY)
        self.repos[0].failNext("download.finish",
                               RepositoryUnavailable("node1 lost"))
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 12\n" + CONTENT + b"VALID\n")
        session.send(b"SUCCESS\n")
        self.assertIs(self.repos[1].downloads[0].finished, True)

    def test_emptyDeliveryErrors(self):
        """
        A node whose empty download fails with an ERROR before any byte was
        sent is skipped: the next node serves.
        """
        self.repos[1].add(CONTENT, KEY)
        self.repos[0].failNext("download.deliver",
                               RepositoryError(b"node1 says no"))
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 12\n" + CONTENT + b"VALID\n")

    def test_offset(self):
        """
        GET at an offset is asked of the node at that offset.
        """
        self.repos[0].add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"GET 6", b"file.txt", KEY)),
                         b"DATA 6\nworld\nVALID\n")
        self.assertEqual(self.calls(self.repos[0], "get"),
                         [("get", KEY.raw, b"file.txt", 6)])

    def test_noneHasIt(self):
        """
        When no node has the content: C{DATA 0} and C{INVALID}; the client's
        C{FAILURE} is taken without a reply, and the session goes on.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 0\nINVALID\n")
        self.assertEqual(session.send(b"FAILURE\n"), b"")
        for repo in self.repos:
            self.assertEqual(self.calls(repo, "download.finish"),
                             [("download.finish", KEY.raw, False)])
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_allFail(self):
        """
        When every node fails, the client is told the content is absent
        (C{DATA 0}, C{INVALID}), and the session goes on.
        """
        for repo in self.repos:
            repo.add(CONTENT, KEY)
            repo.failNext("get", RepositoryUnavailable("down"))
        session = self.session()
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 0\nINVALID\n")
        self.assertEqual(session.send(b"FAILURE\n"), b"")
        self.assertFalse(session.transport.disconnecting)

    def test_resumeAtEnd(self):
        """
        GET at the very end of content a node has (offset == size):
        C{DATA 0} and C{VALID}, from that node.
        """
        self.repos[1].add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"GET 12", b"file.txt", KEY)),
                         b"DATA 0\nVALID\n")
        self.assertEqual(session.send(b"SUCCESS\n"), b"")
        self.assertEqual(self.calls(self.repos[1], "download.finish"),
                         [("download.finish", KEY.raw, True)])
        self.assertEqual(self.repos[2].calls, [])
        self.assertEqual([n.busy for n in self.nodes], [0, 0, 0])

    def test_versionOne(self):
        """
        A version 1 client gets the same DATA and verdict.
        """
        self.repos[2].add(CONTENT, KEY)
        session = self.session(version=1)
        self.assertEqual(session.send(line(b"GET 0", b"file.txt", KEY)),
                         b"DATA 12\n" + CONTENT + b"VALID\n")

    def test_lessBusyOfEqualCost(self):
        """
        Of two nodes of equal cost and equal measured latency that both
        have the content, a second GET (in another session, while the
        first is still going on) goes to the one not busy; once both are
        done, the first node serves again.
        """
        self.nodes[1].cost = 100
        for node in self.nodes[:2]:
            node.meter.clock = lambda: 0.0
            node.meter.observeLatency(0.0)
        cluster = self.makeCluster()
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        first = self.session(cluster=cluster)
        second = self.session(cluster=cluster)
        wire = b"DATA 12\n" + CONTENT + b"VALID\n"
        self.assertEqual(first.send(line(b"GET 0", b"a", KEY)), wire)
        self.assertEqual([n.busy for n in self.nodes], [1, 0, 0])
        self.assertEqual(second.send(line(b"GET 0", b"b", KEY)), wire)
        self.assertEqual([n.busy for n in self.nodes], [1, 1, 0])
        self.assertEqual(self.calls(self.repos[0], "get"),
                         [("get", KEY.raw, b"a", 0)])
        self.assertEqual(self.calls(self.repos[1], "get"),
                         [("get", KEY.raw, b"b", 0)])
        first.send(b"SUCCESS\n")
        second.send(b"FAILURE\n")
        self.assertEqual([n.busy for n in self.nodes], [0, 0, 0])
        self.assertEqual(first.send(line(b"GET 0", b"c", KEY)), wire)
        self.assertEqual(self.calls(self.repos[0], "get")[-1],
                         ("get", KEY.raw, b"c", 0))
        first.send(b"SUCCESS\n")

    def test_busyDoublesTheEstimate(self):
        """
        A transfer in flight doubles a node's estimate: of two nodes on
        equal paths, one 1.5 times as dear serves a second download while
        the cheaper one is busy with the first, and a third goes back to
        the cheaper one (2 against 1.5 times 2).
        """
        self.nodes[1].cost = 150
        for node in self.nodes:
            node.meter.clock = lambda: 0.0
            node.meter.observeLatency(0.0)
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        downloads = [self.successResultOf(self.cluster.get(KEY, None, 0))
                     for _ in range(3)]
        self.assertEqual([d.node.name for d in downloads],
                         ["node1", "node2", "node1"])
        self.assertEqual([n.busy for n in self.nodes], [2, 1, 0])
        for d in downloads:
            consumer = CollectingConsumer()
            self.assertIs(self.successResultOf(d.deliver(consumer)), True)
            self.assertEqual(consumer.data, CONTENT)
            self.successResultOf(d.finish(True))
        self.assertEqual([n.busy for n in self.nodes], [0, 0, 0])

    def test_measuredThroughput(self):
        """
        A node whose downloads were measured slow is passed over for one
        whose path is not known to be slow, whatever their costs say; once
        the measurement is older than the meter's memory, the node is
        tried again.
        """
        now = [0.0]
        for node in self.nodes:
            node.meter.clock = lambda: now[0]
        big = b"x" * (1024 * 1024)
        bigKey = keyFor(big, b".bin")
        for repo in self.repos:
            repo.chunkSize = 64 * 1024
            repo.add(big, bigKey)
        download = self.successResultOf(self.cluster.get(bigKey, None, 0))
        self.assertEqual(download.node.name, "node1")

        class Slow(CollectingConsumer):
            def write(self, data):
                now[0] += 0.5   # 64 KiB chunks at 128 KiB/s
                CollectingConsumer.write(self, data)
        consumer = Slow()
        self.assertIs(self.successResultOf(download.deliver(consumer)), True)
        self.assertEqual(consumer.data, big)
        self.successResultOf(download.finish(True))
        self.assertLess(self.nodes[0].meter.throughput, 200 * 1024)
        again = self.successResultOf(self.cluster.get(bigKey, None, 0))
        self.assertEqual(again.node.name, "node2")
        self.successResultOf(again.finish(False))
        now[0] += self.nodes[0].meter.memory + 1
        later = self.successResultOf(self.cluster.get(bigKey, None, 0))
        self.assertEqual(later.node.name, "node1")
        self.successResultOf(later.finish(False))

    def test_loggedNodesFirst(self):
        """
        The nodes the location log shows with the key are asked first,
        even when dearer; the others only if none of those has it.
        """
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        cluster = Cluster(CLUSTER_UUID, self.nodes, clock=lambda: self.now,
                          locations=lambda key: {N3})
        download = self.successResultOf(cluster.get(KEY, None, 0))
        self.assertEqual(download.node.name, "node3")
        self.successResultOf(download.finish(True))
        del self.repos[2].contents[KEY.raw]
        download = self.successResultOf(cluster.get(KEY, None, 0))
        self.assertEqual(download.node.name, "node1")
        self.successResultOf(download.finish(True))

    def test_downNodesLast(self):
        """
        A node whose connector says it is down is asked last.
        """
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        self.repos[0].up = False
        download = self.successResultOf(self.cluster.get(KEY, None, 0))
        self.assertEqual(download.node.name, "node2")
        self.successResultOf(download.finish(True))


# -- CHECKPRESENT, LOCKCONTENT, GETTIMESTAMP ---------------------------------


class CheckPresentTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    Without a location log, CHECKPRESENT asks every node.
    """

    def test_anyHasIt(self):
        """
        True when any node (here the dearest) has the content.
        """
        self.repos[2].add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_noneHasIt(self):
        """
        False when no node has it, after asking every one.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")
        for repo in self.repos:
            self.assertEqual(repo.calls, [("checkPresent", KEY.raw)])

    def test_someFail(self):
        """
        Nodes that fail do not spoil the answer of the others: true if a
        working node has it, false if none does.
        """
        self.repos[0].failNext("checkPresent", RepositoryUnavailable("x"))
        self.repos[1].failNext("checkPresent", RepositoryError(b"y"))
        self.repos[0].failNext("checkPresent", RepositoryUnavailable("x"))
        self.repos[2].add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")
        del self.repos[2].contents[KEY.raw]
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")

    def test_allFail(self):
        """
        When no node can be asked, the answer is an C{ERROR} (not a claim
        that the content is absent), and the session goes on.
        """
        for repo in self.repos:
            repo.add(CONTENT, KEY)
            repo.failNext("checkPresent", RepositoryUnavailable("down"))
        session = self.session()
        reply = session.send(line(b"CHECKPRESENT", KEY))
        self.assertTrue(reply.startswith(b"ERROR "), reply)
        self.assertEqual(reply.count(b"\n"), 1)
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")


class LoggedCheckPresentTests(ClusterTestsMixin,
                              unittest.SynchronousTestCase):
    """
    With the gateway's location log (C{locations}), CHECKPRESENT asks only
    the nodes the log shows with the key, as git-annex's gateway does.
    """

    def setUp(self):
        ClusterTestsMixin.setUp(self)
        self.logged = {}
        self.cluster = Cluster(
            CLUSTER_UUID, self.nodes, clock=lambda: self.now, name="cluster",
            locations=lambda key: self.logged.get(key.raw, set()))

    def test_notLogged(self):
        """
        No node logged with the key: FAILURE without asking any node, even
        one that has it (a false no costs an upload, never content).
        """
        self.repos[0].add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")
        for repo in self.repos:
            self.assertEqual(self.calls(repo, "checkPresent"), [])

    def test_onlyLoggedAsked(self):
        """
        Only the logged nodes are asked; any of them having it is a yes
        (the cheaper one's no does not end the search).
        """
        self.logged[KEY.raw] = {N2, N3}
        self.repos[2].add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")
        self.assertEqual(self.calls(self.repos[0], "checkPresent"), [])
        for repo in self.repos[1:]:
            self.assertEqual(self.calls(repo, "checkPresent"),
                             [("checkPresent", KEY.raw)])

    def test_cheapestFirst(self):
        """
        Logged nodes are asked one at a time, cheapest first: when the
        cheapest has it, no other node is asked.
        """
        self.logged[KEY.raw] = {N1, N2, N3}
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")
        self.assertEqual(self.calls(self.repos[0], "checkPresent"),
                         [("checkPresent", KEY.raw)])
        for repo in self.repos[1:]:
            self.assertEqual(self.calls(repo, "checkPresent"), [])

    def test_logUnreadable(self):
        """
        When the location log cannot be read, every node is asked rather
        than the request failing.
        """
        def broken(key):
            raise OSError("git cat-file failed")
        self.cluster.locations = broken
        self.repos[2].add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_staleLog(self):
        """
        A node the log wrongly lists is asked, and its no is the answer: a
        stale log never makes a false yes.
        """
        self.logged[KEY.raw] = {N1}
        session = self.session()
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"FAILURE\n")
        self.assertEqual(self.calls(self.repos[0], "checkPresent"),
                         [("checkPresent", KEY.raw)])


class LockAndTimestampTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    LOCKCONTENT is refused; GETTIMESTAMP is the cluster's own clock.
    """

    def test_lockContent(self):
        """
        A cluster cannot be locked: C{FAILURE}, even when every node has
        the content, and no node is asked or locked.
        """
        for repo in self.repos:
            repo.add(CONTENT, KEY)
        session = self.session()
        self.assertEqual(session.send(line(b"LOCKCONTENT", KEY)),
                         b"FAILURE\n")
        for repo in self.repos:
            self.assertEqual(repo.calls, [])
            self.assertEqual(repo.locks, {})
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_getTimestamp(self):
        """
        C{GETTIMESTAMP} answers with the cluster's clock, asking no node;
        it follows the clock.
        """
        self.repos[0].clock = 77
        session = self.session()
        self.assertEqual(session.send(b"GETTIMESTAMP\n"), b"TIMESTAMP 500\n")
        self.now = 512
        self.assertEqual(session.send(b"GETTIMESTAMP\n"), b"TIMESTAMP 512\n")
        for repo in self.repos:
            self.assertEqual(repo.calls, [])

    def test_defaultClock(self):
        """
        Without a clock given, the cluster reports the host's monotonic
        seconds (an L{int}).
        """
        cluster = Cluster(CLUSTER_UUID, self.nodes)
        stamp = self.successResultOf(cluster.getTimestamp())
        self.assertIsInstance(stamp, int)
        self.assertGreaterEqual(stamp, 0)


# -- REMOVE -------------------------------------------------------------------


class RemoveTests(ClusterTestsMixin, unittest.SynchronousTestCase):
    """
    REMOVE and REMOVE-BEFORE go to every node.
    """

    def setUp(self):
        ClusterTestsMixin.setUp(self)
        for repo in self.repos:
            repo.add(CONTENT, KEY)

    def test_remove(self):
        """
        Removed from every node: C{SUCCESS-PLUS} with every uuid.
        """
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)),
                         line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo in self.repos:
            self.assertEqual(repo.contents, {})
            self.assertEqual(repo.calls, [("remove", KEY.raw, None)])

    def test_removeVersion1(self):
        """
        A version 1 client gets plain C{SUCCESS} / C{FAILURE}.
        """
        session = self.session(version=1)
        self.repos[0].locks[KEY.raw] = 1
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"FAILURE\n")
        del self.repos[0].locks[KEY.raw]
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"SUCCESS\n")

    def test_oneRefuses(self):
        """
        node2 refuses (its copy is locked): C{FAILURE-PLUS} naming the
        nodes that did remove; node2 keeps its copy.
        """
        self.repos[1].locks[KEY.raw] = 1
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)),
                         line(b"FAILURE-PLUS", N1, N3))
        self.assertEqual(self.repos[1].contents, {KEY.raw: CONTENT})
        self.assertEqual(self.repos[0].contents, {})
        self.assertEqual(self.repos[2].contents, {})

    def test_oneFails(self):
        """
        A node that cannot be reached counts as not removed:
        C{FAILURE-PLUS} naming the others.
        """
        self.repos[2].failNext("remove", RepositoryUnavailable("node3 down"))
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)),
                         line(b"FAILURE-PLUS", N1, N2))

    def test_allRefuse(self):
        """
        When every node refuses, the answer is plain C{FAILURE}.
        """
        for repo in self.repos:
            repo.locks[KEY.raw] = 1
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)), b"FAILURE\n")

    def test_allFail(self):
        """
        When every node fails, the client gets an C{ERROR} with the first
        node's reason, and the session goes on.
        """
        for repo in self.repos:
            repo.failNext("remove", RepositoryError(
                b"refused by " + repo.uuid[:8]))
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE", KEY)),
                         b"ERROR refused by 11111111\n")
        self.assertEqual(session.send(line(b"CHECKPRESENT", KEY)),
                         b"SUCCESS\n")

    def test_removeBeforeTranslated(self):
        """
        C{REMOVE-BEFORE t} reaches each node with the deadline moved to its
        own clock: C{node clock + (t - cluster clock)}; all remove in time.
        """
        for repo, clock in zip(self.repos, (1000, 50, 7)):
            repo.clock = clock
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 530", KEY)),
                         line(b"SUCCESS-PLUS", N1, N2, N3))
        for repo, before in zip(self.repos, (1030, 80, 37)):
            self.assertEqual(self.calls(repo, "remove"),
                             [("remove", KEY.raw, before)])
            self.assertEqual(repo.contents, {})

    def test_removeBeforePast(self):
        """
        A deadline the cluster's clock has reached (or passed) fails, and
        no node removes anything.
        """
        for repo, clock in zip(self.repos, (1000, 50, 7)):
            repo.clock = clock
        session = self.session()
        for deadline in (b"500", b"499", b"1"):
            self.assertEqual(
                session.send(line(b"REMOVE-BEFORE", deadline, KEY)),
                b"FAILURE\n")
        for repo in self.repos:
            self.assertEqual(repo.contents, {KEY.raw: CONTENT})

    def test_removeBeforeOldNode(self):
        """
        A node too old for timestamps (protocol < 3) gets a plain REMOVE
        while the deadline is ahead, the cluster checking it; once the
        deadline has passed it is not asked to remove at all.
        """
        self.repos[1].failNext("getTimestamp", ProtocolNotSupported("v2"))
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 501", KEY)),
                         line(b"SUCCESS-PLUS", N1, N2, N3))
        self.assertEqual(self.calls(self.repos[1], "remove"),
                         [("remove", KEY.raw, None)])

        for repo in self.repos:
            repo.add(CONTENT, KEY)
        self.repos[1].failNext("getTimestamp", ProtocolNotSupported("v2"))
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 500", KEY)),
                         b"FAILURE\n")
        self.assertEqual(len(self.calls(self.repos[1], "remove")), 1)
        self.assertEqual(self.repos[1].contents, {KEY.raw: CONTENT})

    def test_removeBeforeTimestampFails(self):
        """
        A node whose clock cannot be read is left out (not removed); the
        others remove.
        """
        self.repos[0].failNext("getTimestamp",
                               RepositoryUnavailable("node1 down"))
        session = self.session()
        self.assertEqual(session.send(line(b"REMOVE-BEFORE 600", KEY)),
                         line(b"FAILURE-PLUS", N2, N3))
        self.assertEqual(self.repos[0].contents, {KEY.raw: CONTENT})


class GatewayBypassTests(unittest.SynchronousTestCase):
    """
    Other gateways of a multi-gateway cluster are each told to bypass this
    gateway, the client's BYPASS, and every other gateway this one reaches
    itself, so that each is reached once per request.
    """

    GW = b"99999999-9999-4999-8999-999999999999"
    GB = b"bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
    GC = b"cccccccc-cccc-4ccc-8ccc-cccccccccccc"

    def makeCluster(self):
        self.local = MemoryRepository(N1)
        self.viaB = MemoryRepository(CLUSTER_UUID)
        self.viaC = MemoryRepository(CLUSTER_UUID)
        return Cluster(CLUSTER_UUID, [
            ClusterNode(N1, "node1", 100, self.local),
            ClusterNode(CLUSTER_UUID, "gb-c", 201, self.viaB, via=self.GB),
            ClusterNode(CLUSTER_UUID, "gc-c", 201, self.viaC, via=self.GC),
        ], gatewayUUID=self.GW)

    def test_eachOtherGatewayBypassesTheRest(self):
        """
        Without a client BYPASS, gateway B is told to bypass this gateway
        and C (which this one reaches itself), and C to bypass this one
        and B.
        """
        self.makeCluster()
        self.assertEqual(self.viaB.bypass, tuple(sorted([self.GW, self.GC])))
        self.assertEqual(self.viaC.bypass, tuple(sorted([self.GW, self.GB])))

    def test_clientBypassLeavesGatewayOut(self):
        """
        A gateway the client bypasses is not reached, and the remaining one
        is told to bypass it too (as the client's list says).
        """
        cluster = self.makeCluster()
        cluster.setBypass([self.GC])
        self.assertEqual([n.name for n in cluster.nodes], ["node1", "gb-c"])
        self.assertEqual(self.viaB.bypass, tuple(sorted([self.GW, self.GC])))

    def test_gatewayBypass(self):
        """
        L{gatewayBypass} adds the directly reached gateways but the target.
        """
        self.assertEqual(
            gatewayBypass({self.GW}, {self.GB, self.GC}, self.GB),
            tuple(sorted([self.GW, self.GC])))
        self.assertEqual(gatewayBypass({self.GW}, {self.GB}, self.GB),
                         (self.GW,))


class FileStoringRepository(MemoryRepository):
    """
    A L{MemoryRepository} that stores from files (an external special
    remote): C{storeFile} reads the file it is given.

    @ivar paths: the paths it was given.
    """

    needsFile = True

    def __init__(self, uuid):
        MemoryRepository.__init__(self, uuid)
        self.paths = []

    def storeFile(self, key, path):
        self.paths.append(path)
        with open(path, "rb") as f:
            self.contents[key.raw] = f.read()
        return succeed(Outcome(True))


class FileNodeTests(unittest.SynchronousTestCase):
    """
    Nodes that store from files get the upload spooled once, checked
    against its key, and the same file each.
    """

    def setUp(self):
        self.spoolDir = self.mktemp()
        self.stream = MemoryRepository(N1)
        self.files = [FileStoringRepository(N2), FileStoringRepository(N3)]

    def makeCluster(self, diskReserve=0, stream=True):
        nodes = [ClusterNode(N2, "ext2", 200, self.files[0]),
                 ClusterNode(N3, "ext3", 200, self.files[1])]
        if stream:
            nodes.insert(0, ClusterNode(N1, "node1", 100, self.stream))
        return Cluster(CLUSTER_UUID, nodes, spoolDirectory=self.spoolDir,
                       diskReserve=diskReserve, reactor=Clock())

    def upload(self, cluster, content, key):
        upload = self.successResultOf(cluster.put(key, b"f"))
        self.assertEqual(upload.offset, 0)
        sink = upload.receive(len(content))
        spooled = os.listdir(self.spoolDir)
        sink.write(content)
        return self.successResultOf(upload.finish(True)), spooled

    def test_oneSpoolForAll(self):
        """
        Both file nodes store from one spool file (the same path), which is
        gone afterwards; the stream node gets the stream; all three are in
        the answer.
        """
        cluster = self.makeCluster()
        outcome, spooled = self.upload(cluster, CONTENT, KEY)
        self.assertEqual(set(outcome.uuids), {N1, N2, N3})
        self.assertEqual(len(spooled), 1)
        self.assertEqual(self.files[0].paths, self.files[1].paths)
        for repo in [self.stream] + self.files:
            self.assertEqual(repo.contents[KEY.raw], CONTENT)
        self.assertEqual(os.listdir(self.spoolDir), [])
        self.assertEqual(cluster.spoolsMade, 1)

    def test_badContentNotStored(self):
        """
        Content that does not match its key is not handed to the file
        nodes (the stream node refuses it too), and the spool is removed.
        """
        cluster = self.makeCluster()
        outcome, _ = self.upload(cluster, b"hello worlD\n", KEY)
        self.assertEqual(outcome, Outcome(False, ()))
        for repo in self.files:
            self.assertEqual(repo.paths, [])
        self.assertEqual(os.listdir(self.spoolDir), [])

    def test_alreadyThere(self):
        """
        A file node that has the content already is asked nothing more.
        """
        self.files[0].add(CONTENT, KEY)
        outcome, _ = self.upload(self.makeCluster(), CONTENT, KEY)
        self.assertEqual(set(outcome.uuids), {N1, N2, N3})
        self.assertEqual(self.files[0].paths, [])

    def test_diskReserve(self):
        """
        When spooling would cross annex.diskreserve, the file nodes are
        left out before any byte is spooled; with no other node, the PUT
        is refused with the reason.
        """
        reserve = 10 ** 18
        outcome, spooled = self.upload(self.makeCluster(reserve), CONTENT, KEY)
        self.assertEqual(outcome.uuids, (N1,))
        self.assertEqual(spooled, [])
        failure = self.failureResultOf(
            self.makeCluster(reserve, stream=False).put(KEY, b"f"),
            RepositoryError)
        self.assertIn("annex.diskreserve", str(failure.value))
        self.assertEqual(os.listdir(self.spoolDir), [])

    def test_abort(self):
        """
        An upload given up on removes its spool; no file node stores.
        """
        cluster = self.makeCluster()
        upload = self.successResultOf(cluster.put(KEY, b"f"))
        upload.receive(len(CONTENT)).write(CONTENT[:5])
        upload.abort("client gone")
        self.assertEqual(os.listdir(self.spoolDir), [])
        for repo in self.files:
            self.assertEqual(repo.paths, [])
