"""
Tests for L{annexd.nodes.http}: annexd as an annex+http client of a real
C{git-annex p2phttp} server, and of annexd's own HTTP front-end (in this
process, over in-memory repositories, and as a daemon over a real cluster).
"""

import hashlib
import os
import time

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.trial import unittest
from twisted.web import resource, server
from zope.interface import implementer
from zope.interface.verify import verifyObject

from annexd.http.server import Root, _notFound
from annexd.interfaces import (
    IContentLock, IDownload, IRepository, IUpload, Outcome,
    ProtocolNotSupported, RepositoryError, RepositoryUnavailable)
from annexd.nodes.http import AnnexUrl, HttpNode
from annexd.protocol.keys import Key

from tests.support.annex import cluster_for
from tests.support.daemon import freePort, startDaemon
from tests.support.httpwire import CLIENT, NODE
from tests.support.memory import keyFor
from tests.support.p2phttp import (
    memoryGateway, serveSite, startP2PHttp)
from tests.support.tlsca import makeCA


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def randomContent(size):
    return os.urandom(size)


# -- producers and consumers -------------------------------------------------------


@implementer(IPushProducer)
class Sender:
    """
    Writes C{data} into C{consumer} as a push producer, in C{chunk}-sized
    writes, for as long as it is not paused.

    @ivar pauses: how many times it was paused.
    """

    def __init__(self, consumer, data, chunk=64 * 1024, stopAt=None):
        self.consumer = consumer
        self.data = data
        self.chunk = chunk
        self.stopAt = len(data) if stopAt is None else stopAt
        self.pos = 0
        self.paused = False
        self.stopped = False
        self.pauses = 0
        self.resumes = 0
        self.finished = defer.Deferred()
        consumer.registerProducer(self, True)
        self._write()

    def _write(self):
        while (not self.paused and not self.stopped
               and self.pos < self.stopAt):
            piece = self.data[self.pos:min(self.pos + self.chunk,
                                           self.stopAt)]
            self.pos += len(piece)
            self.consumer.write(piece)
        if self.pos == self.stopAt and not self.finished.called:
            self.consumer.unregisterProducer()
            self.finished.callback(self.pos)

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self.resumes += 1
        self._write()

    def stopProducing(self):
        self.stopped = True


class PullSender:
    """
    Writes C{data} into C{consumer} as a pull producer: one chunk per
    C{resumeProducing}.
    """

    def __init__(self, consumer, data, chunk=32 * 1024):
        self.consumer = consumer
        self.data = data
        self.chunk = chunk
        self.pos = 0
        self.pulls = 0
        consumer.registerProducer(self, False)

    def resumeProducing(self):
        self.pulls += 1
        piece = self.data[self.pos:self.pos + self.chunk]
        self.pos += len(piece)
        if self.pos == len(self.data):
            self.consumer.unregisterProducer()
        self.consumer.write(piece)

    def stopProducing(self):
        pass


@implementer(IConsumer)
class Collector:
    """
    A consumer that keeps what it is given.
    """

    def __init__(self):
        self.chunks = []
        self.producer = None
        self.registrations = 0

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer
        self.registrations += 1

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.chunks.append(data)

    @property
    def data(self):
        return b"".join(self.chunks)


async def upload(node, key, content, associatedFile=None, valid=True,
                 chunk=64 * 1024):
    """
    Put C{content} on C{node} the way a front-end does.

    @return: C{(outcome, upload or None, Sender or None)}
    """
    offer = await node.put(key, associatedFile)
    if isinstance(offer, Outcome):
        return offer, None, None
    sink = offer.receive(len(content) - offer.offset)
    sender = Sender(sink, content[offer.offset:], chunk)
    await sink.done
    outcome = await offer.finish(valid)
    return outcome, offer, sender


async def download(node, key, offset=0):
    """
    @return: C{(download, verdict, bytes)}
    """
    d = await node.get(key, None, offset)
    collector = Collector()
    verdict = await d.deliver(collector)
    await d.finish(verdict is not False)
    return d, verdict, collector.data


# -- urls ---------------------------------------------------------------------------


class AnnexUrlTests(unittest.SynchronousTestCase):
    """
    annexUrl -> base url, as git-annex's client makes it (spec 1.1).
    """

    def test_basePaths(self):
        """
        A path of exactly /git-annex is dropped; any other path is kept
        whole (so /prefix/git-annex/ doubles, as git-annex's does); the
        default port is 9417 for both schemes.
        """
        cases = [
            ("annex+http://h:1/git-annex/", "http://h:1", ""),
            ("annex+http://h:1/git-annex", "http://h:1", ""),
            ("annex+http://h:1", "http://h:1", ""),
            ("annex+http://h:1/", "http://h:1", ""),
            ("annex+http://h:1/prefix", "http://h:1", "/prefix"),
            ("annex+http://h:1/org/repo/", "http://h:1", "/org/repo"),
            ("annex+http://h:1/prefix/git-annex/", "http://h:1",
             "/prefix/git-annex"),
            ("annex+http://h", "http://h:9417", ""),
            ("annex+https://h/x", "https://h:9417", "/x"),
            ("annex+http://[::1]:5/", "http://[::1]:5", ""),
        ]
        for url, origin, base in cases:
            parsed = AnnexUrl(url)
            self.assertEqual((parsed.origin, parsed.base), (origin, base),
                             url)

    def test_requestUrls(self):
        """
        Requests go to BASE/git-annex/<uuid>/vN/...; values are encoded as
        git-annex encodes them, percent-encoded; bypass is repeated.
        """
        node = HttpNode(reactor, "annex+http://h:1/p", b"[odd]", b"c\xff")
        self.addCleanup(node.close)
        node.bypass = (b"b1", b"b2")
        url = node._url(4, "checkpresent", [
            ("key", "SHA256E-s1--x"), node._client()])
        self.assertEqual(
            url, "http://h:1/p/git-annex/%5BW29kZF0%3D%5D/v4/checkpresent"
                 "?key=SHA256E-s1--x&clientuuid=%5BY_8%3D%5D"
                 "&bypass=b1&bypass=b2")
        url = node._url(0, "key", [], keyPath=b"URL--http://x/a&b")
        self.assertTrue(url.endswith(
            "/v0/key/URL--http%3A%2F%2Fx%2Fa%26b?bypass=b1&bypass=b2"), url)

    def test_credentialsFromUrl(self):
        """
        User and password in the url are credentials; the git credential
        description is protocol, host (with port) and path.
        """
        parsed = AnnexUrl("annex+https://al%40ice:p%3Aw@h:7/git-annex/")
        self.assertEqual(parsed.credentials, ("al@ice", "p:w"))
        self.assertEqual(parsed.origin, "https://h:7")
        self.assertEqual(parsed.credentialFields, [
            ("protocol", "annex+https"), ("host", "h:7"),
            ("path", "git-annex/"), ("username", "al@ice")])

    def test_notAnnexUrl(self):
        for url in ("http://h/", "ssh://h/x", "annex+http://", "annex+ftp://h"):
            self.assertRaises(ValueError, AnnexUrl, url)


