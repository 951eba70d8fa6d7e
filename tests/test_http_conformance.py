"""
The conformance table: annexd's HTTP P2P API against git-annex's own
C{git annex p2phttp} (shared/spec/p2phttp.md sections 1-4 and 7).

Every test makes two copies of the same cluster (copies of the template
cluster, like L{cluster_for}: same uuids) with the same content in the same
places (L{prepare} runs once per test process, through the client's ssh
remote, on the copy the twins are then copied from), serves one with annexd
(C{annexd --repo gateway.git --wideopen}) and the other with the reference
(C{git-annex p2phttp -J4 --wideopen}), and sends every request of its
table, byte for byte the same, to both.  Requests that change state (put,
remove) go to both in the same order, so the twins stay in step.

For every row the answers must agree:

  - the status code, always;
  - for a 2xx answer, the Content-Type and the JSON body (parsed;
    C{plusuuids} compared as sets, C{lockid} and C{timestamp} by shape only,
    because they are random or read from a clock);
  - for a 2xx GET, C{X-git-annex-data-length} and the body bytes;

unless the row is one of annexd's deliberate fixes, listed in L{DELIBERATE}
with both statuses and the reason.  A row labelled with a deliberate
situation must show exactly that difference (or, for the one situation where
the reference is not deterministic, agree); every situation must be
exercised by the test that claims it (L{COVERAGE}), so the table cannot rot.

Four groups of rows once showed annexd bugs (a longer-than-announced put
that the node stored anyway, a negative remove-before timestamp, parameters
parsed on the unversioned GET, loose keeplocked validation); they keep their
own tests.

The reference wedges (every later request times out) after a v0 put to a
cluster whose body is not exactly as long as announced, so no test sends
that; and each HEAD on a versioned GET route costs it one of its -J4
workers for good, so test_get sends two, last.
"""

import atexit
import base64
import hashlib
import http.client
import json
import os
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from urllib.parse import quote

from twisted.python import log
from twisted.trial import unittest

from tests.support.annex import (
    _make_writable, _rmtree, copy_cluster, template_cluster)
from tests.support.daemon import freePort, spawnServer, startDaemon

#: Seconds to wait for one answer.
REQUEST_TIMEOUT = 20.0

#: Seconds to wait for an answer the reference is known to sometimes never
#: give (removing locked content).
HANG_TIMEOUT = 8.0

#: Seconds after which an answer is logged as slow.
SLOW = 2.0

#: A reference "status" meaning it closed the connection (or timed out)
#: without answering.
NO_ANSWER = None

VERSIONS = ("v0", "v1", "v2", "v3", "v4")

#: Situation -> (the reference's status(es), annexd's status, reason).
#: The reference's entry is a tuple of the statuses it was seen to give.
DELIBERATE = {
    "partial kept after a longer body": (
        (200,), 200,
        "after a put body longer than announced, the reference discards "
        "the partial upload (putoffset 0); annexd withholds the last byte "
        "from the node (which would store complete, verifying content "
        "whatever the sender's verdict), so the node keeps N-1 bytes for a "
        "resume (putoffset N-1); neither stores the content"),
    "version not offered": (
        (400,), 404,
        "the reference answers 400 'bad version' for a version segment it "
        "does not know (v5, v04, V4) or an endpoint that version lacks "
        "(v0-v2 gettimestamp and remove-before, v0 putoffset); the client "
        "falls back to an older version only on 404 (spec 1.4, 5.4)"),
    "missing content GET": (
        (200,), 404,
        "the reference answers 200 with X-git-annex-data-length 0 and an "
        "empty body, which a client cannot tell from an empty object "
        "(spec 2.1, 7)"),
    "negative offset GET": (
        (200, 500, NO_ANSWER), 400,
        "the reference accepts a negative offset and then serves a bogus "
        "length with an empty body, answers 500 'Something went wrong', or "
        "drops the connection without an answer (spec 1.3, 2.1, 7)"),
    "negative offset put": (
        (200,), 400,
        "the reference accepts a negative offset on put (and answers "
        "stored:false); annexd refuses it as it does on GET (spec 1.3)"),
    "negative data length": (
        (200,), 400,
        "the reference does not reject a negative X-git-annex-data-length "
        "(spec 1.3); annexd parses it as a length, which is never "
        "negative"),
    "wrong method": (
        (400,), 405,
        "the reference answers 400 'bad version' to a wrong method on a "
        "versioned route; 405 says what is wrong (spec 1.2 allows it)"),
    "HEAD": (
        (200,), 405,
        "the reference runs a full P2P GET session for a HEAD (and, on a "
        "versioned route, never gives back the worker it used); annexd may "
        "answer 405 (spec 1.2)"),
    "Accept": (
        (400, 406), 200,
        "the reference routes by Accept and answers an Accept it does not "
        "produce with 400 'bad version' (406 on the unversioned GET); "
        "annexd ignores Accept (spec 1.2)"),
    "unpadded base64": (
        (400,), 200,
        "the reference rejects []-wrapped base64url without '=' padding; "
        "accepting it as well is harmless (spec 1.3)"),
    "doubled git-annex path": (
        (404,), 200,
        "annex+http://host/prefix/git-annex/ makes clients request "
        "/git-annex/git-annex/<uuid>/...; annexd serves it (spec 1.1)"),
    "unknown server uuid first": (
        (400, 405), 404,
        "annexd resolves the server uuid before it parses the rest of the "
        "request, so a uuid it does not serve is 404 whatever the "
        "parameters (spec 1.4, 5.1); the reference parses the parameters "
        "(and method) first.  Either way the request fails, and no client "
        "sends malformed parameters"),
    "path after the key": (
        (404,), 400,
        "annexd takes every path segment after key/ as the key (keys such "
        "as URL keys contain '/', and it accepts them unescaped), so "
        "key/K/extra is a key that does not parse; the reference's "
        "one-segment capture does not match at all"),
    "remove locked content": (
        (500, NO_ANSWER, 200), 200,
        "the reference sometimes answers 500 'Something went wrong' or "
        "blocks until the lock is released; annexd answers "
        "removed:false at once (spec 0.6, 3, 7)"),
}

#: Test method -> the deliberate situations it must exercise.
#: Deliberate differences in the answer's JSON, not its status.
SAME_STATUS = {"partial kept after a longer body"}

