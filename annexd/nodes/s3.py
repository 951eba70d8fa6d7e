# -*- test-case-name: tests.test_s3node -*-
"""
A node that is an S3 bucket, written and read exactly where git-annex's S3
special remote (C{type=S3}) keeps content, with treq and AWS Signature
Version 4 (botocore's signer).

L{S3Node} implements L{IRepository} for a special remote of the gateway
whose C{remote.log} fields it is given.  Content streams both ways: an
upload goes into S3 as the sender writes it (a held-back last byte, or an
uncompleted multipart upload, keeps it invisible until it is verified); a
download streams S3's response body into the caller's consumer.  Nothing
is spooled to disk.

What git-annex does, and so what this does (git-annex's C{Remote/S3.hs},
C{Remote/Helper/Chunked.hs}, C{Logs/Chunk.hs}, C{Creds.hs}; checked
against git-annex 10.2026 and an S3 server, see C{tests/test_s3node.py}):

  - object names: C{fileprefix} + the serialised key (C{SHA256E-s5--
    <hash>.txt}), nothing escaped; C{annex-uuid} (+ the prefix) holds the
    remote's uuid, written by C{initremote}, which also creates the bucket
    (C{PUT /bucket}).
  - chunks (C{chunk=1MiB}): only keys of stable backends (hashes and
    WORM, not C{URL}, C{VURL}, external or unknown ones) are chunked; chunk I{n} (from 1) of key
    C{K} with chunk size I{S} is stored as the key C{K} with the fields
    C{-S<S>-C<n>} (C{SHA256E-s3145733-S1048576-C1--<hash>.txt}); an empty
    content is one empty chunk.  After the last chunk, git-annex records
    C{<time>s <uuid>:<S> <count>} in the chunk log C{<hashdir>/<key>.log.cnk}
    of the git-annex branch (C{<uuid>:<S> 0} once removed); reading,
    it tries the logged chunk lists, then the unchunked key, then
    (I{speculatively}) the chunks the current C{chunk=} setting would make
    (the unchunked key first when the remote is not chunked).  This node
    reads and writes that log in the gateway's repository with
    L{annexd.annex.chunks.ChunkLog} (its journal, as
    L{annexd.annex.location} writes location logs).
  - C{partsize}: files larger than it are sent as a multipart upload, in
    parts of C{partsize} rounded down to a multiple of 32752 bytes (the
    chunk size of Haskell's lazy bytestrings).  This node uses multipart
    above C{partsize} too (L{DEFAULT_PART_SIZE} when it is not set; S3's
    single PUT stops at 5 GiB), with parts of exactly C{partsize}: readers
    do not care how an object was uploaded.
  - presence: C{HEAD} of the object (of every chunk); 404 is absent.
  - remove: C{DELETE} of the object and of every chunk it may have; S3
    answers 204 whether or not it existed.
  - addressing: C{requeststyle=path} gives C{http(s)://HOST:PORT/BUCKET/
    OBJECT}, otherwise virtual-host style C{BUCKET.HOST}; C{host} defaults
    to C{s3.amazonaws.com}, which then means the endpoint of the
    C{datacenter} (C{US}: C{s3.amazonaws.com}, C{EU}: C{s3-eu-west-1.
    amazonaws.com}, C{R}: C{s3-R.amazonaws.com}); C{port} 80 with
    C{protocol=https} means 443; without C{protocol}, 443 means https.
    The bucket name is lowercased.
  - credentials: C{AWS_ACCESS_KEY_ID}/C{AWS_SECRET_ACCESS_KEY} (and
    C{AWS_SESSION_TOKEN}) in the environment, else the gateway's cache
    C{GITDIR/annex/creds/<uuid>} (two lines: key id, secret), else the
    remote's C{s3creds} field (base64 of the same two lines, when
    C{embedcreds=yes} without encryption).
  - signing: git-annex signs v4 only with C{signature=v4} (or for Amazon's
    own host), with the region of C{region=}; without it, it signs for the
    I{host name} as region, which servers refuse, and (its aws library)
    signs the C{Host} header without the port.  This node always signs v4
    (C{signature=anonymous}: not at all), for C{region}, else the
    region of C{datacenter} (C{US}: us-east-1, C{EU}: eu-west-1), else
    us-east-1, and signs the C{Host} header it sends, port included.

Signing: botocore's L{S3SigV4Auth} signs the headers.  Bodies that stream
(object and part uploads) are signed as C{UNSIGNED-PAYLOAD}: the SHA-256
of a body must be in the headers before the body is sent, and the content
arrives while it is sent.  C{STREAMING-AWS4-HMAC-SHA256-PAYLOAD} (a
signature per chunk of an C{aws-chunked} body) would sign it as it goes,
but it changes the body's framing, which S3-compatible servers support
unevenly, and adds nothing here: the content is checked against its key
(L{Verifier}) before it is made visible, and TLS protects it in transit.
Small bodies (C{CompleteMultipartUpload}) and empty ones are signed.

Uploads (L{S3Node.put}): a key already present is C{ALREADY-HAVE}; else
the upload starts at offset 0 (S3 cannot append), the content is hashed as
it streams (L{Verifier}) and goes into S3 at once, with backpressure both
ways:

  - a single object (up to the part size): one C{PUT} with the
    C{Content-Length} of the content; its B{last byte is held back} until
    the verdict.  A good verdict (the sender's is not INVALID and the
    L{Verifier}'s is not L{False}) sends it and S3 stores the object; a
    bad one, a cut stream or an abort drops the connection, and S3, which
    got fewer bytes than announced, stores nothing.  Nothing is ever
    visible that was not verified, and no C{DELETE} is needed.
  - a large object: a multipart upload whose parts stream one after the
    other (each C{PUT} has the part's length; the sender is paused between
    parts); it is completed only after a good verdict, and aborted
    otherwise, so it never becomes visible either.
  - chunks: each is an object as above.  Chunks before the last are
    visible once stored; on a bad verdict or a cut they are deleted again
    (the key is never complete meanwhile: its last chunk is held back).

Downloads (L{S3Node.get}): C{GET} with C{Range: bytes=OFFSET-} (none at
0), streamed into the consumer as a push producer (its pause stops reading
the socket); chunked content is fetched chunk after chunk, the first
needed chunk from the offset within it.  A missing key is length 0 and
INVALID.  Content is not verified on the way out (git-annex's gateway does
not either: the receiver verifies).

Errors: no connection (refused, unreachable, TLS) marks the node down with
L{SessionPool}'s back-off, and requests then fail at once;
every S3 error answer becomes an L{S3Unavailable} (403 and other
credential or configuration errors, 5xx: the node is unusable for now) or
an L{S3Error} (a L{RepositoryError}: that request failed), whose text has
the S3 error code and message.

Not supported (every request fails with L{RepositoryUnavailable} saying
so): encrypted remotes (C{encryption=} other than C{none}), C{exporttree}
and C{importtree} remotes, C{versioning=yes}, the Internet Archive
(C{mungekeys}), old-style C{chunksize=} chunks.  Content locks: none (as
git-annex, for unversioned buckets: a lock is L{None}).  There is no
clock (C{GETTIMESTAMP} is L{ProtocolNotSupported}).
"""

import base64
import binascii
import dataclasses
import hashlib
import os
import xml.etree.ElementTree as ElementTree
from collections import deque
from urllib.parse import quote

from botocore.auth import EMPTY_SHA256_HASH, UNSIGNED_PAYLOAD, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from treq.client import HTTPClient
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent, BrowserLikePolicyForHTTPS, ResponseDone)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from annexd.annex.chunks import (
    ChunkLog, chunkCount, isStableKey, lookupOrder, parseChunkSize,
    serializeKey)