# -- the reference server ---------------------------------------------------------


class ReferenceMixin:
    """
    A one-node test cluster whose node is served by C{git-annex p2phttp}.
    """

    p2phttpOptions = ("--wideopen",)
    p2phttpEnv = None
    scheme = "annex+http"

    def startReference(self):
        self.cluster = cluster_for(self, nodes=1)
        self.repo = self.cluster.nodes[0]
        self.server = startP2PHttp(self, self.cluster, self.repo,
                                   self.p2phttpOptions, env=self.p2phttpEnv)
        self.url = "%s://127.0.0.1:%d" % (self.scheme, self.server.port)

    def makeNode(self, **kw):
        kw.setdefault("name", "node1")
        node = HttpNode(reactor, kw.pop("url", self.url),
                        self.repo.uuid.encode("ascii"),
                        self.cluster.gateway.uuid.encode("ascii"), **kw)
        self.addCleanup(node.close)
        return node

    def onNode(self, key):
        return self.cluster.node_sha256(self.repo, key.raw.decode())


class ReferenceTests(ReferenceMixin, unittest.TestCase):
    """
    Every operation against C{git-annex p2phttp}, checked on disk.
    """

    def setUp(self):
        self.startReference()
        self.node = self.makeNode()

    def test_interface(self):
        verifyObject(IRepository, self.node)

    async def _put(self):
        content = randomContent(300000)
        key = keyFor(content)
        outcome, offer, _ = await upload(self.node, key, content, b"f.bin")
        self.assertEqual(outcome, Outcome(True, ()))
        verifyObject(IUpload, offer)
        self.assertEqual(self.onNode(key), sha256(content))
        return key, content

    @defer.inlineCallbacks
    def test_putAndCheckPresent(self):
        """
        checkpresent says no, a put stores the content (verified on the
        node's disk) at v4, and checkpresent then says yes.
        """
        content = randomContent(1000)
        key = keyFor(content)
        self.assertIs((yield self.node.checkPresent(key)), False)
        outcome, offer, _ = yield defer.Deferred.fromCoroutine(
            upload(self.node, key, content))
        self.assertEqual(outcome, Outcome(True, ()))
        self.assertEqual(offer.offset, 0)
        self.assertEqual(self.onNode(key), sha256(content))
        self.assertIs((yield self.node.checkPresent(key)), True)
        self.assertEqual(self.node.version, 4)
        # The exchanges gave back their slots.
        self.assertEqual(self.node.status()["busy"], 0)

    @defer.inlineCallbacks
    def test_get(self):
        """
        A get streams the content with its length and a VALID verdict; a
        get from an offset gets the rest.
        """
        key, content = yield defer.Deferred.fromCoroutine(self._put())
        d, verdict, data = yield defer.Deferred.fromCoroutine(
            download(self.node, key))
        verifyObject(IDownload, d)
        self.assertEqual((d.length, verdict), (len(content), True))
        self.assertEqual(data, content)
        self.assertTrue(d.completed.called)
        d, verdict, data = yield defer.Deferred.fromCoroutine(
            download(self.node, key, 123457))
        self.assertEqual((d.length, verdict), (len(content) - 123457, True))
        self.assertEqual(data, content[123457:])

    @defer.inlineCallbacks
    def test_getMissing(self):
        """
        p2phttp answers a missing key with 200 and length 0: absent, so
        INVALID.
        """
        key = keyFor(b"not there")
        d = yield self.node.get(key, None, 0)
        self.assertEqual(d.length, 0)
        self.assertIs((yield d.deliver(None)), False)
        yield d.finish(False)
        self.assertEqual(self.node.status()["busy"], 0)

    @defer.inlineCallbacks
    def test_getEmptyKey(self):
        """
        A key whose content is empty is VALID with length 0.
        """
        key = keyFor(b"")
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(self.node, key, b""))
        self.assertTrue(outcome.ok)
        self.assertEqual(self.onNode(key), sha256(b""))
        d, verdict, data = yield defer.Deferred.fromCoroutine(
            download(self.node, key))
        self.assertEqual((d.length, verdict, data), (0, True, b""))

    @defer.inlineCallbacks
    def test_remove(self):
        key, _ = yield defer.Deferred.fromCoroutine(self._put())
        outcome = yield self.node.remove(key)
        self.assertEqual(outcome, Outcome(True, ()))
        self.assertIsNone(self.onNode(key))
        self.assertIs((yield self.node.checkPresent(key)), False)

    @defer.inlineCallbacks
    def test_removeBefore(self):
        """
        gettimestamp reads the node's monotonic clock; remove-before with a
        deadline already past removes nothing, one in the future removes.
        """
        key, content = yield defer.Deferred.fromCoroutine(self._put())
        now = yield self.node.getTimestamp()
        self.assertIsInstance(now, int)
        self.assertGreater(now, 0)
        outcome = yield self.node.remove(key, before=now - 1)
        self.assertEqual(outcome, Outcome(False, ()))
        self.assertEqual(self.onNode(key), sha256(content))
        outcome = yield self.node.remove(key, before=now + 600)
        self.assertEqual(outcome, Outcome(True, ()))
        self.assertIsNone(self.onNode(key))

    @defer.inlineCallbacks
    def test_lockContent(self):
        """
        Locked content is not removed (p2phttp's 500 for it is "not
        removed"); once the lock is released it is.
        """
        key, content = yield defer.Deferred.fromCoroutine(self._put())
        lock = yield self.node.lockContent(key)
        verifyObject(IContentLock, lock)
        self.assertEqual(self.node.status()["busy"], 1)
        outcome = yield self.node.remove(key)
        self.assertEqual(outcome, Outcome(False))
        self.assertEqual(self.onNode(key), sha256(content))
        yield lock.release()
        self.assertEqual(self.node.status()["busy"], 0)
        outcome = yield self.node.remove(key)
        self.assertEqual(outcome, Outcome(True, ()))
        self.assertIsNone(self.onNode(key))

    @defer.inlineCallbacks
    def test_lockAbsent(self):
        self.assertIsNone((yield self.node.lockContent(keyFor(b"nothing"))))
        self.assertEqual(self.node.status()["busy"], 0)

    @defer.inlineCallbacks
    def test_alreadyHave(self):
        """
        putoffset's alreadyhave is an Outcome with alreadyHad; no content
        is sent.
        """
        key, _ = yield defer.Deferred.fromCoroutine(self._put())
        offer = yield self.node.put(key, None)
        self.assertEqual(offer, Outcome(True, (), alreadyHad=True))
        self.assertEqual(self.node.status()["busy"], 0)

    @defer.inlineCallbacks
    def test_invalidPutNotStored(self):
        """
        An upload the sender says is INVALID goes out one byte short, as
        git-annex's client sends it: the node stores nothing, and keeps
        the N-1 bytes it got for a resume, which then needs one byte.
        """
        content = randomContent(200000)
        key = keyFor(content)
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(self.node, key, content, valid=False))
        self.assertEqual(outcome, Outcome(False, ()))
        self.assertIsNone(self.onNode(key))
        offer = yield self.node.put(key, None)
        self.assertEqual(offer.offset, len(content) - 1)
        sink = offer.receive(1)
        sink.write(content[-1:])
        outcome = yield offer.finish(True)
        self.assertEqual(outcome, Outcome(True, ()))
        self.assertEqual(self.onNode(key), sha256(content))

    @defer.inlineCallbacks
    def test_abortPut(self):
        """
        An upload aborted half way stores nothing; the node goes on
        working.
        """
        content = randomContent(3 << 20)
        key = keyFor(content)
        offer = yield self.node.put(key, None)
        sink = offer.receive(len(content))
        Sender(sink, content, stopAt=len(content) // 2)
        offer.abort("the sender went away")
        self.assertTrue(offer.completed.called)
        self.assertEqual(self.node.status()["busy"], 0)
        self.assertIsNone(self.onNode(key))
        self.assertIs((yield self.node.checkPresent(key)), False)
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(self.node, key, content))
        self.assertTrue(outcome.ok)
        self.assertEqual(self.onNode(key), sha256(content))

    @defer.inlineCallbacks
    def test_dataPresentAbsent(self):
        """
        DATA-PRESENT (v4) for content the node does not have: not stored.
        """
        key = keyFor(b"elsewhere")
        offer = yield self.node.put(key, None)
        self.assertEqual((yield offer.dataPresent()), Outcome(False, ()))
        self.assertEqual(self.node.status()["busy"], 0)

    @defer.inlineCallbacks
    def test_streamingBothWays(self):
        """
        A 6 MiB upload is paced by the connection (the sender is paused
        by it, beyond the pause while connecting) and arrives intact; a
        download whose consumer pauses stops reading the socket until
        resumed, and arrives intact.
        """
        content = randomContent(6 << 20)
        key = keyFor(content)
        outcome, _, sender = yield defer.Deferred.fromCoroutine(
            upload(self.node, key, content))
        self.assertTrue(outcome.ok)
        self.assertGreaterEqual(sender.pauses, 2)
        self.assertEqual(self.onNode(key), sha256(content))

        node = self.makeNode()
        d = yield node.get(key, None, 0)
        (connection,) = node._connections
        seen = []
        collector = Collector()
        original = collector.write

        def write(data):
            original(data)
            if len(collector.chunks) == 1:
                collector.producer.pauseProducing()
                reactor.callLater(0, check, 0)

        def check(turn):
            seen.append(connection.transport in reactor.getReaders())
            if turn < 20:
                reactor.callLater(0, check, turn + 1)
            else:
                collector.producer.resumeProducing()
        collector.write = write
        verdict = yield d.deliver(collector)
        yield d.finish(True)
        self.assertEqual(seen, [False] * 21)
        self.assertIs(verdict, True)
        self.assertEqual(sha256(collector.data), sha256(content))


