# -*- test-case-name: tests.test_httpgit -*-
"""
The gateway repository over git's smart HTTP, on the annex+http listener.

A user should be able to run C{git clone http://HOST:PORT/NAME} and then
C{git annex get FILE} with no manual configuration.  Two things make that
work (shared/spec/p2phttp.md section 5.3):

  - git itself needs smart HTTP: C{GET info/refs?service=git-upload-pack},
    C{POST git-upload-pack}, and for pushes the same with
    C{git-receive-pack}.  L{GitRepositoryResource} runs git's own
    C{git http-backend} as a CGI program for these
    (L{twisted.web.twcgi.CGIProcessProtocol} parses its output).

  - git-annex, the first time it uses a remote whose url is http(s),
    downloads C{<remote url>/config} and reads it with C{git config --list
    --file}; when C{annex.url} there is an annex+http(s) url it records it
    as C{remote.NAME.annexurl}, and C{annex.uuid} becomes
    C{remote.NAME.annex-uuid} (git-annex C{Remote/Git.hs},
    C{tryGitConfigRead}/C{geturlconfig}, which appends C{"/config"} to the
    remote's location; C{doc/git-annex.mdwn}, C{annex.url}, describes it
    as the remote's C{.git/config}).  L{GitRepositoryResource} answers
    C{config}, and C{.git/config} for remote urls that name the C{.git}
    directory of a non-bare layout, with a config I{synthesized} from the
    gateway's uuid and the advertised url: never the real config file,
    which may hold credentials.

git-annex's own server, C{git annex p2phttp}, serves only the P2P API: it
cannot serve the git repository over HTTP (its manual page says so), so a
deployment of it needs a second web server for git plus hand-written
C{annex.url} configuration.  annexd serves both on one listener.

Nothing else under the mount point is served: no dumb-HTTP object paths,
no files of the repository directory.  A path segment that is C{.} or
C{..}, empty, or holds a slash, backslash or NUL (after percent-decoding)
gets a 400 before anything looks at the file system, and git http-backend
only ever sees one of the four fixed C{PATH_INFO}s above.
"""

import os
import re
import shutil

from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.web import http, resource, server, twcgi


#: The smart-HTTP services; anything else is refused.
UPLOAD_PACK = b"git-upload-pack"
RECEIVE_PACK = b"git-receive-pack"
_SERVICES = (UPLOAD_PACK, RECEIVE_PACK)

#: What git-annex may fetch for the remote's config (see the module
#: docstring), once a leading C{.git} segment is dropped.
_CONFIG = [b"config"]
_INFO_REFS = [b"info", b"refs"]

#: Variables never taken from the base environment: CGI variables (we set
#: the ones git http-backend needs) and variables that point git at another
#: repository.
_CGI_NAMES = frozenset([
    "AUTH_TYPE", "CONTENT_LENGTH", "CONTENT_TYPE", "GATEWAY_INTERFACE",
    "PATH_INFO", "PATH_TRANSLATED", "QUERY_STRING", "REMOTE_ADDR",
    "REMOTE_HOST", "REMOTE_IDENT", "REMOTE_USER", "REQUEST_METHOD",
    "REQUEST_URI", "SCRIPT_NAME", "SCRIPT_FILENAME", "SERVER_NAME",
    "SERVER_PORT", "SERVER_PROTOCOL", "SERVER_SOFTWARE",
    "GIT_PROJECT_ROOT", "GIT_HTTP_EXPORT_ALL", "GIT_PROTOCOL",
    "GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
])

