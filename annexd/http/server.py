# -*- test-case-name: tests.test_http -*-
"""
The HTTP P2P API front-end: git-annex's annex+http protocol
(shared/spec/p2phttp.md), served through the same L{Router} as the ssh
front-end.

Routes (after any prefix; section 1.2)::

    /git-annex/<uuid>/key/<key>                      GET   (unversioned)
    /git-annex/<uuid>/v0..v4/key/<key>               GET
    /git-annex/<uuid>/v0..v4/checkpresent            POST
    /git-annex/<uuid>/v0..v4/remove                  POST
    /git-annex/<uuid>/v3..v4/remove-before           POST
    /git-annex/<uuid>/v3..v4/gettimestamp            POST
    /git-annex/<uuid>/v0..v4/put                     POST  (streamed body)
    /git-annex/<uuid>/v1..v4/putoffset               POST
    /git-annex/<uuid>/v0..v4/lockcontent             POST
    /git-annex/<uuid>/v0..v4/keeplocked              POST  (NDJSON body)

and, under C{/NAME/} for a gateway published as NAME, the same API
(C{/NAME/git-annex/...}) plus git's smart HTTP and C{/NAME/config} (see
L{annexd.http.git}).

Streaming request bodies
========================

twisted.web reads a whole request body before it routes the request.  A PUT
must instead flow to the nodes as it arrives, paced by them.  So (recipe in
shared/STYLE-ANCHORS.md): L{AnnexHTTPChannel} hands the request line to the
request as soon as the headers are in (the one place private channel state
is read); L{AnnexRequest} traverses the resource tree then, and a resource
that knows its body (every API endpoint) answers with a L{_Handler} that
receives the body chunk by chunk.  A handler pauses the socket while it
waits (for authorisation, for the nodes to accept the upload) and whenever
the nodes push back.  When the body is complete twisted.web renders the
resource as usual, and the resource asks the handler for the answer.

No API endpoint ever buffers a body: JSON endpoints discard theirs (with a
cap), PUT streams it, keeplocked parses it line by line.  Only git's push
(through C{git http-backend}) uses twisted.web's own buffering.

Deliberate differences from git-annex's p2phttp (section 7): 404 (not 400)
for a version an endpoint does not offer, so clients fall back; 404 for a
missing key on GET; C{plusuuids} always for v2+; C{{"removed":false}} at
once for content a client holds locked; 502 with the reason for a node that
cannot be reached; 400 for a negative offset or data length; 405 for a
wrong method (and HEAD); 404 for an unknown uuid before any parameter is
looked at; the rest of the path after C{key/} is the key (URL keys hold
C{/}); unpadded base64 and the doubled C{/git-annex/git-annex/} accepted;
C{Accept} ignored; no
worker pool to deadlock, idle timeouts only before a request is admitted and
on a transfer that stopped moving.
"""

import json
from io import BytesIO
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.web import http, resource, server
from zope.interface import implementer

from annexd.http.values import (
    BadValue, decodeValue, jsonBody, parseBool, parseKey, parseOffset,
    parseTimestamp, parseUUID, uuidList)
from annexd.interfaces import (
    Outcome, RepositoryError, RepositoryUnavailable)
from annexd.router.router import UnknownTarget

#: The versions of the API, newest first.
VERSIONS = (4, 3, 2, 1, 0)

#: Endpoint name -> (HTTP method, versions offered, action class).
ENDPOINTS = {
    b"key": (b"GET", frozenset(VERSIONS), "read"),
    b"checkpresent": (b"POST", frozenset(VERSIONS), "read"),
    b"remove": (b"POST", frozenset(VERSIONS), "remove"),
    b"remove-before": (b"POST", frozenset([3, 4]), "remove"),
    b"gettimestamp": (b"POST", frozenset([3, 4]), "read"),
    b"put": (b"POST", frozenset(VERSIONS), "write"),
    b"putoffset": (b"POST", frozenset([1, 2, 3, 4]), "write"),
    b"lockcontent": (b"POST", frozenset(VERSIONS), "lock"),
    b"keeplocked": (b"POST", frozenset(VERSIONS), "lock"),
}

#: The most body a JSON endpoint reads (and throws away).
MAX_IGNORED_BODY = 65536

#: Bytes read from a client's TCP connection per call (an upload's body);
#: see L{annexd.nodes.process.READ_SIZE} for why not more.
READ_SIZE = 256 * 1024

#: The longest line of a keeplocked body.
MAX_KEEPLOCKED_LINE = 1024

#: Seconds a transfer may make no progress before it is given up.
TRANSFER_IDLE_TIMEOUT = 300.0

DATA_LENGTH = b"X-git-annex-data-length"
JSON_TYPE = b"application/json;charset=utf-8"