class ServerDownTests(unittest.TestCase):
    """
    A node nobody answers for.
    """

    @defer.inlineCallbacks
    def test_refused(self):
        """
        A refused connection is RepositoryUnavailable at once, and marks
        the node down: the next request fails without connecting, until
        the retry time; a retry that works marks it up again.
        """
        port = freePort()
        node = HttpNode(reactor, "annex+http://127.0.0.1:%d" % (port,),
                        NODE, CLIENT, name="gone")
        self.addCleanup(node.close)
        key = keyFor(b"x")
        started = time.monotonic()
        failure = yield self.assertFailure(node.checkPresent(key),
                                           RepositoryUnavailable)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("gone", str(failure))
        self.assertIn("refused", str(failure).lower())
        status = node.status()
        self.assertEqual((status["up"], status["started"], status["busy"]),
                         (False, 0, 0))
        self.assertIn("refused", status["error"].lower())
        self.assertGreater(status["retryIn"], 0)
        self.assertEqual(set(status), {
            "name", "uuid", "up", "idle", "busy", "started", "error",
            "retryIn", "maxSessions"})
        failure = yield self.assertFailure(node.get(key, None, 0),
                                           RepositoryUnavailable)
        self.assertIn("gone is down", str(failure))
        # The server comes; the retry is due.
        _, host, _ = memoryGateway(self, port=port)
        host.repositories[NODE].add(b"x", key)
        node._health.retryAt = reactor.seconds()
        self.assertIs((yield node.checkPresent(key)), True)
        status = node.status()
        self.assertEqual((status["up"], status["error"], status["started"]),
                         (True, None, 1))

    @defer.inlineCallbacks
    def test_closed(self):
        port, host, _ = memoryGateway(self)
        node = HttpNode(reactor, "annex+http://127.0.0.1:%d" % (port,),
                        NODE, CLIENT)
        self.assertIs((yield node.checkPresent(keyFor(b"x"))), False)
        self.assertEqual(node.status()["idle"], 1)
        yield node.close()
        self.assertEqual(node.status()["idle"], 0)
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("closed", str(failure))


