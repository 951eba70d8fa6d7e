"""
twistd plugin: C{twistd annexd ...}.  Kept to one lazy ServiceMaker so that
twistd can scan plugins without importing annexd.
"""

from twisted.application.service import ServiceMaker

annexd = ServiceMaker(
    "annexd", "annexd.tap", "A gateway for git-annex clusters.", "annexd")
