# -*- test-case-name: tests.test_httpnode -*-
"""
A node reached over git-annex's HTTP P2P API (C{annex+http://} and
C{annex+https://} urls; shared/spec/p2phttp.md), with treq.

L{HttpNode} implements L{IRepository} with one HTTP request per question,
as git-annex's own client does (C{P2P/Http/Client.hs}), so that a
C{git annex p2phttp} server, or another annexd, can be a node of a cluster
(stock git-annex cannot proxy to such remotes; spec section 5.1).

Wire rules followed (spec sections):

  - url -> base url (1.1): C{annex+http://HOST[:PORT][/PREFIX]}, port 9417
    by default for both schemes; a path of exactly C{/git-annex} is
    dropped, any other path is kept whole; requests go to
    C{BASE/git-annex/<uuid>/vN/...}.  User and password in the url are
    used as credentials.
  - values (1.3): keys, uuids, file names and lockids as
    L{annexd.http.values.encodeValue} makes them, percent-encoded.
  - versions (1.4, 5.4): v4 first, the next older one on 404 only, and the
    version that first answered 2xx is remembered for the node: later
    requests use it (or the newest older one the endpoint has) and do not
    walk again.  An operation the version lacks raises
    L{ProtocolNotSupported}: gettimestamp and remove-before below v3,
    DATA-PRESENT below v4; putoffset does not exist at v0, where an upload
    starts at offset 0.
  - GET (2.1): the length is C{X-git-annex-data-length}; the body is
    streamed into the caller's consumer with backpressure (the consumer's
    pause stops reading the socket).  A body of exactly the announced
    length is VALID (no verdict at v0), a shorter one that ends cleanly is
    INVALID, a transfer that breaks is L{RepositoryUnavailable}.  A missing
    key is C{200} with length 0 from the reference and C{404} from annexd:
    both are "absent" (length 0, INVALID), as is a length of 0 for a key
    whose size is not known to be 0 at that offset.
  - PUT (2.2, 2.3): putoffset first (v1+): C{alreadyhave} is an
    L{Outcome} with C{alreadyHad}; otherwise the body streams from the
    caller's consumer into a chunked request body with backpressure both
    ways.  The last byte is held back until the sender's verdict: INVALID
    ends the body one byte short, which is exactly how git-annex's client
    says it (the server then stores nothing).  This is why the body is
    chunked and carries no C{Content-Length} (git-annex's client never
    sends one either): a short body with a C{Content-Length} could only be
    signalled by dropping the connection.
  - locks (3): lockcontent, then a keeplocked long poll whose streamed
    NDJSON body says C{{"unlock":false}} at once and C{{"unlock":true}} on
    release.  The lock counts as held once the keeplocked request is on
    its way with its first line (as git-annex's client does).
  - auth (4): HTTP basic.  Given credentials are sent with every request;
    without them, a 401 runs C{git credential fill} (the way git-annex
    does: protocol, host, path and the C{WWW-Authenticate} challenge), the
    request is retried once, and the credential is approved on success,
    rejected on a second 401, and cached for the node.

Connections: a persistent L{HTTPConnectionPool} (at most C{maxConnections}
idle connections kept, closed after C{idleTimeout} seconds), and at most
C{maxConnections} exchanges at once (a L{DeferredSemaphore}; the rest
queue).  A download or upload holds its slot until it is finished, like a
session of L{annexd.nodes.pool.SessionPool}.  Content locks do not take a
transfer slot: each holds a connection of its own (the keeplocked request)
for as long as it is held, at most L{HttpNode.maxLockSessions} at once.

Errors: a request that cannot connect (refused, unreachable, connect
timeout) or whose TLS handshake or certificate check fails is
L{RepositoryUnavailable} and marks the node down with the same back-off as
L{SessionPool} (both keep a L{annexd.nodes.pool.NodeHealth};
L{HttpNode.status} has the shape of L{SessionPool.status}).  A request without a body that
gets no answer at all (a kept connection the server had closed) is sent
once more on a new connection, except lockcontent; if that fails too, the
node is down.  A transfer that breaks off, or a request cancelled by
C{requestTimeout}, is L{RepositoryUnavailable} without marking the node
down.  Error statuses, with the server's text (one line, cut short):
401 (once credentials failed) and 403, 404 (at the last version tried),
502, 503, 504 are L{RepositoryUnavailable}; the others are
L{HTTPStatusError} (a L{RepositoryError}).  Two exceptions follow what the
answer means: a 403 on lockcontent is "no lock" (L{None}), as git-annex's
client takes it, and a 500 on remove is "not removed" (p2phttp's answer
for locked content, spec section 7).  A 2xx answer that is not the JSON
the endpoint promises is L{RepositoryUnavailable}.
"""

import base64
import json
import os
import shutil
from urllib.parse import quote, unquote, urlsplit

from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import defer, error as ierror, protocol
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent, BrowserLikePolicyForHTTPS, HTTP11ClientProtocol,
    HTTPConnectionPool, RequestNotSent, RequestTransmissionFailed,
    ResponseDone, ResponseFailed, ResponseNeverReceived,
    _HTTP11ClientFactory)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from annexd.http.values import BadValue, decodeValue, encodeValue
from annexd.interfaces import (
    IContentLock, IDownload, IRepository, IUpload, Outcome,
    ProtocolNotSupported, RepositoryError, RepositoryUnavailable)
from annexd.nodes.pool import IDLE_TIMEOUT, NodeHealth
from annexd.protocol.keys import Key

#: git-annex's default port for annex+http(s) (git's is 9418).
DEFAULT_PORT = 9417

#: The API versions, newest first.
VERSIONS = (4, 3, 2, 1, 0)

#: Endpoint -> the versions that have it (spec section 1.2).
ENDPOINT_VERSIONS = {
    "key": VERSIONS,
    "checkpresent": VERSIONS,
    "remove": VERSIONS,
    "remove-before": (4, 3),
    "gettimestamp": (4, 3),
    "put": VERSIONS,
    "putoffset": (4, 3, 2, 1),
    "lockcontent": VERSIONS,
    "keeplocked": VERSIONS,
}

#: Seconds to wait for a TCP (and TLS) connection.
CONNECT_TIMEOUT = 30.0

#: The most of a JSON answer (or error text) that is read.
MAX_ANSWER = 65536

#: How much of a server's error text goes into an exception.
MAX_ERROR_TEXT = 200

#: The idle timeout standing for "none" (L{None}).
NO_IDLE_TIMEOUT = 86400.0

#: Seconds a C{git credential} command may run.
CREDENTIAL_TIMEOUT = 60.0