#: Request headers passed to git http-backend, and the CGI names it reads
#: them from.  Nothing else (in particular not C{Authorization}) reaches it.
_PASSED_HEADERS = (
    (b"content-type", "CONTENT_TYPE"),
    (b"content-encoding", "HTTP_CONTENT_ENCODING"),
    (b"git-protocol", "HTTP_GIT_PROTOCOL"),
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NEEDS_QUOTES = re.compile(r'^\s|\s$|[;#"\\]')


def _configValue(value):
    """
    C{value} written as a git config value: quoted (with C{\\} and C{"}
    escaped) when git would otherwise read it differently.

    @raise ValueError: for a value with control characters (a newline would
        let it start a new section).
    """
    if _CONTROL.search(value):
        raise ValueError("control character in config value %r" % (value,))
    if _NEEDS_QUOTES.search(value):
        return '"%s"' % (value.replace("\\", "\\\\").replace('"', '\\"'),)
    return value


def synthesizedConfig(uuid, annexUrl):
    """
    The git config text served as the repository's C{config}: its
    C{annex.uuid} and C{annex.url} and nothing else.

    @param uuid: the gateway's annex uuid.
    @type uuid: L{str}
    @param annexUrl: the annex+http(s) url to advertise, or L{None} to
        advertise none.
    @type annexUrl: L{str} or L{None}
    @rtype: L{bytes}
    @raise ValueError: when a value has control characters.
    """
    lines = ["[annex]", "\tuuid = %s" % (_configValue(uuid),)]
    if annexUrl is not None:
        lines.append("\turl = %s" % (_configValue(annexUrl),))
    return ("\n".join(lines) + "\n").encode("utf-8")


class _BadPath(ValueError):
    """
    A request path that must not be looked at.
    """


def _checkedSegments(postpath):
    """
    The path segments below the mount point, refusing any that could name
    something outside it.

    @param postpath: the request's percent-decoded C{postpath}.
    @rtype: L{list} of L{bytes}
    @raise _BadPath: for C{.}, C{..}, an empty segment (an absolute
        component or a trailing slash), or one holding C{/}, C{\\} or NUL.
    """
    segments = list(postpath)
    if segments == [b""]:
        # The mount point itself (C{/NAME/}): nothing there, but harmless.
        return []
    for segment in segments:
        if segment in (b"", b".", b"..") or any(
                c in segment for c in (b"/", b"\\", b"\x00")):
            raise _BadPath(segment)
    return segments


def _textError(request, code, message):
    """
    Answer C{request} with C{code} and a one-line plain-text body.

    @rtype: L{bytes}
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-cache")
    return message.encode("utf-8") + b"\n"


class _HttpBackendProtocol(twcgi.CGIProcessProtocol):
    """
    The process protocol of one C{git http-backend} run: Twisted's CGI
    response parsing, with the request body streamed to the child's stdin
    (a pull producer over the spooled C{request.content}) instead of read
    into memory at once.
    """

    _log = Logger()

    def connectionMade(self):
        """
        Register as the response's producer and start feeding the body.
        """
        self.request.registerProducer(self, True)
        self.request.content.seek(0, 0)
        sender = FileSender()
        done = sender.beginFileTransfer(self.request.content, self.transport)
        done.addCallbacks(self._bodySent, self._bodyNotSent)

    def _bodySent(self, lastByte):
        self.transport.closeStdin()

    def _bodyNotSent(self, reason):
        # git http-backend closed its stdin early (it refused the request
        # or died); its answer, or processEnded, says what happened.
        self._log.debug("request body not fully sent to git http-backend: "
                        "{reason}", reason=reason.getErrorMessage())


class GitRepositoryResource(resource.Resource):
    """
    One git repository over smart HTTP, plus its synthesized C{config}.

    Mount it at C{/NAME/} (C{root.putChild(b"NAME", it)}); it is a leaf and
    serves, below that:

      - C{config} and C{.git/config}: L{synthesizedConfig} (GET, HEAD);
      - C{info/refs?service=git-upload-pack} and
        C{info/refs?service=git-receive-pack} (GET, HEAD),
        C{git-upload-pack} and C{git-receive-pack} (POST): git
        http-backend;
      - the same under a leading C{.git/}.

    Everything else is 404 (400 for paths with C{..} and the like).
    Receive-pack needs C{request.annexUser} (set by the caller, which does
    the authorisation): without it the answer is 403 and git does not run;
    with it git http-backend runs with C{REMOTE_USER} set, which is what
    enables receive-pack there (unless the repository sets
    C{http.receivepack} to false).

    @ivar gitDir: absolute path of the git directory.
    @ivar uuid: the annex uuid advertised.
    @ivar annexUrlFor: C{(request) -> str or None}, the annex+http(s) url
        advertised as C{annex.url}.
    @ivar gitExecutable: the git program run as C{git http-backend}.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, gitDir, uuid, annexUrlFor, gitExecutable=None,
                 environment=None, reactor=None):
        """
        @param gitDir: the repository's git directory: a bare repository,
            or the C{.git} directory of a non-bare one.
        @type gitDir: L{str} or L{bytes}
        @param uuid: the repository's annex uuid.
        @type uuid: L{str}
        @param annexUrlFor: called with each config request; returns the
            annex+http(s) url to advertise (the caller derives it from the
            Host header, TLS and the mount prefix), or L{None} for none.
        @param gitExecutable: path of git; default: C{git} looked up on the
            C{PATH} of C{environment}, then on this process's C{PATH}.
        @param environment: the base environment of git http-backend (it
            needs C{PATH}, which must reach git-annex for the repository's
            hooks, and C{HOME}); default: C{PATH} and C{HOME} of this
            process.  CGI variables, and variables that point git at another
            repository, are dropped from it.
        @type environment: L{dict} of L{str}
        @param reactor: an L{IReactorProcess}; default: the global reactor.
        """
        super().__init__()
        self.gitDir = os.path.abspath(os.fsdecode(gitDir))
        _configValue(uuid)
        self.uuid = uuid
        self.annexUrlFor = annexUrlFor
        if environment is None:
            environment = {name: os.environ[name] for name in ("PATH", "HOME")
                           if name in os.environ}
        self._environment = {
            name: value for name, value in environment.items()
            if name not in _CGI_NAMES and not name.startswith("HTTP_")}
        if gitExecutable is None:
            gitExecutable = (
                shutil.which("git", path=self._environment.get("PATH"))
                or shutil.which("git"))
            if gitExecutable is None:
                raise RuntimeError("git not found")
        self.gitExecutable = gitExecutable
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor

    def render(self, request):
        """
        Route on the path below the mount point.
        """
        try:
            segments = _checkedSegments(request.postpath)
        except _BadPath:
            return _textError(request, http.BAD_REQUEST, "bad path")
        if len(segments) > 1 and segments[0] == b".git":
            segments = segments[1:]
        if segments == _CONFIG:
            return self._renderConfig(request)
        if segments == _INFO_REFS:
            return self._renderInfoRefs(request)
        if len(segments) == 1 and segments[0] in _SERVICES:
            return self._renderService(request, segments[0])
        return _textError(request, http.NOT_FOUND, "not found")

    def _methodNotAllowed(self, request, allowed):
        request.setHeader(b"allow", b", ".join(allowed))
        return _textError(request, http.NOT_ALLOWED, "method not allowed")

    def _renderConfig(self, request):
        if request.method not in (b"GET", b"HEAD"):
            return self._methodNotAllowed(request, [b"GET", b"HEAD"])
        body = synthesizedConfig(self.uuid, self.annexUrlFor(request))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        return body

    def _renderInfoRefs(self, request):
        if request.method not in (b"GET", b"HEAD"):
            return self._methodNotAllowed(request, [b"GET", b"HEAD"])
        services = request.args.get(b"service", [])
        if len(services) > 1:
            return _textError(request, http.BAD_REQUEST,
                              "more than one service")
        if not services or services[0] not in _SERVICES:
            # Dumb HTTP (info/refs without a service) is not served.
            return _textError(request, http.NOT_FOUND, "not found")
        service = services[0]
        refused = self._refusal(request, service)
        if refused is not None:
            return refused
        return self._runBackend(request, "/info/refs",
                                "service=" + service.decode("ascii"))

    def _renderService(self, request, service):
        if request.method != b"POST":
            return self._methodNotAllowed(request, [b"POST"])
        refused = self._refusal(request, service)
        if refused is not None:
            return refused
        return self._runBackend(request, "/" + service.decode("ascii"), "")

    def _refusal(self, request, service):
        """
        The 403 answer for a receive-pack request without an authenticated
        user, else L{None}.
        """
        if service != RECEIVE_PACK:
            return None
        user = getattr(request, "annexUser", None)
        if user is None:
            self._log.info("push to {gitDir} refused: no authenticated user",
                           gitDir=self.gitDir)
            return _textError(request, http.FORBIDDEN,
                              "pushing needs an authenticated user")
        if _CONTROL.search(user):
            return _textError(request, http.FORBIDDEN, "bad user name")
        return None

    def backendEnvironment(self, request, pathInfo, query):
        """
        The environment git http-backend runs with: the base environment,
        plus the CGI variables it reads.

        @param pathInfo: C{PATH_INFO}, one of the fixed service paths.
        @param query: C{QUERY_STRING}, rebuilt from the parsed request.
        @rtype: L{dict} of L{str}
        """
        env = dict(self._environment)
        content = request.content
        content.seek(0, 2)
        length = content.tell()
        content.seek(0, 0)
        env.update({
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": request.clientproto.decode("latin-1"),
            "REQUEST_METHOD": request.method.decode("latin-1"),
            "GIT_PROJECT_ROOT": self.gitDir,
            "PATH_INFO": pathInfo,
            "QUERY_STRING": query,
            "GIT_HTTP_EXPORT_ALL": "1",
            "CONTENT_LENGTH": str(length),
        })
        for header, name in _PASSED_HEADERS:
            value = request.getHeader(header)
            if value is not None:
                value = value.decode("latin-1")
                if not _CONTROL.search(value):
                    env[name] = value
        address = request.getClientAddress()
        host = getattr(address, "host", None)
        if host is not None:
            env["REMOTE_ADDR"] = host
        user = getattr(request, "annexUser", None)
        if user is not None:
            env["REMOTE_USER"] = user
        return env

    def _runBackend(self, request, pathInfo, query):
        env = self.backendEnvironment(request, pathInfo, query)
        protocol = _HttpBackendProtocol(request)
        self._reactor.spawnProcess(
            protocol, self.gitExecutable,
            [self.gitExecutable, "http-backend"], env, self.gitDir)
        return server.NOT_DONE_YET
