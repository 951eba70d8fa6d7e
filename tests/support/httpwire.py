"""
Driving an annexd HTTP site over an in-memory transport.

L{Wire} connects one L{AnnexSite} channel to a L{StringTransport}; tests
write raw request bytes and read parsed responses.  L{FakeHost} is a
gateway host (see L{annexd.router.host.GatewayHost}) whose repositories are
L{tests.support.memory.MemoryRepository}s.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from annexd.http.server import AnnexSite, Root
from annexd.router.locks import LockTable
from annexd.router.router import UnknownTarget

from tests.support.memory import MemoryRepository

GATEWAY = b"00000000-0000-4000-8000-000000000001"
NODE = b"00000000-0000-4000-8000-000000000002"
CLIENT = b"00000000-0000-4000-8000-0000000000cc"


class FakeHost:
    """
    A gateway published as C{gw} serving L{GATEWAY} and L{NODE} from
    memory.
    """

    name = "gw"

    def __init__(self, clock):
        self.repositories = {GATEWAY: MemoryRepository(GATEWAY),
                             NODE: MemoryRepository(NODE)}
        self.locks = LockTable(clock)
        self.bypasses = []

    @property
    def uuid(self):
        return GATEWAY

    def serves(self, uuid):
        return uuid in self.repositories

    def repository(self, uuid, bypass=(), frontend=None):
        self.bypasses.append(bypass)
        try:
            return self.repositories[uuid]
        except KeyError:
            raise UnknownTarget("no such repository")


class Response:
    """
    A parsed HTTP response.
    """

    def __init__(self, status, headers, body, complete):
        self.status = status
        self.headers = headers
        self.body = body
        #: whether the body ended properly (the last chunk came)
        self.complete = complete

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        import json
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers,
                                        self.body[:200])


def parseResponses(data):
    """
    Parse every response in C{data} (bytes sent by the server).

    @rtype: L{list} of L{Response}
    """
    responses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip()
        if headers.get("transfer-encoding") == b"chunked":
            body = b""
            complete = False
            while rest:
                size, sep, rest = rest.partition(b"\r\n")
                if not sep:
                    break
                size = int(size, 16)
                if size == 0:
                    rest = rest[2:]
                    complete = True
                    break
                if len(rest) < size + 2:
                    body += rest[:size]
                    rest = b""
                    break
                body += rest[:size]
                rest = rest[size + 2:]
        elif "content-length" in headers:
            length = int(headers["content-length"])
            body, rest = rest[:length], rest[length:]
            complete = len(body) == length
        else:
            body, rest, complete = rest, b"", True
        responses.append(Response(status, headers, body, complete))
        data = rest
    return responses


class Wire:
    """
    One client connection to a site.

    @ivar clock: the reactor (a L{Clock}) the site's timers use.
    @ivar host: the L{FakeHost}.
    @ivar transport: the server side's L{StringTransport}.
    """

    def __init__(self, auth=None, host=None, clock=None):
        self.clock = clock or Clock()
        self.host = host or FakeHost(self.clock)
        self.root = Root([self.host], auth, self.clock)
        self.site = AnnexSite(self.root, reactor=self.clock)
        self.channel = self.site.buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9417))
        self.channel.makeConnection(self.transport)

    def send(self, data):
        self.channel.dataReceived(data)

    def request(self, method, path, headers=(), body=None, chunks=None):
        """
        Send a request: C{body} with a Content-Length, or C{chunks} with
        chunked encoding (C{chunks} is a list; the terminating chunk is
        sent unless the list ends with L{None}).
        """
        lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: 127.0.0.1:9417"]
        lines.extend(b"%s: %s" % h for h in headers)
        if chunks is not None:
            lines.append(b"Transfer-Encoding: chunked")
        elif body is not None:
            lines.append(b"Content-Length: %d" % (len(body),))
        elif method == b"POST":
            lines.append(b"Content-Length: 0")
        self.send(b"\r\n".join(lines) + b"\r\n\r\n")
        if body:
            self.send(body)
        if chunks is not None:
            for chunk in chunks:
                if chunk is None:
                    return
                self.sendChunk(chunk)
            self.send(b"0\r\n\r\n")

    def sendChunk(self, chunk):
        self.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def responses(self):
        return parseResponses(self.transport.value())

    def response(self):
        responses = self.responses()
        assert len(responses) == 1, responses
        return responses[0]

    def clear(self):
        self.transport.clear()

    def disconnect(self):
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        self.channel.connectionLost(Failure(ConnectionLost("client gone")))
