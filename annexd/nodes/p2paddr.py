# -*- test-case-name: tests.test_p2paddrnode -*-
"""
A node reached at a P2P address: a git-annex repository served by C{git
annex remotedaemon} (or by another annexd's P2P front-end) at
C{p2p-annex::NETNAME:ADDRESS} or C{tor-annex::ONION.onion:PORT}.

Every session is a new connection, opened as git-annex's own client opens
one (shared/spec/transports.md, sections B and C):

  - C{p2p-annex::NETNAME:ADDRESS}: the program C{git-annex-p2p-NETNAME
    ADDRESS}, looked up on the C{PATH} of the node's environment, relays its
    stdin and stdout to the peer; annexd speaks P2P on its stdio (see
    L{annexd.nodes.process}).  The netname ends at the first C{:}, so
    ADDRESS may hold more of them.
  - C{tor-annex::ONION.onion:PORT}: a connection through tor's SOCKS port
    (C{127.0.0.1:9050} unless told otherwise, like git-annex) with
    txtorcon's client endpoint.

On that connection annexd sends C{AUTH <gateway uuid> <token>}; the node
answers C{AUTH-SUCCESS <its uuid>} (checked against the uuid annexd
expects) or C{AUTH-FAILURE}; then C{VERSION} (and C{BYPASS}) as on every
other session.  A session that cannot be opened marks the node down (see
L{SessionPool}).  Opening a session (connecting, AUTH, VERSION) may take at
most L{P2PAddressNode.openTimeout} seconds: a peer that accepts and then
says nothing does not hold a transfer slot for ever.

L{readToken} finds the token git-annex itself would present for an address.
"""

import os
import re
import shutil

import txtorcon
from twisted.internet import defer, error as ierror
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from annexd.interfaces import RepositoryUnavailable
from annexd.nodes.pool import SessionPool
from annexd.nodes.process import READ_SIZE, childEnvironment, spawnP2P
from annexd.p2p.tokens import (
    P2P_SCHEME, TOR_SCHEME, BadAddress, checkAddress)
from annexd.protocol import messages as m
from annexd.protocol.client import P2PClient
from annexd.protocol.framing import (
    ConnectionClosed, P2PConnection, ProtocolError)
from annexd.protocol.messages import MAX_PROTOCOL_VERSION, UnparseableMessage

#: Where git-annex reaches tor's SOCKS port (Utility/Tor.hs: fixed).
TOR_SOCKS = ("127.0.0.1", 9050)

#: The environment variable that overrides every creds file.
TOKEN_ENV = "GIT_ANNEX_P2P_AUTHTOKEN"

#: What an auth token may hold (git-annex's Utility/AuthToken.hs).
_TOKEN = re.compile(r"^[A-Za-z0-9]*$")


def parseAddress(address):
    """
    Split a P2P address as git-annex does.

    @return: C{("p2p", NETNAME, ADDRESS)} or C{("tor", ONION, PORT)} (the
        onion with its C{.onion}, the port an L{int}).
    @raise BadAddress: if it is neither.
    """
    checkAddress(address)
    if address.startswith(TOR_SCHEME):
        onion, _, port = address[len(TOR_SCHEME):].rpartition(":")
        if ":" in onion:
            # git-annex splits at the first ":" and reads the rest as the
            # port: no tor address of its has a ":" in the onion.
            raise BadAddress("%r: a tor address is tor-annex::ONION:PORT"
                             % (address,))
        port = int(port)
        if not 0 < port < 65536:
            raise BadAddress("%r: no such port" % (address,))
        return "tor", onion, port
    net, _, where = address[len(P2P_SCHEME):].partition(":")
    if "/" in net:
        # It names the program git-annex-p2p-NETNAME, looked up on PATH.
        raise BadAddress("%r: a network name has no '/'" % (address,))
    return "p2p", net, where


def _escape(text):
    """
    git-annex's escaping of a creds file name (Network.URI's
    C{escapeURIString isAlphaNum}): every character that is not a letter
    or a digit becomes C{%XX} for each byte of its UTF-8 encoding, in
    upper-case hex.
    """
    return "".join(
        c if c.isalnum() else "".join("%%%02X" % b for b in c.encode("utf-8"))
        for c in text)


