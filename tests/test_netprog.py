"""
Tests for contrib/git-annex-p2p-annexd, git-annex's network program for
annexd gateways: the real script runs as a subprocess against servers
started here, over TCP (IPv4 and IPv6) and unix sockets.
"""

import hashlib
import os
import shutil
import socket
import sys
import tempfile

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.trial import unittest
from zope.interface import implementer

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "contrib", "git-annex-p2p-annexd")

PROGRAM = b"git-annex-p2p-annexd"

#: How long a run of the program may take before the test fails.
TIMEOUT = 60

#: How long the program may take to exit after its peer closed, although
#: its standard input is still open.
PROMPTLY = 10


class Result:
    """
    How a run of the program ended.

    @ivar status: its exit status (or C{None} if a signal ended it).
    @ivar out: its standard output.
    @ivar err: its standard error.
    """

    def __init__(self, status, out, err):
        self.status = status
        self.out = out
        self.err = err

    def __repr__(self):
        return "<Result status=%r out=%d bytes err=%r>" % (
            self.status, len(self.out), self.err[:500])


class Program(protocol.ProcessProtocol):
    """
    One run of the program.

    @ivar ended: fires with a L{Result} when the program has exited and its
        output is read; cancelling it kills the program.
    """

    def __init__(self, stdin, closeStdin):
        self._stdin = stdin
        self._closeStdin = closeStdin
        self._out = []
        self._err = []
        self.ended = defer.Deferred(self._kill)

    def _kill(self, _):
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def connectionMade(self):
        if self._stdin:
            self.transport.write(self._stdin)
        if self._closeStdin:
            self.transport.closeStdin()

    def write(self, data):
        self.transport.write(data)

    def closeStdin(self):
        self.transport.closeStdin()

    def outReceived(self, data):
        self._out.append(data)

    def errReceived(self, data):
        self._err.append(data)

    def processExited(self, reason):
        # Whatever we had not written yet is of no use now.
        self.transport.closeStdin()

    def processEnded(self, reason):
        if not self.ended.called:
            self.ended.callback(Result(
                getattr(reason.value, "exitCode", None),
                b"".join(self._out), b"".join(self._err)))


def run(args, stdin=b"", closeStdin=True, env=None, timeout=TIMEOUT):
    """
    Run the program (with this Python) without blocking the reactor.

    @param args: its arguments.
    @param stdin: what to write to its standard input at once.
    @param closeStdin: whether to close its standard input after that.
    @param env: changes to the environment (C{None} values remove).
    @return: the L{Program}; its C{ended} fails with
        L{defer.TimeoutError} (and the program is killed) after
        C{timeout} seconds.
    """
    environ = dict(os.environ)
    environ.pop("ANNEXD_P2P_ADDRESSES", None)
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    program = Program(stdin, closeStdin)
    reactor.spawnProcess(program, sys.executable,
                         [sys.executable, SCRIPT] + list(args), env=environ)
    program.ended.addTimeout(timeout, reactor)
    return program


def sha(data):
    return hashlib.sha256(data).hexdigest()


# -- servers ------------------------------------------------------------------


class Server(protocol.ServerFactory):
    """
    Accepts one connection at a time with C{protocolClass}.

    @ivar connected: fires with the protocol when a client connects.
    @ivar closed: fires when that connection is closed.
    """

    def __init__(self, protocolClass, **kwargs):
        self.protocol = protocolClass
        self.kwargs = kwargs
        self.connected = defer.Deferred()
        self.closed = defer.Deferred()

    def buildProtocol(self, addr):
        p = self.protocol(**self.kwargs)
        p.factory = self
        return p


class ServerProtocol(protocol.Protocol):

    def connectionMade(self):
        self.factory.connected.callback(self)

    def connectionLost(self, reason):
        self.factory.closed.callback(None)


@implementer(IHalfCloseableProtocol)
class Echo(ServerProtocol):
    """
    Echoes everything; closes when the client has half-closed.
    """

    def dataReceived(self, data):
        self.transport.write(data)

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


