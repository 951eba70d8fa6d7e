"""
Tests for L{annexd.annex}: the log parsers against the examples and tie
rules of shared/spec/annex-state.md, and the branch reader, location logs
and gateway state against real git-annex repositories
(L{tests.support.annex}).
"""

import os
from fractions import Fraction

from twisted.internet import defer
from twisted.trial import unittest

from annexd.annex import logs
from annexd.annex.branch import (
    BranchReader, CatFileError, branchFileName, cutTornAppend, findGitDir,
    journalFileName)
from annexd.annex.location import (
    CommitError, LocationLog, commitJournal, hashDirLower, keyFileName,
    locationLogPath)
from annexd.annex.state import (
    DEFAULT_DISK_RESERVE, GatewayState, RemoteConfig, parseGitBool,
    parseGitConfig, parseSize)
from annexd.protocol.keys import Key
from tests.support.annex import cluster_for

U1 = b"11111111-1111-4111-8111-111111111111"
U2 = b"22222222-2222-4222-8222-222222222222"
U3 = b"33333333-3333-4333-8333-333333333333"
CLUSTER = b"ac4fd4b6-7257-8c6e-999a-245400d583c3"

#: Keys whose location log paths are checked against real git-annex.
ODD_KEYS = [
    b"WORM--test",
    b"URL--https://example.com/a%20b&c",
    b"WORM-s0-m1700000000--dir/with:colon&amp%pct",
    b"SHA256-s1048576-S262144-C2--59fdd34a0b323f6044e147b843d8ca246a9414d2"
    b"c7a06c8e95a7e04c3cdaf395",
    b"WORM--a_b__c",
    "WORM-s12-m1600000000--\u00fcber-\u00fcn\u00efc\u00f6d\u00e9.txt"
    .encode("utf-8"),
    b"MD5-s5--5d41402abc4b2a76b9719d911017c592",
]


class TimestampTests(unittest.TestCase):
    """
    Vector clocks: L{logs.parseTimestamp}, L{logs.formatTimestamp} and
    L{logs.UNKNOWN}.
    """

    def test_forms(self):
        """
        Whole seconds with or without C{s}, exact fractions, and signs are
        read; anything else is not a timestamp.
        """
        p = logs.parseTimestamp
        self.assertEqual(p(b"1795539866s"), 1795539866)
        self.assertEqual(p(b"1795539866"), 1795539866)
        self.assertEqual(p(b"1795540000.25s"),
                         Fraction(1795540000) + Fraction(1, 4))
        self.assertEqual(p(b"-3s"), -3)
        self.assertEqual(p(b"-1.5"), Fraction(-3, 2))
        for bad in (b"", b"s", b"1.s", b".5", b"1x", b"1 s", b"1ss", b"x1"):
            self.assertIsNone(p(bad), bad)

    def test_exactFraction(self):
        """
        Fractions are exact decimals (C{.25} beats C{.125}), truncated to
        picoseconds like git-annex's C{POSIXTime}.
        """
        p = logs.parseTimestamp
        self.assertGreater(p(b"10.25"), p(b"10.125"))
        self.assertEqual(p(b"1795539866.000000000001s") - 1795539866,
                         Fraction(1, 10 ** 12))
        self.assertEqual(p(b"1.0000000000019"), p(b"1.000000000001"))

    def test_format(self):
        """
        Clocks are written as git-annex writes them, keeping fractions.
        """
        f = logs.formatTimestamp
        self.assertEqual(f(Fraction(1795539866)), b"1795539866s")
        self.assertEqual(f(1), b"1s")
        self.assertEqual(f(logs.parseTimestamp(b"1795539866.000000000001")),
                         b"1795539866.000000000001s")
        self.assertEqual(f(logs.parseTimestamp(b"1431286201.113452s") + 1),
                         b"1431286202.113452s")
        self.assertEqual(f(Fraction(-3, 2)), b"-1.5s")
        self.assertEqual(f(logs.UNKNOWN), b"0")

    def test_unknownSortsFirst(self):
        """
        L{logs.UNKNOWN} sorts before every real timestamp, even negative.
        """
        self.assertLess(logs.UNKNOWN, Fraction(-10 ** 9))
        self.assertGreater(Fraction(0), logs.UNKNOWN)
        self.assertEqual(sorted([Fraction(1), logs.UNKNOWN, Fraction(0)]),
                         [logs.UNKNOWN, 0, 1])
        self.assertEqual(logs.UNKNOWN, logs.UNKNOWN)
        self.assertNotEqual(logs.UNKNOWN, 0)

    def test_splitLines(self):
        """
        Any run of CR and LF ends a line; empty lines vanish.
        """
        self.assertEqual(logs.splitLines(b"a\r\r\nb\n\n\rc"), [b"a", b"b", b"c"])
        self.assertEqual(logs.splitLines(b""), [])


