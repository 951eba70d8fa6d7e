"""
The fixture of C{python -m bench}: one git-annex cluster (a bare gateway,
3 bare nodes, a client; L{tests.support.annex.build_cluster}), two more
nodes on "other hosts" that the gateway proxies, its data, every server,
and one client remote per configuration.

The nodes on other hosts (not cluster nodes: proxied remotes of the
gateway, C{remote.NAME.annex-proxy=true}, listed in proxy.log by
C{git annex updateproxy}; separate repositories, because a gateway cannot
tell apart two remotes of one uuid):

  - C{node4}: the gateway's remote C{ssh://node4host/…/node4.git}, through
    the fake ssh, whose host C{node4host} has the forced command
    C{git-annex-shell -c "$SSH_ORIGINAL_COMMAND"} (every session is logged
    in C{ssh-node4host.log} with the process chain that opened it);
  - C{node5}: the gateway's remote whose url and annexUrl are
    C{annex+http://127.0.0.1:PORT/git-annex/}, served by C{git-annex
    p2phttp -J16} run in node5 (git-annex's own gateways cannot proxy
    such a node; annexd can).

Neither has a url that is a local path, so annexd reaches node4 only over
ssh (L{annexd.nodes.ssh.SshNode}) and node5 only over HTTP
(L{annexd.nodes.http.HttpNode}).

Configurations (the client's remote names):

  direct, no gateway (node1 only):
    - C{node1path}: node1 by path;
    - C{n1ssh}: node1 over the fake ssh, running git-annex-shell in node1;
    - C{n1http}: node1 served by C{git-annex p2phttp -J16} run in node1 (the
      "same server serving a node directly" of the issue: the direct
      reference of the HTTP transport);
    - C{n4ssh}: node4 over the fake ssh (git-annex-shell in node4), the
      no-proxy limit of the ssh-node workloads;
    - C{n5http}: node5's own p2phttp server (the one the gateway's node5
      remote names), the no-proxy limit of the HTTP-node workloads;
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
proxied remotes C{NAME-mycluster}, C{NAME-node1}, ..., C{NAME-node4},
C{NAME-node5}.

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
from tests.support.annex import FAKESSH_HOST_PRELUDE, Repo, build_cluster
from tests.support.daemon import annexdArgv, freePort

SMALL = 4096
BIG = "big.bin"
SMALLDIR = "small"

#: The ssh host of node4 in the gateway's remote url.
NODE4HOST = "node4host"

#: What a workload's target is: C{where} -> the node (or cluster) name
#: proxied remotes end with.
WHERE = {"cluster": "mycluster", "node": "node1", "ssh-node": "node4",
         "http-node": "node5"}


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
    @ivar node: for a direct configuration, the node it reaches.
    """

    name: str
    label: str
    transport: str
    kind: str
    server: str = None
    shell: str = None
    node: str = "node1"

    @property
    def gateway(self):
        return self.kind != "direct"

    def serves(self, where):
        """
        Whether this configuration reaches C{where} (a key of L{WHERE}): a
        direct one its own node (node1 stands for the cluster too); a
        gateway the cluster, node1 and node4, and node5 (annex+http) only
        if it is annexd.
        """
        if not self.gateway:
            return WHERE[where] == self.node or (
                where == "cluster" and self.node == "node1")
        return where != "http-node" or self.kind == "annexd"

    def target(self, where):
        """
        The client's remote for C{where} (a key of L{WHERE}): the proxied
        remote through a gateway, the node itself for a direct one.
        """
        if not self.gateway:
            return self.name
        return "%s-%s" % (self.name, WHERE[where])


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
    Config("n4ssh", "direct: node4 over ssh (git-annex-shell)", "ssh",
           "direct", shell="git-annex-shell", node="node4"),
    Config("n5http", "direct: node5 over HTTP (git-annex p2phttp -J16 in"
           " node5)", "http", "direct", server="p2phttp-node5",
           node="node5"),
]
BY_NAME = {c.name: c for c in CONFIGS}

#: The reference each configuration's figures are divided by: git-annex's
#: gateway on the same transport.
BASELINE = {"ssh": "gw", "http": "ref16"}