@implementer(IHalfCloseableProtocol)
class AnswerAfterEOF(ServerProtocol):
    """
    Reads everything until the client half-closes, then sends C{answer}
    and closes.

    @ivar receivedAll: fires when C{expected} bytes arrived.
    @ivar sawEOF: fires with the bytes received when the client
        half-closed.
    """

    def __init__(self, expected, answer):
        self.expected = expected
        self.answer = answer
        self.received = []
        self.size = 0
        self.receivedAll = defer.Deferred()
        self.sawEOF = defer.Deferred()

    def dataReceived(self, data):
        self.received.append(data)
        self.size += len(data)
        if self.size >= self.expected and not self.receivedAll.called:
            self.receivedAll.callback(None)

    def readConnectionLost(self):
        self.sawEOF.callback(b"".join(self.received))
        self.transport.write(self.answer)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class ByeAndClose(ServerProtocol):
    """
    Answers C{hello} with C{bye} and closes.
    """

    buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if b"hello\n" in self.buffer:
            self.transport.write(b"bye\n")
            self.transport.loseConnection()


class Reset(ServerProtocol):
    """
    Aborts the connection (a reset) when the first bytes arrive.
    """

    def dataReceived(self, data):
        self.transport.write(b"partial")
        self.transport.abortConnection()


# -- relay tests --------------------------------------------------------------


class RelayTestsMixin:
    """
    The connect mode over one kind of address: L{listen} starts a server
    and returns the program's address for it.
    """

    def listen(self, factory):
        raise NotImplementedError()

    async def test_echo(self):
        """
        A few MB of random bytes go through the program and back intact;
        after the end of standard input the echo server closes, and the
        program exits 0.
        """
        data = os.urandom(4 * 1024 * 1024 + 12345)
        server = Server(Echo)
        program = run([self.listen(server)], stdin=data)
        result = await program.ended
        self.assertEqual((result.status, result.err), (0, b""))
        self.assertEqual(len(result.out), len(data))
        self.assertEqual(sha(result.out), sha(data))
        await server.closed

    async def test_halfClose(self):
        """
        At the end of standard input (and not before) the program shuts
        down its sending side only: the server sees the end of the input,
        and what it sends after that still reaches standard output.
        """
        data = os.urandom(1024 * 1024)
        answer = os.urandom(2 * 1024 * 1024) + b"END"
        server = Server(AnswerAfterEOF, expected=len(data), answer=answer)
        program = run([self.listen(server)], stdin=data, closeStdin=False)
        peer = await server.connected
        await peer.receivedAll
        self.assertFalse(peer.sawEOF.called)
        program.closeStdin()
        received = await peer.sawEOF
        self.assertEqual(sha(received), sha(data))
        result = await program.ended
        self.assertEqual((result.status, result.err), (0, b""))
        self.assertEqual(sha(result.out), sha(answer))
        await server.closed

    async def test_peerClosesStdinOpen(self):
        """
        When the peer closes, the program exits 0 promptly although its
        standard input stays open (git-annex keeps it open).
        """
        server = Server(ByeAndClose)
        program = run([self.listen(server)], stdin=b"hello\n",
                      closeStdin=False, timeout=PROMPTLY)
        result = await program.ended
        self.assertEqual((result.status, result.out, result.err),
                         (0, b"bye\n", b""))
        await server.closed

    async def test_peerResets(self):
        """
        A connection reset by the peer (while the program is still sending
        a lot) is a normal end: exit 0, nothing on standard error.
        """
        server = Server(Reset)
        program = run([self.listen(server)],
                      stdin=os.urandom(8 * 1024 * 1024), closeStdin=False,
                      timeout=PROMPTLY)
        result = await program.ended
        self.assertEqual((result.status, result.err), (0, b""))
        self.assertIn(result.out, (b"", b"partial"))
        await server.closed


class TCPRelayTests(RelayTestsMixin, unittest.TestCase):
    """
    The connect mode to C{127.0.0.1:PORT}.
    """

    def listen(self, factory):
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return "127.0.0.1:%d" % (port.getHost().port,)


class TCP6RelayTests(RelayTestsMixin, unittest.TestCase):
    """
    The connect mode to C{[::1]:PORT}.
    """

    def listen(self, factory):
        try:
            port = reactor.listenTCP(0, factory, interface="::1")
        except error.CannotListenError as e:
            raise unittest.SkipTest("no IPv6 loopback: %s" % (e,))
        self.addCleanup(port.stopListening)
        return "[::1]:%d" % (port.getHost().port,)


