# -*- test-case-name: tests.test_annexstate -*-
"""
The gateway repository's configuration, as one snapshot.

L{GatewayState.load} reads the git config (C{git config -z --list}) and
the git-annex branch logs (with the journal; see L{annexd.annex.branch}):
the gateway's uuid, its remotes, the repositories it proxies, the clusters
it is a gateway of, trust, groups and preferred content.  It decides what
may be proxied the way git-annex's C{checkCanProxy} and cluster gateway
do (shared/spec/annex-state.md sections 2.2 and 2.4).

Not handled: C{remote.NAME.annex-cost-command} (only C{annex-cost} and the
defaults), C{annex.private} repositories, and special remotes' own default
costs (every remote without a local path costs 200 by default).
"""

import os
import re
import subprocess
import urllib.parse
from dataclasses import dataclass, field

from annexd.annex import logs
from annexd.annex.branch import BranchReader, _gitExecutable, findGitDir

__all__ = [
    "RemoteConfig", "ClusterInfo", "GatewayState", "parseGitConfig",
    "parseSize", "parseGitBool", "DEFAULT_DISK_RESERVE",
    "LOCAL_REMOTE_COST", "REMOTE_COST",
]

#: git-annex's default C{annex.diskreserve}: 100 megabytes (of 1000000
#: bytes: C{onemegabyte * 100} in C{Types/GitConfig.hs}).
DEFAULT_DISK_RESERVE = 100 * 1000 * 1000

#: Default cost of a git remote with a local path.
LOCAL_REMOTE_COST = 100.0

#: Default cost of any other remote.
REMOTE_COST = 200.0


def _powers(base, names):
    return [(base ** i, abbrev, name) for i, (abbrev, name) in names]


# Utility/DataUnits.hs dataUnits: storage, then committee, then bandwidth
# units; the first match wins.
_UNITS = (
    _powers(1000, [(10, ("QB", "quettabyte")), (9, ("RB", "ronnabyte")),
                   (8, ("YB", "yottabyte")), (7, ("ZB", "zettabyte")),
                   (6, ("EB", "exabyte")), (5, ("PB", "petabyte")),
                   (4, ("TB", "terabyte")), (3, ("GB", "gigabyte")),
                   (2, ("MB", "megabyte")), (1, ("kB", "kilobyte")),
                   (0, ("B", "byte"))])
    + _powers(1024, [(8, ("YiB", "yobibyte")), (7, ("ZiB", "zebibyte")),
                     (6, ("EiB", "exbibyte")), (5, ("PiB", "pebibyte")),
                     (4, ("TiB", "tebibyte")), (3, ("GiB", "gibibyte")),
                     (2, ("MiB", "mebibyte")), (1, ("KiB", "kibibyte")),
                     (0, ("B", "byte"))])
    + [(1000 ** i // 8, abbrev, name) for i, abbrev, name in [
        (8, "Ybit", "yottabit"), (7, "Zbit", "zettabit"),
        (6, "Ebit", "exabit"), (5, "Pbit", "petabit"),
        (4, "Tbit", "terabit"), (3, "Gbit", "gigabit"),
        (2, "Mbit", "megabit"), (1, "kbit", "kilobit")]]
)

_NUMBER = re.compile(r"\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)")


def parseSize(text):
    """
    Parse a size the way git-annex's C{readSize dataUnits} does:
    C{"100 megabytes"}, C{"1GB"}, C{"500mb"}, C{"0.5 gb"}, C{"500M"},
    C{"2KiB"}, C{"10 Mbit"}; units are case-insensitive, may be plural or
    abbreviated without the C{B}, decimal units are powers of 1000, and no
    unit means bytes.  The result is rounded (half to even).

    @type text: L{str}
    @return: the number of bytes, or L{None} if C{text} is not a size.
    @rtype: L{int} or L{None}
    """
    match = _NUMBER.match(text)
    if match is None:
        return None
    number = float(match.group(1))
    rest = text[match.end():].lstrip()
    unit = ""
    for c in rest:
        if not c.isalpha():
            break
        unit += c
    if not unit:
        return round(number)
    wanted = unit.lower()
    for multiplier, abbrev, name in _UNITS:
        if (wanted in (abbrev.lower(), name.lower(), name.lower() + "s")
                or abbrev.lower() == wanted + "b"):
            return round(number * multiplier)
    return None


