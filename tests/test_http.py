"""
The HTTP P2P API front-end over an in-memory transport: routing, values,
status codes, streaming both ways, locks.
"""

import json

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.trial import unittest
from twisted.web import http
from zope.interface import implementer

from annexd.http.server import AnnexHTTPChannel
from annexd.interfaces import RepositoryUnavailable
from annexd.router.locks import LEASE

from tests.support.httpwire import CLIENT, GATEWAY, NODE, Wire
from tests.support.memory import MemoryDownload, keyFor

CONTENT = b"hello world\n" * 1000
KEY = keyFor(CONTENT)


def path(uuid, endpoint, version=4, **query):
    query.setdefault("clientuuid", CLIENT.decode())
    from urllib.parse import urlencode
    qs = urlencode(query)
    prefix = b"/git-annex/%s/" % (uuid,)
    if version is not None:
        prefix += b"v%d/" % (version,)
    return prefix + endpoint + (b"?" + qs.encode() if qs else b"")


class ChannelTests(unittest.SynchronousTestCase):
    """
    The one place annexd reads private twisted.web state.
    """

    def test_privateStateStillThere(self):
        """
        twisted.web's HTTPChannel still keeps the request line in
        C{_command}, C{_path} and C{_version} until the body is in: the
        streaming receiver depends on it.
        """
        seen = []

        class Probe(http.HTTPChannel):
            def allHeadersReceived(self):
                seen.append((self._command, self._path, self._version))
                http.HTTPChannel.allHeadersReceived(self)

        from twisted.internet.testing import StringTransport
        channel = Probe()
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"POST /x?y=1 HTTP/1.1\r\nContent-Length: 3"
                             b"\r\n\r\n")
        self.assertEqual(seen, [(b"POST", b"/x?y=1", b"HTTP/1.1")])
        self.assertTrue(issubclass(AnnexHTTPChannel, http.HTTPChannel))

    def test_onlyHTTP11(self):
        """
        TLS negotiation offers HTTP/1.1 only, even where twisted.web could
        speak h2: the streaming receiver is HTTP/1.1's.
        """
        self.assertEqual(Wire().site.acceptableProtocols(), [b"http/1.1"])

    def test_idleTimeoutRestored(self):
        """
        A streaming request suspends the connection's idle timeout; the
        next request on the connection has it again.
        """
        wire = Wire()
        timeout = wire.channel.timeOut
        self.assertTrue(timeout)
        wire.request(b"POST", path(GATEWAY, b"put", key=KEY.raw.decode()),
                     [(b"X-git-annex-data-length", b"%d" % len(CONTENT))],
                     chunks=[CONTENT[:10], None])
        self.assertIsNone(wire.channel.timeOut)
        wire.sendChunk(CONTENT[10:])
        wire.send(b"0\r\n\r\n")
        self.assertEqual(wire.response().json(),
                         {"stored": True, "plusuuids": []})
        self.assertEqual(wire.channel.timeOut, timeout)