class UUIDLogTests(unittest.TestCase):
    """
    Old- and new-format uuid logs, map logs and single value logs.
    """

    def test_oldFormat(self):
        """
        The value is the exact text between the uuid and the timestamp
        suffix; C{UUID  timestamp=T} has an empty value.
        """
        data = (b"4524e616-0aec-4784-bf8e-2880bd658388 g timestamp=1795540144s\n"
                + U1 + b"  timestamp=1795540145s\n"
                + U2 + b" two  words timestamp=1s\n")
        self.assertEqual(logs.parseOldUUIDLog(data), {
            b"4524e616-0aec-4784-bf8e-2880bd658388": b"g",
            U1: b"",
            U2: b"two  words",
        })

    def test_oldFormatMissingTimestamp(self):
        """
        A line without a valid C{timestamp=} suffix has an Unknown clock
        (losing to any timestamped line) and the rest of the line as value.
        """
        data = (U1 + b" new timestamp=5s\n" + U1 + b" old\n"
                + U2 + b" a timestamp=bad\n" + U3 + b"\n")
        entries = logs.parseOldUUIDLogEntries(data)
        self.assertEqual(entries[U1], (5, b"new"))
        self.assertEqual(entries[U2], (logs.UNKNOWN, b"a timestamp=bad"))
        self.assertEqual(entries[U3], (logs.UNKNOWN, b""))

    def test_oldFormatTies(self):
        """
        The newest line wins, and on a tie the later line.
        """
        data = (U1 + b" first timestamp=10s\n" + U1 + b" second timestamp=10s\n"
                + U2 + b" newer timestamp=11s\n" + U2 + b" older timestamp=10s\n")
        self.assertEqual(logs.parseOldUUIDLog(data),
                         {U1: b"second", U2: b"newer"})

    def test_oldFormatNewLineIgnored(self):
        """
        A new-format line in an old-format log is misread with its
        timestamp as the uuid, and so does not change the real uuid.
        """
        data = U1 + b" x timestamp=1s\n1795540343s " + U1 + b" y\n"
        result = logs.parseOldUUIDLog(data)
        self.assertEqual(result[U1], b"x")

    def test_newFormat(self):
        """
        C{T UUID VALUE}: the newest wins, the later line on a tie; a line
        needs the space after the uuid; bad lines are skipped.
        """
        data = (b"10s " + U1 + b" a\n"
                b"10s " + U1 + b" b\n"
                b"12s " + U2 + b" new\n"
                b"11s " + U2 + b" old\n"
                b"13s " + U3 + b"\n"
                b"garbage\n"
                b"14 " + U3 + b" \n")
        self.assertEqual(logs.parseNewUUIDLog(data),
                         {U1: b"b", U2: b"new", U3: b""})

    def test_mapLog(self):
        """
        C{group-preferred-content.log}: C{T GROUP EXPR}, later line on ties.
        """
        data = (b"1s backup anything\n2s archive not copies=archive:1\n"
                b"2s archive present\n")
        self.assertEqual(logs.parseMapLog(data),
                         {b"backup": b"anything", b"archive": b"present"})
        self.assertEqual(logs.parseMapLogEntries(data)[b"backup"],
                         (1, b"anything"))

    def test_singleValue(self):
        """
        The largest (T, VALUE) wins: on a tie the larger value.
        """
        self.assertEqual(logs.parseSingleValueLog(b"1s b\n2s a\n2s c\n"), b"c")
        self.assertEqual(logs.parseSingleValueLog(b"3s z\n2s zz\n"), b"z")
        self.assertIsNone(logs.parseSingleValueLog(b"bad\n"))

    def test_numCopies(self):
        """
        numcopies values compare as numbers; values below 1 read as 1; no
        entry is L{None}.
        """
        self.assertEqual(logs.parseNumCopiesLog(b"5s 10\n5s 9\n"), 10)
        self.assertEqual(logs.parseNumCopiesLog(b"1s 3\n2s 0\n"), 1)
        self.assertEqual(logs.parseNumCopiesLog(b"1s 3\n2s x\n"), 3)
        self.assertIsNone(logs.parseNumCopiesLog(b""))

    def test_trust(self):
        """
        C{1}, C{0}, C{X}, C{?}, unknown characters and empty values of
        C{trust.log}; longer values are bad lines.
        """
        data = (U1 + b" 1 timestamp=1s\n" + U2 + b" X timestamp=1s\n"
                + U3 + b" 0 timestamp=1s\n"
                b"u4 ? timestamp=1s\nu5 Z timestamp=1s\nu6\n"
                b"u7 11 timestamp=1s\n")
        self.assertEqual(logs.parseTrustLog(data), {
            U1: logs.TRUSTED, U2: logs.DEAD, U3: logs.UNTRUSTED,
            b"u4": logs.SEMITRUSTED, b"u5": logs.SEMITRUSTED,
            b"u6": logs.TRUSTED})

    def test_groups(self):
        """
        Groups are split on runs of spaces; empty (after C{dead}) is none.
        """
        data = (U1 + b" a  b timestamp=1s\n" + U2 + b"  timestamp=2s\n")
        self.assertEqual(logs.parseGroupLog(data),
                         {U1: frozenset({"a", "b"}), U2: frozenset()})

    def test_preferredContent(self):
        """
        A preferred content expression is the rest of the line.
        """
        data = U1 + b" include=*.mp3 or balanced=g:2 timestamp=1795692895s\n"
        self.assertEqual(logs.parsePreferredContentLog(data),
                         {U1: "include=*.mp3 or balanced=g:2"})

    def test_maxSize(self):
        """
        C{maxsize.log}: C{T UUID BYTES}.
        """
        data = (b"1795540233s 4524e616-0aec-4784-bf8e-2880bd658388 93000\n"
                b"1s " + U1 + b" x\n")
        self.assertEqual(logs.parseMaxSizeLog(data),
                         {b"4524e616-0aec-4784-bf8e-2880bd658388": 93000})

    def test_remoteLog(self):
        """
        C{remote.log} values are C{k=v} words with C{&NN;} escapes.
        """
        data = (U1 + b" name=my&32;remote type=directory directory=/a&38;b"
                b" encryption=none timestamp=1s\n"
                + U2 + b" name=x sameas-uuid=" + U1 + b" encryption=shared"
                b" bare timestamp=2s\n")
        configs = logs.parseRemoteLog(data)
        self.assertEqual(configs[U1], {
            "name": "my remote", "type": "directory", "directory": "/a&b",
            "encryption": "none"})
        self.assertEqual(configs[U2]["bare"], "")
        inherited = logs.inheritSameas(configs)
        self.assertEqual(inherited[U2]["encryption"], "none")
        self.assertEqual(inherited[U2]["name"], "x")