def parseGitBool(value, default=False):
    """
    A git config boolean: no value, C{true}, C{yes}, C{on} or a non-zero
    number are true; C{false}, C{no}, C{off}, C{0} and the empty string
    are false; anything else is C{default}.

    @param value: the value, L{None} for a key given without C{=}.
    @type value: L{str} or L{None}
    @rtype: L{bool}
    """
    if value is None:
        return True
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off", ""):
        return False
    try:
        return int(lowered) != 0
    except ValueError:
        return default


def parseGitConfig(data):
    """
    Parse the output of C{git config -z --list}.

    @type data: L{bytes}
    @return: C{(name, value)} pairs in order, names as git prints them
        (section and variable lowercased); C{value} is L{None} for a key
        given without C{=}.
    @rtype: L{list} of C{(str, str or None)}
    """
    entries = []
    for item in data.split(b"\0"):
        if not item:
            continue
        name, nl, value = item.partition(b"\n")
        entries.append((
            name.decode("utf-8", "surrogateescape"),
            value.decode("utf-8", "surrogateescape") if nl else None))
    return entries


def _isScpStyle(url):
    colon = url.find(":")
    if colon < 0 or "//" in url:
        return False
    if "::" in url.split("[", 1)[0]:
        return False  # a git remote helper location
    return "/" not in url[:colon]


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _localLocation(url):
    """
    The local path that C{url} names (possibly relative), or L{None}.
    """
    if not url or _isScpStyle(url):
        return None
    if _SCHEME.match(url):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() != "file":
            return None
        return urllib.parse.unquote(parts.path) or None
    return url


@dataclass(frozen=True)
class RemoteConfig:
    """
    A remote of the gateway repository, from its git config.

    @ivar name: the remote's name (C{remote.NAME.*}).
    @ivar url: C{remote.NAME.url} (after C{url.*.insteadOf}), or L{None}.
    @ivar annexUrl: C{remote.NAME.annexUrl}, or L{None}.
    @ivar uuid: C{remote.NAME.annex-uuid}, or L{None}.
    @ivar cost: C{remote.NAME.annex-cost}, or L{None} (see
        L{effectiveCost}).
    @ivar clusterNodes: the legal cluster names in
        C{remote.NAME.annex-cluster-node}.
    @ivar clusterGateways: the cluster uuids in
        C{remote.NAME.annex-cluster-gateway}.
    @ivar proxy: C{remote.NAME.annex-proxy}.
    @ivar ignore: C{remote.NAME.annex-ignore}.
    @ivar sshOptions: C{remote.NAME.annex-ssh-options}, or L{None}.
    @ivar shell: C{remote.NAME.annex-shell}, or L{None}.
    @ivar proxiedBy: C{remote.NAME.annex-proxied-by}, or L{None}.
    @ivar trustLevel: C{remote.NAME.annex-trustlevel} if it is a valid
        level (L{annexd.annex.logs.TRUSTED}, ...), or L{None}.
    """

    name: str
    url: str | None = None
    annexUrl: str | None = None
    uuid: bytes | None = None
    cost: float | None = None
    clusterNodes: tuple = ()
    clusterGateways: tuple = ()
    proxy: bool = False
    ignore: bool = False
    sshOptions: str | None = None
    shell: str | None = None
    proxiedBy: bytes | None = None
    trustLevel: str | None = None
    settings: tuple = ()

    @property
    def gitConfig(self):
        """
        Every C{remote.NAME.*} setting of this remote, without the prefix
        (C{{"annex-directory": "/srv/d", ...}}), last value per name.

        @rtype: L{dict}
        """
        return dict(self.settings)

    def localPath(self, repoPath):
        """
        The absolute path of the repository this remote names, when its
        url is a local path (plain, C{~}, or C{file://}); relative paths are
        resolved against C{repoPath}.

        @param repoPath: the gateway repository's path.
        @type repoPath: L{str}
        @return: the path, or L{None} for C{ssh://}, C{host:path},
            C{annex+http://} and other urls, or when there is no url.
        @rtype: L{str} or L{None}
        """
        location = _localLocation(self.url)
        if location is None:
            return None
        location = os.path.expanduser(location)
        return os.path.normpath(os.path.join(os.path.abspath(repoPath),
                                             location))

    @property
    def isLocal(self):
        """
        Whether the url is a local path.

        @rtype: L{bool}
        """
        return _localLocation(self.url) is not None

    @property
    def defaultCost(self):
        """
        git-annex's default cost: 100 for a git remote with a local path,
        200 otherwise.

        @rtype: L{float}
        """
        return LOCAL_REMOTE_COST if self.isLocal else REMOTE_COST

    @property
    def effectiveCost(self):
        """
        L{cost} if configured, else L{defaultCost}.

        @rtype: L{float}
        """
        return self.cost if self.cost is not None else self.defaultCost


