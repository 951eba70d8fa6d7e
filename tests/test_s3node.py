"""
Tests for L{annexd.nodes.s3}: annexd's S3 node against a real
S3-compatible server (moto's, in a child process, with SigV4 checking and
a request log: L{tests.support.s3server}), and against the real git-annex
S3 special remote using the same buckets.
"""

import atexit
import hashlib
import os
import socket
import time

import boto3
import botocore.config
from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from annexd.annex.logs import parseRemoteLog
from annexd.interfaces import (
    IDownload, IRepository, IUpload, Outcome, ProtocolNotSupported,
    RepositoryUnavailable)
from annexd.nodes.s3 import (
    ChunkLog, S3Node, S3Settings, S3Unavailable, findCredentials)
from annexd.protocol.keys import Key

from tests.support.annex import AnnexCommandError, cluster_for
from tests.support.s3server import S3Server

KiB = 1024
MiB = 1024 * 1024


def keyFor(content, extension=b".bin"):
    return Key.parse(b"SHA256E-s%d--%s%s" % (
        len(content), hashlib.sha256(content).hexdigest().encode("ascii"),
        extension))


def content(size, seed=0):
    """
    Reproducible incompressible bytes.
    """
    out = []
    block = hashlib.sha256(b"%d-%d" % (seed, size)).digest()
    counter = 0
    total = 0
    while total < size:
        piece = hashlib.sha512(block + counter.to_bytes(8, "big")).digest()
        out.append(piece)
        total += len(piece)
        counter += 1
    data = b"".join(out)[:size]
    return data


# -- the shared server -----------------------------------------------------------------

_server = None


def s3server():
    """
    The test process's S3 server (started on first use, killed by pid when
    the process exits).
    """
    global _server
    if _server is None or _server.process is None \
            or _server.process.poll() is not None:
        _server = S3Server().start()
        atexit.register(_server.stop)
    return _server


def client(server, access=None, secret=None):
    return boto3.client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1",
        aws_access_key_id=access or server.accessKey,
        aws_secret_access_key=secret or server.secretKey,
        config=botocore.config.Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


_buckets = [0]


def newBucket(server):
    _buckets[0] += 1
    name = "annexd-%d-%d-%d" % (os.getpid(), int(time.time() * 1000) % 10**8,
                                _buckets[0])
    client(server).create_bucket(Bucket=name)
    return name


# -- producers and consumers -------------------------------------------------------------


@implementer(IPushProducer)
class Sender:
    """
    Writes C{data} into C{consumer} as a push producer, for as long as it
    is not paused (stopping at C{stopAt}).
    """

    def __init__(self, consumer, data, chunk=64 * KiB, stopAt=None):
        self.consumer = consumer
        self.data = data
        self.chunk = chunk
        self.stopAt = len(data) if stopAt is None else stopAt
        self.pos = 0
        self.paused = False
        self.stopped = False
        self.pauses = 0
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
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._write()

    def stopProducing(self):
        self.stopped = True