class PresenceLogTests(unittest.TestCase):
    """
    Presence (location) logs.
    """

    def test_parse(self):
        """
        C{T S INFO} lines; the newest line per uuid wins.
        """
        data = (b"1795541854s 1 ac81b4be-298d-4c9c-8a14-7bb25957fdf2\n"
                b"10s 1 " + U1 + b"\n11s 0 " + U1 + b"\n"
                b"10.25s 1 " + U2 + b"\n10.125s 0 " + U2 + b"\n")
        self.assertEqual(logs.parsePresenceLog(data), {
            b"ac81b4be-298d-4c9c-8a14-7bb25957fdf2": (1795541854, b"1"),
            U1: (11, b"0"),
            U2: (logs.parseTimestamp(b"10.25"), b"1"),
        })
        self.assertEqual(logs.presentUUIDs(data), {
            b"ac81b4be-298d-4c9c-8a14-7bb25957fdf2", U2})

    def test_firstLineWinsTies(self):
        """
        Unlike uuid logs, on equal timestamps the B{first} line wins.
        """
        self.assertEqual(logs.presentUUIDs(b"5s 1 " + U1 + b"\n5s 0 " + U1 + b"\n"),
                         {U1})
        self.assertEqual(logs.presentUUIDs(b"5s 0 " + U1 + b"\n5s 1 " + U1 + b"\n"),
                         set())

    def test_badLinesSkipped(self):
        """
        Unparseable lines are skipped one by one; CR LF and CR end lines.
        """
        data = (b"5s 1 " + U1 + b"\r\nnonsense\r5s 2 " + U2 + b"\n5s 1\n"
                b"x 1 " + U3 + b"\n6s X " + U3 + b"\n")
        self.assertEqual(logs.parsePresenceLog(data),
                         {U1: (5, b"1"), U3: (6, b"X")})

    def test_build(self):
        """
        L{logs.buildPresenceLog} writes one line per uuid sorted by uuid.
        """
        entries = {U2: (Fraction(7), b"0"), U1: (Fraction(9), b"1")}
        self.assertEqual(logs.buildPresenceLog(entries),
                         b"9s 1 " + U1 + b"\n7s 0 " + U2 + b"\n")


class ClusterProxyLogTests(unittest.TestCase):
    """
    Cluster uuids, C{proxy.log} and C{cluster.log}.
    """

    def test_isClusterUUID(self):
        """
        Only uuids starting with C{ac} and with C{8} at index 14 are
        clusters.
        """
        self.assertTrue(logs.isClusterUUID(CLUSTER))
        self.assertFalse(logs.isClusterUUID(
            b"ac81b4be-298d-4c9c-8a14-7bb25957fdf2"))
        self.assertFalse(logs.isClusterUUID(U1))
        self.assertFalse(logs.isClusterUUID(b"AC4fd4b6-7257-8c6e"))
        self.assertFalse(logs.isClusterUUID(b"ac"))
        self.assertFalse(logs.isClusterUUID(b""))

    def test_legalRemoteNames(self):
        """
        git-annex's legal remote names.
        """
        for name in ("n1", "my-cluster", "a.b", "x_y", "\u00fcber"):
            self.assertTrue(logs.isLegalRemoteName(name), name)
        for name in ("", ".a", "-a", "a/b", "a b", "a:b", "a\x1b"):
            self.assertFalse(logs.isLegalRemoteName(name), name)

    def test_proxyLog(self):
        """
        The spec's example, with an illegal name dropped and a tie.
        """
        c3 = b"c3d997a3-0000-4000-8000-000000000000"
        data = (b"1795540343s " + c3 + b" 9161125c-0000:n2 " + CLUSTER
                + b":mycluster ac81b4be-0000:n3 b740704c-0000:n1"
                b" deadbeef:../evil\n"
                b"5s " + U1 + b" " + U2 + b":a\n"
                b"5s " + U1 + b" " + U2 + b":b\n")
        result = logs.parseProxyLog(data)
        self.assertEqual(result[c3], tuple(sorted([
            (b"9161125c-0000", "n2"), (CLUSTER, "mycluster"),
            (b"ac81b4be-0000", "n3"), (b"b740704c-0000", "n1")])))
        self.assertEqual(result[U1], ((U2, "b"),))

    def test_proxyLogBadWord(self):
        """
        A word without C{:} makes the whole line unparseable.
        """
        self.assertEqual(logs.parseProxyLog(b"1s " + U1 + b" " + U2 + b"\n"),
                         {})

    def test_clusterLog(self):
        """
        The spec's example; keys that are not cluster uuids are ignored;
        the newest line wins.
        """
        data = (b"1795540343s " + CLUSTER + b" 9161125c ac81b4be b740704c\n"
                b"1795540343s " + U1 + b" " + U2 + b"\n"
                b"1s " + CLUSTER + b" old\n")
        self.assertEqual(logs.parseClusterLog(data), {
            CLUSTER: frozenset([b"9161125c", b"ac81b4be", b"b740704c"])})
        self.assertEqual(
            logs.parseClusterLog(b"1s " + CLUSTER + b" \n"),
            {CLUSTER: frozenset()})