@dataclass(frozen=True)
class ClusterInfo:
    """
    A cluster this repository is a gateway of.

    @ivar uuid: the cluster's uuid.
    @ivar name: its name (C{annex.cluster.NAME}).
    @ivar nodes: the uuids of its nodes in C{cluster.log}, without dead
        ones.
    """

    uuid: bytes
    name: str
    nodes: frozenset = field(default_factory=frozenset)


def _readish(text):
    match = re.match(r"\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)",
                     text or "")
    return None if match is None else float(match.group(1))


def _remotesFromConfig(entries):
    """
    The L{RemoteConfig}s in C{entries}, in the order each remote first
    appears.
    """
    order = []
    values = {}
    insteadOf = []
    for name, value in entries:
        if name.startswith("url.") and name.endswith(".insteadof"):
            if value:
                insteadOf.append((value, name[4:-len(".insteadof")]))
            continue
        if not name.startswith("remote."):
            continue
        remote, dot, var = name[7:].rpartition(".")
        if not dot or not remote:
            continue
        if remote not in values:
            values[remote] = {}
            order.append(remote)
        values[remote][var] = value

    def rewrite(url):
        if url is None:
            return None
        best = max((prefix for prefix in insteadOf
                    if url.startswith(prefix[0])),
                   key=lambda p: len(p[0]), default=None)
        if best is None:
            return url
        return best[1] + url[len(best[0]):]

    remotes = []
    for remote in order:
        v = values[remote]
        if not ({"url", "annexurl", "annex-uuid"} & set(v)):
            continue
        uuid = v.get("annex-uuid")
        proxiedBy = v.get("annex-proxied-by")
        remotes.append(RemoteConfig(
            name=remote,
            url=rewrite(v.get("url")),
            annexUrl=v.get("annexurl"),
            uuid=uuid.encode("utf-8", "surrogateescape") if uuid else None,
            cost=_readish(v.get("annex-cost")),
            clusterNodes=tuple(
                n for n in (v.get("annex-cluster-node") or "").split()
                if logs.isLegalRemoteName(n)),
            clusterGateways=tuple(
                u for u in (
                    w.encode("utf-8", "surrogateescape") for w in
                    (v.get("annex-cluster-gateway") or "").split())
                if logs.isClusterUUID(u)),
            proxy=parseGitBool(v["annex-proxy"])
            if "annex-proxy" in v else False,
            ignore=parseGitBool(v["annex-ignore"])
            if "annex-ignore" in v else False,
            sshOptions=v.get("annex-ssh-options"),
            shell=v.get("annex-shell"),
            proxiedBy=(proxiedBy.encode("utf-8", "surrogateescape")
                       if proxiedBy else None),
            trustLevel=logs.parseTrustLevel(v.get("annex-trustlevel") or ""),
            settings=tuple(v.items()),
        ))
    return remotes


def _jobs(value):
    if value is None:
        return 1
    if value.strip() in ("cpus", "cpu"):
        return os.cpu_count() or 1
    number = _readish(value)
    if number is None or number != int(number):
        return 1
    return max(1, int(number))


