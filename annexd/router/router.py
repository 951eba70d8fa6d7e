# -*- test-case-name: tests.test_router -*-
"""
Target resolution: which repository a session's target uuid names.

A git-annex client names its target with C{p2pstdio ... --uuid T}.  Like
git-annex-shell (shared/spec/p2p-protocol.md section 5.1), the L{Router}
answers with:

  - the gateway's own repository when T is the gateway's uuid (or absent);
  - a L{Cluster} when T is a cluster this repository is a gateway of;
  - the node itself when T is a remote the gateway proxies (listed under
    the gateway in proxy.log, and allowed by the git config);
  - L{UnknownTarget}, with git-annex-shell's wording, otherwise.

Every answer is an L{IRepository}; front-ends meet nothing else.
"""

import os
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.annex.location import LocationLog
from annexd.annex.state import LOCAL_REMOTE_COST
from annexd.interfaces import IRepository, RepositoryUnavailable
from annexd.nodes.local import LocalNode
from annexd.nodes.ssh import SshNode, parseSshUrl
from annexd.router.cluster import Cluster, ClusterNode, gatewayBypass
from annexd.router.paths import PathMeter
from annexd.router.policy import PreferredContentPolicy


def _splitCredentials(url):
    """
    C{annex+http://USER:PASSWORD@HOST/...} -> the url without them, and
    C{(USER, PASSWORD)} (or L{None} when the url names none).
    """
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = "[%s]" % (host,)
    if parts.port is not None:
        host = "%s:%d" % (host, parts.port)
    return (urlunsplit(parts._replace(netloc=host)),
            (unquote(parts.username), unquote(parts.password or "")))


class UnknownTarget(Exception):
    """
    The target uuid is not served here; the message is git-annex-shell's.
    """


def _text(uuid):
    return uuid.decode("utf-8", "replace")


@implementer(IRepository)
class UnreachableNode:
    """
    A node annexd has no connector for: every request fails with the reason.
    """

    def __init__(self, uuid, reason):
        self.uuid = uuid
        self.reason = reason
        self.bypass = ()

    def _fail(self, *args, **kwargs):
        return defer.fail(RepositoryUnavailable(self.reason))

    checkPresent = lockContent = remove = getTimestamp = get = put = _fail

    def close(self):
        return defer.succeed(None)