class PathTests(unittest.TestCase):
    """
    Location log paths and journal file names.
    """

    def test_journalNames(self):
        """
        C{_} is doubled, C{/} becomes C{_}, and the inverse reads it back.
        """
        self.assertEqual(journalFileName("2d5/f2a/WORM-s0-x&ccolon.log"),
                         "2d5_f2a_WORM-s0-x&ccolon.log")
        self.assertEqual(journalFileName("a/b_c/d__e"), "a_b__c_d____e")
        for path in ("a/b_c/d__e", "uuid.log", "a_/b", "_a_/b"):
            self.assertEqual(branchFileName(journalFileName(path)), path)

    def test_specExamples(self):
        """
        The spec's examples of location log paths.
        """
        self.assertEqual(locationLogPath(b"WORM--test"),
                         "39f/be7/WORM--test.log")
        self.assertEqual(locationLogPath(b"URL--https://example.com/a%20b&c"),
                         "d63/d28/URL--https&c%%example.com%a&s20b&ac.log")
        self.assertEqual(locationLogPath(ODD_KEYS[3]),
                         "d09/45c/" + ODD_KEYS[3].decode() + ".log")
        self.assertEqual(locationLogPath(Key.parse(b"WORM--test")),
                         "39f/be7/WORM--test.log")

    def test_keyFileName(self):
        """
        Keys are escaped only when they hold one of C{& % : /}, and then
        like L{Key.fileName}.
        """
        self.assertEqual(keyFileName(b"WORM--a_b"), b"WORM--a_b")
        key = b"WORM--dir/with:colon&amp%pct"
        self.assertEqual(keyFileName(key), Key.parse(key).fileName())

    def test_cutTornAppend(self):
        """
        Journal content is cut back to its last newline.
        """
        self.assertEqual(cutTornAppend(b"a\nb\npart"), b"a\nb\n")
        self.assertEqual(cutTornAppend(b"part"), b"")
        self.assertEqual(cutTornAppend(b"a\n"), b"a\n")
        self.assertEqual(cutTornAppend(b""), b"")

    def test_realGitAnnex(self):
        """
        Paths agree with real git-annex: its C{hashdirlower} and escaped
        object name for each key, and the journal file that
        C{setpresentkey} writes for it.
        """
        cluster = cluster_for(self)
        gw = cluster.gateway.path
        formats = cluster.env.annex(
            gw, "examinekey", "--batch",
            "--format=${hashdirlower}\t${objectpath}\n",
            input=b"".join(k + b"\n" for k in ODD_KEYS)).encode(
                "utf-8", "surrogateescape").split(b"\n")
        lines = ["%s %s 1\n" % (k.decode("utf-8"), cluster.nodes[0].uuid)
                 for k in ODD_KEYS]
        cluster.env.annex(gw, "setpresentkey", "--batch",
                          input="".join(lines))
        journal = set(os.listdir(os.path.join(gw, "annex", "journal")))
        for key, line in zip(ODD_KEYS, formats):
            hashdir, objectpath = line.split(b"\t")
            self.assertEqual(hashDirLower(key), hashdir.decode())
            self.assertEqual(keyFileName(key), os.path.basename(objectpath))
            path = locationLogPath(key)
            self.assertIn(journalFileName(path), journal)
            self.assertEqual(branchFileName(journalFileName(path)), path)


class ConfigParsingTests(unittest.TestCase):
    """
    Sizes, booleans, git config output and remote urls.
    """

    def test_parseSize(self):
        """
        Units like git-annex's C{readSize dataUnits}.
        """
        cases = {
            "100 megabytes": 100000000, "1GB": 10 ** 9, "500mb": 500000000,
            "0.5 gb": 500000000, "500M": 500000000, "100 KiloBytes": 100000,
            "2KiB": 2048, "1 mebibyte": 1048576, "10 Mbit": 1250000,
            "1234": 1234, "1 byte": 1, "3b": 3, "1.5k": 1500,
        }
        for text, expected in cases.items():
            self.assertEqual(parseSize(text), expected, text)
        for bad in ("", "mb", "1 parsec", ".5gb"):
            self.assertIsNone(parseSize(bad), bad)

    def test_parseGitBool(self):
        """
        git's booleans.
        """
        for v in (None, "true", "Yes", "on", "1", "2"):
            self.assertTrue(parseGitBool(v), v)
        for v in ("false", "no", "off", "0", ""):
            self.assertFalse(parseGitBool(v), v)

    def test_parseGitConfig(self):
        """
        C{git config -z --list} entries, with and without values.
        """
        self.assertEqual(
            parseGitConfig(b"a.b\nx\0remote.n.annex-ignore\0c.d\nmulti\nline\0"),
            [("a.b", "x"), ("remote.n.annex-ignore", None),
             ("c.d", "multi\nline")])

    def test_localPath(self):
        """
        Local paths (plain, relative, C{~}, C{file://}) and the default
        costs; ssh, scp-style and annex+http urls are not local.
        """
        def remote(url):
            return RemoteConfig("r", url=url)

        self.assertEqual(remote("/srv/n1.git").localPath("/repo"),
                         "/srv/n1.git")
        self.assertEqual(remote("../n1.git").localPath("/srv/gw.git"),
                         "/srv/n1.git")
        self.assertEqual(remote("file:///srv/a%20b").localPath("/x"),
                         "/srv/a b")
        self.assertEqual(remote("~/n1").localPath("/x"),
                         os.path.expanduser("~/n1"))
        self.assertEqual(remote("/srv/a:b").localPath("/x"), "/srv/a:b")
        for url in ("ssh://host/srv/n1", "host:srv/n1", "user@host:/n",
                    "annex+http://host/git/n1", "https://host/n1", None):
            self.assertIsNone(remote(url).localPath("/x"), url)
            self.assertEqual(remote(url).defaultCost, 200)
        self.assertEqual(remote("/srv/n1").defaultCost, 100)
        self.assertEqual(RemoteConfig("r", url="/a", cost=5.5).effectiveCost,
                         5.5)


