# -*- test-case-name: tests.test_p2pfrontend -*-
"""
The P2P-address front-end: git-annex's P2P protocol with C{AUTH}, on unix
sockets, TCP and tor onion services.

A P2P connection names no target, so each exposed target -- the gateway,
a cluster, a proxied node -- gets its own address: a listener of its own,
or a virtual port of the gateway's onion.  A client links once::

    echo 'p2p-annex::annexd:gw.example.org:5555:TOKEN' | \\
        git annex p2p --link --name gw-cluster

and from then on uses the remote like any other: C{git annex copy --to},
C{get}, C{drop}, C{git pull}/C{git push} (C{CONNECT}), and a
C{remotedaemon}'s C{NOTIFYCHANGE}.

A listener is given as C{ENDPOINT [TARGET] [address=ADDRESS]
[mode=readonly|appendonly]}:

  - ENDPOINT: a Twisted endpoint string (C{unix:/run/annexd/gw.sock},
    C{tcp:5555:interface=0.0.0.0}, C{systemd:...});
  - TARGET: C{gateway} (the default), a cluster's name, a proxied remote's
    name, or a uuid; C{REPO/TARGET} when the daemon serves several
    gateway repositories (REPO as published: the directory's name);
  - ADDRESS: what clients are told, C{HOST:PORT} or a socket path for
    annexd's own transport program (C{p2p-annex::annexd:ADDRESS}, see
    contrib/git-annex-p2p-annexd), or a whole C{p2p-annex::NET:ADDR};
    default the socket's path, or C{INTERFACE:PORT} (the host's name for a
    wildcard interface);
  - mode: what token holders may do (default everything).

An onion virtual port is given as C{VPORT [TARGET] [mode=...]}.

Before C{AUTH} only C{AUTH} is accepted; a token is checked against the
gateway's C{p2pauth} (L{annexd.p2p.tokens}), re-read when it changes; a
wrong one gets C{AUTH-FAILURE} and the connection is closed; repeated
failures from one source are slowed down (L{annexd.p2p.throttle}); a
connection that does not authenticate within C{authTimeout} is dropped.
The addresses in service are written to C{p2paddrs} (git-annex's list) and
to C{.git/annex/annexd/p2ptargets} (which target each one serves), which
C{annexd p2p} reads to hand out addresses with tokens.
"""

import os
import shlex
import socket

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger

from annexd.p2p.git import RefWatcher, relayGit
from annexd.p2p.throttle import AuthThrottle, TooManyAttempts
from annexd.p2p.tokens import (
    NETNAME, P2P_SCHEME, TOR_SCHEME, BadAddress, TokenStore, checkAddress)
from annexd.protocol import messages as m
from annexd.protocol.framing import P2PConnection
from annexd.protocol.server import P2PServer, ServerMode
from annexd.router.host import SessionTarget
from annexd.router.router import UnknownTarget

#: Seconds a connection has to authenticate.
AUTH_TIMEOUT = 60.0

_MODES = {"readonly": ServerMode.READ_ONLY,
          "appendonly": ServerMode.APPEND_ONLY,
          "readwrite": ServerMode.READ_WRITE,
          "full": ServerMode.READ_WRITE}


class BadListener(ValueError):
    """
    A listener or onion port specification is wrong; the message says how.
    """


def _splitSpec(text):
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise BadListener("%r: %s" % (text, e))
    if not words:
        raise BadListener("empty P2P listener")
    head, rest = words[0], words[1:]
    target, options = None, {}
    for word in rest:
        name, eq, value = word.partition("=")
        if eq and name in ("address", "mode"):
            if name in options:
                raise BadListener("%r: %s given twice" % (text, name))
            options[name] = value
        elif target is None:
            target = word
        else:
            raise BadListener("%r: unexpected %r" % (text, word))
    mode = options.get("mode", "readwrite")
    if mode not in _MODES:
        raise BadListener("%r: mode is readonly, appendonly or readwrite"
                          % (text,))
    return head, target, options.get("address"), _MODES[mode]


def parseListener(text):
    """
    Parse C{ENDPOINT [TARGET] [address=ADDRESS] [mode=MODE]}.

    @return: C{(endpoint, target or None, address or None, ServerMode)}.
    @raise BadListener: if it is wrong.
    """
    endpoint, target, address, mode = _splitSpec(text)
    kind = endpoint.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "unix", "systemd", "ssl"):
        raise BadListener("%r: unsupported P2P listener (tcp:, tcp6:, "
                          "unix:, systemd:)" % (endpoint,))
    if address is not None:
        try:
            fullAddress(address)
        except BadAddress as e:
            raise BadListener(str(e))
    return endpoint, target, address, mode


