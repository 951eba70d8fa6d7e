"""
A minimal SOCKS5 server for tests: what annexd's tor client needs of tor's
SOCKS port, without a tor network.

Only the no-authentication method and C{CONNECT} are served.  A C{CONNECT}
names a host (an onion, by domain name) and a port; the server looks the
pair up in its C{routes} (C{(host, port)} -> a Twisted client endpoint, a
unix socket or a loopback TCP port of the test's choosing), connects there
and relays both ways.  A pair with no route is answered "host unreachable"
(as tor answers for an onion it cannot find); a route whose endpoint
refuses is answered "connection refused".

    routes = {("abc.onion", 4242): UNIXClientEndpoint(reactor, path)}
    factory = SocksFactory(routes)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
"""

import struct

from twisted.internet import protocol

SUCCEEDED = 0x00
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class _Outbound(protocol.Protocol):
    """
    The connection to a route's target: relays to the SOCKS client.
    """

    def __init__(self, inbound):
        self.inbound = inbound

    def connectionMade(self):
        self.inbound.outboundReady(self)

    def dataReceived(self, data):
        self.inbound.transport.write(data)

    def connectionLost(self, reason):
        self.inbound.transport.loseConnection()


class SocksServer(protocol.Protocol):
    """
    One SOCKS5 client connection.
    """

    def connectionMade(self):
        self.buffer = b""
        self.state = "greeting"
        self.outbound = None

    def dataReceived(self, data):
        if self.state == "relaying":
            self.outbound.transport.write(data)
            return
        self.buffer += data
        if self.state == "greeting":
            if len(self.buffer) < 2 or len(self.buffer) < 2 + self.buffer[1]:
                return
            version, methods = self.buffer[0], self.buffer[2:2 + self.buffer[1]]
            self.buffer = self.buffer[2 + self.buffer[1]:]
            if version != 5 or 0 not in methods:
                self.state = "failed"
                self.transport.write(b"\x05\xff")
                self.transport.loseConnection()
                return
            self.transport.write(b"\x05\x00")
            self.state = "request"
        if self.state == "request":
            self._request()

    def _request(self):
        head = self.buffer
        if len(head) < 5:
            return
        version, command, _, kind, length = struct.unpack("!BBBBB", head[:5])
        if kind != 0x03:
            return self._reply(ADDRESS_TYPE_NOT_SUPPORTED)
        if len(head) < 5 + length + 2:
            return
        host = head[5:5 + length].decode("ascii", "replace")
        (port,) = struct.unpack("!H", head[5 + length:7 + length])
        self.buffer = head[7 + length:]
        self.factory.requests.append((host, port))
        if version != 5 or command != 0x01:
            return self._reply(COMMAND_NOT_SUPPORTED)
        endpoint = self.factory.routes.get((host, port))
        if endpoint is None:
            return self._reply(HOST_UNREACHABLE)
        self.state = "connecting"
        d = endpoint.connect(protocol.Factory.forProtocol(
            lambda: _Outbound(self)))
        d.addErrback(lambda _: self._reply(CONNECTION_REFUSED))

    def _reply(self, code):
        # The bound address: 0.0.0.0:0, as tor answers.
        self.transport.write(struct.pack("!BBBB4sH", 5, code, 0, 1,
                                         b"\0\0\0\0", 0))
        if code != SUCCEEDED:
            self.state = "failed"
            self.transport.loseConnection()

    def outboundReady(self, outbound):
        if self.state != "connecting":
            # The client went away meanwhile.
            outbound.transport.loseConnection()
            return
        self.outbound = outbound
        self.state = "relaying"
        # Each side's transport paces the other's reads.
        outbound.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(outbound.transport, True)
        self._reply(SUCCEEDED)
        if self.buffer:
            outbound.transport.write(self.buffer)
            self.buffer = b""

    def connectionLost(self, reason):
        self.state = "closed"
        if self.outbound is not None:
            self.outbound.transport.loseConnection()


class SocksFactory(protocol.ServerFactory):
    """
    @ivar routes: C{(host, port)} -> client endpoint.
    @ivar requests: every C{(host, port)} asked for, in order.
    """

    protocol = SocksServer

    def __init__(self, routes=None):
        self.routes = dict(routes or {})
        self.requests = []