class Router:
    """
    @ivar state: the L{annexd.annex.state.GatewayState}.
    """

    _log = Logger()

    def __init__(self, reactor, state, environment=None, policy=None,
                 gitAnnex=None, share=False, poolOptions=None, wrapNode=None):
        """
        @param share: keep the node connectors (and their session pools)
            and clusters, and hand the same ones to every caller, as a
            long-running front-end serving many requests wants; callers
            must then not close what L{resolve} gives them (L{close} does).
            Without it every L{resolve} builds fresh connectors (one ssh
            session's lifetime).
        @param poolOptions: further keywords for every node connector's
            L{annexd.nodes.pool.SessionPool} (e.g. C{idleTimeout}).
        @param wrapNode: a callable C{(connector, name) -> IRepository}
            applied to every node connector (metrics).
        """
        self.reactor = reactor
        self.state = state
        self.environment = environment
        self.gitAnnex = gitAnnex
        self.locations = LocationLog(state.gitDir)
        self.policy = policy or PreferredContentPolicy(state, self.locations)
        self._shared = {} if share else None
        self.poolOptions = poolOptions or {}
        self._wrapNode = wrapNode
        #: (node uuid, gateway uuid or None) -> the PathMeter of that path,
        #: shared by every cluster built here and kept across reloads.
        self.paths = {}

    def reloadState(self):
        """
        Re-read the gateway's state after it changed (see
        L{annexd.annex.watch.StateWatcher}): sessions started from now on
        see the new configuration and logs; repository sizes catch up with
        the branch by reading only what changed.
        """
        from annexd.annex.state import GatewayState
        self.state = GatewayState.load(self.state.path)
        self.policy.state = self.state
        if self._shared:
            # Clusters are rebuilt from the new state on their next use;
            # node connectors (and their sessions) are kept.
            for key in [k for k in self._shared if k[0] == "cluster"]:
                del self._shared[key]
        sizes = getattr(self.policy, "sizes", None)
        if sizes is not None and getattr(sizes, "loaded", False):
            sizes.sizes.reload()

    def record(self, key, uuids, present):
        """
        Record in the gateway's location log that each of C{uuids} gained
        (C{present}) or lost the content of C{key} (raw bytes), in one
        journal write, and keep the repository sizes live.

        @return: whether the log changed.
        """
        changed = self.locations.recordAll(key, uuids, present)
        sizes = getattr(self.policy, "sizes", None)
        if sizes is not None:
            for uuid in uuids:
                sizes.apply(key, uuid, present)
        return bool(changed)

    def resolve(self, target, clientUUID, bypass=()):
        """
        @param target: the uuid the client asked for (L{bytes}), or
            L{None} for the gateway itself.
        @param clientUUID: the client's uuid (a shared router presents the
            gateway's own to its repository instead: one pool for all).
        @param bypass: the client's BYPASS list, for a shared router (a
            session router takes it later, through C{setBypass}).
        @return: the L{IRepository} to serve.
        @raise UnknownTarget: if the target is not served here.
        """
        state = self.state
        if not target or target == state.uuid:
            if self._shared is not None:
                clientUUID = state.uuid
            return self._local(state.path, state.uuid, clientUUID, "here")
        if target in state.clusters:
            if self._shared is None:
                return self._cluster(state.clusters[target])
            return self._share(
                ("cluster", target, frozenset(bypass)),
                lambda: self._cluster(state.clusters[target], bypass))
        if state.isProxied(target):
            remotes = state.remotesFor(target)
            return self._connector(remotes[0], target)
        if target in state.descriptions:
            raise UnknownTarget("not configured to proxy for repository %s" % (
                state.description(target),))
        raise UnknownTarget("expected repository UUID %s but found UUID %s" % (
            _text(target), _text(state.uuid)))

    def _share(self, key, build):
        if self._shared is None:
            return build()
        made = self._shared.get(key)
        if made is None:
            made = self._shared[key] = build()
        return made

    def _node(self, key, name, build):
        def wrapped():
            made = build()
            if self._wrapNode is not None:
                made = self._wrapNode(made, name)
            return made
        return self._share(key, wrapped)

    def configurePools(self, **options):
        """
        Change session pool settings (e.g. C{idleTimeout}) for the node
        connectors made from now on and for the shared ones already made.
        """
        self.poolOptions.update(options)
        for key, made in list((self._shared or {}).items()):
            if key[0] == "cluster":
                continue
            # Below the metrics wrapper, if any.
            pool = getattr(made, "repository", made)
            for name, value in options.items():
                if hasattr(pool, name):
                    setattr(pool, name, value)
                lockPool = getattr(pool, "_lockPool", None)
                if lockPool is not None and hasattr(lockPool, name):
                    setattr(lockPool, name, value)

    def pools(self):
        """
        The status of every shared node connector's session pool (see
        L{annexd.nodes.pool.SessionPool.status}).
        """
        return [made.status() for key, made in list((self._shared or {}).items())
                if key[0] != "cluster" and hasattr(made, "status")]

    def close(self):
        """
        Close every shared connector (a shared router's end).

        @return: a Deferred firing when their sessions have ended.
        """
        shared = self._shared or {}
        if self._shared is not None:
            self._shared = {}
        return defer.DeferredList([
            defer.maybeDeferred(made.close) for key, made in shared.items()
            if key[0] != "cluster" and hasattr(made, "close")])

    def _local(self, path, uuid, clientUUID, name, bypass=()):
        return self._node(
            ("local", path, uuid, clientUUID, tuple(bypass)), name,
            lambda: LocalNode(self.reactor, path, uuid, clientUUID,
                              maxSessions=self.state.jobs, name=name,
                              gitAnnex=self.gitAnnex,
                              environment=self.environment, bypass=bypass,
                              **self.poolOptions))

    def _connector(self, remote, uuid, bypass=()):
        """
        The connector of a node, by the kind of its remote (in git-annex's
        order: an C{annexUrl} wins over the url): annex+http(s), a local
        path, ssh, a P2P address.
        """
        if remote.annexUrl and remote.annexUrl.startswith(
                ("annex+http://", "annex+https://")):
            return self._http(remote, uuid, bypass)
        special = self.state.specialConfig(remote)
        if special is not None:
            return self._special(remote, uuid, special)
        path = remote.localPath(self.state.path)
        if path is not None:
            return self._local(path, uuid, self.state.uuid, remote.name,
                               bypass)
        if remote.url and remote.url.startswith(("p2p-annex::", "tor-annex::")):
            return self._p2pAddress(remote, uuid, bypass)
        if remote.url and parseSshUrl(remote.url) is not None:
            return self._node(
                ("ssh", remote.url, uuid, tuple(bypass)), remote.name,
                lambda: SshNode(self.reactor, remote.url, uuid,
                                self.state.uuid, maxSessions=self.state.jobs,
                                name=remote.name,
                                sshOptions=remote.sshOptions,
                                shell=remote.shell, bypass=bypass,
                                environment=self.environment,
                                **self.poolOptions))
        return UnreachableNode(uuid, "annexd cannot reach node %s (%s) yet" % (
            remote.name, remote.url or remote.annexUrl))

    #: Special remote types annexd reaches itself: type -> (module, class).
    #: Imported when first needed, as the HTTP and P2P-address connectors
    #: are: an annexd-shell session starts without loading treq, botocore
    #: or txtorcon unless its target needs them.
    SPECIAL_TYPES = {
        "directory": ("annexd.nodes.directory", "DirectoryNode"),
        "external": ("annexd.nodes.external", "ExternalNode"),
        "S3": ("annexd.nodes.s3", "S3Node"),
    }

    def _special(self, remote, uuid, config):
        """
        A special remote as a node: annexd speaks its storage itself
        (directory, external programs, S3); other types are unreachable,
        with a reason.
        """
        kind = config.get("type", "")
        where = self.SPECIAL_TYPES.get(kind)
        if where is None:
            return UnreachableNode(uuid, (
                "annexd cannot reach node %s: special remotes of type %s are"
                " not supported" % (remote.name, kind or "(none)")))
        if config.get("encryption", "none") != "none":
            return UnreachableNode(uuid, (
                "annexd cannot reach node %s: encrypted special remotes"
                " (encryption=%s) are not supported" % (
                    remote.name, config.get("encryption"))))
        import importlib
        nodeClass = getattr(importlib.import_module(where[0]), where[1])
        options = {}
        if kind == "external":
            options = dict(
                maxProcesses=self.state.jobs,
                spoolDirectory=os.path.join(self.state.gitDir, "annex", "tmp"),
                diskReserve=self.state.diskReserve)
        elif kind == "S3":
            options = dict(maxConnections=max(4, self.state.jobs))
        return self._node(
            ("special", kind, remote.name, uuid), remote.name,
            lambda: nodeClass(self.reactor, uuid, remote.name, config,
                              remote.gitConfig, self.state.path,
                              environment=self.environment, **options))

    def _http(self, remote, uuid, bypass):
        """
        A node served over the HTTP P2P API (C{git annex p2phttp}, or
        another annexd): credentials from the url's user information, else
        from git's credential helper when the node asks; TLS verified
        against C{http.sslCAInfo} when set, else the system's trust.
        """
        from annexd.nodes.http import HttpNode
        url, credentials = _splitCredentials(remote.annexUrl)
        config = self.state.config
        return self._node(
            ("http", url, uuid, tuple(bypass)), remote.name,
            lambda: HttpNode(
                self.reactor, url, uuid, self.state.uuid, name=remote.name,
                maxConnections=self.state.jobs, bypass=bypass,
                credentials=credentials, repoPath=self.state.path,
                environment=self.environment,
                trustRoot=config.get("http.sslcainfo"),
                idleTimeout=self.poolOptions.get("idleTimeout", 60.0)))

    def _p2pAddress(self, remote, uuid, bypass):
        """
        A node at a P2P address (C{p2p-annex::NET:ADDR} through the
        program C{git-annex-p2p-NET}, C{tor-annex::ONION:PORT} through
        tor's SOCKS port, C{annexd.torsocks} or 127.0.0.1:9050), with the
        auth token C{git annex p2p --link} stored in the gateway's creds.
        """
        from annexd.nodes.p2paddr import P2PAddressNode, readToken
        token = readToken(self.state.gitDir, remote.url, self.environment)
        if token is None:
            return UnreachableNode(uuid, (
                "annexd has no auth token for node %s (%s): link it with"
                " `git annex p2p --link` in the gateway" % (
                    remote.name, remote.url)))
        socks = self.state.config.get("annexd.torsocks") or "127.0.0.1:9050"
        host, _, port = socks.rpartition(":")
        return self._node(
            ("p2p", remote.url, uuid, tuple(bypass)), remote.name,
            lambda: P2PAddressNode(
                self.reactor, remote.url, uuid, self.state.uuid, token,
                maxSessions=self.state.jobs, name=remote.name,
                bypass=bypass, environment=self.environment,
                torSocks=(host or "127.0.0.1", int(port or 9050)),
                **self.poolOptions))

    def _cost(self, remote):
        """
        A node's cost: configured, else git-annex's default for its kind
        (a directory special remote is as cheap as a local repository).
        """
        if remote.cost is not None:
            return remote.cost
        special = self.state.specialConfig(remote)
        if special is not None and special.get("type") == "directory":
            return LOCAL_REMOTE_COST
        return remote.defaultCost

    @staticmethod
    def _weight(remote):
        """
        A node's weight in the choice of a download source: its configured
        cost / 100, or 1 when none is configured (the measured path
        decides; see L{annexd.router.paths}).
        """
        return 1.0 if remote.cost is None else remote.cost / 100.0

    def _meter(self, remote, uuid, via=None):
        """
        The shared L{PathMeter} of the path to C{uuid} (through the gateway
        C{via}, if any): its priors are those of the remote's kind of url
        until measured.
        """
        meter = self.paths.get((uuid, via))
        if meter is None:
            special = self.state.specialConfig(remote)
            local = (remote.localPath(self.state.path) is not None
                     or (special or {}).get("type") == "directory")
            meter = self.paths[(uuid, via)] = PathMeter(
                "local" if local else "network", hops=2 if via else 1)
        return meter

    def _cluster(self, info, bypass=()):
        state = self.state
        # A shared router builds one cluster per BYPASS list; its connectors
        # to other gateways carry their list from the start (see
        # gatewayBypass), so that no shared connector is ever changed by
        # setBypass.
        skipped = set(bypass) | {state.uuid}
        gateways = [r for r in state.remotes
                    if info.uuid in r.clusterGateways and r.uuid]
        direct = {r.uuid for r in gateways if r.uuid not in skipped}
        nodes = []
        for remote in state.clusterNodes(info.uuid):
            nodes.append(ClusterNode(
                remote.uuid, remote.name, self._cost(remote),
                self._connector(remote, remote.uuid),
                weight=self._weight(remote),
                meter=self._meter(remote, remote.uuid)))
        # Other gateways of the same cluster: the cluster's uuid reached
        # through them, always with BYPASS naming this gateway, so that no
        # client (whatever its protocol version) can make gateways recurse.
        for remote in gateways:
            cost = remote.cost if remote.cost is not None else remote.defaultCost
            nodes.append(ClusterNode(
                info.uuid, "%s-%s" % (remote.name, info.name), cost + 1,
                self._connector(remote, info.uuid, bypass=gatewayBypass(
                    skipped, direct, remote.uuid)),
                via=remote.uuid, weight=self._weight(remote),
                meter=self._meter(remote, info.uuid, via=remote.uuid)))
        cluster = Cluster(info.uuid, nodes, self.policy, name=info.name,
                       gatewayUUID=state.uuid, reactor=self.reactor,
                       spoolDirectory=os.path.join(state.gitDir, "annex", "tmp"),
                       diskReserve=state.diskReserve,
                       locations=lambda key: self.locations.presentSync(key.raw))
        if bypass:
            cluster.setBypass(bypass)
        return cluster