class RoutingTests(unittest.SynchronousTestCase):
    """
    Routes, versions and values.
    """

    def setUp(self):
        self.wire = Wire()
        self.repo = self.wire.host.repositories[GATEWAY]
        self.repo.add(CONTENT, KEY)

    def post(self, uuid, endpoint, version=4, **query):
        self.wire.clear()
        self.wire.request(b"POST", path(uuid, endpoint, version, **query))
        return self.wire.response()

    def test_checkPresent(self):
        """
        checkpresent answers C{{"present": bool}} at every version.
        """
        for version in (0, 1, 2, 3, 4):
            self.assertEqual(self.post(GATEWAY, b"checkpresent", version,
                                       key=KEY.raw.decode()).json(),
                             {"present": True})
        response = self.post(NODE, b"checkpresent", key=KEY.raw.decode())
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), {"present": False})
        self.assertEqual(response.header("content-type"),
                         b"application/json;charset=utf-8")

    def test_notOffered(self):
        """
        A version an endpoint does not offer, an unknown version or
        endpoint, and an unknown uuid are all 404, so that clients fall
        back to older versions.
        """
        key = KEY.raw.decode()
        self.assertEqual(self.post(GATEWAY, b"gettimestamp", 2).status, 404)
        self.assertEqual(self.post(GATEWAY, b"remove-before", 2, key=key,
                                   timestamp="1").status, 404)
        self.assertEqual(self.post(GATEWAY, b"putoffset", 0, key=key).status,
                         404)
        self.assertEqual(self.post(GATEWAY, b"checkpresent", 5,
                                   key=key).status, 404)
        self.assertEqual(self.post(GATEWAY, b"nosuch", 4).status, 404)
        self.assertEqual(self.post(b"ffffffff-0000-4000-8000-000000000000",
                                   b"checkpresent", key=key).status, 404)
        self.assertEqual(self.post(GATEWAY, b"gettimestamp", 3).json(),
                         {"timestamp": 0})

    def test_wrongMethod(self):
        """
        GET on a POST endpoint and POST on the key endpoint: 405.
        """
        self.wire.request(b"GET", path(GATEWAY, b"checkpresent",
                                       key=KEY.raw.decode()))
        self.assertEqual(self.wire.response().status, 405)
        self.wire.clear()
        self.wire.request(b"POST", path(GATEWAY, b"key/" + KEY.raw))
        self.assertEqual(self.wire.response().status, 405)

    def test_badValues(self):
        """
        Missing or unparseable parameters are 400 with a one-line reason.
        """
        key = KEY.raw.decode()
        missing = self.post(GATEWAY, b"checkpresent", key=key, clientuuid="")
        self.assertEqual(missing.status, 400)
        self.assertIn(b"empty UUID", missing.body)
        self.wire.clear()
        self.wire.request(b"POST", b"/git-annex/%s/v4/checkpresent?key=%s"
                          % (GATEWAY, KEY.raw))
        response = self.wire.response()
        self.assertEqual(response.status, 400)
        self.assertIn(b"clientuuid is required", response.body)
        self.assertEqual(self.post(GATEWAY, b"checkpresent",
                                   key="notakey").status, 400)
        self.assertEqual(self.post(GATEWAY, b"checkpresent",
                                   key="[a+b]").status, 400)
        self.assertEqual(self.post(GATEWAY, b"checkpresent", key=key,
                                   clientuuid="[!!]").status, 400)
        self.assertEqual(self.post(GATEWAY, b"remove-before", key=key,
                                   timestamp="soon").status, 400)
        self.wire.clear()
        self.wire.request(b"GET", path(GATEWAY, b"key/" + KEY.raw,
                                       offset="-5"))
        self.assertEqual(self.wire.response().status, 400)
        # The server is still serving.
        self.assertEqual(self.post(GATEWAY, b"checkpresent",
                                   key=key).json(), {"present": True})

    def test_wrappedValues(self):
        """
        Values may come base64url-wrapped in square brackets.
        """
        import base64
        wrapped = "[%s]" % base64.urlsafe_b64encode(KEY.raw).decode()
        self.assertEqual(self.post(GATEWAY, b"checkpresent",
                                   key=wrapped).json(), {"present": True})

    def test_doubledPrefix(self):
        """
        C{annex+http://h/git-annex/} makes clients double C{git-annex}.
        """
        self.wire.request(b"POST", b"/git-annex/git-annex/%s/v4/checkpresent"
                          b"?key=%s&clientuuid=%s" % (GATEWAY, KEY.raw, CLIENT))
        self.assertEqual(self.wire.response().json(), {"present": True})

    def test_publishedPrefix(self):
        """
        C{/NAME/git-annex/...} reaches the gateway published as NAME.
        """
        self.wire.request(b"POST", b"/gw/git-annex/%s/v4/checkpresent"
                          b"?key=%s&clientuuid=%s" % (GATEWAY, KEY.raw, CLIENT))
        self.assertEqual(self.wire.response().json(), {"present": True})
        self.wire.clear()
        self.wire.request(b"POST", b"/other/git-annex/%s/v4/checkpresent"
                          b"?key=%s&clientuuid=%s" % (GATEWAY, KEY.raw, CLIENT))
        self.assertEqual(self.wire.response().status, 404)

    def test_unreachable(self):
        """
        A node that cannot be reached is a 502 with the reason.
        """
        self.repo.failNext("checkPresent", RepositoryUnavailable("node down"))
        response = self.post(GATEWAY, b"checkpresent", key=KEY.raw.decode())
        self.assertEqual(response.status, 502)
        self.assertIn(b"node down", response.body)

    def test_removePlus(self):
        """
        remove answers plusuuids from v2 on, and not before.
        """
        self.repo.plusUUIDs = (NODE,)
        self.assertEqual(self.post(GATEWAY, b"remove", 1,
                                   key=KEY.raw.decode()).json(),
                         {"removed": True})
        self.assertEqual(self.post(GATEWAY, b"remove", 2,
                                   key=KEY.raw.decode()).json(),
                         {"removed": True, "plusuuids": [NODE.decode()]})

    def test_removeBefore(self):
        """
        remove-before passes the deadline on.
        """
        self.repo.clock = 10
        self.assertEqual(self.post(GATEWAY, b"remove-before",
                                   key=KEY.raw.decode(), timestamp="5").json(),
                         {"removed": False, "plusuuids": []})
        self.assertIn(KEY.raw, self.repo.contents)
        self.assertEqual(self.post(GATEWAY, b"remove-before",
                                   key=KEY.raw.decode(),
                                   timestamp="50").json(),
                         {"removed": True, "plusuuids": []})
        self.assertNotIn(KEY.raw, self.repo.contents)

    def test_putOffset(self):
        """
        putoffset reports a kept partial upload, or alreadyhave.
        """
        other = b"x" * 100
        key = keyFor(other)
        self.repo.partial[key.raw] = other[:40]
        self.assertEqual(self.post(GATEWAY, b"putoffset",
                                   key=key.raw.decode()).json(),
                         {"offset": 40})
        self.assertEqual(self.repo.partial[key.raw], other[:40])
        self.assertEqual(self.post(GATEWAY, b"putoffset",
                                   key=KEY.raw.decode()).json(),
                         {"alreadyhave": True, "plusuuids": []})
        self.assertEqual(self.post(GATEWAY, b"putoffset", 1,
                                   key=KEY.raw.decode()).json(),
                         {"alreadyhave": True})

    def test_longQueryString(self):
        """
        A 64 KiB query string is refused and the server goes on serving
        other connections.
        """
        self.wire.request(b"POST", path(GATEWAY, b"checkpresent",
                                        key="x" * 65536))
        self.assertEqual(self.wire.response().status, 414)
        self.assertTrue(self.wire.transport.disconnecting)
        other = Wire(host=self.wire.host, clock=self.wire.clock)
        other.request(b"POST", path(GATEWAY, b"checkpresent",
                                    key=KEY.raw.decode()))
        self.assertEqual(other.response().json(), {"present": True})

    def test_bigBodyOnJSONRoute(self):
        """
        A JSON endpoint does not buffer a body: past 64 KiB it answers 413
        and closes.
        """
        self.wire.request(b"POST", path(GATEWAY, b"checkpresent",
                                        key=KEY.raw.decode()),
                          chunks=[b"x" * 70000, None])
        self.assertEqual(self.wire.response().status, 413)
        self.assertTrue(self.wire.transport.disconnecting)


