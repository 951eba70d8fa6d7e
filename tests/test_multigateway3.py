"""
A cluster with three gateways: two annexd gateways and one git-annex
gateway, each with its own node(s), each reaching the other two over ssh
(C{git annex extendcluster} both ways, then C{git annex updatecluster}
everywhere).

    gateway A  gateway.git  annexd      the fixture's, nodes node1..node3
    gateway B  gwb.git      annexd      node4
    gateway C  gwc.git      git-annex   node5

Every ssh connection goes through one fake ssh (C{bin/mg3ssh}) that picks
the forced command by the host of the url, as C{bench/fixture.py} does:

    ssh://annexd-a/PATH, ssh://annexd-b/PATH   annexd-shell -c CMD
    ssh://gitannex-c/PATH, ssh://node-host/PATH   git-annex-shell -c CMD

each run under the P2P tap (L{tests.support.p2ptap}), which logs every
message of every p2pstdio session in both directions.  Every node is an ssh
node (also those of gateway A, which the fixture makes path remotes), so the
tests count the PUTs and REMOVEs each node is sent, besides checking the
content on disk by sha256; the sessions the gateways open with each other
show the VERSION and BYPASS they send.  The fake ssh also counts hops (the
environment is inherited, everything runs locally) and cuts any request
after more ssh hops than a legitimate path has, so that a gateway loop
fails a test quickly instead of forking without bound.

annexd sends each other gateway a BYPASS naming itself, the client's BYPASS
and every other gateway it reaches directly
(L{annexd.router.cluster.gatewayBypass}), so through annexd each node is
sent a request exactly once.  git-annex's gateway names only itself and the
client's BYPASS (shared/spec/p2p-protocol.md section 5.2), so through it the
nodes behind the other gateways are reached by two paths (section 5.4; see
L{ThreeGatewayTests.test_version4ThroughGitAnnex}).
"""

import atexit
import hashlib
import os
import shlex
import sys
import tempfile

from twisted.internet import reactor
from twisted.trial import unittest

from annexd.nodes.process import spawnP2P
from annexd.protocol import messages as m
from annexd.protocol.client import P2PClient
from annexd.protocol.keys import Key
from tests.support import p2ptap
from tests.support.annex import (
    FAKESSH_HOST_PRELUDE,
    Repo, _make_writable, _rmtree, copy_cluster, template_cluster)
from tests.test_gateway_faults import (
    CLIENT_UUID, processesMentioning, pollUntil)

MiB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAP = os.path.abspath(p2ptap.__file__)
TAPLOG = "tap.log"
FUSE = "fuse.log"
MAXHOPS = 6

#: hosts of the fake ssh
HOST_A, HOST_B, HOST_C, HOST_NODE = (
    "annexd-a", "annexd-b", "gitannex-c", "node-host")

# bin/mg3ssh: the fake ssh's option parsing, to find the host; then the
# fake ssh with the host's forced command.
_DISPATCH = r"""#!/bin/sh
# mg3ssh: choose the forced command by the ssh host, then run the fake ssh.
@HOSTPRELUDE@# A fuse against gateway loops: the fake ssh runs everything locally, so the
# environment is inherited hop after hop; a request that crosses more ssh
# hops than any legitimate path (client, 3 gateways, node) is cut, as an
# unreachable host, and recorded.
MG3_HOPS=$((${MG3_HOPS:-0} + 1)); export MG3_HOPS
if [ "$MG3_HOPS" -gt @MAXHOPS@ ]; then
	echo "hop $MG3_HOPS: $*" >> @FUSE@
	echo "mg3ssh: more than @MAXHOPS@ ssh hops: a gateway loop?" >&2
	exit 255
fi
case "$host" in
	annexd-a|annexd-b) FAKESSH_FORCED_COMMAND=@ANNEXD@ ;;
	gitannex-c|node-host) FAKESSH_FORCED_COMMAND=@GITANNEX@ ;;
	*) echo "mg3ssh: unknown host $host" >&2; exit 255 ;;
esac
export FAKESSH_FORCED_COMMAND
exec @FAKESSH@ "$@"
"""