class GatewayStateTests(unittest.TestCase):
    """
    L{GatewayState.load} on the fixture's real gateway.
    """

    def setUp(self):
        self.cluster = cluster_for(self)
        self.env = self.cluster.env.env

    def load(self):
        return GatewayState.load(self.cluster.gateway.path, env=self.env)

    def uuids(self, repos):
        return [r.uuid.encode() for r in repos]

    def test_load(self):
        """
        The gateway's uuid, descriptions, the nodes and the cluster it
        proxies, and the cluster with its nodes.
        """
        c = self.cluster
        state = self.load()
        nodes = self.uuids(c.nodes)
        cluster = c.cluster_uuid.encode()
        self.assertEqual(state.uuid, c.gateway.uuid.encode())
        self.assertEqual(state.gitDir, c.gateway.path)
        self.assertEqual(state.description(nodes[1]), "node2")
        self.assertEqual(state.description(cluster), "cluster mycluster")
        self.assertEqual(state.description(b"nope"), "")
        self.assertEqual(state.proxied, {
            nodes[0]: "node1", nodes[1]: "node2", nodes[2]: "node3",
            cluster: "mycluster"})
        self.assertEqual(list(state.clusters), [cluster])
        info = state.clusters[cluster]
        self.assertEqual(info.name, "mycluster")
        self.assertEqual(info.nodes, frozenset(nodes))
        self.assertEqual([r.name for r in state.remotes],
                         ["node1", "node2", "node3"])
        self.assertEqual(state.remotes[0].localPath(state.path),
                         c.nodes[0].path)
        self.assertEqual(state.preferredContent,
                         {state.uuid: "nothing"})
        self.assertEqual(state.jobs, os.cpu_count())
        self.assertEqual(state.diskReserve, DEFAULT_DISK_RESERVE)
        self.assertEqual(DEFAULT_DISK_RESERVE, 100000000)

    def test_clusterNodesByCost(self):
        """
        Cluster nodes come cheapest first, ties in config order; a node
        configured dead is dropped from the cluster.
        """
        c = self.cluster
        cluster = c.cluster_uuid.encode()
        state = self.load()
        self.assertEqual([r.name for r in state.clusterNodes(cluster)],
                         ["node1", "node2", "node3"])
        c.env.git(c.gateway.path, "config", "remote.node3.annex-cost", "50")
        c.env.git(c.gateway.path, "config", "remote.node1.annex-cost", "150")
        state = self.load()
        self.assertEqual([r.name for r in state.clusterNodes(cluster)],
                         ["node3", "node2", "node1"])
        self.assertEqual([r.name for r in state.remotesFor(
            c.nodes[2].uuid.encode())], ["node3"])
        c.env.git(c.gateway.path, "config", "remote.node2.annex-trustlevel",
                  "dead")
        state = self.load()
        self.assertEqual([r.name for r in state.clusterNodes(cluster)],
                         ["node3", "node1"])
        self.assertEqual(state.clusters[cluster].nodes, frozenset(
            self.uuids([c.nodes[0], c.nodes[2]])))
        self.assertEqual(state.clusterNodes(b"unknown"), [])

    def test_isProxied(self):
        """
        Nodes and the cluster are proxied; an unknown uuid, the client and
        the gateway itself are not; a node stops being proxied when its git
        config no longer allows it.
        """
        c = self.cluster
        state = self.load()
        for node in c.nodes:
            self.assertTrue(state.isProxied(node.uuid.encode()), node)
        self.assertTrue(state.isProxied(c.cluster_uuid.encode()))
        self.assertFalse(state.isProxied(b"00000000-0000-4000-8000-000000000000"))
        self.assertFalse(state.isProxied(c.client.uuid.encode()))
        self.assertFalse(state.isProxied(state.uuid))
        self.assertEqual(state.proxyRemote(c.nodes[0].uuid.encode()).name,
                         "node1")
        c.env.git(c.gateway.path, "config", "--unset",
                  "remote.node1.annex-cluster-node")
        state = self.load()
        self.assertFalse(state.isProxied(c.nodes[0].uuid.encode()))
        c.env.git(c.gateway.path, "config", "remote.node1.annex-proxy", "true")
        self.assertTrue(self.load().isProxied(c.nodes[0].uuid.encode()))

    def test_configValues(self):
        """
        annex.jobs, annex.diskreserve and remote settings from git config.
        """
        c = self.cluster
        git = c.env.git
        gw = c.gateway.path
        git(gw, "config", "annex.jobs", "3")
        git(gw, "config", "annex.diskreserve", "1GB")
        git(gw, "config", "remote.node2.annex-ssh-options", "-p 2222")
        git(gw, "config", "remote.node2.annex-shell", "/opt/annex-shell")
        git(gw, "config", "remote.node2.annex-ignore", "true")
        state = self.load()
        self.assertEqual(state.jobs, 3)
        self.assertEqual(state.diskReserve, 10 ** 9)
        node2 = state.remote("node2")
        self.assertEqual(node2.sshOptions, "-p 2222")
        self.assertEqual(node2.shell, "/opt/annex-shell")
        self.assertTrue(node2.ignore)
        self.assertFalse(state.remote("node1").ignore)
        self.assertEqual(node2.clusterNodes, ("mycluster",))

    def test_notAnnex(self):
        """
        A repository without C{annex.uuid} is refused.
        """
        path = os.path.abspath(self.mktemp())
        self.cluster.env.git(self.cluster.base_dir, "init", "-q", "--bare",
                             path)
        self.assertRaises(ValueError, GatewayState.load, path, env=self.env)


