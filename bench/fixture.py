"""
The fixture of C{python -m bench}: one git-annex cluster (a bare gateway,
3 bare nodes, a client; L{tests.support.annex.build_cluster}), its data,
every server, and one client remote per configuration.

Configurations (the client's remote names):

  direct, no gateway (node1 only):
    - C{node1path}: node1 by path;
    - C{n1ssh}: node1 over the fake ssh, running git-annex-shell in node1;
    - C{n1http}: node1 served by C{git-annex p2phttp -J16} run in node1 (the
      "same server serving a node directly" of the issue: the direct
      reference of the HTTP transport);
  git-annex's gateway:
    - C{gw}: over the fake ssh, forced command C{git-annex-shell -c
      "$SSH_ORIGINAL_COMMAND"} (git-annex-shell proxies to the nodes);
    - C{ref4}, C{ref16}: annexUrl to C{git-annex p2phttp -J4} / C{-J16}
      run in the gateway;
  annexd:
    - C{ax}: over the fake ssh, forced command C{annexd-shell --repo GW}
      (served in-process, no daemon);
    - C{axd}: same with C{--control SOCK}: relayed to the annexd daemon;
    - C{axh}: annexUrl to the same annexd daemon's C{--http} listener.

Every gateway remote has the gateway's uuid, so git-annex gives it the
proxied remotes C{NAME-mycluster}, C{NAME-node1}, ...

The fake ssh of L{tests.support.annex} ignores the host; git-annex uses
C{GIT_SSH_COMMAND} for every remote (C{GIT_ANNEX_USE_GIT_SSH=1}), so the
client's C{GIT_SSH_COMMAND} is a wrapper, C{bin/benchssh}, that picks the
forced command from the host of the remote's URL (C{ssh://HOST/path}) and
runs the fake ssh with it.
"""

import hashlib
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from bench.common import ROOT, MiB, makeFile, startServer, stopServers
from tests.support.annex import build_cluster
from tests.support.daemon import annexdArgv, freePort

SMALL = 4096
BIG = "big.bin"
SMALLDIR = "small"


@dataclass(frozen=True)
class Config:
    """
    One way for the client to reach the data.

    @ivar name: the client's remote (for gateways: the gateway remote, whose
        proxied remotes are C{NAME-mycluster}, C{NAME-node1}).
    @ivar transport: C{path}, C{ssh} or C{http}.
    @ivar kind: C{direct}, C{git-annex} (git-annex's gateway) or C{annexd}.
    @ivar server: the key of the long-running server it uses in
        L{Fixture.servers}, or L{None}.
    @ivar shell: for ssh, the pattern naming the per-session server process
        (the forced command) in its command line.
    """

    name: str
    label: str
    transport: str
    kind: str
    server: str = None
    shell: str = None

    @property
    def gateway(self):
        return self.kind != "direct"

    def target(self, where):
        """
        The client's remote for C{where} (C{"cluster"} or C{"node"}): the
        proxied remote through a gateway, the node itself for a direct one.
        """
        if not self.gateway:
            return self.name
        return "%s-%s" % (self.name,
                          "mycluster" if where == "cluster" else "node1")


CONFIGS = [
    Config("node1path", "direct: node1 by path", "path", "direct"),
    Config("n1ssh", "direct: node1 over ssh (git-annex-shell)", "ssh",
           "direct", shell="git-annex-shell"),
    Config("n1http", "direct: node1 over HTTP (git-annex p2phttp -J16 in"
           " node1)", "http", "direct", server="p2phttp-node1"),
    Config("gw", "git-annex gateway over ssh (git-annex-shell)", "ssh",
           "git-annex", shell="git-annex-shell"),
    Config("ref4", "git-annex gateway over HTTP (p2phttp -J4)", "http",
           "git-annex", server="p2phttp-J4"),
    Config("ref16", "git-annex gateway over HTTP (p2phttp -J16)", "http",
           "git-annex", server="p2phttp-J16"),
    Config("ax", "annexd over ssh (annexd-shell, no daemon)", "ssh",
           "annexd", shell="annexd.shell"),
    Config("axd", "annexd over ssh (annexd-shell -> daemon)", "ssh",
           "annexd", server="annexd", shell="annexd.shell"),
    Config("axh", "annexd over HTTP (annexd --http)", "http", "annexd",
           server="annexd"),
]
BY_NAME = {c.name: c for c in CONFIGS}

#: The reference each configuration's figures are divided by: git-annex's
#: gateway on the same transport.
BASELINE = {"ssh": "gw", "http": "ref16"}