from annexd.annex.state import parseSize
from annexd.annex.verify import Verifier
from annexd.interfaces import (
    IDownload, IRepository, IUpload, Outcome, ProtocolNotSupported,
    RepositoryError, RepositoryUnavailable)
from annexd.nodes.http import (
    CONNECT_TIMEOUT, MAX_ERROR_TEXT, NO_IDLE_TIMEOUT, _classify, _collect,
    _describe, _discard, _Drop, _Exchange, _Pool)
from annexd.nodes.pool import IDLE_TIMEOUT, NodeHealth
from annexd.protocol.keys import Key

#: Amazon's host, git-annex's default C{host}.
AWS_HOST = "s3.amazonaws.com"

#: The part size when C{partsize} is not configured.
DEFAULT_PART_SIZE = 64 * 1024 * 1024

#: S3's most parts in one multipart upload.
MAX_PARTS = 10000

#: Seconds a request without a streamed body may take.
REQUEST_TIMEOUT = 120.0

#: The most of an error answer that is read.
MAX_ERROR_BODY = 65536

#: The most of a small XML answer that is read.
MAX_XML_BODY = 1024 * 1024

#: S3 error codes that make the node unusable rather than fail a request.
UNAVAILABLE_CODES = frozenset([
    "AccessDenied", "AccountProblem", "AllAccessDisabled",
    "AuthorizationHeaderMalformed", "ExpiredToken", "InvalidAccessKeyId",
    "InvalidBucketName", "InvalidToken", "NoSuchBucket", "NotSignedUp",
    "PermanentRedirect", "RequestTimeTooSkewed", "SignatureDoesNotMatch",
    "TemporaryRedirect", "TokenRefreshRequired", "ServiceUnavailable",
    "SlowDown", "InternalError"])

_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


# -- errors ----------------------------------------------------------------------


class S3Error(RepositoryError):
    """
    S3 refused a request (the node is otherwise usable).

    @ivar status: the HTTP status.
    @ivar code: the S3 error code (C{NoSuchUpload}, C{EntityTooSmall} ...),
        or L{None}.
    @ivar s3message: S3's message, or L{None}.
    """

    def __init__(self, text, status=None, code=None, s3message=None):
        RepositoryError.__init__(self, text)
        self.status = status
        self.code = code
        self.s3message = s3message


class S3Unavailable(RepositoryUnavailable):
    """
    S3 refused a request in a way that makes the node unusable for now
    (credentials refused, no such bucket, 5xx).

    @ivar status: the HTTP status.
    @ivar code: the S3 error code, or L{None}.
    @ivar s3message: S3's message, or L{None}.
    """

    def __init__(self, text, status=None, code=None, s3message=None):
        RepositoryUnavailable.__init__(self, text)
        self.status = status
        self.code = code
        self.s3message = s3message


def _parseError(body):
    """
    C{(code, message)} of an S3 C{<Error>} document (either may be
    L{None}).
    """
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, None
    if root.tag.rpartition("}")[2] != "Error":
        return None, None
    code = message = None
    for child in root:
        name = child.tag.rpartition("}")[2]
        if name == "Code":
            code = (child.text or "").strip() or None
        elif name == "Message":
            message = " ".join((child.text or "").split()) or None
    return code, message


def _xmlField(body, name):
    """
    The text of the first element called C{name} (any namespace) of an XML
    document, or L{None}.
    """
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == name:
            return (element.text or "").strip()
    return None


# -- configuration -----------------------------------------------------------------


def _isYes(value):
    return value is not None and value.strip().lower() in ("yes", "true")


def _datacenterRegion(datacenter):
    if datacenter == "US":
        return "us-east-1"
    if datacenter == "EU":
        return "eu-west-1"
    return datacenter


def _s3HostName(datacenter):
    if datacenter == "US":
        return AWS_HOST
    if datacenter == "EU":
        return "s3-eu-west-1.amazonaws.com"
    if datacenter == "cn-north-1":
        return "s3.cn-north-1.amazonaws.com.cn"
    return "s3-%s.amazonaws.com" % (datacenter,)


class S3Settings:
    """
    A remote's C{remote.log} fields, read the way git-annex reads them.

    @ivar bucket: the bucket (lowercased).
    @ivar scheme: C{"http"} or C{"https"}.
    @ivar endpoint: the host requests go to (path style), or whose
        subdomain the bucket is (virtual-host style).
    @ivar port: the port.
    @ivar pathStyle: C{requeststyle=path}.
    @ivar region: the region signatures are for.
    @ivar prefix: C{fileprefix}, as bytes.
    @ivar chunkSize: C{chunk}, or L{None}.
    @ivar partSize: C{partsize}, or L{None}.
    @ivar anonymous: C{signature=anonymous}.
    @ivar headers: headers of every object upload (storage class, ACL,
        C{x-amz-meta-*}, tagging), as C{(name, value)} strings.
    @ivar unsupported: why annexd cannot use the remote, or L{None}.
    """

    def __init__(self, config):
        config = dict(config or {})
        problems = []
        self.bucket = (config.get("bucket") or "").lower()
        if not self.bucket:
            problems.append("no bucket is configured")
        host = config.get("host") or AWS_HOST
        datacenter = config.get("datacenter") or "US"
        self.region = config.get("region") or None
        protocol = config.get("protocol")
        if protocol not in (None, "http", "https"):
            problems.append("bad protocol value %r" % (protocol,))
            protocol = None
        port = config.get("port")
        if port is None:
            port = 443 if protocol == "https" else 80
        else:
            try:
                port = int(port.strip())
            except ValueError:
                problems.append("bad port value %r" % (port,))
                port = 80
            if port == 80 and protocol == "https":
                port = 443
        if protocol is None:
            protocol = "https" if port == 443 else "http"
        self.scheme = protocol
        self.port = port
        self.host = host
        self.endpoint = _s3HostName(datacenter) if host == AWS_HOST else host
        if self.region is None:
            self.region = (_datacenterRegion(datacenter) if host == AWS_HOST
                           or "datacenter" in config else "us-east-1")
            if not self.region or self.region == "US":
                self.region = "us-east-1"
        style = config.get("requeststyle")
        if style not in (None, "path"):
            problems.append("bad requeststyle value %r" % (style,))
        self.pathStyle = style == "path"
        self.prefix = (config.get("fileprefix") or "").encode(
            "utf-8", "surrogateescape")
        self.chunkSize = None
        if config.get("chunksize"):
            problems.append("old-style chunks (chunksize=) are not supported")
        chunk = config.get("chunk")
        if chunk:
            size = parseChunkSize(chunk)
            if size is None:
                problems.append("bad chunk value %r" % (chunk,))
            elif size > 0:
                self.chunkSize = size
        self.partSize = None
        partsize = config.get("partsize")
        if partsize:
            size = parseSize(partsize)
            if size is None or size < 0:
                problems.append("bad partsize value %r" % (partsize,))
            elif size > 0:
                self.partSize = size
        encryption = config.get("encryption", "none")
        if encryption != "none":
            problems.append("encrypted remotes (encryption=%s) are not "
                            "supported" % (encryption,))
        for name in ("exporttree", "importtree", "versioning"):
            if _isYes(config.get(name)):
                problems.append("%s=yes is not supported" % (name,))
        if config.get("mungekeys") or host.lower().endswith(".archive.org"):
            problems.append("the Internet Archive is not supported")
        signature = config.get("signature")
        if signature not in (None, "v2", "v4", "anonymous"):
            problems.append("bad signature value %r" % (signature,))
        self.anonymous = signature == "anonymous"
        self.embeddedCredentials = config.get("s3creds")
        headers = []
        storageClass = config.get("storageclass")
        if storageClass:
            headers.append(("x-amz-storage-class", storageClass))
        if _isYes(config.get("public")):
            headers.append(("x-amz-acl", "public-read"))
        for name, value in sorted(config.items()):
            if name.startswith("x-amz-meta-"):
                headers.append((name, value))
        if config.get("x-amz-tagging"):
            headers.append(("x-amz-tagging", config["x-amz-tagging"]))
        self.headers = headers
        self.unsupported = "; ".join(problems) or None

    @property
    def hostHeader(self):
        host = self.endpoint if self.pathStyle else "%s.%s" % (
            self.bucket, self.endpoint)
        if ":" in host and not host.startswith("["):
            host = "[%s]" % (host,)
        default = 443 if self.scheme == "https" else 80
        if self.port != default:
            host = "%s:%d" % (host, self.port)
        return host

    def path(self, objectName=None):
        """
        The (percent-encoded) path of an object, or of the bucket.

        @type objectName: L{bytes} or L{None}
        """
        encoded = "" if objectName is None else quote(objectName,
                                                      safe="/-_.~")
        if self.pathStyle:
            return "/%s/%s" % (quote(self.bucket, safe="-_.~"), encoded)
        return "/" + encoded


