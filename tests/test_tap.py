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


class OptionsTests(unittest.TestCase):
    """
    The daemon's HTTP options, from the command line and the config file.
    """

    def test_configFile(self):
        """
        The [annexd] section gives repositories, listeners and auth flags;
        the command line wins.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[annexd]\nrepo =\n    /srv/a.git\n    /srv/b.git\n"
                    "http = tcp:9417\nunauth-readonly = yes\n"
                    "lockedfiles = 7\n")
        options = tap.Options()
        options.parseOptions(["-c", path])
        self.assertEqual(options["repo"], ["/srv/a.git", "/srv/b.git"])
        self.assertEqual(options["http"], ["tcp:9417"])
        self.assertTrue(options["unauth-readonly"])
        self.assertEqual(options["lockedfiles"], 7)
        options = tap.Options()
        options.parseOptions(["-c", path, "--repo", "/srv/c.git"])
        self.assertEqual(options["repo"], ["/srv/c.git"])

    def test_refusals(self):
        """
        Contradictory or incomplete options are usage errors.
        """
        from twisted.python.usage import UsageError
        for args in (["--http", "tcp:1"],
                     ["--repo", "x", "--http", "bogus:1"],
                     ["--repo", "x", "--unauth-readonly",
                      "--unauth-appendonly"],
                     ["-c", "/nonexistent/annexd.conf"]):
            self.assertRaises(UsageError, tap.Options().parseOptions, args)

    def test_httpService(self):
        """
        With --http the service listens (here on a unix socket) and stops
        cleanly.
        """
        from tests.support.annex import cluster_for
        cluster = cluster_for(self, nodes=1)
        sock = self.mktemp()
        options = tap.Options()
        options.parseOptions(["--repo", cluster.gateway.path, "--http",
                              "unix:%s:mode=600" % (sock,), "--wideopen"])
        svc = tap.makeService(options)
        svc.startService()
        import os
        import stat
        self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600)
        self.assertEqual(len(svc.hosts), 1)
        return svc.stopService()
