"""
Twin tests: annexd-shell against git-annex-shell, as the gateway of a real
cluster, seen by a stock git-annex client.

Every scenario runs twice, on two copies of the same cluster template (so
with the same uuids and, for the same content, the same keys): once with the
client's ssh running C{git-annex-shell} (git-annex's own gateway, the
baseline) and once with C{annexd-shell} as the ssh forced command.  After
each step the test records the observable outcome:

  - each command's exit status;
  - for every file: which nodes hold its content with the right SHA-256
    (and whether any holds corrupt content), whether the gateway's own
    repository holds an object (it never should: it only proxies), and
    whether the client holds the right content;
  - the client's C{git annex whereis}: after the commands, and again after
    C{git annex sync gw} (run with the same ssh set-up: it also pushes and
    pulls git branches through the gateway);
  - the gateway's own bookkeeping: the location log of its committed
    C{git-annex} branch (read with plain git, before any git-annex command
    runs there) and C{git annex whereis --key KEY} run in the gateway.

Each outcome must equal the correct one written in the scenario (from the
spec, shared/spec/p2p-protocol.md sections 3 and 5) on both sides, and the
two sides must be equal.  A failure message lists every mismatch, then the
transcript of both sides.

Files: 0 B, 1 B and 4 KiB in every scenario, and 200 MiB (random, written
in 1 MiB chunks once per test and copied into each twin) in the two that
stream the most: C{copy --to} and C{get --from} the cluster.
"""

import hashlib
import json
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass, replace

from twisted.python import log
from twisted.trial import unittest

from tests.support.annex import cluster_for

#: The client's ssh runs git-annex-shell (the fake ssh's default).
BASELINE = ("git-annex-shell", {})

#: The client's ssh runs annexd-shell as a forced command.
ANNEXD = ("annexd-shell", {
    "FAKESSH_FORCED_COMMAND": "%s -m annexd.shell" % (sys.executable,)})

CLUSTER = "gw-mycluster"
NODE2 = "gw-node2"
MIB = 1 << 20
BIG_SIZE = 200 * MIB


# ---------------------------------------------------------------- contents

@dataclass(frozen=True)
class Content:
    """
    A file the client adds: small ones in memory, big ones in a file.
    """

    name: str
    size: int
    sha256: str
    data: bytes = None
    source: str = None

    @classmethod
    def small(cls, name, data):
        return cls(name, len(data), hashlib.sha256(data).hexdigest(), data)

    @classmethod
    def big(cls, path, name="big 200MiB.bin", size=BIG_SIZE):
        """
        Write C{size} random bytes to C{path}, 1 MiB at a time.
        """
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(MIB, left))
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        return cls(name, size, digest.hexdigest(), source=path)

    def writeTo(self, path):
        if self.source is not None:
            shutil.copyfile(self.source, path)
        else:
            with open(path, "wb") as f:
                f.write(self.data)


def smallFiles(tag=""):
    """
    A 0 B, a 1 B and a 4 KiB file (names with spaces: they travel in PUT
    and GET as associated files).  There is only one empty key: give at
    most one set per test an empty file.
    """
    return [Content.small("empty%s" % (tag,), b""),
            Content.small("one byte%s.txt" % (tag,), b"x"),
            Content.small("four KiB%s.bin" % (tag,), os.urandom(4096))]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _removeTree(top):
    # git-annex makes object directories read-only.
    for dirpath, dirnames, _ in os.walk(top):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode) and not mode & stat.S_IWUSR:
                os.chmod(path, stat.S_IMODE(mode) | stat.S_IWUSR)
    shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------- observations

@dataclass(frozen=True)
class FileState:
    """
    The observable state of one file.  Repository sets are sorted tuples of
    names: C{client}, C{gateway}, C{mycluster}, C{node1}...; a node with
    content of the wrong SHA-256 shows as C{nodeN (CORRUPT)}.
    """

    nodes: tuple
    gatewayObject: bool
    client: str
    whereis: tuple
    gatewayBranch: tuple
    gatewayWhereis: tuple


