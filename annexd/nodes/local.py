# -*- test-case-name: tests.test_localnode -*-
"""
A node that is a git-annex repository on this machine.

annexd talks to it exactly as git-annex's own gateway does: it runs
C{git-annex-shell p2pstdio DIR GATEWAYUUID --uuid NODEUUID} as a child
process and speaks the P2P protocol as a client on its stdio.  git-annex
stays in charge of the node's object store, its locking, its verification
and its location log.
"""


from annexd import gitannex
from annexd.nodes.pool import SessionPool
from annexd.nodes.process import childEnvironment
from annexd.protocol.messages import MAX_PROTOCOL_VERSION


def _text(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class LocalNode(SessionPool):
    """
    A local git-annex repository, driven through C{git-annex-shell p2pstdio}.

    @ivar path: the repository's directory.
    @ivar clientUUID: the uuid annexd presents (the gateway's).
    """

    def __init__(self, reactor, path, uuid, clientUUID, maxSessions=1,
                 name=None, gitAnnex=None, version=MAX_PROTOCOL_VERSION,
                 bypass=(), environment=None, **poolOptions):
        """
        @param environment: the environment of the git-annex-shell
            processes (default: ours, see L{childEnvironment}).
        """
        SessionPool.__init__(self, uuid, self._openSession, maxSessions,
                             name or path, reactor=reactor,
                             **poolOptions)
        self.reactor = reactor
        self.path = path
        self.clientUUID = clientUUID
        self.version = version
        self.bypass = bypass
        self._gitAnnex = gitAnnex or gitannex.find()
        if environment is None:
            self._environment = childEnvironment(self._gitAnnex.env)
        else:
            self._environment = dict(environment, **self._gitAnnex.env)

    def _openSession(self):
        executable, args = self._gitAnnex.argv(
            "git-annex-shell", "p2pstdio", self.path, _text(self.clientUUID),
            "--uuid", _text(self.uuid))
        return self._childSession(self.reactor, executable, args,
                                  self._environment, "git-annex-shell",
                                  self.version, self.bypass)