COVERAGE = {
    "test_putLongerThanAnnounced": {"partial kept after a longer body"},
    "test_get": {"missing content GET", "negative offset GET", "HEAD",
                 "wrong method", "version not offered", "Accept",
                 "unpadded base64", "path after the key",
                 "unknown server uuid first"},
    "test_checkpresent": {"version not offered", "wrong method", "Accept",
                          "unpadded base64"},
    "test_routing": {"version not offered", "doubled git-annex path",
                     "unknown server uuid first", "wrong method"},
    "test_put": {"version not offered", "wrong method",
                 "negative offset put", "negative data length",
                 "unpadded base64"},
    "test_remove": {"version not offered", "wrong method",
                    "missing content GET"},
    "test_lock": {"version not offered", "wrong method",
                  "remove locked content"},
}


# -- the fixture -----------------------------------------------------------


def _pattern(seed, size):
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%s %d" % (seed, counter)).digest()
        counter += 1
    return out[:size]


#: File name -> content, added in the client of both twins.
FILES = {
    "present.bin": _pattern(b"present", 1000),
    "empty.bin": b"",
    "node1.bin": _pattern(b"node1", 600),
    "absent.bin": _pattern(b"absent", 15),
}

#: Files copied to the cluster (every node) and to node1 only.
ON_CLUSTER = ("present.bin", "empty.bin")
ON_NODE1 = ("node1.bin",)


def keyFor(data, ext=".bin"):
    """
    The SHA256E key of C{data}.
    """
    return "SHA256E-s%d--%s%s" % (len(data), hashlib.sha256(data).hexdigest(),
                                  ext)


def b64(value):
    """
    C{value} wrapped the way the client sends values it must escape.
    """
    if isinstance(value, str):
        value = value.encode("utf-8")
    return "[%s]" % (base64.urlsafe_b64encode(value).decode("ascii"),)


def query(*pairs):
    """
    A query string from (name, value) pairs, values percent-encoded as the
    client does; a value of L{None} leaves the parameter out.
    """
    parts = ["%s=%s" % (name, quote(value, safe=""))
             for name, value in pairs if value is not None]
    return ("?" + "&".join(parts)) if parts else ""


def prepare(cluster):
    """
    Put L{FILES} in the client of C{cluster} and copy L{ON_CLUSTER} to the
    cluster (every node) and L{ON_NODE1} to node1, through the client's ssh
    remote (so through git-annex-shell, before any HTTP server runs).

    @return: file name -> key.
    """
    for name, data in FILES.items():
        with open(os.path.join(cluster.client.path, name), "wb") as f:
            f.write(data)
    cluster.client_annex("add", "--quiet", *FILES)
    cluster.client_git("commit", "-q", "-m", "conformance fixture")
    cluster.client_annex("copy", "--quiet", "--to",
                         cluster.remote_name(cluster.name), *ON_CLUSTER)
    cluster.client_annex("copy", "--quiet", "--to",
                         cluster.remote_name("node1"), *ON_NODE1)
    keys = dict(zip(FILES, cluster.client_annex("lookupkey", *FILES).split()))
    expected = {name: keyFor(data) for name, data in FILES.items()}
    if keys != expected:
        raise RuntimeError("unexpected keys %r, not %r" % (keys, expected))
    return keys


_prepared = None


def preparedCluster():
    """
    A cluster (a copy of L{template_cluster}) with the fixture's content
    prepared once per test process by L{prepare}, to be copied by
    L{copy_cluster}: every copy has the template's uuids and the same
    content in the same places.  Do not modify it.

    @return: (L{Cluster}, file name -> key)
    """
    global _prepared
    if _prepared is None:
        base = tempfile.mkdtemp(prefix="annexd-conformance-")
        atexit.register(_rmtree, base)
        cluster = copy_cluster(template_cluster(),
                               os.path.join(base, "prepared"))
        _prepared = cluster, prepare(cluster)
    return _prepared


def startReference(testcase, cluster):
    """
    Start C{git-annex p2phttp -J4 --wideopen} on 127.0.0.1 in C{cluster}'s
    gateway (the binary itself, so the pid is the server's), and stop it
    when the test ends.

    @return: a callable that waits until it accepts connections and
        returns its port.
    """
    port = freePort()
    executable, argv = cluster.env.gitannex.argv(
        "git-annex", "p2phttp", "-J4", "--wideopen", "--bind", "127.0.0.1",
        "--port", str(port))
    server = spawnServer(argv, port, testcase.mktemp() + ".p2phttp.log",
                         cwd=cluster.gateway.path, env=cluster.env.env,
                         executable=executable, name="git-annex p2phttp")
    testcase.addCleanup(server.stop)
    return lambda: server.waitListening().port


# -- requests and answers --------------------------------------------------


@dataclass
class Answer:
    """
    One server's answer: C{status} is L{NO_ANSWER} when the connection was
    closed (or timed out) without one, and C{error} then says why.
    """

    status: object
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    error: str = ""

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)

    @property
    def ok(self):
        return isinstance(self.status, int) and 200 <= self.status < 300

    def describe(self):
        if self.status is NO_ANSWER:
            return "no answer (%s)" % (self.error,)
        extra = ""
        length = self.header("x-git-annex-data-length")
        if length is not None:
            extra = " X-git-annex-data-length: %s" % (length,)
        body = self.body
        shown = repr(body[:120]) + ("... (%d bytes)" % len(body)
                                    if len(body) > 120 else "")
        return "%s [%s]%s %s" % (self.status, self.header("content-type"),
                                 extra, shown)


def send(port, method, path, headers=None, body=b"",
         timeout=REQUEST_TIMEOUT):
    """
    Send one request on a new connection and read the whole answer.

    @param body: L{bytes} (sent with a Content-Length), a L{list} of
        L{bytes} (sent chunked, one chunk each) or L{None} (no body).
    @rtype: L{Answer}
    """
    connection = http.client.HTTPConnection("127.0.0.1", port,
                                            timeout=timeout)
    try:
        if isinstance(body, list):
            body = iter(body)
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status,
                      {k.lower(): v for k, v in response.getheaders()}, data)
    except (OSError, http.client.HTTPException) as e:
        return Answer(NO_ANSWER, error="%s: %s" % (type(e).__name__, e))
    finally:
        connection.close()


def _normalJSON(value, where):
    """
    A JSON answer with what legitimately differs made comparable.

    @raise ValueError: when a field has the wrong shape.
    """
    if not isinstance(value, dict):
        return value
    out = {}
    for name, item in value.items():
        if name == "plusuuids":
            if not (isinstance(item, list)
                    and all(isinstance(u, str) and u for u in item)):
                raise ValueError("%s: plusuuids %r is not a list of uuids"
                                 % (where, item))
            item = sorted(item)
        elif name == "lockid":
            if not (isinstance(item, str) and item):
                raise ValueError("%s: lockid %r is not a non-empty string"
                                 % (where, item))
            item = "<lockid>"
        elif name == "timestamp":
            if not (isinstance(item, int) and not isinstance(item, bool)
                    and item >= 0):
                raise ValueError("%s: timestamp %r is not an integer"
                                 % (where, item))
            item = "<integer>"
        out[name] = item
    return out


