# -*- test-case-name: tests.test_http -*-
"""
A gateway repository as a long-running front-end serves it.

The ssh front-end serves one session per process; the HTTP front-end (and
the daemon) serve many requests from one process.  L{GatewayHost} holds what
those requests share for one gateway repository: its state, one L{Router}
whose node connectors (and their session pools) are reused, the content
locks clients hold between requests, and the committer that puts location
changes on the git-annex branch promptly.
"""

import os

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.annex.location import JournalCommitter
from annexd.annex.state import GatewayState
from annexd.interfaces import IRepository
from annexd.router.locks import LockTable
from annexd.router.recording import RecordingRepository
from annexd.router.router import Router


def repositoryName(path):
    """
    The name a gateway repository is published under: its directory's name
    without C{.git} (C{/srv/gw.git} and C{/srv/gw} are both C{gw}).
    """
    name = os.path.basename(os.path.normpath(path))
    if name == ".git":
        name = os.path.basename(os.path.dirname(os.path.normpath(path)))
    if name.endswith(".git"):
        name = name[:-4]
    return name


class GatewayHost:
    """
    @ivar state: the gateway's L{GatewayState}.
    @ivar router: its shared L{Router}.
    @ivar locks: its L{LockTable} (one per served repository: the gateway's
        uuid, its proxied nodes and clusters share it, as in p2phttp).
    @ivar committer: its L{JournalCommitter}.
    @ivar name: the name it is published under (see L{repositoryName}).
    """

    _log = Logger()

    def __init__(self, reactor, path, name=None, environment=None,
                 gitAnnex=None, maxLocks=100, commitDelay=1.0, monitor=None,
                 poolOptions=None):
        """
        @param monitor: an L{annexd.monitor.Monitor} that counts the
            requests of every front-end and node, or L{None}.
        @param poolOptions: keywords for the node session pools (see
            L{annexd.nodes.pool.SessionPool}).
        """
        self.reactor = reactor
        self.name = name or repositoryName(path)
        self.monitor = monitor
        wrapNode = None
        if monitor is not None:
            wrapNode = self._instrumentNode
        self.router = Router(reactor, GatewayState.load(path),
                             environment=environment, gitAnnex=gitAnnex,
                             share=True, poolOptions=poolOptions,
                             wrapNode=wrapNode)
        if monitor is not None:
            monitor.addPools(self.router.pools)
        self._namesOf, self._names = None, {}
        self.locks = LockTable(reactor, maxLocks=maxLocks)
        self.committer = JournalCommitter(reactor, self.state.path,
                                          delay=commitDelay, env=environment)

    def _instrumentNode(self, connector, name):
        return self.monitor.instrument(connector, node=name)

    @property
    def state(self):
        return self.router.state

    @property
    def uuid(self):
        return self.state.uuid

    def reload(self):
        """
        Re-read the gateway's configuration and git-annex branch (after
        C{git annex updatecluster}, a new node, changed preferred content):
        requests from now on see it; transfers in flight finish with what
        they started with.
        """
        self.router.reloadState()

    def serves(self, uuid):
        """
        Whether requests for C{uuid} are served here: the gateway itself,
        its clusters and the nodes it proxies.
        """
        state = self.state
        return (uuid == state.uuid or uuid in state.clusters
                or state.isProxied(uuid))

    def repository(self, uuid, bypass=(), frontend=None):
        """
        The L{IRepository} serving C{uuid}, recording where content goes.

        @param frontend: the front-end asking (C{"http"}, C{"ssh"},
            C{"p2p"}), for metrics.
        @raise annexd.router.router.UnknownTarget: if not served here.
        """
        target = self.router.resolve(uuid, self.state.uuid, bypass)
        served = RecordingRepository(target, self._record, self.state.uuid)
        if self.monitor is not None and frontend is not None:
            served = self.monitor.instrument(served, frontend=frontend,
                                             target=self._name(uuid))
        return served

    def _name(self, uuid):
        """
        The name of what C{uuid} is, for the status page (cached until the
        state changes).
        """
        state = self.state
        if self._namesOf is not state:
            self._namesOf, self._names = state, {}
        name = self._names.get(uuid)
        if name is None:
            name = self._names[uuid] = self._lookUpName(state, uuid)
        return name

    def _lookUpName(self, state, uuid):
        if uuid == state.uuid:
            return self.name
        info = state.clusters.get(uuid)
        if info is not None:
            return info.name
        remotes = state.remotesFor(uuid) if state.isProxied(uuid) else ()
        return remotes[0].name if remotes else uuid.decode("ascii", "replace")

    def _record(self, key, uuids, present):
        changed = self.router.record(key, uuids, present)
        if changed:
            self.committer.changed()
        return changed

    def close(self):
        """
        Release every lock, close every node session, commit the journal.
        """
        return defer.DeferredList([
            self.locks.close(), self.router.close(), self.committer.flush()])


@implementer(IRepository)
class SessionTarget:
    """
    What one relayed P2P session talks to: the host's repository for the
    target, switched when the client sends BYPASS (shared clusters are
    never changed in place; the host keeps one per BYPASS list).
    """

    def __init__(self, host, target, frontend):
        """
        @raise annexd.router.router.UnknownTarget: if C{target} is not
            served by C{host}.
        """
        self._host = host
        self._target = target
        self._frontend = frontend
        self._current = host.repository(target, frontend=frontend)
        self.uuid = self._current.uuid

    def setBypass(self, uuids):
        self._current = self._host.repository(self._target, tuple(uuids),
                                              frontend=self._frontend)

    def __getattr__(self, name):
        return getattr(self._current, name)

    def checkPresent(self, key):
        return self._current.checkPresent(key)

    def lockContent(self, key):
        return self._current.lockContent(key)

    def remove(self, key, before=None):
        return self._current.remove(key, before)

    def getTimestamp(self):
        return self._current.getTimestamp()

    def get(self, key, associatedFile, offset):
        return self._current.get(key, associatedFile, offset)

    def put(self, key, associatedFile):
        return self._current.put(key, associatedFile)
