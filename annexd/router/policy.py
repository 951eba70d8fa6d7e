# -*- test-case-name: tests.test_policy -*-
"""
Which cluster nodes want a key: the nodes' preferred content.

L{PreferredContentPolicy} reads each node's expression from the gateway's
state (its own C{preferred-content.log} entry, or its groups'
C{groupwanted} expression for C{groupwanted} / C{standard}).  A node with no
expression, or C{anything}, wants everything; C{nothing} wants nothing.
Expressions annexd cannot evaluate yet count as wanting (git-annex's
gateway also sends to every node when none wants a key).
"""

from twisted.logger import Logger
from zope.interface import implementer

from annexd.router.cluster import IWantsPolicy


@implementer(IWantsPolicy)
class PreferredContentPolicy:
    """
    @ivar state: the L{annexd.annex.state.GatewayState}.
    """

    _log = Logger()

    def __init__(self, state, locations=None):
        """
        @param locations: the gateway's L{LocationLog}, for the terms that
            look at where content is.
        """
        self.state = state
        self.locations = locations
        self._warned = set()

    def expression(self, uuid):
        """
        The preferred content expression that applies to C{uuid}, or
        L{None}.
        """
        expression = (self.state.preferredContent.get(uuid) or "").strip()
        if expression in ("groupwanted", "standard"):
            for group in sorted(self.state.groups.get(uuid, ())):
                groupExpression = self.state.groupPreferredContent.get(group)
                if groupExpression:
                    return groupExpression.strip()
            return None
        return expression or None

    def wants(self, node, key, associatedFile):
        expression = self.expression(node.uuid)
        if expression is None or expression == "anything":
            return True
        if expression == "nothing":
            return False
        if (node.uuid, expression) not in self._warned:
            self._warned.add((node.uuid, expression))
            self._log.warn(
                "node {node}: preferred content {expression!r} is not "
                "evaluated yet; the node is treated as wanting everything",
                node=node.name, expression=expression)
        return True