# -- auth --------------------------------------------------------------------------


HELPER = r"""#!/bin/sh
# A git credential helper that logs how it is called and answers USER/PASS.
{ echo "== $1"; cat; } >> "%(log)s"
if [ "$1" = get ]; then
	echo username=%(user)s
	echo password=%(password)s
fi
"""


class AuthTests(ReferenceMixin, unittest.TestCase):
    """
    Basic auth against C{git annex p2phttp --authenv-http}.
    """

    p2phttpOptions = ("--authenv-http",)
    p2phttpEnv = {"GIT_ANNEX_P2PHTTP_PASSWORD_alice": "s3cret"}

    def setUp(self):
        self.startReference()

    def helper(self, password):
        """
        Configure a credential helper in the client repository.

        @return: the path of its log.
        """
        log = os.path.abspath(self.mktemp())
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(HELPER % {"log": log, "user": "alice",
                              "password": password})
        os.chmod(script, 0o755)
        self.cluster.client_git("config", "credential.helper", script)
        return log

    def helperNode(self):
        return self.makeNode(repoPath=self.cluster.client.path,
                             environment=self.cluster.env.env)

    @defer.inlineCallbacks
    def test_credentials(self):
        """
        Given credentials are sent: requests and a transfer work.
        """
        node = self.makeNode(credentials=("alice", "s3cret"))
        content = randomContent(5000)
        key = keyFor(content)
        self.assertIs((yield node.checkPresent(key)), False)
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(node, key, content))
        self.assertTrue(outcome.ok)
        self.assertEqual(self.onNode(key), sha256(content))

    @defer.inlineCallbacks
    def test_wrongCredentials(self):
        node = self.makeNode(credentials=("alice", "nope"))
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("node1", str(failure))
        self.assertIn("401", str(failure))
        # Not a connection problem: the node is up.
        self.assertTrue(node.status()["up"])

    @defer.inlineCallbacks
    def test_credentialHelper(self):
        """
        Without credentials, a 401 asks git credential fill (protocol,
        host with port, the challenge), the request is retried with its
        answer, which is approved and kept: the next request does not ask
        again.
        """
        log = self.helper("s3cret")
        node = self.helperNode()
        content = randomContent(5000)
        key = keyFor(content)
        self.assertIs((yield node.checkPresent(key)), False)
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(node, key, content))
        self.assertTrue(outcome.ok)
        self.assertEqual(self.onNode(key), sha256(content))
        with open(log) as f:
            calls = f.read()
        self.assertEqual(calls.count("== get"), 1, calls)
        self.assertEqual(calls.count("== store"), 1, calls)
        self.assertIn("protocol=annex+http\n", calls)
        self.assertIn("host=127.0.0.1:%d\n" % (self.server.port,), calls)
        self.assertNotIn("== erase", calls)

    @defer.inlineCallbacks
    def test_credentialHelperRefused(self):
        """
        A credential the server refuses is rejected (git credential
        reject), and the request fails with the status.
        """
        log = self.helper("wrong")
        node = self.helperNode()
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("401", str(failure))
        with open(log) as f:
            calls = f.read()
        self.assertEqual(calls.count("== get"), 1, calls)
        self.assertEqual(calls.count("== erase"), 1, calls)
        self.assertNotIn("== store", calls)

    @defer.inlineCallbacks
    def test_noCredentials(self):
        """
        Without any credential helper: a clear failure, naming the node,
        the status and git credential.
        """
        node = self.helperNode()
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("node1", str(failure))
        self.assertIn("401", str(failure))
        self.assertIn("git credential fill", str(failure))


# -- TLS ---------------------------------------------------------------------------