DATA_LENGTH = b"X-git-annex-data-length"
JSON_ACCEPT = b"application/json;charset=utf-8,application/json"
OCTET_STREAM = b"application/octet-stream"
USER_AGENT = b"annexd"

_UNLOCK_FALSE = b'{"unlock":false}\n'
_UNLOCK_TRUE = b'{"unlock":true}\n'


# -- urls -----------------------------------------------------------------------


class AnnexUrl:
    """
    A parsed C{annex+http(s)://} url.

    @ivar scheme: C{"http"} or C{"https"}.
    @ivar host: the host name or address (no brackets).
    @ivar port: the port (9417 by default).
    @ivar base: the base path requests start with (C{""} or C{"/prefix"}).
    @ivar origin: C{scheme://host:port}.
    @ivar credentials: C{(user, password)} from the url, or L{None}.
    @ivar credentialFields: the C{git credential} description of the url:
        a list of C{(name, value)} (protocol, host, path, username).
    """

    def __init__(self, url):
        for prefix in ("annex+http://", "annex+https://"):
            if url.startswith(prefix):
                break
        else:
            raise ValueError("not an annex+http(s) url: %s" % (url,))
        self.url = url
        self.scheme = prefix[len("annex+"):-len("://")]
        parts = urlsplit(self.scheme + "://" + url[len(prefix):])
        if not parts.hostname:
            raise ValueError("no host in %s" % (url,))
        try:
            port = parts.port
        except ValueError:
            raise ValueError("bad port in %s" % (url,))
        self.host = parts.hostname
        self.port = DEFAULT_PORT if port is None else port
        hostText = "[%s]" % (self.host,) if ":" in self.host else self.host
        self.origin = "%s://%s:%d" % (self.scheme, hostText, self.port)
        segments = [s for s in parts.path.split("/") if s]
        if segments == ["git-annex"]:
            segments = []
        self.base = "".join("/" + s for s in segments)
        self.credentials = None
        if parts.username is not None and parts.password is not None:
            self.credentials = (unquote(parts.username),
                                unquote(parts.password))
        netloc = parts.netloc.rpartition("@")[2]
        fields = [("protocol", "annex+" + self.scheme), ("host", netloc)]
        path = parts.path.lstrip("/")
        if path:
            fields.append(("path", path))
        if parts.username is not None:
            fields.append(("username", unquote(parts.username)))
        self.credentialFields = fields

    def __repr__(self):
        return "<AnnexUrl %s%s>" % (self.origin, self.base)


def _queryString(pairs):
    return "&".join("%s=%s" % (name, quote(str(value), safe=""))
                    for name, value in pairs)


def _asKey(key):
    return key if isinstance(key, Key) else Key.parse(key)


# -- small stream helpers --------------------------------------------------------


class _Collector(protocol.Protocol):
    """
    Reads a response body up to C{limit} bytes (the connection is dropped
    if there is more).  C{done} fires with C{(bytes, overflowed)}.
    """

    def __init__(self, limit):
        self.limit = limit
        self.chunks = []
        self.size = 0
        self.overflow = False
        self.done = defer.Deferred()

    def dataReceived(self, data):
        if self.overflow:
            return
        room = self.limit - self.size
        self.size += len(data)
        if self.size > self.limit:
            self.overflow = True
            self.chunks.append(data[:room])
            self.transport.stopProducing()
            return
        self.chunks.append(data)

    def connectionLost(self, reason):
        if self.overflow or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback((b"".join(self.chunks), self.overflow))
        else:
            self.done.errback(reason)


def _collect(response, limit=MAX_ANSWER):
    collector = _Collector(limit)
    response.deliverBody(collector)
    return collector.done


async def _discard(response):
    """
    Read and forget a (short) body, so that the connection can be reused.
    """
    try:
        await _collect(response)
    except Exception:
        pass


async def _errorText(response):
    try:
        data, _ = await _collect(response, 4096)
    except Exception:
        return ""
    text = data.decode("utf-8", "replace")
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_TEXT:
        text = text[:MAX_ERROR_TEXT] + "..."
    return text


class _Drop(protocol.Protocol):
    """
    A body nobody wants: drop the connection (it cannot be reused with an
    unread body).
    """

    def connectionMade(self):
        self.transport.stopProducing()


class HTTPStatusError(RepositoryError):
    """
    The node answered with an error status.

    @ivar code: the HTTP status.
    """

    def __init__(self, text, code):
        RepositoryError.__init__(self, text)
        self.code = code


class _HTTPStatusUnavailable(RepositoryUnavailable):
    def __init__(self, text, code):
        RepositoryUnavailable.__init__(self, text)
        self.code = code


# -- TLS ------------------------------------------------------------------------


def _tlsPolicy(trustRoot):
    """
    The L{IPolicyForHTTPS}: Twisted's browser-like verification (the
    hostname or IP address checked by service_identity), against the
    platform's trust store or, given a PEM file, the CA certificates in it.
    """
    if trustRoot is None:
        return BrowserLikePolicyForHTTPS()
    with open(trustRoot, "rb") as f:
        data = f.read()
    end = b"-----END CERTIFICATE-----"
    certificates = [Certificate.loadPEM(block + end)
                    for block in data.split(end) if b"-----BEGIN" in block]
    if not certificates:
        raise ValueError("no certificate in %s" % (trustRoot,))
    return BrowserLikePolicyForHTTPS(
        trustRoot=trustRootFromCertificates(certificates))


class _Connection(HTTP11ClientProtocol):
    """
    One HTTP connection, known to its node while it is open (so that
    L{HttpNode.close} can close it and wait until it is gone).
    """

    def __init__(self, quiescentCallback, node):
        HTTP11ClientProtocol.__init__(self, quiescentCallback)
        self._node = node
        self.closed = defer.Deferred()

    def connectionMade(self):
        HTTP11ClientProtocol.connectionMade(self)
        self._node._connectionMade(self)

    def connectionLost(self, reason):
        try:
            HTTP11ClientProtocol.connectionLost(self, reason)
        finally:
            self._node._connectionLost(self)
            self.closed.callback(None)


class _ConnectionFactory(_HTTP11ClientFactory):
    def __init__(self, quiescentCallback, metadata, node):
        _HTTP11ClientFactory.__init__(self, quiescentCallback, metadata)
        self._node = node

    def buildProtocol(self, addr):
        return _Connection(self._quiescentCallback, self._node)


class _Pool(HTTPConnectionPool):
    """
    A persistent connection pool whose connections are L{_Connection}s.
    """

    def __init__(self, reactor, node):
        HTTPConnectionPool.__init__(self, reactor, persistent=True)
        self._factory = (lambda quiescentCallback, metadata:
                         _ConnectionFactory(quiescentCallback, metadata,
                                            node))

    def idleCount(self):
        return sum(len(p) for p in getattr(self, "_connections", {}).values())


