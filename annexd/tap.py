# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: C{twistd annexd}.

For now the service hosts no listeners; front-ends join it as they are
built (shared/DESIGN.md, "Processes").
"""

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage


class Options(usage.Options):
    """
    C{twistd annexd} options.
    """

    synopsis = "[options]"
    longdesc = ("annexd is a gateway for git-annex clusters: stock git-annex "
                "clients reach every node and cluster behind it over ssh, "
                "annex+http and P2P addresses.")

    optParameters = [
        ["repo", "r", None,
         "The gateway's git-annex repository.", str],
    ]


class GatewayService(service.MultiService):
    """
    The top-level annexd service.
    """

    _log = Logger()

    def __init__(self, repo=None):
        service.MultiService.__init__(self)
        self.repo = repo

    def startService(self):
        self._log.info("annexd starting (gateway repository: {repo})",
                       repo=self.repo)
        service.MultiService.startService(self)

    def stopService(self):
        self._log.info("annexd stopping")
        return service.MultiService.stopService(self)


def makeService(options, reactor=None):
    """
    Build the annexd service from parsed L{Options}.
    """
    return GatewayService(options["repo"])
