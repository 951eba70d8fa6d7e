# -*- test-case-name: tests.test_policy -*-
"""
Which cluster nodes want a key: the nodes' preferred content, decided as
git-annex's gateway decides it for a cluster PUT.

L{PreferredContentPolicy} evaluates each node's expression (preferred
content OR required content, with standard groups and groupwanted expanded;
see L{annexd.annex.preferred}) for the key and the client's associated file,
with the gateway's location log and repository sizes.  A node without an
expression wants everything (the default git-annex uses for cluster PUTs).

Repository sizes are only needed by the size-aware terms (balanced with a
maxsize, sizebalanced); they are computed from the location logs the first
time a term asks, then kept live as content moves through annexd.
"""

from twisted.logger import Logger
from zope.interface import implementer

from annexd.annex import preferred
from annexd.annex.sizes import RepoSizes
from annexd.router.cluster import IWantsPolicy


class LazySizes:
    """
    Repository sizes, swept from the location logs on first use.
    """

    def __init__(self, gitDir):
        self._gitDir = gitDir
        self._sizes = None

    @property
    def sizes(self):
        if self._sizes is None:
            self._sizes = RepoSizes.fromLocationLogs(self._gitDir)
        return self._sizes

    @property
    def loaded(self):
        return self._sizes is not None

    def __contains__(self, uuid):
        return uuid in self.sizes

    def __getitem__(self, uuid):
        return self.sizes[uuid]

    def get(self, uuid, default=0):
        return self.sizes.get(uuid, default)

    def apply(self, key, uuid, present):
        """
        Content moved: keep the sizes live (only once they are loaded; a
        later sweep sees the change in the location log anyway).
        """
        if self._sizes is not None:
            self._sizes.apply(key, uuid, present)

    def reserve(self, key, uuid):
        self.sizes.reserve(key, uuid)

    def release(self, key, uuid):
        if self._sizes is not None:
            self._sizes.release(key, uuid)


@implementer(IWantsPolicy)
class PreferredContentPolicy:
    """
    @ivar state: the L{annexd.annex.state.GatewayState}.
    @ivar sizes: the L{LazySizes} of the gateway.
    """

    _log = Logger()

    def __init__(self, state, locations=None, sizes=None):
        """
        @param locations: the gateway's L{LocationLog}, for the terms that
            look at where content is.
        """
        self.state = state
        self.locations = locations
        self.sizes = sizes if sizes is not None else LazySizes(state.gitDir)
        self._reported = set()

    def wants(self, node, key, associatedFile, present=None):
        if present is None:
            present = (self.locations.presentSync(key.raw)
                       if self.locations is not None else set())
        ctx = preferred.WantContext(
            self.state, node.uuid, key,
            None if associatedFile is None
            else associatedFile.decode("utf-8", "surrogateescape"),
            present, self.sizes)
        try:
            wanted = preferred.wants(ctx, default=True)
        except Exception:
            # An expression annexd cannot evaluate must not fail the PUT:
            # git-annex's fallback for a bad expression is "present".
            if node.uuid not in self._reported:
                self._reported.add(node.uuid)
                self._log.failure("preferred content of {node} failed",
                                  node=node.name)
            return node.uuid in present
        if wanted and getattr(ctx, "liveUpdate", False):
            # Count the key against the node while it is on its way, so
            # that concurrent uploads do not overfill it (git-annex's live
            # size update).
            self.sizes.reserve(key, node.uuid)
        return wanted