def keyOf(data):
    return Key.parse(b"SHA256E-s%d--%s.bin" % (
        len(data), hashlib.sha256(data).hexdigest().encode()))


def _writeDispatcher(env):
    """
    Write C{bin/mg3ssh}.  Every P2P session it starts goes through the tap,
    whose log is C{tap.log} in the cluster directory: set in the forced
    command (the served side's environment is the forced command's, as
    with sshd, not whatever the connecting gateway passes on).
    """
    original = '"$SSH_ORIGINAL_COMMAND"'
    tap = "%s=%s %s -S %s" % (
        p2ptap.LOG_ENV, shlex.quote(os.path.join(env.base_dir, TAPLOG)),
        shlex.quote(sys.executable), shlex.quote(TAP))
    annexdShell = "%s -m annexd.shell" % (shlex.quote(sys.executable),)
    annexd = "PYTHONPATH=%s %s --program %s -c %s" % (
        shlex.quote(ROOT), tap, shlex.quote(annexdShell), original)
    gitannex = "%s -c %s" % (tap, original)
    script = (_DISPATCH.replace("@HOSTPRELUDE@", FAKESSH_HOST_PRELUDE)
              .replace("@ANNEXD@", shlex.quote(annexd))
              .replace("@GITANNEX@", shlex.quote(gitannex))
              .replace("@FAKESSH@", shlex.quote(env.fakessh))
              .replace("@MAXHOPS@", str(MAXHOPS))
              .replace("@FUSE@", shlex.quote(os.path.join(env.base_dir,
                                                         FUSE))))
    path = os.path.join(env.bindir, "mg3ssh")
    with open(path, "w") as f:
        f.write(script)
    os.chmod(path, 0o755)
    return path


def _useDispatcher(cluster):
    env = cluster.env
    path = os.path.join(env.bindir, "mg3ssh")
    env.env["GIT_SSH_COMMAND"] = path
    env.env["PYTHONPATH"] = ROOT
    return path


def url(host, path):
    return "ssh://%s%s" % (host, path)