# -- git credential ---------------------------------------------------------------


class _CredentialProcess(protocol.ProcessProtocol):
    """
    One C{git credential ACTION}: writes the description on stdin, collects
    stdout (bounded) and stderr.
    """

    def __init__(self, stdin):
        self.stdin = stdin
        self.out = []
        self.err = []
        self.size = 0
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.size += len(data)
        if self.size <= MAX_ANSWER:
            self.out.append(data)

    def errReceived(self, data):
        if sum(len(d) for d in self.err) < 4096:
            self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback((b"".join(self.out), b"".join(self.err),
                             getattr(reason.value, "exitCode", None)))


def _credentialLines(fields):
    return "".join("%s=%s\n" % (name, value)
                   for name, value in fields).encode("utf-8") + b"\n"


def _parseCredential(output):
    fields = []
    for line in output.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition("=")
        if sep:
            fields.append((name, value))
    return fields


# -- the node ---------------------------------------------------------------------


def _failureOf(e):
    """
    The L{Failure}s an HTTP client error wraps (or L{None}).
    """
    return getattr(e, "reasons", None) or []


def _classify(e):
    """
    What kind of failure an exception from a request is: C{"connect"}
    (no connection), C{"tls"} (handshake or verification failed),
    C{"stale"} (sent, no response: a kept connection the server had
    closed, or a server that drops connections), C{"cancelled"},
    C{"broken"} (failed after the response began) or C{"other"}.
    """
    if isinstance(e, defer.CancelledError):
        return "cancelled"
    if isinstance(e, (ierror.ConnectError, ierror.DNSLookupError)):
        return "connect"
    if isinstance(e, (ResponseFailed, RequestTransmissionFailed,
                      RequestNotSent)):
        reasons = _failureOf(e)
        if any(r.check(defer.CancelledError) for r in reasons):
            return "cancelled"
        if any(r.check(SSL.Error, VerificationError) for r in reasons):
            return "tls"
        # (ResponseNeverReceived is a ResponseFailed.)
        if isinstance(e, (ResponseNeverReceived, RequestTransmissionFailed,
                          RequestNotSent)):
            return "stale"
        return "broken"
    if isinstance(e, (SSL.Error, VerificationError)):
        return "tls"
    return "other"


def _describe(e):
    """
    A one-line description of a request failure.
    """
    reasons = _failureOf(e)
    if isinstance(e, defer.CancelledError) or any(
            r.check(defer.CancelledError) for r in reasons):
        return "request cancelled (timed out?)"
    if reasons:
        parts = []
        for reason in reasons:
            value = reason.value
            if isinstance(value, SSL.Error):
                details = [item[-1] for item in (value.args[0] if value.args
                                                 else [])
                           if isinstance(item, tuple) and item]
                parts.append("TLS handshake failed: %s" % (
                    ", ".join(str(d) for d in details) or value,))
            elif isinstance(value, VerificationError):
                parts.append("TLS certificate does not match the host: %s"
                             % (value,))
            else:
                parts.append(reason.getErrorMessage()
                             or value.__class__.__name__)
        return "; ".join(parts)
    if isinstance(e, SSL.Error):
        return "TLS handshake failed: %s" % (e,)
    return str(e) or e.__class__.__name__