def _text(value):
    return value.decode("utf-8", "surrogateescape")


class GatewayState:
    """
    A snapshot of the gateway repository's git config and git-annex branch
    state.  Build one with L{load}; load again to see changes.

    @ivar path: the repository's path.
    @ivar gitDir: its git directory.
    @ivar uuid: its uuid (C{annex.uuid}).
    @ivar config: every git config value, last one per name.
    @ivar descriptions: uuid -> description (C{uuid.log}).
    @ivar remotes: the L{RemoteConfig}s, in git config order.
    @ivar proxies: all of C{proxy.log}: proxy uuid -> C{((uuid, name), ...)}.
    @ivar proxied: uuid -> remote name: the entries of C{proxy.log} under
        this repository's own uuid.
    @ivar clusterNames: cluster name -> cluster uuid, from the
        C{annex.cluster.NAME} settings with a valid cluster uuid.
    @ivar clusterLog: all of C{cluster.log}: cluster uuid -> node uuids,
        dead nodes removed.
    @ivar clusters: cluster uuid -> L{ClusterInfo} for the clusters this
        repository is a gateway of (in git config and in C{cluster.log}).
    @ivar trust: uuid -> trust level (C{trust.log} overridden by
        C{remote.NAME.annex-trustlevel}); unlisted uuids are semitrusted.
    @ivar groups: uuid -> L{frozenset} of group names.
    @ivar preferredContent: uuid -> expression (C{preferred-content.log}).
    @ivar requiredContent: uuid -> expression (C{required-content.log}).
    @ivar groupPreferredContent: group -> expression.
    @ivar maxSize: uuid -> bytes (C{maxsize.log}).
    @ivar numCopies: C{numcopies.log}, or L{None} (git-annex then uses 1).
    @ivar minCopies: C{mincopies.log}, or L{None}.
    @ivar jobs: C{annex.jobs} (C{cpus}: the number of CPUs); default 1.
    @ivar diskReserve: C{annex.diskreserve} in bytes; default
        L{DEFAULT_DISK_RESERVE}.
    @ivar remoteLog: uuid -> the special remote's configuration
        (C{remote.log}, C{sameas} remotes completed from their parent).
    """

    def __init__(self, path, gitDir, uuid, config=None, descriptions=None,
                 remotes=None, proxies=None, clusterNames=None,
                 clusterLog=None, trust=None, groups=None,
                 preferredContent=None, requiredContent=None,
                 groupPreferredContent=None, maxSize=None, numCopies=None,
                 minCopies=None, jobs=1, diskReserve=DEFAULT_DISK_RESERVE,
                 remoteLog=None):
        self.path = path
        self.gitDir = gitDir
        self.uuid = uuid
        self.config = dict(config or {})
        self.descriptions = dict(descriptions or {})
        self.remotes = list(remotes or ())
        self.proxies = dict(proxies or {})
        self.clusterNames = dict(clusterNames or {})
        self.trust = dict(trust or {})
        self.clusterLog = {
            cluster: frozenset(n for n in nodes
                               if self.trust.get(n) != logs.DEAD)
            for cluster, nodes in (clusterLog or {}).items()}
        self.groups = dict(groups or {})
        self.preferredContent = dict(preferredContent or {})
        self.requiredContent = dict(requiredContent or {})
        self.groupPreferredContent = dict(groupPreferredContent or {})
        self.maxSize = dict(maxSize or {})
        self.numCopies = numCopies
        self.minCopies = minCopies
        self.jobs = jobs
        self.diskReserve = diskReserve
        self.remoteLog = dict(remoteLog or {})
        self._ownProxies = self.proxies.get(uuid, ())
        self.proxied = {}
        for proxiedUUID, name in self._ownProxies:
            self.proxied.setdefault(proxiedUUID, name)
        self.clusters = {}
        for name, cluster in self.clusterNames.items():
            if cluster in self.clusterLog and cluster not in self.clusters:
                self.clusters[cluster] = ClusterInfo(
                    cluster, name, self.clusterLog[cluster])

    @classmethod
    def load(cls, repoPath, env=None, reader=None):
        """
        Read the state of the repository at C{repoPath} (blocking: meant
        for start-up and reloads).

        @param repoPath: the repository (bare: its directory).
        @type repoPath: L{str}
        @param env: the environment for git (default: C{os.environ}).
        @param reader: a L{BranchReader} of the repository to use (default:
            a new one, closed afterwards).
        @rtype: L{GatewayState}
        @raise ValueError: if the repository has no C{annex.uuid}.
        @raise subprocess.CalledProcessError: if git fails.
        """
        path = os.path.abspath(repoPath)
        gitDir = findGitDir(path, env)
        result = subprocess.run(
            [_gitExecutable(env), "config", "-z", "--list"], cwd=path,
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, check=True)
        entries = parseGitConfig(result.stdout)
        config = {}
        for name, value in entries:
            config[name] = value
        uuid = config.get("annex.uuid")
        if not uuid:
            raise ValueError("%s is not a git-annex repository "
                             "(no annex.uuid)" % (path,))
        uuid = uuid.encode("utf-8", "surrogateescape")
        remotes = _remotesFromConfig(entries)

        clusterNames = {}
        for name, value in entries:
            if name.startswith("annex.cluster.") and value:
                clusterName = name[len("annex.cluster."):]
                cluster = value.strip().encode("utf-8", "surrogateescape")
                if (logs.isLegalRemoteName(clusterName)
                        and logs.isClusterUUID(cluster)):
                    clusterNames[clusterName] = cluster

        ownReader = reader is None
        if ownReader:
            reader = BranchReader(gitDir, env=env)
        try:
            read = reader.readSync
            trust = logs.parseTrustLog(read("trust.log"))
            for remote in remotes:
                if remote.uuid and remote.trustLevel is not None:
                    trust[remote.uuid] = remote.trustLevel
            state = cls(
                path, gitDir, uuid, config=config,
                descriptions={u: _text(v) for u, v in logs.parseOldUUIDLog(
                    read("uuid.log")).items()},
                remotes=remotes,
                proxies=logs.parseProxyLog(read("proxy.log")),
                clusterNames=clusterNames,
                clusterLog=logs.parseClusterLog(read("cluster.log")),
                trust=trust,
                groups=logs.parseGroupLog(read("group.log")),
                preferredContent=logs.parsePreferredContentLog(
                    read("preferred-content.log")),
                requiredContent=logs.parsePreferredContentLog(
                    read("required-content.log")),
                groupPreferredContent={
                    _text(g): _text(v) for g, v in logs.parseMapLog(
                        read("group-preferred-content.log")).items()},
                maxSize=logs.parseMaxSizeLog(read("maxsize.log")),
                numCopies=logs.parseNumCopiesLog(read("numcopies.log")),
                minCopies=logs.parseNumCopiesLog(read("mincopies.log")),
                jobs=_jobs(config.get("annex.jobs")),
                diskReserve=cls._diskReserve(config.get("annex.diskreserve")),
                remoteLog=logs.inheritSameas(logs.parseRemoteLog(
                    read("remote.log"))),
            )
        finally:
            if ownReader:
                reader.close()
        return state

    @staticmethod
    def _diskReserve(value):
        if value is None:
            return DEFAULT_DISK_RESERVE
        size = parseSize(value)
        return DEFAULT_DISK_RESERVE if size is None else size

    # ----------------------------------------------------------- queries

    def description(self, uuid):
        """
        The description of a repository in C{uuid.log}, or C{""}.

        @type uuid: L{bytes}
        @rtype: L{str}
        """
        return self.descriptions.get(uuid, "")

    def trustLevel(self, uuid):
        """
        The trust level of a repository (semitrusted when not listed).

        @type uuid: L{bytes}
        @rtype: L{str}
        """
        return self.trust.get(uuid, logs.SEMITRUSTED)

    def _byCost(self, remotes):
        return sorted(remotes, key=lambda r: r.effectiveCost)

    def remotesFor(self, uuid):
        """
        The remotes whose uuid is C{uuid}, cheapest first (equal costs in
        git config order).

        @type uuid: L{bytes}
        @rtype: L{list} of L{RemoteConfig}
        """
        return self._byCost(r for r in self.remotes if r.uuid == uuid)

    def specialConfig(self, remote):
        """
        The configuration of C{remote} if it is a special remote (its uuid
        has a C{remote.log} entry and it has no git url), else L{None}.

        @type remote: L{RemoteConfig}
        @rtype: L{dict} of L{str} to L{str}, or L{None}
        """
        if remote.url or remote.annexUrl or not remote.uuid:
            return None
        config = self.remoteLog.get(remote.uuid)
        return None if config is None else dict(config)

    def remote(self, name):
        """
        The remote called C{name}, or L{None}.

        @type name: L{str}
        @rtype: L{RemoteConfig} or L{None}
        """
        for r in self.remotes:
            if r.name == name:
                return r
        return None

    def _proxyConfigured(self, remote):
        if remote.proxy:
            return True
        if any(n in self.clusterNames for n in remote.clusterNodes):
            return True
        if remote.proxiedBy is not None:
            return any(r.clusterGateways for r in self.remotes
                       if r.uuid == remote.proxiedBy)
        return False

    def proxyRemote(self, uuid):
        """
        The remote through which this gateway proxies C{uuid}: the
        cheapest remote with that uuid whose name is the one listed under
        this repository's uuid in C{proxy.log} and whose git config allows
        proxying (C{annex-proxy}, C{annex-cluster-node} naming one of this
        repository's clusters, or C{annex-proxied-by} a remote that is a
        cluster gateway).

        @type uuid: L{bytes}
        @rtype: L{RemoteConfig} or L{None} (also for cluster uuids)
        """
        names = {name for u, name in self._ownProxies if u == uuid}
        if not names:
            return None
        for remote in self.remotesFor(uuid):
            if remote.name in names and self._proxyConfigured(remote):
                return remote
        return None

    def isProxied(self, uuid):
        """
        Whether this gateway serves C{uuid} for clients: it is listed
        under the gateway's own uuid in C{proxy.log}, and it is either a
        cluster in C{cluster.log} or has a remote that may be proxied (see
        L{proxyRemote}).

        @type uuid: L{bytes}
        @rtype: L{bool}
        """
        if not any(u == uuid for u, name in self._ownProxies):
            return False
        if logs.isClusterUUID(uuid):
            return uuid in self.clusterLog
        return self.proxyRemote(uuid) is not None

    def clusterNodes(self, clusterUUID, viaGateways=False):
        """
        The remotes that are nodes of cluster C{clusterUUID} when this
        gateway serves it: remotes whose C{annex-cluster-node} names the
        cluster (by one of its C{annex.cluster.NAME} names) and whose uuid
        is among the cluster's live nodes in C{cluster.log}; cheapest first,
        equal costs in git config order.

        @type clusterUUID: L{bytes}
        @param viaGateways: also include remotes for the same cluster
            reached through another gateway (uuid the cluster's, and
            C{annex-proxied-by} a remote whose C{annex-cluster-gateway}
            lists the cluster), as git-annex does; the caller must then
            avoid gateways in the request's bypass list.
        @rtype: L{list} of L{RemoteConfig}
        """
        names = {n for n, u in self.clusterNames.items() if u == clusterUUID}
        nodes = self.clusterLog.get(clusterUUID, frozenset())

        def isNode(remote):
            if remote.clusterNodes:
                return (any(n in names for n in remote.clusterNodes)
                        and remote.uuid in nodes)
            if not viaGateways or remote.uuid != clusterUUID:
                return False
            return remote.proxiedBy is not None and any(
                clusterUUID in r.clusterGateways for r in self.remotes
                if r.uuid == remote.proxiedBy)

        return self._byCost(r for r in self.remotes if isNode(r))

    def __repr__(self):
        return "<GatewayState %s uuid=%s: %d remotes, %d clusters>" % (
            self.path, _text(self.uuid), len(self.remotes),
            len(self.clusters))
