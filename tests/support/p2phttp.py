"""
HTTP P2P API servers for tests of annex+http clients
(L{annexd.nodes.http.HttpNode}):

  - L{startP2PHttp}: the reference, C{git-annex p2phttp} (the binary
    itself, so that the pid is the server's), in one repository of a test
    cluster, stopped when the test ends;
  - L{serveSite}: a twisted.web site (annexd's own L{AnnexSite}, or any
    resource) in this process on 127.0.0.1, over TCP or TLS, whose
    connections are all closed, and waited for, when the test ends;
  - L{memoryGateway}: annexd's HTTP front-end (L{annexd.http.server.Root})
    serving in-memory repositories (L{tests.support.httpwire.FakeHost}).
"""

from twisted.internet import defer, reactor, ssl
from twisted.internet.task import Clock

from annexd.http.server import AnnexHTTPChannel, AnnexSite, Root

from tests.support.daemon import freePort, spawnServer
from tests.support.httpwire import FakeHost

__all__ = ["startP2PHttp", "serveSite", "memoryGateway", "TrackedSite"]


def startP2PHttp(testcase, cluster, repo, options=("--wideopen",), env=None,
                 jobs=2):
    """
    Start C{git-annex p2phttp -JN --bind 127.0.0.1 --port P OPTIONS} in
    C{repo} (a L{tests.support.annex.Repo} of C{cluster}), wait until it
    accepts connections, and stop it (by its pid's process group) when the
    test ends.

    @param env: extra environment variables (e.g.
        C{GIT_ANNEX_P2PHTTP_PASSWORD_<user>}).
    @rtype: L{tests.support.daemon.Daemon}
    """
    port = freePort()
    executable, argv = cluster.env.gitannex.argv(
        "git-annex", "p2phttp", "-J%d" % (jobs,), "--bind", "127.0.0.1",
        "--port", str(port), *options)
    environment = dict(cluster.env.env)
    environment.update(env or {})
    server = spawnServer(argv, port, testcase.mktemp() + ".p2phttp.log",
                         cwd=repo.path, env=environment,
                         executable=executable, name="git-annex p2phttp")
    testcase.addCleanup(server.stop)
    return server.waitListening()


class _TrackedChannel(AnnexHTTPChannel):
    def connectionMade(self):
        self.site.live[self] = defer.Deferred()
        AnnexHTTPChannel.connectionMade(self)

    def connectionLost(self, reason):
        try:
            AnnexHTTPChannel.connectionLost(self, reason)
        finally:
            lost = self.site.live.pop(self, None)
            if lost is not None:
                lost.callback(None)


class TrackedSite(AnnexSite):
    """
    An L{AnnexSite} (it serves any resource tree) that knows its open
    connections (C{live}: channel -> Deferred firing when it is lost).
    """

    protocol = _TrackedChannel

    def __init__(self, root, **kw):
        AnnexSite.__init__(self, root, **kw)
        self.live = {}

    def closeAll(self):
        """
        Abort every open connection.

        @return: a Deferred firing once they are all gone.
        """
        waits = list(self.live.values())
        for channel in list(self.live):
            if channel.transport is not None:
                channel.transport.abortConnection()
        return defer.DeferredList(waits)


def serveSite(testcase, resource, tls=None, port=0):
    """
    Serve C{resource} on 127.0.0.1 (C{port}, by default a free one) until
    the test ends.

    @param tls: a L{tests.support.tlsca.TestCA} to serve HTTPS with its
        server certificate, or L{None} for plain HTTP.
    @return: C{(port number, TrackedSite)}.
    """
    site = TrackedSite(resource)
    if tls is None:
        listening = reactor.listenTCP(port, site, interface="127.0.0.1")
    else:
        with open(tls.serverCert, "rb") as f:
            cert = f.read()
        with open(tls.serverKey, "rb") as f:
            key = f.read()
        options = ssl.PrivateCertificate.loadPEM(cert + key).options()
        listening = reactor.listenSSL(port, site, options,
                                      interface="127.0.0.1")

    async def stop():
        await listening.stopListening()
        await site.closeAll()
    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
    return listening.getHost().port, site


def memoryGateway(testcase, tls=None, port=0):
    """
    annexd's HTTP front-end serving two in-memory repositories
    (L{tests.support.httpwire.GATEWAY} and C{NODE}, both
    L{tests.support.memory.MemoryRepository}), with a fake clock for its
    lock leases and transfer watchdogs.

    @return: C{(port number, FakeHost, TrackedSite)}.
    """
    clock = Clock()
    host = FakeHost(clock)
    port, site = serveSite(testcase, Root([host], reactor=clock), tls, port)
    return port, host, site