@implementer(IRepository)
class HttpNode:
    """
    A git-annex repository reached over the HTTP P2P API.

    @ivar uuid: the node's uuid (L{bytes}), the server uuid in the url path.
    @ivar clientUUID: the gateway's uuid, sent as C{clientuuid}.
    @ivar name: a human name for logs and errors.
    @ivar bypass: uuids sent as C{bypass} (read for every request).
    @ivar version: the API version the node answered with (L{None} until
        one did).
    @ivar maxConnections: at most this many exchanges at once.
    @ivar requestTimeout: seconds a JSON request may take (L{None}: no
        limit, as git-annex's client; the reference queues requests while
        its workers are busy).
    @ivar started: connections opened since the node was made.
    """

    _log = Logger()

    #: Content locks held at once (each holds a connection).
    maxLockSessions = 100

    def __init__(self, reactor, url, uuid, clientUUID, name=None,
                 maxConnections=1, bypass=(), credentials=None,
                 repoPath=None, environment=None, trustRoot=None,
                 idleTimeout=IDLE_TIMEOUT):
        self.reactor = reactor
        self._clock = reactor
        self.url = url
        self.annexUrl = AnnexUrl(url)
        self.uuid = uuid
        self.clientUUID = clientUUID
        self.name = name or url
        self.maxConnections = maxConnections
        self.bypass = tuple(bypass)
        self.repoPath = repoPath
        self._environment = environment
        self.version = None
        self.requestTimeout = None
        self.started = 0
        if credentials is None:
            credentials = self.annexUrl.credentials
        self._credentials = (None if credentials is None
                             else tuple(credentials))
        #: the credential git credential fill gave (fields), once it worked
        self._helperCredential = None
        self._fillWaiters = None
        self._health = NodeHealth(reactor)
        self._closed = False
        self._busy = 0
        self._slots = defer.DeferredSemaphore(maxConnections)
        self._lockSlots = defer.DeferredSemaphore(self.maxLockSessions)
        self._locks = set()
        self._exchanges = set()
        #: the open connections (L{_Connection}), oldest first
        self._connections = []
        self._pool = _Pool(reactor, self)
        self._pool.maxPersistentPerHost = maxConnections
        self._pool.retryAutomatically = True
        self.idleTimeout = idleTimeout
        policy = _tlsPolicy(trustRoot) if self.annexUrl.scheme == "https" \
            else BrowserLikePolicyForHTTPS()
        self._agent = Agent(reactor, contextFactory=policy,
                            connectTimeout=CONNECT_TIMEOUT,
                            pool=self._pool)
        self._http = HTTPClient(self._agent)

    def __repr__(self):
        return "<HttpNode %s %s>" % (self.name, self.url)

    # -- settings --------------------------------------------------------------

    @property
    def idleTimeout(self):
        return self._idleTimeout

    @idleTimeout.setter
    def idleTimeout(self, value):
        # Router.configurePools sets it by name.  None keeps idle
        # connections (for a day: the pool needs a number).
        self._idleTimeout = value
        self._pool.cachedConnectionTimeout = (
            NO_IDLE_TIMEOUT if value is None else value)

    # -- connections and health -------------------------------------------------

    def _connectionMade(self, connection):
        self.started += 1
        self._connections.append(connection)

    def _connectionLost(self, connection):
        if connection in self._connections:
            self._connections.remove(connection)

    def _unavailable(self, text):
        return RepositoryUnavailable("%s: %s" % (self.name, text))

    async def _take(self, slots):
        """
        Take a slot (transfer or lock), failing at once while the node is
        down or closed.
        """
        if self._closed:
            raise self._unavailable("closed")
        self._health.check(self.name)
        await slots.acquire()
        if self._closed:
            slots.release()
            raise self._unavailable("closed")
        self._busy += 1
        released = []

        def release():
            if not released:
                released.append(True)
                self._busy -= 1
                slots.release()
        return release

    # -- urls ------------------------------------------------------------------

    def _url(self, version, endpoint, query, keyPath=None):
        url = "%s%s/git-annex/%s/v%d/%s" % (
            self.annexUrl.origin, self.annexUrl.base,
            quote(encodeValue(self.uuid), safe=""), version, endpoint)
        if keyPath is not None:
            url += "/" + quote(encodeValue(keyPath), safe="")
        pairs = list(query)
        pairs.extend(("bypass", encodeValue(u)) for u in tuple(self.bypass))
        if pairs:
            url += "?" + _queryString(pairs)
        return url

    def _client(self):
        return ("clientuuid", encodeValue(self.clientUUID))

    def _versionsFor(self, endpoint):
        versions = ENDPOINT_VERSIONS[endpoint]
        if self.version is not None:
            versions = tuple(v for v in versions if v <= self.version)
        return versions

    def _notSupported(self, what, version):
        return ProtocolNotSupported("%s: %s needs a newer API version than "
                                    "v%s" % (self.name, what, version))

    # -- requests --------------------------------------------------------------

    async def _request(self, endpoint, query, method=b"POST", keyPath=None,
                       headers=(), body=None, versions=None, accept=None,
                       timeout=None, retry=True):
        """
        Send one API request, walking down the versions on 404 until the
        node's version is known.

        @param body: a streaming L{IBodyProducer} (sent once: no version
            walk, no auth retry), or L{None}.
        @return: C{(response, version)}; the response body is unread.  A
            404 at the last version tried is returned, for the caller to
            judge.
        """
        if versions is None:
            versions = self._versionsFor(endpoint)
        if not versions:
            raise self._notSupported(endpoint, self.version)
        for i, version in enumerate(versions):
            url = self._url(version, endpoint, query, keyPath)
            response = await self._send(method, url, headers, body, accept,
                                        timeout, retry)
            if (response.code == 404 and self.version is None
                    and body is None and i + 1 < len(versions)):
                await _discard(response)
                continue
            if 200 <= response.code < 300 and self.version is None:
                self.version = version
            return response, version

    async def _send(self, method, url, headers, body, accept, timeout,
                    retry):
        """
        Send one HTTP request: down-marking, one retry of a bodiless request
        that got no response, and basic auth (a 401 asks git's credential
        helper once).
        """
        pending = None      # a credential from the helper, being tried
        retried = False
        while True:
            if self._closed:
                raise self._unavailable("closed")
            self._health.check(self.name)
            with self._health.attempt() as probe:
                authorization, sentWith = self._authorization(pending)
                allHeaders = Headers({b"User-Agent": [USER_AGENT]})
                if accept:
                    allHeaders.setRawHeaders(b"Accept", [accept])
                if authorization is not None:
                    allHeaders.setRawHeaders(b"Authorization",
                                             [authorization])
                for name, value in headers:
                    allHeaders.setRawHeaders(name, [value])
                try:
                    response = await self._http.request(
                        method.decode("ascii"), url, headers=allHeaders,
                        data=body, allow_redirects=False, unbuffered=True,
                        timeout=timeout, reactor=self.reactor)
                except Exception as e:
                    kind = _classify(e)
                    if (kind == "stale" and retry and body is None
                            and not retried and not self._closed):
                        retried = True
                        continue
                    if kind in ("connect", "tls", "stale"):
                        self._health.failed(
                            RepositoryUnavailable(_describe(e)), probe,
                            self.name, self._log)
                    raise self._unavailable("%s %s: %s" % (
                        method.decode("ascii"), self._shown(url),
                        _describe(e)))
            self._health.connected(self.name, self._log)
            if response.code != 401:
                if pending is not None:
                    # Not refused: kept for the node; approved (git may
                    # store it) once it has worked.
                    self._helperCredential = pending
                    if 200 <= response.code < 300:
                        await self._runCredential("approve", pending)
                return response
            challenge = response.headers.getRawHeaders(b"WWW-Authenticate",
                                                       [])
            await _discard(response)
            if self._credentials is not None:
                raise self._unavailable(
                    "401 Unauthorized: the server refused the credentials "
                    "of user %r" % (self._credentials[0],))
            if sentWith is not None:
                if self._helperCredential is sentWith:
                    self._helperCredential = None
                await self._runCredential("reject", sentWith)
                raise self._unavailable(
                    "401 Unauthorized: the server refused the credentials "
                    "of user %r from git credential" % (
                        dict(sentWith).get("username"),))
            if self._helperCredential is not None:
                # Sent before another request got the credential: again,
                # with it.
                pending = None
            else:
                pending = await self._fillCredential(challenge)
            if body is not None:
                # A streamed body cannot be sent again: the next request
                # will carry the credential.
                if pending is not None:
                    self._helperCredential = pending
                raise self._unavailable(
                    "401 Unauthorized (credentials are now known: try "
                    "again)")

    def _shown(self, url):
        return url.split("?", 1)[0]

    def _authorization(self, pending):
        """
        @return: the C{Authorization} header value (or L{None}), and the
            git credential it comes from (or L{None}).
        """
        fields = None
        if self._credentials is not None:
            user, password = self._credentials
        else:
            fields = pending or self._helperCredential
            if fields is None:
                return None, None
            known = dict(fields)
            user, password = known.get("username"), known.get("password")
        token = "%s:%s" % (user, password)
        return b"Basic " + base64.b64encode(token.encode("utf-8")), fields

    # -- git credential ------------------------------------------------------

    async def _fillCredential(self, challenge):
        """
        Ask C{git credential fill} (once for concurrent requests).
        """
        if self._fillWaiters is not None:
            waiter = defer.Deferred()
            self._fillWaiters.append(waiter)
            return await waiter
        self._fillWaiters = []
        try:
            fields = await self._fill(challenge)
        except Exception as e:
            waiters, self._fillWaiters = self._fillWaiters, None
            for waiter in waiters:
                waiter.errback(e)
            raise
        waiters, self._fillWaiters = self._fillWaiters, None
        for waiter in waiters:
            waiter.callback(fields)
        return fields

    async def _fill(self, challenge):
        description = list(self.annexUrl.credentialFields)
        for value in challenge:
            description.append(("wwwauth[]",
                                value.decode("utf-8", "replace")))
        output, errors, code = await self._git(
            "fill", _credentialLines(description))
        fields = _parseCredential(output)
        known = dict(fields)
        if code != 0 or not known.get("username") \
                or "password" not in known:
            why = " ".join(errors.decode("utf-8", "replace").split())
            raise self._unavailable(
                "401 Unauthorized and no credentials (git credential fill "
                "%s%s)" % ("exited with %s" % (code,) if code else
                           "gave no username and password",
                           ": " + why[:MAX_ERROR_TEXT] if why else ""))
        return fields

    async def _runCredential(self, action, fields):
        try:
            output, errors, code = await self._git(
                action, _credentialLines(fields))
        except Exception as e:
            self._log.warn("{name}: git credential {action} failed: {why}",
                           name=self.name, action=action, why=e)
            return
        if code != 0:
            self._log.warn("{name}: git credential {action} exited with "
                           "{code}", name=self.name, action=action, code=code)

    def _git(self, action, stdin):
        """
        Run C{git credential ACTION} in C{repoPath}, without blocking.

        @return: a Deferred firing with C{(stdout, stderr, exit code)}.
        """
        env = dict(os.environ if self._environment is None
                   else self._environment)
        # A daemon never prompts on a terminal.
        env.setdefault("GIT_TERMINAL_PROMPT", "0")
        git = shutil.which("git", path=env.get("PATH")) or "git"
        proc = _CredentialProcess(stdin)
        try:
            transport = self.reactor.spawnProcess(
                proc, git, ["git", "credential", action], env=env,
                path=self.repoPath)
        except OSError as e:
            return defer.fail(self._unavailable(
                "cannot run git credential: %s" % (e,)))
        timer = self.reactor.callLater(CREDENTIAL_TIMEOUT,
                                       self._killCredential, transport)

        def ended(result):
            if timer.active():
                timer.cancel()
            return result
        return proc.ended.addBoth(ended)

    def _killCredential(self, transport):
        self._log.warn("{name}: git credential took over {n} s: killed",
                       name=self.name, n=CREDENTIAL_TIMEOUT)
        try:
            transport.signalProcess("KILL")
        except ierror.ProcessExitedAlready:
            pass

    # -- answers ---------------------------------------------------------------

    async def _statusError(self, response, what):
        """
        The exception for an error status.
        """
        code = response.code
        phrase = (response.phrase or b"").decode("latin-1", "replace")
        text = await _errorText(response)
        message = "%s: %s answered %d %s%s" % (
            self.name, what, code, phrase, ": " + text if text else "")
        if code in (401, 403, 404, 502, 503, 504):
            if code == 404:
                message += " (does it serve repository %s?)" % (
                    self.uuid.decode("utf-8", "replace"),)
            return _HTTPStatusUnavailable(message, code)
        return HTTPStatusError(message, code)

    async def _json(self, response, what):
        """
        The JSON object of a 2xx answer, or the error for any other.
        """
        if not 200 <= response.code < 300:
            raise await self._statusError(response, what)
        try:
            data, overflow = await _collect(response)
        except Exception as e:
            raise self._unavailable("%s: the answer broke off: %s" % (
                what, _describe(e)))
        if overflow:
            raise self._unavailable("%s: the answer is over %d bytes" % (
                what, MAX_ANSWER))
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self._unavailable("%s: unexpected answer %r" % (
                what, data[:MAX_ERROR_TEXT]))
        return answer

    def _field(self, answer, name, kind, what):
        value = answer.get(name)
        if not isinstance(value, kind) or (kind is int
                                           and isinstance(value, bool)):
            raise self._unavailable("%s: unexpected answer %s" % (
                what, json.dumps(answer)[:MAX_ERROR_TEXT]))
        return value

    def _uuids(self, answer, what):
        raw = answer.get("plusuuids", [])
        if not isinstance(raw, list):
            raise self._unavailable("%s: bad plusuuids %r" % (what, raw))
        uuids = []
        for item in raw:
            if not isinstance(item, str) or not item:
                raise self._unavailable("%s: bad plusuuids %r" % (what, raw))
            try:
                uuids.append(decodeValue(item.encode("utf-8")))
            except BadValue:
                raise self._unavailable("%s: bad plusuuids %r" % (what, raw))
        return tuple(uuids)

    # -- running exchanges ---------------------------------------------------

    def _run(self, coroutine):
        return defer.Deferred.fromCoroutine(coroutine)

    async def _simple(self, what, endpoint, query, timeout=True, retry=True):
        release = await self._take(self._slots)
        try:
            response, version = await self._request(
                endpoint, query, accept=JSON_ACCEPT,
                timeout=self.requestTimeout if timeout else None,
                retry=retry)
            return await self._json(response, what), version
        finally:
            release()

    # -- IRepository -----------------------------------------------------------

    def checkPresent(self, key):
        return self._run(self._checkPresent(_asKey(key)))

    async def _checkPresent(self, key):
        what = "checkpresent %s" % (key,)
        answer, _ = await self._simple(what, "checkpresent", [
            ("key", encodeValue(key.raw)), self._client()])
        return self._field(answer, "present", bool, what)

    def remove(self, key, before=None):
        return self._run(self._remove(_asKey(key), before))

    async def _remove(self, key, before):
        query = [("key", encodeValue(key.raw)), self._client()]
        if before is None:
            what, endpoint = "remove %s" % (key,), "remove"
        else:
            what, endpoint = "remove-before %s" % (key,), "remove-before"
            query.append(("timestamp", "%d" % (int(before),)))
        try:
            answer, _ = await self._simple(what, endpoint, query)
        except HTTPStatusError as e:
            if e.code != 500:
                raise
            # git annex p2phttp fails a remove of locked content with
            # "500 Something went wrong" (spec section 7): not removed.
            self._log.info("{what}: {why}: taken as not removed", what=what,
                           why=str(e))
            return Outcome(False)
        return Outcome(self._field(answer, "removed", bool, what),
                       self._uuids(answer, what))

    def getTimestamp(self):
        return self._run(self._getTimestamp())

    async def _getTimestamp(self):
        answer, _ = await self._simple("gettimestamp", "gettimestamp",
                                       [self._client()])
        return self._field(answer, "timestamp", int, "gettimestamp")

    def lockContent(self, key):
        return self._run(self._lockContent(_asKey(key)))

    async def _lockContent(self, key):
        what = "lockcontent %s" % (key,)
        release = await self._take(self._lockSlots)
        try:
            response, version = await self._request(
                "lockcontent", [("key", encodeValue(key.raw)),
                                self._client()],
                accept=JSON_ACCEPT, timeout=self.requestTimeout,
                retry=False)
            if response.code == 403:
                # Locking not allowed here (p2phttp's readonly users,
                # --unauth-nolocking): like git-annex's client, no lock.
                text = await _errorText(response)
                self._log.info("{name}: lockcontent refused (403 {text})",
                               name=self.name, text=text)
                release()
                return None
            answer = await self._json(response, what)
            if not self._field(answer, "locked", bool, what):
                release()
                return None
            lockid = answer.get("lockid")
            if not isinstance(lockid, str) or not lockid:
                raise self._unavailable("%s: no lockid in %s" % (
                    what, json.dumps(answer)[:MAX_ERROR_TEXT]))
        except BaseException:
            release()
            raise
        lock = _HttpLock(self, key, lockid, version, release)
        await lock.start()
        return lock

    def get(self, key, associatedFile, offset):
        return self._run(self._get(_asKey(key), associatedFile, offset))

    async def _get(self, key, associatedFile, offset):
        what = "GET %s" % (key,)
        release = await self._take(self._slots)
        try:
            query = [self._client()]
            if associatedFile:
                query.append(("associatedfile", encodeValue(associatedFile)))
            query.append(("offset", "%d" % (offset,)))
            response, version = await self._request(
                "key", query, method=b"GET", keyPath=key.raw,
                accept=OCTET_STREAM)
            if response.code == 404:
                # annexd says a missing key is 404 (p2phttp says 200 with
                # length 0): absent either way.
                await _discard(response)
                download = _HttpDownload(self, None, 0, version, False,
                                         release)
                return download
            if not 200 <= response.code < 300:
                raise await self._statusError(response, what)
            header = response.headers.getRawHeaders(DATA_LENGTH)
            if not header or not header[0].strip().isdigit():
                await _discard(response)
                raise self._unavailable("%s: %s header %s" % (
                    what, DATA_LENGTH.decode("ascii"),
                    "missing" if not header else "bad: %r" % (header[0],)))
            length = int(header[0])
        except BaseException:
            release()
            raise
        # Nothing to send at a non-zero remaining size is p2phttp's way of
        # saying the content is missing (spec 2.1).
        present = length > 0 or (key.size is not None
                                 and key.size <= offset)
        return _HttpDownload(self, response, length, version, present,
                             release)

    def put(self, key, associatedFile):
        return self._run(self._put(_asKey(key), associatedFile))

    async def _put(self, key, associatedFile):
        what = "putoffset %s" % (key,)
        release = await self._take(self._slots)
        try:
            offset = 0
            version = self.version
            if self._versionsFor("putoffset"):
                response, version = await self._request(
                    "putoffset", [("key", encodeValue(key.raw)),
                                  self._client()],
                    accept=JSON_ACCEPT, timeout=self.requestTimeout)
                if response.code == 404 and self.version is None:
                    # No putoffset at v1-v4: a v0 server (or none at all,
                    # which the put will tell).
                    await _discard(response)
                    version = 0
                else:
                    answer = await self._json(response, what)
                    if "offset" in answer:
                        offset = self._field(answer, "offset", int, what)
                        if offset < 0:
                            raise self._unavailable("%s: negative offset" % (
                                what,))
                    elif answer.get("alreadyhave") is True:
                        release()
                        return Outcome(True, self._uuids(answer, what),
                                       alreadyHad=True)
                    else:
                        raise self._unavailable("%s: unexpected answer %s" % (
                            what, json.dumps(answer)[:MAX_ERROR_TEXT]))
            else:
                version = 0
        except BaseException:
            release()
            raise
        return _HttpUpload(self, key, associatedFile, offset, version,
                           release)

    async def _sendPut(self, key, associatedFile, offset, version, length,
                       body=None, dataPresent=False):
        """
        The put request itself.

        @return: the L{Outcome}.
        """
        what = "put %s" % (key,)
        query = [("key", encodeValue(key.raw)), self._client()]
        if associatedFile:
            query.append(("associatedfile", encodeValue(associatedFile)))
        query.append(("offset", "%d" % (offset,)))
        if dataPresent:
            query.append(("data-present", "true"))
        headers = [(DATA_LENGTH, b"%d" % (length,)),
                   (b"Content-Type", OCTET_STREAM)]
        response, _ = await self._request(
            "put", query, headers=headers, body=body, versions=(version,),
            accept=JSON_ACCEPT)
        answer = await self._json(response, what)
        return Outcome(self._field(answer, "stored", bool, what),
                       self._uuids(answer, what))

    # -- monitoring and closing -----------------------------------------------

    @property
    def up(self):
        """
        Whether the node is up (not marked down after a failed connect);
        cheap, for choosing among nodes on every request.
        """
        return self._health.error is None

    def status(self):
        """
        The node's state, for monitoring, in the shape of
        L{SessionPool.status}: C{idle} counts the kept connections, C{busy}
        the exchanges and locks in progress, C{started} the connections
        opened, C{maxSessions} is C{maxConnections}.
        """
        return self._health.status(self.name, self.uuid,
                                   self._pool.idleCount(), self._busy,
                                   self.started, self.maxConnections)

    def close(self):
        """
        Drop every connection (held locks and transfers included); later
        requests fail.

        @return: a Deferred firing when the connections are closed.
        """
        self._closed = True
        for lock in list(self._locks):
            lock._abort("the node connector is closing")
        for exchange in list(self._exchanges):
            exchange._abort("the node connector is closing")
        self._pool.closeCachedConnections()
        waits = []
        for connection in list(self._connections):
            waits.append(connection.closed)
            if connection.transport is not None:
                connection.transport.abortConnection()
        return defer.DeferredList(waits)