class GetTests(unittest.SynchronousTestCase):
    """
    GET streams the content with its length header.
    """

    def setUp(self):
        self.wire = Wire()
        self.repo = self.wire.host.repositories[NODE]
        self.repo.add(CONTENT, KEY)
        self.repo.chunkSize = 1000

    def get(self, key=KEY, version=4, **query):
        self.wire.clear()
        self.wire.request(b"GET", path(NODE, b"key/" + key.raw, version,
                                       **query))
        return self.wire.response()

    def test_get(self):
        """
        The whole content, X-git-annex-data-length, a complete body.
        """
        for version in (4, 1, 0, None):
            response = self.get(version=version, associatedfile="a.txt")
            self.assertEqual(response.status, 200)
            self.assertEqual(response.header("x-git-annex-data-length"),
                             b"%d" % len(CONTENT))
            self.assertEqual(response.body, CONTENT)
            self.assertTrue(response.complete)
        self.assertEqual([d.finished for d in self.repo.downloads],
                         [True] * 4)
        self.assertEqual(self.repo.calls[0], ("get", KEY.raw, b"a.txt", 0))

    def test_offset(self):
        """
        With an offset, the rest of the content.
        """
        response = self.get(offset="1000")
        self.assertEqual(response.header("x-git-annex-data-length"),
                         b"%d" % (len(CONTENT) - 1000))
        self.assertEqual(response.body, CONTENT[1000:])

    def test_missing(self):
        """
        A key the repository lacks is a 404 (not p2phttp's empty 200).
        """
        self.assertEqual(self.get(keyFor(b"absent")).status, 404)

    def test_empty(self):
        """
        A genuinely empty object is 200 with length 0.
        """
        empty = self.repo.add(b"")
        response = self.get(empty)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("x-git-annex-data-length"), b"0")
        self.assertEqual(response.body, b"")

    def test_invalidIsShort(self):
        """
        Content the sender found invalid arrives one byte short (v1+), and
        complete at v0 (which has no verdict).
        """
        original = MemoryDownload.deliver

        def invalid(download, consumer):
            d = original(download, consumer)
            return d.addCallback(lambda _: False)

        self.patch(MemoryDownload, "deliver", invalid)
        response = self.get()
        self.assertEqual(response.body, CONTENT[:-1])
        self.assertTrue(response.complete)
        self.assertEqual(self.repo.downloads[-1].finished, False)
        self.assertEqual(self.get(version=0).body, CONTENT)

    def pauseOnRegister(self):
        """
        Make the connection's write buffer full from the start: every
        producer registered on it is paused at once.
        """
        channel = self.wire.channel
        register = channel.registerProducer

        def paused(producer, streaming):
            register(producer, streaming)
            producer.pauseProducing()
        channel.registerProducer = paused

    def test_backpressure(self):
        """
        A client that does not read pauses the repository's producer; it
        goes on when the client reads again.
        """
        self.pauseOnRegister()
        self.wire.request(b"GET", b"/git-annex/%s/v4/key/%s?clientuuid=%s" % (
            NODE, KEY.raw, CLIENT))
        download = self.repo.downloads[0]
        self.assertTrue(download.paused)
        self.assertEqual(download.sent, 0)
        self.wire.channel.resumeProducing()
        self.assertEqual(self.wire.response().body, CONTENT)

    def test_clientGone(self):
        """
        A client that goes away mid-GET stops the download and says so.
        """
        self.pauseOnRegister()
        self.wire.request(b"GET", b"/git-annex/%s/v4/key/%s?clientuuid=%s" % (
            NODE, KEY.raw, CLIENT))
        download = self.repo.downloads[0]
        self.wire.disconnect()
        self.assertTrue(download.stopped)
        self.assertEqual(download.finished, False)