# bin/benchssh: the fake ssh's option parsing, to find the host.
_BENCHSSH = r"""#!/bin/sh
# benchssh: choose the forced command by the ssh host, then run the fake ssh.
@HOSTPRELUDE@case "$host" in
@CASES@
	@NODE4HOST@)
		# A host that runs git-annex-shell only, as sshd with a forced
		# command would; each session is logged with the processes that
		# opened it (up to 3 ancestors).
		FAKESSH_FORCED_COMMAND='git-annex-shell -c "$SSH_ORIGINAL_COMMAND"'
		export FAKESSH_FORCED_COMMAND
		chain=
		p=$PPID
		for i in 1 2 3; do
			[ -r /proc/$p/cmdline ] || break
			chain="$chain | $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-160)"
			p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$p/status)
		done
		printf '%s%s\n' "$*" "$chain" >> @NODE4LOG@ ;;
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
    @ivar nodes: the cluster's nodes (L{Repo}s).
    @ivar node4: the node behind ssh (L{Repo}).
    @ivar node5: the node behind annex+http (L{Repo}).
    @ivar allNodes: every node, the cluster's first.
    """

    def __init__(self, workdir, size, files, configs, log=print,
                 node5=True):
        """
        @param node5: whether node5's p2phttp server is needed (it is
            started by L{start} only then; node5 is configured anyway).
        """
        self.workdir = workdir
        self.size = size
        self.files = files
        self.configs = list(configs)
        self.log = log
        self.servers = {}
        self.sockdir = tempfile.mkdtemp(prefix="annexd-bench-ctl-")
        self.control = os.path.join(self.sockdir, "control.sock")
        self.needNode5 = node5 or any(
            c.server == "p2phttp-node5" for c in self.configs)
        self.adminPort = None

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
        self.node4log = os.path.join(workdir, "ssh-%s.log" % (NODE4HOST,))
        self._writeSsh()
        self._addOtherHosts()
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
        script = (_BENCHSSH.replace("@HOSTPRELUDE@", FAKESSH_HOST_PRELUDE)
                  .replace("@CASES@", "\n".join(cases))
                  .replace("@NODE4HOST@", NODE4HOST)
                  .replace("@NODE4LOG@", shlex.quote(self.node4log))
                  .replace("@FAKESSH@", shlex.quote(self.env.fakessh)))
        path = os.path.join(self.env.bindir, "benchssh")
        with open(path, "w") as f:
            f.write(script)
        os.chmod(path, 0o755)
        self.ssh = path
        self.env.env["GIT_SSH_COMMAND"] = path
        self.git("config", "core.sshCommand", path)

    def _addOtherHosts(self):
        """
        Make node4 and node5 (bare clones of the gateway, like the cluster's
        nodes), add them to the gateway as proxied remotes whose urls are
        not local paths (node4: ssh to L{NODE4HOST}; node5: annex+http to
        its p2phttp server's port, chosen now and served by L{start}),
        record them in proxy.log (C{git annex updateproxy}), check it, and
        fetch the gateway's git-annex branch into the client.
        """
        env, gw = self.env, self.gateway
        made = []
        for name in ("node4", "node5"):
            path = os.path.join(self.cluster.base_dir, "nodes",
                                name + ".git")
            env.git(self.cluster.base_dir, "clone", "-q", "--bare", gw, path)
            env.annex(path, "init", "--quiet", name)
            env.git(path, "config", "annex.autocommit", "false")
            made.append(Repo(name, path, env.config(path, "annex.uuid")))
            # Added by path first: the gateway learns the node's uuid and
            # description (its git-annex branch).
            env.git(gw, "remote", "add", name, path)
            env.git(gw, "fetch", "-q", name)
            env.git(gw, "config", "remote.%s.annex-uuid" % (name,),
                    made[-1].uuid)
            env.git(gw, "config", "remote.%s.annex-proxy" % (name,), "true")
        self.node4, self.node5 = made
        self.allNodes = list(self.nodes) + made
        env.git(gw, "config", "remote.node4.url",
                "ssh://%s%s" % (NODE4HOST, self.node4.path))
        self.node5port = freePort()
        self.node5url = "annex+http://127.0.0.1:%d/git-annex/" % (
            self.node5port,)
        for option in ("url", "annexurl"):
            env.git(gw, "config", "remote.node5." + option, self.node5url)
        out = env.annex(gw, "updateproxy")
        proxies = self.proxyLog().get(self.cluster.gateway.uuid, {})
        for node in made:
            if proxies.get(node.uuid) != node.name:
                raise FixtureError(
                    "proxy.log does not list %s (%s) under the gateway:"
                    " %r\n%s" % (node.name, node.uuid, proxies, out))
        self.git("fetch", "-q", self.cluster.remote)

    def proxyLog(self):
        """
        The gateway's C{proxy.log}: C{{proxy uuid: {uuid: name}}}.
        """
        text = self.env.git(self.gateway, "cat-file", "blob",
                            "git-annex:proxy.log")
        found = {}
        for line in text.splitlines():
            words = line.split()
            if len(words) < 2:
                continue
            found[words[1]] = dict(w.split(":", 1) for w in words[2:]
                                   if ":" in w)
        return found

    def _startServers(self):
        needed = {c.server for c in self.configs if c.server}
        env = self.env.env
        if self.needNode5:
            binary, argv = self.env.gitannex.argv(
                "git-annex", "p2phttp", "-J16", "--wideopen",
                "--bind", "127.0.0.1", "--port", str(self.node5port))
            self.servers["p2phttp-node5"] = startServer(
                argv, self.node5.path, env, self.node5port,
                os.path.join(self.workdir, "p2phttp-node5.log"),
                executable=binary)
        if "annexd" in needed:
            port = freePort()
            self.adminPort = freePort()
            self.servers["annexd"] = startServer(
                annexdArgv(["--repo", self.gateway,
                            "--http", "tcp:%d:interface=127.0.0.1" % (port,),
                            "--control", self.control, "--wideopen",
                            "--admin", "tcp:%d:interface=127.0.0.1" % (
                                self.adminPort,)]),
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
        byName = {n.name: n for n in self.allNodes}
        for config in self.configs:
            name = config.name
            node = byName[config.node]
            if name in ("node1path", "gw"):
                pass   # made by build_cluster (gw is ssh://localhost/GW)
            elif not config.gateway:
                # Direct: ssh://NAME/NODE (the fake ssh runs the requested
                # git-annex-shell), or an annexUrl for HTTP.
                self.git("remote", "add", name, "ssh://%s%s" % (
                    name, node.path))
            else:
                self.git("remote", "add", name, "ssh://%s%s" % (
                    name, self.gateway))
            if name == "gw":
                self.git("remote", "set-url", name, "ssh://gw" + self.gateway)
            if config.server and config.transport == "http":
                self.git("config", "remote.%s.annexUrl" % (name,),
                         self.servers[config.server].annexUrl())
            # Asks the server for its uuid (records remote.NAME.annex-uuid);
            # for a gateway that makes the proxied remotes appear.
            info = self.annex("info", "--fast", name, timeout=300)
            want = (node.uuid if not config.gateway
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
            if config.gateway:
                proxying = [line.split()[1:] for line in info.splitlines()
                            if line.startswith("proxying:")]
                proxying = proxying[0] if proxying else []
                for where in ("ssh-node", "http-node"):
                    if config.target(where) not in proxying:
                        raise FixtureError("%s: no %s through it:\n%s"
                                           % (name, config.target(where),
                                              info))
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
        name = WHERE[where] if config.gateway else config.node
        if name == "mycluster":
            name = "node1"
        return [n for n in self.allNodes if n.name == name]

    def present(self, keys, nodes=None):
        """
        C{{node name: number of C{keys} whose content it holds}} (on disk),
        for every node (or those of C{nodes}).
        """
        return {node.name: sum(1 for key in keys
                               if self.cluster.node_has(node, key))
                for node in (self.allNodes if nodes is None else nodes)}

    # ------------------------------------------------------- evidence

    def node4Sessions(self):
        """
        The ssh sessions opened to L{NODE4HOST} so far, counted by who
        opened them: C{{opener: count}} (C{annexd daemon}, C{annexd-shell},
        C{git-annex-shell (git-annex gateway)}, C{git-annex p2phttp},
        C{other}).
        """
        counts = {}
        try:
            with open(self.node4log) as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            chain = line.split(" | ", 1)[1] if " | " in line else ""
            if "annexd.cli" in chain or "twistd" in chain:
                who = "annexd daemon"
            elif "annexd.shell" in chain:
                who = "annexd-shell"
            elif "p2phttp" in chain:
                who = "git-annex p2phttp"
            elif "git-annex-shell" in chain:
                who = "git-annex-shell (git-annex gateway)"
            else:
                who = "other: " + chain[:80]
            counts[who] = counts.get(who, 0) + 1
        return counts

    def evidence(self):
        """
        How the nodes on other hosts were reached so far (for the report):
        C{sessions} (L{node4Sessions}), C{metrics} (L{metrics}),
        C{node5url}.
        """
        return {"sessions": self.node4Sessions(), "metrics": self.metrics(),
                "node5url": self.node5url}

    def metrics(self):
        """
        The annexd daemon's node figures from its C{/metrics}:
        C{{node: {"upload": bytes, "download": bytes, "sessions": n}}}, or
        L{None} without a daemon (or if it does not answer).
        """
        if self.adminPort is None:
            return None
        import urllib.request
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics"
                                        % (self.adminPort,),
                                        timeout=10) as r:
                text = r.read().decode("utf-8", "replace")
        except OSError:
            return None
        found = {}
        for line in text.splitlines():
            if line.startswith("#") or "{" not in line:
                continue
            name, _, rest = line.partition("{")
            labels, _, value = rest.rpartition("}")
            fields = dict(
                part.split("=", 1) for part in labels.split(",")
                if "=" in part)
            fields = {k: v.strip('"') for k, v in fields.items()}
            node = fields.get("node")
            if node is None:
                continue
            entry = found.setdefault(node, {})
            if name == "annexd_node_bytes_total":
                entry[fields.get("direction")] = float(value)
            elif name == "annexd_node_sessions_started_total":
                entry["sessions"] = float(value)
        return found

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