def parseOnionPort(text):
    """
    Parse C{VPORT [TARGET] [mode=MODE]}.

    @return: C{(virtual port, target or None, ServerMode)}.
    @raise BadListener: if it is wrong.
    """
    port, target, address, mode = _splitSpec(text)
    if address is not None:
        raise BadListener("%r: an onion port's address is the onion's"
                          % (text,))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadListener("%r: an onion port is a number 1-65535" % (text,))
    return int(port), target, mode


def fullAddress(address):
    """
    The whole P2P address for a listener's C{address}: C{HOST:PORT} and
    paths are annexd's own transport's.
    """
    if address.startswith((P2P_SCHEME, TOR_SCHEME)):
        return checkAddress(address)
    return checkAddress("%s%s:%s" % (P2P_SCHEME, NETNAME, address))


def _unescape(text):
    out, escaped = [], False
    for c in text:
        if escaped:
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            out.append(c)
    return "".join(out)


def defaultAddress(endpoint, listening):
    """
    What clients are told by default for a listener: a unix socket's path,
    or C{HOST:PORT} of a TCP listener.

    @param listening: the L{IListeningPort}'s host address.
    @raise BadListener: when there is no sensible default.
    """
    if isinstance(listening, UNIXAddress):
        name = listening.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        return os.path.abspath(name)
    if isinstance(listening, (IPv4Address, IPv6Address)):
        where = listening.host
        if where in ("0.0.0.0", "::", ""):
            where = socket.getfqdn()
        if ":" in where:
            where = "[%s]" % (where,)
        return "%s:%d" % (where, listening.port)
    raise BadListener("%r: give the address clients use (address=...)"
                      % (endpoint,))


def resolveTarget(hosts, target):
    """
    The host and uuid a listener's C{target} names.

    @return: C{(host, uuid, name)}.
    @raise BadListener: if nothing is called that.
    """
    hosts = list(hosts)
    repo, name = None, target
    if target and "/" in target:
        repo, name = target.split("/", 1)
    if repo is not None:
        hosts = [h for h in hosts if h.name == repo]
        if not hosts:
            raise BadListener("%r: no gateway repository is published as %r"
                              % (target, repo))
    elif len(hosts) > 1 and name not in (None, "gateway"):
        found = [h for h in hosts if _lookUp(h, name) is not None]
        if len(found) != 1:
            raise BadListener("%r: say which repository (REPO/%s)"
                              % (target, target))
        hosts = found
    elif len(hosts) > 1:
        raise BadListener("several repositories are served: say which "
                          "gateway (REPO/gateway)")
    if not hosts:
        raise BadListener("no gateway repository to serve")
    host = hosts[0]
    if name in (None, "gateway", host.name):
        return host, host.uuid, host.name
    uuid = _lookUp(host, name)
    if uuid is None:
        raise BadListener("%r is neither a cluster nor a remote the gateway "
                          "%s proxies" % (name, host.name))
    return host, uuid, name


def _lookUp(host, name):
    state = host.state
    for info in state.clusters.values():
        if info.name == name:
            return info.uuid
    remote = state.remote(name)
    if remote is not None and remote.uuid and host.serves(remote.uuid):
        return remote.uuid
    uuid = name.encode("ascii", "replace")
    if host.serves(uuid):
        return uuid
    return None