@implementer(IPushProducer)
class _Nothing:
    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class PutTests(unittest.SynchronousTestCase):
    """
    PUT streams the body into the repository, paced by it.
    """

    def setUp(self):
        self.wire = Wire()
        self.repo = self.wire.host.repositories[NODE]
        self.repo.plusUUIDs = (GATEWAY,)

    def put(self, chunks, length=len(CONTENT), version=4, **query):
        query.setdefault("key", KEY.raw.decode())
        self.wire.request(
            b"POST", path(NODE, b"put", version, **query),
            [(b"X-git-annex-data-length", b"%d" % length)], chunks=chunks)

    def test_put(self):
        """
        The body, in chunks, is stored; the answer names the plus uuids.
        """
        self.put([CONTENT[:5000], CONTENT[5000:]], associatedfile="f")
        self.assertEqual(self.wire.response().json(),
                         {"stored": True, "plusuuids": [GATEWAY.decode()]})
        self.assertEqual(self.repo.contents[KEY.raw], CONTENT)
        self.assertEqual(self.repo.calls[0], ("put", KEY.raw, b"f"))

    def test_putV1(self):
        """
        Before v2 there is no plusuuids.
        """
        self.put([CONTENT], version=1)
        self.assertEqual(self.wire.response().json(), {"stored": True})

    def test_contentLength(self):
        """
        A body with a Content-Length works as well as a chunked one.
        """
        self.wire.request(b"POST", path(NODE, b"put", key=KEY.raw.decode()),
                          [(b"X-git-annex-data-length", b"%d" % len(CONTENT))],
                          body=CONTENT)
        self.assertEqual(self.wire.response().json()["stored"], True)

    def test_missingLength(self):
        """
        No X-git-annex-data-length: 400, nothing stored.
        """
        self.wire.request(b"POST", path(NODE, b"put", key=KEY.raw.decode()),
                          chunks=[CONTENT])
        self.assertEqual(self.wire.response().status, 400)
        self.assertEqual(self.repo.calls, [])

    def test_short(self):
        """
        A body shorter than announced stores nothing; what came is kept for
        a resume.
        """
        self.put([CONTENT[:3000]])
        self.assertEqual(self.wire.response().json(),
                         {"stored": False, "plusuuids": []})
        self.assertNotIn(KEY.raw, self.repo.contents)
        self.assertEqual(self.repo.partial[KEY.raw], CONTENT[:3000])

    def test_long(self):
        """
        A body longer than announced stores nothing.
        """
        self.put([CONTENT + b"extra"])
        self.assertEqual(self.wire.response().json()["stored"], False)
        self.assertNotIn(KEY.raw, self.repo.contents)
        self.assertIsNotNone(self.repo.uploads[0].aborted)

    def test_oneByteShortIsInvalid(self):
        """
        git-annex marks its own upload invalid by sending one byte less.
        """
        self.put([CONTENT[:-1]])
        self.assertEqual(self.wire.response().json()["stored"], False)
        self.assertNotIn(KEY.raw, self.repo.contents)

    def test_backpressure(self):
        """
        When the repository's consumer pauses, the socket is paused; it
        resumes with it.
        """
        original = self.repo.put

        def put(key, af):
            def paused(upload):
                receive = upload.receive

                def pausing(length):
                    sink = receive(length)
                    write = sink.write

                    def slow(data):
                        write(data)
                        if sink.producer is not None:
                            sink.producer.pauseProducing()
                    sink.write = slow
                    return sink
                upload.receive = pausing
                return upload
            return original(key, af).addCallback(paused)

        self.repo.put = put
        self.put([CONTENT[:100], None])
        self.assertEqual(self.wire.transport.producerState, "paused")
        sink = self.repo.uploads[0].sink
        sink.producer.resumeProducing()
        self.assertEqual(self.wire.transport.producerState, "producing")
        self.wire.sendChunk(CONTENT[100:])
        # The last byte is written: the repository no longer paces the
        # body, and the socket is read again (for the end of the body).
        self.assertIsNone(sink.producer)
        self.assertEqual(self.wire.transport.producerState, "producing")
        self.wire.send(b"0\r\n\r\n")
        self.assertEqual(self.wire.response().json()["stored"], True)
        self.assertEqual(self.repo.contents[KEY.raw], CONTENT)

    def test_waitsForRepository(self):
        """
        Until the repository accepts the upload the socket is paused; body
        bytes that came meanwhile are kept and written after.
        """
        accepted = defer.Deferred()
        original = self.repo.put
        self.repo.put = lambda key, af: accepted
        self.put([CONTENT[:100], CONTENT[100:]])
        self.assertEqual(self.wire.transport.producerState, "paused")
        self.assertEqual(self.wire.responses(), [])
        original(KEY, None).chainDeferred(accepted)
        self.assertEqual(self.wire.transport.producerState, "producing")
        self.assertEqual(self.wire.response().json()["stored"], True)
        self.assertEqual(self.repo.contents[KEY.raw], CONTENT)

    def test_alreadyHave(self):
        """
        Content already there: stored, body ignored.
        """
        self.repo.add(CONTENT, KEY)
        self.put([b"rubbish"])
        self.assertEqual(self.wire.response().json(),
                         {"stored": True, "plusuuids": [GATEWAY.decode()]})

    def test_resume(self):
        """
        The server has more than the client's offset: the overlap is
        skipped.  It has less: the body is unusable.
        """
        self.repo.partial[KEY.raw] = CONTENT[:10]
        self.put([CONTENT[3:]], length=len(CONTENT) - 3, offset="3")
        self.assertEqual(self.wire.response().json()["stored"], True)
        self.assertEqual(self.repo.contents[KEY.raw], CONTENT)
        other = b"y" * 500
        key = keyFor(other)
        self.repo.partial[key.raw] = other[:10]
        self.wire.clear()
        self.put([other[20:]], length=480, offset="20", key=key.raw.decode())
        self.assertEqual(self.wire.response().json()["stored"], False)
        self.assertNotIn(key.raw, self.repo.contents)

    def test_dataPresent(self):
        """
        v4 data-present: the body is ignored; the answer says whether the
        content is there.
        """
        self.put([], length=0, **{"data-present": "true"})
        self.assertEqual(self.wire.response().json()["stored"], False)
        self.assertIn(("upload.dataPresent", KEY.raw), self.repo.calls)

    def test_clientGone(self):
        """
        A client that vanishes mid-PUT aborts the upload; nothing is stored
        and what came is kept for a resume.
        """
        self.put([CONTENT[:4000], None])
        self.wire.disconnect()
        self.assertEqual(self.repo.uploads[0].aborted,
                         "client went away mid-upload")
        self.assertNotIn(KEY.raw, self.repo.contents)
        self.assertEqual(self.repo.partial[KEY.raw], CONTENT[:4000])

    def test_stalled(self):
        """
        An upload that stops moving is given up after the idle timeout.
        """
        from annexd.http.server import TRANSFER_IDLE_TIMEOUT
        self.put([CONTENT[:4000], None])
        self.wire.clock.advance(TRANSFER_IDLE_TIMEOUT + 1)
        self.assertTrue(self.wire.transport.disconnecting
                        or self.wire.transport.disconnected)
        self.assertIsNotNone(self.repo.uploads[0].aborted)