def _query(pairs):
    """
    A query string, encoded as SigV4 wants it (botocore signs it as it
    is).
    """
    parts = []
    for name, value in pairs:
        if value is None:
            parts.append(quote(name, safe="-_.~"))
        else:
            parts.append("%s=%s" % (quote(name, safe="-_.~"),
                                    quote(str(value), safe="-_.~")))
    return "&".join(parts)


# -- keys and objects ----------------------------------------------------------------


def _asKey(key):
    return key if isinstance(key, Key) else Key.parse(key)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """
    One way a key may be stored: unchunked (C{chunkSize} L{None}, one
    object) or in C{count} chunks of C{chunkSize}.

    @ivar names: the serialised keys of the objects, in order.
    @ivar logged: whether the chunk log names this layout.
    """

    chunkSize: int | None
    count: int
    names: tuple
    logged: bool = False

    def sizes(self, total):
        """
        The size of each object for content of C{total} bytes.
        """
        if self.chunkSize is None:
            return [total]
        sizes = []
        for n in range(self.count):
            sizes.append(max(0, min(self.chunkSize,
                                    total - n * self.chunkSize)))
        return sizes


def _unchunked(key):
    return _Layout(None, 1, (key.serialize(),))


def _chunked(key, chunkSize, count, logged=False):
    return _Layout(chunkSize, count, tuple(
        serializeKey(key, chunkSize, n) for n in range(1, count + 1)), logged)


def _gitDir(repoPath):
    """
    The git directory of the gateway repository at C{repoPath} (no git
    run: C{repoPath/.git}, or C{repoPath} itself when it is bare).
    """
    dotGit = os.path.join(repoPath, ".git")
    if os.path.isdir(dotGit):
        return dotGit
    if os.path.isfile(dotGit):
        with open(dotGit, encoding="utf-8", errors="replace") as f:
            line = f.readline().strip()
        if line.startswith("gitdir:"):
            return os.path.normpath(os.path.join(repoPath,
                                                 line[7:].strip()))
    return repoPath


# -- credentials ---------------------------------------------------------------------


def _decodeCredPair(text):
    lines = text.splitlines()
    if len(lines) != 2 or not lines[0] or not lines[1]:
        return None
    return lines[0], lines[1]


def findCredentials(uuid, settings, gitDir, environment):
    """
    git-annex's search for a remote's S3 credentials: the environment, the
    gateway's creds cache, the (unencrypted) embedded C{s3creds}.

    @return: C{(access key, secret, session token or None, where)}, or
        L{None}.
    """
    env = os.environ if environment is None else environment
    access = env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("AWS_SECRET_ACCESS_KEY")
    if access and secret:
        return (access, secret, env.get("AWS_SESSION_TOKEN") or None,
                "the environment")
    if gitDir is not None:
        path = os.path.join(gitDir, "annex", "creds",
                            uuid.decode("utf-8", "replace"))
        try:
            with open(path, "rb") as f:
                pair = _decodeCredPair(f.read().decode("utf-8", "replace"))
        except OSError:
            pair = None
        if pair is not None:
            return pair + (None, path)
    embedded = settings.embeddedCredentials
    if embedded:
        try:
            text = base64.b64decode(embedded, validate=True).decode(
                "utf-8", "replace")
        except (binascii.Error, ValueError):
            text = ""
        pair = _decodeCredPair(text)
        if pair is not None:
            return pair + (None, "the remote's embedded s3creds")
    return None


class _Signer(S3SigV4Auth):
    """
    botocore's S3 SigV4 signer, with the payload hash given by the
    request: C{UNSIGNED-PAYLOAD} for streamed bodies.
    """

    def payload(self, request):
        given = request.context.get("annexdPayload")
        if given is not None:
            return given
        return S3SigV4Auth.payload(self, request)


# -- small stream helpers ------------------------------------------------------------


class _Box:
    """
    A Deferred's result, success or failure, as a value (so that a
    Deferred can be waited for alongside others without unhandled
    failures).
    """

    def __init__(self, result):
        self.result = result

    def get(self):
        if isinstance(self.result, Failure):
            self.result.raiseException()
        return self.result


def _boxed(d):
    return d.addBoth(_Box)


def _first(*deferreds):
    """
    A Deferred firing with C{(index, result)} of the first of
    C{deferreds} (which must never fail) to fire; they keep their results.
    """
    done = defer.Deferred()
    for index, d in enumerate(deferreds):
        def fired(result, index=index):
            if not done.called:
                done.callback((index, result))
            return result
        d.addCallback(fired)
    return done


# -- the node ----------------------------------------------------------------------


