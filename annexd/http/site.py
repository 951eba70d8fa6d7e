# -*- test-case-name: tests.test_http -*-
"""
One HTTP listener's site: the P2P API for every gateway served, and git
(smart HTTP and C{config}) for each under C{/NAME/}.
"""

import re

from twisted.internet.address import UNIXAddress

from annexd.http.server import AnnexSite, Root, actionNamed

_HOST = re.compile(rb"[A-Za-z0-9.\-:\[\]]{1,300}")


def _behindTLSProxy(request):
    """
    Whether C{request} came through a TLS-terminating reverse proxy on this
    machine (nginx, haproxy: C{contrib/}) that says the client used https.
    Only a loopback or unix-socket peer is believed.
    """
    if request.getHeader(b"X-Forwarded-Proto") != b"https":
        return False
    peer = request.getClientAddress()
    if isinstance(peer, UNIXAddress):
        # A unix socket: only processes on this machine reach it.
        return True
    host = getattr(peer, "host", None) or ""
    return (host == "::1" or host.startswith("127.")
            or host.startswith("::ffff:127."))


def annexUrlFor(request, name):
    """
    The annex+http(s) URL a client should use for the gateway published as
    C{name}, as seen from C{request} (its Host header, and TLS or not: TLS
    at annexd, or at a reverse proxy on the same machine that sends
    C{X-Forwarded-Proto: https}).
    """
    host = request.getHeader(b"Host") or b""
    if _HOST.fullmatch(host) is None:
        address = request.getHost()
        host = ("%s:%d" % (getattr(address, "host", "localhost"),
                           getattr(address, "port", 9417))).encode("ascii")
    secure = request.isSecure() or _behindTLSProxy(request)
    scheme = "annex+https" if secure else "annex+http"
    return "%s://%s/%s" % (scheme, host.decode("ascii"), name)


def makeSite(reactor, hosts, auth=None, timeout=60):
    """
    @param hosts: the L{annexd.router.host.GatewayHost}s to serve.
    @param auth: the authorisation (see L{Root}).
    @rtype: L{AnnexSite}
    """
    from annexd.http.git import GitRepositoryResource
    gitResources = {}
    for host in hosts:
        name = host.name
        gitResources[name.encode("utf-8")] = _Guarded(
            GitRepositoryResource(
                host.state.gitDir, host.state.uuid.decode("ascii"),
                lambda request, name=name: annexUrlFor(request, name)))
    root = Root(hosts, auth, reactor, gitResources)
    return AnnexSite(root, timeout=timeout)


class _Guarded:
    """
    git over HTTP, behind the same authorisation as the API: fetching is
    reading, pushing is writing.
    """

    buffersBody = True

    isLeaf = True

    def __init__(self, resource):
        self.resource = resource

    def getChildWithDefault(self, name, request):
        return self

    def putChild(self, path, child):
        raise NotImplementedError()

    def render(self, request):
        from twisted.web import server
        pushing = (request.postpath[-1:] == [b"git-receive-pack"]
                   or request.args.get(b"service") == [b"git-receive-pack"])
        root = request.site.resource
        d = root.auth.authorize(request.getHeader(b"Authorization"),
                                actionNamed("write" if pushing else "read"),
                                request.isSecure())

        def decided(decision):
            if request._disconnected:
                return
            if not decision.allowed:
                from annexd.http.server import HTTPFailure
                request.fail(HTTPFailure(decision.status, decision.reason or (
                    "authentication required" if decision.status == 401
                    else "not allowed")))
                return
            request.annexUser = decision.user or (
                "anonymous" if pushing else None)
            resource = self.resource
            while request.postpath and not resource.isLeaf:
                name = request.postpath.pop(0)
                request.prepath.append(name)
                resource = resource.getChildWithDefault(name, request)
            body = resource.render(request)
            if body is not server.NOT_DONE_YET:
                request.write(body)
                request.finish()

        def failed(reason):
            request.processingFailed(reason)

        d.addCallback(decided).addErrback(failed)
        return server.NOT_DONE_YET