# -- exchanges ----------------------------------------------------------------------


class _Exchange:
    """
    A download, upload or lock: holds its slot until done.

    @ivar completed: fires (with L{None}) when the exchange is over.
    """

    def __init__(self, node, release):
        self._node = node
        self._release = release
        self._done = False
        self.completed = defer.Deferred()
        node._exchanges.add(self)

    def _complete(self):
        if not self._done:
            self._done = True
            self._node._exchanges.discard(self)
            self._release()
            self.completed.callback(None)

    def _abort(self, why):
        self._complete()


@implementer(IPushProducer)
class _BodyReceiver(protocol.Protocol):
    """
    Streams a download's response body into a consumer, as a push producer
    registered with it: pausing it stops reading the socket.
    """

    def __init__(self, consumer, length):
        self.consumer = consumer
        self.length = length
        self.received = 0
        self.overrun = False
        self.paused = False
        self.ended = False
        self.result = defer.Deferred()

    def connectionMade(self):
        if self.consumer is not None:
            self.consumer.registerProducer(self, True)

    def dataReceived(self, data):
        room = self.length - self.received
        if len(data) > room:
            self.overrun = True
            data = data[:room]
        if data:
            self.received += len(data)
            if self.consumer is not None:
                self.consumer.write(data)

    def connectionLost(self, reason):
        self.ended = True
        if self.consumer is not None:
            self.consumer.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self.result.callback(self.received)
        else:
            self.result.errback(reason)

    def pauseProducing(self):
        self.paused = True
        if not self.ended:
            self.transport.pauseProducing()

    def resumeProducing(self):
        self.paused = False
        if not self.ended:
            self.transport.resumeProducing()

    def stopProducing(self):
        if not self.ended:
            self.transport.stopProducing()