class PullSender:
    """
    A pull producer: one chunk per C{resumeProducing}.
    """

    def __init__(self, consumer, data, chunk=32 * KiB):
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
    A consumer that keeps what it is given; with C{pauseAt}, it pauses its
    producer once it has that many bytes.
    """

    def __init__(self, pauseAt=None):
        self.chunks = []
        self.size = 0
        self.producer = None
        self.pauseAt = pauseAt
        self.pausedAt = None
        self.registrations = 0

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer
        self.registrations += 1

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.chunks.append(data)
        self.size += len(data)
        if (self.pauseAt is not None and self.pausedAt is None
                and self.size >= self.pauseAt):
            self.pausedAt = self.size
            self.producer.pauseProducing()

    @property
    def data(self):
        return b"".join(self.chunks)


async def upload(node, key, data, valid=True, chunk=64 * KiB):
    """
    Put C{data} as C{key} the way a front-end does.

    @return: C{(outcome, upload or None, sender or None)}
    """
    offer = await node.put(key, None)
    if isinstance(offer, Outcome):
        return offer, None, None
    sink = offer.receive(len(data))
    sender = Sender(sink, data, chunk)
    await sink.done
    outcome = await offer.finish(valid)
    return outcome, offer, sender


async def download(node, key, offset=0, consumer=None):
    """
    @return: C{(download, verdict, bytes)}
    """
    d = await node.get(key, None, offset)
    collector = consumer or Collector()
    verdict = await d.deliver(collector)
    await d.finish(verdict is not False)
    return d, verdict, collector.data


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


# -- settings, names and logs (no server) --------------------------------------------------


class SettingsTests(unittest.SynchronousTestCase):
    """
    C{remote.log} fields, read as git-annex reads them.
    """

    def test_initremoteDefaults(self):
        """
        What C{initremote type=S3 ... requeststyle=path} leaves: path-style
        urls on the given host and port, region us-east-1.
        """
        s = S3Settings({
            "bucket": "Annex-Bucket", "datacenter": "US",
            "encryption": "none", "host": "127.0.0.1", "port": "9000",
            "protocol": "http", "requeststyle": "path",
            "signature": "v4", "storageclass": "STANDARD", "type": "S3"})
        self.assertIsNone(s.unsupported)
        self.assertEqual(s.bucket, "annex-bucket")
        self.assertEqual((s.scheme, s.port, s.hostHeader),
                         ("http", 9000, "127.0.0.1:9000"))
        self.assertEqual(s.region, "us-east-1")
        self.assertEqual(s.path(b"SHA256E-s1--ab.txt"),
                         "/annex-bucket/SHA256E-s1--ab.txt")
        self.assertEqual(s.headers, [("x-amz-storage-class", "STANDARD")])

    def test_amazon(self):
        """
        On Amazon's host, the datacenter picks the endpoint and region;
        requests are virtual-host style; port 80 with https is 443.
        """
        s = S3Settings({"bucket": "b1x", "datacenter": "EU", "port": "80",
                        "protocol": "https"})
        self.assertEqual((s.scheme, s.port), ("https", 443))
        self.assertEqual(s.hostHeader, "b1x.s3-eu-west-1.amazonaws.com")
        self.assertEqual(s.region, "eu-west-1")
        self.assertEqual(s.path(b"k"), "/k")
        s = S3Settings({"bucket": "b1x", "datacenter": "US",
                        "port": "80"})
        self.assertEqual((s.scheme, s.hostHeader, s.region),
                         ("http", "b1x.s3.amazonaws.com", "us-east-1"))
        s = S3Settings({"bucket": "b1x", "datacenter": "ap-south-1",
                        "region": "ap-south-1", "port": "443"})
        self.assertEqual((s.scheme, s.hostHeader, s.region),
                         ("https", "b1x.s3-ap-south-1.amazonaws.com",
                          "ap-south-1"))

    def test_sizes(self):
        s = S3Settings({"bucket": "bbb", "chunk": "1MiB",
                        "partsize": "5 MB", "fileprefix": "pre/"})
        self.assertEqual((s.chunkSize, s.partSize, s.prefix),
                         (MiB, 5000000, b"pre/"))
        self.assertIsNone(S3Settings({"bucket": "bbb", "chunk": "0"})
                          .chunkSize)

    def test_unsupported(self):
        for extra in [{"encryption": "shared"}, {"exporttree": "yes"},
                      {"importtree": "yes"}, {"versioning": "yes"},
                      {"chunksize": "1MiB"}, {"host": "s3.us.archive.org"},
                      {"requeststyle": "vhost"}, {"port": "x"},
                      {"chunk": "lots"}]:
            config = {"bucket": "bbb", "encryption": "none"}
            config.update(extra)
            self.assertIsNotNone(S3Settings(config).unsupported, extra)
        self.assertIsNotNone(S3Settings({}).unsupported)

    def test_metaHeaders(self):
        s = S3Settings({"bucket": "bbb", "x-amz-meta-owner": "me",
                        "public": "yes", "x-amz-tagging": "a=b"})
        self.assertEqual(s.headers, [("x-amz-acl", "public-read"),
                                     ("x-amz-meta-owner", "me"),
                                     ("x-amz-tagging", "a=b")])

    def test_objectNames(self):
        """
        Chunk keys carry -S and -C in git-annex's field order; URL keys are
        never chunked; an empty content is one empty chunk.
        """
        key = Key.parse(b"SHA256E-s3145733--abc.txt")
        node = S3Node(reactor, b"u-u-i-d", "s3", {
            "bucket": "bbb", "chunk": "1MiB"}, {}, None, environment={})
        self.addCleanup(node.close)
        objects, chunk = node._plan(key, 3145733)
        self.assertEqual(chunk, MiB)
        self.assertEqual(objects, [
            (b"SHA256E-s3145733-S1048576-C1--abc.txt", MiB),
            (b"SHA256E-s3145733-S1048576-C2--abc.txt", MiB),
            (b"SHA256E-s3145733-S1048576-C3--abc.txt", MiB),
            (b"SHA256E-s3145733-S1048576-C4--abc.txt", 5)])
        wormKey = Key.parse(b"WORM-s10-m1700000000--a b")
        objects, chunk = node._plan(wormKey, 10)
        self.assertEqual(objects,
                         [(b"WORM-s10-m1700000000-S1048576-C1--a b", 10)])
        urlKey = Key.parse(b"URL-s10--http://example.com/x")
        self.assertEqual(node._plan(urlKey, 10),
                         ([(b"URL-s10--http://example.com/x", 10)], None))
        empty = Key.parse(b"SHA256E-s0--e3b0.txt")
        self.assertEqual(node._plan(empty, 0),
                         ([(b"SHA256E-s0-S1048576-C1--e3b0.txt", 0)], MiB))

    def test_credentialSearch(self):
        """
        Environment, then the gateway's creds cache, then the embedded
        (unencrypted) s3creds.
        """
        gitDir = self.mktemp()
        os.makedirs(os.path.join(gitDir, "annex", "creds"))
        settings = S3Settings({"bucket": "bbb", "s3creds": (
            "ZW1iZWRkZWQKc2VjcmV0Cg==")})     # "embedded\nsecret\n"
        self.assertEqual(findCredentials(b"uu", settings, gitDir, {})[:3],
                         ("embedded", "secret", None))
        with open(os.path.join(gitDir, "annex", "creds", "uu"), "w") as f:
            f.write("cached\nsecret2\n")
        found = findCredentials(b"uu", settings, gitDir, {})
        self.assertEqual(found[:3], ("cached", "secret2", None))
        self.assertIn("annex/creds/uu", found[3])
        found = findCredentials(b"uu", settings, gitDir, {
            "AWS_ACCESS_KEY_ID": "env", "AWS_SECRET_ACCESS_KEY": "s3",
            "AWS_SESSION_TOKEN": "tok"})
        self.assertEqual(found[:3], ("env", "s3", "tok"))
        self.assertIsNone(findCredentials(b"other", S3Settings(
            {"bucket": "bbb"}), gitDir, {}))


# -- the node against the server ------------------------------------------------------------


class S3ServerMixin:
    """
    A fresh bucket on the shared server per test, and nodes on it.
    """

    def setUp(self):
        self.server = s3server()
        self.bucket = newBucket(self.server)
        self.s3 = client(self.server)

    def config(self, **extra):
        config = {
            "bucket": self.bucket, "datacenter": "US", "encryption": "none",
            "host": "127.0.0.1", "port": str(self.server.port),
            "protocol": "http", "requeststyle": "path", "signature": "v4",
            "storageclass": "STANDARD", "type": "S3"}
        config.update(extra)
        return config

    def makeNode(self, credentials=True, repoPath=None, environment=None,
                 maxConnections=4, **extra):
        if credentials is True:
            credentials = (self.server.accessKey, self.server.secretKey)
        node = S3Node(reactor, b"8e0c9a9e-0000-4000-8000-00000000c0de", "s3",
                      self.config(**extra), {}, repoPath,
                      environment={} if environment is None else environment,
                      credentials=credentials, maxConnections=maxConnections)
        self.addCleanup(node.close)
        return node

    def objects(self):
        """
        The names of the objects in the bucket.
        """
        answer = self.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in answer.get("Contents", []))

    def uploadsInProgress(self):
        answer = self.s3.list_multipart_uploads(Bucket=self.bucket)
        return answer.get("Uploads", [])

    def getObject(self, name):
        return self.s3.get_object(Bucket=self.bucket, Key=name)["Body"].read()

    def requests(self, method=None, contains=""):
        """
        The server's log of this test's bucket.
        """
        prefix = "/%s" % (self.bucket,)
        return [e for e in self.server.log()
                if e["uri"].startswith(prefix)
                and (method is None or e["method"] == method)
                and contains in e["uri"]]


class S3NodeTests(S3ServerMixin, unittest.TestCase):
    """
    annexd's S3 node, alone, against the server.
    """

    timeout = 20

    async def test_roundTrip(self):
        """
        A PUT streams the content (signed, UNSIGNED-PAYLOAD, the Host with
        its port) into one object named after the key; HEAD finds it; a
        GET streams it back.
        """
        node = self.makeNode()
        self.assertTrue(verifyObject(IRepository, node))
        data = content(300 * KiB)
        key = keyFor(data)
        self.assertFalse(await node.checkPresent(key))
        offer = await node.put(key, b"file.bin")
        self.assertTrue(verifyObject(IUpload, offer))
        self.assertEqual(offer.offset, 0)
        sink = offer.receive(len(data))
        Sender(sink, data)
        await sink.done
        self.assertEqual(await offer.finish(True), Outcome(True))
        self.assertEqual(self.objects(), [key.raw.decode()])
        self.assertEqual(self.getObject(key.raw.decode()), data)
        self.assertTrue(await node.checkPresent(key))
        d, verdict, got = await download(node, key)
        self.assertTrue(verifyObject(IDownload, d))
        self.assertEqual((d.length, verdict), (len(data), True))
        self.assertEqual(got, data)
        puts = self.requests("PUT", key.raw.decode())
        self.assertEqual(len(puts), 1)
        self.assertEqual((puts[0]["status"], puts[0]["received"]),
                         (200, len(data)))
        self.assertFalse(puts[0]["hostWithoutPort"])
        self.assertIn("SignedHeaders=host;x-amz-content-sha256;x-amz-date",
                      puts[0]["authorization"])
        self.assertEqual(puts[0]["payload"], "UNSIGNED-PAYLOAD")
        heads = self.requests("HEAD", key.raw.decode())
        self.assertEqual(heads[0]["payload"], hashlib.sha256(b"").hexdigest())

    async def test_alreadyHave(self):
        node = self.makeNode()
        data = content(1000)
        key = keyFor(data)
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        outcome, offer, _ = await upload(node, key, data)
        self.assertEqual(outcome, Outcome(True, alreadyHad=True))
        self.assertIsNone(offer)
        self.assertEqual(len(self.requests("PUT", key.raw.decode())), 1)

    async def test_emptyContent(self):
        node = self.makeNode()
        key = keyFor(b"")
        self.assertEqual((await upload(node, key, b""))[0], Outcome(True))
        self.assertEqual(self.getObject(key.raw.decode()), b"")
        d, verdict, got = await download(node, key)
        self.assertEqual((d.length, verdict, got), (0, True, b""))

    async def test_missing(self):
        """
        A key S3 does not have: length 0, INVALID.
        """
        node = self.makeNode()
        key = keyFor(b"nothing here")
        d, verdict, got = await download(node, key)
        self.assertEqual((d.length, verdict, got), (0, False, b""))
        self.assertFalse(await node.checkPresent(key))

    async def test_offset(self):
        """
        A GET from an offset asks S3 for the rest only (Range), and S3
        serves only that many bytes.
        """
        node = self.makeNode()
        data = content(700 * KiB, 1)
        key = keyFor(data)
        await upload(node, key, data)
        self.server.clearLog()
        offset = 500 * KiB + 7
        d, verdict, got = await download(node, key, offset)
        self.assertEqual((d.length, verdict), (len(data) - offset, True))
        self.assertEqual(got, data[offset:])
        gets = self.server.waitForLog(
            lambda log: any(e["method"] == "GET" for e in log))
        gets = [e for e in gets if e["method"] == "GET"]
        self.assertEqual(len(gets), 1)
        self.assertEqual(gets[0]["range"], "bytes=%d-" % (offset,))
        self.assertEqual(gets[0]["status"], 206)
        self.assertEqual(gets[0]["sent"], len(data) - offset)
        # At the very end: nothing to send, and present.
        d, verdict, got = await download(node, key, len(data))
        self.assertEqual((d.length, verdict, got), (0, True, b""))

    async def heldBack(self, node, key, data, valid):
        """
        Upload C{data} as C{key}, and give the verdict only once S3 has
        been sending it for a while: the PUT is still in progress (its
        last byte is missing) and nothing is visible yet.

        @return: the outcome.
        """
        name = key.raw.decode()
        before = len(self.requests("PUT", name))
        offer = await node.put(key, None)
        sink = offer.receive(len(data))
        Sender(sink, data)
        await sink.done
        for _ in range(200):
            if self.requests("PUT", name)[before:]:
                break
            await sleep(0.02)
        await sleep(0.3)
        # (The server reads bodies 64 KiB at a time: its count lags.)
        puts = self.requests("PUT", name)[before:]
        self.assertEqual([e["done"] for e in puts], [False])
        self.assertGreaterEqual(puts[0]["received"], len(data) - 64 * KiB)
        self.assertEqual(self.objects(), [])
        return await offer.finish(valid)

    async def test_badContent(self):
        """
        Content that does not match its key is never visible: the PUT's
        last byte is held back until the content is verified, and the
        connection is dropped instead.
        """
        node = self.makeNode()
        data = content(200 * KiB, 2)
        key = keyFor(data)
        bad = data[:-1] + bytes([data[-1] ^ 1])
        self.assertEqual(await self.heldBack(node, key, bad, True),
                         Outcome(False))
        self.assertEqual(self.objects(), [])
        self.assertFalse(await node.checkPresent(key))
        # Quickly too (the connection may be reset before S3 even reads
        # the request).
        outcome, _, _ = await upload(node, key, bad)
        self.assertEqual(outcome, Outcome(False))
        self.assertEqual(self.objects(), [])
        # The good content afterwards is stored.
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        self.assertEqual(self.getObject(key.raw.decode()), data)

    async def test_senderSaysInvalid(self):
        node = self.makeNode()
        data = content(100 * KiB, 3)
        key = keyFor(data)
        self.assertEqual(await self.heldBack(node, key, data, False),
                         Outcome(False))
        self.assertEqual(self.objects(), [])
        # A good verdict sends the last byte.
        self.assertEqual(await self.heldBack(node, key, data, True),
                         Outcome(True))
        self.assertEqual(self.getObject(key.raw.decode()), data)

    async def test_cutUpload(self):
        """
        An upload that ends short (finish) or is aborted leaves nothing.
        """
        node = self.makeNode(maxConnections=1)
        data = content(400 * KiB, 4)
        key = keyFor(data)
        offer = await node.put(key, None)
        sink = offer.receive(len(data))
        sender = Sender(sink, data, stopAt=150 * KiB)
        await sender.finished
        with self.assertRaises(RepositoryUnavailable) as caught:
            await offer.finish(True)
        self.assertIn("ended after %d of %d bytes" % (150 * KiB, len(data)),
                      str(caught.exception))
        self.assertEqual(self.objects(), [])
        # Aborted: the slot is free again once it is cleaned up.
        offer = await node.put(key, None)
        sink = offer.receive(len(data))
        sender = Sender(sink, data, stopAt=200 * KiB)
        await sender.finished
        offer.abort("the client went away")
        await offer.completed
        self.assertEqual(self.objects(), [])
        self.assertFalse(await node.checkPresent(key))
        self.assertEqual(node.status()["busy"], 0)

    async def test_multipart(self):
        """
        Above the part size: a multipart upload whose parts stream one
        after the other, completed once the content is verified.
        """
        node = self.makeNode(partsize="128KiB")
        data = content(300 * KiB + 5, 5)
        key = keyFor(data)
        outcome, _, sender = await upload(node, key, data, chunk=48 * KiB)
        self.assertEqual(outcome, Outcome(True))
        log = self.server.waitForLog(lambda log: any(
            e["method"] == "POST" and "uploadId" in e["uri"] for e in log))
        self.assertEqual(self.getObject(key.raw.decode()), data)
        mine = [e for e in log if key.raw.decode() in e["uri"]]
        kinds = [(e["method"], e["uri"].partition("?")[2].split("=")[0])
                 for e in mine if e["method"] != "HEAD"]
        self.assertEqual(kinds, [("POST", "uploads"),
                                 ("PUT", "partNumber"),
                                 ("PUT", "partNumber"),
                                 ("PUT", "partNumber"),
                                 ("POST", "uploadId")])
        parts = [e["received"] for e in mine if "partNumber" in e["uri"]]
        self.assertEqual(parts, [128 * KiB, 128 * KiB, 44 * KiB + 5])
        self.assertEqual({e["payload"] for e in mine
                          if "partNumber" in e["uri"]}, {"UNSIGNED-PAYLOAD"})
        # The small CompleteMultipartUpload body is signed.
        complete = mine[-1]
        self.assertNotIn(complete["payload"], ("UNSIGNED-PAYLOAD",
                                               hashlib.sha256(b"").hexdigest()))
        # The sender was paused while a part had nowhere to go.
        self.assertGreater(sender.pauses, 0)
        d, verdict, got = await download(node, key)
        self.assertEqual((verdict, got), (True, data))

    async def test_multipartBadContent(self):
        """
        A multipart upload of bad content is aborted, never completed.
        """
        node = self.makeNode(partsize="128KiB")
        data = content(300 * KiB, 6)
        key = keyFor(data)
        bad = b"x" + data[1:]
        outcome, _, _ = await upload(node, key, bad)
        self.assertEqual(outcome, Outcome(False))
        self.assertEqual(self.objects(), [])
        self.assertEqual(self.uploadsInProgress(), [])
        log = self.requests(contains=key.raw.decode())
        self.assertFalse([e for e in log if e["method"] == "POST"
                          and "uploadId=" in e["uri"]])
        self.assertTrue([e for e in log if e["method"] == "DELETE"
                         and "uploadId=" in e["uri"]])

    async def test_multipartCut(self):
        node = self.makeNode(partsize="128KiB")
        data = content(400 * KiB, 7)
        key = keyFor(data)
        offer = await node.put(key, None)
        sink = offer.receive(len(data))
        sender = Sender(sink, data, stopAt=300 * KiB)
        await sender.finished
        offer.abort("gone")
        await offer.completed
        self.assertEqual(self.objects(), [])
        self.assertEqual(self.uploadsInProgress(), [])

    async def test_chunked(self):
        """
        With chunk=, the content is stored as chunk keys; reading from an
        offset fetches only from the chunk it falls in; remove deletes
        every chunk.
        """
        node = self.makeNode(chunk="100KiB")
        data = content(250 * KiB, 8)
        key = keyFor(data)
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        base = key.raw.decode().split("--")
        names = ["%s-S102400-C%d--%s" % (base[0], n, base[1])
                 for n in (1, 2, 3)]
        self.assertEqual(self.objects(), sorted(names))
        self.assertEqual(self.getObject(names[2]), data[200 * KiB:])
        self.assertTrue(await node.checkPresent(key))
        self.server.clearLog()
        offset = 150 * KiB
        d, verdict, got = await download(node, key, offset)
        self.assertEqual((d.length, verdict), (len(data) - offset, True))
        self.assertEqual(got, data[offset:])
        # (Without a chunk log, the unchunked object is tried first, as
        # git-annex does: 404.)
        gets = [e for e in self.server.waitForLog(
            lambda log: len([e for e in log if e["method"] == "GET"
                             and e["status"] != 404]) >= 2)
            if e["method"] == "GET" and e["status"] != 404]
        self.assertEqual([(e["uri"].rsplit("/", 1)[1], e["range"],
                           e["sent"]) for e in gets],
                         [(names[1], "bytes=%d-" % (50 * KiB,), 50 * KiB),
                          (names[2], None, 50 * KiB)])
        # A chunk missing: absent.
        self.s3.delete_object(Bucket=self.bucket, Key=names[2])
        self.assertFalse(await node.checkPresent(key))
        self.assertEqual((await node.remove(key)), Outcome(True))
        self.assertEqual(self.objects(), [])

    async def test_chunkedBadContent(self):
        """
        Chunks stored before a bad verdict are deleted again; the last one
        was never complete.
        """
        node = self.makeNode(chunk="100KiB")
        data = content(250 * KiB, 9)
        key = keyFor(data)
        bad = data[:-10] + b"0123456789"
        outcome, _, _ = await upload(node, key, bad)
        self.assertEqual(outcome, Outcome(False))
        self.assertEqual(self.objects(), [])
        deletes = self.requests("DELETE", key.raw.decode().split("--")[1])
        self.assertEqual(len(deletes), 2)

    async def test_chunkedCut(self):
        node = self.makeNode(chunk="100KiB")
        data = content(250 * KiB, 10)
        key = keyFor(data)
        offer = await node.put(key, None)
        sink = offer.receive(len(data))
        sender = Sender(sink, data, stopAt=220 * KiB)
        await sender.finished
        with self.assertRaises(RepositoryUnavailable):
            await offer.finish(True)
        self.assertEqual(self.objects(), [])

    async def test_pullProducer(self):
        node = self.makeNode(partsize="128KiB")
        data = content(200 * KiB, 11)
        key = keyFor(data)
        offer = await node.put(key, None)
        sink = offer.receive(len(data))
        sender = PullSender(sink, data)
        await sink.done
        self.assertEqual(await offer.finish(None), Outcome(True))
        self.assertGreaterEqual(sender.pulls, 7)
        self.assertEqual(self.getObject(key.raw.decode()), data)

    async def test_downloadBackpressure(self):
        """
        A consumer that pauses the download stops S3's body being read;
        resuming gets the rest.
        """
        node = self.makeNode()
        data = content(3 * MiB, 12)
        key = keyFor(data)
        await upload(node, key, data)
        d = await node.get(key, None, 0)
        collector = Collector(pauseAt=64 * KiB)
        delivering = d.deliver(collector)
        for _ in range(50):
            if collector.pausedAt is not None:
                break
            await sleep(0.01)
        await sleep(0.3)
        held = collector.size
        self.assertLess(held, len(data))
        await sleep(0.2)
        self.assertEqual(collector.size, held)
        collector.producer.resumeProducing()
        self.assertTrue(await delivering)
        await d.finish(True)
        self.assertEqual(collector.data, data)

    async def test_specialCharacters(self):
        """
        Keys with characters that need escaping in urls (WORM keys made
        from file names) are named as is in the bucket.
        """
        node = self.makeNode()
        data = b"odd names\n"
        key = Key.parse(b"WORM-s10-m1700000000--a b&c%d+e=f:g~h,i;j'k")
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        self.assertEqual(self.objects(), [key.raw.decode()])
        self.assertTrue(await node.checkPresent(key))
        d, verdict, got = await download(node, key, 3)
        self.assertEqual(got, data[3:])
        self.assertEqual(await node.remove(key), Outcome(True))
        self.assertEqual(self.objects(), [])

    async def test_remove(self):
        node = self.makeNode()
        data = content(10 * KiB, 13)
        key = keyFor(data)
        await upload(node, key, data)
        self.assertEqual(await node.remove(key), Outcome(True))
        self.assertEqual(self.objects(), [])
        self.assertFalse(await node.checkPresent(key))
        # Removing what is not there is fine, as for git-annex.
        self.assertEqual(await node.remove(key), Outcome(True))

    async def test_fileprefix(self):
        node = self.makeNode(fileprefix="annex/objects-")
        data = content(1000, 14)
        key = keyFor(data)
        await upload(node, key, data)
        self.assertEqual(self.objects(),
                         ["annex/objects-" + key.raw.decode()])
        self.assertEqual((await download(node, key))[2], data)

    async def test_noClockNoLocks(self):
        node = self.makeNode()
        key = keyFor(b"x")
        self.assertIsNone(await node.lockContent(key))
        with self.assertRaises(ProtocolNotSupported):
            await node.getTimestamp()
        with self.assertRaises(ProtocolNotSupported):
            await node.remove(key, before=5)
        self.assertEqual(node.bypass, ())

    async def test_dataPresent(self):
        node = self.makeNode()
        data = content(500, 15)
        key = keyFor(data)
        offer = await node.put(key, None)
        self.assertEqual(await offer.dataPresent(), Outcome(False))
        await upload(node, key, data)
        # (Present now: put says so before any DATA-PRESENT.)
        self.assertEqual((await node.put(key, None)),
                         Outcome(True, alreadyHad=True))

    async def test_maxConnections(self):
        """
        A download holds one of C{maxConnections} slots until finished.
        """
        node = self.makeNode(maxConnections=1)
        data = content(1000, 17)
        key = keyFor(data)
        await upload(node, key, data)
        d = await node.get(key, None, 0)
        waiting = node.checkPresent(key)
        await sleep(0.2)
        self.assertFalse(waiting.called)
        self.assertEqual(node.status()["busy"], 1)
        await d.deliver(Collector())
        await d.finish(True)
        self.assertTrue(await waiting)

    async def test_status(self):
        node = self.makeNode(maxConnections=3)
        data = content(1000, 16)
        key = keyFor(data)
        await upload(node, key, data)
        status = node.status()
        self.assertEqual(set(status), {"name", "uuid", "up", "idle", "busy",
                                       "started", "error", "retryIn",
                                       "maxSessions"})
        self.assertEqual((status["name"], status["up"], status["busy"],
                          status["error"], status["maxSessions"]),
                         ("s3", True, 0, None, 3))
        self.assertGreaterEqual(status["started"], 1)
        self.assertIsInstance(status["idle"], int)


class S3FailureTests(S3ServerMixin, unittest.TestCase):
    """
    Errors become L{RepositoryUnavailable} / L{RepositoryError} with S3's
    error code and message, never a traceback.
    """

    timeout = 20

    async def test_serverDown(self):
        """
        Nothing listening: RepositoryUnavailable at once, the node marked
        down, and later requests refused without trying.
        """
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        node = self.makeNode(port=str(port))
        key = keyFor(b"x")
        started = time.monotonic()
        with self.assertRaises(RepositoryUnavailable) as caught:
            await node.checkPresent(key)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("Connection refused", str(caught.exception))
        status = node.status()
        self.assertFalse(status["up"])
        self.assertIn("Connection refused", status["error"])
        with self.assertRaises(RepositoryUnavailable) as caught:
            await node.put(key, None)
        self.assertIn("is down", str(caught.exception))

    async def test_wrongSecret(self):
        node = self.makeNode(credentials=(self.server.accessKey, "wrong"))
        key = keyFor(b"x")
        with self.assertRaises(S3Unavailable) as caught:
            await node.get(key, None, 0)
        e = caught.exception
        self.assertEqual((e.status, e.code), (403, "SignatureDoesNotMatch"))
        self.assertIn("403 SignatureDoesNotMatch: The request signature we "
                      "calculated does not match", str(e))
        # HEAD answers have no body: the status says it.
        with self.assertRaises(S3Unavailable) as caught:
            await node.checkPresent(key)
        self.assertIn("403", str(caught.exception))
        self.assertIn("wrong credentials (from annexd's configuration)",
                      str(caught.exception))
        # Not marked down: the server answered.
        self.assertTrue(node.status()["up"])

    async def test_unknownAccessKey(self):
        node = self.makeNode(credentials=("AKIANOSUCHKEY", "x"))
        data = content(100 * KiB, 20)
        with self.assertRaises(S3Unavailable) as caught:
            await node.remove(keyFor(data))
        self.assertEqual(caught.exception.code, "InvalidAccessKeyId")
        self.assertIn("InvalidAccessKeyId", str(caught.exception))

    async def test_putRefused(self):
        """
        A PUT that S3 refuses fails the upload with S3's error.
        """
        node = self.makeNode()
        data = content(100 * KiB, 21)
        key = keyFor(data)
        self.server.fault("PUT", key.raw.decode(), status=500,
                          code="InternalError")
        offer = await node.put(key, None)
        sink = offer.receive(len(data))
        Sender(sink, data)
        await sink.done
        with self.assertRaises(S3Unavailable) as caught:
            await offer.finish(True)
        self.assertIn("InternalError", str(caught.exception))
        self.assertEqual(self.objects(), [])

    async def test_serverError(self):
        node = self.makeNode()
        key = keyFor(b"x")
        self.server.fault("GET", key.raw.decode(), status=503,
                          code="SlowDown")
        with self.assertRaises(S3Unavailable) as caught:
            await node.get(key, None, 0)
        self.assertEqual((caught.exception.status, caught.exception.code),
                         (503, "SlowDown"))
        self.assertIn("503 SlowDown: injected fault", str(caught.exception))

    async def test_noSuchBucket(self):
        node = self.makeNode(bucket="annexd-no-such-bucket")
        with self.assertRaises(S3Unavailable) as caught:
            await node.get(keyFor(b"x"), None, 0)
        self.assertEqual(caught.exception.code, "NoSuchBucket")

    async def test_noCredentials(self):
        node = self.makeNode(credentials=None)
        with self.assertRaises(RepositoryUnavailable) as caught:
            await node.checkPresent(keyFor(b"x"))
        self.assertIn("AWS_ACCESS_KEY_ID", str(caught.exception))
        self.assertFalse(node.status()["up"])

    async def test_unsupportedRemote(self):
        node = self.makeNode(encryption="hybrid")
        with self.assertRaises(RepositoryUnavailable) as caught:
            await node.put(keyFor(b"x"), None)
        self.assertIn("encrypted remotes", str(caught.exception))
        self.assertIn("unsupported", node.status()["error"])

    async def test_closed(self):
        node = self.makeNode()
        await node.close()
        with self.assertRaises(RepositoryUnavailable):
            await node.checkPresent(keyFor(b"x"))


# -- with git-annex ---------------------------------------------------------------------------


class GitAnnexTests(S3ServerMixin, unittest.TestCase):
    """
    annexd and git-annex's S3 special remote on the same bucket: each
    reads what the other stored.  annexd's node gets no credentials nor
    AWS variables: it finds them in the gateway's creds cache, where
    C{initremote} put them.
    """

    timeout = 240

    def setUp(self):
        S3ServerMixin.setUp(self)
        self.cluster = cluster_for(self, nodes=1)
        self.gw = self.cluster.gateway.path
        self.env = self.cluster.env
        self.env.git(self.gw, "config", "annex.security.allowed-ip-addresses",
                     "127.0.0.1")

    def initremote(self, *options):
        """
        C{git annex initremote s3 type=S3 ...} in the gateway (git-annex
        creates the bucket, and caches the credentials in
        C{annex/creds/<uuid>}).

        What git-annex 10.2026 needs for a server on 127.0.0.1:
        C{annex.security.allowed-ip-addresses} (set in L{setUp}), C{host},
        C{port}, C{protocol=http}, C{requeststyle=path}, C{signature=v4}
        (without it, v2 for hosts other than Amazon's) and C{region=} (the
        server's: without it, git-annex signs for a region named after the
        host, "127.0.0.1", which S3 servers refuse).

        @return: the remote's uuid (bytes) and its remote.log fields.
        """
        self.bucket = self.bucket + "-ga"
        self.annex("initremote", "s3", "type=S3", "encryption=none",
                   "host=127.0.0.1", "port=%d" % (self.server.port,),
                   "protocol=http", "requeststyle=path",
                   "bucket=%s" % (self.bucket,), "signature=v4",
                   "region=us-east-1", *options, env={
                       "AWS_ACCESS_KEY_ID": self.server.accessKey,
                       "AWS_SECRET_ACCESS_KEY": self.server.secretKey})
        uuid = self.env.config(self.gw, "remote.s3.annex-uuid").encode()
        log = self.env.run(["git", "cat-file", "-p", "git-annex:remote.log"],
                           cwd=self.gw).stdout
        return uuid, parseRemoteLog(log)[uuid]

    def annex(self, *args, **kw):
        return self.env.annex(self.gw, *args, **kw)

    def gatewayNode(self, uuid, config, **changes):
        config = dict(config)
        config.update(changes)
        environment = {k: v for k, v in self.env.env.items()
                       if not k.startswith("AWS_")}
        node = S3Node(reactor, uuid, "s3", config, {}, self.gw,
                      environment=environment)
        self.addCleanup(node.close)
        self.assertEqual(node.credentialSource, os.path.join(
            self.gw, "annex", "creds", uuid.decode()))
        return node

    def gitAnnexStores(self, data, name="f"):
        """
        Content that git-annex (in the gateway) has and copies to s3.

        @return: its key.
        """
        path = os.path.join(self.cluster.base_dir, name)
        with open(path, "wb") as f:
            f.write(data)
        key = keyFor(data)
        self.annex("setkey", key.raw.decode(), path)
        self.annex("copy", "--to", "s3", "--key", key.raw.decode())
        return key

    def gitAnnexGets(self, key, uuid):
        """
        git-annex checks the content in s3 (fsck --from s3) and gets it.

        @return: the bytes it got.
        """
        raw = key.raw.decode()
        self.annex("setpresentkey", raw, uuid.decode(), "1")
        self.annex("fsck", "--from", "s3", "--key", raw)
        self.annex("get", "--from", "s3", "--key", raw)
        location = self.annex("contentlocation", raw).strip()
        with open(os.path.join(self.gw, location), "rb") as f:
            return f.read()

    def gitAnnexHas(self, key):
        result = self.env.run(["git-annex", "checkpresentkey",
                               key.raw.decode(), "s3"], cwd=self.gw,
                              check=False)
        if result.returncode not in (0, 1):
            raise AnnexCommandError(result.args, self.gw, result.returncode,
                                    result.stdout, result.stderr)
        return result.returncode == 0

    async def test_annexdStoresGitAnnexReads(self):
        uuid, config = self.initremote()
        node = self.gatewayNode(uuid, config)
        data = content(700 * KiB, 30)
        key = keyFor(data)
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        self.assertTrue(self.gitAnnexHas(key))
        self.assertEqual(self.gitAnnexGets(key, uuid), data)

    async def test_gitAnnexStoresAnnexdReads(self):
        uuid, config = self.initremote()
        data = content(600 * KiB, 31)
        key = self.gitAnnexStores(data)
        node = self.gatewayNode(uuid, config)
        self.assertTrue(await node.checkPresent(key))
        self.assertEqual((await download(node, key))[2], data)
        self.server.clearLog()
        d, verdict, got = await download(node, key, 400 * KiB)
        self.assertEqual((verdict, got), (True, data[400 * KiB:]))
        gets = [e for e in self.server.waitForLog(lambda log: any(
            e["method"] == "GET" for e in log)) if e["method"] == "GET"]
        self.assertEqual([(e["range"], e["sent"]) for e in gets],
                         [("bytes=%d-" % (400 * KiB,), 200 * KiB)])
        # annexd removes it; git-annex sees it gone.
        self.assertEqual(await node.remove(key), Outcome(True))
        self.assertFalse(self.gitAnnexHas(key))

    async def test_embeddedCredentials(self):
        """
        embedcreds=yes without encryption: the credentials are in
        remote.log (s3creds, base64), found there when neither the
        environment nor the creds cache has them.
        """
        uuid, config = self.initremote("embedcreds=yes")
        self.assertIn("s3creds", config)
        os.unlink(os.path.join(self.gw, "annex", "creds", uuid.decode()))
        node = S3Node(reactor, uuid, "s3", config, {}, self.gw,
                      environment={})
        self.addCleanup(node.close)
        self.assertEqual(node.credentialSource,
                         "the remote's embedded s3creds")
        data = content(1000, 39)
        key = keyFor(data)
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        self.assertTrue(self.gitAnnexHas(key))

    async def test_chunkedBothWays(self):
        """
        chunk=1MiB: annexd's chunks and chunk log are git-annex's, and the
        other way round.
        """
        uuid, config = self.initremote("chunk=1MiB")
        node = self.gatewayNode(uuid, config)
        data = content(2 * MiB + 300 * KiB, 32)
        key = keyFor(data)
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        base = key.raw.decode().split("--")
        self.assertEqual(self.objects(), sorted(
            ["annex-uuid"] + ["%s-S1048576-C%d--%s" % (base[0], n, base[1])
                              for n in (1, 2, 3)]))
        log = ChunkLog(self.gw, reactor)
        self.addCleanup(log.close)
        self.assertEqual(await log.read(key, uuid), [(MiB, 3)])
        self.assertEqual(self.gitAnnexGets(key, uuid), data)

        other = content(2 * MiB + 5, 33)
        otherKey = self.gitAnnexStores(other, "g")
        self.assertEqual(await log.read(otherKey, uuid), [(MiB, 3)])
        self.server.clearLog()
        offset = MiB + 1000
        d, verdict, got = await download(node, otherKey, offset)
        self.assertEqual((d.length, verdict), (len(other) - offset, True))
        self.assertEqual(got, other[offset:])
        gets = [e for e in self.server.waitForLog(lambda log: len(
            [e for e in log if e["method"] == "GET"]) >= 2)
            if e["method"] == "GET"]
        self.assertEqual([(e["uri"].rsplit("-C", 1)[1][:1], e["range"],
                           e["sent"]) for e in gets],
                         [("2", "bytes=1000-", MiB - 1000), ("3", None, 5)])

        # annexd removes what git-annex stored: every chunk, and the log
        # says so.
        self.assertEqual(await node.remove(otherKey), Outcome(True))
        self.assertFalse(self.gitAnnexHas(otherKey))
        self.assertEqual(await log.read(otherKey, uuid), [])
        self.assertEqual([o for o in self.objects()
                          if otherKey.raw.decode().split("--")[1] in o], [])

    async def test_chunkLogNotSpeculation(self):
        """
        Chunks of another size than the remote's chunk= setting are found
        through the chunk log, both ways: git-annex finds annexd's, annexd
        finds git-annex's.
        """
        uuid, config = self.initremote("chunk=1MiB")
        # annexd configured with another chunk size than git-annex's.
        node = self.gatewayNode(uuid, config, chunk="256KiB")
        data = content(700 * KiB, 34)
        key = keyFor(data)
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        self.assertEqual(len([o for o in self.objects() if "-S262144-C" in o]),
                         3)
        self.assertTrue(self.gitAnnexHas(key))
        self.assertEqual(self.gitAnnexGets(key, uuid), data)
        # git-annex's 1MiB chunks of a 1.5 MiB file, read by the 256KiB
        # node.
        other = content(MiB + MiB // 2, 35)
        otherKey = self.gitAnnexStores(other, "g")
        self.assertTrue(await node.checkPresent(otherKey))
        self.assertEqual((await download(node, otherKey, 10))[2], other[10:])

    async def test_multipartBothWays(self):
        uuid, config = self.initremote("partsize=128KiB")
        node = self.gatewayNode(uuid, config)
        data = content(500 * KiB, 36)
        key = keyFor(data)
        self.assertEqual((await upload(node, key, data))[0], Outcome(True))
        self.assertEqual(len(self.requests("PUT", "partNumber=")), 4)
        self.assertEqual(self.gitAnnexGets(key, uuid), data)
        self.server.clearLog()
        other = content(450 * KiB, 37)
        otherKey = self.gitAnnexStores(other, "g")
        # git-annex's parts: 128KiB rounded down to 4 x 32752 bytes.
        parts = [e["received"] for e in self.requests("PUT", "partNumber=")]
        self.assertEqual(parts, [131008] * 3 + [450 * KiB - 3 * 131008])
        self.assertEqual((await download(node, otherKey))[2], other)

    async def test_routerMakesS3Nodes(self):
        """
        The router makes an S3 node of an S3 special remote that is a node
        of the gateway's cluster: a cluster PUT streams to it and to the
        git node, git-annex's fsck of the bucket passes, and the cluster
        reads it back from the bucket.
        """
        from annexd.annex.state import GatewayState
        from annexd.router.router import Router
        uuid, config = self.initremote("chunk=256KiB")
        self.env.git(self.gw, "config", "remote.s3.annex-cluster-node",
                     "mycluster")
        self.annex("updatecluster")
        environment = {k: v for k, v in self.env.env.items()
                       if not k.startswith("AWS_")}
        state = GatewayState.load(self.gw, env=environment)
        router = Router(reactor, state, environment=environment, share=True)
        self.addCleanup(router.close)
        cluster = router.resolve(self.cluster.cluster_uuid.encode(),
                                 state.uuid)
        nodes = {n.uuid: n.repository for n in cluster.nodes}
        s3 = nodes[uuid]
        s3 = getattr(s3, "repository", s3)
        self.assertIsInstance(s3, S3Node)
        data = content(600 * KiB, 40)
        key = keyFor(data)
        outcome, _, _ = await upload(cluster, key, data)
        self.assertTrue(outcome.ok)
        # Stored on both nodes: the git node and the bucket.
        self.assertEqual(set(outcome.uuids), set(nodes))
        self.assertEqual(self.getObject(key.raw.decode().replace(
            "--", "-S262144-C3--")), data[512 * KiB:])
        self.assertEqual(self.gitAnnexGets(key, uuid), data)
        self.assertEqual((await download(s3, key, 1000))[2], data[1000:])

    async def test_badContentInvisibleToGitAnnex(self):
        uuid, config = self.initremote("chunk=256KiB")
        node = self.gatewayNode(uuid, config)
        data = content(600 * KiB, 38)
        key = keyFor(data)
        outcome, _, _ = await upload(node, key, data[:-1] + b"!")
        self.assertEqual(outcome, Outcome(False))
        self.assertEqual(self.objects(), ["annex-uuid"])
        self.assertFalse(self.gitAnnexHas(key))
        log = ChunkLog(self.gw, reactor)
        self.addCleanup(log.close)
        self.assertEqual(await log.read(key, uuid), [])


class UpTests(unittest.TestCase):
    """
    L{S3Node.up} says what L{S3Node.status} says about being up, cheaply.
    """

    def test_upMatchesStatus(self):
        ups = []
        for config, credentials in (({}, ("a", "b")), ({}, None),
                                    ({"encryption": "shared"}, ("a", "b"))):
            settings = {
                "bucket": "b", "datacenter": "US", "encryption": "none",
                "host": "127.0.0.1", "port": "1", "protocol": "http",
                "requeststyle": "path", "signature": "v4", "type": "S3"}
            settings.update(config)
            node = S3Node(reactor, b"u", "s3", settings, {}, None,
                          environment={}, credentials=credentials)
            self.addCleanup(node.close)
            self.assertEqual(node.up, node.status()["up"], config)
            ups.append(node.up)
        self.assertEqual(ups, [True, False, False])