class AddressBook:
    """
    Which target each P2P address of one gateway serves:
    C{.git/annex/annexd/p2ptargets}, lines C{ADDRESS UUID NAME}.
    """

    def __init__(self, gitDir):
        self.path = self.pathOf(gitDir)
        self._entries = {}

    @staticmethod
    def pathOf(gitDir):
        return os.path.join(gitDir, "annex", "annexd", "p2ptargets")

    def add(self, address, uuid, name):
        self._entries[address] = (uuid, name)
        self._write()

    def _write(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            for address, (uuid, name) in self._entries.items():
                f.write("%s %s %s\n" % (address, uuid.decode("ascii",
                                                              "replace"),
                                        name))
        os.replace(tmp, self.path)

    @staticmethod
    def read(gitDir):
        """
        @return: a list of C{(address, uuid, name)}.
        """
        entries = []
        try:
            with open(AddressBook.pathOf(gitDir)) as f:
                for line in f:
                    words = line.split(" ", 2)
                    if len(words) == 3:
                        entries.append((words[0], words[1].encode(),
                                        words[2].rstrip("\n")))
        except FileNotFoundError:
            pass
        return entries


class P2PAddressConnection(P2PConnection):
    """
    One client connection to a P2P-address listener.
    """

    factory = None

    def connectionMade(self):
        P2PConnection.connectionMade(self)
        self.factory.serve(self)


class P2PAddressFactory(protocol.ServerFactory):
    """
    Serves one P2P address: one target of one gateway.

    @ivar address: the P2P address clients use (tokens are checked for
        it); may change once an onion's name is known.
    @ivar connections: the open connections.
    """

    _log = Logger()

    def __init__(self, reactor, host, targetUUID, address, tokens, throttle,
                 mode=ServerMode.READ_WRITE, monitor=None, refWatcher=None,
                 source=None, authTimeout=AUTH_TIMEOUT, gitEnv=None):
        """
        @param tokens: the gateway's L{TokenStore}.
        @param throttle: the L{AuthThrottle} failed AUTHs are counted in.
        @param source: the throttle's name for every client of this
            listener (unix sockets, onions: they all look alike); L{None}
            to use the peer's IP address.
        """
        self.reactor = reactor
        self.host = host
        self.targetUUID = targetUUID
        self.address = address
        self.tokens = tokens
        self.throttle = throttle
        self.mode = mode
        self.monitor = monitor
        self.refWatcher = refWatcher
        self.source = source
        self.authTimeout = authTimeout
        self.gitEnv = gitEnv
        self.connections = set()

    def buildProtocol(self, addr):
        connection = P2PAddressConnection(peer="P2P client %s" % (
            _describe(addr, self.address),))
        connection.factory = self
        connection.clientAddress = addr
        return connection

    def _sourceOf(self, connection):
        if self.source is not None:
            return self.source
        return getattr(connection.clientAddress, "host", None) or self.address

    def serve(self, connection):
        """
        Serve a new connection until it ends.
        """
        self.connections.add(connection)
        try:
            target = SessionTarget(self.host, self.targetUUID, "p2p")
        except UnknownTarget as e:
            connection.sendMessage(m.Error.of(str(e).encode("utf-8")))
            connection.close()
            self.connections.discard(connection)
            return
        source = self._sourceOf(connection)
        timer = self.reactor.callLater(
            self.authTimeout, connection.abort, "no AUTH in time")
        state = {"authenticated": False, "admission": None}

        async def checkAuth(uuid, token):
            admission = state["admission"] = self.throttle.admit(source)
            try:
                await admission
            except TooManyAttempts:
                allowed = False
            except defer.CancelledError:
                return False
            else:
                allowed = self.tokens.allows(token, self.address)
            if allowed:
                self.throttle.succeeded(source)
                state["authenticated"] = True
                if timer.active():
                    timer.cancel()
                self._opened(connection, uuid)
            else:
                self.throttle.failed(source)
                self._log.info("{peer}: AUTH refused", peer=connection.peer)
            return allowed

        def connect(service, conn):
            return defer.ensureDeferred(self._connectGit(service, conn))

        server = P2PServer(
            connection, target, self.mode, checkAuth=checkAuth,
            connect=connect,
            notifyChange=(self.refWatcher.wait if self.refWatcher is not None
                          else None))

        def over(_):
            if timer.active():
                timer.cancel()
            admission = state["admission"]
            if admission is not None and not admission.called:
                admission.cancel()
            self.connections.discard(connection)
            if state["authenticated"]:
                self._closed(connection)

        closed = connection.whenClosed()
        d = server.serve()
        d.addCallback(lambda _: closed)
        d.addBoth(over)

    async def _connectGit(self, service, connection):
        code = await relayGit(self.reactor, connection, service,
                              self.host.state.path, env=self.gitEnv)
        if service == b"git-receive-pack" and code == 0:
            # A push may have brought a new git-annex branch.
            try:
                self.host.reload()
            except Exception:
                self._log.failure("reloading {name} after a push failed",
                                  name=self.host.name)

    def _opened(self, connection, uuid):
        self._log.info("{peer} authenticated as {uuid}",
                       peer=connection.peer,
                       uuid=uuid.decode("ascii", "replace"))
        if self.monitor is not None:
            self.monitor.sessionOpened("p2p")

    def _closed(self, connection):
        if self.monitor is not None:
            self.monitor.sessionClosed("p2p")

    def close(self):
        """
        End every connection.
        """
        waits = []
        for connection in list(self.connections):
            waits.append(connection.whenClosed())
            connection.abort("annexd is shutting down")
        return defer.DeferredList(waits)


def _describe(addr, address):
    host = getattr(addr, "host", None)
    if host:
        return "%s:%s" % (host, getattr(addr, "port", ""))
    return "on %s" % (address,)


class P2PListener(service.Service):
    """
    One P2P-address listener: an endpoint serving one target.
    """

    _log = Logger()

    def __init__(self, reactor, hosts, spec, frontends, monitor=None):
        """
        @param spec: C{ENDPOINT [TARGET] [address=...] [mode=...]}.
        @param frontends: the L{P2PFrontends} the gateways' token stores,
            address books, ref watchers and the throttle come from.
        @raise BadListener: if the spec is wrong or names nothing served.
        """
        self.reactor = reactor
        self.endpoint, target, self.address, self.mode = parseListener(spec)
        self.host, self.targetUUID, self.targetName = resolveTarget(hosts,
                                                                    target)
        self.monitor = monitor
        self.frontends = frontends
        self.factory = None
        self.port = None

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        self._listen()

    def startService(self):
        service.Service.startService(self)
        if self.port is None and self.factory is None:
            self._listen()

    def _listen(self):
        kind = self.endpoint.split(":", 1)[0]
        self.factory = self.frontends.factory(
            self.host, self.targetUUID,
            fullAddress(self.address) if self.address else None, self.mode,
            self.monitor,
            source=None if kind in ("tcp", "tcp6", "ssl") else self.endpoint)
        description = self.endpoint
        if kind == "unix" and "lockfile=" not in description:
            # A socket left behind by a killed daemon is taken over.
            description += ":lockfile=1"
        endpoint = endpoints.serverFromString(self.reactor, description)
        d = endpoint.listen(self.factory)
        d.addCallback(self._listening, self.frontends.forHost(self.host))
        failed = []
        d.addErrback(lambda f: failed.append(f) or f)
        if failed:
            # As for the HTTP listeners: a listener that cannot listen at
            # start-up stops the daemon with the reason.
            d.addErrback(lambda f: None)
            failed[0].raiseException()
        d.addErrback(self._failed)
        self._listeningDeferred = d

    def _listening(self, port, shared):
        self.port = port
        if self.factory.address is None:
            self.factory.address = fullAddress(
                defaultAddress(self.endpoint, port.getHost()))
        address = self.factory.address
        shared.publish(address, self.targetUUID, self.targetName)
        self._log.info("P2P address {address} serves {target} "
                       "(listening on {endpoint})", address=address,
                       target=self.targetName, endpoint=self.endpoint)
        return port

    def _failed(self, failure):
        self._log.error("cannot listen on {endpoint} for P2P clients: "
                        "{error}", endpoint=self.endpoint,
                        error=failure.getErrorMessage())

    def whenListening(self):
        """
        @return: a Deferred firing with the listening port.
        """
        d = defer.Deferred()

        def relay(result):
            d.callback(result)
            return result
        self._listeningDeferred.addBoth(relay)
        return d

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


class _Shared:
    """
    What the P2P listeners of one gateway share.
    """

    def __init__(self, reactor, host, gitEnv):
        gitDir = host.state.gitDir
        self.tokens = TokenStore(gitDir)
        self.book = AddressBook(gitDir)
        self.refWatcher = RefWatcher(reactor, gitDir, env=gitEnv)

    def publish(self, address, uuid, name):
        # git-annex's list first: the address book, which `annexd p2p`
        # reads, says the address is in service once everything is.
        self.tokens.addAddress(address)
        self.book.add(address, uuid, name)


class P2PFrontends:
    """
    The P2P-address front-end of a daemon: per gateway, its token store,
    address book and ref watcher; one throttle for every listener.
    """

    def __init__(self, reactor, throttle=None, gitEnv=None):
        self.reactor = reactor
        self.throttle = throttle or AuthThrottle(reactor)
        self.gitEnv = gitEnv
        self._shared = {}
        self.listeners = []
        self.onions = []

    def forHost(self, host):
        shared = self._shared.get(host.name)
        if shared is None:
            shared = self._shared[host.name] = _Shared(self.reactor, host,
                                                       self.gitEnv)
        return shared

    def factory(self, host, targetUUID, address, mode, monitor, source):
        """
        A L{P2PAddressFactory} for one address of C{host}, sharing the
        gateway's token store and ref watcher and the common throttle.
        """
        shared = self.forHost(host)
        return P2PAddressFactory(
            self.reactor, host, targetUUID, address, shared.tokens,
            self.throttle, mode, monitor, shared.refWatcher, source=source,
            gitEnv=self.gitEnv)

    def factories(self):
        found = [listener.factory for listener in self.listeners
                 if listener.factory is not None]
        for onion in self.onions:
            found.extend(onion.factories.values())
        return found

    def close(self):
        """
        End every P2P connection and stop watching refs.
        """
        for shared in self._shared.values():
            shared.refWatcher.close()
        return defer.DeferredList([f.close() for f in self.factories()])