class TLSReferenceTests(ReferenceMixin, unittest.TestCase):
    """
    annex+https to C{git annex p2phttp} with a certificate of the test CA,
    and C{--authenv} (which only works over HTTPS).
    """

    scheme = "annex+https"

    def setUp(self):
        self.ca = makeCA(self.mktemp())
        self.p2phttpOptions = ("--authenv", "--certfile", self.ca.serverCert,
                               "--privatekeyfile", self.ca.serverKey)
        self.p2phttpEnv = {"GIT_ANNEX_P2PHTTP_PASSWORD_alice": "s3cret"}
        self.startReference()

    @defer.inlineCallbacks
    def test_verified(self):
        node = self.makeNode(trustRoot=self.ca.caCert,
                             credentials=("alice", "s3cret"))
        content = randomContent(100000)
        key = keyFor(content)
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(node, key, content))
        self.assertTrue(outcome.ok)
        self.assertEqual(self.onNode(key), sha256(content))
        _, verdict, data = yield defer.Deferred.fromCoroutine(
            download(node, key))
        self.assertEqual((verdict, data), (True, content))

    @defer.inlineCallbacks
    def test_wrongCA(self):
        """
        A server certificate from another CA is refused: the node is
        unavailable, and down.
        """
        other = makeCA(self.mktemp())
        node = self.makeNode(trustRoot=other.caCert,
                             credentials=("alice", "s3cret"))
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("TLS", str(failure))
        self.assertIn("certificate verify failed", str(failure))
        self.assertFalse(node.status()["up"])

    @defer.inlineCallbacks
    def test_platformTrust(self):
        """
        Without a trust root the platform's is used, which does not know
        the test CA.
        """
        node = self.makeNode(credentials=("alice", "s3cret"))
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("TLS", str(failure))


class TLSHostnameTests(unittest.TestCase):
    """
    service_identity checks the certificate's names (annexd's HTTPS
    front-end in this process).
    """

    @defer.inlineCallbacks
    def test_wrongName(self):
        ca = makeCA(self.mktemp(), hosts=("elsewhere.example",))
        port, host, _ = memoryGateway(self, tls=ca)
        node = HttpNode(reactor, "annex+https://127.0.0.1:%d" % (port,),
                        NODE, CLIENT, trustRoot=ca.caCert)
        self.addCleanup(node.close)
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("TLS", str(failure))
        self.assertIn("127.0.0.1", str(failure))

    @defer.inlineCallbacks
    def test_rightName(self):
        ca = makeCA(self.mktemp())
        port, host, _ = memoryGateway(self, tls=ca)
        host.repositories[NODE].add(b"x", keyFor(b"x"))
        node = HttpNode(reactor, "annex+https://127.0.0.1:%d" % (port,),
                        NODE, CLIENT, trustRoot=ca.caCert)
        self.addCleanup(node.close)
        self.assertIs((yield node.checkPresent(keyFor(b"x"))), True)


# -- annexd's own HTTP front-end ------------------------------------------------


class _Recorder(resource.Resource):
    """
    Passes requests on to annexd's L{Root}, recording their paths; paths
    with a refused version segment get 404 (an older server).
    """

    def __init__(self, root, refused=()):
        resource.Resource.__init__(self)
        self.root = root
        self.refused = [b"/v%d/" % (v,) for v in refused]
        self.paths = []
        self.uris = []
        self._seen = []

    def getChildWithDefault(self, name, request):
        # annexd routes a request when its headers are in, and twisted.web
        # again to render it: record it once.
        if not any(r is request for r in self._seen):
            self._seen.append(request)
            self.paths.append(request.path)
            self.uris.append(request.uri)
        if any(v in request.path for v in self.refused):
            return _notFound()
        return self.root.getChildWithDefault(name, request)


def endpoints(paths):
    """
    C{vN/endpoint} of every recorded path.
    """
    out = []
    for path in paths:
        parts = path.split(b"/")
        out.append(b"/".join(parts[3:5]).decode())
    return out


