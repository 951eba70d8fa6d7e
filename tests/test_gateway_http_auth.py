"""
A real git-annex client against annexd with HTTP authentication: a users
file (alice full, bob readonly, made with C{annexd passwd} and
L{annexd.http.auth.addUser}) and C{--unauth-readonly}.

The client gets its credentials from a git credential helper configured in
its repository.  git-annex asks it (C{git credential fill}) after a 401,
with C{protocol=annex+http}, C{host=127.0.0.1:PORT} and the annexUrl's
path; it approves a credential that worked (C{store}) and rejects one that
got a 401 (C{erase}).  Where the client's behaviour is hard to observe,
raw requests (L{http.client}) check the answers themselves; after every
refusal the nodes must be unchanged.
"""

import base64
import hashlib
import http.client
import json
import os
import re
import shlex
import subprocess
import sys

from twisted.trial import unittest

from annexd.http.auth import Permission, addUser
from tests.support.annex import _text, cluster_for
from tests.support.daemon import startDaemon
from tests.test_gateway_http import CLUSTER, HTTPGatewayMixin

_REQUEST = re.compile(r'"(GET|POST) /git-annex/[^/]+/v\d/([a-z-]+)[^"]*"'
                      r' (\d{3}) ')

CHALLENGE = 'Basic realm="git-annex", charset="UTF-8"'

ALICE = ("alice", "alice's password: full")
BOB = ("bob", "bob-readonly")