def compare(annexd, reference, method):
    """
    Why two answers disagree, or L{None} when they agree.
    """
    if annexd.status != reference.status:
        return "the statuses differ"
    if not annexd.ok:
        return None
    if method == "HEAD":
        return None
    if annexd.header("content-type") != reference.header("content-type"):
        return "the Content-Types differ"
    if (annexd.header("content-type") or "").startswith("application/json"):
        try:
            mine = _normalJSON(annexd.json(), "annexd")
            theirs = _normalJSON(reference.json(), "reference")
        except ValueError as e:
            return str(e)
        if mine != theirs:
            return "the JSON answers differ"
        return None
    if (annexd.header("x-git-annex-data-length")
            != reference.header("x-git-annex-data-length")):
        return "the X-git-annex-data-length headers differ"
    if annexd.body != reference.body:
        return "the bodies differ"
    return None


class Twins:
    """
    Two copies of one cluster with the same content, one served by annexd
    and the other by C{git annex p2phttp}.

    @ivar keys: file name (of L{FILES}) -> key.
    @ivar names: uuid -> a readable name, for failure messages.
    """

    def __init__(self, testcase):
        prepared, self.keys = preparedCluster()
        mine, theirs = [copy_cluster(prepared, testcase.mktemp())
                        for _ in range(2)]
        for twin in (mine, theirs):
            testcase.addCleanup(_make_writable, twin.base_dir)
        self.cluster = mine
        reference = startReference(testcase, theirs)
        self.annexd = startDaemon(testcase, mine.env.env,
                                  ["--repo", mine.gateway.path, "--wideopen"])
        self.referencePort = reference()
        self.gateway = mine.gateway.uuid
        self.clusterUUID = mine.cluster_uuid
        self.nodes = [node.uuid for node in mine.nodes]
        self.client = mine.client.uuid
        self.unknown = str(uuidlib.UUID(int=0x5eed))
        self.names = {self.gateway: "<gateway>",
                      self.clusterUUID: "<cluster>",
                      self.client: "<client>",
                      self.unknown: "<unknown>"}
        for i, node in enumerate(self.nodes, 1):
            self.names[node] = "<node%d>" % (i,)

    def readable(self, text):
        for uuid, name in self.names.items():
            text = text.replace(uuid, name)
        for name, key in self.keys.items():
            text = text.replace(key, "<%s>" % (name,))
        return text


class ConformanceMixin:
    """
    Sending rows to both twins and judging them.
    """

    def setUp(self):
        started = time.monotonic()
        self.twins = Twins(self)
        self.setupTime = time.monotonic() - started
        self.problems = []
        self.exercised = set()
        self.compared = 0
        self.spent = [0.0, 0.0]
        self.silent = 0

    # -- a row

    def row(self, method, path, headers=None, body=b"", situation=None,
            timeout=REQUEST_TIMEOUT, annexdJSON=None):
        """
        Send one request to annexd, then the same to the reference, and
        record any disagreement that is not the deliberate C{situation}.

        @param annexdJSON: when given, annexd's answer must be this JSON
            (for deliberate rows, where the reference's is no guide).
        @return: (annexd's L{Answer}, the reference's L{Answer})
        """
        twins = self.twins
        started = time.monotonic()
        mine = send(twins.annexd.port, method, path, headers, body, timeout)
        middle = time.monotonic()
        theirs = send(twins.referencePort, method, path, headers, body,
                      timeout)
        ended = time.monotonic()
        self.spent[0] += middle - started
        self.spent[1] += ended - middle
        if max(middle - started, ended - middle) > SLOW:
            log.msg(twins.readable(
                "conformance: slow answer to %s %s: annexd %.1f s, reference "
                "%.1f s" % (method, path, middle - started, ended - middle)))
        if theirs.status is NO_ANSWER and situation is None:
            self.silent += 1
            if self.silent >= 3:
                self.problems.append("the reference stopped answering")
                self.finish()
        else:
            self.silent = 0
        self.compared += 1
        why = self.judge(mine, theirs, method, situation, annexdJSON)
        if why is not None:
            request = "%s %s" % (method, path)
            if headers:
                request += "  " + " ".join("%s: %s" % h
                                           for h in sorted(headers.items()))
            if isinstance(body, list):
                request += "  chunked body %r" % (b"".join(body)[:80],)
            elif body:
                request += "  body %r" % (body[:80],)
            self.problems.append(twins.readable(
                "%s\n    request:   %s\n    annexd:    %s\n"
                "    reference: %s" % (why, request, mine.describe(),
                                       theirs.describe())))
        return mine, theirs

    def judge(self, mine, theirs, method, situation, annexdJSON):
        if situation is None:
            return compare(mine, theirs, method)
        referenceStatuses, annexdStatus, reason = DELIBERATE[situation]
        if mine.status != annexdStatus:
            return ("deliberate difference %r: annexd should answer %s"
                    % (situation, annexdStatus))
        if theirs.status not in referenceStatuses:
            return ("deliberate difference %r: the reference was expected "
                    "to answer one of %s (is the table out of date?)"
                    % (situation, referenceStatuses))
        if annexdJSON is not None and (not mine.ok or mine.json()
                                       != annexdJSON):
            return ("deliberate difference %r: annexd should answer %r"
                    % (situation, annexdJSON))
        if theirs.status == mine.status and annexdJSON is None:
            if annexdStatus not in referenceStatuses:
                return ("deliberate difference %r: both answered %s (is the "
                        "table out of date?)" % (situation, mine.status))
            why = compare(mine, theirs, method)
            if why is not None:
                return why
        self.exercised.add(situation)
        return None

    def finish(self):
        """
        Fail with every disagreement seen, and check this test exercised
        the deliberate situations it claims (L{COVERAGE}).
        """
        log.msg("conformance %s: %d requests compared, %d disagreements "
                "(set-up %.1f s, annexd %.1f s, reference %.1f s)" % (
                    self._testMethodName, self.compared, len(self.problems),
                    self.setupTime, self.spent[0], self.spent[1]))
        claimed = COVERAGE.get(self._testMethodName, set())
        missing = claimed - self.exercised
        stray = self.exercised - claimed
        report = list(self.problems)
        if missing:
            report.append("deliberate situations claimed but not exercised: "
                          "%s" % (sorted(missing),))
        if stray:
            report.append("deliberate situations exercised but not claimed "
                          "in COVERAGE: %s" % (sorted(stray),))
        if report:
            self.fail("%d of %d rows disagree:\n\n%s" % (
                len(report), self.compared, "\n\n".join(report)))

    # -- paths

    def api(self, target, rest):
        return "/git-annex/%s/%s" % (target, rest)

    def key(self, name):
        return self.twins.keys[name]

    def targets(self):
        """
        (name, uuid) of the gateway, the cluster and node1.
        """
        t = self.twins
        return [("gateway", t.gateway), ("cluster", t.clusterUUID),
                ("node1", t.nodes[0])]


