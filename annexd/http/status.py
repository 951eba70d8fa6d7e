# -*- test-case-name: tests.test_monitor -*-
"""
The admin listener: a status page for people and C{/metrics} for
Prometheus, both read from a L{annexd.monitor.Monitor}.

Nothing here changes anything: only C{GET} and C{HEAD} are answered.
"""

from twisted.web.resource import NoResource, Resource
from twisted.web.server import Site
from twisted.web.template import Element, TagLoader, renderElement, \
    renderer, tags

#: The content type of the Prometheus text format this serves.
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_CSS = """
body { font-family: sans-serif; margin: 1em 2em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #070; } .down { color: #b00; }
"""


def _text(value):
    """
    C{value} as text for the page (bytes decoded, L{None} empty).
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def formatBytes(count):
    """
    C{count} bytes for people: C{"512 B"}, C{"1.5 MiB"}.
    """
    count = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            break
        count /= 1024
    if unit == "B":
        return "%d B" % (count,)
    return "%.1f %s" % (count, unit)


def _number(value):
    return tags.td(_text(value), class_="n")


def _table(headings, rows, empty):
    if not rows:
        return tags.p(empty)
    return tags.table(
        tags.thead(tags.tr([tags.th(heading) for heading in headings])),
        tags.tbody(rows))


class StatusElement(Element):
    """
    The status page's content: hosts, nodes, transfers in progress and
    byte totals.
    """

    loader = TagLoader(tags.html(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(**{"http-equiv": "refresh", "content": "5"}),
            tags.title("annexd status"),
            tags.style(_CSS)),
        tags.body(
            tags.h1("annexd status"),
            tags.h2("Totals"), tags.transparent(render="totals"),
            tags.h2("Repositories"), tags.transparent(render="hosts"),
            tags.h2("Clusters"), tags.transparent(render="clusters"),
            tags.h2("P2P addresses"), tags.transparent(render="addresses"),
            tags.h2("Nodes"), tags.transparent(render="nodes"),
            tags.h2("Transfers in progress"),
            tags.transparent(render="transfers"))))

    def __init__(self, monitor, hosts):
        Element.__init__(self)
        self._monitor = monitor
        self._hosts = hosts

    @renderer
    def totals(self, request, tag):
        clients = self._monitor.totals()
        nodes = self._monitor.nodeTotals()
        from annexd.router import spool
        rows = [
            ("Uploaded by clients", clients["upload"]),
            ("Downloaded by clients", clients["download"]),
            ("Sent to nodes", nodes["upload"]),
            ("Received from nodes", nodes["download"]),
            ("In spool files", spool.spooledBytes()),
        ]
        return tags.table(tags.tbody([
            tags.tr(tags.th(what), _number(formatBytes(count)),
                    _number("%d" % (count,)))
            for what, count in rows]))

    @renderer
    def hosts(self, request, tag):
        rows = [tags.tr(tags.td(_text(host.name)),
                        tags.td(tags.code(_text(host.state.uuid))),
                        tags.td(_text(host.state.path)))
                for host in self._hosts]
        return _table(["Name", "UUID", "Path"], rows, "None.")

    @renderer
    def clusters(self, request, tag):
        rows = []
        for host in self._hosts:
            state = host.state
            for uuid, info in sorted(state.clusters.items(),
                                     key=lambda item: item[1].name):
                names = sorted(remote.name
                               for remote in state.clusterNodes(uuid))
                rows.append(tags.tr(tags.td(_text(host.name)),
                                    tags.td(_text(info.name)),
                                    tags.td(tags.code(_text(uuid))),
                                    tags.td(_text(", ".join(names)))))
        return _table(["Repository", "Cluster", "UUID", "Nodes"], rows,
                      "None.")

    @renderer
    def addresses(self, request, tag):
        from annexd.p2p.frontend import AddressBook
        rows = []
        for host in self._hosts:
            for address, uuid, name in AddressBook.read(host.state.gitDir):
                rows.append(tags.tr(tags.td(_text(host.name)),
                                    tags.td(tags.code(_text(address))),
                                    tags.td(_text(name)),
                                    tags.td(tags.code(_text(uuid)))))
        return _table(["Repository", "Address", "Target", "UUID"], rows,
                      "None (no --p2p or --onion).")

    def _configuredNodes(self):
        """
        The proxied nodes of every host, as (name, uuid) pairs.
        """
        found = []
        for host in self._hosts:
            state = host.state
            for remote in state.remotes:
                if (remote.uuid and remote.uuid not in state.clusters
                        and state.isProxied(remote.uuid)):
                    found.append((remote.name, remote.uuid))
        return found

    @renderer
    def nodes(self, request, tag):
        rows = []
        pools = list(self._monitor.pools())
        seen = {_text(pool.get("uuid")) for pool in pools}
        for name, uuid in self._configuredNodes():
            if _text(uuid) not in seen:
                seen.add(_text(uuid))
                rows.append(tags.tr(
                    tags.td(_text(name)), tags.td(tags.code(_text(uuid))),
                    tags.td("not connected yet"), tags.td(""),
                    _number(0), _number(0), tags.td(""), _number(0)))
        for pool in pools:
            if pool.get("up"):
                state = tags.span("up", class_="up")
            else:
                retry = pool.get("retryIn")
                state = tags.span(
                    "down" if retry is None
                    else "down (retry in %ds)" % (retry,), class_="down")
            rows.append(tags.tr(
                tags.td(_text(pool.get("name"))),
                tags.td(tags.code(_text(pool.get("uuid")))),
                tags.td(state),
                tags.td(_text(pool.get("error"))),
                _number(pool.get("idle")),
                _number(pool.get("busy")),
                _number(pool.get("maxSessions")),
                _number(pool.get("started"))))
        return _table(["Node", "UUID", "State", "Last error", "Idle",
                       "Busy", "Max", "Started"], rows, "None.")

    @renderer
    def transfers(self, request, tag):
        now = self._monitor.clock()
        rows = []
        for transfer in self._monitor.transfers:
            elapsed = max(0.0, now - transfer.started)
            rate = transfer.bytes / elapsed if elapsed > 0 else 0
            where = " / ".join(_text(part) for part in (
                transfer.target, transfer.node) if part is not None)
            size = formatBytes(transfer.bytes)
            if transfer.length is not None:
                size += " of " + formatBytes(transfer.length)
            rows.append(tags.tr(
                tags.td(_text(transfer.frontend or "node")),
                tags.td(transfer.direction),
                tags.td(where),
                tags.td(tags.code(transfer.key)),
                _number(size),
                _number(formatBytes(rate) + "/s"),
                _number("%ds" % (elapsed,))))
        return _table(["Front-end", "Direction", "Target / node", "Key",
                       "Bytes", "Rate", "Time"], rows, "None.")


class _ReadOnly(Resource):
    """
    A leaf answering C{GET} and C{HEAD} only: any other method is C{405
    Method Not Allowed} (twisted.web would say C{501} for methods other
    than C{POST}).
    """

    isLeaf = True

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"method not allowed\n"
        return Resource.render(self, request)


class StatusPage(_ReadOnly):
    """
    The status page (HTML, refreshing itself every 5 seconds).

    @ivar hosts: the hosts served: objects with C{name}, C{state.uuid}
        and C{state.path}.
    """

    def __init__(self, monitor, hosts):
        _ReadOnly.__init__(self)
        self.monitor = monitor
        self.hosts = hosts

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Security-Policy",
                          b"default-src 'none'; style-src 'unsafe-inline'")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return renderElement(request, StatusElement(self.monitor, self.hosts))


class MetricsResource(_ReadOnly):
    """
    The metrics, in the Prometheus text format.
    """

    def __init__(self, monitor):
        _ReadOnly.__init__(self)
        self.monitor = monitor

    def render_GET(self, request):
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return self.monitor.render()


class _AdminRoot(Resource):
    """
    C{/} is the status page, C{/metrics} the metrics; any other path is
    not found.
    """

    def __init__(self, monitor, hosts):
        Resource.__init__(self)
        self._pages = {b"": StatusPage(monitor, hosts),
                       b"metrics": MetricsResource(monitor)}

    def getChildWithDefault(self, name, request):
        page = self._pages.get(name)
        if page is None or request.postpath:
            return NoResource()
        return page

    def render(self, request):
        # Reached without a path segment at all (not over HTTP).
        return self._pages[b""].render(request)


def makeAdminSite(monitor, hosts, reactor=None):
    """
    The admin listener's site: the status page at C{/}, the metrics at
    C{/metrics}.

    @param hosts: the hosts served (see L{StatusPage}).
    @param reactor: the reactor for the site's timers (default: the
        monitor's, else the global one).
    @rtype: L{Site}
    """
    if reactor is None:
        reactor = monitor.reactor
    site = Site(_AdminRoot(monitor, hosts), reactor=reactor)
    site.displayTracebacks = False
    return site