class UNIXRelayTests(RelayTestsMixin, unittest.TestCase):
    """
    The connect mode to a unix socket.
    """

    def listen(self, factory):
        # Short: unix socket paths are limited to about 100 bytes.
        directory = tempfile.mkdtemp(prefix="annexd-netprog-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "p2p.sock")
        port = reactor.listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        return path


# -- other modes and failures ---------------------------------------------------


class ConnectFailureTests(unittest.TestCase):
    """
    An unreachable peer or a bad address: one line on standard error,
    exit 1.
    """

    async def assertCannotConnect(self, address):
        result = await run([address]).ended
        self.assertEqual(result.status, 1)
        self.assertEqual(result.out, b"")
        prefix = PROGRAM + b": cannot connect to " + address.encode() + b": "
        self.assertTrue(result.err.startswith(prefix), result.err)
        self.assertTrue(result.err.endswith(b"\n"), result.err)
        self.assertEqual(result.err.count(b"\n"), 1, result.err)
        return result.err[len(prefix):-1]

    async def test_refused(self):
        """
        Nothing listens on the port: "Connection refused".
        """
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        reason = await self.assertCannotConnect("127.0.0.1:%d" % (port,))
        self.assertEqual(reason, b"Connection refused")

    async def test_noSocket(self):
        """
        No unix socket at the path.
        """
        directory = tempfile.mkdtemp(prefix="annexd-netprog-")
        self.addCleanup(shutil.rmtree, directory, True)
        reason = await self.assertCannotConnect(
            os.path.join(directory, "missing.sock"))
        self.assertEqual(reason, b"No such file or directory")

    async def test_badAddresses(self):
        """
        Addresses that are neither /PATH, HOST:PORT nor [IPV6]:PORT.
        """
        for address in ["gw.example.org", "gw.example.org:", ":5555",
                        "gw.example.org:99999", "gw.example.org:port",
                        "::1:5555", "[::1]5555", "[::1:5555", "relative/path"]:
            await self.assertCannotConnect(address)


class ModeTests(unittest.TestCase):
    """
    The address, serve and usage modes.
    """

    def test_installable(self):
        """
        The script is executable and runs with whatever python3 is on the
        PATH.
        """
        self.assertEqual(os.stat(SCRIPT).st_mode & 0o777, 0o755)
        with open(SCRIPT, "rb") as f:
            self.assertEqual(f.readline(), b"#!/usr/bin/env python3\n")

    async def test_addressesFromEnvironment(self):
        """
        C{address} prints the addresses in C{ANNEXD_P2P_ADDRESSES}, one per
        line.
        """
        result = await run(["address"], env={
            "ANNEXD_P2P_ADDRESSES":
                " gw.example.org:5555\n/run/annexd/p2p.sock\t[::1]:5555 "}
        ).ended
        self.assertEqual((result.status, result.err), (0, b""))
        self.assertEqual(result.out, b"gw.example.org:5555\n"
                         b"/run/annexd/p2p.sock\n[::1]:5555\n")

    async def test_noAddresses(self):
        """
        Without C{ANNEXD_P2P_ADDRESSES}, C{address} prints nothing.
        """
        result = await run(["address"]).ended
        self.assertEqual((result.status, result.out, result.err),
                         (0, b"", b""))
        result = await run(["address"],
                           env={"ANNEXD_P2P_ADDRESSES": ""}).ended
        self.assertEqual((result.status, result.out, result.err),
                         (0, b"", b""))

    async def test_serve(self):
        """
        C{ADDRESS SOCKET} (remotedaemon serving an address) explains that
        annexd serves its addresses itself, and exits 0.
        """
        result = await run(["127.0.0.1:5555",
                            ".git/annex/p2p/0123456789abcdef"]).ended
        self.assertEqual((result.status, result.out), (0, b""))
        self.assertEqual(result.err.count(b"\n"), 1, result.err)
        self.assertIn(b"annexd", result.err)
        self.assertIn(b"127.0.0.1:5555", result.err)

    async def test_usage(self):
        """
        Anything else: usage on standard error, exit 2.
        """
        for args in [[], ["a", "b", "c"], ["-x"], ["address", "x", "y"]]:
            result = await run(args).ended
            self.assertEqual((result.status, result.out), (2, b""), args)
            self.assertTrue(result.err.startswith(b"usage: "), result.err)

    async def test_help(self):
        """
        C{--help} prints the user documentation.
        """
        result = await run(["--help"]).ended
        self.assertEqual((result.status, result.err), (0, b""))
        self.assertIn(b"git annex p2p --link --name gw", result.out)
