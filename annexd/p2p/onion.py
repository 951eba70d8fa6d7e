# -*- test-case-name: tests.test_p2ponion -*-
"""
Exposing targets on a gateway's tor onion service.

Each gateway repository served with C{--onion} gets one onion service (its
key kept in C{.git/annex/annexd/tor/}, so the address survives restarts),
with one virtual port per exposed target.  Behind each virtual port annexd
listens on a loopback TCP port of its own choosing, which any tor (one
annexd launched, or the system's, reached through its control port) can
reach; tokens are required there as on every P2P address.  Clients link
with C{tor-annex::ONION.onion:VPORT:TOKEN} (see C{annexd p2p
--gen-addresses}); every tor client is one source to the AUTH throttle.
"""

import os

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from annexd.p2p.frontend import BadListener, parseOnionPort, resolveTarget
from annexd.p2p.tokens import TOR_SCHEME


def onionStateDir(host):
    """
    Where a gateway's onion key and name are kept.
    """
    return os.path.join(host.state.gitDir, "annex", "annexd", "tor")


class OnionFrontend(service.Service):
    """
    One gateway's onion service and the listeners behind its virtual ports.

    @ivar ready: a Deferred firing with the onion's hostname once it is up
        (or failing with why it is not).
    """

    _log = Logger()

    def __init__(self, reactor, host, ports, frontends, monitor=None,
                 control=None, launch=False, torBinary=None):
        """
        @param ports: C{(virtual port, target uuid, target name,
            ServerMode)} tuples.
        """
        self.reactor = reactor
        self.host = host
        self.ports = ports
        self.frontends = frontends
        self.monitor = monitor
        self.control = control
        self.launch = launch
        self.torBinary = torBinary
        self.factories = {}
        self.listening = []
        self.onion = None
        self.ready = defer.Deferred()
        self._starting = None

    @classmethod
    def forOptions(cls, reactor, hosts, specs, frontends, monitor=None,
                   control=None, launch=False, torBinary=None):
        """
        One L{OnionFrontend} per gateway named by the C{--onion} specs.

        @raise BadListener: if a spec names nothing served, or a virtual
            port twice.
        """
        byHost = {}
        for spec in specs:
            vport, target, mode = parseOnionPort(spec)
            host, uuid, name = resolveTarget(hosts, target)
            ports = byHost.setdefault(host.name, (host, []))[1]
            if any(p[0] == vport for p in ports):
                raise BadListener("onion port %d given twice" % (vport,))
            ports.append((vport, uuid, name, mode))
        return [cls(reactor, host, ports, frontends, monitor, control,
                    launch, torBinary)
                for host, ports in byHost.values()]

    def startService(self):
        service.Service.startService(self)
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(self._failed)

    async def _start(self):
        from annexd.p2p.tor import OnionService, readHostname
        shared = self.frontends.forHost(self.host)
        stateDir = onionStateDir(self.host)
        known = readHostname(stateDir) or "unknown.onion"
        targets = []
        for vport, uuid, name, mode in self.ports:
            factory = self.frontends.factory(
                self.host, uuid, "%s%s:%d" % (TOR_SCHEME, known, vport), mode,
                self.monitor, source="tor:%s" % (self.host.name,))
            self.factories[vport] = factory
            endpoint = endpoints.TCP4ServerEndpoint(self.reactor, 0,
                                                    interface="127.0.0.1")
            port = await endpoint.listen(factory)
            self.listening.append(port)
            targets.append((vport, "127.0.0.1:%d" % (port.getHost().port,)))
        self.onion = OnionService(self.reactor, stateDir, targets,
                                  control=self.control, launch=self.launch,
                                  torBinary=self.torBinary,
                                  name=self.host.name)
        self.onion.startService()
        hostname = await self.onion.whenReady()
        for vport, uuid, name, mode in self.ports:
            address = "%s%s:%d" % (TOR_SCHEME, hostname, vport)
            self.factories[vport].address = address
            shared.publish(address, uuid, name)
            self._log.info("tor address {address} serves {target}",
                           address=address, target=name)
        self.ready.callback(hostname)

    def _failed(self, failure):
        from annexd.p2p.tor import OnionServiceError
        if failure.check(defer.CancelledError):
            return
        if not failure.check(OnionServiceError):
            # (The onion service logs its own failures.)
            self._log.error(
                "the onion service of {name} is not available: {error}",
                name=self.host.name, error=failure.getErrorMessage())
        if not self.ready.called:
            self.ready.errback(failure)
            self.ready.addErrback(lambda f: None)

    def stopService(self):
        service.Service.stopService(self)
        waits = []
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        if self.onion is not None and self.onion.running:
            waits.append(defer.maybeDeferred(self.onion.stopService))
        for port in self.listening:
            waits.append(defer.maybeDeferred(port.stopListening))
        self.listening = []
        return defer.DeferredList(waits)

    def close(self):
        """
        End the connections of every virtual port.
        """
        return defer.DeferredList([f.close()
                                   for f in self.factories.values()])