class ThreeGateways:
    """
    The fixture's cluster extended with gateways B and C (see the module
    docstring).

    @ivar cluster: the L{tests.support.annex.Cluster} (gateway A, its
        nodes node1..node3, and the client).
    @ivar gateways: C{{"A": path, "B": path, "C": path}}.
    @ivar gatewayUUIDs: C{{"A": uuid, "B": uuid, "C": uuid}}.
    @ivar nodes: every node L{Repo} (node1..node5).
    @ivar taplog: the P2P tap's log.
    @ivar fuse: the file the fake ssh writes when it cuts a loop.
    """

    def __init__(self, cluster, uuids):
        self.cluster = cluster
        self.env = cluster.env
        base = cluster.base_dir
        self.gateways = {"A": cluster.gateway.path,
                         "B": os.path.join(base, "gwb.git"),
                         "C": os.path.join(base, "gwc.git")}
        self.gatewayUUIDs = {which: uuids[which] for which in "ABC"}
        self.nodes = list(cluster.nodes) + [
            Repo(name, os.path.join(base, "nodes", name + ".git"),
                 uuids[name]) for name in ("node4", "node5")]
        self.taplog = os.path.join(base, TAPLOG)
        self.fuse = os.path.join(base, FUSE)

    def uuids(self):
        found = dict(self.gatewayUUIDs)
        found.update({n.name: n.uuid for n in self.nodes})
        return found

    # ---------------------------------------------------------- building

    @classmethod
    def build(cls, cluster):
        """
        Extend C{cluster} (a fresh copy of the fixture's template, modified
        in place).
        """
        env = cluster.env
        _writeDispatcher(env)
        _useDispatcher(cluster)
        git, ann = env.git, env.annex
        base = cluster.base_dir
        name = cluster.name
        A = cluster.gateway.path
        B = os.path.join(base, "gwb.git")
        C = os.path.join(base, "gwc.git")
        n4 = os.path.join(base, "nodes", "node4.git")
        n5 = os.path.join(base, "nodes", "node5.git")
        for path, desc in ((B, "gwb"), (C, "gwc")):
            git(base, "clone", "-q", "--bare", A, path)
            git(path, "remote", "remove", "origin")
            ann(path, "init", "--quiet", desc)
            git(path, "config", "annex.jobs", "cpus")
            ann(path, "wanted", "here", "nothing")
        for path, desc in ((n4, "node4"), (n5, "node5")):
            git(base, "clone", "-q", "--bare", A, path)
            ann(path, "init", "--quiet", desc)
            git(path, "config", "annex.autocommit", "false")
        # Gateway A's nodes become ssh nodes, through the tap.
        for node in cluster.nodes:
            git(A, "config", "remote.%s.url" % (node.name,),
                url(HOST_NODE, node.path))
        for gw, node, remote in ((B, n4, "node4"), (C, n5, "node5")):
            git(gw, "remote", "add", remote, url(HOST_NODE, node))
            git(gw, "config", "remote.%s.annex-cluster-node" % (remote,),
                name)
        remotes = {A: [("gwb", HOST_B, B), ("gwc", HOST_C, C)],
                   B: [("gwa", HOST_A, A), ("gwc", HOST_C, C)],
                   C: [("gwa", HOST_A, A), ("gwb", HOST_B, B)]}
        for gw, others in remotes.items():
            for remote, host, path in others:
                git(gw, "remote", "add", remote, url(host, path))
        # B and C join through A, the cluster's first gateway (its
        # git-annex branch has the cluster) ...
        for gw in (B, C):
            git(gw, "fetch", "-q", "gwa")
            ann(gw, "extendcluster", "gwa", name)
            git(gw, "fetch", "-q", "--all")
            ann(gw, "updatecluster")
        # ... then each learns, from the other's branch, that the other
        # is a gateway of the cluster too; A learns both.
        git(B, "fetch", "-q", "gwc")
        ann(B, "extendcluster", "gwc", name)
        ann(B, "updatecluster")
        git(C, "fetch", "-q", "gwb")
        ann(C, "extendcluster", "gwb", name)
        ann(C, "updatecluster")
        git(A, "fetch", "-q", "--all")
        ann(A, "extendcluster", "gwb", name)
        ann(A, "extendcluster", "gwc", name)
        ann(A, "updatecluster")
        # One more round: every gateway's git-annex branch has every
        # other's proxy.log and cluster.log entries (all five nodes).
        for gw in (B, C, A):
            git(gw, "fetch", "-q", "--all")
            ann(gw, "updatecluster")
        for gw, others in remotes.items():
            for remote, host, path in others:
                info = ann(gw, "info", "--fast", remote)
                if "gateway to cluster: %s-%s" % (remote, name) not in info:
                    raise RuntimeError("%s does not see %s as a gateway of"
                                       " %s:\n%s" % (gw, remote, name, info))
        # The client reaches gateway A, annexd, through its remote gw.
        client = cluster.client.path
        git(client, "remote", "set-url", cluster.remote, url(HOST_A, A))
        git(client, "config", "core.sshCommand", env.env["GIT_SSH_COMMAND"])
        git(client, "fetch", "-q", cluster.remote)
        ann(client, "merge", "--quiet")
        info = ann(client, "info", "--fast", cluster.remote)
        if "gateway to cluster: %s" % (cluster.remote_name(name),) \
                not in info:
            raise RuntimeError("the client does not see the cluster:\n"
                               + info)
        uuids = {which: env.config(path, "annex.uuid")
                 for which, path in (("A", A), ("B", B), ("C", C),
                                     ("node4", n4), ("node5", n5))}
        # Whatever went through the tap while building is not a test's.
        for name in (TAPLOG, FUSE):
            if os.path.exists(os.path.join(base, name)):
                os.unlink(os.path.join(base, name))
        return cls(cluster, uuids)


_template = None


def threeGateways(testcase):
    """
    A fresh copy, in C{testcase.mktemp()}, of the three-gateway cluster
    (built once per process from the fixture's 3-node template, in a
    temporary directory removed at exit).

    @rtype: L{ThreeGateways}
    """
    global _template
    if _template is None:
        root = tempfile.mkdtemp(prefix="annexd-mg3-")
        atexit.register(_rmtree, root)
        cluster = copy_cluster(template_cluster(nodes=3),
                               os.path.join(root, "t"))
        _template = ThreeGateways.build(cluster)
    cluster = copy_cluster(_template.cluster, testcase.mktemp())
    testcase.addCleanup(_make_writable, cluster.base_dir)
    _useDispatcher(cluster)
    return ThreeGateways(cluster, _template.uuids())