class LocationLogTests(unittest.TestCase):
    """
    L{LocationLog} and L{commitJournal} on the fixture's real gateway.
    """

    def setUp(self):
        self.cluster = cluster_for(self)
        c = self.cluster
        self.env = c.env.env
        self.gw = c.gateway.path
        self.gitDir = findGitDir(self.gw, self.env)
        self.reader = BranchReader(self.gitDir, env=self.env)
        self.addCleanup(self.reader.close)
        self.log = LocationLog(self.gitDir, self.reader)
        self.nodes = [n.uuid.encode() for n in c.nodes]

    def journalFile(self, key):
        return os.path.join(self.gitDir, "annex", "journal",
                            journalFileName(locationLogPath(key)))

    def annexOk(self, *args):
        result = self.cluster.env.run(["git-annex", *args], cwd=self.gw,
                                      check=False)
        return result.returncode == 0

    async def test_copyThroughGateway(self):
        """
        After a client copies to C{gw-node2}, the gateway's location log
        has node2 (git-annex's gateway logs the node, not the cluster, and
        commits its journal when the session ends).
        """
        c = self.cluster
        key = c.add_file("f", b"through the gateway\n").encode()
        c.client_annex("copy", "--quiet", "--to", c.remote_name("node2"), "f")
        present = await self.log.present(key)
        self.assertEqual(present, {self.nodes[1]})
        self.assertEqual(self.log.presentSync(key), {self.nodes[1]})
        self.assertNotIn(c.cluster_uuid.encode(), present)

    def test_recordSeenByGitAnnex(self):
        """
        A recorded presence is seen by C{readpresentkey} and C{whereis};
        recording it again is a no-op; the journal line is C{Ts 1 UUID}.
        """
        key = b"WORM-s5-m1700000000--rec/ord:ed"
        self.assertFalse(self.annexOk("readpresentkey", key, self.nodes[0]))
        self.assertTrue(self.log.record(key, self.nodes[0], True))
        with open(self.journalFile(key), "rb") as f:
            content = f.read()
        self.assertRegex(content, rb"^[0-9]+s 1 " + self.nodes[0] + rb"\n$")
        self.assertFalse(self.log.record(key, self.nodes[0], True))
        with open(self.journalFile(key), "rb") as f:
            self.assertEqual(f.read(), content)
        self.assertEqual(self.log.presentSync(key), {self.nodes[0]})
        self.assertTrue(self.annexOk("readpresentkey", key, self.nodes[0]))
        whereis = self.cluster.env.annex(self.gw, "whereis", "--key",
                                         key.decode())
        self.assertIn(self.nodes[0].decode(), whereis)
        self.assertIn("node1", whereis)

    def test_recordMissing(self):
        """
        Recording absence makes git-annex see the key as gone.
        """
        key = b"WORM--gone"
        self.assertTrue(self.log.record(key, self.nodes[2], True))
        self.assertTrue(self.annexOk("readpresentkey", key, self.nodes[2]))
        self.assertTrue(self.log.record(key, self.nodes[2], False))
        self.assertFalse(self.log.record(key, self.nodes[2], False))
        self.assertFalse(self.annexOk("readpresentkey", key, self.nodes[2]))
        self.assertEqual(self.log.presentSync(key), set())

    def test_recordAll(self):
        """
        C{recordAll} writes every changed uuid of one key in one journal
        write, skips cluster uuids and uuids that already have the status,
        answers which changed, and git-annex sees all of them.
        """
        key = b"WORM--three"
        cluster = self.cluster.cluster_uuid.encode()
        self.assertEqual(self.log.recordAll(key, [self.nodes[0]], True),
                         [self.nodes[0]])
        self.assertEqual(
            self.log.recordAll(key, list(self.nodes) + [cluster], True),
            [self.nodes[1], self.nodes[2]])
        with open(self.journalFile(key), "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(sorted(line.split()[2] for line in lines),
                         sorted(self.nodes))
        self.assertEqual(self.log.recordAll(key, list(self.nodes), True), [])
        for node in self.nodes:
            self.assertTrue(self.annexOk("readpresentkey", key, node))
        self.assertEqual(self.log.recordAll(key, [cluster], False), [])
        self.assertEqual(
            self.log.recordAll(key, [self.nodes[1], self.nodes[2]], False),
            [self.nodes[1], self.nodes[2]])
        self.assertEqual(self.log.presentSync(key), {self.nodes[0]})

    def test_recordUnderContention(self):
        """
        Direct writes and C{git annex setpresentkey --batch} writing the
        same key's log at the same time lose nothing: both take the
        journal lock.
        """
        import subprocess
        key = b"WORM--contended"
        ours = [b"00000000-0000-4000-8000-%012d" % i for i in range(60)]
        theirs = [b"11111111-0000-4000-8000-%012d" % i for i in range(60)]
        proc = subprocess.Popen(
            ["git-annex", "setpresentkey", "--batch"], cwd=self.gw,
            env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        for mine, other in zip(ours, theirs):
            proc.stdin.write(key + b" " + other + b" 1\n")
            proc.stdin.flush()
            self.assertTrue(self.log.record(key, mine, True))
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(self.log.presentSync(key), set(ours + theirs))

    async def test_ownReader(self):
        """
        Without a reader, L{LocationLog} makes one and closes it.
        """
        log = LocationLog(self.gitDir, env=self.env)
        self.assertTrue(log.record(b"WORM--own", self.nodes[0], True))
        self.assertEqual(log.presentSync(b"WORM--own"), {self.nodes[0]})
        self.assertEqual(await log.present(b"WORM--own"), {self.nodes[0]})
        await log.close()
        self.assertRaises(CatFileError, log.presentSync, b"WORM--own")

    def test_clusterUUIDNotWritten(self):
        """
        Recording a cluster uuid writes nothing.
        """
        key = b"WORM--clustered"
        self.assertFalse(self.log.record(
            key, self.cluster.cluster_uuid.encode(), True))
        self.assertFalse(os.path.exists(self.journalFile(key)))
        self.assertEqual(self.log.presentSync(key), set())

    def test_timestampsAndCompaction(self):
        """
        The new line's timestamp is the clock in whole seconds, or the
        uuid's previous one + 1 when that is not older; the file is
        compacted to one line per uuid, sorted by uuid, and other lines
        keep their timestamps.
        """
        key = b"WORM--clock"
        os.makedirs(os.path.dirname(self.journalFile(key)), exist_ok=True)
        with open(self.journalFile(key), "wb") as f:
            f.write(b"100.5s 1 " + U2 + b"\n90s 0 " + U2 + b"\n"
                    b"7s 0 " + U1 + b"\n")
        log = LocationLog(self.gitDir, self.reader, clock=lambda: 50.9)
        self.assertTrue(log.record(key, U1, True))
        with open(self.journalFile(key), "rb") as f:
            self.assertEqual(f.read(), b"50s 1 " + U1 + b"\n100.5s 1 " + U2
                             + b"\n")
        self.assertTrue(log.record(key, U2, False))
        self.assertTrue(log.record(key, U3, False))
        with open(self.journalFile(key), "rb") as f:
            self.assertEqual(f.read(), b"50s 1 " + U1 + b"\n101.5s 0 " + U2
                             + b"\n50s 0 " + U3 + b"\n")

    def test_journalWinsOverBranch(self):
        """
        A journal file replaces the branch's content for that file, even
        when its lines are older.
        """
        key = b"WORM--replaced"
        self.assertTrue(self.log.record(key, self.nodes[0], True))
        self.cluster.env.annex(self.gw, "merge", "--quiet")
        self.assertEqual(self.reader.readJournalFile(locationLogPath(key)),
                         None)
        self.assertEqual(self.log.presentSync(key), {self.nodes[0]})
        with open(self.journalFile(key), "wb") as f:
            f.write(b"1s 0 " + self.nodes[0] + b"\n")
        self.assertEqual(self.log.presentSync(key), set())
        self.assertEqual(self.reader.readSync(locationLogPath(key)),
                         b"1s 0 " + self.nodes[0] + b"\n")
        self.assertIn(self.nodes[0], self.reader.readBranchSync(
            locationLogPath(key)))

    async def test_commitJournal(self):
        """
        L{commitJournal} commits the journal: it is empty afterwards and
        the branch has the line.
        """
        key = b"SHA256E-s3--abc.txt"
        self.log.record(key, self.nodes[1], True)
        await commitJournal(self.gw, self.env)
        self.assertEqual(os.listdir(os.path.join(self.gitDir, "annex",
                                                 "journal")), [])
        blob = self.cluster.env.git(
            self.gw, "cat-file", "-p",
            "refs/heads/git-annex:" + locationLogPath(key))
        self.assertRegex(blob, "^[0-9]+s 1 " + self.nodes[1].decode() + "\n$")
        self.assertEqual(await self.log.present(key), {self.nodes[1]})

    async def test_commitJournalFailure(self):
        """
        A failing C{git annex merge} fails with its stderr.
        """
        path = self.mktemp()
        os.makedirs(path)
        with self.assertRaises(CommitError) as ctx:
            await commitJournal(path, self.env)
        self.assertIn(b"git", ctx.exception.stderr.lower())
        self.assertNotEqual(ctx.exception.code, 0)


class BranchReaderTests(unittest.TestCase):
    """
    L{BranchReader}: reading through the reactor matches reading
    synchronously; journal, private journal, torn appends and unmerged
    sibling branches.
    """

    def setUp(self):
        self.cluster = cluster_for(self)
        c = self.cluster
        self.env = c.env.env
        self.gw = c.gateway.path
        self.gitDir = findGitDir(self.gw, self.env)
        self.reader = self.newReader()
        self.nodes = [n.uuid.encode() for n in c.nodes]

    def newReader(self):
        reader = BranchReader(self.gitDir, env=self.env)
        self.addCleanup(reader.close)
        return reader

    def setPresent(self, keys, uuid, repo=None):
        lines = "".join("%s %s 1\n" % (k.decode(), uuid.decode())
                        for k in keys)
        self.cluster.env.annex(repo or self.gw, "setpresentkey", "--batch",
                               input=lines)

    def test_findGitDir(self):
        """
        The git directory of a bare repository is itself; of a non-bare one,
        its C{.git}.
        """
        c = self.cluster
        self.assertEqual(findGitDir(self.gw, self.env), self.gw)
        self.assertEqual(findGitDir(c.client.path, self.env),
                         os.path.join(c.client.path, ".git"))

    async def test_sameAsSync(self):
        """
        L{BranchReader.read} returns what L{BranchReader.readSync} returns
        for branch files, journal files and missing files.
        """
        keys = [b"WORM--k%d" % i for i in range(5)]
        self.setPresent(keys[:3], self.nodes[0])
        self.cluster.env.annex(self.gw, "merge", "--quiet")
        self.setPresent(keys[2:4], self.nodes[1])
        paths = ["uuid.log", "proxy.log", "cluster.log", "trust.log",
                 "nonexistent/file.log"] + [locationLogPath(k) for k in keys]
        other = self.newReader()
        for path in paths:
            self.assertEqual(await self.reader.read(path), other.readSync(path),
                             path)
        self.assertIn(b"cluster mycluster", other.readSync("uuid.log"))
        self.assertEqual(await self.reader.read("trust.log"), b"")
        self.assertEqual(await self.reader.read(locationLogPath(keys[4])), b"")
        both = await self.reader.read(locationLogPath(keys[2]))
        self.assertEqual(logs.presentUUIDs(both),
                         {self.nodes[0], self.nodes[1]})

    async def test_concurrentReads(self):
        """
        200 reads started at once each get their own file's content, and
        reads of distinct branch files are answered in the order made.
        """
        keys = [b"WORM--many%d" % i for i in range(150)]
        self.setPresent(keys[:100], self.nodes[2])
        self.cluster.env.annex(self.gw, "merge", "--quiet")
        self.setPresent(keys[100:], self.nodes[0])
        paths = [locationLogPath(k) for k in keys[:100]]
        paths += ["missing%d.log" % i for i in range(50)]
        paths += ["uuid.log", "proxy.log"] * 5
        paths += [locationLogPath(k) for k in keys[100:140]]
        self.assertEqual(len(paths), 200)
        sync = self.newReader()
        expected = [sync.readSync(p) for p in paths]
        order = []

        def note(result, i):
            order.append(i)
            return result

        ds = [self.reader.read(p).addCallback(note, i)
              for i, p in enumerate(paths)]
        results = await defer.gatherResults(ds)
        self.assertEqual(results, expected)
        # Journal files need no request to git, and repeated paths are
        # answered with their first read: look at the others.
        self.assertEqual([i for i in order if i < 150], list(range(150)))
        # Again, from the cache this time.
        results = await defer.gatherResults(
            [self.reader.read(p) for p in paths])
        self.assertEqual(results, expected)

    async def test_seesNewCommits(self):
        """
        The cache follows the branch: a file committed after a first read
        is read anew.
        """
        key = b"WORM--later"
        path = locationLogPath(key)
        self.assertEqual(await self.reader.read(path), b"")
        self.assertEqual(self.reader.readSync(path), b"")
        self.setPresent([key], self.nodes[0])
        self.cluster.env.annex(self.gw, "merge", "--quiet")
        self.assertEqual(logs.presentUUIDs(await self.reader.read(path)),
                         {self.nodes[0]})
        self.assertEqual(logs.presentUUIDs(self.reader.readSync(path)),
                         {self.nodes[0]})

    async def test_tornAndPrivateJournal(self):
        """
        A torn journal append is cut back; a private journal file is added
        to branch + journal.
        """
        key = b"WORM--torn"
        path = locationLogPath(key)
        self.setPresent([key], self.nodes[0])
        self.cluster.env.annex(self.gw, "merge", "--quiet")
        branch = self.reader.readSync(path)
        journal = os.path.join(self.gitDir, "annex", "journal")
        os.makedirs(journal, exist_ok=True)
        with open(os.path.join(journal, journalFileName(path)), "wb") as f:
            f.write(b"5s 1 " + U1 + b"\n6s 1 " + U2)
        self.assertEqual(await self.reader.read(path), b"5s 1 " + U1 + b"\n")
        self.assertEqual(self.reader.readSync(path), b"5s 1 " + U1 + b"\n")
        private = os.path.join(self.gitDir, "annex", "journal-private")
        os.makedirs(private)
        with open(os.path.join(private, journalFileName(path)), "wb") as f:
            f.write(b"7s 1 " + U3 + b"\n")
        expected = branch + b"5s 1 " + U1 + b"\n7s 1 " + U3 + b"\n"
        self.assertEqual(await self.reader.read(path), expected)
        self.assertEqual(self.reader.readSync(path), expected)

    async def test_unmergedSibling(self):
        """
        A fetched sibling git-annex branch that is not merged yet is
        appended; once git-annex merges it, it no longer is.
        """
        c = self.cluster
        key = b"WORM--sibling"
        path = locationLogPath(key)
        node = c.nodes[0].path
        self.setPresent([key], self.nodes[0], repo=node)
        c.env.annex(node, "merge", "--quiet")
        c.env.git(self.gw, "fetch", "-q", "node1")
        self.assertEqual(self.reader.readBranchSync(path), b"")
        self.assertEqual(logs.presentUUIDs(self.reader.readSync(path)),
                         {self.nodes[0]})
        self.assertEqual(logs.presentUUIDs(await self.reader.read(path)),
                         {self.nodes[0]})
        # A journal file does not hide the sibling's lines.
        self.setPresent([key], self.nodes[1])
        self.assertEqual(logs.presentUUIDs(await self.reader.read(path)),
                         {self.nodes[0], self.nodes[1]})
        c.env.annex(self.gw, "merge", "--quiet")
        merged = self.reader.readSync(path)
        self.assertEqual(merged, self.reader.readBranchSync(path))
        self.assertEqual(logs.presentUUIDs(merged),
                         {self.nodes[0], self.nodes[1]})
        self.assertEqual(await self.reader.read(path), merged)

    def test_siblingAppearsAfterRead(self):
        """
        The loose sibling refs are cached between reads, but a sibling
        fetched after a read, and a sibling that moves on, are seen by the
        next read of the same reader.
        """
        c = self.cluster
        key = b"WORM--later"
        path = locationLogPath(key)
        node = c.nodes[0].path
        self.assertEqual(logs.presentUUIDs(self.reader.readSync(path)),
                         set())
        self.setPresent([key], self.nodes[0], repo=node)
        c.env.annex(node, "merge", "--quiet")
        c.env.git(self.gw, "fetch", "-q", "node1")
        self.assertEqual(logs.presentUUIDs(self.reader.readSync(path)),
                         {self.nodes[0]})
        self.setPresent([key], self.nodes[2], repo=node)
        c.env.annex(node, "merge", "--quiet")
        c.env.git(self.gw, "fetch", "-q", "node1")
        self.assertEqual(logs.presentUUIDs(self.reader.readSync(path)),
                         {self.nodes[0], self.nodes[2]})

    async def test_childDies(self):
        """
        When the reactor-driven cat-file child dies, the reads waiting on
        it fail with L{CatFileError} and the next read starts a new child.
        """
        self.assertIn(b"gateway", await self.reader.read("uuid.log"))
        proto = self.reader._proto
        ended = defer.Deferred()
        proto.ended.append(ended)
        d = self.reader._asyncRequest(b"refs/heads/git-annex:proxy.log")
        proto.transport.signalProcess("KILL")
        await ended
        with self.assertRaises(CatFileError):
            await d
        self.assertIn(b"mycluster", await self.reader.read("proxy.log"))
        self.assertIsNot(self.reader._proto, proto)

    async def test_close(self):
        """
        After L{BranchReader.close} reads fail.
        """
        self.assertIn(b"gateway", await self.reader.read("uuid.log"))
        self.reader.readSync("uuid.log")
        await self.reader.close()
        with self.assertRaises(CatFileError):
            await self.reader.read("uuid.log")
        self.assertRaises(CatFileError, self.reader.readSync, "uuid.log")
