"""
Tests for L{annexd.http.git}: the gateway repository over git's smart HTTP,
served by a real L{twisted.web.server.Site} on a loopback port, and used by
the real git and git-annex (run through the reactor, so the server keeps
answering while they run).
"""

import io
import os
import shutil
import subprocess

from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    TCP4ClientEndpoint, connectProtocol, serverFromString)
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.test.requesthelper import DummyRequest

from annexd.http.git import GitRepositoryResource, synthesizedConfig
from tests.support.annex import cluster_for


SECRET = "x-secret-token-4711"


class _AsUser(resource.Resource):
    """
    What annexd's authorisation does for an authenticated request: set
    C{request.annexUser}, then hand the request to the wrapped leaf.
    """

    isLeaf = True

    def __init__(self, wrapped, user):
        super().__init__()
        self.wrapped = wrapped
        self.user = user

    def render(self, request):
        request.annexUser = self.user
        return self.wrapped.render(request)


class _Recording(resource.Resource):
    """
    Record the method and uri of every request, then hand it to the
    wrapped leaf.
    """

    isLeaf = True

    def __init__(self, wrapped, log):
        super().__init__()
        self.wrapped = wrapped
        self.log = log

    def render(self, request):
        self.log.append((request.method, request.uri))
        return self.wrapped.render(request)


class _RawHTTP(protocol.Protocol):
    """
    Send one request as given (no path normalisation) and collect the whole
    answer until the server closes the connection.
    """

    def __init__(self, requestBytes):
        self.requestBytes = requestBytes
        self.received = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.requestBytes)

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.received))


def backendEnvironment(cluster):
    """
    The base environment of git http-backend in these tests: the cluster's
    C{PATH} (git-annex's roles first, for the gateway's hooks), C{HOME}
    and isolation setting, and what the git-annex binary needs.
    """
    env = {"PATH": cluster.env.env["PATH"], "HOME": cluster.env.home,
           "GIT_CONFIG_NOSYSTEM": "1"}
    env.update(cluster.env.gitannex.env)
    return env


