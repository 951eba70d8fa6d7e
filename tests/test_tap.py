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
                    "lockedfiles = 7\ncontrol = /run/annexd/c.sock\n"
                    "admin = tcp:9418\nshutdown-grace = 5\n"
                    "idle-timeout = 2.5\nlog-format = json\n")
        options = tap.Options()
        options.parseOptions(["-c", path])
        self.assertEqual(options["repo"], ["/srv/a.git", "/srv/b.git"])
        self.assertEqual(options["http"], ["tcp:9417"])
        self.assertTrue(options["unauth-readonly"])
        self.assertEqual(options["lockedfiles"], 7)
        self.assertEqual(options["control"], "/run/annexd/c.sock")
        self.assertEqual(options["admin"], "tcp:9418")
        self.assertEqual(options["shutdown-grace"], 5.0)
        self.assertEqual(options["idle-timeout"], 2.5)
        self.assertEqual(options["log-format"], "json")
        # Defaults.
        options = tap.Options()
        options.parseOptions(["--repo", "/srv/a.git"])
        self.assertEqual((options["lockedfiles"], options["shutdown-grace"],
                          options["idle-timeout"], options["log-format"],
                          options["control"], options["admin"]),
                         (100, 30.0, 60.0, "text", None, None))
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
                     ["-c", "/nonexistent/annexd.conf"],
                     ["--control", "/tmp/c.sock"],
                     ["--repo", "x", "--admin", "bogus:1"],
                     ["--repo", "x", "--log-format", "xml"],
                     ["--repo", "x", "--shutdown-grace", "-1"],
                     ["--repo", "x", "--idle-timeout", "soon"],
                     ["--repo", "/a/gw.git", "--repo", "/b/gw"],
                     ["--p2p", "unix:/tmp/p.sock"],
                     ["--repo", "x", "--p2p", "http:80"],
                     ["--repo", "x", "--p2p", "unix:/p a b"],
                     ["--repo", "x", "--onion", "5555"],
                     ["--repo", "x", "--onion", "99999",
                      "--tor-launch"],
                     ["--repo", "x", "--onion", "1", "--tor-launch",
                      "--tor-control", "unix:/c"]):
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

    def test_hangupReloads(self):
        """
        reload() (SIGHUP) re-reads the configuration file: the users file
        and lock budget change at once; the gateway state is re-read.
        """
        from tests.support.annex import cluster_for
        cluster = cluster_for(self, nodes=1)
        path = self.mktemp()
        sock = self.mktemp()

        def write(lockedfiles, flags):
            with open(path, "w") as f:
                f.write("[annexd]\nrepo = %s\nhttp = unix:%s\n"
                        "lockedfiles = %d\n%s" % (
                            cluster.gateway.path, sock, lockedfiles, flags))
        write(5, "wideopen = yes\nidle-timeout = 60\n")
        options = tap.Options()
        options.parseOptions(["-c", path])
        svc = tap.makeService(options)
        svc.startService()
        self.addCleanup(svc.stopService)
        [host] = svc.hosts
        before = host.state
        self.assertEqual(host.locks.maxLocks, 5)
        # A node connector made before the reload.
        node = host.router.resolve(cluster.nodes[0].uuid.encode(),
                                   host.state.uuid)
        self.assertEqual(node.repository.idleTimeout, 60)
        write(9, "unauth-readonly = yes\nidle-timeout = 7\n")
        svc.reload()
        self.assertEqual(host.locks.maxLocks, 9)
        self.assertEqual(node.repository.idleTimeout, 7)
        self.assertEqual(host.router.poolOptions["idleTimeout"], 7)
        self.assertIsNot(host.state, before)
        from annexd.http.auth import Action
        decision = self.successResultOf(
            svc.site.resource.auth.authorize(None, Action.WRITE, False))
        self.assertFalse(decision.allowed)
        # A broken file leaves the running configuration alone.
        with open(path, "w") as f:
            f.write("[annexd]\nlockedfiles = many\n")
        svc.reload()
        self.assertEqual(host.locks.maxLocks, 9)