def credsFileName(address):
    """
    The name of the creds file where a git-annex client keeps its token
    for C{address}: the escaped C{NETNAME:ADDRESS}, or the escaped onion
    (without the port: a client holds one token per onion).

    @raise BadAddress: if C{address} is not a P2P address.
    """
    kind, where, rest = parseAddress(address)
    return _escape(where if kind == "tor" else "%s:%s" % (where, rest))


def _asToken(text):
    """
    An auth token as git-annex reads it: lower-cased; L{None} if it holds
    a character a token cannot have.
    """
    if not _TOKEN.match(text):
        return None
    return text.lower()


def readToken(gitDir, address, environ=None):
    """
    The auth token git-annex would present to C{address}.

    Like git-annex's client: C{$GIT_ANNEX_P2P_AUTHTOKEN} when it is set
    (even empty: then the token is empty and no file is read); else the
    first line of C{GITDIR/annex/creds/<escaped address>} (see
    L{credsFileName}), which C{git annex p2p --link} writes.

    @param gitDir: the repository's git directory (C{.git}, or the bare
        repository).
    @param environ: the environment to look in (default: C{os.environ}).
    @return: the token, lower-cased; L{None} if there is none, or if it is
        not a token (git-annex then sends an empty one).
    @raise BadAddress: if C{address} is not a P2P address.
    """
    environ = os.environ if environ is None else environ
    name = credsFileName(address)
    value = environ.get(TOKEN_ENV)
    if value is None:
        path = os.path.join(gitDir, "annex", "creds", name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        value = data.decode("utf-8", "replace")
    value = value.split("\n", 1)[0]
    if value.endswith("\r"):
        value = value[:-1]
    return _asToken(value)


@implementer(IStreamClientEndpoint)
class _Watched:
    """
    A client endpoint that remembers the protocol it connected (for a
    SOCKS connection: to abort it if tor does not answer in time).
    """

    def __init__(self, endpoint):
        self._endpoint = endpoint
        self.protocol = None

    def connect(self, factory):
        def connected(protocol):
            self.protocol = protocol
            return protocol
        return self._endpoint.connect(factory).addCallback(connected)


class _Attempt:
    """
    One session being opened: what to abort when it takes too long or is
    cancelled.
    """

    def __init__(self):
        self.connection = None
        self.bridge = None
        self.socks = None
        self.timedOut = False
        self.cancelled = False

    def abort(self, why):
        if self.connection is not None:
            self.connection.abort(why)
        if self.bridge is not None:
            self.bridge.kill()
        if self.socks is not None and self.socks.protocol is not None:
            transport = self.socks.protocol.transport
            if transport is not None:
                transport.abortConnection()


def _socksReason(value):
    """
    A few words on why a connection through SOCKS failed.
    """
    message = getattr(value, "message", None)
    if isinstance(message, Failure):
        # txtorcon wraps the loss of the SOCKS connection itself.
        inner = message.value
        if isinstance(inner, ierror.ConnectionDone):
            return "the SOCKS server closed the connection"
        return "SOCKS connection lost: %s" % (message.getErrorMessage(),)
    return str(value) or value.__class__.__name__


class P2PAddressNode(SessionPool):
    """
    A git-annex repository reached at a P2P address.

    @ivar address: the address (C{p2p-annex::...} or C{tor-annex::...}).
    @ivar clientUUID: the uuid annexd presents in AUTH (the gateway's).
    @ivar torSocks: C{(host, port)} of tor's SOCKS port (tor addresses).
    @ivar program: for C{p2p-annex::} addresses, the transport program's
        name (C{git-annex-p2p-NETNAME}).
    """

    #: Seconds that opening one session (connecting, AUTH, VERSION) may
    #: take, L{None} for no limit.  Tor circuits take seconds to build.
    openTimeout = 120.0

    def __init__(self, reactor, address, uuid, clientUUID, token,
                 maxSessions=1, name=None, version=MAX_PROTOCOL_VERSION,
                 bypass=(), environment=None, torSocks=None, **poolOptions):
        """
        @param address: the remote's url, C{p2p-annex::NETNAME:ADDRESS} or
            C{tor-annex::ONION.onion:PORT}.
        @param uuid: the node's uuid (L{bytes}); AUTH-SUCCESS must name it.
        @param clientUUID: the uuid sent in AUTH (L{bytes}).
        @param token: the auth token (L{str}; L{None} sends an empty one,
            as git-annex does when it has none); see L{readToken}.
        @param environment: the environment of the transport programs
            (default: ours, see L{childEnvironment}); its C{PATH} is where
            C{git-annex-p2p-NETNAME} is looked up.
        @param torSocks: C{(host, port)} of tor's SOCKS port (default
            L{TOR_SOCKS}).
        @raise BadAddress: (a L{ValueError}) for an address that is not a
            P2P address.
        @raise ValueError: for a token that is not one.
        """
        kind, where, rest = parseAddress(address)
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        token = _asToken(token or "")
        if token is None:
            raise ValueError("an auth token has only letters and digits")
        SessionPool.__init__(self, uuid, self._openSession, maxSessions,
                             name or address, reactor=reactor, **poolOptions)
        self.reactor = reactor
        self.address = address
        self.clientUUID = clientUUID
        self._token = token.encode("ascii")
        self.version = version
        self.bypass = bypass
        self._environment = (childEnvironment() if environment is None
                             else dict(environment))
        self.torSocks = tuple(torSocks or TOR_SOCKS)
        if kind == "tor":
            self.onion, self.port = where, rest
            self.program = self.netAddress = None
        else:
            self.onion = self.port = None
            self.program = "git-annex-p2p-" + where
            self.netAddress = rest

    def __repr__(self):
        return "<P2PAddressNode %s at %s>" % (self.name, self.address)

    # -- opening a session --------------------------------------------------

    def _openSession(self):
        """
        Connect, authenticate and agree on a version.

        @return: a Deferred firing with the ready L{P2PClient}, or failing
            with L{RepositoryUnavailable}.  Cancelling it aborts the
            connection.
        """
        attempt = _Attempt()
        inner = defer.Deferred.fromCoroutine(self._establish(attempt))

        def cancel(_):
            attempt.cancelled = True
            attempt.abort("session opening cancelled")
        outer = defer.Deferred(cancel)

        def relay(result):
            if not outer.called:
                outer.callback(result)
            elif isinstance(result, P2PClient):
                # Ready just as it was cancelled: not wanted any more.
                result.close()
            return None
        inner.addBoth(relay)
        return outer

    async def _establish(self, attempt):
        timer = None
        if self.openTimeout is not None:
            def expire():
                attempt.timedOut = True
                attempt.abort("no answer within %s s" % (self.openTimeout,))
            timer = self._clock.callLater(self.openTimeout, expire)
        try:
            if self.onion is not None:
                connection = await self._connectTor(attempt)
            else:
                connection = self._spawn(attempt)
            client = P2PClient(connection, self.uuid)
            client.process = attempt.bridge
            try:
                await self._authenticate(connection, attempt)
                await client.handshake(self.version, self.bypass,
                                       serverSpeaksFirst=False)
            except BaseException:
                connection.abort("session not opened")
                raise
            return client
        except RepositoryUnavailable:
            if attempt.timedOut:
                raise self._timeoutError()
            raise
        finally:
            if timer is not None and timer.active():
                timer.cancel()

    def _timeoutError(self):
        return RepositoryUnavailable(
            "%s: no answer from %s within %s s" % (
                self.name, self.address, self.openTimeout))

    def _spawn(self, attempt):
        """
        Start C{git-annex-p2p-NETNAME ADDRESS}.

        @return: the L{P2PConnection} on its stdio.
        """
        executable = shutil.which(self.program,
                                  path=self._environment.get("PATH"))
        if executable is None:
            raise RepositoryUnavailable(
                "%s: cannot connect to %s: %s is not installed (not found "
                "on PATH)" % (self.name, self.address, self.program))
        try:
            bridge = spawnP2P(self.reactor, executable,
                              [self.program, self.netAddress],
                              self._environment, peer="node %s" % (self.name,))
        except OSError as e:
            raise RepositoryUnavailable("%s: cannot start %s: %s" % (
                self.name, self.program, e))
        self.processes.append(bridge)
        bridge.ended.addBoth(lambda _: self.processes.remove(bridge))
        attempt.bridge = bridge
        attempt.connection = bridge.connection
        return bridge.connection

    async def _connectTor(self, attempt):
        """
        Connect to the onion through tor's SOCKS port.

        @return: the L{P2PConnection}.
        """
        socksHost, socksPort = self.torSocks
        timeout = 30 if self.openTimeout is None else self.openTimeout
        attempt.socks = _Watched(TCP4ClientEndpoint(
            self.reactor, socksHost, socksPort, timeout=timeout))
        endpoint = txtorcon.TorClientEndpoint(
            self.onion, self.port, socks_endpoint=attempt.socks,
            reactor=self.reactor)
        try:
            connection = await connectProtocol(
                endpoint, P2PConnection("node %s" % (self.name,)))
        except Exception as e:
            if attempt.timedOut:
                raise self._timeoutError()
            if attempt.cancelled:
                raise defer.CancelledError()
            raise RepositoryUnavailable(
                "%s: cannot reach %s:%d through tor at %s:%d: %s" % (
                    self.name, self.onion, self.port, socksHost, socksPort,
                    _socksReason(e)))
        attempt.connection = connection
        if attempt.timedOut or attempt.cancelled:
            # The SOCKS reply came with the abort.
            connection.abort("session opening abandoned")
            if attempt.cancelled:
                raise defer.CancelledError()
            raise self._timeoutError()
        # Fewer, larger reads (see annexd.nodes.process.READ_SIZE).
        connection.transport.bufferSize = READ_SIZE
        return connection

    async def _authenticate(self, connection, attempt):
        """
        C{AUTH clientuuid token}; the node must answer C{AUTH-SUCCESS}
        with its uuid.
        """
        connection.sendMessage(m.Auth(self.clientUUID, self._token))
        try:
            reply = await connection.readMessage()
        except UnparseableMessage as e:
            raise RepositoryUnavailable(
                "%s: the node sent an unparseable reply to AUTH: %r" % (
                    self.name, e.line[:200]))
        except ConnectionClosed as e:
            raise self._lost(e)
        except ProtocolError as e:
            raise RepositoryUnavailable("%s: %s" % (self.name, e))
        if isinstance(reply, m.AuthFailure):
            raise RepositoryUnavailable(
                "%s: the node refused the auth token" % (self.name,))
        if isinstance(reply, m.AuthSuccess):
            if reply.uuid != self.uuid:
                raise RepositoryUnavailable(
                    "%s: the node at %s is repository %s, expected %s" % (
                        self.name, self.address,
                        reply.uuid.decode("utf-8", "replace"),
                        self.uuid.decode("utf-8", "replace")))
            return
        if isinstance(reply, m.Error):
            raise RepositoryUnavailable(
                "%s: the node answered AUTH with an error: %s" % (
                    self.name, reply.text.decode("utf-8", "replace")))
        raise RepositoryUnavailable(
            "%s: the node answered AUTH with %s" % (
                self.name, reply.WORD.decode("ascii")))

    def _lost(self, error):
        """
        The error for a connection that ended before the node answered
        AUTH: with what the transport program said, if it said anything.
        """
        reason = getattr(error, "reason", None)
        detail = getattr(getattr(reason, "value", None), "annexdDetail", None)
        if self.program is not None:
            return RepositoryUnavailable(
                "%s: cannot connect to %s: %s ended the connection before "
                "AUTH was answered (%s)" % (
                    self.name, self.address, self.program,
                    detail or "no error output"))
        return RepositoryUnavailable(
            "%s: %s:%d closed the connection before AUTH was answered" % (
                self.name, self.onion, self.port))