def annexdPasswd(usersFile, name, password, permission):
    """
    Run C{annexd passwd USERSFILE NAME --permission PERMISSION} with the
    password on stdin, as an operator would.
    """
    subprocess.run(
        [sys.executable, "-c",
         "import sys; from annexd.cli import main; sys.exit(main())",
         "passwd", usersFile, name, "--permission", permission],
        input=(password + "\n").encode("utf-8"), check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def credentialHelper(name, password, log):
    """
    A C{credential.helper} value: a helper that answers C{name} and
    C{password} to C{get}, and appends every request it gets (operation
    and description) to the file C{log}.
    """
    log = shlex.quote(log)
    return ("!f() { echo \"op=$1\" >> %s; cat >> %s; "
            "test \"$1\" = get || exit 0; echo username=%s; "
            "echo password=%s; }; f"
            % (log, log, shlex.quote(name), shlex.quote(password)))


def helperRequests(log):
    """
    The requests a L{credentialHelper} logged: a list of C{(operation,
    {field: value})}.
    """
    if not os.path.exists(log):
        return []
    requests = []
    with open(log) as f:
        for line in f.read().splitlines():
            if line.startswith("op="):
                requests.append((line[3:], {}))
            elif "=" in line and requests:
                field, value = line.split("=", 1)
                requests[-1][1][field] = value
    return requests


def apiRequest(connection, cluster, method, route, credentials=None,
               body=b"", headers=None, uuid=None, **query):
    """
    One request on C{connection} to C{/git-annex/UUID/ROUTE?QUERY} with the
    client's uuid as C{clientuuid}.

    @param cluster: the L{tests.support.annex.Cluster}.
    @param uuid: the server uuid (default: the cluster's).
    @param credentials: C{(name, password)} for Basic auth, or L{None}.
    @return: C{(response, body bytes)}
    """
    query = dict(query, clientuuid=cluster.client.uuid)
    path = "/git-annex/%s/%s?%s" % (
        uuid or cluster.cluster_uuid, route,
        "&".join("%s=%s" % item for item in query.items()))
    headers = dict(headers or {})
    if credentials is not None:
        token = base64.b64encode(
            ("%s:%s" % credentials).encode("utf-8")).decode("ascii")
        headers["Authorization"] = "Basic " + token
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response, response.read()


def putRequest(connection, cluster, data, credentials=None):
    """
    A v4 put of C{data} (as a SHA256E key with extension C{.bin}) to the
    cluster; see L{apiRequest}.

    @return: C{(key, response, body bytes)}
    """
    key = "SHA256E-s%d--%s.bin" % (len(data),
                                   hashlib.sha256(data).hexdigest())
    response, body = apiRequest(
        connection, cluster, "POST", "v4/put", credentials, body=data,
        headers={"X-git-annex-data-length": str(len(data)),
                 "Content-Type": "application/octet-stream"},
        key=key)
    return key, response, body


class AuthMixin(HTTPGatewayMixin):
    """
    A cluster and C{annexd --users FILE --unauth-readonly}, the users file
    holding alice (full, added with C{annexd passwd}) and bob (readonly,
    added with L{addUser}).  The client's gw remote still uses ssh.
    """

    def setUpAuth(self):
        self.cluster = cluster_for(self)
        self.usersFile = os.path.abspath(self.mktemp())
        annexdPasswd(self.usersFile, ALICE[0], ALICE[1], "full")
        addUser(self.usersFile, BOB[0], BOB[1], Permission.READONLY)
        self.daemon = startDaemon(
            self, self.cluster.env.env,
            ["--repo", self.cluster.gateway.path, "--users", self.usersFile,
             "--unauth-readonly"])
        self.helperLog = os.path.abspath(self.mktemp())

    @property
    def everyNode(self):
        return {n.name for n in self.cluster.nodes}

    def assertOnNodes(self, key, digest, nodes):
        for node in self.cluster.nodes:
            expected = digest if node.name in nodes else None
            self.assertEqual(self.cluster.node_sha256(node, key), expected,
                             "%s on %s" % (key, node.name))


class AuthenticatedClientTests(AuthMixin, unittest.TestCase):
    """
    git-annex copy, get and drop as an anonymous user, alice (full), alice
    with a wrong password and bob (readonly), against
    C{annexd --users FILE --unauth-readonly}.
    """

    def setUp(self):
        self.setUpAuth()
        # A file already on every node, stored over ssh (the client's gw
        # remote is still its ssh url).
        self.stored, self.storedDigest = self.writeFile("stored.bin", 40000)
        self.client("copy", "--to", CLUSTER, "stored.bin")
        self.assertOnNodes(self.stored, self.storedDigest, self.everyNode)
        self.useHTTP(self.daemon.annexUrl())

    def useCredentials(self, name, password):
        """
        Configure a credential helper in the client that answers
        C{name}/C{password} to C{get}, and logs every request it gets
        (operation and description) to C{self.helperLog}.
        """
        self.cluster.client_git("config", "credential.helper",
                                credentialHelper(name, password,
                                                 self.helperLog))

    def helperRequests(self):
        return helperRequests(self.helperLog)

    def statuses(self):
        """
        The API requests annexd logged: a list of C{(method, route,
        status)}, e.g. C{("POST", "put", 403)}.
        """
        found = []
        for line in self.daemon.output().splitlines():
            match = _REQUEST.search(line)
            if match is not None:
                found.append((match.group(1), match.group(2),
                              int(match.group(3))))
        return found

    def attempt(self, *args):
        """
        Run C{git annex ARGS} in the client, expecting it to fail.

        @return: its output (stdout and stderr).
        """
        result = self.client(*args, check=False)
        output = _text(result.stdout) + _text(result.stderr)
        self.assertNotEqual(result.returncode, 0, output)
        return output

    def test_anonymous(self):
        """
        Without credentials, get --from the cluster works (anonymous users
        may read); copy --to the cluster fails (annexd challenges, the
        client has no credentials to offer) and nothing reaches the nodes.
        """
        self.client("drop", "--force", "stored.bin")
        self.client("get", "--from", CLUSTER, "stored.bin")
        with open(os.path.join(self.cluster.client.path, "stored.bin"),
                  "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(),
                             self.storedDigest)
        key, digest = self.writeFile("anon.bin", 5000)
        self.attempt("copy", "--to", CLUSTER, "anon.bin")
        self.assertOnNodes(key, digest, set())
        refused = [line for line in self.daemon.output().splitlines()
                   if "/v4/put" in line and '" 401 ' in line]
        self.assertTrue(refused, "annexd did not challenge the write")

    def test_aliceCopiesAndDrops(self):
        """
        alice (full), with her password from a credential helper, copies a
        file to every node (checksums on the nodes) and drops it from the
        cluster again.  git-annex asked the helper for
        C{protocol=annex+http}, C{host=127.0.0.1:PORT} and stored the
        credential once it worked.
        """
        self.useCredentials(*ALICE)
        key, digest = self.writeFile("alice.bin", 300000)
        self.client("copy", "--to", CLUSTER, "alice.bin")
        self.assertOnNodes(key, digest, self.everyNode)
        self.client("drop", "--from", CLUSTER, "alice.bin")
        self.assertOnNodes(key, digest, set())
        requests = self.helperRequests()
        self.assertTrue(requests, "the credential helper was not asked")
        operation, fields = requests[0]
        self.assertEqual(operation, "get")
        self.assertEqual(fields.get("protocol"), "annex+http")
        self.assertEqual(fields.get("host"), "127.0.0.1:%d"
                         % (self.daemon.port,))
        self.assertIn("store", [op for op, _ in requests])
        self.assertNotIn("erase", [op for op, _ in requests])

    def test_aliceWrongPassword(self):
        """
        alice with a wrong password cannot copy: annexd answers 401 (never
        403) to every write, the client rejects the credential (the helper
        gets C{erase}) and the copy fails; nothing reaches the nodes.  She
        cannot drop either: the content stays on every node.
        """
        self.useCredentials(ALICE[0], "not " + ALICE[1])
        key, digest = self.writeFile("wrong.bin", 5000)
        self.attempt("copy", "--to", CLUSTER, "wrong.bin")
        self.assertOnNodes(key, digest, set())
        self.attempt("drop", "--from", CLUSTER, "stored.bin")
        self.assertOnNodes(self.stored, self.storedDigest, self.everyNode)
        operations = [op for op, _ in self.helperRequests()]
        self.assertIn("get", operations)
        self.assertIn("erase", operations)
        self.assertNotIn("store", operations)
        refused = {(route, status) for _, route, status in self.statuses()
                   if route in ("put", "putoffset", "remove")}
        self.assertEqual({status for _, status in refused}, {401})
        self.assertIn(("remove", 401), refused)

    def test_readonlyUser(self):
        """
        bob (readonly) cannot copy (nothing reaches the nodes) nor drop
        (the content stays on every node): after his credentials annexd
        answers 403 to put and remove, and the client keeps them (no
        C{erase}: they are right, just not enough).  He can still drop his
        own copy (which locks a copy behind annexd) and get it back.
        """
        self.useCredentials(*BOB)
        key, digest = self.writeFile("bob.bin", 5000)
        self.attempt("copy", "--to", CLUSTER, "bob.bin")
        self.assertOnNodes(key, digest, set())
        self.attempt("drop", "--from", CLUSTER, "stored.bin")
        self.assertOnNodes(self.stored, self.storedDigest, self.everyNode)
        statuses = self.statuses()
        self.assertIn(("POST", "put", 403), statuses)
        self.assertIn(("POST", "remove", 403), statuses)
        self.assertNotIn("erase", [op for op, _ in self.helperRequests()])
        # Dropping the local copy needs a lock on a copy behind annexd (the
        # client's direct path remote to node1 is ignored); locking is
        # open to anonymous users here.
        self.cluster.client_git("config", "remote.node1path.annex-ignore",
                                "true")
        self.client("drop", "stored.bin")
        self.assertIn(("POST", "lockcontent", 200), self.statuses())
        self.client("get", "--from", CLUSTER, "stored.bin")


class RawRequestTests(AuthMixin, unittest.TestCase):
    """
    The answers themselves, with raw requests to the cluster's uuid, for
    C{annexd --users FILE --unauth-readonly}.
    """

    def setUp(self):
        self.setUpAuth()
        self.stored, self.storedDigest = self.writeFile("stored.bin", 20000)
        self.client("copy", "--to", CLUSTER, "stored.bin")
        self.data = os.urandom(1000)
        self.newDigest = hashlib.sha256(self.data).hexdigest()
        self.newKey = "SHA256E-s%d--%s.bin" % (len(self.data), self.newDigest)
        self.assertUnchanged()

    def assertUnchanged(self):
        """
        The stored key is on every node and the new key on none.
        """
        for node in self.cluster.nodes:
            self.assertEqual(self.cluster.node_sha256(node, self.stored),
                             self.storedDigest, node.name)
            self.assertIsNone(self.cluster.node_sha256(node, self.newKey),
                              node.name)

    def request(self, method, route, credentials=None, body=b"",
                headers=None, uuid=None, **query):
        """
        One request to C{/git-annex/<cluster uuid>/ROUTE?QUERY} with the
        client's uuid as C{clientuuid}; see L{apiRequest}.
        """
        connection = http.client.HTTPConnection("127.0.0.1",
                                                self.daemon.port, timeout=30)
        self.addCleanup(connection.close)
        return apiRequest(connection, self.cluster, method, route,
                          credentials, body, headers, uuid, **query)

    def put(self, credentials=None):
        connection = http.client.HTTPConnection("127.0.0.1",
                                                self.daemon.port, timeout=30)
        self.addCleanup(connection.close)
        key, response, body = putRequest(connection, self.cluster, self.data,
                                         credentials)
        self.assertEqual(key, self.newKey)
        return response, body

    def remove(self, credentials=None):
        return self.request("POST", "v4/remove", credentials,
                            key=self.stored)

    def assertChallenge(self, response, body):
        self.assertEqual((response.status, response.getheader(
            "WWW-Authenticate")), (401, CHALLENGE), body)

    def test_wrongPassword(self):
        """
        A put or a remove with a wrong password, or an unknown user, gets
        401 with the challenge C{Basic realm="git-annex", charset="UTF-8"}
        (as does one without credentials); the nodes are unchanged.
        """
        for credentials in (None, (ALICE[0], "wrong"), ("mallory", "x")):
            self.assertChallenge(*self.put(credentials))
            self.assertChallenge(*self.remove(credentials))
        self.assertUnchanged()

    def test_readonlyUser(self):
        """
        bob (readonly) may checkpresent, GET and lock; his put and remove
        get 403 (no challenge); the nodes are unchanged.
        """
        response, body = self.request("POST", "v4/checkpresent", BOB,
                                      key=self.stored)
        self.assertEqual(response.status, 200, body)
        self.assertEqual(json.loads(body), {"present": True})
        response, body = self.request("GET", "v4/key/" + self.stored, BOB)
        self.assertEqual(response.status, 200, body)
        self.assertEqual(hashlib.sha256(body).hexdigest(), self.storedDigest)
        for response, body in (self.put(BOB), self.remove(BOB)):
            self.assertEqual(response.status, 403, body)
            self.assertIsNone(response.getheader("WWW-Authenticate"))
        self.assertUnchanged()
        # bob may lock (the reference server refuses authenticated readonly
        # users; annexd.http.auth, deviation 1), and unlock.
        node = self.cluster.node(1).uuid
        response, body = self.request("POST", "v4/lockcontent", BOB,
                                      uuid=node, key=self.stored)
        self.assertEqual(response.status, 200, body)
        lock = json.loads(body)
        self.assertTrue(lock["locked"], body)
        response, body = self.request(
            "POST", "v4/keeplocked", BOB, body=b'{"unlock":true}\n',
            headers={"Content-Type": "application/json;charset=utf-8"},
            uuid=node, lockid=lock["lockid"])
        self.assertEqual((response.status, json.loads(body)),
                         (200, {"locked": False}))

    def test_anonymousRead(self):
        """
        Anonymous users (--unauth-readonly) may checkpresent and GET
        without any challenge.
        """
        response, body = self.request("POST", "v4/checkpresent",
                                      key=self.stored)
        self.assertEqual((response.status, json.loads(body)),
                         (200, {"present": True}))
        response, body = self.request("GET", "v4/key/" + self.stored)
        self.assertEqual(response.status, 200, body)
        self.assertEqual(hashlib.sha256(body).hexdigest(), self.storedDigest)

    def test_aliceMayWrite(self):
        """
        The same put and remove requests succeed for alice (full): the
        refusals above are about the credentials, not the requests.
        """
        response, body = self.put(ALICE)
        self.assertEqual(response.status, 200, body)
        self.assertTrue(json.loads(body)["stored"], body)
        for node in self.cluster.nodes:
            self.assertEqual(self.cluster.node_sha256(node, self.newKey),
                             self.newDigest, node.name)
        response, body = self.remove(ALICE)
        self.assertEqual(response.status, 200, body)
        self.assertTrue(json.loads(body)["removed"], body)
        for node in self.cluster.nodes:
            self.assertIsNone(self.cluster.node_sha256(node, self.stored),
                              node.name)

    def test_usersFileReloaded(self):
        """
        A user added with C{annexd passwd} while annexd runs may write at
        once; after a password change the old password gets 401 and the
        new one works.
        """
        carol = ("carol", "carol-1")
        self.assertChallenge(*self.put(carol))
        self.assertUnchanged()
        annexdPasswd(self.usersFile, carol[0], carol[1], "full")
        response, body = self.remove(carol)
        self.assertEqual(response.status, 200, body)
        self.assertTrue(json.loads(body)["removed"], body)
        annexdPasswd(self.usersFile, carol[0], "carol-2", "full")
        self.assertChallenge(*self.put(carol))
        response, body = self.put((carol[0], "carol-2"))
        self.assertEqual(response.status, 200, body)
        for node in self.cluster.nodes:
            self.assertEqual(self.cluster.node_sha256(node, self.newKey),
                             self.newDigest, node.name)


class GitOverHTTPAuthTests(AuthMixin, unittest.TestCase):
    """
    git itself (smart HTTP on the same listener) under the same
    authorisation: anyone may clone, only alice may push; and alice's fresh
    clone copies annexed content with the credential of its http remote.
    """

    def setUp(self):
        self.setUpAuth()
        self.url = "%s/gateway" % (self.daemon.url,)
        self.gatewayMain = self.gatewayRef("main")

    def gatewayRef(self, ref):
        return self.cluster.env.git(self.cluster.gateway.path, "rev-parse",
                                    "--verify", "-q", ref,
                                    check=False).strip()

    def cloneAndCommit(self, credentials=None):
        """
        Clone the gateway over HTTP (anonymously), configure
        C{credentials} in the clone, and commit a new file there.

        @return: the clone's path.
        """
        env = self.cluster.env
        repo = os.path.abspath(self.mktemp())
        env.run(["git", "clone", "-q", self.url, repo],
                cwd=self.cluster.base_dir)
        if credentials is not None:
            env.git(repo, "config", "credential.helper",
                    credentialHelper(*credentials, self.helperLog))
        with open(os.path.join(repo, "new.txt"), "w") as f:
            f.write("new\n")
        env.git(repo, "add", "new.txt")
        env.git(repo, "commit", "-q", "-m", "new")
        return repo

    def assertPushRefused(self, repo):
        result = self.cluster.env.run(["git", "push", "origin", "main"],
                                      cwd=repo, check=False)
        self.assertNotEqual(result.returncode, 0, _text(result.stderr))
        self.assertEqual(self.gatewayRef("main"), self.gatewayMain)
        return _text(result.stderr)

    def test_anonymousPushRefused(self):
        """
        An anonymous clone works; its push is refused (401, and git has no
        credentials to offer) and the gateway's main is unchanged.
        """
        repo = self.cloneAndCommit()
        self.assertPushRefused(repo)

    def test_readonlyUserPushRefused(self):
        """
        bob (readonly) cannot push: 403 after his credentials; the
        gateway's main is unchanged.
        """
        repo = self.cloneAndCommit(BOB)
        stderr = self.assertPushRefused(repo)
        self.assertIn("403", stderr)

    def test_wrongPasswordPushRefused(self):
        """
        alice with a wrong password cannot push; git rejects the
        credential (C{erase}).
        """
        repo = self.cloneAndCommit((ALICE[0], "wrong"))
        self.assertPushRefused(repo)
        self.assertIn("erase", [op for op, _ in
                                helperRequests(self.helperLog)])

    def test_aliceFreshClone(self):
        """
        alice clones the gateway, adds an annexed file, copies it to the
        cluster (checksums on the nodes) and pushes her branch: git-annex
        found the annex+http url in C{/config} and used the credential of
        the http remote (the helper was asked for C{protocol=http}, not
        annex+http).
        """
        env = self.cluster.env
        repo = self.cloneAndCommit(ALICE)
        env.git(repo, "config", "annex.security.allowed-ip-addresses", "all")
        data = os.urandom(30000)
        with open(os.path.join(repo, "alice.bin"), "wb") as f:
            f.write(data)
        env.annex(repo, "add", "--quiet", "alice.bin")
        env.git(repo, "commit", "-q", "-m", "alice.bin")
        key = env.annex(repo, "lookupkey", "alice.bin").strip()
        env.annex(repo, "copy", "--to", "origin-mycluster", "alice.bin")
        self.assertOnNodes(key, hashlib.sha256(data).hexdigest(),
                           self.everyNode)
        requests = helperRequests(self.helperLog)
        self.assertEqual(requests[0][0], "get")
        self.assertEqual(requests[0][1].get("protocol"), "http")
        env.git(repo, "push", "-q", "origin", "main")
        self.assertEqual(self.gatewayRef("main"),
                         env.git(repo, "rev-parse", "main").strip())
