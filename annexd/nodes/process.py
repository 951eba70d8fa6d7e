# -*- test-case-name: tests.test_localnode -*-
"""
P2P sessions with a child process that speaks the protocol on its stdin and
stdout (C{git-annex-shell p2pstdio}, C{ssh ... git-annex-shell p2pstdio},
C{git-annex-p2p-NETNAME ADDRESS}).

The child's stdout feeds a L{P2PConnection}; the connection writes to the
child's stdin.  The process transport is a consumer and a push producer, so
pausing the connection stops reading the child's stdout (the child then
blocks on a full pipe), and a producer registered for an outgoing payload is
paced by the child's stdin pipe.  The child's stderr is kept (the last few
KiB) to explain failures.
"""

import os

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from annexd.protocol.framing import P2PConnection

#: How much of a child's stderr is kept for error messages.
STDERR_KEEP = 4096


class ChildExited(Exception):
    """
    The child process of a session ended.

    @ivar annexdDetail: what it said on stderr, and how it ended.
    """

    def __init__(self, detail):
        Exception.__init__(self, detail)
        self.annexdDetail = detail


class P2PProcessProtocol(ProcessProtocol):
    """
    Bridges a child process's stdio to a L{P2PConnection}.

    @ivar connection: the L{P2PConnection}.
    @ivar stderr: the tail of what the child wrote to stderr.
    """

    _log = Logger()

    def __init__(self, connection):
        self.connection = connection
        self.stderr = b""
        #: fires with L{None} once the child has exited
        self.ended = Deferred()

    def connectionMade(self):
        self.connection.makeConnection(self.transport)

    def childDataReceived(self, childFD, data):
        if childFD == 1:
            self.connection.dataReceived(data)
        elif childFD == 2:
            self.stderr = (self.stderr + data)[-STDERR_KEEP:]

    def childConnectionLost(self, childFD):
        if childFD == 1:
            # Nothing more can arrive; do not wait for the child to exit
            # (it may be blocked on something else).
            self._lose()

    def processEnded(self, reason):
        self._lose(reason)
        self.ended.callback(None)

    def _lose(self, reason=None):
        if self.connection.disconnected:
            return
        detail = self.stderr.decode("utf-8", "replace").strip()
        if reason is not None and isinstance(reason.value, ierror.ProcessTerminated):
            how = ("killed by signal %d" % reason.value.signal
                   if reason.value.signal is not None
                   else "exited with status %s" % reason.value.exitCode)
            detail = "%s%s%s" % (detail, "; " if detail else "", how)
        self.connection.connectionLost(Failure(ChildExited(detail or "closed its output")))

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
    Start a child that speaks P2P on stdio.

    @return: the L{P2PProcessProtocol}; its C{connection} is ready for
        reading and writing at once, and fails with L{ChildExited} when the
        child goes away.
    """
    connection = P2PConnection(peer or args[0])
    bridge = P2PProcessProtocol(connection)
    reactor.spawnProcess(bridge, executable, args, env=env, path=path,
                         childFDs={0: "w", 1: "r", 2: "r"})
    return bridge