class AnnexdServerTests(unittest.TestCase):
    """
    annexd's HTTP front-end (in this process, in-memory repositories).
    """

    def serve(self, refused=(), **kw):
        from twisted.internet.task import Clock
        from tests.support.httpwire import FakeHost
        self.host = FakeHost(Clock())
        self.repo = self.host.repositories[NODE]
        self.recorder = _Recorder(Root([self.host], reactor=Clock()),
                                  refused)
        port, self.site = serveSite(self, self.recorder)
        node = HttpNode(reactor, "annex+http://127.0.0.1:%d/" % (port,),
                        NODE, CLIENT, name="mem", **kw)
        self.addCleanup(node.close)
        return node

    @defer.inlineCallbacks
    def test_roundTrip(self):
        """
        put (with the -PLUS uuids, a [..]-wrapped one included), get,
        checkpresent and remove; keys and file names of any bytes arrive
        exactly.
        """
        node = self.serve()
        self.repo.plusUUIDs = (b"u-1", b"[odd]")
        content = randomContent(100000)
        key = Key.parse(b"URL--http://example.com/a&b+c=d%20[x]?y")
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(node, key, content, associatedFile=b"bad\xff [x].txt"))
        self.assertEqual(outcome, Outcome(True, (b"u-1", b"[odd]")))
        self.assertIn(("put", key.raw, b"bad\xff [x].txt"), self.repo.calls)
        self.assertEqual(self.repo.contents[key.raw], content)
        self.assertIs((yield node.checkPresent(key)), True)
        _, verdict, data = yield defer.Deferred.fromCoroutine(
            download(node, key))
        self.assertEqual((verdict, data), (True, content))
        outcome = yield node.remove(key)
        self.assertEqual(outcome, Outcome(True, (b"u-1", b"[odd]")))
        self.assertNotIn(key.raw, self.repo.contents)

    @defer.inlineCallbacks
    def test_pullProducer(self):
        """
        A sender may be a pull producer: it is asked for each chunk.
        """
        node = self.serve()
        content = randomContent(300000)
        key = keyFor(content)
        offer = yield node.put(key, None)
        sink = offer.receive(len(content))
        sender = PullSender(sink, content)
        yield sink.done
        self.assertEqual(sender.pulls, 10)
        self.assertEqual((yield offer.finish(True)), Outcome(True, ()))
        self.assertEqual(self.repo.contents[key.raw], content)

    @defer.inlineCallbacks
    def test_bypass(self):
        """
        The bypass attribute, set after construction, is sent with every
        request.
        """
        node = self.serve()
        node.bypass = (b"b-1", b"b-2")
        yield node.checkPresent(keyFor(b"x"))
        self.assertEqual(self.host.bypasses[-1], (b"b-1", b"b-2"))
        node.bypass = ()
        yield node.checkPresent(keyFor(b"x"))
        self.assertEqual(self.host.bypasses[-1], ())

    @defer.inlineCallbacks
    def test_missingIs404(self):
        """
        annexd answers a missing key with 404: while the version is not
        known the get walks every version, then says absent; once it is
        known, one request.
        """
        node = self.serve()
        key = keyFor(b"absent")
        d = yield node.get(key, None, 0)
        self.assertEqual(d.length, 0)
        self.assertIs((yield d.deliver(None)), False)
        yield d.finish(False)
        self.assertEqual(endpoints(self.recorder.paths),
                         ["v4/key", "v3/key", "v2/key", "v1/key", "v0/key"])
        self.assertIsNone(node.version)
        yield node.checkPresent(key)
        self.assertEqual(node.version, 4)
        del self.recorder.paths[:]
        d = yield node.get(key, None, 0)
        self.assertIs((yield d.deliver(Collector())), False)
        yield d.finish(False)
        self.assertEqual(endpoints(self.recorder.paths), ["v4/key"])

    @defer.inlineCallbacks
    def test_versionFallback(self):
        """
        A server without v4 and v3: v2 is found and remembered;
        gettimestamp and remove-before are not supported (and not asked);
        transfers work at v2, plusuuids included.
        """
        node = self.serve(refused=(4, 3))
        self.repo.plusUUIDs = (b"p",)
        key = self.repo.add(b"some content")
        self.assertIs((yield node.checkPresent(key)), True)
        self.assertEqual(endpoints(self.recorder.paths),
                         ["v4/checkpresent", "v3/checkpresent",
                          "v2/checkpresent"])
        self.assertEqual(node.version, 2)
        del self.recorder.paths[:]
        self.assertIs((yield node.checkPresent(key)), True)
        yield self.assertFailure(node.getTimestamp(), ProtocolNotSupported)
        yield self.assertFailure(node.remove(key, before=10),
                                 ProtocolNotSupported)
        self.assertEqual(endpoints(self.recorder.paths), ["v2/checkpresent"])
        content = randomContent(70000)
        other = keyFor(content)
        outcome, offer, _ = yield defer.Deferred.fromCoroutine(
            upload(node, other, content))
        self.assertEqual(outcome, Outcome(True, (b"p",)))
        yield self.assertFailure(
            (yield node.put(keyFor(b"y"), None)).dataPresent(),
            ProtocolNotSupported)
        _, verdict, data = yield defer.Deferred.fromCoroutine(
            download(node, other))
        self.assertEqual((verdict, data), (True, content))
        self.assertEqual(node.status()["busy"], 0)

    @defer.inlineCallbacks
    def test_versionZero(self):
        """
        A v0 server: no putoffset (uploads start at 0), no verdict on
        downloads.
        """
        node = self.serve(refused=(4, 3, 2, 1))
        content = randomContent(10000)
        key = keyFor(content)
        outcome, offer, _ = yield defer.Deferred.fromCoroutine(
            upload(node, key, content))
        self.assertEqual(outcome, Outcome(True, ()))
        self.assertEqual(offer.offset, 0)
        self.assertEqual(node.version, 0)
        self.assertEqual(endpoints(self.recorder.paths), [
            "v4/putoffset", "v3/putoffset", "v2/putoffset", "v1/putoffset",
            "v0/put"])
        _, verdict, data = yield defer.Deferred.fromCoroutine(
            download(node, key))
        self.assertEqual((verdict, data), (None, content))

    @defer.inlineCallbacks
    def test_lockAndRemove(self):
        """
        A held lock makes annexd answer removed:false at once; release
        ends the keeplocked request with an unlock.
        """
        node = self.serve()
        key = self.repo.add(b"locked content")
        lock = yield node.lockContent(key)
        self.assertTrue(self.host.locks.isLocked(NODE, key.raw))
        self.assertEqual((yield node.remove(key)), Outcome(False, ()))
        self.assertIn(key.raw, self.repo.contents)
        yield lock.release()
        self.assertFalse(self.host.locks.isLocked(NODE, key.raw))
        self.assertFalse(self.repo.isLocked(key))
        self.assertEqual((yield node.remove(key)), Outcome(True, ()))
        self.assertEqual(endpoints(self.recorder.paths), [
            "v4/lockcontent", "v4/keeplocked", "v4/remove", "v4/remove"])

    @defer.inlineCallbacks
    def test_dataPresent(self):
        """
        DATA-PRESENT is a put with data-present=true and no body: the
        repository is asked whether the content is there.
        """
        node = self.serve()
        key = keyFor(b"put by other means")
        offer = yield node.put(key, None)
        self.assertEqual((yield offer.dataPresent()), Outcome(False, ()))
        self.assertIn(("upload.dataPresent", key.raw), self.repo.calls)
        self.assertIn(b"data-present=true", self.recorder.uris[-1])
        self.assertEqual(endpoints(self.recorder.paths),
                         ["v4/putoffset", "v4/put"])
        self.assertEqual(node.status()["busy"], 0)

    @defer.inlineCallbacks
    def test_invalidPut(self):
        """
        INVALID: the body is one byte short; the repository keeps N-1
        bytes, stores nothing.
        """
        node = self.serve()
        content = randomContent(50000)
        key = keyFor(content)
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(node, key, content, valid=False))
        self.assertEqual(outcome, Outcome(False, ()))
        self.assertNotIn(key.raw, self.repo.contents)
        self.assertEqual(self.repo.partial[key.raw], content[:-1])

    @defer.inlineCallbacks
    def test_abortPut(self):
        """
        abort drops the request: the repository hears the client went
        away and keeps what it got.
        """
        node = self.serve()
        content = randomContent(1 << 20)
        key = keyFor(content)
        offer = yield node.put(key, None)
        sink = offer.receive(len(content))
        yield Sender(sink, content, stopAt=100000).finished
        offer.abort("the sender went away")
        yield defer.DeferredList(list(self.site.live.values()))
        aborts = [c for c in self.repo.calls if c[0] == "upload.abort"]
        self.assertEqual(len(aborts), 1)
        self.assertNotIn(key.raw, self.repo.contents)
        self.assertLessEqual(len(self.repo.partial.get(key.raw, b"")),
                             100000)

    @defer.inlineCallbacks
    def test_maxConnections(self):
        """
        At most maxConnections requests are in flight; the rest queue.
        """
        for limit in (1, 2):
            node = self.serve(maxConnections=limit)
            arrived = []
            answers = []

            def checkPresent(key):
                d = defer.Deferred()
                answers.append((key, d))
                arrived.pop(0).callback(None)
                return d
            self.repo.checkPresent = checkPresent
            waits = [defer.Deferred() for _ in range(3)]
            arrived.extend(waits)
            keys = [keyFor(b"%d" % i) for i in range(3)]
            results = [node.checkPresent(key) for key in keys]
            yield defer.DeferredList(waits[:limit])
            self.assertEqual(len(answers), limit)
            self.assertEqual(len(node._slots.waiting), 3 - limit)
            self.assertEqual(node.status()["busy"], limit)
            for i in range(3):
                # Requests in flight together may arrive in any order.
                key, answer = answers[i]
                answer.callback(keys.index(key) % 2 == 0)
                if i + 1 < 3:
                    yield waits[i + 1]
            values = []
            for r in results:
                values.append((yield r))
            self.assertEqual(values, [True, False, True])
            self.assertEqual(node.status()["busy"], 0)
            self.assertLessEqual(node.status()["started"], limit)
            yield node.close()

    @defer.inlineCallbacks
    def test_downloadPaused(self):
        """
        A paused consumer stops the socket: the server's producer is
        paused by its full buffers and stays so until the consumer
        resumes.
        """
        node = self.serve()
        content = randomContent(16 << 20)
        key = self.repo.add(content)
        d = yield node.get(key, None, 0)
        (connection,) = node._connections
        collector = Collector()
        original = collector.write
        reading = []

        def write(data):
            original(data)
            if len(collector.chunks) == 1:
                collector.producer.pauseProducing()
                reactor.callLater(0, check)

        def check():
            reading.append(connection.transport in reactor.getReaders())
            collector.producer.resumeProducing()
        collector.write = write
        verdict = yield d.deliver(collector)
        yield d.finish(True)
        self.assertEqual(reading, [False])
        self.assertIs(verdict, True)
        self.assertEqual(collector.data, content)

    @defer.inlineCallbacks
    def test_invalidDownload(self):
        """
        A download the repository calls INVALID arrives one byte short
        from annexd: INVALID here.
        """
        node = self.serve()
        content = randomContent(100000)
        key = self.repo.add(content)
        original = self.repo.get

        def get(key, associatedFile, offset):
            def invalid(download):
                deliver = download.deliver

                def deliverInvalid(consumer):
                    return deliver(consumer).addCallback(lambda _: False)
                download.deliver = deliverInvalid
                return download
            return original(key, associatedFile, offset).addCallback(invalid)
        self.repo.get = get
        d, verdict, data = yield defer.Deferred.fromCoroutine(
            download(node, key))
        self.assertEqual(d.length, len(content))
        self.assertIs(verdict, False)
        self.assertEqual(data, content[:-1])