@implementer(IRepository)
class S3Node:
    """
    A git-annex S3 special remote as a node.

    @ivar uuid: the remote's uuid (bytes).
    @ivar name: its name, for logs and errors.
    @ivar settings: the L{S3Settings}.
    @ivar bypass: always empty (a bucket forwards nothing).
    @ivar maxConnections: at most this many exchanges at once.
    @ivar requestTimeout: seconds a request without a streamed body may
        take.
    @ivar started: connections opened since the node was made.
    @ivar credentialSource: where the credentials came from (or L{None}).
    """

    _log = Logger()

    def __init__(self, reactor, uuid, name, config, gitConfig, repoPath,
                 environment=None, credentials=None, maxConnections=4):
        self.reactor = reactor
        self._clock = reactor
        if isinstance(uuid, str):
            uuid = uuid.encode("utf-8")
        self.uuid = uuid
        self.name = name or uuid.decode("utf-8", "replace")
        self.config = dict(config or {})
        self.gitConfig = dict(gitConfig or {})
        self.repoPath = repoPath
        self.settings = S3Settings(self.config)
        self.bypass = ()
        self.maxConnections = maxConnections
        self.requestTimeout = REQUEST_TIMEOUT
        self.started = 0
        self._environment = environment
        self._gitDir = _gitDir(repoPath) if repoPath else None
        self.credentialSource = None
        self._credentials = None
        if credentials is not None:
            access, secret = credentials[0], credentials[1]
            token = credentials[2] if len(credentials) > 2 else None
            self._credentials = Credentials(access, secret, token)
            self.credentialSource = "annexd's configuration"
        elif not self.settings.anonymous:
            found = findCredentials(uuid, self.settings, self._gitDir,
                                    environment)
            if found is not None:
                self._credentials = Credentials(*found[:3])
                self.credentialSource = found[3]
        self._chunkLog = None
        if self._gitDir is not None and os.path.isdir(self._gitDir):
            self._chunkLog = ChunkLog(self._gitDir, reactor, env=environment)
        self._health = NodeHealth(reactor)
        self._closed = False
        self._busy = 0
        self._slots = defer.DeferredSemaphore(maxConnections)
        self._exchanges = set()
        self._connections = []
        self._pool = _Pool(reactor, self)
        self._pool.maxPersistentPerHost = maxConnections
        self._pool.retryAutomatically = True
        self.idleTimeout = IDLE_TIMEOUT
        self._agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(),
                            connectTimeout=CONNECT_TIMEOUT, pool=self._pool)
        self._http = HTTPClient(self._agent)

    def __repr__(self):
        s = self.settings
        return "<S3Node %s %s://%s/%s>" % (self.name, s.scheme, s.hostHeader,
                                           s.bucket)

    # -- settings --------------------------------------------------------------

    @property
    def idleTimeout(self):
        return self._idleTimeout

    @idleTimeout.setter
    def idleTimeout(self, value):
        self._idleTimeout = value
        self._pool.cachedConnectionTimeout = (
            NO_IDLE_TIMEOUT if value is None else value)

    @property
    def partSize(self):
        return self.settings.partSize or DEFAULT_PART_SIZE

    # -- connections and health -------------------------------------------------

    def _connectionMade(self, connection):
        self.started += 1
        self._connections.append(connection)

    def _connectionLost(self, connection):
        if connection in self._connections:
            self._connections.remove(connection)

    def _unavailable(self, text):
        return RepositoryUnavailable("%s: %s" % (self.name, text))

    def _usable(self):
        """
        Fail at once if the node cannot be used at all.
        """
        if self._closed:
            raise self._unavailable("closed")
        if self.settings.unsupported is not None:
            raise self._unavailable("annexd cannot use this S3 remote: %s"
                                    % (self.settings.unsupported,))
        if self._credentials is None and not self.settings.anonymous:
            raise self._unavailable(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY for annexd, or `git annex "
                "enableremote %s` in the gateway (which caches them in "
                "annex/creds/%s)" % (self.name,
                                     self.uuid.decode("utf-8", "replace")))

    async def _take(self):
        """
        Take a transfer slot, failing at once while the node is down or
        closed.

        @return: the function that gives it back.
        """
        self._usable()
        self._health.check(self.name)
        await self._slots.acquire()
        if self._closed:
            self._slots.release()
            raise self._unavailable("closed")
        self._busy += 1
        released = []

        def release():
            if not released:
                released.append(True)
                self._busy -= 1
                self._slots.release()
        return release

    # -- requests --------------------------------------------------------------

    def _url(self, objectName=None, query=()):
        s = self.settings
        url = "%s://%s%s" % (s.scheme, s.hostHeader, s.path(objectName))
        if query:
            url += "?" + _query(query)
        return url

    def _signed(self, method, url, headers, payload):
        """
        The headers of a request, signed.
        """
        all = [("Host", self.settings.hostHeader)] + list(headers)
        if self._credentials is None:
            return all
        request = AWSRequest(method=method, url=url, headers=dict(all))
        request.context["annexdPayload"] = payload
        _Signer(self._credentials, "s3", self.settings.region).add_auth(
            request)
        return list(request.headers.items())

    async def _send(self, method, what, objectName=None, query=(),
                    headers=(), body=None, timeout=True, retry=True,
                    call=None):
        """
        Send one request: signing, down-marking, one retry of a request
        without a streamed body that got no response.

        @param body: L{None}, L{bytes} (signed), or a streaming
            L{IBodyProducer} (sent once, C{UNSIGNED-PAYLOAD}).
        @param call: the L{_Call} that may cancel this request (a request
            cancelled so never marks the node down, whatever stage it was
            cancelled at).
        @return: the response, its body unread.
        """
        url = self._url(objectName, query)
        if body is None:
            payload = EMPTY_SHA256_HASH
        elif isinstance(body, bytes):
            payload = hashlib.sha256(body).hexdigest()
        else:
            payload = UNSIGNED_PAYLOAD
        retried = False
        while True:
            self._usable()
            self._health.check(self.name)
            with self._health.attempt() as probe:
                signed = self._signed(method, url, headers, payload)
                allHeaders = Headers()
                for name, value in signed:
                    allHeaders.addRawHeader(name, value)
                try:
                    response = await self._http.request(
                        method, url, headers=allHeaders, data=body,
                        allow_redirects=False, unbuffered=True,
                        timeout=self.requestTimeout if timeout else None,
                        reactor=self.reactor)
                except Exception as e:
                    if call is not None and call.cancelled:
                        raise self._unavailable("%s: cancelled (%s)" % (
                            what, call.cancelled))
                    kind = _classify(e)
                    if (kind == "stale" and retry and not retried
                            and (body is None or isinstance(body, bytes))
                            and not self._closed):
                        retried = True
                        continue
                    if kind in ("connect", "tls", "stale"):
                        self._health.failed(
                            RepositoryUnavailable(_describe(e)), probe,
                            self.name, self._log)
                    raise self._unavailable("%s: %s" % (what, _describe(e)))
            self._health.connected(self.name, self._log)
            return response

    async def _failure(self, response, what):
        """
        The exception for an error answer (its body is read).
        """
        status = response.code
        phrase = (response.phrase or b"").decode("latin-1", "replace")
        code = message = None
        if status != 304:
            try:
                body, _ = await _collect(response, MAX_ERROR_BODY)
            except Exception:
                body = b""
            code, message = _parseError(body) if body else (None, None)
        if code is None and status == 403:
            # (HEAD answers have no body to say why.)
            message = ("access denied: wrong credentials (from %s), or "
                       "not allowed" % (self.credentialSource,)
                       if self.credentialSource else "access denied")
        text = "%s: %s: %d %s" % (self.name, what, status, code or phrase)
        if message:
            if len(message) > MAX_ERROR_TEXT:
                message = message[:MAX_ERROR_TEXT] + "..."
            text += ": " + message
        if (status in (301, 307, 401, 403) or status >= 500
                or code in UNAVAILABLE_CODES):
            return S3Unavailable(text, status, code, message)
        return S3Error(text, status, code, message)

    async def _head(self, name, what=None):
        """
        HEAD one object.

        @return: its size, or L{None} when it is absent.
        """
        objectName = self.settings.prefix + name
        what = what or "HEAD %s" % (name.decode("utf-8", "replace"),)
        response = await self._send("HEAD", what, objectName)
        if response.code == 404:
            await _discard(response)
            return None
        if response.code != 200:
            raise await self._failure(response, what)
        await _discard(response)
        length = response.headers.getRawHeaders(b"Content-Length")
        try:
            return int(length[0]) if length else 0
        except ValueError:
            return 0

    async def _absent(self, response, what):
        """
        Whether a 404 answer means the object is absent (else it raises:
        no such bucket, say).
        """
        failure = await self._failure(response, what)
        if failure.code in (None, "NoSuchKey", "NoSuchUpload"):
            return True
        raise failure

    async def _delete(self, name, query=(), what=None):
        objectName = self.settings.prefix + name
        what = what or "DELETE %s" % (name.decode("utf-8", "replace"),)
        response = await self._send("DELETE", what, objectName, query)
        if response.code in (200, 204):
            await _discard(response)
            return
        if response.code == 404 and await self._absent(response, what):
            return
        raise await self._failure(response, what)

    async def _getObject(self, name, start):
        """
        GET an object from byte C{start} on.

        @return: the response (200 or 206, body unread), L{None} if the
            object is absent, or C{"range"} if C{start} is past its end.
        """
        objectName = self.settings.prefix + name
        what = "GET %s" % (name.decode("utf-8", "replace"),)
        headers = []
        if start > 0:
            headers.append(("Range", "bytes=%d-" % (start,)))
        # (The timeout runs until the answer's headers only.)
        response = await self._send("GET", what, objectName,
                                    headers=headers)
        if response.code == 404 and await self._absent(response, what):
            return None
        if response.code == 416:
            await _discard(response)
            return "range"
        if response.code not in (200, 206):
            raise await self._failure(response, what)
        return response

    async def _xml(self, response, what):
        try:
            body, overflow = await _collect(response, MAX_XML_BODY)
        except Exception as e:
            raise self._unavailable("%s: the answer broke off: %s" % (
                what, _describe(e)))
        return body

    # -- layouts -----------------------------------------------------------------

    async def _logged(self, key):
        """
        The chunk sizes and counts the chunk log records for C{key} here.
        """
        if self._chunkLog is None:
            return []
        try:
            return await self._chunkLog.read(key, self.uuid)
        except Exception as e:
            self._log.warn("{name}: cannot read the chunk log of {key}: "
                           "{why}", name=self.name, key=str(key), why=e)
            return []

    async def _layouts(self, key):
        """
        The ways C{key} may be stored, most likely first (git-annex's
        C{chunkKeys}).
        """
        logged = await self._logged(key)
        return [_unchunked(key) if chunking is None
                else _chunked(key, *chunking, logged=chunking in logged)
                for chunking in lookupOrder(key, logged,
                                            self.settings.chunkSize)]

    async def _present(self, layout):
        for name in layout.names:
            if await self._head(name) is None:
                return False
        return True

    async def _findPresent(self, key):
        for layout in await self._layouts(key):
            if await self._present(layout):
                return layout
        return None

    # -- IRepository ---------------------------------------------------------------

    def _run(self, coroutine):
        return defer.Deferred.fromCoroutine(coroutine)

    def checkPresent(self, key):
        return self._run(self._checkPresent(_asKey(key)))

    async def _checkPresent(self, key):
        release = await self._take()
        try:
            return await self._findPresent(key) is not None
        finally:
            release()

    def lockContent(self, key):
        # S3 cannot lock content (git-annex locks nothing in an
        # unversioned bucket either).
        return defer.succeed(None)

    def getTimestamp(self):
        return defer.fail(ProtocolNotSupported(
            "%s: an S3 bucket has no clock (no GETTIMESTAMP)" % (self.name,)))

    def remove(self, key, before=None):
        if before is not None:
            return defer.fail(ProtocolNotSupported(
                "%s: an S3 bucket has no clock (no REMOVE-BEFORE)" % (
                    self.name,)))
        return self._run(self._remove(_asKey(key)))

    async def _remove(self, key):
        release = await self._take()
        try:
            layouts = await self._layouts(key)
            names = []
            for layout in layouts:
                for name in layout.names:
                    if name not in names:
                        names.append(name)
            for name in names:
                await self._delete(name)
            for layout in layouts:
                if layout.logged:
                    await self._recordChunks(key, layout.chunkSize, 0)
            return Outcome(True)
        finally:
            release()

    async def _recordChunks(self, key, chunkSize, count):
        if self._chunkLog is None:
            self._log.warn(
                "{name}: no gateway repository: the chunk log of {key} "
                "({count} chunks of {size}) is not recorded", name=self.name,
                key=str(key), count=count, size=chunkSize)
            return
        try:
            await self._chunkLog.record(key, self.uuid, chunkSize, count)
        except Exception as e:
            self._log.warn("{name}: cannot record the chunk log of {key}: "
                           "{why}", name=self.name, key=str(key), why=e)

    def get(self, key, associatedFile, offset):
        return self._run(self._get(_asKey(key), offset))

    async def _get(self, key, offset):
        release = await self._take()
        try:
            for layout in await self._layouts(key):
                download = await self._open(key, layout, offset, release)
                if download is not None:
                    return download
            return _S3Download(self, [], None, 0, False, release)
        except BaseException:
            release()
            raise

    async def _open(self, key, layout, offset, release):
        """
        Start a download of C{key} stored as C{layout}, from C{offset}.

        @return: an L{_S3Download}, or L{None} if it is not stored so.
        """
        if layout.chunkSize is None:
            name = layout.names[0]
            response = await self._getObject(name, offset)
            if response is None:
                return None
            if response == "range":
                size = await self._head(name)
                if size is None:
                    return None
                return _S3Download(self, [], None, 0, size == offset,
                                   release)
            total = _totalSize(response, offset)
            if total is None:
                await _discard(response)
                raise self._unavailable(
                    "GET %s: no usable Content-Length or Content-Range" % (
                        name.decode("utf-8", "replace"),))
            length = max(0, total - offset)
            segments = [(name, offset, length)]
            return _S3Download(self, segments, response, length, True,
                               release)
        # Chunked: the sizes of the chunks, from the key's size (or
        # asked of S3 when the key has none).
        if key.size is not None:
            sizes = layout.sizes(key.size)
        else:
            sizes = []
            for name in layout.names:
                size = await self._head(name)
                if size is None:
                    return None
                sizes.append(size)
        total = sum(sizes)
        segments = []
        position = 0
        for name, size in zip(layout.names, sizes):
            end = position + size
            if end > offset:
                start = max(0, offset - position)
                segments.append((name, start, size - start))
            position = end
        if not segments:
            # Nothing left to send from there: present if it is all there.
            if not await self._present(layout):
                return None
            return _S3Download(self, [], None, 0, offset == total, release)
        name, start, _ = segments[0]
        response = await self._getObject(name, start)
        if response is None:
            return None
        if response == "range":
            return None
        return _S3Download(self, segments, response, total - offset, True,
                           release)

    def put(self, key, associatedFile):
        return self._run(self._put(_asKey(key)))

    async def _put(self, key):
        release = await self._take()
        try:
            if await self._findPresent(key) is not None:
                release()
                return Outcome(True, alreadyHad=True)
        except BaseException:
            release()
            raise
        return _S3Upload(self, key, release)

    # -- uploads -------------------------------------------------------------------

    def _objectHeaders(self):
        return list(self.settings.headers)

    async def _putObject(self, name, body, call=None):
        """
        PUT an object whose body streams from C{body}.

        @return: the response (200; its body read).
        """
        objectName = self.settings.prefix + name
        what = "PUT %s" % (name.decode("utf-8", "replace"),)
        response = await self._send("PUT", what, objectName,
                                    headers=self._objectHeaders(),
                                    body=body, timeout=False, call=call)
        if response.code != 200:
            raise await self._failure(response, what)
        await _discard(response)
        return response

    async def _putPart(self, name, uploadId, number, body, call=None):
        """
        PUT a part of a multipart upload.

        @return: its ETag.
        """
        objectName = self.settings.prefix + name
        what = "PUT %s (part %d)" % (name.decode("utf-8", "replace"),
                                     number)
        response = await self._send(
            "PUT", what, objectName,
            query=[("partNumber", number), ("uploadId", uploadId)],
            body=body, timeout=False, call=call)
        if response.code != 200:
            raise await self._failure(response, what)
        etag = response.headers.getRawHeaders(b"ETag")
        await _discard(response)
        if not etag:
            raise self._unavailable("%s: no ETag in the answer" % (what,))
        return etag[0].decode("latin-1")

    async def _initiate(self, name, call=None):
        objectName = self.settings.prefix + name
        what = "CreateMultipartUpload %s" % (name.decode("utf-8", "replace"),)
        response = await self._send("POST", what, objectName,
                                    query=[("uploads", None)],
                                    headers=self._objectHeaders(), body=b"",
                                    call=call)
        if response.code != 200:
            raise await self._failure(response, what)
        uploadId = _xmlField(await self._xml(response, what), "UploadId")
        if not uploadId:
            raise self._unavailable("%s: no UploadId in the answer" % (what,))
        return uploadId

    async def _complete(self, name, uploadId, etags, call=None):
        objectName = self.settings.prefix + name
        what = "CompleteMultipartUpload %s" % (
            name.decode("utf-8", "replace"),)
        body = "".join(
            "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>" % (
                number, _xmlEscape(etag))
            for number, etag in enumerate(etags, 1))
        body = ('<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/'
                'doc/2006-03-01/">%s</CompleteMultipartUpload>' % (body,))
        response = await self._send(
            "POST", what, objectName, query=[("uploadId", uploadId)],
            headers=[("Content-Type", "application/xml")],
            body=body.encode("utf-8"), timeout=False, call=call)
        if response.code != 200:
            raise await self._failure(response, what)
        # S3 may answer 200 and an <Error> body.
        answer = await self._xml(response, what)
        code, message = _parseError(answer)
        if code is not None:
            text = "%s: %s: %s%s" % (self.name, what, code,
                                     ": " + message if message else "")
            if code in UNAVAILABLE_CODES:
                raise S3Unavailable(text, 200, code, message)
            raise S3Error(text, 200, code, message)

    async def _abortMultipart(self, name, uploadId):
        await self._delete(name, [("uploadId", uploadId)],
                           "AbortMultipartUpload %s" % (
                               name.decode("utf-8", "replace"),))

    def _plan(self, key, length):
        """
        The objects an upload of C{length} bytes of C{key} makes: a list
        of C{(name, size)}, and the chunk size (or L{None}).
        """
        chunk = self.settings.chunkSize
        if chunk is not None and isStableKey(key):
            layout = _chunked(key, chunk, chunkCount(length, chunk))
            return list(zip(layout.names, layout.sizes(length))), chunk
        return [(key.serialize(), length)], None

    def _partSizeFor(self, size):
        part = self.partSize
        if -(-size // part) > MAX_PARTS:
            part = -(-size // MAX_PARTS)
        return part

    # -- monitoring and closing ---------------------------------------------------

    @property
    def up(self):
        """
        Whether the node is up (usable, and not marked down after a failed
        connect); cheap, for choosing among nodes on every request.
        """
        return (self._health.error is None
                and self.settings.unsupported is None
                and (self._credentials is not None or self.settings.anonymous))

    def status(self):
        """
        The node's state, in the shape of L{SessionPool.status}: C{idle}
        counts the kept connections, C{busy} the exchanges in progress,
        C{started} the connections opened, C{maxSessions} is
        C{maxConnections}.  A remote annexd cannot use is down, with the
        reason as its error.
        """
        unusable = None
        if self.settings.unsupported is not None:
            unusable = "unsupported: %s" % (self.settings.unsupported,)
        elif self._credentials is None and not self.settings.anonymous:
            unusable = "no S3 credentials"
        return self._health.status(self.name, self.uuid,
                                   self._pool.idleCount(), self._busy,
                                   self.started, self.maxConnections,
                                   unusable)

    def close(self):
        """
        Drop every connection (transfers in progress included: an upload
        cut so leaves nothing visible but chunks stored before it, and an
        uncompleted multipart upload, which S3 keeps until it is aborted or
        a lifecycle rule expires it); later requests fail.

        @return: a Deferred firing when the connections are closed.
        """
        self._closed = True
        for exchange in list(self._exchanges):
            exchange._abort("the node connector is closing")
        self._pool.closeCachedConnections()
        waits = []
        for connection in list(self._connections):
            waits.append(connection.closed)
            if connection.transport is not None:
                connection.transport.abortConnection()
        if self._chunkLog is not None:
            waits.append(defer.maybeDeferred(self._chunkLog.close))
        return defer.DeferredList(waits)


def _xmlEscape(text):
    return (text.replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&quot;"))


def _totalSize(response, offset):
    """
    The size of the whole object, from a GET's answer: C{Content-Range}'s
    total (206), or C{Content-Length} (200, the whole object).
    """
    if response.code == 206:
        header = response.headers.getRawHeaders(b"Content-Range")
        if header:
            total = header[0].rpartition(b"/")[2].strip()
            if total.isdigit():
                return int(total)
        return None
    # (Twisted keeps a GET's Content-Length as the response's length.)
    length = response.length
    return length if isinstance(length, int) else None


# -- downloads ---------------------------------------------------------------------


class _Receiver(protocol.Protocol):
    """
    Streams one response body into a download's consumer: the first
    C{skip} bytes are dropped (a server that ignored the Range), then at
    most C{length} bytes are written.
    """

    def __init__(self, download, length, skip):
        self.download = download
        self.length = length
        self.skip = skip
        self.received = 0
        self.transport = None
        self.ended = False
        self.overrun = False
        self.result = defer.Deferred()

    def dataReceived(self, data):
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
        room = self.length - self.received
        if len(data) > room:
            self.overrun = True
            data = data[:room]
        if data:
            self.received += len(data)
            self.download._write(data)
        if self.overrun and not self.ended:
            self.transport.stopProducing()

    def connectionLost(self, reason):
        self.ended = True
        if self.overrun or reason.check(ResponseDone, PotentialDataLoss):
            self.result.callback(self.received)
        else:
            self.result.errback(reason)


@implementer(IDownload, IPushProducer)
class _S3Download(_Exchange):
    """
    A GET (or a series of them, chunk after chunk), streamed on
    L{deliver}.  It is the push producer registered with the consumer:
    pausing it stops reading the current response's socket.

    @ivar length: the bytes that will be delivered.
    """

    def __init__(self, node, segments, response, length, present, release):
        _Exchange.__init__(self, node, release)
        #: (object name, start, bytes) to fetch, in order
        self._segments = segments
        self._response = response
        self.length = length
        self._present = present
        self._consumer = None
        self._receiver = None
        self._paused = False
        self._stopped = False
        self._delivering = False
        #: bytes written into the consumer
        self.delivered = 0

    # IPushProducer, for the consumer

    def pauseProducing(self):
        self._paused = True
        receiver = self._receiver
        if receiver is not None and not receiver.ended:
            receiver.transport.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        receiver = self._receiver
        if receiver is not None and not receiver.ended:
            receiver.transport.resumeProducing()

    def stopProducing(self):
        self._stopped = True
        receiver = self._receiver
        if receiver is not None and not receiver.ended:
            receiver.transport.stopProducing()

    def _write(self, data):
        self.delivered += len(data)
        self._consumer.write(data)

    # IDownload

    def deliver(self, consumer):
        return defer.Deferred.fromCoroutine(self._deliver(consumer))

    async def _deliver(self, consumer):
        node = self._node
        if self._delivering:
            raise RuntimeError("already delivered")
        self._delivering = True
        if not self._present:
            await self._dropResponse()
            return False
        if not self._segments:
            return True
        self._consumer = consumer
        consumer.registerProducer(self, True)
        try:
            for index, (name, start, count) in enumerate(self._segments):
                if self._stopped or self._done:
                    return False
                if index == 0:
                    response, self._response = self._response, None
                else:
                    response = await node._getObject(name, start)
                    if response is None or response == "range":
                        # A chunk went missing meanwhile: short, INVALID.
                        return False
                if response.code == 206:
                    first = _rangeStart(response)
                    if first is not None and first != start:
                        response.deliverBody(_Drop())
                        raise node._unavailable(
                            "GET %s: asked for bytes from %d, got from %d" % (
                                name.decode("utf-8", "replace"), start,
                                first))
                    skip = 0
                else:
                    # A whole object (200): skip to where we are.
                    skip = start
                receiver = self._receiver = _Receiver(self, count, skip)
                response.deliverBody(receiver)
                if self._paused and not receiver.ended:
                    # deliverBody resumes the socket after handing over
                    # what it had buffered, even if the consumer paused
                    # meanwhile.
                    receiver.transport.pauseProducing()
                try:
                    received = await receiver.result
                except Exception as e:
                    raise node._unavailable(
                        "the download of %s broke after %d of %d bytes: %s"
                        % (name.decode("utf-8", "replace"), self.delivered,
                           self.length, _describe(e)))
                if received < count or receiver.overrun:
                    # Shorter or longer than it should be: INVALID.
                    return False
            return self.delivered == self.length
        finally:
            self._receiver = None
            consumer.unregisterProducer()

    async def _dropResponse(self):
        response, self._response = self._response, None
        if response is not None:
            await _discard(response)

    def finish(self, ok):
        if self._done:
            return defer.succeed(None)
        self._stop()
        self._complete()
        return defer.succeed(None)

    def _stop(self):
        response, self._response = self._response, None
        if response is not None:
            response.deliverBody(_Drop())
        receiver = self._receiver
        if receiver is not None and not receiver.ended:
            receiver.transport.stopProducing()

    def _abort(self, why):
        self._stop()
        self._complete()


def _rangeStart(response):
    header = response.headers.getRawHeaders(b"Content-Range")
    if not header:
        return None
    value = header[0].strip()
    if not value.startswith(b"bytes "):
        return None
    first = value[6:].partition(b"-")[0].strip()
    return int(first) if first.isdigit() else None


# -- uploads -----------------------------------------------------------------------


@implementer(IBodyProducer)
class _Piece:
    """
    The body of one PUT (an object, or a part of a multipart upload):
    C{length} bytes taken from the upload's sink as they come.  With
    C{holdLast}, the last byte is kept until L{release}: the request
    cannot complete before.
    """

    def __init__(self, sink, length, holdLast=False):
        self.sink = sink
        self.length = length
        self.holdLast = holdLast and length > 0
        self.taken = 0
        self.held = b""
        self.consumer = None
        self.paused = False
        self.stopped = False
        self.finished = defer.Deferred()

    @property
    def room(self):
        return self.length - self.taken

    def ready(self):
        return (self.consumer is not None and not self.paused
                and not self.stopped)

    def take(self, data):
        self.taken += len(data)
        if self.holdLast and self.taken == self.length:
            self.held = data[-1:]
            data = data[:-1]
        if data:
            self.consumer.write(data)
        if self.taken == self.length and not self.holdLast:
            self._end()

    def release(self):
        """
        Send the held byte: the body is complete.
        """
        if self.stopped or not self.holdLast:
            return
        self.holdLast = False
        if self.consumer is not None and self.taken == self.length:
            if self.held:
                self.consumer.write(self.held)
                self.held = b""
            self._end()

    def _end(self):
        if not self.finished.called and not self.stopped:
            self.finished.callback(None)

    # IBodyProducer, for the HTTP connection

    def startProducing(self, consumer):
        self.consumer = consumer
        if self.length == 0:
            self._end()
        else:
            self.sink._pumpSoon()
        return self.finished

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.sink._pumpSoon()

    def stopProducing(self):
        # The connection is gone (or the request was cancelled): finished
        # must not fire now.
        self.stopped = True
        self.sink._pumpSoon()


@implementer(IConsumer)
class _UploadSink:
    """
    The consumer an upload's sender writes into.  What it writes is hashed
    and handed to the current L{_Piece} as fast as its connection takes
    it; the sender is paused while there is nowhere to put it.

    @ivar done: fires with C{length} once every byte is written; fails if
        the upload fails first.
    """

    def __init__(self, reactor, length, verifier):
        self.reactor = reactor
        self.length = length
        self.verifier = verifier
        self.written = 0
        self.done = defer.Deferred()
        self.producer = None
        self.streaming = True
        self.failed = None
        self._pending = deque()
        self._piece = None
        self._sourcePaused = False
        self._pumping = False
        self._again = False
        self._pulling = False
        self._pumpScheduled = False
        if length == 0:
            self.done.callback(0)

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer = producer
        self.streaming = streaming
        self._sourcePaused = False
        if self.failed is not None:
            self.producer = None
            producer.stopProducing()
            return
        self._pump()

    def unregisterProducer(self):
        self.producer = None
        self._sourcePaused = False

    def write(self, data):
        if self.failed is not None:
            # The upload is over; done has failed already.
            return
        n = len(data)
        if self.written + n > self.length:
            self.fail("the sender wrote more than the %d bytes announced" % (
                self.length,))
            raise ValueError("%d bytes past the announced length %d" % (
                self.written + n - self.length, self.length))
        self.written += n
        if n:
            self.verifier.update(data)
            self._pending.append(bytes(data))
        if self.written == self.length and not self.done.called:
            self.done.callback(self.length)
        self._pump()

    def attach(self, piece):
        """
        Send what comes next into C{piece}.
        """
        self._piece = piece
        self._pump()

    def fail(self, why):
        if self.failed is not None:
            return
        self.failed = why
        self._pending.clear()
        producer = self.producer
        if producer is not None and self.written < self.length:
            self.producer = None
            producer.stopProducing()
        if not self.done.called:
            self.done.errback(RepositoryUnavailable(why))

    def _pumpSoon(self):
        """
        Pump in the next reactor turn.  (Called by the HTTP connection:
        pumping at once would run the sender, and whatever it does once
        its content is written, inside the connection's own calls, where
        cancelling the request has no effect.)
        """
        if not self._pumpScheduled:
            self._pumpScheduled = True
            self.reactor.callLater(0, self._scheduledPump)

    def _scheduledPump(self):
        self._pumpScheduled = False
        self._pump()

    def _pump(self):
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                self._move()
                self._flow()
                if not self._again:
                    break
        finally:
            self._pumping = False

    def _move(self):
        piece = self._piece
        while (self._pending and piece is not None and piece.ready()
               and piece.room > 0 and self.failed is None):
            data = self._pending.popleft()
            room = piece.room
            if len(data) > room:
                self._pending.appendleft(data[room:])
                data = data[:room]
            piece.take(data)

    def _flow(self):
        piece = self._piece
        blocked = (bool(self._pending) or piece is None or not piece.ready()
                   or piece.room == 0)
        producer = self.producer
        if producer is None or self.failed is not None:
            return
        if not self.streaming:
            if not blocked and self.written < self.length:
                self._pull()
            return
        if blocked:
            if not self._sourcePaused and self.written < self.length:
                self._sourcePaused = True
                producer.pauseProducing()
        elif self._sourcePaused:
            self._sourcePaused = False
            producer.resumeProducing()

    def _pull(self):
        # A pull producer is asked for more once per reactor turn while
        # there is room.
        if not self._pulling:
            self._pulling = True
            self.reactor.callLater(0, self._pullNow)

    def _pullNow(self):
        self._pulling = False
        piece = self._piece
        producer = self.producer
        if (producer is not None and self.failed is None
                and not self._pending and piece is not None and piece.ready()
                and piece.room > 0 and self.written < self.length):
            producer.resumeProducing()


class _Cut(Exception):
    """
    The upload was cut (abort, short content, closing).
    """


class _Call:
    """
    One request of an upload, which the upload may cancel.

    @ivar cancelled: why it was cancelled, or L{None}.
    """

    def __init__(self):
        self.cancelled = None
        self.deferred = None

    def start(self, function, *args):
        self.deferred = defer.Deferred.fromCoroutine(
            function(*args, call=self))
        return self.deferred

    def cancel(self, why):
        if self.cancelled is None:
            self.cancelled = why
        if self.deferred is not None and not self.deferred.called:
            self.deferred.cancel()


@implementer(IUpload)
class _S3Upload(_Exchange):
    """
    An accepted PUT: the objects are written as the content comes.
    """

    offset = 0

    def __init__(self, node, key, release):
        _Exchange.__init__(self, node, release)
        self.key = key
        self._sink = None
        self._verdict = defer.Deferred()
        self._pipeline = None
        self._call = None
        self._cut = None
        #: object names stored by this upload (removed again on failure)
        self.stored = []
        #: (object name, upload id) of a multipart upload in progress
        self.multipart = None

    def receive(self, length):
        if self._sink is not None:
            raise RuntimeError("content already announced")
        if self._done:
            raise RepositoryUnavailable("%s: the upload is over" % (
                self._node.name,))
        self._sink = _UploadSink(self._node.reactor, length,
                                 Verifier(self.key))
        self._pipeline = defer.Deferred.fromCoroutine(self._run(length))
        # Seen by finish; an early failure also fails the sink.
        self._pipeline.addErrback(self._pipelineFailed)
        self._pipeline = _boxed(self._pipeline)
        return self._sink

    def _pipelineFailed(self, failure):
        self._sink.fail("the upload failed: %s" % (
            failure.getErrorMessage(),))
        return failure

    # -- the pipeline -----------------------------------------------------------

    def _start(self, function, *args):
        """
        Start a request that L{_stop} may cancel.

        @return: its Deferred.
        """
        self._check()
        call = self._call = _Call()
        return call.start(function, *args)

    async def _run(self, length):
        node = self._node
        objects, chunkSize = node._plan(self.key, length)
        try:
            for index, (name, size) in enumerate(objects):
                last = index == len(objects) - 1
                if size > 0 and size > node._partSizeFor(size):
                    ok = await self._multipartObject(name, size, last)
                else:
                    ok = await self._singleObject(name, size, last)
                if not ok:
                    await self._cleanUp()
                    return Outcome(False)
                self.stored.append(name)
        except BaseException:
            await self._cleanUp()
            raise
        if chunkSize is not None:
            await node._recordChunks(self.key, chunkSize, len(objects))
        return Outcome(True)

    def _check(self):
        if self._cut is not None:
            raise _Cut(self._cut)

    async def _singleObject(self, name, size, last):
        node = self._node
        sink = self._sink
        self._check()
        if last and size == 0:
            # Nothing to hold back: PUT only once the verdict is good.
            if not await self._verdict:
                return False
        piece = _Piece(sink, size, holdLast=last)
        request = self._start(node._putObject, name, piece)
        sink.attach(piece)
        if not (last and size > 0):
            await request
            return True
        boxed = _boxed(request)
        index, result = await _first(self._verdict, boxed)
        if index == 0:
            if not result:
                # Bad content, or cut: drop the connection.  S3 stores
                # nothing of a body shorter than its Content-Length.
                self._call.cancel("not verified")
                await boxed
                return False
            piece.release()
        (await boxed).get()
        return True

    async def _multipartObject(self, name, size, last):
        node = self._node
        sink = self._sink
        uploadId = await self._start(node._initiate, name)
        self.multipart = (name, uploadId)
        partSize = node._partSizeFor(size)
        etags = []
        position = 0
        number = 0
        while position < size:
            number += 1
            partLength = min(partSize, size - position)
            piece = _Piece(sink, partLength)
            request = self._start(node._putPart, name, uploadId, number,
                                  piece)
            sink.attach(piece)
            etags.append(await request)
            position += partLength
        if last and not await self._verdict:
            return False
        await self._start(node._complete, name, uploadId, etags)
        self.multipart = None
        return True

    async def _cleanUp(self):
        """
        Leave nothing of a failed upload visible: abort its multipart
        upload, delete the chunks it stored.
        """
        node = self._node
        if self._sink is not None:
            self._sink.fail(self._cut or "the upload failed")
        if node._closed:
            if self.stored or self.multipart:
                node._log.warn(
                    "{name}: closing: the failed upload of {key} leaves "
                    "{objects}{multipart}", name=node.name, key=str(self.key),
                    objects=b", ".join(self.stored).decode("utf-8", "replace"),
                    multipart=" and an uncompleted multipart upload"
                    if self.multipart else "")
            return
        if self.multipart is not None:
            name, uploadId = self.multipart
            try:
                await node._abortMultipart(name, uploadId)
                self.multipart = None
            except Exception as e:
                node._log.warn("{name}: cannot abort the multipart upload of "
                               "{key}: {why}", name=node.name,
                               key=str(self.key), why=e)
        for name in list(self.stored):
            try:
                await node._delete(name)
                self.stored.remove(name)
            except Exception as e:
                node._log.warn("{name}: cannot delete {object} of a failed "
                               "upload: {why}", name=node.name,
                               object=name.decode("utf-8", "replace"), why=e)

    # -- IUpload ----------------------------------------------------------------

    def _stop(self, why):
        """
        Cut the upload: the pipeline cleans up and ends.
        """
        if self._cut is None:
            self._cut = why
        if self._sink is not None:
            self._sink.fail(why)
        if not self._verdict.called:
            self._verdict.callback(False)
        if self._call is not None:
            self._call.cancel(why)

    def finish(self, valid):
        return defer.Deferred.fromCoroutine(self._finish(valid))

    async def _finish(self, valid):
        node = self._node
        try:
            if self._done:
                raise RepositoryUnavailable("%s: the upload is over" % (
                    node.name,))
            sink = self._sink
            if sink is None:
                raise RepositoryUnavailable(
                    "%s: upload ended before any content" % (node.name,))
            sink.done.addErrback(lambda _: None)
            if sink.written < sink.length and self._cut is None \
                    and sink.failed is None:
                self._stop("upload ended after %d of %d bytes" % (
                    sink.written, sink.length))
            if self._cut is not None:
                await self._pipeline
                raise RepositoryUnavailable("%s: %s" % (node.name, self._cut))
            verdict = valid is not False and sink.verifier.verdict() is not False
            if not verdict:
                node._log.info(
                    "{name}: PUT {key}: {why}: not stored", name=node.name,
                    key=str(self.key), why="the sender said INVALID"
                    if valid is False else "the content does not match "
                    "the key")
            if not self._verdict.called:
                self._verdict.callback(verdict)
            return (await self._pipeline).get()
        finally:
            self._complete()

    def dataPresent(self):
        return defer.Deferred.fromCoroutine(self._dataPresent())

    async def _dataPresent(self):
        try:
            if self._sink is not None:
                raise RuntimeError("content already announced")
            present = await self._node._findPresent(self.key)
            return Outcome(present is not None)
        finally:
            self._complete()

    def abort(self, reason):
        if self._done:
            return
        self._stop("upload aborted: %s" % (reason,))
        if self._sink is not None:
            # The sink's failure is this abort's consequence, not news.
            self._sink.done.addErrback(lambda _: None)
        if self._pipeline is None:
            self._complete()
            return
        # The slot is given back once the clean-up is over.
        self._pipeline.addBoth(self._completeAfter)

    def _completeAfter(self, result):
        self._complete()
        return result

    def _abort(self, why):
        self.abort(why)