# -- the tests ---------------------------------------------------------------


class ConformanceTests(ConformanceMixin, unittest.TestCase):
    """
    Every endpoint, every version, good and bad input: annexd against
    C{git annex p2phttp}.
    """

    def has(self, target, name):
        """
        Whether C{target} (a uuid) holds the file C{name} of the fixture.
        """
        t = self.twins
        if name in ON_CLUSTER:
            return target in [t.clusterUUID] + t.nodes
        if name in ON_NODE1:
            return target in (t.clusterUUID, t.nodes[0])
        return False

    def getPath(self, target, version, key, *pairs):
        """
        The path of a GET of C{key} (C{version} L{None}: the unversioned
        route).
        """
        rest = "key/" + key if version is None else "%s/key/%s" % (version,
                                                                  key)
        return self.api(target, rest) + query(*pairs)

    def test_get(self):
        """
        GET of a key, unversioned and v0-v4, on the gateway, the cluster and
        two nodes, for present, empty, absent and node1-only content; then
        every bad input (clientuuid missing, empty or badly wrapped, key
        malformed or badly wrapped, offsets, bypass, associatedfile, wrong
        method, Accept, v5, an unknown server uuid); negative offsets and
        HEAD last.
        """
        t = self.twins
        client = t.client
        present = self.key("present.bin")
        routes = (None,) + VERSIONS
        everywhere = [t.gateway, t.clusterUUID, t.nodes[0], t.nodes[1]]
        for target in everywhere:
            for version in routes:
                for name in FILES:
                    self.row("GET", self.getPath(
                        target, version, self.key(name),
                        ("clientuuid", client),
                        ("associatedfile", name)),
                        situation=None if self.has(target, name)
                        else "missing content GET")
        size = len(FILES["present.bin"])
        for target in (t.clusterUUID, t.nodes[0]):
            for version in routes:
                def get(*pairs, key=present, situation=None, method="GET",
                        headers=None):
                    return self.row(method, self.getPath(
                        target, version, key, *pairs), headers=headers,
                        situation=situation)
                versioned = version is not None
                get()
                get(("clientuuid", ""))
                get(("clientuuid", b64("not [a] uuid")))
                get(("clientuuid", "[a+b/]"))
                get(("clientuuid", "[YWI]"), situation="unpadded base64")
                get(("clientuuid", client), key="garbage")
                get(("clientuuid", client), key="[!!]")
                get(("clientuuid", client), key=b64(present))
                get(("clientuuid", client), ("bypass", ""))
                get(("clientuuid", client), ("bypass", t.nodes[1]))
                get(("clientuuid", client), ("bypass", t.nodes[0]),
                    key=self.key("node1.bin"))
                get(("clientuuid", client), ("unknown", "1"))
                get(("clientuuid", client),
                    method="POST", situation="wrong method"
                    if versioned else None)
                get(("clientuuid", client),
                    headers={"Accept": "text/html"}, situation="Accept")
                self.row("GET", self.api(target, (
                    "%s/key/%s/extra" % (version, present)) if versioned
                    else "key/%s/extra" % (present,)) + query(
                        ("clientuuid", client)),
                    situation="path after the key")
                if versioned:
                    # The unversioned route's parameters: test_unversionedGet.
                    get(("clientuuid", client), ("associatedfile", "[a+b]"))
                    get(("clientuuid", client), ("associatedfile",
                                                 b64("f\xff".encode(
                                                     "latin-1"))))
                    for offset in ("0", "10", str(size - 1), str(size),
                                   str(size + 4000), "abc", "", "1.5"):
                        get(("clientuuid", client), ("offset", offset))
                    get(("clientuuid", client), ("offset", "10"),
                        key=self.key("empty.bin"))
            self.row("GET", self.api(target, "v5/key/" + present) + query(
                ("clientuuid", client)), situation="version not offered")
            self.row("GET", self.api(target, "v4/key/") + query(
                ("clientuuid", client)))
        # A uuid nobody serves: 404, whatever the version; with a bad
        # request the reference complains about the request first.
        for version in routes:
            self.row("GET", self.getPath(t.unknown, version, present,
                                         ("clientuuid", client)))
        self.row("GET", self.getPath(t.unknown, "v4", present),
                 situation="unknown server uuid first")
        self.row("GET", self.getPath(t.unknown, "v4", "garbage",
                                     ("clientuuid", client)),
                 situation="unknown server uuid first")
        self.row("POST", self.getPath(t.unknown, None, present),
                 situation="unknown server uuid first")
        # The reference drops the connection for some of these.
        for target in (t.clusterUUID, t.nodes[0], t.gateway):
            for version in ("v4", "v1", "v0"):
                for name in ("present.bin", "absent.bin"):
                    self.row("GET", self.getPath(
                        target, version, self.key(name),
                        ("clientuuid", client), ("offset", "-5")),
                        situation="negative offset GET")
        # Last: every versioned HEAD costs the reference one of its -J4
        # workers for good (after four it answers nothing at all).
        for target, version in ((t.clusterUUID, None), (t.nodes[0], None),
                                (t.clusterUUID, "v4"), (t.nodes[0], "v1")):
            self.row("HEAD", self.getPath(target, version, present,
                                          ("clientuuid", client)),
                     situation="HEAD")
        self.finish()

    def test_checkpresent(self):
        """
        checkpresent at v0-v4 (and v5) on the gateway, the cluster and every
        node, for every fixture file; then every bad input on the cluster
        and node1.
        """
        t = self.twins
        client = t.client
        present = self.key("present.bin")
        for target in [t.gateway, t.clusterUUID] + t.nodes:
            for version in VERSIONS + ("v5",):
                for name in FILES:
                    self.row("POST", self.api(
                        target, version + "/checkpresent") + query(
                            ("key", self.key(name)), ("clientuuid", client)),
                        situation="version not offered"
                        if version == "v5" else None)
        for target in (t.clusterUUID, t.nodes[0]):
            for version in VERSIONS:
                path = self.api(target, version + "/checkpresent")

                def post(*pairs, situation=None, method="POST",
                         headers=None, body=b""):
                    return self.row(method, path + query(*pairs),
                                    headers=headers, body=body,
                                    situation=situation)
                post(("key", present))
                post(("clientuuid", client))
                post(("key", present), ("clientuuid", ""))
                post(("key", present), ("clientuuid", "[a+b/]"))
                post(("key", present), ("clientuuid", "[YWI]"),
                     situation="unpadded base64")
                post(("key", present), ("clientuuid", b64("[odd]")))
                post(("key", "garbage"), ("clientuuid", client))
                post(("key", ""), ("clientuuid", client))
                post(("key", "[!!]"), ("clientuuid", client))
                post(("key", b64(present)), ("clientuuid", client))
                post(("key", present), ("clientuuid", client),
                     ("bypass", ""))
                post(("key", present), ("clientuuid", client),
                     ("bypass", t.nodes[1]), ("bypass", t.nodes[2]))
                post(("key", present), ("clientuuid", client),
                     ("bypass", "[a+b]"))
                post(("key", present), ("clientuuid", client),
                     ("unknown", "x"))
                post(("key", present), ("key", "garbage"),
                     ("clientuuid", client))
                post(("key", present), ("clientuuid", client),
                     body=b"ignored body")
                post(("key", present), ("clientuuid", client),
                     headers={"Accept": "application/json"})
                post(("key", present), ("clientuuid", client),
                     headers={"Accept": "*/*"})
                post(("key", present), ("clientuuid", client),
                     headers={"Accept": "text/html"}, situation="Accept")
                for method in ("GET", "PUT", "DELETE"):
                    post(("key", present), ("clientuuid", client),
                         method=method, body=None if method == "GET"
                         else b"", situation="wrong method")
        self.finish()

    def test_routing(self):
        """
        What is not an endpoint: unknown endpoint names at every version,
        odd version segments, paths around the endpoints, server uuids
        wrapped, badly wrapped, empty or unknown (for every endpoint), a
        prefix, and the doubled /git-annex/git-annex/.
        """
        t = self.twins
        client = t.client
        present = self.key("present.bin")
        q = query(("key", present), ("clientuuid", client))
        for version in VERSIONS + ("v5",):
            self.row("POST", self.api(t.clusterUUID, version + "/nosuch") + q)
            self.row("GET", self.api(t.clusterUUID, version + "/nosuch") + q)
        for version in ("v04", "V4", "v10", "v-1", "4", "vx"):
            self.row("POST", self.api(t.clusterUUID,
                                      version + "/checkpresent") + q,
                     situation="version not offered")
        for rest in ("v4/checkpresent/extra", "", "v4", "v4/",
                     "checkpresent", "v4//checkpresent"):
            self.row("POST", self.api(t.clusterUUID, rest) + q)
        for path in ("/", "/git-annex", "/nosuch",
                     "/prefix/git-annex/%s/v4/checkpresent" % (
                         t.clusterUUID,)):
            self.row("POST", path + q)
            self.row("GET", path)
        for uuid in (b64(t.clusterUUID), b64(t.nodes[0]), b64(t.gateway)):
            self.row("POST", self.api(uuid, "v4/checkpresent") + q)
        for uuid in ("[!!]", "[]", b64("no such uuid"), t.unknown,
                     t.client, t.unknown.upper()):
            self.row("POST", self.api(uuid, "v4/checkpresent") + q)
        self.row("POST", "/git-annex/git-annex/%s/v4/checkpresent%s" % (
            t.clusterUUID, q), situation="doubled git-annex path")
        # An unknown server uuid: 404 for every endpoint...
        absent = self.key("absent.bin")
        good = {
            "checkpresent": [("key", present), ("clientuuid", client)],
            "remove": [("key", absent), ("clientuuid", client)],
            "remove-before": [("key", absent), ("clientuuid", client),
                              ("timestamp", "5")],
            "gettimestamp": [("clientuuid", client)],
            "putoffset": [("key", absent), ("clientuuid", client)],
            "lockcontent": [("key", present), ("clientuuid", client)],
            "keeplocked": [("lockid", "nosuch"), ("clientuuid", client)],
        }
        for name, pairs in good.items():
            for version in ("v4", "v3", "v1") if name not in (
                    "gettimestamp", "remove-before") else ("v4", "v3"):
                self.row("POST", self.api(t.unknown, "%s/%s" % (
                    version, name)) + query(*pairs))
        self.row("POST", self.api(t.unknown, "v4/put") + query(
            ("key", absent), ("clientuuid", client)),
            headers={"X-git-annex-data-length": "15"},
            body=FILES["absent.bin"])
        # ... but the reference looks at the request first.
        for name in ("gettimestamp", "remove-before"):
            self.row("POST", self.api(t.unknown, "v1/%s" % (name,))
                     + query(*good[name]), situation="version not offered")
        for name in good:
            self.row("POST", self.api(t.unknown, "v4/%s" % (name,)),
                     situation="unknown server uuid first")
            self.row("GET", self.api(t.unknown, "v4/%s" % (name,)) + query(
                *good[name]), situation="unknown server uuid first")
        self.row("POST", self.api(t.unknown, "v4/put") + query(
            ("key", absent), ("clientuuid", client)),
            situation="unknown server uuid first")
        # The reference also looks at the version before the uuid.
        self.row("POST", self.api(t.unknown, "v5/checkpresent") + q,
                 situation="unknown server uuid first")
        self.row("POST", self.api(t.clusterUUID, "v4/checkpresent") + q,
                 headers={"Content-Type": "text/plain"})
        self.row("POST", self.api(t.clusterUUID, "v4/key/" + present) + query(
            ("clientuuid", client)), situation="wrong method")
        self.finish()

    def test_put(self):
        """
        put and putoffset at v0-v4 on the gateway, the cluster and node1:
        new content (with a Content-Length and chunked), content already
        there, a short body and its resume, a wrong hash, an offset beyond
        what the server has, data-present (v4) and its being ignored before
        v4; then every bad input.
        """
        t = self.twins
        client = t.client
        cases = 0

        def fresh(tag):
            nonlocal cases
            cases += 1
            data = _pattern(b"%s %d" % (tag.encode(), cases), 40 + cases)
            return data, keyFor(data)

        def put(target, version, key, body, length=None, offset="0",
                extra=(), situation=None, headers=None, pairs=None):
            if length is None:
                length = len(b"".join(body) if isinstance(body, list)
                             else body)
            h = {"X-git-annex-data-length": str(length)}
            if headers is not None:
                h = headers
            if pairs is None:
                pairs = [("key", key), ("clientuuid", client),
                         ("associatedfile", "f.bin"), ("offset", offset)]
            return self.row("POST", self.api(target, version + "/put")
                            + query(*(list(pairs) + list(extra))),
                            headers=h, body=body, situation=situation)

        def putoffset(target, version, key):
            self.row("POST", self.api(target, version + "/putoffset") + query(
                ("key", key), ("clientuuid", client)),
                situation="version not offered" if version == "v0" else None)

        def present(target, key):
            self.row("POST", self.api(target, "v4/checkpresent") + query(
                ("key", key), ("clientuuid", client)))

        for _, target in self.targets():
            for version in VERSIONS:
                # New content, then the same again.
                data, key = fresh("new")
                putoffset(target, version, key)
                put(target, version, key,
                    [data[:7], data[7:]] if version == "v4" else data)
                present(target, key)
                putoffset(target, version, key)
                put(target, version, key, data)
                put(target, version, key, b"", length=999)
                # A wrong hash.
                data, key = fresh("hash")
                put(target, version, key, bytes(len(data)))
                present(target, key)
                putoffset(target, version, key)
                if target == t.clusterUUID and version == "v0":
                    # The reference wedges on a v0 cluster put whose body is
                    # not as long as announced.
                    continue
                # A short body; putoffset shows what was kept; resume.
                data, key = fresh("short")
                put(target, version, key, data[:5], length=len(data))
                present(target, key)
                putoffset(target, version, key)
                put(target, version, key, data[5:], length=len(data) - 5,
                    offset="5")
                present(target, key)
                # The client claims more than the server has.
                data, key = fresh("ahead")
                put(target, version, key, data[3:], length=len(data) - 3,
                    offset="3")
                present(target, key)
            # data-present: v4 only; ignored (a real upload) before.
            for version in ("v4", "v3", "v1"):
                data, key = fresh("dp")
                put(target, version, key, data,
                    extra=[("data-present", "true")])
                present(target, key)
                put(target, version, key, b"", length=0,
                    extra=[("data-present", "TRUE")])
                data, key = fresh("dp-false")
                put(target, version, key, data,
                    extra=[("data-present", "false")])
                data, key = fresh("dp-yes")
                put(target, version, key, data,
                    extra=[("data-present", "yes")])
                present(target, key)
            put(target, "v4", self.key("present.bin"), b"", length=0,
                extra=[("data-present", "true")])
            put(target, "v4", self.key("present.bin"), b"",
                headers={}, extra=[("data-present", "true")])
        # Bad input, at every version on node1, at v4 on the others.
        for _, target in self.targets():
            versions = VERSIONS if target == t.nodes[0] else ("v4",)
            for version in versions:
                data, key = fresh("bad")
                put(target, version, key, data, headers={})
                put(target, version, key, data,
                    headers={"X-git-annex-data-length": "abc"})
                put(target, version, key, data,
                    headers={"X-git-annex-data-length": ""})
                put(target, version, key, data, length=-len(data),
                    situation="negative data length")
                put(target, version, key, data, offset="-1",
                    situation="negative offset put")
                put(target, version, key, data, offset="x")
                put(target, version, key, data, pairs=[("key", key)])
                put(target, version, key, data,
                    pairs=[("key", key), ("clientuuid", "")])
                # (annexd stores this one: another key.)
                other, otherKey = fresh("unpadded")
                put(target, version, otherKey, other,
                    pairs=[("key", otherKey), ("clientuuid", "[YWI]")],
                    situation="unpadded base64")
                put(target, version, key, data,
                    pairs=[("clientuuid", client)])
                put(target, version, key, data,
                    pairs=[("key", "garbage"), ("clientuuid", client)])
                put(target, version, key, data,
                    pairs=[("key", key), ("clientuuid", client),
                           ("associatedfile", "[a+b]")])
                present(target, key)
                put(target, version, key, data,
                    pairs=[("key", b64(key)), ("clientuuid", client),
                           ("associatedfile", b64(b"f\xff.bin"))])
                present(target, key)
                self.row("GET", self.api(target, version + "/put") + query(
                    ("key", key), ("clientuuid", client)),
                    headers={"X-git-annex-data-length": "0"},
                    situation="wrong method")
                self.row("PUT", self.api(target, version + "/put") + query(
                    ("key", key), ("clientuuid", client)),
                    headers={"X-git-annex-data-length": "0"},
                    situation="wrong method")
                if version != "v0":
                    self.row("GET", self.api(target, version + "/putoffset")
                             + query(("key", key), ("clientuuid", client)),
                             situation="wrong method")
                    self.row("POST", self.api(target, version + "/putoffset")
                             + query(("key", key)))
                    self.row("POST", self.api(target, version + "/putoffset")
                             + query(("key", "garbage"),
                                     ("clientuuid", client)))
            data, key = fresh("v5")
            put(target, "v5", key, data, situation="version not offered")
            self.row("POST", self.api(target, "v5/putoffset") + query(
                ("key", key), ("clientuuid", client)),
                situation="version not offered")
        self.finish()

    def test_remove(self):
        """
        gettimestamp, remove and remove-before at every version on the
        gateway, the cluster and node1 (absent content, content there,
        timestamps past and future), then every bad input; finally the
        removals are seen by checkpresent and GET.
        """
        t = self.twins
        client = t.client
        present = self.key("present.bin")
        absent = self.key("absent.bin")
        for _, target in self.targets():
            for version in VERSIONS + ("v5",):
                offered = version in ("v3", "v4")
                self.row("POST", self.api(target, version + "/gettimestamp")
                         + query(("clientuuid", client)),
                         situation=None if offered
                         else "version not offered")
                self.row("POST", self.api(target, version + "/remove")
                         + query(("key", absent), ("clientuuid", client)),
                         situation="version not offered"
                         if version == "v5" else None)
                for timestamp in ("5", "99999999999"):
                    self.row("POST", self.api(target, version
                                              + "/remove-before") + query(
                        ("key", absent), ("clientuuid", client),
                        ("timestamp", timestamp)),
                        situation=None if offered else "version not offered")
                if offered:
                    # In the past: the content there stays.
                    self.row("POST", self.api(target, version
                                              + "/remove-before") + query(
                        ("key", present), ("clientuuid", client),
                        ("timestamp", "5")))
            # Bad input.
            for version in VERSIONS:
                for rest, pairs in (
                        ("gettimestamp", []),
                        ("gettimestamp", [("clientuuid", "")]),
                        ("gettimestamp", [("clientuuid", "[a+b/]")]),
                        ("gettimestamp", [("clientuuid", b64(client))]),
                        ("remove", [("key", absent)]),
                        ("remove", [("clientuuid", client)]),
                        ("remove", [("key", absent), ("clientuuid", "")]),
                        ("remove", [("key", "garbage"),
                                    ("clientuuid", client)]),
                        ("remove", [("key", "[!!]"), ("clientuuid", client)]),
                        ("remove", [("key", b64(absent)),
                                    ("clientuuid", client)]),
                        ("remove", [("key", absent), ("clientuuid", client),
                                    ("bypass", "")]),
                        ("remove-before", [("key", absent),
                                           ("clientuuid", client)]),
                        ("remove-before", [("key", absent),
                                           ("clientuuid", client),
                                           ("timestamp", "abc")]),
                        ("remove-before", [("key", absent),
                                           ("clientuuid", client),
                                           ("timestamp", "")]),
                        ("remove-before", [("key", absent),
                                           ("clientuuid", client),
                                           ("timestamp", "1.5")]),
                        ("remove-before", [("key", "garbage"),
                                           ("clientuuid", client),
                                           ("timestamp", "5")]),
                        ("remove-before", [("clientuuid", client),
                                           ("timestamp", "5")])):
                    offered = rest == "remove" or version in ("v3", "v4")
                    self.row("POST", self.api(target, "%s/%s" % (
                        version, rest)) + query(*pairs),
                        situation=None if offered else "version not offered")
                for rest in ("gettimestamp", "remove", "remove-before"):
                    if rest != "remove" and version not in ("v3", "v4"):
                        continue
                    self.row("GET", self.api(target, "%s/%s" % (
                        version, rest)) + query(
                            ("key", absent), ("clientuuid", client),
                            ("timestamp", "5")),
                        situation="wrong method")
        # Removals that change the twins, in the same order on both.
        node1, node2, node3 = t.nodes
        node1Only = self.key("node1.bin")
        empty = self.key("empty.bin")

        def state(key):
            for target in (t.clusterUUID, node1, node2, node3):
                self.row("POST", self.api(target, "v4/checkpresent") + query(
                    ("key", key), ("clientuuid", client)))

        self.row("POST", self.api(node2, "v4/remove") + query(
            ("key", present), ("clientuuid", client)))
        state(present)
        self.row("POST", self.api(node3, "v3/remove-before") + query(
            ("key", present), ("clientuuid", client),
            ("timestamp", "99999999999")))
        state(present)
        self.row("POST", self.api(t.clusterUUID, "v1/remove") + query(
            ("key", node1Only), ("clientuuid", client)))
        state(node1Only)
        self.row("POST", self.api(t.clusterUUID, "v4/remove") + query(
            ("key", present), ("clientuuid", client)))
        state(present)
        self.row("POST", self.api(t.clusterUUID, "v4/remove-before") + query(
            ("key", empty), ("clientuuid", client),
            ("timestamp", "99999999999")))
        state(empty)
        for target in (t.clusterUUID, node1):
            for name in ("present.bin", "node1.bin", "empty.bin"):
                self.row("GET", self.api(target, "v4/key/" + self.key(name))
                         + query(("clientuuid", client)),
                         situation="missing content GET")
        self.finish()

    def test_lock(self):
        """
        lockcontent and keeplocked at every version on the gateway, the
        cluster and node1 (the lock taken, kept and released), then every
        bad input, keeplocked of an unknown lockid, and the removal of
        content held locked.
        """
        t = self.twins
        client = t.client
        present = self.key("present.bin")
        absent = self.key("absent.bin")
        node1 = t.nodes[0]

        def keeplocked(target, version, lockid, body, pairs=None,
                       situation=None, method="POST"):
            if pairs is None:
                pairs = [("lockid", lockid), ("clientuuid", client)]
            return self.row(method, self.api(target, version + "/keeplocked")
                            + query(*pairs), body=body,
                            headers={"Content-Type":
                                     "application/json;charset=utf-8"},
                            situation=situation)

        release = [b'{"unlock":false}', b"\n", b'{"unlock":true}', b"\n"]
        for _, target in self.targets():
            for version in VERSIONS:
                mine, theirs = self.row("POST", self.api(
                    target, version + "/lockcontent") + query(
                        ("key", present), ("clientuuid", client)))
                if (mine.ok and theirs.ok and mine.json().get("locked")
                        and theirs.json().get("locked")):
                    # Each server releases its own lock.
                    ids = (mine.json()["lockid"], theirs.json()["lockid"])
                    path = self.api(target, version + "/keeplocked")
                    answers = [send(port, "POST", path + query(
                        ("lockid", lockid), ("clientuuid", client)),
                        {"Content-Type": "application/json;charset=utf-8"},
                        list(release))
                        for port, lockid in zip(
                            (t.annexd.port, t.referencePort), ids)]
                    self.compared += 1
                    why = compare(answers[0], answers[1], "POST")
                    if why is None and answers[0].json() != {"locked": False}:
                        why = "keeplocked should answer locked:false"
                    if why is not None:
                        self.problems.append(t.readable(
                            "%s\n    request:   POST %s?lockid=<its own>\n"
                            "    annexd:    %s\n    reference: %s" % (
                                why, path, answers[0].describe(),
                                answers[1].describe())))
                self.row("POST", self.api(target, version + "/lockcontent")
                         + query(("key", absent), ("clientuuid", client)))
                keeplocked(target, version, "nosuch", list(release))
            self.row("POST", self.api(target, "v5/lockcontent") + query(
                ("key", present), ("clientuuid", client)),
                situation="version not offered")
            keeplocked(target, "v5", "nosuch", list(release),
                       situation="version not offered")
        # Bad input.
        for target in (node1, t.clusterUUID):
            for version in VERSIONS:
                for pairs in ([("key", present)],
                              [("clientuuid", client)],
                              [("key", present), ("clientuuid", "")],
                              [("key", present), ("clientuuid", "[a+b/]")],
                              [("key", "garbage"), ("clientuuid", client)],
                              [("key", present), ("clientuuid", client),
                               ("bypass", "")]):
                    self.row("POST", self.api(target, version
                                              + "/lockcontent")
                             + query(*pairs))
                self.row("GET", self.api(target, version + "/lockcontent")
                         + query(("key", present), ("clientuuid", client)),
                         situation="wrong method")
                keeplocked(target, version, "nosuch", b"", method="GET",
                           situation="wrong method")
                for body in (b"", b"garbage\n", b'{"unlock":true}',
                             b'{"unlock":false}\n', b'{"unlock":1}\n',
                             [b'{"unlock":', b'true}\n'],
                             b'{"unlock":true}\n{"unlock":true}\n'):
                    keeplocked(target, version, "nosuch", body)
                for pairs in ([("lockid", "nosuch")],
                              [("clientuuid", client)],
                              [("lockid", "[a+b]"), ("clientuuid", client)],
                              [("lockid", b64("nosuch")),
                               ("clientuuid", client)],
                              [("lockid", str(uuidlib.uuid4())),
                               ("clientuuid", client)]):
                    keeplocked(target, version, None, list(release),
                               pairs=pairs)
        # Removing content a client holds locked.
        held = self.key("node1.bin")
        path = self.api(node1, "v4/lockcontent") + query(
            ("key", held), ("clientuuid", client))
        mine, _ = self.row("POST", path)
        self.assertTrue(mine.ok and mine.json().get("locked"),
                        "annexd did not lock: %s" % (mine.describe(),))
        self.row("POST", self.api(node1, "v4/remove") + query(
            ("key", held), ("clientuuid", client)),
            situation="remove locked content", timeout=HANG_TIMEOUT,
            annexdJSON={"removed": False, "plusuuids": []})
        # annexd kept it (the reference may still be blocked on the lock:
        # only annexd is asked).
        still = send(t.annexd.port, "POST", self.api(
            node1, "v4/checkpresent") + query(("key", held),
                                              ("clientuuid", client)))
        if not (still.ok and still.json() == {"present": True}):
            self.problems.append(
                "annexd removed content held locked: checkpresent answered "
                + still.describe())
        self.finish()