class ErrorTests(unittest.TestCase):
    """
    Error statuses and broken answers become one-line exceptions.
    """

    def serve(self, code, body):
        class Answer(resource.Resource):
            isLeaf = True

            def render(self, request):
                request.setResponseCode(code)
                return body

        port, _ = serveSite(self, Answer())
        node = HttpNode(reactor, "annex+http://127.0.0.1:%d" % (port,),
                        NODE, CLIENT, name="err")
        self.addCleanup(node.close)
        return node

    @defer.inlineCallbacks
    def test_500(self):
        node = self.serve(500, b"boom\nand more")
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryError)
        self.assertEqual(str(failure),
                         "err: checkpresent %s answered 500 Internal Server "
                         "Error: boom and more" % (keyFor(b"x"),))
        # A remove p2phttp fails with 500 (locked content) did not happen.
        self.assertEqual((yield node.remove(keyFor(b"x"))), Outcome(False))

    @defer.inlineCallbacks
    def test_unavailableStatuses(self):
        for code in (403, 502, 503):
            node = self.serve(code, b"no")
            failure = yield self.assertFailure(
                node.checkPresent(keyFor(b"x")), RepositoryUnavailable)
            self.assertIn("%d" % (code,), str(failure))

    @defer.inlineCallbacks
    def test_404Everywhere(self):
        node = self.serve(404, b"")
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("404", str(failure))
        yield self.assertFailure(node.getTimestamp(), RepositoryUnavailable)

    @defer.inlineCallbacks
    def test_longErrorText(self):
        node = self.serve(400, b"x" * 100000)
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryError)
        self.assertLess(len(str(failure)), 400)

    @defer.inlineCallbacks
    def test_badAnswers(self):
        for body in (b"not json", b"[1]", b'{"present": 1}',
                     b'{"other": true}'):
            node = self.serve(200, body)
            failure = yield self.assertFailure(
                node.checkPresent(keyFor(b"x")), RepositoryUnavailable)
            self.assertIn("unexpected answer", str(failure))

    @defer.inlineCallbacks
    def test_getWithoutLength(self):
        node = self.serve(200, b"data")
        failure = yield self.assertFailure(node.get(keyFor(b"x"), None, 0),
                                           RepositoryUnavailable)
        self.assertIn("X-git-annex-data-length header missing",
                      str(failure))
        self.assertEqual(node.status()["busy"], 0)