class HTTPFailure(Exception):
    """
    A request is answered with an error status and a one-line reason.
    """

    def __init__(self, code, text, headers=()):
        Exception.__init__(self, text)
        self.code = code
        self.text = text
        self.headers = tuple(headers)


def _oneLine(text):
    text = str(text).replace("\r", " ").replace("\n", " ").strip()
    return text[:500] or "failed"


def _failureFor(error):
    """
    The HTTP answer for an exception from a repository.
    """
    if isinstance(error, HTTPFailure):
        return error
    if isinstance(error, RepositoryUnavailable):
        return HTTPFailure(502, _oneLine(error))
    if isinstance(error, RepositoryError):
        return HTTPFailure(500, _oneLine(error))
    if isinstance(error, UnknownTarget):
        return HTTPFailure(404, _oneLine(error))
    return None


def actionNamed(name):
    """
    The L{annexd.http.auth.Action} called C{name} (read, write, remove,
    lock).
    """
    from annexd.http.auth import Action
    return Action(name)


class _Allowed:
    status = 200
    allowed = True
    user = None
    reason = ""


class WideOpen:
    """
    The authorisation of C{--wideopen}: everybody may do everything.
    """

    def authorize(self, authorization, action, secure):
        return defer.succeed(_Allowed())


# -- channel and request ------------------------------------------------------