@implementer(IDownload)
class _HttpDownload(_Exchange):
    """
    A GET's response, streamed on L{deliver}.

    @ivar length: C{X-git-annex-data-length}.
    """

    def __init__(self, node, response, length, version, present, release):
        _Exchange.__init__(self, node, release)
        self._response = response
        self.length = length
        self.version = version
        self._present = present
        self._receiver = None

    def deliver(self, consumer):
        return defer.Deferred.fromCoroutine(self._deliver(consumer))

    async def _deliver(self, consumer):
        node = self._node
        if self._receiver is not None:
            raise RuntimeError("already delivered")
        if self._response is None or not self._present:
            # Absent: whatever the (empty) body, INVALID.
            if self._response is not None:
                response, self._response = self._response, None
                await _discard(response)
            return False
        receiver = self._receiver = _BodyReceiver(consumer, self.length)
        response, self._response = self._response, None
        response.deliverBody(receiver)
        if receiver.paused and not receiver.ended:
            # deliverBody resumes the socket after handing over what it
            # had buffered, even if the consumer paused meanwhile.
            receiver.transport.pauseProducing()
        try:
            received = await receiver.result
        except Exception as e:
            raise RepositoryUnavailable(
                "%s: the download broke after %d of %d bytes: %s" % (
                    node.name, receiver.received, self.length,
                    _describe(e)))
        if received != self.length or receiver.overrun:
            # A body shorter (or longer) than announced: the server's
            # INVALID (spec 2.1).
            return False
        return None if self.version == 0 else True

    def finish(self, ok):
        if self._done:
            return defer.succeed(None)
        if self._response is not None:
            response, self._response = self._response, None
            if self.length == 0:
                d = defer.Deferred.fromCoroutine(_discard(response))
                d.addBoth(lambda _: self._complete())
                return d
            response.deliverBody(_Drop())
        elif self._receiver is not None and not self._receiver.ended:
            self._receiver.stopProducing()
        self._complete()
        return defer.succeed(None)

    def _abort(self, why):
        if self._response is not None:
            response, self._response = self._response, None
            response.deliverBody(_Drop())
        elif self._receiver is not None and not self._receiver.ended:
            self._receiver.stopProducing()
        self._complete()


