# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: C{twistd annexd}.

    twistd -n annexd --repo /srv/gw.git --http tcp:9417 --wideopen
    twistd -n annexd -c /etc/annexd.conf

Every option can also be given in the C{[annexd]} section of the
configuration file (C{etc/annexd.conf.example}); the command line wins.
Listeners are Twisted endpoint strings: C{tcp:9417:interface=127.0.0.1},
C{ssl:9417:privateKey=key.pem:certKey=cert.pem},
C{unix:/run/annexd/http.sock:mode=600}, C{systemd:domain=INET:index=0}.

One process serves every front-end through one router per gateway
repository: the HTTP listeners, the unix control socket C{annexd-shell}
hands ssh sessions to (C{--control}), and the admin listener with
C{/metrics} and the status page (C{--admin}).

Signals: SIGHUP re-reads the configuration file (authorisation, lock
budget, idle timeout; repositories and listeners need a restart) and every
gateway's state (a node added with C{git annex updatecluster} is used by the
next upload), without touching transfers in flight.  SIGTERM stops
accepting, lets transfers in flight finish for up to C{--shutdown-grace}
seconds, then fails the rest cleanly and exits.
"""

import configparser
import signal

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

#: Options that take a value and may be repeated (values accumulate).
_REPEATED = ("repo", "http", "p2p", "onion")

#: Flags, by option name (also the configuration file's keys).
_FLAGS = ("wideopen", "unauth-readonly", "unauth-appendonly",
          "unauth-nolocking", "authenv", "authenv-http", "tor-launch")

#: Options with one value: name -> (type, default).
_VALUES = {"users": (str, None), "lockedfiles": (int, 100),
           "control": (str, None), "admin": (str, None),
           "shutdown-grace": (float, 30.0), "idle-timeout": (float, 60.0),
           "log-format": (str, "text"), "tor-control": (str, None),
           "tor-binary": (str, None)}

_ENDPOINT_KINDS = ("tcp", "tcp6", "ssl", "unix", "systemd")


class Options(usage.Options):
    """
    C{twistd annexd} options (names follow C{git annex p2phttp}'s).
    """

    synopsis = "[options]"
    longdesc = ("annexd is a gateway for git-annex clusters: stock git-annex "
                "clients reach every node and cluster behind it over ssh, "
                "annex+http and P2P addresses.")

    optFlags = [
        ["wideopen", None, "Anyone may do anything over HTTP (no "
                           "authentication)."],
        ["unauth-readonly", None, "Unauthenticated users may read."],
        ["unauth-appendonly", None, "Unauthenticated users may read and "
                                    "store, but not remove."],
        ["unauth-nolocking", None, "Unauthenticated users may not lock "
                                   "content."],
        ["authenv", None, "Users from GIT_ANNEX_P2PHTTP_PASSWORD_<user> "
                          "(honoured over HTTPS only)."],
        ["authenv-http", None, "Like --authenv, honoured over HTTP too."],
        ["tor-launch", None, "Start a tor of annexd's own for the onion "
                             "service (--onion)."],
    ]
    optParameters = [
        ["config", "c", None, "Configuration file (INI, section [annexd]).",
         str],
        ["users", None, None, "Users file (see `annexd passwd`).", str],
        ["lockedfiles", None, None, "Most content locks held for HTTP "
                                    "clients at once (default 100).", int],
        ["control", None, None, "Unix control socket that annexd-shell "
                                "relays ssh sessions through.", str],
        ["admin", None, None, "Endpoint for /metrics and the status page "
                              "(e.g. tcp:9418:interface=127.0.0.1).", str],
        ["shutdown-grace", None, None, "Seconds SIGTERM lets transfers in "
                                       "flight finish (default 30).", float],
        ["idle-timeout", None, None, "Seconds an idle node session stays "
                                     "open (default 60).", float],
        ["log-format", None, None, "text or json (default text).", str],
        ["tor-control", None, None, "tor's control port for the onion "
                                    "service (--onion), an endpoint: "
                                    "unix:/run/tor/control.", str],
        ["tor-binary", None, None, "The tor program --tor-launch runs "
                                   "(default: tor on PATH).", str],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["repo"] = []
        self["http"] = []
        self["p2p"] = []
        self["onion"] = []
        self.argv = []

    def parseOptions(self, options=None):
        import sys
        self.argv = list(sys.argv[1:] if options is None else options)
        usage.Options.parseOptions(self, options)

    def reread(self):
        """
        Parse the same command line again, re-reading the configuration
        file (for SIGHUP).

        @return: the fresh L{Options}.
        @raise usage.UsageError: if the file is now wrong.
        """
        fresh = self.__class__()
        fresh.parseOptions(self.argv)
        return fresh

    def opt_repo(self, path):
        """
        A gateway git-annex repository to serve (repeatable).
        """
        self["repo"].append(path)

    opt_r = opt_repo

    def opt_http(self, endpoint):
        """
        Serve the HTTP P2P API (and git) on this endpoint (repeatable),
        e.g. tcp:9417.
        """
        self["http"].append(endpoint)

    def opt_p2p(self, spec):
        """
        Serve P2P-address clients (git annex p2p --link) on this listener
        (repeatable): "ENDPOINT [TARGET] [address=ADDRESS] [mode=MODE]",
        e.g. "tcp:5555 mycluster address=gw.example.org:5555".
        """
        self["p2p"].append(spec)

    def opt_onion(self, spec):
        """
        Expose a target on this virtual port of the gateway's tor onion
        service (repeatable): "VPORT [TARGET] [mode=MODE]".
        """
        self["onion"].append(spec)

    def postOptions(self):
        if self["config"]:
            self._readConfig(self["config"])
        for name, (kind, default) in _VALUES.items():
            if self[name] is None:
                self[name] = default
        if self["unauth-readonly"] and self["unauth-appendonly"]:
            raise usage.UsageError(
                "--unauth-readonly and --unauth-appendonly exclude each other")
        if (self["http"] or self["control"] or self["p2p"]
                or self["onion"]) and not self["repo"]:
            raise usage.UsageError("--http, --control, --p2p and --onion "
                                   "need at least one --repo")
        from annexd.p2p.frontend import (
            BadListener, parseListener, parseOnionPort)
        try:
            for spec in self["p2p"]:
                parseListener(spec)
            for spec in self["onion"]:
                parseOnionPort(spec)
        except BadListener as e:
            raise usage.UsageError(str(e))
        if self["onion"] and not (self["tor-control"] or self["tor-launch"]):
            raise usage.UsageError("--onion needs --tor-control or "
                                   "--tor-launch")
        if self["tor-control"] and self["tor-launch"]:
            raise usage.UsageError("--tor-control and --tor-launch exclude "
                                   "each other")
        for endpoint in self["http"] + ([self["admin"]] if self["admin"]
                                        else []):
            kind = endpoint.split(":", 1)[0]
            if kind not in _ENDPOINT_KINDS:
                raise usage.UsageError(
                    "unsupported listener %r (tcp:, ssl:, unix:, systemd:)"
                    % (endpoint,))
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format is text or json, not %r"
                                   % (self["log-format"],))
        for name in ("shutdown-grace", "idle-timeout", "lockedfiles"):
            if self[name] < 0:
                raise usage.UsageError("--%s cannot be negative" % (name,))
        names = {}
        from annexd.router.host import repositoryName
        for path in self["repo"]:
            name = repositoryName(path)
            if name in names:
                raise usage.UsageError(
                    "%s and %s would both be published as %r" % (
                        names[name], path, name))
            names[name] = path

    def _readConfig(self, path):
        parser = configparser.ConfigParser()
        try:
            with open(path) as f:
                parser.read_file(f)
        except OSError as e:
            raise usage.UsageError("cannot read %s: %s" % (path, e))
        except configparser.Error as e:
            raise usage.UsageError("%s: %s" % (path, e))
        if not parser.has_section("annexd"):
            return
        section = parser["annexd"]
        for name in _REPEATED:
            if not self[name]:
                self[name] = [line.strip() for line in
                              section.get(name, "").splitlines()
                              if line.strip()]
        for name in _FLAGS:
            if not self[name]:
                try:
                    self[name] = section.getboolean(name, False)
                except ValueError as e:
                    raise usage.UsageError("%s: %s: %s" % (path, name, e))
        for name, (kind, default) in _VALUES.items():
            if self[name] is None and section.get(name):
                try:
                    self[name] = kind(section[name])
                except ValueError as e:
                    raise usage.UsageError("%s: %s: %s" % (path, name, e))


class GatewayService(service.MultiService):
    """
    The top-level annexd service: its listeners are child services.

    @ivar hosts: the L{annexd.router.host.GatewayHost}s served.
    @ivar monitor: the L{annexd.monitor.Monitor}, if any listener runs.
    @ivar site: the HTTP site, if any.
    @ivar control: the L{annexd.control.ControlFactory}, if any.
    """

    _log = Logger()

    def __init__(self, repo=None, hosts=(), options=None, reactor=None):
        service.MultiService.__init__(self)
        self.repo = repo
        self.hosts = list(hosts)
        self.options = options
        self.reactor = reactor
        self.monitor = None
        self.site = None
        self.control = None
        self.p2p = None
        self._previousHangup = None

    def setServiceParent(self, parent):
        if (self.options is not None and self.options["log-format"] == "json"
                and hasattr(parent, "setComponent")):
            # twistd asks the application for its log observer when it
            # starts logging: JSON lines on standard output (the journal).
            import sys

            from twisted.logger import ILogObserver, jsonFileLogObserver
            parent.setComponent(ILogObserver, jsonFileLogObserver(sys.stdout))
        return service.MultiService.setServiceParent(self, parent)

    def startService(self):
        self._log.info("annexd starting (gateway repositories: {repos})",
                       repos=", ".join(h.state.path for h in self.hosts)
                       or self.repo)
        service.MultiService.startService(self)
        if self.hosts and hasattr(signal, "SIGHUP"):
            try:
                self._previousHangup = signal.signal(signal.SIGHUP,
                                                     self._hangup)
            except ValueError:
                # Not the main thread (embedded): no signal handling.
                self._previousHangup = None

    def _hangup(self, signum, frame):
        self.reactor.callFromThread(self.reload)

    def reload(self):
        """
        Re-read the configuration and every gateway's state (SIGHUP).
        Transfers in flight go on with what they started with.
        """
        if self.options is not None and self.options["config"]:
            try:
                fresh = self.options.reread()
            except usage.UsageError as e:
                self._log.error("not reloading the configuration: {error}",
                                error=str(e))
            else:
                self._apply(fresh)
        for host in self.hosts:
            try:
                host.reload()
            except Exception:
                self._log.failure("reloading the state of {path} failed",
                                  path=host.state.path)
        self._log.info("reloaded the state of {count} gateway "
                       "repositories", count=len(self.hosts))

    def _apply(self, fresh):
        old = self.options
        for name in ("repo", "http", "control", "admin", "log-format", "p2p",
                     "onion", "tor-control", "tor-launch", "tor-binary"):
            if fresh[name] != old[name]:
                self._log.warn("{name} changed in the configuration: that "
                               "takes a restart", name=name)
        if self.site is not None:
            self.site.resource.auth = authPolicy(fresh)
        for host in self.hosts:
            host.locks.maxLocks = fresh["lockedfiles"]
            host.router.configurePools(idleTimeout=fresh["idle-timeout"])
        for name in ("users", "lockedfiles", "shutdown-grace",
                     "idle-timeout") + _FLAGS:
            old[name] = fresh[name]
        old.argv = fresh.argv

    def stopService(self):
        self._log.info("annexd stopping")
        if self._previousHangup is not None:
            signal.signal(signal.SIGHUP, self._previousHangup)
            self._previousHangup = None
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        d.addCallback(lambda _: defer.ensureDeferred(self._drain()))
        d.addCallback(lambda _: defer.DeferredList(
            [host.close() for host in self.hosts]))
        return d

    async def _drain(self):
        """
        Let the transfers in flight finish, for up to the grace period;
        then fail the rest.
        """
        monitor = self.monitor

        def inFlight():
            # A client's transfers (the nodes' ones end with them).
            return [t for t in monitor.transfers if t.frontend is not None]
        if monitor is not None and inFlight():
            grace = self.options["shutdown-grace"] if self.options else 30.0
            self._log.info("waiting up to {grace} s for {count} transfers "
                           "in flight", grace=grace, count=len(inFlight()))
            try:
                await monitor.drained().addTimeout(grace, self.reactor)
            except defer.TimeoutError:
                left = inFlight()
                self._log.warn("failing {count} transfers still in flight",
                               count=len(left))
                for transfer in left:
                    transfer.abort("annexd is shutting down")
        if self.control is not None:
            await self.control.close()
        if self.p2p is not None:
            await self.p2p.close()


def authPolicy(options):
    """
    The HTTP authorisation the options ask for.
    """
    from twisted.internet import threads

    from annexd.http.auth import Permission, buildPolicy
    unauth = None
    if options["unauth-readonly"]:
        unauth = Permission.READONLY
    elif options["unauth-appendonly"]:
        unauth = Permission.APPENDONLY
    return buildPolicy(usersFile=options["users"],
                       authenv=options["authenv"],
                       authenvHttp=options["authenv-http"],
                       unauth=unauth,
                       unauthNoLocking=options["unauth-nolocking"],
                       wideopen=options["wideopen"],
                       deferToThread=threads.deferToThread)


def makeService(options, reactor=None):
    """
    Build the annexd service from parsed L{Options}.
    """
    if reactor is None:
        from twisted.internet import reactor
    repos = options["repo"]
    top = GatewayService(repos[0] if repos else None, options=options,
                         reactor=reactor)
    if not (options["http"] or options["control"] or options["admin"]
            or options["p2p"] or options["onion"]):
        return top
    from annexd.monitor import Monitor
    from annexd.router.host import GatewayHost
    monitor = top.monitor = Monitor(reactor)
    top.hosts = [GatewayHost(reactor, path, maxLocks=options["lockedfiles"],
                             monitor=monitor,
                             poolOptions={"idleTimeout":
                                          options["idle-timeout"]})
                 for path in repos]
    if options["http"]:
        from annexd.http.site import makeSite
        top.site = makeSite(reactor, top.hosts, authPolicy(options))
        for endpoint in options["http"]:
            strports.service(endpoint, top.site,
                             reactor=reactor).setServiceParent(top)
    if options["control"]:
        from annexd.control import ControlFactory
        top.control = ControlFactory(reactor, top.hosts, monitor)
        controlEndpoint = "unix:%s:mode=660:lockfile=1" % (
            options["control"].replace("\\", "\\\\").replace(":", "\\:"),)
        strports.service(controlEndpoint, top.control,
                         reactor=reactor).setServiceParent(top)
    if options["p2p"] or options["onion"]:
        _addP2P(top, options, reactor)
    if options["admin"]:
        from annexd.http.status import makeAdminSite
        strports.service(options["admin"], makeAdminSite(monitor, top.hosts),
                         reactor=reactor).setServiceParent(top)
    return top


def _addP2P(top, options, reactor):
    """
    The P2P-address listeners and the onion service.
    """
    from annexd.p2p.frontend import BadListener, P2PFrontends, P2PListener
    frontends = top.p2p = P2PFrontends(reactor)
    try:
        for spec in options["p2p"]:
            listener = P2PListener(reactor, top.hosts, spec, frontends,
                                   top.monitor)
            frontends.listeners.append(listener)
            listener.setServiceParent(top)
        if options["onion"]:
            from annexd.p2p.onion import OnionFrontend
            for onion in OnionFrontend.forOptions(
                    reactor, top.hosts, options["onion"], frontends,
                    top.monitor, control=options["tor-control"],
                    launch=options["tor-launch"],
                    torBinary=options["tor-binary"]):
                frontends.onions.append(onion)
                onion.setServiceParent(top)
    except BadListener as e:
        raise usage.UsageError(str(e))