class DeliberateTableTests(unittest.TestCase):
    """
    The table of deliberate differences itself.
    """

    def test_everySituationClaimed(self):
        """
        Every deliberate situation is exercised by some test, and the tests
        claim no situation that is not in the table.
        """
        claimed = set().union(*COVERAGE.values())
        self.assertEqual(claimed, set(DELIBERATE))
        for name in COVERAGE:
            self.assertTrue(hasattr(ConformanceTests, name)
                            or hasattr(EdgeTests, name), name)

    def test_wellFormed(self):
        """
        Every entry has the reference's statuses, annexd's status and a
        reason; annexd's status differs from the reference's unless the
        reference is known to vary.
        """
        for situation, (theirs, mine, reason) in DELIBERATE.items():
            self.assertIsInstance(theirs, tuple, situation)
            self.assertIsInstance(mine, int, situation)
            self.assertTrue(reason.strip(), situation)
            if mine in theirs and situation not in SAME_STATUS:
                self.assertGreater(len(theirs), 1, situation)


class EdgeTests(ConformanceMixin, unittest.TestCase):
    """
    Edge cases that once showed annexd bugs (fixed): a put body longer
    than announced, a negative remove-before deadline, parameters of the
    unversioned GET, keeplocked's validation.
    """

    def test_putLongerThanAnnounced(self):
        """
        A put body longer than X-git-annex-data-length (the first N bytes
        being the right content): both answer stored:false and neither
        stores the content (checkpresent says absent afterwards).
        """
        t = self.twins
        client = t.client
        n = 0
        for target in (t.nodes[0], t.clusterUUID, t.gateway):
            for version in ("v4", "v1", "v0"):
                if target == t.clusterUUID and version == "v0":
                    continue  # wedges the reference
                n += 1
                data = _pattern(b"long %d" % (n,), 30 + n)
                key = keyFor(data)
                self.row("POST", self.api(target, version + "/put") + query(
                    ("key", key), ("clientuuid", client), ("offset", "0")),
                    headers={"X-git-annex-data-length": str(len(data))},
                    body=data + b"EXTRA")
                self.row("POST", self.api(target, "v4/checkpresent") + query(
                    ("key", key), ("clientuuid", client)))
                self.row("POST", self.api(target, "v4/putoffset") + query(
                    ("key", key), ("clientuuid", client)),
                    situation="partial kept after a longer body",
                    annexdJSON={"offset": len(data) - 1})
        self.finish()

    def test_removeBeforeNegativeTimestamp(self):
        """
        remove-before with a negative timestamp: the reference answers as
        for any timestamp in the past (removed:true for absent content,
        removed:false for content there); annexd answers 500.
        """
        t = self.twins
        client = t.client
        for target in (t.nodes[0], t.clusterUUID, t.gateway):
            for version in ("v4", "v3"):
                for name in ("absent.bin", "present.bin"):
                    self.row("POST", self.api(
                        target, version + "/remove-before") + query(
                            ("key", self.key(name)), ("clientuuid", client),
                            ("timestamp", "-5")))
        self.finish()

    def test_unversionedGet(self):
        """
        The unversioned GET route takes only clientuuid and bypass: the
        reference ignores offset and associatedfile there (whole content,
        whatever their value); annexd applies the offset and rejects a
        badly wrapped associatedfile or offset.
        """
        t = self.twins
        present = self.key("present.bin")
        for target in (t.clusterUUID, t.nodes[0]):
            path = self.api(target, "key/" + present)
            for pairs in ([("offset", "10")], [("offset", "0")],
                          [("offset", "abc")], [("offset", "-10")],
                          [("associatedfile", "[a+b]")],
                          [("associatedfile", "f.bin"), ("offset", "999")]):
                self.row("GET", path + query(*pairs))
        self.finish()

    def test_validation(self):
        """
        Values the reference rejects with 400 and annexd does not look at:
        keeplocked's lockid when empty, its clientuuid and bypass when
        empty or badly wrapped (the reference parses them although it then
        ignores them), and an empty server uuid segment (/git-annex/ +
        nothing: the reference's 404, annexd's 400).
        """
        t = self.twins
        client = t.client
        for target in (t.nodes[0], t.clusterUUID):
            for pairs in ([("lockid", ""), ("clientuuid", client)],
                          [("lockid", "nosuch"), ("clientuuid", "")],
                          [("lockid", "nosuch"), ("clientuuid", "[a+b]")],
                          [("lockid", "nosuch"), ("clientuuid", client),
                           ("bypass", "")]):
                self.row("POST", self.api(target, "v4/keeplocked")
                         + query(*pairs), body=b'{"unlock":true}\n')
        self.row("GET", "/git-annex/")
        self.row("POST", "/git-annex//v4/checkpresent" + query(
            ("key", self.key("present.bin")), ("clientuuid", client)))
        self.finish()

