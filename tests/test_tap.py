"""
The twistd plugin and its service.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

from annexd import tap


class PluginTests(unittest.TestCase):
    """
    C{twistd annexd} is found and its service starts and stops.
    """

    def test_pluginFound(self):
        """
        twistd's plugin scan finds the annexd service maker, whose options
        and service come from L{annexd.tap}.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("annexd", makers)
        self.assertIsInstance(makers["annexd"].options(), tap.Options)

    def test_startStop(self):
        """
        The service starts and stops cleanly.
        """
        options = tap.Options()
        options.parseOptions(["--repo", "/srv/gw.git"])
        svc = tap.makeService(options)
        self.assertEqual(svc.repo, "/srv/gw.git")
        svc.startService()
        self.assertTrue(svc.running)
        d = svc.stopService()
        self.assertFalse(svc.running)
        return d