class ConnectionTests(unittest.TestCase):
    """
    Connections that break without an answer, answers that never come, and
    answers that come before the request is complete.
    """

    def serve(self, render, **kw):
        class Scripted(resource.Resource):
            isLeaf = True
            requests = []

            def render(self, request):
                self.requests.append(request.path)
                return render(request, len(self.requests))

        scripted = Scripted()
        port, site = serveSite(self, scripted)
        node = HttpNode(reactor, "annex+http://127.0.0.1:%d" % (port,),
                        NODE, CLIENT, name="flaky", **kw)
        self.addCleanup(node.close)
        return node, scripted

    @defer.inlineCallbacks
    def test_retryOnce(self):
        """
        A request whose connection closes without an answer (a kept
        connection the server had closed) is sent once more, on a new
        connection; not a lockcontent (it would take a second lock).
        """
        def render(request, n):
            if n == 1 or n == 3:
                request.channel.transport.abortConnection()
                return server.NOT_DONE_YET
            return b'{"present":true}'
        node, scripted = self.serve(render)
        self.assertIs((yield node.checkPresent(keyFor(b"x"))), True)
        self.assertEqual(len(scripted.requests), 2)
        self.assertTrue(node.status()["up"])
        failure = yield self.assertFailure(node.lockContent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("flaky", str(failure))
        self.assertEqual(len(scripted.requests), 3)

    @defer.inlineCallbacks
    def test_alwaysDropped(self):
        """
        A server that drops every connection is down.
        """
        def render(request, n):
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        node, scripted = self.serve(render)
        yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                 RepositoryUnavailable)
        self.assertEqual(len(scripted.requests), 2)
        self.assertFalse(node.status()["up"])

    @defer.inlineCallbacks
    def test_requestTimeout(self):
        """
        With a requestTimeout, a JSON request that gets no answer fails
        once it is over.
        """
        node, scripted = self.serve(lambda request, n: server.NOT_DONE_YET)
        node.requestTimeout = 0.2
        failure = yield self.assertFailure(node.checkPresent(keyFor(b"x")),
                                           RepositoryUnavailable)
        self.assertIn("timed out", str(failure))
        # Not sent again, and the node is not down: it answered before.
        self.assertEqual(len(scripted.requests), 1)
        self.assertEqual((node.status()["busy"], node.status()["up"]),
                         (0, True))

    @defer.inlineCallbacks
    def test_earlyAnswer(self):
        """
        A node that answers a put before its body is complete (here: a
        resource that does not stream, so annexd's site refuses the body
        as too large) fails the upload with its answer, and stops the
        sender.
        """
        def render(request, n):
            return b'{"offset":0}'
        node, _ = self.serve(render)
        content = randomContent(1 << 20)
        key = keyFor(content)
        offer = yield node.put(key, None)
        sink = offer.receive(len(content))
        sender = Sender(sink, content, chunk=16 * 1024)
        yield self.assertFailure(sink.done, RepositoryUnavailable)
        self.assertTrue(sender.stopped)
        failure = yield self.assertFailure(offer.finish(True),
                                           RepositoryError)
        self.assertIn("413", str(failure))
        self.assertEqual(node.status()["busy"], 0)


class ReadonlyReferenceTests(ReferenceMixin, unittest.TestCase):
    """
    C{git annex p2phttp --unauth-readonly --unauth-nolocking}: reading
    works, a lock is refused (no lock, as git-annex's client takes a 403),
    uploads are refused.
    """

    p2phttpOptions = ("--unauth-readonly", "--unauth-nolocking")

    def setUp(self):
        self.startReference()
        self.node = self.makeNode()

    @defer.inlineCallbacks
    def test_readonly(self):
        content = b"read only"
        key = keyFor(content)
        self.assertIs((yield self.node.checkPresent(key)), False)
        self.assertIsNone((yield self.node.lockContent(key)))
        failure = yield self.assertFailure(self.node.put(key, None),
                                           RepositoryUnavailable)
        self.assertIn("403", str(failure))
        failure = yield self.assertFailure(self.node.remove(key),
                                           RepositoryUnavailable)
        self.assertIn("403", str(failure))
        self.assertEqual(self.node.status()["busy"], 0)


# -- annexd daemon over a real cluster ------------------------------------------


class AnnexdDaemonTests(unittest.TestCase):
    """
    A node reached through an annexd daemon serving a real gateway (its
    proxied node1, a real git-annex repository).
    """

    @defer.inlineCallbacks
    def test_proxiedNode(self):
        cluster = cluster_for(self, nodes=2)
        daemon = startDaemon(self, cluster.env.env,
                             ["--repo", cluster.gateway.path, "--wideopen"])
        node1 = cluster.nodes[0]
        node = HttpNode(reactor, daemon.annexUrl(), node1.uuid.encode(),
                        b"f03a9688-c96c-41a4-ac5e-5b36249ce43e",
                        name="gw-node1")
        self.addCleanup(node.close)
        content = randomContent(400000)
        key = keyFor(content)
        outcome, _, _ = yield defer.Deferred.fromCoroutine(
            upload(node, key, content))
        self.assertTrue(outcome.ok)
        self.assertEqual(cluster.node_sha256(node1, key.raw.decode()),
                         sha256(content))
        self.assertIs((yield node.checkPresent(key)), True)
        _, verdict, data = yield defer.Deferred.fromCoroutine(
            download(node, key, 1000))
        self.assertEqual((verdict, data), (True, content[1000:]))
        lock = yield node.lockContent(key)
        self.assertEqual((yield node.remove(key)), Outcome(False, ()))
        yield lock.release()
        # (No remove right after the release: annexd answers keeplocked
        # once it has sent the node UNLOCKCONTENT, which has no reply, so
        # the node may not have let go yet.)
        self.assertEqual(cluster.node_sha256(node1, key.raw.decode()),
                         sha256(content))
        self.assertEqual(node.status()["busy"], 0)