def expect(holders, client, synced=False):
    """
    The correct L{FileState} when the nodes C{holders} have the content and
    the client has it (C{client} true) or not.

      - The client's whereis lists itself, the nodes, and the cluster when
        any node has the content (section 5.6: the client logs the cluster
        and the PLUS list; cluster presence is inferred from cluster.log).
      - The gateway's committed branch records exactly the nodes (5.6:
        never a cluster uuid, never itself), and the gateway never keeps
        an object of its own (it wants nothing).
      - The gateway's whereis shows the nodes and the cluster.
      - After C{sync gw} (C{synced}) the gateway has merged the client's
        pushed C{synced/git-annex} (git-annex's post-receive hook in the
        gateway does it), so its branch and its whereis also list the
        client when the client has the content.
    """
    holders = tuple(sorted(holders))
    cluster = ("mycluster",) if holders else ()
    me = ("client",) if client else ()
    return FileState(
        nodes=holders,
        gatewayObject=False,
        client="ok" if client else "absent",
        whereis=tuple(sorted(holders + cluster + me)),
        gatewayBranch=tuple(sorted(holders + (me if synced else ()))),
        gatewayWhereis=tuple(sorted(
            holders + cluster + (me if synced else ()))))


ALL = ("node1", "node2", "node3")


class Side:
    """
    One twin: a fresh cluster, reached through one gateway implementation,
    and what was observed on it.

    @ivar steps: C{(what, expected, observed, twin)} for every command and
        snapshot, in order; C{twin} is false for the observations in which
        the two gateways legitimately differ (not compared across twins).
    """

    def __init__(self, testcase, label, extraEnv):
        self.label = label
        self.extraEnv = dict(extraEnv)
        self.cluster = cluster_for(testcase, nodes=3)
        c = self.cluster
        self.names = {c.client.uuid: "client", c.gateway.uuid: "gateway",
                      c.cluster_uuid: c.name}
        self.names.update((n.uuid, n.name) for n in c.nodes)
        self.keys = {}
        self.steps = []
        self.transcript = []
        self.seconds = 0.0

    def _name(self, uuid):
        return self.names.get(uuid, uuid)

    # -- commands ----------------------------------------------------------

    def annex(self, *args, expected=0):
        """
        Run C{git annex ARGS} in the client, with this side's ssh set-up,
        and record its exit status.
        """
        c = self.cluster
        started = time.monotonic()
        result = c.env.run(["git", "annex", *args], cwd=c.client.path,
                           env=self.extraEnv, check=False)
        took = time.monotonic() - started
        self.seconds += took
        what = "git annex " + " ".join(args)
        self.steps.append((what, expected, result.returncode, True))
        self.transcript.append("$ %s  -> exit %s (%.1fs)\n%s%s" % (
            what, result.returncode, took,
            _indent(result.stdout), _indent(result.stderr)))
        return result

    def sync(self):
        """
        C{git annex sync gw}: pull the gateway's branches, push the
        client's.
        """
        return self.annex("sync", "--quiet", "gw")

    def add(self, contents):
        """
        Write, C{git annex add} and commit C{contents} in the client (no
        gateway involved); remember their keys.
        """
        c = self.cluster
        for content in contents:
            content.writeTo(os.path.join(c.client.path, content.name))
        c.client_annex("add", "--quiet", "--",
                       *[content.name for content in contents])
        c.client_git("commit", "-q", "-m", "add files")
        for content in contents:
            self.keys[content.name] = c.client_annex(
                "lookupkey", "--", content.name).strip()

    # -- observation -------------------------------------------------------

    @property
    def isAnnexd(self):
        return self.label == ANNEXD[0]

    def snapshot(self, what, expected, twin=True):
        """
        Record the state of every file in C{expected} (a C{{Content:
        FileState}}) next to the state it should be in.

        @param twin: whether the other twin must observe the same (false
            where the gateways legitimately differ: each side is then only
            checked against its own C{expected}).
        """
        # The gateway's committed branch first: any git-annex command run
        # in the gateway could commit a journal it left behind.
        branch = {content: self._gatewayBranch(self.keys[content.name])
                  for content in expected}
        for content, state in expected.items():
            key = self.keys[content.name]
            observed = FileState(
                nodes=self._nodes(content, key),
                gatewayObject=self.cluster.node_has(self.cluster.gateway, key),
                client=self._client(content),
                whereis=tuple(sorted(
                    self._name(u) for u in self.cluster.whereis(key))),
                gatewayBranch=branch[content],
                gatewayWhereis=self._gatewayWhereis(key))
            self.steps.append(("%s: %s" % (what, content.name), state,
                               observed, twin))

    def _nodes(self, content, key):
        found = []
        for node in self.cluster.nodes:
            digest = self.cluster.node_sha256(node, key)
            if digest == content.sha256:
                found.append(node.name)
            elif digest is not None:
                found.append("%s (CORRUPT)" % (node.name,))
        return tuple(sorted(found))

    def _client(self, content):
        try:
            digest = _sha256(os.path.join(self.cluster.client.path,
                                          content.name))
        except FileNotFoundError:
            return "absent"
        return "ok" if digest == content.sha256 else "CORRUPT"

    def _gatewayBranch(self, key):
        """
        The repositories the location log of C{key} in the gateway's
        committed C{git-annex} branch shows as present (latest line per
        uuid).
        """
        hashed = hashlib.md5(key.encode("utf-8")).hexdigest()
        path = "%s/%s/%s.log" % (hashed[:3], hashed[3:6], key)
        result = self.cluster.env.run(
            ["git", "cat-file", "-p", "refs/heads/git-annex:" + path],
            cwd=self.cluster.gateway.path, check=False)
        if result.returncode != 0:
            return ()
        latest = {}
        for line in result.stdout.decode("utf-8").splitlines():
            stamp, status, uuid = line.split(None, 2)
            stamp = float(stamp.rstrip("s"))
            if uuid not in latest or stamp >= latest[uuid][0]:
                latest[uuid] = (stamp, status)
        return tuple(sorted(self._name(u) for u, (_, status)
                            in latest.items() if status == "1"))

    def _gatewayWhereis(self, key):
        result = self.cluster.env.run(
            ["git-annex", "whereis", "--json", "--key", key],
            cwd=self.cluster.gateway.path, check=False)
        try:
            info = json.loads(result.stdout.splitlines()[0])
        except (IndexError, ValueError):
            return ("<whereis failed: %r>" % (result.stderr,),)
        return tuple(sorted(
            self._name(entry["uuid"])
            for entry in info.get("whereis", []) + info.get("untrusted", [])))