# bin/benchssh: the fake ssh's option parsing, to find the host.
_BENCHSSH = r"""#!/bin/sh
# benchssh: choose the forced command by the ssh host, then run the fake ssh.
skip=0
host=
for a in "$@"; do
	if [ "$skip" -gt 0 ]; then skip=$((skip - 1)); continue; fi
	case "$a" in
		-[BbcDEeFIiJLlmOoPpQRSWw]) skip=1 ;;
		-*) ;;
		*) host=$a; break ;;
	esac
done
case "$host" in
@CASES@
	*) unset FAKESSH_FORCED_COMMAND ;;
esac
exec @FAKESSH@ "$@"
"""


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class FixtureError(RuntimeError):
    """
    The fixture could not be built or reset.
    """


class Fixture:
    """
    The cluster, its data, the servers and the client's remotes.

    @ivar big: C{(key, sha256)} of the big file.
    @ivar small: C{{key: sha256}} of the small files.
    @ivar servers: C{{name: Daemon}} of the long-running servers.
    """

    def __init__(self, workdir, size, files, configs, log=print):
        self.workdir = workdir
        self.size = size
        self.files = files
        self.configs = list(configs)
        self.log = log
        self.servers = {}
        self.sockdir = tempfile.mkdtemp(prefix="annexd-bench-ctl-")
        self.control = os.path.join(self.sockdir, "control.sock")

        started = time.monotonic()
        self.cluster = build_cluster(os.path.join(workdir, "cluster"))
        self.env = self.cluster.env
        # annexd-shell and the daemon import annexd from the checkout.
        self.env.env["PYTHONPATH"] = os.pathsep.join(
            [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(
                os.pathsep) if p])
        self.client = self.cluster.client.path
        self.gateway = self.cluster.gateway.path
        self.nodes = self.cluster.nodes
        self._writeSsh()
        self._makeData()
        self.log("fixture: cluster and data in %.0f s"
                 % (time.monotonic() - started,))

    # ------------------------------------------------------------ commands

    def annex(self, *args, **kw):
        kw.setdefault("timeout", 3600)
        return self.env.annex(self.client, *args, **kw)

    def git(self, *args, **kw):
        return self.env.git(self.client, *args, **kw)

    # --------------------------------------------------------------- data

    def _makeData(self):
        path = os.path.join(self.client, BIG)
        bigSum = makeFile(path, self.size)
        os.makedirs(os.path.join(self.client, SMALLDIR))
        sums = {}
        for i in range(self.files):
            data = os.urandom(SMALL)
            name = os.path.join(SMALLDIR, "f%05d.bin" % (i,))
            with open(os.path.join(self.client, name), "wb") as f:
                f.write(data)
            sums[name] = sha256(data)
        self.annex("add", "--quiet", BIG, SMALLDIR)
        self.git("commit", "-q", "-m", "bench data")
        keys = {}
        for line in self.annex("find", "--format=${key} ${file}\\n",
                               BIG, SMALLDIR).splitlines():
            key, name = line.split(" ", 1)
            keys[name] = key
        self.big = (keys[BIG], bigSum)
        self.bigFile = {BIG: bigSum}
        self.small = {keys[name]: digest for name, digest in sums.items()}
        self.smallFiles = sums
        if len(self.small) != self.files:
            raise FixtureError("%d small keys for %d files (duplicates?)"
                               % (len(self.small), self.files))

    # ----------------------------------------------------------- wiring

    def shellCommand(self, config):
        """
        The forced command of an ssh configuration (None: the command the
        client asked for, run as it is).
        """
        annexdShell = "%s -m annexd.shell --repo %s" % (
            shlex.quote(sys.executable), shlex.quote(self.gateway))
        if config.name == "gw":
            return 'git-annex-shell -c "$SSH_ORIGINAL_COMMAND"'
        if config.name == "ax":
            return annexdShell
        if config.name == "axd":
            return "%s --control %s" % (annexdShell,
                                        shlex.quote(self.control))
        return None

    def _writeSsh(self):
        cases = []
        for config in CONFIGS:
            command = self.shellCommand(config)
            if command is not None:
                cases.append("\t%s) FAKESSH_FORCED_COMMAND=%s;"
                             " export FAKESSH_FORCED_COMMAND ;;"
                             % (config.name, shlex.quote(command)))
        script = (_BENCHSSH.replace("@CASES@", "\n".join(cases))
                  .replace("@FAKESSH@", shlex.quote(self.env.fakessh)))
        path = os.path.join(self.env.bindir, "benchssh")
        with open(path, "w") as f:
            f.write(script)
        os.chmod(path, 0o755)
        self.ssh = path
        self.env.env["GIT_SSH_COMMAND"] = path
        self.git("config", "core.sshCommand", path)

    def _startServers(self):
        needed = {c.server for c in self.configs if c.server}
        env = self.env.env
        if "annexd" in needed:
            port = freePort()
            self.servers["annexd"] = startServer(
                annexdArgv(["--repo", self.gateway,
                            "--http", "tcp:%d:interface=127.0.0.1" % (port,),
                            "--control", self.control, "--wideopen"]),
                ROOT, env, port, os.path.join(self.workdir, "annexd.log"))
        for name, jobs, repo in (("p2phttp-J4", 4, self.gateway),
                                 ("p2phttp-J16", 16, self.gateway),
                                 ("p2phttp-node1", 16, self.nodes[0].path)):
            if name not in needed:
                continue
            port = freePort()
            binary, argv = self.env.gitannex.argv(
                "git-annex", "p2phttp", "-J%d" % (jobs,), "--wideopen",
                "--bind", "127.0.0.1", "--port", str(port))
            self.servers[name] = startServer(
                argv, repo, env, port,
                os.path.join(self.workdir, name + ".log"), executable=binary)

    def start(self):
        """
        Start the servers and add the client's remotes.
        """
        self._startServers()
        node1 = self.nodes[0].path
        for config in self.configs:
            name = config.name
            if name in ("node1path", "gw"):
                pass   # made by build_cluster (gw is ssh://localhost/GW)
            elif name == "n1ssh":
                self.git("remote", "add", name, "ssh://n1ssh" + node1)
            else:
                self.git("remote", "add", name, "ssh://%s%s" % (
                    name, node1 if name == "n1http" else self.gateway))
            if name == "gw":
                self.git("remote", "set-url", name, "ssh://gw" + self.gateway)
            if config.server and config.transport == "http":
                self.git("config", "remote.%s.annexUrl" % (name,),
                         self.servers[config.server].annexUrl())
            # Asks the server for its uuid (records remote.NAME.annex-uuid);
            # for a gateway that makes the proxied remotes appear.
            info = self.annex("info", "--fast", name, timeout=300)
            want = (self.nodes[0].uuid if not config.gateway
                    else self.cluster.gateway.uuid)
            got = self.env.config(self.client,
                                  "remote.%s.annex-uuid" % (name,))
            if got != want:
                raise FixtureError("%s: uuid %s, expected %s:\n%s"
                                   % (name, got, want, info))
            if config.gateway and "gateway to cluster: %s-mycluster" % (
                    name,) not in info:
                raise FixtureError("%s: no cluster through it:\n%s"
                                   % (name, info))
        self.log("fixture: servers %s, remotes %s" % (
            ", ".join("%s (pid %d, port %d)" % (n, s.process.pid, s.port)
                      for n, s in self.servers.items()),
            ", ".join(c.name for c in self.configs)))

    def checkServers(self):
        """
        @raise FixtureError: if a server has exited.
        """
        for name, server in self.servers.items():
            if server.process.poll() is not None:
                raise FixtureError("%s exited with %s:\n%s" % (
                    name, server.process.returncode, server.output()[-3000:]))

    def stop(self):
        stopServers(self.servers.values())
        shutil.rmtree(self.sockdir, True)

    # ------------------------------------------------------------- checks

    def nodesFor(self, config, where):
        """
        The nodes a PUT to C{where} through C{config} must reach.
        """
        if where == "cluster" and config.gateway:
            return list(self.nodes)
        return [self.nodes[0]]

    def present(self, keys):
        """
        C{{node name: number of C{keys} whose content it holds}} (on disk).
        """
        return {node.name: sum(1 for key in keys
                               if self.cluster.node_has(node, key))
                for node in self.nodes}

    def mismatches(self, nodes, sums):
        """
        Check the content of every key of C{sums} on every node of
        C{nodes} by sha256.

        @return: a list of problems (empty when all is well).
        """
        problems = []
        for node in nodes:
            for key, digest in sums.items():
                got = self.cluster.node_sha256(node, key)
                if got != digest:
                    problems.append("%s: %s %s" % (
                        node.name, key,
                        "missing" if got is None else "sha256 mismatch"))
        return problems

    def clientMismatches(self, names_sums):
        """
        Check the client's files by sha256: C{{path: sha256}}.
        """
        problems = []
        for name, digest in names_sums.items():
            path = os.path.join(self.client, name)
            try:
                with open(path, "rb") as f:
                    h = hashlib.sha256()
                    for chunk in iter(lambda: f.read(4 * MiB), b""):
                        h.update(chunk)
            except OSError:
                problems.append("client: %s missing" % (name,))
                continue
            if h.hexdigest() != digest:
                problems.append("client: %s sha256 mismatch" % (name,))
        return problems