class GitOverHTTPTests(unittest.TestCase):
    """
    L{GitRepositoryResource} mounted at C{/gw/} (anonymous) and
    C{/gw-alice/} (as the authenticated user alice) of one Site.
    """

    def setUp(self):
        self.cluster = cluster_for(self, nodes=1)
        self.env = self.cluster.env.env
        self.git = shutil.which("git", path=self.env["PATH"])
        gateway = self.cluster.gateway
        with open(os.path.join(gateway.path, "config"), "a") as f:
            f.write("[secret]\n\ttoken = %s\n" % (SECRET,))
        self.gw = GitRepositoryResource(
            gateway.path, gateway.uuid, self.annexUrl,
            environment=backendEnvironment(self.cluster))
        root = resource.Resource()
        self.requests = []
        root.putChild(b"gw", _Recording(self.gw, self.requests))
        root.putChild(b"gw-alice", _AsUser(self.gw, "alice"))
        self.root = root
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        d = endpoint.listen(server.Site(root))
        d.addCallback(self._listening)
        return d

    def _listening(self, port):
        self.port = port.getHost().port
        self.addCleanup(port.stopListening)

    def annexUrl(self, request):
        """
        The annex+http url advertised for C{/gw}.
        """
        return "annex+http://127.0.0.1:%d/gw" % (self.port,)

    def url(self, name="gw"):
        return "http://127.0.0.1:%d/%s" % (self.port, name)

    async def runGit(self, args, cwd, check=True):
        """
        Run git with C{args} in C{cwd}, in the cluster's environment,
        without blocking the reactor.

        @return: C{(stdout, stderr, exit code)}
        """
        out, err, code = await getProcessOutputAndValue(
            self.git, args, env=self.env, path=cwd)
        if check and code != 0:
            self.fail("git %s exited %d:\n%s\n%s" % (
                " ".join(args), code, out.decode("utf-8", "replace"),
                err.decode("utf-8", "replace")))
        return out, err, code

    async def clone(self, name="gw"):
        """
        C{git clone} the repository mounted at C{/NAME} into a fresh
        directory and return its path.
        """
        base = self.mktemp()
        os.makedirs(base)
        await self.runGit(["clone", "-q", self.url(name), "clone"], base)
        return os.path.join(base, "clone")

    async def config(self, repo, name):
        out, err, code = await self.runGit(
            ["config", "--get", name], repo, check=False)
        return out.decode("utf-8").strip() if code == 0 else None

    async def raw(self, requestBytes):
        """
        Send C{requestBytes} to the server as they are.

        @return: C{(status code, whole answer)}
        """
        proto = _RawHTTP(requestBytes)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await connectProtocol(endpoint, proto)
        answer = await proto.done
        status = int(answer.split(b" ", 2)[1])
        return status, answer

    async def get(self, path, method=b"GET"):
        return await self.raw(
            b"%s %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n"
            % (method, path, self.port))

    async def test_clone(self):
        """
        C{git clone http://HOST:PORT/gw} works through git http-backend and
        brings the git-annex branch along.
        """
        clone = await self.clone()
        out, _, _ = await self.runGit(
            ["rev-parse", "--verify", "refs/remotes/origin/git-annex"], clone)
        gatewayBranch = self.cluster.env.git(
            self.cluster.gateway.path, "rev-parse", "git-annex")
        self.assertEqual(out.decode().strip(), gatewayBranch.strip())
        with open(os.path.join(clone, "README"), "rb") as f:
            self.assertEqual(f.read(), b"annex cluster test bed\n")

    async def test_annexInitRecordsAnnexUrl(self):
        """
        C{git annex init} in the clone reads the served config and records
        the advertised annex+http url and the gateway's uuid for origin.
        """
        clone = await self.clone()
        await self.runGit(["config", "annex.security.allowed-ip-addresses",
                        "all"], clone)
        del self.requests[:]
        await self.runGit(["annex", "init", "--quiet", "httpclient"], clone)
        self.assertIn((b"GET", b"/gw/config"), self.requests)
        self.assertEqual(await self.config(clone, "remote.origin.annexurl"),
                         self.annexUrl(None))
        self.assertEqual(await self.config(clone, "remote.origin.annex-uuid"),
                         self.cluster.gateway.uuid)

    async def test_configIsSynthesized(self):
        """
        C{/gw/config} and C{/gw/.git/config} are the annex uuid and url and
        nothing from the real config file.
        """
        for path in (b"/gw/config", b"/gw/.git/config"):
            status, answer = await self.get(path)
            self.assertEqual(status, 200, answer)
            head, body = answer.split(b"\r\n\r\n", 1)
            self.assertEqual(body, synthesizedConfig(
                self.cluster.gateway.uuid, self.annexUrl(None)))
            self.assertIn(self.cluster.gateway.uuid.encode(), body)
            self.assertIn(self.annexUrl(None).encode(), body)
            self.assertNotIn(SECRET.encode(), answer)
            self.assertNotIn(b"secret", answer)
            self.assertNotIn(b"bare", answer)

    def test_advertisedBehindTLSProxy(self):
        """
        A reverse proxy on this machine that terminated TLS says so with
        C{X-Forwarded-Proto: https}: the advertised url is annex+https;
        the same header from any other peer is ignored.
        """
        from twisted.internet.address import IPv4Address
        from twisted.web.test.requesthelper import DummyRequest

        from annexd.http.site import annexUrlFor
        for peer, proto, expected in (
                ("127.0.0.1", b"https", "annex+https://gw.example/gw"),
                ("127.0.0.1", b"http", "annex+http://gw.example/gw"),
                ("10.0.0.5", b"https", "annex+http://gw.example/gw")):
            request = DummyRequest([b""])
            request.isSecure = lambda: False
            request.client = IPv4Address("TCP", peer, 5555)
            request.requestHeaders.setRawHeaders(b"Host", [b"gw.example"])
            request.requestHeaders.setRawHeaders(b"X-Forwarded-Proto",
                                                 [proto])
            self.assertEqual(annexUrlFor(request, "gw"), expected,
                             (peer, proto))

    def test_forwardedProtoOnlyFromThisMachine(self):
        """
        X-Forwarded-Proto is believed from loopback and unix-socket peers
        only.
        """
        from twisted.internet.address import IPv4Address
        from twisted.web.test.requesthelper import DummyRequest

        from annexd.http.site import _behindTLSProxy
        from twisted.internet.address import IPv6Address, UNIXAddress
        for peer, believed in (
                (IPv4Address("TCP", "127.0.0.1", 5555), True),
                (IPv6Address("TCP", "::1", 5555), True),
                (IPv6Address("TCP", "::ffff:127.0.0.1", 5555), True),
                (UNIXAddress(None), True),
                (IPv4Address("TCP", "10.0.0.5", 5555), False),
                (IPv6Address("TCP", "::ffff:10.0.0.5", 5555), False),
                (IPv4Address("TCP", "192.168.1.9", 5555), False)):
            request = DummyRequest([b""])
            request.client = peer
            request.requestHeaders.setRawHeaders(b"X-Forwarded-Proto",
                                                 [b"https"])
            self.assertEqual(_behindTLSProxy(request), believed, peer)

    async def test_configMethods(self):
        """
        HEAD of C{/gw/config} works; POST is 405 and names the allowed
        methods.
        """
        status, answer = await self.get(b"/gw/config", b"HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(answer.split(b"\r\n\r\n", 1)[1], b"")
        status, answer = await self.get(b"/gw/config", b"POST")
        self.assertEqual(status, 405)
        self.assertIn(b"\r\nAllow: GET, HEAD\r\n", answer)

    async def test_pushRefusedWithoutUser(self):
        """
        Without C{request.annexUser} a push is refused with 403, and the
        gateway does not get the ref.
        """
        clone = await self.clone()
        _, err, code = await self.runGit(
            ["push", "origin", "HEAD:refs/heads/anonymous"], clone,
            check=False)
        self.assertNotEqual(code, 0)
        self.assertIn(b"403", err)
        refs = self.cluster.env.git(self.cluster.gateway.path, "for-each-ref")
        self.assertNotIn("refs/heads/anonymous", refs)

    async def test_receivePackPostRefusedWithoutUser(self):
        """
        A POST to C{git-receive-pack} without a user gets 403 before git
        runs, whatever the body.
        """
        body = b"0000"
        status, answer = await self.raw(
            b"POST /gw/git-receive-pack HTTP/1.0\r\nHost: x\r\n"
            b"Content-Type: application/x-git-receive-pack-request\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(status, 403, answer)

    async def test_pushWithUser(self):
        """
        With C{request.annexUser} set, a push reaches git http-backend's
        receive-pack and the ref appears in the gateway.
        """
        clone = await self.clone("gw-alice")
        with open(os.path.join(clone, "pushed.txt"), "w") as f:
            f.write("pushed\n")
        await self.runGit(["add", "pushed.txt"], clone)
        await self.runGit(["commit", "-q", "-m", "pushed"], clone)
        await self.runGit(["push", "-q", "origin", "HEAD:refs/heads/pushed"],
                       clone)
        head, _, _ = await self.runGit(["rev-parse", "HEAD"], clone)
        pushed = self.cluster.env.git(
            self.cluster.gateway.path, "rev-parse", "refs/heads/pushed")
        self.assertEqual(pushed.strip(), head.decode().strip())

    async def test_largePush(self):
        """
        A push bigger than git's C{http.postBuffer} (sent chunked) and than
        a pipe buffer is streamed whole to git http-backend.
        """
        clone = await self.clone("gw-alice")
        with open(os.path.join(clone, "big.bin"), "wb") as f:
            f.write(os.urandom(3 * 1024 * 1024 + 7))
        await self.runGit(["add", "big.bin"], clone)
        await self.runGit(["commit", "-q", "-m", "big"], clone)
        await self.runGit(["push", "-q", "origin", "HEAD:refs/heads/big"],
                          clone)
        blob, _, _ = await self.runGit(["rev-parse", "HEAD:big.bin"], clone)
        kind = self.cluster.env.git(self.cluster.gateway.path, "cat-file",
                                    "-t", blob.decode().strip())
        self.assertEqual(kind.strip(), "blob")

    async def test_traversalNotServed(self):
        """
        Paths with C{..}, encoded slashes or empty (absolute) components
        get 400 or 404 and never a file.
        """
        for path in (b"/gw/../../etc/passwd",
                     b"/gw/../gw/config",
                     b"/gw/objects/..%2f..%2fconfig",
                     b"/gw/%2e%2e/%2e%2e/etc/passwd",
                     b"/gw/..%2fconfig",
                     b"/gw//etc/passwd",
                     b"/gw/%2fetc%2fpasswd",
                     b"/gw/info%2frefs?service=git-upload-pack",
                     b"/gw/.git/../config",
                     b"/gw/objects%00/config"):
            status, answer = await self.get(path)
            self.assertIn(status, (400, 404), path)
            self.assertNotIn(b"root:", answer)
            self.assertNotIn(SECRET.encode(), answer)
            self.assertNotIn(b"[core]", answer)

    async def test_otherPathsNotServed(self):
        """
        Dumb-HTTP paths and other files of the repository are 404: only
        smart HTTP and the synthesized config are served.
        """
        for path in (b"/gw/HEAD", b"/gw/description", b"/gw/info/refs",
                     b"/gw/info/refs?service=git-upload-archive",
                     b"/gw/objects/info/packs", b"/gw/packed-refs",
                     b"/gw/annex/objects", b"/gw/.git/HEAD", b"/gw",
                     b"/gw/", b"/gw/config/x"):
            status, answer = await self.get(path)
            self.assertEqual(status, 404, path)
        status, _ = await self.get(
            b"/gw/info/refs?service=git-upload-pack&service=git-upload-pack")
        self.assertEqual(status, 400)

    async def test_nonBareRepository(self):
        """
        The C{.git} directory of a non-bare repository can be served too.
        """
        client = self.cluster.client
        self.root.putChild(b"client", GitRepositoryResource(
            os.path.join(client.path, ".git"), client.uuid, self.annexUrl,
            environment=backendEnvironment(self.cluster)))
        clone = await self.clone("client")
        out, _, _ = await self.runGit(["rev-parse", "HEAD"], clone)
        self.assertEqual(out.decode().strip(),
                         self.cluster.client_git("rev-parse", "HEAD").strip())
        status, answer = await self.get(b"/client/config")
        self.assertIn(client.uuid.encode(), answer)


class BackendEnvironmentTests(unittest.TestCase):
    """
    L{GitRepositoryResource.backendEnvironment}: what git http-backend
    sees.
    """

    def makeRequest(self, user=None):
        request = DummyRequest([b"git-upload-pack"])
        request.method = b"POST"
        request.content = io.BytesIO(b"0123456789")
        request.client = IPv4Address("TCP", "127.0.0.1", 40000)
        request.requestHeaders.setRawHeaders(
            b"content-type", [b"application/x-git-upload-pack-request"])
        request.requestHeaders.setRawHeaders(b"git-protocol",
                                             [b"version=2"])
        request.requestHeaders.setRawHeaders(b"authorization",
                                             [b"Basic YWxpY2U6cHc="])
        request.requestHeaders.setRawHeaders(b"proxy", [b"evil:1"])
        if user is not None:
            request.annexUser = user
        return request

    def test_minimal(self):
        """
        Only the base environment and the CGI variables git http-backend
        reads: not this process's environment, no credentials, and no git
        location variables from the base environment.
        """
        self.patch(os, "environ", dict(os.environ, LEAKED="yes"))
        gw = GitRepositoryResource(
            "/srv/gw.git", "u-u-i-d", lambda request: None,
            gitExecutable="/usr/bin/git",
            environment={"PATH": "/bin", "HOME": "/h", "GIT_DIR": "/other",
                         "REMOTE_USER": "mallory", "HTTP_X": "1"})
        env = gw.backendEnvironment(self.makeRequest(), "/git-upload-pack",
                                    "")
        self.assertEqual(env, {
            "PATH": "/bin", "HOME": "/h",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.0",
            "REQUEST_METHOD": "POST",
            "GIT_PROJECT_ROOT": "/srv/gw.git",
            "PATH_INFO": "/git-upload-pack",
            "QUERY_STRING": "",
            "GIT_HTTP_EXPORT_ALL": "1",
            "CONTENT_LENGTH": "10",
            "CONTENT_TYPE": "application/x-git-upload-pack-request",
            "HTTP_GIT_PROTOCOL": "version=2",
            "REMOTE_ADDR": "127.0.0.1",
        })

    def test_defaultEnvironment(self):
        """
        Without an explicit environment only C{PATH} and C{HOME} of this
        process are passed on; C{REMOTE_USER} is the request's annexUser.
        """
        self.patch(os, "environ", {"PATH": "/p", "HOME": "/home/x",
                                   "SECRET": "s", "GIT_DIR": "/d"})
        gw = GitRepositoryResource("/srv/gw.git", "u", lambda request: None,
                                   gitExecutable="/usr/bin/git")
        env = gw.backendEnvironment(self.makeRequest("alice"),
                                    "/git-upload-pack", "")
        self.assertEqual(env["PATH"], "/p")
        self.assertEqual(env["HOME"], "/home/x")
        self.assertEqual(env["REMOTE_USER"], "alice")
        self.assertNotIn("SECRET", env)
        self.assertNotIn("GIT_DIR", env)


class SynthesizedConfigTests(unittest.TestCase):
    """
    L{synthesizedConfig}.
    """

    def gitConfig(self, text, name):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text)
        return subprocess.run(
            ["git", "config", "--file", path, "--get", name],
            check=True, capture_output=True,
            env={"PATH": os.environ.get("PATH", os.defpath),
                 "HOME": os.path.abspath("."),
                 "GIT_CONFIG_NOSYSTEM": "1"}).stdout.decode()[:-1]

    def test_plain(self):
        """
        The layout is an C{[annex]} section with uuid and url, unquoted.
        """
        self.assertEqual(
            synthesizedConfig("1234-5678", "annex+http://h:1/gw"),
            b"[annex]\n\tuuid = 1234-5678\n\turl = annex+http://h:1/gw\n")

    def test_noUrl(self):
        """
        With no url only the uuid is advertised.
        """
        self.assertEqual(synthesizedConfig("1234", None),
                         b"[annex]\n\tuuid = 1234\n")

    def test_quoting(self):
        """
        Values git would read differently are quoted so that git config
        reads them back unchanged.
        """
        url = 'annex+https://h/a#b;c"d\\e '
        text = synthesizedConfig("u", url)
        self.assertEqual(self.gitConfig(text, "annex.url"), url)
        self.assertEqual(self.gitConfig(text, "annex.uuid"), "u")

    def test_controlCharacters(self):
        """
        A value with a newline (which could start a new section) is
        refused.
        """
        self.assertRaises(ValueError, synthesizedConfig, "u",
                          "annex+http://h/\n[core]\n\tbare = false")
