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

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.annex.location import LocationLog
from annexd.interfaces import IRepository, RepositoryUnavailable
from annexd.nodes.local import LocalNode
from annexd.nodes.ssh import SshNode, parseSshUrl
from annexd.router.cluster import Cluster, ClusterNode
from annexd.router.policy import PreferredContentPolicy


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
                 gitAnnex=None):
        self.reactor = reactor
        self.state = state
        self.environment = environment
        self.gitAnnex = gitAnnex
        self.locations = LocationLog(state.gitDir)
        self.policy = policy or PreferredContentPolicy(state, self.locations)

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
        sizes = getattr(self.policy, "sizes", None)
        if sizes is not None and getattr(sizes, "loaded", False):
            sizes.sizes.reload()

    def record(self, key, uuid, present):
        """
        Record in the gateway's location log that C{uuid} gained
        (C{present}) or lost the content of C{key} (raw bytes), and keep
        the repository sizes live.

        @return: whether the log changed.
        """
        changed = self.locations.record(key, uuid, present)
        sizes = getattr(self.policy, "sizes", None)
        if sizes is not None:
            sizes.apply(key, uuid, present)
        return changed

    def resolve(self, target, clientUUID):
        """
        @param target: the uuid the client asked for (L{bytes}), or
            L{None} for the gateway itself.
        @param clientUUID: the client's uuid.
        @return: the L{IRepository} to serve.
        @raise UnknownTarget: if the target is not served here.
        """
        state = self.state
        if not target or target == state.uuid:
            return self._local(state.path, state.uuid, clientUUID, "here")
        if target in state.clusters:
            return self._cluster(state.clusters[target])
        if state.isProxied(target):
            remotes = state.remotesFor(target)
            return self._connector(remotes[0], target)
        if target in state.descriptions:
            raise UnknownTarget("not configured to proxy for repository %s" % (
                state.description(target),))
        raise UnknownTarget("expected repository UUID %s but found UUID %s" % (
            _text(target), _text(state.uuid)))

    def _local(self, path, uuid, clientUUID, name, bypass=()):
        return LocalNode(self.reactor, path, uuid, clientUUID,
                         maxSessions=self.state.jobs, name=name,
                         gitAnnex=self.gitAnnex, environment=self.environment,
                         bypass=bypass)

    def _connector(self, remote, uuid, bypass=()):
        path = remote.localPath(self.state.path)
        if path is not None:
            return self._local(path, uuid, self.state.uuid, remote.name,
                               bypass)
        if remote.url and parseSshUrl(remote.url) is not None:
            return SshNode(self.reactor, remote.url, uuid, self.state.uuid,
                           maxSessions=self.state.jobs, name=remote.name,
                           sshOptions=remote.sshOptions, shell=remote.shell,
                           bypass=bypass, environment=self.environment)
        return UnreachableNode(uuid, "annexd cannot reach node %s (%s) yet" % (
            remote.name, remote.url or remote.annexUrl))

    def _cluster(self, info):
        state = self.state
        nodes = []
        for remote in state.clusterNodes(info.uuid):
            nodes.append(ClusterNode(
                remote.uuid, remote.name,
                remote.cost if remote.cost is not None else remote.defaultCost,
                self._connector(remote, remote.uuid)))
        # Other gateways of the same cluster: the cluster's uuid reached
        # through them, always with BYPASS naming this gateway, so that no
        # client (whatever its protocol version) can make gateways recurse.
        for remote in state.remotes:
            if info.uuid in remote.clusterGateways and remote.uuid:
                cost = remote.cost if remote.cost is not None else remote.defaultCost
                nodes.append(ClusterNode(
                    info.uuid, "%s-%s" % (remote.name, info.name), cost + 1,
                    self._connector(remote, info.uuid, bypass=(state.uuid,)),
                    via=remote.uuid))
        return Cluster(info.uuid, nodes, self.policy, name=info.name,
                       gatewayUUID=state.uuid, reactor=self.reactor,
                       spoolDirectory=os.path.join(state.gitDir, "annex", "tmp"),
                       diskReserve=state.diskReserve,
                       locations=lambda key: self.locations.presentSync(key.raw))