def tapRecords(path):
    """
    The tap log: a list of C{(directory, pid, direction, verb, detail)},
    as text (see L{tests.support.p2ptap}).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    records = []
    for line in data.splitlines():
        fields = line.decode("utf-8", "surrogateescape").split("\t", 4)
        if len(fields) == 5:
            records.append(tuple(fields))
    return records


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return "%d: %s" % (pid, f.read().replace(b"\0", b" ").decode(
                "utf-8", "replace"))
    except OSError:
        return "%d: (gone)" % (pid,)


class ThreeGatewayTests(unittest.TestCase):
    """
    P2P sessions and a real client through each gateway of a cluster served
    by annexd (A, B) and git-annex (C).
    """

    timeout = 120

    def setUp(self):
        self.g = threeGateways(self)
        self.cluster = self.g.cluster
        self.env = self.cluster.env
        self.everyNode = {n.uuid for n in self.g.nodes}

    # ---------------------------------------------------------- helpers

    async def session(self, entry, version):
        """
        Open a P2P session with the cluster through gateway C{entry} ("A",
        "B" or "C"), started the way sshd runs the forced command
        (C{-c "git-annex-shell 'p2pstdio' ..."}).

        A C{version} 0 client sends no VERSION at all (a client from before
        VERSION existed: only AUTH-SUCCESS is read, with the client's
        private reply reader); others send C{VERSION version} and no
        BYPASS.
        """
        gateway = self.g.gateways[entry]
        command = "git-annex-shell 'p2pstdio' '%s' '%s' --uuid %s" % (
            gateway, CLIENT_UUID, self.cluster.cluster_uuid)
        if entry == "C":
            executable, args = self.env.gitannex.argv(
                "git-annex-shell", "-c", command)
            peer = "git-annex-shell"
        else:
            executable = sys.executable
            args = [sys.executable, "-m", "annexd.shell", "-c", command]
            peer = "annexd-shell"
        bridge = spawnP2P(reactor, executable, args, dict(self.env.env),
                          peer=peer)
        self.addCleanup(self._end, bridge)
        client = P2PClient(bridge.connection,
                           self.cluster.cluster_uuid.encode())
        if version == 0:
            await client._reply((m.AuthSuccess,), "AUTH-SUCCESS")
            client.version = 0
        else:
            await client.handshake(version)
        self.assertEqual(client.version, version)
        return bridge, client

    async def _end(self, bridge):
        bridge.connection.close()
        await bridge.ended

    def holders(self, key):
        """
        The uuids of the nodes (all five) holding verified content of
        C{key} (sha256 of the object git-annex's contentlocation names).
        """
        digest = key.name.split(b".")[0].decode()
        return {n.uuid for n in self.g.nodes
                if self.contentSha256(n, key.raw.decode()) == digest}

    def contentSha256(self, node, key):
        """
        The sha256 (hex) of the object of C{key} (text) where C{git-annex
        contentlocation} finds it in C{node}, or L{None}.
        """
        where = self.env.run(["git-annex", "contentlocation", key],
                             cwd=node.path, check=False).stdout.decode(
                                 "utf-8", "surrogateescape").strip()
        if not where:
            return None
        with open(os.path.join(node.path, where), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def requests(self, key, *verbs):
        """
        C{{node name: count}} of the requests C{verbs} naming C{key} that
        each node was sent (the tap log); every node is listed.
        """
        names = {n.path: n.name for n in self.g.nodes}
        counts = {n.name: 0 for n in self.g.nodes}
        for where, pid, way, verb, detail in tapRecords(self.g.taplog):
            if (way == ">" and where in names and verb in verbs
                    and detail == key.raw.decode()):
                counts[names[where]] += 1
        return counts

    def gatewaySessions(self):
        """
        What each gateway was sent by the other gateways (the tap log):
        C{{"A": [(version, bypass), ...], ...}}, one entry per session,
        C{bypass} the tuple of gateway letters (or uuids of others) in its
        BYPASS, or L{None} without one.
        """
        letters = {u: w for w, u in self.g.gatewayUUIDs.items()}
        which = {path: w for w, path in self.g.gateways.items()}
        sessions = {}
        for where, pid, way, verb, detail in tapRecords(self.g.taplog):
            if way != ">" or where not in which:
                continue
            entry = sessions.setdefault((which[where], pid), [None, None])
            if verb == "VERSION" and entry[0] is None:
                entry[0] = int(detail)
            elif verb == "BYPASS" and entry[1] is None:
                entry[1] = tuple(sorted(letters.get(u, u)
                                        for u in detail.split()))
        found = {w: [] for w in "ABC"}
        for (w, pid), (version, bypass) in sessions.items():
            found[w].append((version, bypass))
        return {w: sorted(v, key=repr) for w, v in found.items()}

    def dump(self):
        """
        The tap log, readable (for failure messages).
        """
        names = {n.path: n.name for n in self.g.nodes}
        names.update({path: "gw" + w for w, path in self.g.gateways.items()})
        fuse = ""
        if os.path.exists(self.g.fuse):
            with open(self.g.fuse) as f:
                fuse = "LOOP CUT by the fake ssh:\n%s" % (f.read(),)
        return fuse + "\n".join(
            "%s %s %s %s %s" % (names.get(n, n), p, w, v, d[:80])
            for n, p, w, v, d in tapRecords(self.g.taplog))

    def assertCounts(self, counts, expected, what):
        """
        C{expected}: C{{node name: (low, high)}} or one int for exactly that
        many on every node.
        """
        if isinstance(expected, int):
            expected = {name: (expected, expected) for name in counts}
        wrong = {name: counts[name] for name, (low, high) in expected.items()
                 if not low <= counts[name] <= high}
        if wrong:
            self.fail("%s: got %s, expected %s\n%s" % (
                what, counts, expected, self.dump()))

    async def noProcessesLeft(self):
        """
        Every process of the session (gateways, ssh, taps, nodes) ends in a
        bounded time: nothing recursed, nothing lingers.
        """
        if os.path.exists(self.g.fuse):
            with open(self.g.fuse) as f:
                self.fail("a request went round the gateways (cut after %d"
                          " ssh hops):\n%s\n%s" % (MAXHOPS, f.read(),
                                                   self.dump()))
        base = self.cluster.base_dir
        try:
            await pollUntil(lambda: not processesMentioning(base), 20)
        except AssertionError:
            left = processesMentioning(base)
            raise AssertionError("%d processes left:\n%s" % (
                len(left), "\n".join(_cmdline(p) for p in left)))

    async def roundTrip(self, entry, version, puts=1, removes=1):
        """
        PUT a fresh key (1 MiB + 3) to the cluster through C{entry}, then
        REMOVE it: verified content on all five nodes, then on none; each
        node sent the PUT and the REMOVE as many times as C{puts} and
        C{removes} say (see L{assertCounts}); every process gone after the
        session.
        """
        bridge, client = await self.session(entry, version)
        data = os.urandom(MiB + 3)
        key = keyOf(data)
        upload = await client.put(key, b"multi3.bin")
        self.assertEqual(upload.offset, 0)
        upload.receive(len(data)).write(data)
        outcome = await upload.finish(True)
        self.assertTrue(outcome.ok)
        if version >= 2:
            named = {u.decode() for u in outcome.uuids}
            self.assertTrue(self.everyNode <= named, outcome.uuids)
        else:
            # No -PLUS replies below protocol 2.
            self.assertEqual(outcome.uuids, ())
        self.assertEqual(self.holders(key), self.everyNode)
        self.assertCounts(self.requests(key, "PUT"), puts,
                          "PUT through %s" % (entry,))
        self.assertTrue(await client.checkPresent(key))

        removed = await client.remove(key)
        self.assertTrue(removed.ok)
        self.assertEqual(self.holders(key), set())
        self.assertCounts(self.requests(key, "REMOVE", "REMOVE-BEFORE"),
                          removes, "REMOVE through %s" % (entry,))

        await client.close()
        await bridge.ended
        await self.noProcessesLeft()

    def assertAnnexdFanOut(self, entry):
        """
        annexd gateway C{entry} ("A" or "B"), entered by the client, sent
        each other gateway one session at protocol 4 with a BYPASS naming
        itself and the third gateway (which it reaches directly), whatever
        the client's version; and nothing else reached a gateway.
        """
        other = {"A": "B", "B": "A"}[entry]
        self.assertEqual(self.gatewaySessions(), {
            entry: [],
            other: [(4, tuple(sorted((entry, "C"))))],
            "C": [(4, tuple(sorted((entry, other))))]}, self.dump())

    # ------------------------------------------------------------ tests

    async def test_version4ThroughA(self):
        """
        A protocol 4 client PUTs through annexd gateway A: every node of
        all three gateways gets verified content, each node is sent the PUT
        exactly once (A reaches B and C directly and names both in the
        BYPASS it sends each, so neither forwards to the other); the REMOVE
        likewise.
        """
        await self.roundTrip("A", 4)
        self.assertAnnexdFanOut("A")

    async def test_version4ThroughB(self):
        """
        The same through the second annexd gateway, B.
        """
        await self.roundTrip("B", 4)
        self.assertAnnexdFanOut("B")

    async def test_version0ThroughA(self):
        """
        A protocol 0 client (no VERSION, so no BYPASS) through A: the same
        round trip, and no loop: A still speaks protocol 4 with BYPASS to
        the other gateways, each node is sent the PUT once, and every
        process ends.
        """
        await self.roundTrip("A", 0)
        self.assertAnnexdFanOut("A")

    async def test_version1ThroughA(self):
        """
        A protocol 1 client (no BYPASS) through A: as for version 0.
        """
        await self.roundTrip("A", 1)
        self.assertAnnexdFanOut("A")

    async def test_version0ThroughB(self):
        """
        A protocol 0 client through B.
        """
        await self.roundTrip("B", 0)
        self.assertAnnexdFanOut("B")

    async def test_version1ThroughB(self):
        """
        A protocol 1 client through B.
        """
        await self.roundTrip("B", 1)
        self.assertAnnexdFanOut("B")

    async def test_version4ThroughGitAnnex(self):
        """
        A protocol 4 client PUTs through C, git-annex's gateway: every node
        gets verified content, nothing loops, every process ends; but the
        nodes behind A and B may be sent the PUT twice, and are sent the
        REMOVE exactly twice.

        Why (git-annex's limitation, shared/spec/p2p-protocol.md 5.2 and
        5.4, "Multiple paths to one node are not deduplicated"): git-annex's
        gateway sends each other gateway a BYPASS of only itself and its
        client's BYPASS, not the other gateways it reaches directly.  So C
        sends A and B each C{BYPASS C}.  A, seeing only C bypassed, serves
        the cluster through B as well (C{BYPASS A C}), and B through A
        (C{BYPASS B C}): node1..3 are reached by C->A and C->B->A, node4 by
        C->B and C->A->B, node5 by C only.  annexd cannot tell that C also
        reaches the other gateway itself (its BYPASS does not say so), and
        must not guess: in a chain of gateways that would cut nodes off.
        The BYPASS lists do stop every path after at most two gateways, so
        nothing loops.

        So node1..node4 are sent the PUT once per path, twice in practice:
        both paths start at once, and the two transfers to one node race
        (the loser's node hangs up mid-transfer, on git-annex's transfer
        lock, and that path's gateway answers FAILURE for it; the winner's
        content is verified).  Only once is also correct: a gateway leaves
        out a node its location log already shows with the key (as long as
        some other node lacks it, spec 5.3), and a path that starts late
        may see the other path's record.  Hence 1..2.  A REMOVE goes to
        every node of every path regardless of the logs: exactly twice
        behind A and B.  node5 is behind C only: exactly once each.
        """
        twice = {n.name: (1, 2) for n in self.g.nodes if n.name != "node5"}
        twice["node5"] = (1, 1)
        removes = {n.name: (2, 2) for n in self.g.nodes if n.name != "node5"}
        removes["node5"] = (1, 1)
        await self.roundTrip("C", 4, puts=twice, removes=removes)
        self.assertEqual(self.gatewaySessions(), {
            "A": [(4, ("B", "C")), (4, ("C",))],
            "B": [(4, ("A", "C")), (4, ("C",))],
            "C": []}, self.dump())

    async def test_gitAnnexClientThroughA(self):
        """
        A real git-annex client copies a file to the cluster through its
        ordinary remote C{gw} (annexd gateway A): every node of all three
        gateways gets it, once, and the client records them all; C{drop
        --from} the cluster removes it from every node.
        """
        data = os.urandom(MiB + 5)
        key = self.cluster.add_file("copied.bin", data)
        digest = hashlib.sha256(data).hexdigest()
        target = self.cluster.remote_name(self.cluster.name)
        self.cluster.client_annex("copy", "--quiet", "--to", target,
                                  "copied.bin")
        self.assertEqual(
            {n.name: self.contentSha256(n, key) for n in self.g.nodes},
            {n.name: digest for n in self.g.nodes})
        k = Key.parse(key.encode())
        self.assertCounts(self.requests(k, "PUT"), 1, "PUT through A")
        self.assertTrue(self.everyNode <= self.cluster.whereis(key))
        await self.noProcessesLeft()

        self.cluster.client_annex("drop", "--quiet", "--from", target,
                                  "copied.bin")
        self.assertEqual(self.holders(k), set())
        self.assertCounts(self.requests(k, "REMOVE", "REMOVE-BEFORE"), 1,
                          "REMOVE through A")
        self.assertFalse(self.everyNode & self.cluster.whereis(key))
        # The client's own copy is untouched.
        with open(os.path.join(self.cluster.client.path, "copied.bin"),
                  "rb") as f:
            self.assertEqual(f.read(), data)
        await self.noProcessesLeft()


class TapParserTests(unittest.TestCase):
    """
    The tap's framing: lines and DATA payloads.
    """

    def parse(self, *chunks):
        seen = []
        parser = p2ptap.Parser(lambda verb, detail: seen.append(
            (verb, detail)))
        for chunk in chunks:
            parser.feed(chunk)
        return seen

    def test_payloadIsNotLines(self):
        """
        The bytes after C{DATA n} are skipped, however they look, even split
        across reads; the line after them is parsed.
        """
        payload = b"\nPUT x SHA256E-s1--y\nREMOVE k\n"
        stream = (b"PUT a%%b SHA256E-s30--k\nDATA %d\n" % (len(payload),)
                  + payload + b"VALID\r\nREMOVE SHA256E-s30--k\n")
        expected = [(b"PUT", b"SHA256E-s30--k"), (b"DATA", b"%d" % (
            len(payload),)), (b"VALID", b""), (b"REMOVE", b"SHA256E-s30--k")]
        self.assertEqual(self.parse(stream), expected)
        self.assertEqual(self.parse(*[stream[i:i + 1]
                                      for i in range(len(stream))]),
                         expected)

    def test_keyIsLastField(self):
        """
        The key of PUT (empty associated file too), GET and REMOVE-BEFORE is
        the last field; other messages keep their arguments.
        """
        self.assertEqual(self.parse(
            b"PUT  K1\nGET 10 f K2\nREMOVE-BEFORE 99 K3\nBYPASS u1 u2\n"
            b"DATA 0\nINVALID\n"),
            [(b"PUT", b"K1"), (b"GET", b"K2"), (b"REMOVE-BEFORE", b"K3"),
             (b"BYPASS", b"u1 u2"), (b"DATA", b"0"), (b"INVALID", b"")])

    def test_nodeDirectory(self):
        """
        Only p2pstdio sessions are tapped; their directory names the log's
        records.
        """
        self.assertEqual(p2ptap.nodeDirectory(
            ["git-annex-shell", "p2pstdio", "/n/node1.git", "gw", "--uuid",
             "u"]), "/n/node1.git")
        self.assertIsNone(p2ptap.nodeDirectory(["git-upload-pack", "/x"]))
        self.assertIsNone(p2ptap.nodeDirectory(["configlist", "/x"]))
