# -*- test-case-name: tests.test_localnode -*-
"""
P2P sessions with a child process that speaks the protocol on its stdin and
stdout (C{git-annex-shell p2pstdio}, C{ssh ... git-annex-shell p2pstdio},
C{git-annex-p2p-NETNAME ADDRESS}).

The child's stdin and stdout are one end of a Unix socketpair; annexd adopts
the other end as an ordinary stream connection.  That transport is a
consumer and a push producer like any socket (pausing the L{P2PConnection}
stops reading, and the child then blocks on a full socket), and it reads
64 KiB at a time, where Twisted reads process pipes 8 KiB at a time: a
payload costs an eighth of the wake-ups.  The process transport is kept for
the child's stderr (the last few KiB are kept to explain failures), its exit
status, and signals.

The connection is reported lost only once both the socket has closed and
the child has exited, so that the reason carries what the child said.  A
child that closes the socket but does not exit is killed after
L{EXIT_GRACE} seconds.
"""

import os
import socket

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from annexd.protocol.framing import P2PConnection

#: How much of a child's stderr is kept for error messages.
STDERR_KEEP = 4096

#: Seconds a child may live on after closing its end of the session.
EXIT_GRACE = 5.0

#: Socket buffer size for the session socketpair.
SOCKET_BUFFER = 1024 * 1024

#: Bytes read from a session socket per call.  Measured (bench/, 1 GiB to
#: a 3-node cluster): 256 KiB cuts the daemon's CPU by a third against
#: Twisted's 64 KiB; 1 MiB doubles it again (every read allocates its size,
#: and Twisted's write buffers copy larger pieces).
READ_SIZE = 256 * 1024


class ChildExited(Exception):
    """
    The child process of a session ended.

    @ivar annexdDetail: what it said on stderr, and how it ended.
    """

    def __init__(self, detail):
        Exception.__init__(self, detail)
        self.annexdDetail = detail


class _SocketSide(Protocol):
    """
    Our end of the socketpair: feeds the L{P2PConnection}.
    """

    def __init__(self, bridge):
        self._bridge = bridge

    def connectionMade(self):
        # Up to READ_SIZE per read, not Twisted's 64 KiB: fewer trips
        # through the protocol per GiB.
        self.transport.bufferSize = READ_SIZE
        self._bridge.connection.makeConnection(self.transport)

    def dataReceived(self, data):
        self._bridge.connection.dataReceived(data)

    def connectionLost(self, reason):
        self._bridge._socketClosed()


class P2PProcessProtocol(ProcessProtocol):
    """
    A child process whose stdio is a P2P session.

    @ivar connection: the L{P2PConnection} of the session.
    @ivar stderr: the tail of what the child wrote to stderr.
    @ivar ended: a Deferred that fires with L{None} once the child has
        exited.
    """

    _log = Logger()

    def __init__(self, reactor, connection):
        self.reactor = reactor
        self.connection = connection
        self.stderr = b""
        self.ended = Deferred()
        self._exitReason = None
        self._socketGone = False
        self._graceTimer = None

    def childDataReceived(self, childFD, data):
        if childFD == 2:
            self.stderr = (self.stderr + data)[-STDERR_KEEP:]

    def processEnded(self, reason):
        self._exitReason = reason
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        self._graceTimer = None
        self._report()
        self.ended.callback(None)

    def _socketClosed(self):
        self._socketGone = True
        if self._exitReason is None:
            self._graceTimer = self.reactor.callLater(EXIT_GRACE, self.kill)
        self._report()

    def _report(self):
        """
        Tell the connection it is lost, once the socket is closed and the
        child's exit (hence all its stderr) is known.
        """
        if (not self._socketGone or self._exitReason is None
                or self.connection.disconnected):
            return
        detail = self.stderr.decode("utf-8", "replace").strip()
        value = self._exitReason.value
        if isinstance(value, ierror.ProcessTerminated):
            how = ("killed by signal %d" % value.signal
                   if value.signal is not None
                   else "exited with status %s" % value.exitCode)
            detail = "%s%s%s" % (detail, "; " if detail else "", how)
        self.connection.connectionLost(
            Failure(ChildExited(detail or "ended the session")))

    def kill(self):
        """
        Kill the child (SIGKILL), if it still runs.
        """
        try:
            self.transport.signalProcess("KILL")
        except (ierror.ProcessExitedAlready, OSError):
            pass


def childEnvironment(extra=None):
    """
    The environment for a node's child process: ours, minus the
    restrictions meant for annexd's own client (a read-only ssh user must
    not make the gateway's node sessions read-only), plus C{extra}.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_ANNEX_SHELL_")}
    if extra:
        env.update(extra)
    return env


def spawnP2P(reactor, executable, args, env, path=None, peer=None):
    """
    Start a child that speaks P2P on its stdin and stdout.

    @return: the L{P2PProcessProtocol}; its C{connection} is ready for
        reading and writing at once, and fails with L{ChildExited} when the
        child goes away.
    @raise OSError: if the child cannot be started.
    """
    connection = P2PConnection(peer or args[0])
    bridge = P2PProcessProtocol(reactor, connection)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        reactor.spawnProcess(
            bridge, executable, args, env=env, path=path,
            childFDs={0: theirs.fileno(), 1: theirs.fileno(), 2: "r"})
        ours.setblocking(False)
        reactor.adoptStreamConnection(
            ours.fileno(), socket.AF_UNIX,
            Factory.forProtocol(lambda: _SocketSide(bridge)))
    finally:
        theirs.close()
        ours.close()
    return bridge
