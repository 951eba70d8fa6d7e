"""
A scripted client for P2P server sessions: feed raw client bytes, read the
exact bytes the server wrote.
"""

from twisted.internet.testing import StringTransport

from annexd.protocol.framing import P2PConnection
from annexd.protocol.server import P2PServer, ServerMode


class Session:
    """
    A server session driven by a scripted client.

    @ivar transport: the server's transport (what the client receives).
    @ivar connection: the server's L{P2PConnection}.
    @ivar server: the L{P2PServer}.
    @ivar served: the Deferred of L{P2PServer.serve}.
    """

    def __init__(self, repository, mode=ServerMode.READ_WRITE,
                 checkAuth=None, transport=None):
        self.transport = StringTransport() if transport is None else transport
        self.connection = P2PConnection("test client")
        self.connection.makeConnection(self.transport)
        self.server = P2PServer(self.connection, repository, mode, checkAuth)
        self.served = self.server.serve()

    def received(self):
        """
        What the server wrote since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data):
        """
        Feed C{data} from the client; return what the server wrote.
        """
        self.connection.dataReceived(data)
        return self.received()

    @property
    def over(self):
        """
        Whether the session has ended and closed the connection.
        """
        return self.served.called and self.transport.disconnecting