@implementer(IConsumer)
class _UploadSink:
    """
    The consumer an upload's sender writes into; its producer is paced by
    the HTTP connection the body goes out on.

    @ivar done: fires with C{length} once every byte is written; fails if
        the request fails first.
    """

    def __init__(self, body, length):
        self._body = body
        self.length = length
        self.written = 0
        self.done = defer.Deferred()
        self.producer = None
        self.streaming = True
        if length == 0:
            self.done.callback(0)

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        self.streaming = streaming
        body = self._body
        if body.failed is not None:
            self.producer = None
            producer.stopProducing()
        elif not streaming:
            body.pull()
        elif body.consumer is None or body.paused:
            body.pauseSource()

    def unregisterProducer(self):
        self.producer = None
        self._body.sourcePaused = False

    def write(self, data):
        body = self._body
        if body.failed is not None:
            # The request is over; done has failed already.
            return
        n = len(data)
        if self.written + n > self.length:
            body.fail("the sender wrote more than the %d bytes announced"
                      % (self.length,))
            raise ValueError("%d bytes past the announced length %d" % (
                self.written + n - self.length, self.length))
        self.written += n
        if n:
            body.push(data, last=self.written == self.length)
        if self.written == self.length:
            if not self.done.called:
                self.done.callback(self.length)
        elif not self.streaming and self.producer is not None:
            body.pull()

    def _failed(self, why):
        producer = self.producer
        if producer is not None and self.written < self.length:
            self.producer = None
            producer.stopProducing()
        if not self.done.called:
            self.done.errback(RepositoryUnavailable(why))


