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
"""

import configparser

from twisted.application import service, strports
from twisted.logger import Logger
from twisted.python import usage

#: Options that take a value and may be repeated (values accumulate).
_REPEATED = ("repo", "http")

#: Flags, by option name (also the configuration file's keys).
_FLAGS = ("wideopen", "unauth-readonly", "unauth-appendonly",
          "unauth-nolocking", "authenv", "authenv-http")


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
    ]
    optParameters = [
        ["config", "c", None, "Configuration file (INI, section [annexd]).",
         str],
        ["users", None, None, "Users file (see `annexd passwd`).", str],
        ["lockedfiles", None, None, "Most content locks held for HTTP "
                                    "clients at once (default 100).", int],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["repo"] = []
        self["http"] = []

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

    def postOptions(self):
        if self["config"]:
            self._readConfig(self["config"])
        if self["unauth-readonly"] and self["unauth-appendonly"]:
            raise usage.UsageError(
                "--unauth-readonly and --unauth-appendonly exclude each other")
        if self["http"] and not self["repo"]:
            raise usage.UsageError("--http needs at least one --repo")
        for endpoint in self["http"]:
            kind = endpoint.split(":", 1)[0]
            if kind not in ("tcp", "tcp6", "ssl", "unix", "systemd"):
                raise usage.UsageError(
                    "unsupported listener %r (tcp:, ssl:, unix:, systemd:)"
                    % (endpoint,))

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
        for name in ("users", "lockedfiles"):
            if self[name] is None and section.get(name):
                self[name] = (int(section[name]) if name == "lockedfiles"
                              else section[name])


class GatewayService(service.MultiService):
    """
    The top-level annexd service.

    @ivar hosts: the L{annexd.router.host.GatewayHost}s served.
    """

    _log = Logger()

    def __init__(self, repo=None, hosts=()):
        service.MultiService.__init__(self)
        self.repo = repo
        self.hosts = list(hosts)

    def startService(self):
        self._log.info("annexd starting (gateway repositories: {repos})",
                       repos=", ".join(h.state.path for h in self.hosts)
                       or self.repo)
        service.MultiService.startService(self)

    def stopService(self):
        self._log.info("annexd stopping")
        from twisted.internet import defer
        d = defer.maybeDeferred(service.MultiService.stopService, self)
        d.addCallback(lambda _: defer.DeferredList(
            [host.close() for host in self.hosts]))
        return d


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
    top = GatewayService(repos[0] if repos else None)
    if not options["http"]:
        return top
    from annexd.http.site import makeSite
    from annexd.router.host import GatewayHost
    hosts = [GatewayHost(reactor, path,
                         maxLocks=options["lockedfiles"] or 100)
             for path in repos]
    top.hosts = hosts
    site = makeSite(reactor, hosts, authPolicy(options))
    for endpoint in options["http"]:
        strports.service(endpoint, site, reactor=reactor).setServiceParent(top)
    return top