def _indent(output):
    text = output.decode("utf-8", "replace").strip("\n")
    if not text:
        return ""
    # Progress meters rewrite lines with carriage returns.
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "".join("    %s\n" % (line,) for line in lines[-15:])


# -------------------------------------------------------------------- tests

class GatewayTwinTests(unittest.TestCase):
    """
    The same client commands through git-annex-shell and annexd-shell give
    the same, correct, observable outcome.
    """

    timeout = 400

    def twins(self, scenario, big=False):
        """
        Run C{scenario(side)} on a baseline twin and an annexd twin and
        check both against the expectations the scenario recorded, and
        against each other.
        """
        sides = [Side(self, label, env) for label, env in (BASELINE, ANNEXD)]
        for side in sides:
            scenario(side)
            log.msg("%s: %s spent %.1fs in client commands" % (
                self.id(), side.label, side.seconds))
        baseline, annexd = sides
        problems = []
        for side in sides:
            for what, expected, observed, _ in side.steps:
                if expected != observed:
                    problems.append("%s: %s\n    expected %r\n    observed %r"
                                    % (side.label, what, expected, observed))
        if [s[0] for s in baseline.steps] != [s[0] for s in annexd.steps]:
            problems.append("the twins ran different steps")
        for (what, _, theirs, twin), (_, _, ours, _) in zip(baseline.steps,
                                                           annexd.steps):
            if twin and theirs != ours:
                problems.append("twins differ at %s\n    %s: %r\n    %s: %r"
                                % (what, baseline.label, theirs,
                                   annexd.label, ours))
        if baseline.keys != annexd.keys:
            problems.append("twins have different keys: %r / %r" % (
                baseline.keys, annexd.keys))
        if problems:
            self.fail("\n".join(problems) + "".join(
                "\n\n===== transcript (%s, %s)\n%s" % (
                    side.label, side.cluster.base_dir,
                    "".join(side.transcript))
                for side in sides))
        if big:
            # Passed: do not leave 2 GiB of 200 MiB copies in _trial_temp.
            for side in sides:
                _removeTree(side.cluster.base_dir)

    def bigFile(self):
        """
        The 200 MiB content of this test, generated once for both twins.
        """
        path = self.mktemp()
        self.addCleanup(lambda: os.path.exists(path) and os.remove(path))
        return Content.big(path)

    def test_copyToCluster(self):
        """
        C{copy --to gw-mycluster} of 0 B, 1 B, 4 KiB and 200 MiB files puts
        verified content on all 3 nodes and none on the gateway; the client
        records the cluster and every node (SUCCESS-PLUS) and the gateway's
        own git-annex branch records the 3 nodes, before and after
        C{sync gw}.
        """
        files = smallFiles() + [self.bigFile()]
        names = [f.name for f in files]

        def scenario(side):
            side.add(files)
            side.snapshot("added", {f: expect((), True) for f in files})
            side.annex("copy", "--to", CLUSTER, *names)
            side.snapshot("copied", {f: expect(ALL, True) for f in files})
            side.sync()
            side.snapshot("synced", {f: expect(ALL, True, synced=True)
                                     for f in files})

        self.twins(scenario, big=True)

    def test_getFromCluster(self):
        """
        After C{copy --to gw-mycluster} and a local C{drop} (proved by a
        lock on a proxied node), C{get --from gw-mycluster} brings back
        identical content for 0 B, 1 B, 4 KiB and 200 MiB files; the nodes
        keep theirs.
        """
        files = smallFiles() + [self.bigFile()]
        names = [f.name for f in files]

        def scenario(side):
            side.add(files)
            side.annex("copy", "--to", CLUSTER, *names)
            side.annex("drop", *names)
            side.snapshot("dropped locally",
                          {f: expect(ALL, False) for f in files})
            side.annex("get", "--from", CLUSTER, *names)
            side.snapshot("got", {f: expect(ALL, True) for f in files})
            side.sync()
            side.snapshot("synced", {f: expect(ALL, True, synced=True)
                                     for f in files})

        self.twins(scenario, big=True)

    def test_dropFromCluster(self):
        """
        C{drop --from gw-mycluster} removes the content from every node
        (the client keeps its copy); the client and the gateway's branch
        then record no node.  A local C{drop} must then fail (exit 1, no
        other copy can be proved) and keep the content.
        """
        files = smallFiles()
        names = [f.name for f in files]

        def scenario(side):
            side.add(files)
            side.annex("copy", "--to", CLUSTER, *names)
            side.snapshot("copied", {f: expect(ALL, True) for f in files})
            side.annex("drop", "--from", CLUSTER, *names)
            side.snapshot("dropped from the cluster",
                          {f: expect((), True) for f in files})
            side.annex("drop", *names, expected=1)
            side.snapshot("refused local drop",
                          {f: expect((), True) for f in files})
            side.sync()
            side.snapshot("synced", {f: expect((), True, synced=True)
                                     for f in files})

        self.twins(scenario)

    def test_moveToCluster(self):
        """
        C{move --to gw-mycluster} leaves verified content on all 3 nodes
        and none in the client, which no longer lists itself in whereis.
        """
        files = smallFiles()
        names = [f.name for f in files]

        def scenario(side):
            side.add(files)
            side.annex("move", "--to", CLUSTER, *names)
            side.snapshot("moved", {f: expect(ALL, False) for f in files})
            side.sync()
            side.snapshot("synced", {f: expect(ALL, False, synced=True)
                                     for f in files})

        self.twins(scenario)

    def test_proxiedNode(self):
        """
        Through the single proxied node C{gw-node2}: C{copy --to} puts the
        content on node2 only; after a local drop, both
        C{get --from gw-mycluster} (which must find the one node that has
        it) and C{get --from gw-node2} bring it back; C{drop --from
        gw-node2} removes it from node2.  The gateway's branch follows
        node2 at each step.
        """
        files = smallFiles()
        names = [f.name for f in files]
        node2 = ("node2",)

        def scenario(side):
            side.add(files)
            side.annex("copy", "--to", NODE2, *names)
            side.snapshot("copied to node2",
                          {f: expect(node2, True) for f in files})
            side.annex("drop", *names)
            side.snapshot("dropped locally",
                          {f: expect(node2, False) for f in files})
            side.annex("get", "--from", CLUSTER, *names)
            side.snapshot("got from the cluster",
                          {f: expect(node2, True) for f in files})
            side.annex("drop", *names)
            side.annex("get", "--from", NODE2, *names)
            side.snapshot("got from node2",
                          {f: expect(node2, True) for f in files})
            side.annex("drop", "--from", NODE2, *names)
            side.snapshot("dropped from node2",
                          {f: expect((), True) for f in files})
            side.sync()
            side.snapshot("synced", {f: expect((), True, synced=True)
                                     for f in files})

        self.twins(scenario)

    def test_whereisAfterSync(self):
        """
        Content placed through the gateway in different ways shows up with
        exactly the right uuids in the gateway's own branch and whereis
        (before any sync) and in the client's whereis after C{sync gw}:

          - "all": C{copy --to gw-mycluster} -> the 3 nodes;
          - "node2": C{copy --to gw-node2} -> node2;
          - "partial": C{copy --to gw-mycluster}, C{drop --from gw-node1}
            -> node2 and node3;
          - "again": C{copy --to}, C{drop --from}, C{copy --to
            gw-mycluster} in quick succession (the gateway's log changes
            three times within seconds) -> the 3 nodes.

        Then C{move --from gw-mycluster} of "all" empties the nodes and
        brings the content to the client, and a second sync must agree.
        """
        # One set of 0 B / 1 B / 4 KiB files; the other placements get
        # their own 1 B and 4 KiB contents (there is only one empty key).
        placed = {"all": smallFiles(),
                  "node2": [Content.small("one byte node2.txt", b"2"),
                            Content.small("four KiB node2.bin",
                                          os.urandom(4096))],
                  "partial": [Content.small("one byte partial.txt", b"p"),
                              Content.small("four KiB partial.bin",
                                            os.urandom(4096))],
                  "again": [Content.small("one byte again.txt", b"a"),
                            Content.small("four KiB again.bin",
                                          os.urandom(4096))]}
        holders = {"all": ALL, "node2": ("node2",),
                   "partial": ("node2", "node3"), "again": ALL}
        files = [f for group in placed.values() for f in group]

        def names(group):
            return [f.name for f in placed[group]]

        def expected(synced, overrides={}):
            return {f: overrides.get(group, expect(holders[group], True,
                                                   synced))
                    for group in placed for f in placed[group]}

        def scenario(side):
            side.add(files)
            side.annex("copy", "--to", CLUSTER,
                       *names("all") + names("partial") + names("again"))
            side.annex("copy", "--to", NODE2, *names("node2"))
            side.annex("drop", "--from", "gw-node1", *names("partial"))
            side.annex("drop", "--from", CLUSTER, *names("again"))
            side.annex("copy", "--to", CLUSTER, *names("again"))
            side.snapshot("placed", expected(False))
            side.sync()
            side.snapshot("synced", expected(True))
            side.annex("drop", *names("all"))
            side.annex("move", "--from", CLUSTER, *names("all"))
            side.sync()
            side.snapshot("moved back and synced", expected(
                True, {"all": expect((), True, synced=True)}))

        self.twins(scenario)

    def test_nodeAlreadyHasContent(self):
        """
        Where the two gateways legitimately differ: a node (node1) already
        has the content, put there directly (the client's C{node1path}
        remote), so the gateway's location log does not know it.

        Both gateways answer a cluster CHECKPRESENT from their location log
        (no node logged: no), so both copy to the cluster and node1 answers
        ALREADY-HAVE.  git-annex's gateway leaves such nodes out of its
        SUCCESS-PLUS (spec 5.3); annexd lists every node that holds the
        content, old or new (router/cluster.py), so its records are the
        complete ones:

          - "checked", C{copy --to gw-mycluster}: both put the content on
            node2 and node3; git-annex's gateway records node2 and node3
            only (node1 is recorded nowhere but the client), annexd records
            all three, in the client and in the gateway's branch.
          - "fast", the client also believes node1 lacks it (setpresentkey
            0) and runs C{copy --fast --to gw-mycluster} (no CHECKPRESENT):
            the same, and with git-annex's gateway the client (and the
            gateway's branch) wrongly believe node1 lacks the content;
            annexd's records are right.

        The commands' exit statuses and the files' contents on the nodes
        (for "fast") are still compared across the twins.
        """
        checked = Content.small("checked.bin", os.urandom(4096))
        fast = Content.small("fast.bin", os.urandom(4096))

        def scenario(side):
            side.add([checked, fast])
            side.annex("copy", "--to", "node1path", checked.name, fast.name)
            side.annex("setpresentkey", side.keys[fast.name],
                       side.cluster.nodes[0].uuid, "0")
            side.annex("copy", "--to", CLUSTER, checked.name)
            side.annex("copy", "--fast", "--to", CLUSTER, fast.name)
            if side.isAnnexd:
                states = {checked: expect(ALL, True), fast: expect(ALL, True)}
            else:
                # Not recorded anywhere: node1 (gateway, both files; the
                # client, "fast").
                states = {
                    checked: replace(expect(ALL, True),
                                     gatewayBranch=("node2", "node3"),
                                     gatewayWhereis=("mycluster", "node2",
                                                     "node3")),
                    fast: replace(expect(ALL, True),
                                  whereis=("client", "mycluster", "node2",
                                           "node3"),
                                  gatewayBranch=("node2", "node3"),
                                  gatewayWhereis=("mycluster", "node2",
                                                  "node3"))}
            side.snapshot("copied", states, twin=False)
            side.sync()
            # The gateway now has the client's records too.
            synced = {}
            for content, state in states.items():
                gotClient = tuple(sorted(set(state.whereis) - {"mycluster"}))
                synced[content] = replace(
                    state, gatewayBranch=gotClient,
                    gatewayWhereis=state.whereis)
            side.snapshot("synced", synced, twin=False)

        self.twins(scenario)