@implementer(IBodyProducer)
class _UploadBody:
    """
    The request body of a put: what the sender writes into L{sink}, as a
    chunked body, the last byte held back until the verdict.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, reactor, length):
        self.reactor = reactor
        self.sink = _UploadSink(self, length)
        self.consumer = None
        self.pending = []
        self.held = b""
        self.paused = False
        self.sourcePaused = False
        self.failed = None
        self.verdict = None
        self.ended = False
        self._pulling = False
        self.finished = defer.Deferred()

    # the sender's side

    def push(self, data, last):
        if last:
            self.held = data[-1:]
            data = data[:-1]
        if not data:
            return
        if self.consumer is None:
            self.pending.append(data)
        else:
            self.consumer.write(data)

    def end(self, valid):
        """
        All content is written: send the last byte if C{valid} is not
        L{False}, and end the body.
        """
        self.verdict = valid is not False
        if self.consumer is not None:
            self._end()

    def _end(self):
        if self.ended or self.failed is not None:
            return
        self.ended = True
        if self.verdict and self.held:
            self.consumer.write(self.held)
        self.held = b""
        self.finished.callback(None)

    def fail(self, why):
        if self.failed is None and not self.ended:
            self.failed = why
            self.sink._failed(why)

    def pauseSource(self):
        producer = self.sink.producer
        if producer is not None and self.sink.streaming \
                and not self.sourcePaused:
            self.sourcePaused = True
            producer.pauseProducing()

    def resumeSource(self):
        producer = self.sink.producer
        if producer is None:
            return
        if not self.sink.streaming:
            self.pull()
        elif self.sourcePaused:
            self.sourcePaused = False
            producer.resumeProducing()

    def pull(self):
        # A pull producer is asked for more once per reactor turn while the
        # connection takes data.
        if (self._pulling or self.paused or self.consumer is None
                or self.failed is not None):
            return
        self._pulling = True
        self.reactor.callLater(0, self._pullNow)

    def _pullNow(self):
        self._pulling = False
        producer = self.sink.producer
        if (producer is not None and not self.paused and self.failed is None
                and self.sink.written < self.sink.length):
            producer.resumeProducing()

    # IBodyProducer, for the HTTP connection

    def startProducing(self, consumer):
        self.consumer = consumer
        pending, self.pending = self.pending, []
        for data in pending:
            consumer.write(data)
        if self.verdict is not None:
            self._end()
        elif not self.paused:
            self.resumeSource()
        return self.finished

    def pauseProducing(self):
        self.paused = True
        self.pauseSource()

    def resumeProducing(self):
        self.paused = False
        self.resumeSource()

    def stopProducing(self):
        self.fail("the connection to the node was lost")


@implementer(IUpload)
class _HttpUpload(_Exchange):
    """
    An accepted put: the request starts when the content is announced.
    """

    def __init__(self, node, key, associatedFile, offset, version, release):
        _Exchange.__init__(self, node, release)
        self.key = key
        self.associatedFile = associatedFile
        self.offset = offset
        self.version = version
        self._body = None
        self._request = None
        #: the request's result, for finish
        self._result = defer.Deferred()
        self._requestEnded = False

    def receive(self, length):
        if self._body is not None:
            raise RuntimeError("content already announced")
        if self._done:
            raise RepositoryUnavailable("%s: the upload is over" % (
                self._node.name,))
        self._body = _UploadBody(self._node.reactor, length)
        if length > 0:
            self._start()
        return self._body.sink

    def _start(self):
        body = self._body
        self._request = defer.Deferred.fromCoroutine(self._node._sendPut(
            self.key, self.associatedFile, self.offset, self.version,
            body.sink.length, body))

        def settled(result):
            self._requestEnded = True
            if isinstance(result, Failure):
                # (The sender may react at once, finish included: the
                # result is handed over below, after this.)
                body.fail("the put failed: %s" % (
                    result.getErrorMessage(),))
                self._result.errback(result)
            else:
                self._result.callback(result)
        self._request.addBoth(settled)

    def finish(self, valid):
        return defer.Deferred.fromCoroutine(self._finish(valid))

    async def _finish(self, valid):
        node = self._node
        try:
            body = self._body
            if self._done:
                raise RepositoryUnavailable("%s: the upload is over" % (
                    node.name,))
            if body is None:
                raise RepositoryUnavailable(
                    "%s: upload ended before any content" % (node.name,))
            sink = body.sink
            sink.done.addErrback(lambda _: None)
            if self._requestEnded:
                # The request is over already (it failed, or the node
                # answered before the body was complete): its result.
                return await self._result
            if sink.written < sink.length:
                self._cancel("upload ended short")
                raise RepositoryUnavailable(
                    "upload to %s ended after %d of %d bytes" % (
                        node.name, sink.written, sink.length))
            if self._request is None:
                # Nothing to send (length 0).
                if valid is False:
                    return Outcome(False)
                self._start()
            body.end(valid)
            return await self._result
        finally:
            self._complete()

    def dataPresent(self):
        return defer.Deferred.fromCoroutine(self._dataPresent())

    async def _dataPresent(self):
        node = self._node
        try:
            if self._body is not None:
                raise RuntimeError("content already announced")
            if self.version < 4:
                raise node._notSupported("DATA-PRESENT", self.version)
            size = self.key.size
            length = max(0, size - self.offset) if size is not None else 0
            return await node._sendPut(self.key, self.associatedFile,
                                       self.offset, self.version, length,
                                       dataPresent=True)
        finally:
            self._complete()

    def _cancel(self, why):
        if self._body is not None:
            self._body.fail(why)
            self._body.sink.done.addErrback(lambda _: None)
        if self._request is not None:
            self._result.addErrback(lambda _: None)
            self._request.cancel()

    def abort(self, reason):
        if self._done:
            return
        self._cancel("upload aborted: %s" % (reason,))
        self._complete()

    def _abort(self, why):
        self.abort(why)


@implementer(IBodyProducer)
class _KeepLockedBody:
    """
    The streamed NDJSON body of keeplocked: C{{"unlock":false}} at once,
    C{{"unlock":true}} on release.
    """

    length = UNKNOWN_LENGTH

    def __init__(self):
        self.consumer = None
        self.started = defer.Deferred()
        self.finished = defer.Deferred()
        self.unlocked = False
        self.stopped = False

    def startProducing(self, consumer):
        self.consumer = consumer
        consumer.write(_UNLOCK_FALSE)
        if self.unlocked:
            self._sendUnlock()
        if not self.started.called:
            self.started.callback(None)
        return self.finished

    def unlock(self):
        if not self.unlocked:
            self.unlocked = True
            if self.consumer is not None and not self.stopped:
                self._sendUnlock()

    def _sendUnlock(self):
        if not self.finished.called:
            self.consumer.write(_UNLOCK_TRUE)
            self.finished.callback(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        self.stopped = True


@implementer(IContentLock)
class _HttpLock(_Exchange):
    """
    A lock held by a keeplocked request in flight.
    """

    def __init__(self, node, key, lockid, version, release):
        _Exchange.__init__(self, node, release)
        node._exchanges.discard(self)
        node._locks.add(self)
        self.key = key
        self.lockid = lockid
        self.version = version
        self._body = _KeepLockedBody()
        self._request = None
        self._releasing = False

    async def start(self):
        node = self._node
        query = [("lockid", encodeValue(self.lockid.encode("utf-8"))),
                 node._client()]
        self._request = defer.Deferred.fromCoroutine(self._keepLocked(query))
        self._request.addBoth(self._ended)
        try:
            await self._body.started
        except BaseException:
            self._finishLock()
            raise

    async def _keepLocked(self, query):
        node = self._node
        response, _ = await node._request(
            "keeplocked", query, body=self._body, versions=(self.version,),
            accept=JSON_ACCEPT, headers=[
                (b"Content-Type", b"application/json;charset=utf-8")])
        await node._json(response, "keeplocked")

    def _ended(self, result):
        if isinstance(result, Failure):
            why = result.getErrorMessage()
            if not self._body.started.called:
                self._body.started.errback(result)
                return None
        else:
            why = "the node ended the keeplocked request early"
        if not self._releasing and not self._done:
            self._node._log.warn(
                "{name}: the lock on {key} was lost: {why}",
                name=self._node.name, key=str(self.key), why=why)
        self._finishLock()
        return None

    def _finishLock(self):
        self._node._locks.discard(self)
        self._complete()

    def release(self):
        if self._done:
            return defer.succeed(None)
        self._releasing = True
        self._body.unlock()
        waiter = defer.Deferred()
        self.completed.addBoth(lambda _: waiter.callback(None))
        return waiter

    def _abort(self, why):
        self._releasing = True
        if self._request is not None and not self._request.called:
            self._request.cancel()
        self._finishLock()