class LockTests(unittest.SynchronousTestCase):
    """
    lockcontent and keeplocked hold a lock between requests, as a lease.
    """

    def setUp(self):
        self.wire = Wire()
        self.repo = self.wire.host.repositories[NODE]
        self.repo.add(CONTENT, KEY)

    def lock(self, wire=None):
        wire = wire or self.wire
        wire.clear()
        wire.request(b"POST", path(NODE, b"lockcontent", key=KEY.raw.decode()))
        return wire.response().json()

    def keepLocked(self, lockid, lines, end=True):
        # On a connection of its own, as the client does.
        self.keeper = Wire(host=self.wire.host, clock=self.wire.clock)
        chunks = []
        for line in lines:
            chunks += [json.dumps(line).encode(), b"\n"]
        self.keeper.request(b"POST", path(NODE, b"keeplocked", lockid=lockid),
                          [(b"Content-Type", b"application/json")],
                          chunks=chunks + ([] if end else [None]))

    def remove(self):
        other = Wire(host=self.wire.host, clock=self.wire.clock)
        other.request(b"POST", path(NODE, b"remove", key=KEY.raw.decode()))
        return other.response().json()

    def test_lockUnlock(self):
        """
        A lock holds until the client unlocks it; a remove meanwhile is
        answered "not removed" at once.
        """
        answer = self.lock()
        self.assertTrue(answer["locked"])
        self.assertTrue(self.repo.isLocked(KEY))
        self.assertEqual(self.remove(), {"removed": False, "plusuuids": []})
        self.assertNotIn(("remove", KEY.raw, None), self.repo.calls)
        self.keepLocked(answer["lockid"], [{"unlock": False}], end=False)
        self.assertFalse(self.keeper.responses())
        self.assertTrue(self.repo.isLocked(KEY))
        self.keeper.sendChunk(b'{"unlock":true}')
        self.keeper.sendChunk(b"\n")
        self.assertFalse(self.repo.isLocked(KEY))
        self.keeper.send(b"0\r\n\r\n")
        self.assertEqual(self.keeper.response().json(), {"locked": False})
        self.assertEqual(self.remove(), {"removed": True, "plusuuids": []})

    def test_leaseWithoutKeepLocked(self):
        """
        A lock nobody keeps expires after the lease.
        """
        self.lock()
        self.wire.clock.advance(LEASE - 1)
        self.assertTrue(self.repo.isLocked(KEY))
        self.wire.clock.advance(2)
        self.assertFalse(self.repo.isLocked(KEY))

    def test_vanishedClient(self):
        """
        A client that vanishes during keeplocked keeps the lock until the
        lease it counts on ends, then it is released.
        """
        answer = self.lock()
        self.wire.clock.advance(100)
        self.keepLocked(answer["lockid"], [{"unlock": False}], end=False)
        # Kept past the lease of the lockcontent: the keeplocked holds it.
        self.wire.clock.advance(LEASE - 10)
        self.assertTrue(self.repo.isLocked(KEY))
        self.keeper.disconnect()
        self.assertTrue(self.repo.isLocked(KEY))
        self.wire.clock.advance(11)
        self.assertFalse(self.repo.isLocked(KEY))

    def test_unknownLock(self):
        """
        keeplocked for an unknown lock id: C{{"locked":false}} after the
        body.
        """
        self.keepLocked("nosuch", [{"unlock": False}, {"unlock": True}])
        self.assertEqual(self.keeper.response().json(), {"locked": False})

    def test_budget(self):
        """
        Past the lock budget, lockcontent answers not locked; a released
        lock frees its place.
        """
        self.wire.host.locks.maxLocks = 1
        first = self.lock()
        self.assertTrue(first["locked"])
        self.assertEqual(self.lock(), {"locked": False})
        self.keepLocked(first["lockid"], [{"unlock": True}])
        self.assertTrue(self.lock()["locked"])

    def test_absent(self):
        """
        Content that is not there cannot be locked.
        """
        self.repo.contents.clear()
        self.assertEqual(self.lock(), {"locked": False})