class AnnexHTTPChannel(http.HTTPChannel):
    """
    An HTTP/1.1 channel that tells its request what it is before the body
    arrives.
    """

    def connectionMade(self):
        self.idleTimeout = self.timeOut
        if hasattr(self.transport, "bufferSize"):
            # A plain TCP connection: read up to READ_SIZE per call (an
            # upload's body) rather than Twisted's 64 KiB.
            self.transport.bufferSize = READ_SIZE
        http.HTTPChannel.connectionMade(self)

    def allHeadersReceived(self):
        # The only place annexd reads private HTTPChannel state
        # (tests.test_http.ChannelTests checks it is still there).
        self.requests[-1].headersKnown(self._command, self._path,
                                       self._version)
        http.HTTPChannel.allHeadersReceived(self)

    def lineLengthExceeded(self, line):
        # A request line or header over MAX_LENGTH (16 KiB): say so, rather
        # than LineReceiver's silent hang-up.
        self.transport.write(b"HTTP/1.1 414 Request Line Too Long\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.loseConnection()

    def suspendIdleTimeout(self):
        """
        No idle timeout while a streaming request is in progress (its body
        may be paused for backpressure or, for keeplocked, simply wait):
        its handler watches for inactivity itself.
        """
        self.setTimeout(None)

    def requestDone(self, request):
        # A streaming request suspended the idle timeout before twisted.web
        # could save it: restore it for the next request.
        if self.timeOut is None:
            self.setTimeout(self.idleTimeout)
        http.HTTPChannel.requestDone(self, request)


class AnnexRequest(server.Request):
    """
    A request that routes at the end of its headers.

    @ivar handler: the L{_Handler} receiving the body, or L{None} for a
        resource that lets twisted.web buffer it (git's push).
    """

    handler = None

    def headersKnown(self, command, path, version):
        self.method, self.uri, self.clientproto = command, path, version
        self.path, _, query = path.partition(b"?")
        self.args = parse_qs(query, keep_blank_values=True) if query else {}
        self.prepath = []
        self.postpath = [unquote_to_bytes(p)
                         for p in self.path[1:].split(b"/")]
        self.site = self.channel.site
        try:
            found = self.site.getResourceFor(self)
        except Exception:
            self._log.failure("routing {uri} failed", uri=path)
            found = None
        begin = getattr(found, "beginRequest", None)
        if begin is not None:
            self.handler = begin(self)
        elif not getattr(found, "buffersBody", False):
            # Not an endpoint that wants its body: throw it away.
            self.handler = _Handler(self)
        if self.handler is not None:
            self.handler.start()

    def gotLength(self, length):
        if self.handler is None:
            server.Request.gotLength(self, length)
        else:
            self.content = BytesIO()
            self.handler.bodyLength(length)

    def handleContentChunk(self, data):
        if self.handler is None:
            server.Request.handleContentChunk(self, data)
        else:
            self.handler.bodyReceived(data)

    def connectionLost(self, reason):
        if self.handler is not None:
            self.handler.connectionLost(reason)
        server.Request.connectionLost(self, reason)

    def answer(self, code, body, contentType=b"text/plain;charset=utf-8",
               headers=()):
        """
        Finish with a complete answer.
        """
        if self._disconnected or self.finished:
            return
        self.setResponseCode(code)
        self.setHeader(b"Content-Type", contentType)
        for name, value in headers:
            self.setHeader(name, value)
        self.setHeader(b"Content-Length", b"%d" % (len(body),))
        self.write(body)
        self.finish()

    def answerJSON(self, **fields):
        self.answer(200, jsonBody(**fields), JSON_TYPE)

    def fail(self, failure):
        if failure.code == 401:
            from annexd.http.auth import AuthPolicy
            failure = HTTPFailure(401, failure.text, failure.headers + (
                (b"WWW-Authenticate", AuthPolicy.CHALLENGE),))
        self.answer(failure.code, failure.text.encode("utf-8") + b"\n",
                    headers=failure.headers)


@implementer(IPushProducer)
class _BodyPauser:
    """
    Pauses and resumes the socket a request body comes from, for several
    reasons at once (waiting for the nodes, a node pushing back).
    """

    def __init__(self, request):
        self.request = request
        self.reasons = set()

    def _transport(self):
        channel = getattr(self.request, "channel", None)
        return channel.transport if channel is not None else None

    def pause(self, why):
        if not self.reasons:
            transport = self._transport()
            if transport is not None:
                transport.pauseProducing()
        self.reasons.add(why)

    def resume(self, why):
        if why in self.reasons:
            self.reasons.discard(why)
            if not self.reasons:
                transport = self._transport()
                if transport is not None:
                    transport.resumeProducing()

    # IPushProducer, for the consumer the body is written into
    def pauseProducing(self):
        self.pause("consumer")

    def resumeProducing(self):
        self.resume("consumer")

    def stopProducing(self):
        self.reasons.clear()


class _Handler:
    """
    Receives a request's body and makes its answer.  This base class
    discards the body (up to L{MAX_IGNORED_BODY} bytes) and renders its
    resource the usual twisted.web way.
    """

    _log = Logger()
    maxBody = MAX_IGNORED_BODY

    def __init__(self, request):
        self.request = request
        self.received = 0
        self.lost = None
        self.refusal = None

    def start(self):
        pass

    def bodyLength(self, length):
        if (self.maxBody is not None and length is not None
                and length > self.maxBody):
            self.tooLarge()

    def bodyReceived(self, data):
        self.received += len(data)
        if self.maxBody is not None and self.received > self.maxBody:
            self.tooLarge()

    def tooLarge(self):
        request = self.request
        channel = getattr(request, "channel", None)
        if channel is not None and not request.finished:
            self._log.info("request body over {n} bytes: refused", n=self.maxBody)
            request.setResponseCode(413)
            request.setHeader(b"Connection", b"close")
            request.write(b"request body too large\n")
            request.finish()
            channel.loseConnection()

    def connectionLost(self, reason):
        self.lost = reason

    def render(self, request):
        return None


class _Refusal(_Handler):
    """
    The request is refused whatever its body says.  The body is read and
    thrown away, however long (a refused upload's client sends it all
    before it reads the answer).
    """

    maxBody = None

    def __init__(self, request, failure):
        _Handler.__init__(self, request)
        self.failure = failure

    def render(self, request):
        request.fail(self.failure)
        return server.NOT_DONE_YET


# -- resources ----------------------------------------------------------------


class _ErrorResource(resource.Resource):
    isLeaf = True

    def __init__(self, code, text):
        resource.Resource.__init__(self)
        self.failure = HTTPFailure(code, text)

    def beginRequest(self, request):
        return _Refusal(request, self.failure)

    def render(self, request):
        request.fail(self.failure)
        return server.NOT_DONE_YET


def _notFound(text="not found"):
    return _ErrorResource(404, text)


def _render404(request):
    request.setResponseCode(404)
    request.setHeader(b"Content-Type", b"text/plain;charset=utf-8")
    return b"not found\n"


class Root(resource.Resource):
    """
    The root of an annexd HTTP listener.

    @ivar hosts: name (L{bytes}) -> L{GatewayHost}, the published gateways.
    @ivar default: the gateway C{/git-annex/...} means when a uuid does
        not choose one (the first).
    """

    def __init__(self, hosts, auth=None, reactor=None, gitResources=None):
        """
        @param hosts: the L{GatewayHost}s served.
        @param auth: an object with C{authorize(header, action, secure)}
            returning a Deferred L{annexd.http.auth.Decision} (default:
            L{WideOpen}).
        @param gitResources: name -> resource serving git (smart HTTP and
            C{config}) for that gateway under C{/NAME/}.
        """
        resource.Resource.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.hosts = {h.name.encode("utf-8"): h for h in hosts}
        self.auth = auth or WideOpen()
        self.gitResources = gitResources or {}

    def getChild(self, name, request):
        if name == b"git-annex":
            return _Api(self, None)
        host = self.hosts.get(name)
        if host is None:
            return _notFound()
        return _Published(self, name, host)

    def hostFor(self, uuid, within=None):
        """
        The gateway serving C{uuid} (only C{within} one, when given).
        """
        hosts = [within] if within is not None else self.hosts.values()
        for host in hosts:
            if host.serves(uuid):
                return host
        return None

    def render(self, request):
        return _render404(request)


class _Published(resource.Resource):
    """
    C{/NAME/}: one gateway: its API under C{git-annex/}, git otherwise.
    """

    def __init__(self, root, name, host):
        resource.Resource.__init__(self)
        self.root = root
        self.name = name
        self.host = host

    def getChild(self, name, request):
        if name == b"git-annex":
            return _Api(self.root, self.host)
        git = self.root.gitResources.get(self.name)
        if git is None:
            return _notFound()
        # Mount the git resource here: it sees the whole rest of the path.
        request.postpath.insert(0, request.prepath.pop())
        return git

    def render(self, request):
        return _render404(request)


class _Api(resource.Resource):
    """
    C{.../git-annex/}: the next segment is the server uuid.
    """

    def __init__(self, root, host):
        resource.Resource.__init__(self)
        self.root = root
        self.host = host

    def getChild(self, name, request):
        if name == b"git-annex":
            # annex+http://h/prefix/git-annex/ makes clients double it.
            return self
        if not name:
            # "/git-annex/" itself is nothing; an empty uuid before more
            # path is a bad value, as p2phttp says.
            if request.postpath:
                return _ErrorResource(400, "empty UUID")
            return _notFound()
        try:
            uuid = parseUUID(name)
        except BadValue as e:
            return _ErrorResource(400, str(e))
        host = self.root.hostFor(uuid, self.host)
        if host is None:
            return _notFound()
        return _Target(self.root, host, uuid)

    def render(self, request):
        return _render404(request)


class _Target(resource.Resource):
    """
    C{.../git-annex/<uuid>/}: versions, and the unversioned GET.
    """

    def __init__(self, root, host, uuid):
        resource.Resource.__init__(self)
        self.root = root
        self.host = host
        self.uuid = uuid

    def getChild(self, name, request):
        if name == b"key":
            return _Endpoint(self, None, b"key")
        if len(name) == 2 and name[:1] == b"v" and name[1:].isdigit():
            version = int(name[1:])
            if version in VERSIONS:
                return _Version(self, version)
        return _notFound()

    def render(self, request):
        return _render404(request)


class _Version(resource.Resource):
    def __init__(self, target, version):
        resource.Resource.__init__(self)
        self.target = target
        self.version = version

    def getChild(self, name, request):
        spec = ENDPOINTS.get(name)
        if spec is None or self.version not in spec[1]:
            # 404, not the reference's 400: the client falls back to an
            # older version only on 404.
            return _notFound()
        return _Endpoint(self.target, self.version, name)

    def render(self, request):
        return _render404(request)


class _Endpoint(resource.Resource):
    """
    One API endpoint at one version (L{None}: the unversioned GET).
    """

    isLeaf = True

    def __init__(self, target, version, name):
        resource.Resource.__init__(self)
        self.target = target
        self.version = version
        self.name = name

    def beginRequest(self, request):
        method, _, action = ENDPOINTS[self.name]
        if request.method != method:
            return _Refusal(request, HTTPFailure(
                405, "use %s" % (method.decode("ascii"),),
                [(b"Allow", method)]))
        rest = request.postpath
        if self.name == b"key":
            if not rest or rest == [b""]:
                return _Refusal(request, HTTPFailure(404, "no key"))
        elif rest and rest != [b""]:
            return _Refusal(request, HTTPFailure(404, "not found"))
        try:
            call = _Call(self.target, self.version, request, action)
            handler = _HANDLERS[self.name](call)
        except BadValue as e:
            return _Refusal(request, HTTPFailure(400, _oneLine(e)))
        except HTTPFailure as e:
            return _Refusal(request, e)
        return handler

    def render(self, request):
        return request.handler.render(request)


# -- one API call ---------------------------------------------------------------


class _Call:
    """
    The parsed parameters of one API request.
    """

    def __init__(self, target, version, request, action):
        self.root = target.root
        self.host = target.host
        self.uuid = target.uuid
        self.version = version
        self.request = request
        self.action = action
        self.args = request.args

    def arg(self, name, parse, required=True):
        values = self.args.get(name)
        if not values:
            if required:
                raise HTTPFailure(400, "Query parameter %s is required" % (
                    name.decode("ascii"),))
            return None
        try:
            return parse(values[0])
        except BadValue as e:
            raise BadValue("Error parsing query parameter %s failed: %s" % (
                name.decode("ascii"), e))

    def bypass(self):
        try:
            return tuple(parseUUID(v) for v in self.args.get(b"bypass", ()))
        except BadValue as e:
            raise BadValue("Error parsing query parameter bypass failed: %s"
                           % (e,))

    def clientUUID(self, required=True):
        return self.arg(b"clientuuid", parseUUID, required)

    def authorize(self):
        """
        @return: a Deferred firing with the L{Decision}, failing with
            L{HTTPFailure} when the request is not allowed.
        """
        request = self.request
        header = request.getHeader(b"Authorization")
        d = self.root.auth.authorize(header, actionNamed(self.action),
                                     request.isSecure())

        def decided(decision):
            if not decision.allowed:
                raise HTTPFailure(decision.status, decision.reason or (
                    "authentication required" if decision.status == 401
                    else "not allowed"))
            request.annexUser = decision.user
            return decision
        return d.addCallback(decided)

    def repository(self, bypass=()):
        return self.host.repository(self.uuid, bypass, frontend="http")


def _run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


class _CallHandler(_Handler):
    """
    A JSON endpoint: the body is ignored; the answer comes from L{call}.
    """

    def __init__(self, call):
        _Handler.__init__(self, call.request)
        self.call = call
        self.version = call.version
        self.prepare()

    def prepare(self):
        pass

    def render(self, request):
        async def respond():
            await self.call.authorize()
            await self.answer(request)

        _run(respond()).addErrback(self.failed, request)
        return server.NOT_DONE_YET

    def failed(self, reason, request):
        """
        Answer a request whose handling failed: the repository's reason
        with its status, or (for the unexpected, which is logged) 500.
        """
        failure = _failureFor(reason.value)
        if failure is None:
            self._log.failure("{uri} failed", reason, uri=request.uri)
            failure = HTTPFailure(500, "internal error")
        if not request._disconnected and not request.finished:
            request.fail(failure)

    async def answer(self, request):
        raise NotImplementedError()

    def plus(self, uuids):
        return {"plusuuids": uuidList(uuids)} if self.version >= 2 else {}


class _CheckPresent(_CallHandler):
    def prepare(self):
        self.key = self.call.arg(b"key", parseKey)
        self.call.clientUUID()
        self.bypass = self.call.bypass()

    async def answer(self, request):
        present = await self.call.repository(self.bypass).checkPresent(self.key)
        request.answerJSON(present=bool(present))


class _Remove(_CallHandler):
    def prepare(self):
        self.key = self.call.arg(b"key", parseKey)
        self.call.clientUUID()
        self.bypass = self.call.bypass()
        self.before = None

    async def answer(self, request):
        if self.call.host.locks.isLocked(self.call.uuid, self.key.raw):
            # A client holds it locked here: not removed, at once (the
            # reference answers 500 or waits for the lock).
            outcome = Outcome(False)
        else:
            outcome = await self.call.repository(self.bypass).remove(
                self.key, self.before)
        request.answerJSON(removed=bool(outcome.ok),
                           **self.plus(outcome.uuids))


class _RemoveBefore(_Remove):
    def prepare(self):
        _Remove.prepare(self)
        # A negative deadline is simply past: 0 means the same on any
        # monotonic clock, and the P2P protocol has no negative numbers.
        self.before = max(0, self.call.arg(b"timestamp", parseTimestamp))


class _GetTimestamp(_CallHandler):
    def prepare(self):
        self.call.clientUUID()
        self.bypass = self.call.bypass()

    async def answer(self, request):
        timestamp = await self.call.repository(self.bypass).getTimestamp()
        request.answerJSON(timestamp=int(timestamp))


class _PutOffset(_CallHandler):
    def prepare(self):
        self.key = self.call.arg(b"key", parseKey)
        self.call.clientUUID()
        self.bypass = self.call.bypass()

    async def answer(self, request):
        offer = await self.call.repository(self.bypass).put(self.key, None)
        if isinstance(offer, Outcome):
            if offer.alreadyHad:
                request.answerJSON(alreadyhave=True, **self.plus(offer.uuids))
            else:
                raise HTTPFailure(500, "the repository does not accept "
                                       "this content")
            return
        offset = offer.offset
        await _backOut(offer)
        request.answerJSON(offset=offset)


async def _backOut(upload):
    """
    End an upload without content: empty DATA and INVALID, as p2phttp
    does; the repository keeps its partial content.
    """
    try:
        sink = upload.receive(0)
        await sink.done
        await upload.finish(False)
    except Exception:
        upload.abort("upload withdrawn")


class _LockContent(_CallHandler):
    def prepare(self):
        self.key = self.call.arg(b"key", parseKey)
        self.call.clientUUID()
        self.bypass = self.call.bypass()

    async def answer(self, request):
        lockid = await self.call.host.locks.take(
            self.call.repository(self.bypass), self.key)
        if lockid is None:
            request.answerJSON(locked=False)
        else:
            request.answerJSON(locked=True, lockid=lockid.decode("ascii"))


class _KeepLocked(_CallHandler):
    """
    The long poll that keeps a lock: NDJSON C{{"unlock": bool}} lines until
    an unlock or the end; the answer, always C{{"locked":false}}, comes
    after the body.
    """

    maxBody = None

    def prepare(self):
        self.lockid = self.call.arg(b"lockid", parseUUID)
        self.call.clientUUID(required=False)
        self.call.bypass()
        self.buffer = b""
        self.unlocked = False
        self.kept = False
        self.admitted = None

    def start(self):
        self.call.request.channel.suspendIdleTimeout()
        self.admitted = self.call.authorize()
        self.admitted.addCallbacks(self._admitted, lambda reason: None)

    def _admitted(self, decision):
        self.kept = self.call.host.locks.keep(self.lockid)
        if self.lost is not None:
            self._end()
        return decision

    def bodyLength(self, length):
        pass

    def bodyReceived(self, data):
        if self.unlocked:
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self._line(line)
        if len(self.buffer) > MAX_KEEPLOCKED_LINE:
            self.buffer = b""
            self._end()

    def _line(self, line):
        if not line.strip() or self.unlocked:
            return
        try:
            message = json.loads(line)
            unlock = message["unlock"]
        except (ValueError, KeyError, TypeError):
            self._end()
            return
        if unlock is True:
            self.unlocked = True
            self.call.host.locks.release(self.lockid)

    def _end(self):
        # The body ended (or broke) without an unlock: the lock holds until
        # the lease the client counts on runs out.
        if not self.unlocked:
            self.unlocked = True
            if self.kept:
                self.call.host.locks.abandon(self.lockid)

    def connectionLost(self, reason):
        _CallHandler.connectionLost(self, reason)
        if self.admitted is not None and self.admitted.called:
            self._end()

    def render(self, request):
        if self.buffer.strip():
            self._line(self.buffer)
        self.buffer = b""
        return _CallHandler.render(self, request)

    async def answer(self, request):
        await self.admitted
        self._end()
        request.answerJSON(locked=False)


# -- GET ------------------------------------------------------------------------


@implementer(IConsumer)
class _ResponseSink:
    """
    Writes a download into an HTTP response.  With C{holdLast}, the last
    byte waits for the sender's verdict: an invalid download is signalled,
    as git-annex does, by a body one byte short.
    """

    def __init__(self, request, length, holdLast, activity):
        self.request = request
        self.length = length
        self.holdLast = holdLast
        self.activity = activity
        self.written = 0
        self.held = b""
        self.producer = None

    def registerProducer(self, producer, streaming):
        self.producer = producer
        if not self.request._disconnected:
            self.request.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self.producer = None
        if not self.request._disconnected:
            self.request.unregisterProducer()

    def write(self, data):
        self.activity()
        end = self.written + len(data)
        self.written = end
        if self.holdLast and end == self.length and data:
            self.held = data[-1:]
            data = data[:-1]
        if data and not self.request._disconnected:
            self.request.write(data)

    def stop(self):
        producer = self.producer
        if producer is not None:
            self.unregisterProducer()
            producer.stopProducing()


class _Get(_CallHandler):
    def prepare(self):
        call = self.call
        rest = b"/".join(call.request.postpath)
        self.key = parseKey(rest)
        call.clientUUID(required=call.version is not None)
        self.associatedFile = None
        self.offset = 0
        if call.version is not None:
            # The unversioned route has no other parameters (p2phttp
            # ignores them there).
            self.associatedFile = call.arg(b"associatedfile", decodeValue,
                                           required=False)
            self.offset = call.arg(b"offset", parseOffset,
                                   required=False) or 0
        self.bypass = call.bypass()
        self.sink = None
        self.download = None

    def connectionLost(self, reason):
        _CallHandler.connectionLost(self, reason)
        if self.sink is not None:
            self.sink.stop()

    async def answer(self, request):
        download = await self.call.repository(self.bypass).get(
            self.key, self.associatedFile, self.offset)
        self.download = download
        try:
            await self._send(request, download)
        except BaseException:
            download.finish(False)
            raise

    async def _send(self, request, download):
        length = download.length
        if length == 0:
            valid = await download.deliver(None)
            if valid is False:
                await download.finish(False)
                # The reference answers 200 with an empty body, which a
                # client cannot tell from an empty object.
                raise HTTPFailure(404, "content not present")
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(DATA_LENGTH, b"0")
            request.write(b"")
            request.finish()
            await download.finish(True)
            return
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(DATA_LENGTH, b"%d" % (length,))
        watchdog = _Watchdog(self.call.root.reactor, request)
        # Every version but v0 (and the unversioned route) signals invalid
        # content by a short body: hold the last byte until the verdict.
        holdLast = self.version is not None and self.version >= 1
        sink = self.sink = _ResponseSink(request, length, holdLast,
                                         watchdog.activity)
        request.write(b"")
        try:
            valid = await download.deliver(sink)
        except Exception as e:
            watchdog.cancel()
            if not request._disconnected:
                self._log.warn("GET {key}: the repository failed after {n} "
                               "of {length} bytes: {why}", key=str(self.key),
                               n=sink.written, length=length,
                               why=_oneLine(e))
                self._abort(request)
            await download.finish(False)
            return
        watchdog.cancel()
        complete = sink.written == length
        if request._disconnected:
            await download.finish(False)
            return
        if not complete:
            self._abort(request)
            await download.finish(False)
            return
        if valid is not False and sink.held:
            request.write(sink.held)
        request.finish()
        await download.finish(valid is not False)

    def _abort(self, request):
        # An unfinished chunked body: the client sees the transfer fail.
        channel = getattr(request, "channel", None)
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()


class _Watchdog:
    """
    Gives up a transfer that made no progress for L{TRANSFER_IDLE_TIMEOUT}
    seconds (a client that stopped reading or writing, a stalled node).
    """

    def __init__(self, reactor, request, timeout=None, onTimeout=None):
        self.request = request
        self.timeout = timeout or TRANSFER_IDLE_TIMEOUT
        self.onTimeout = onTimeout
        self.timer = reactor.callLater(self.timeout, self._expired)

    def activity(self):
        if self.timer is not None and self.timer.active():
            self.timer.reset(self.timeout)

    def cancel(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _expired(self):
        self.timer = None
        if self.onTimeout is not None:
            self.onTimeout()
        channel = getattr(self.request, "channel", None)
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()


# -- PUT ------------------------------------------------------------------------


class _Put(_CallHandler):
    """
    An upload: the body streams into the repository's consumer as it
    arrives, paced by it.
    """

    maxBody = None

    def prepare(self):
        call = self.call
        self.key = call.arg(b"key", parseKey)
        call.clientUUID()
        self.associatedFile = call.arg(b"associatedfile", decodeValue,
                                       required=False)
        self.clientOffset = call.arg(b"offset", parseOffset,
                                     required=False) or 0
        self.bypass = call.bypass()
        self.dataPresent = (self.version >= 4 and call.arg(
            b"data-present", parseBool, required=False)) or False
        header = call.request.getHeader(DATA_LENGTH)
        if header is None:
            raise HTTPFailure(400, "Header X-git-annex-data-length is required")
        try:
            self.length = parseOffset(header)
        except BadValue:
            raise BadValue("Error parsing header X-git-annex-data-length "
                           "failed: could not parse number")
        self.pauser = _BodyPauser(call.request)
        self.pending = []
        self.upload = None
        self.sink = None
        self.skip = 0
        self.needed = 0
        self.sent = 0
        self.overflow = False
        self.held = b""
        self.finishing = False
        self.discard = False
        self.ready = None
        self.outcome = None
        self.watchdog = None

    def start(self):
        request = self.call.request
        request.channel.suspendIdleTimeout()
        self.pauser.pause("waiting")
        self.watchdog = _Watchdog(self.call.root.reactor, request,
                                  onTimeout=lambda: self._give_up(
                                      "the upload stalled"))
        self.ready = _run(self._admit())
        self.ready.addErrback(self._refused)

    def _refused(self, reason):
        failure = _failureFor(reason.value)
        if failure is None:
            self._log.failure("put of {key} failed", reason, key=str(self.key))
            failure = HTTPFailure(500, "internal error")
        self.refusal = failure
        self._startDiscarding()

    def _startDiscarding(self):
        self.discard = True
        self.pending = []
        self.pauser.resume("waiting")

    async def _admit(self):
        await self.call.authorize()
        offer = await self.call.repository(self.bypass).put(
            self.key, self.associatedFile)
        if self.lost is not None:
            if not isinstance(offer, Outcome):
                offer.abort("client went away")
            return
        if isinstance(offer, Outcome):
            if not offer.alreadyHad:
                raise HTTPFailure(500, "the repository does not accept "
                                       "this content")
            self.outcome = offer
            self._startDiscarding()
            return
        self.upload = offer
        if self.dataPresent:
            self._startDiscarding()
            return
        if offer.offset < self.clientOffset:
            # The client resumes from more than we have: its data cannot
            # be used (p2phttp answers stored:false too).
            self.outcome = Outcome(False)
            self._startDiscarding()
            return
        self.skip = offer.offset - self.clientOffset
        self.needed = max(0, self.length - self.skip)
        try:
            self.sink = offer.receive(self.needed)
            self.sink.registerProducer(self.pauser, True)
            self._registered = True
            pending, self.pending = self.pending, []
            for data in pending:
                self._feed(data)
            self._checkComplete()
        except BaseException:
            self._unregister()
            offer.abort("the upload could not start")
            self.outcome = Outcome(False)
            raise
        self.pauser.resume("waiting")

    _registered = False

    def _unregister(self):
        if self._registered:
            self._registered = False
            self.sink.unregisterProducer()
            # The repository no longer paces the body (the rest of it, if
            # any, is only read to be judged).
            self.pauser.resume("consumer")

    def _checkComplete(self):
        # Every byte the repository wants is written: the body stops
        # pacing it (like the P2P framing, which unregisters at the end of
        # a DATA payload).
        if self.sent >= self.needed:
            self._unregister()

    def bodyLength(self, length):
        pass

    def bodyReceived(self, data):
        self.received += len(data)
        if self.watchdog is not None:
            self.watchdog.activity()
        if self.discard:
            return
        if self.sink is None:
            self.pending.append(data)
            return
        self._feed(data)

    def _feed(self, data):
        if self.skip:
            cut = min(self.skip, len(data))
            self.skip -= cut
            data = data[cut:]
        room = self.needed - self.sent
        if len(data) > room:
            self.overflow = True
            data = data[:room]
        if data:
            self.sent += len(data)
            if self.sent == self.needed:
                # The last byte waits for the end of the body: a body
                # longer than announced must not complete the content (a
                # node stores complete, verified content whatever the
                # sender's verdict).
                self.held = data[-1:]
                data = data[:-1]
            if data:
                self.sink.write(data)
            self._checkComplete()

    def _give_up(self, why):
        if self.upload is not None and self.outcome is None:
            self._unregister()
            self.upload.abort(why)
            self.outcome = Outcome(False)

    def connectionLost(self, reason):
        _CallHandler.connectionLost(self, reason)
        if self.watchdog is not None:
            self.watchdog.cancel()
        if (self.upload is not None and self.outcome is None
                and not self.finishing):
            self._unregister()
            self.upload.abort("client went away mid-upload")
            self.outcome = Outcome(False)

    def render(self, request):
        async def respond():
            try:
                await self.ready
                if self.refusal is not None:
                    raise self.refusal
                outcome = await self._finish()
            finally:
                if self.watchdog is not None:
                    self.watchdog.cancel()
            request.answerJSON(stored=bool(outcome.ok),
                               **self.plus(outcome.uuids))

        _run(respond()).addErrback(self.failed, request)
        return server.NOT_DONE_YET

    async def _finish(self):
        self.finishing = True
        upload = self.upload
        if self.outcome is not None:
            if upload is not None and not self.outcome.alreadyHad and (
                    self.sink is None and not self.dataPresent):
                await _backOut(upload)
            return self.outcome
        if self.dataPresent:
            return await upload.dataPresent()
        bodyComplete = self.received == self.length
        if self.sent < self.needed:
            # Short body: the content cannot be completed.  The repository
            # keeps what it got, for a later resume.
            self._unregister()
            upload.abort("the body was %d bytes, %d announced" % (
                self.received, self.length))
            return Outcome(False)
        if self.overflow:
            # More than announced: invalid, whatever the bytes verify as.
            # The node never got the last byte, so it cannot store it.
            self._unregister()
            upload.abort("the body was longer than the %d bytes announced"
                         % (self.length,))
            return Outcome(False)
        if self.held:
            self.sink.write(self.held)
            self.held = b""
        await self.sink.done
        return await upload.finish(bodyComplete)


_HANDLERS = {
    b"key": _Get,
    b"checkpresent": _CheckPresent,
    b"remove": _Remove,
    b"remove-before": _RemoveBefore,
    b"gettimestamp": _GetTimestamp,
    b"put": _Put,
    b"putoffset": _PutOffset,
    b"lockcontent": _LockContent,
    b"keeplocked": _KeepLocked,
}


class AnnexSite(server.Site):
    """
    The site of an annexd HTTP listener.
    """

    protocol = AnnexHTTPChannel
    requestFactory = AnnexRequest

    def __init__(self, root, timeout=60, **kw):
        server.Site.__init__(self, root, timeout=timeout, **kw)
        self.displayTracebacks = False

    def acceptableProtocols(self):
        # The streaming request bodies are built on HTTP/1.1's channel:
        # never offer h2 in TLS negotiation (twisted.web would when the h2
        # package is installed).  git-annex speaks HTTP/1.1.
        return [b"http/1.1"]
