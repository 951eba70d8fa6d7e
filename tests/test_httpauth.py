"""
Tests for L{annexd.http.auth}: the p2phttp authorisation matrix (spec
section 4) with annexd's deliberate deviations, the users file, the
environment users and C{annexd passwd}.
"""

import base64
import io
import os
import stat
import sys

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import succeed
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from annexd import cli
from annexd.http import auth
from annexd.http.auth import (
    DEVIATIONS, Action, AnnexRealm, AuthPolicy, BasicCredentials,
    CredentialSources, Decision, EnvironmentUsers, IAnnexUser,
    ICredentialSource, Permission, RequestMind, UsersFile, addUser,
    buildPolicy, hashPassword, parseBasicAuthorization, verifyPassword)


def basic(user, password, scheme=b"Basic"):
    """
    An C{Authorization} header value for C{user:password}.
    """
    raw = (user + ":" + password).encode("utf-8")
    return scheme + b" " + base64.b64encode(raw)


# Users of the measured matrix: alice full, bob readonly, carol appendonly.
ENVIRON = {
    "GIT_ANNEX_P2PHTTP_PASSWORD_alice": "alice-pw",
    "GIT_ANNEX_P2PHTTP_PASSWORD_bob": "bob-pw",
    "GIT_ANNEX_P2PHTTP_PERMISSIONS_bob": "readonly",
    "GIT_ANNEX_P2PHTTP_PASSWORD_carol": "carol-pw",
    "GIT_ANNEX_P2PHTTP_PERMISSIONS_carol": "appendonly",
    "PATH": "/usr/bin",
}

COLUMNS = [
    ("anonymous", None),
    ("alice ok", basic("alice", "alice-pw")),
    ("alice wrong pw", basic("alice", "nope")),
    ("bob (ro)", basic("bob", "bob-pw")),
    ("carol (ao)", basic("carol", "carol-pw")),
]

# checkpresent, GET, put, lockcontent, remove
ACTIONS = [Action.READ, Action.READ, Action.WRITE, Action.LOCK, Action.REMOVE]

# The matrix of spec section 4.  Each cell lists the statuses for
# checkpresent, GET, put, lockcontent, remove; "-" is 200.  Where annexd
# deliberately differs from the reference a cell reads "REF>ANNEXD" (e.g.
# "403>200"), with a comment naming the deviation (numbers as in the module
# docstring of annexd.http.auth).  All other values are the reference's.
MATRIX = [
    ("(none)", {}, False, [
        "401 401 401 401 401",
        "401 401 401 401 401",
        "401 401 401 401 401",
        "401 401 401 401 401",
        "401 401 401 401 401",
    ]),
    ("--wideopen", {"wideopen": True}, False, [
        "- - - - -",
        "- - - - -",
        "- - - - -",
        "- - - - -",
        "- - - - -",
    ]),
    ("--unauth-readonly", {"unauth": Permission.READONLY}, False, [
        "- - 403 - 403",
        "- - 403 - 403",
        "- - 403 - 403",
        "- - 403 - 403",
        "- - 403 - 403",
    ]),
    ("--unauth-appendonly", {"unauth": Permission.APPENDONLY}, False, [
        "- - - - 403",
        "- - - - 403",
        "- - - - 403",
        "- - - - 403",
        "- - - - 403",
    ]),
    ("--unauth-readonly --unauth-nolocking",
     {"unauth": Permission.READONLY, "unauthNoLocking": True}, False, [
         "- - 403 403 403",
         "- - 403 403 403",
         "- - 403 403 403",
         "- - 403 403 403",
         "- - 403 403 403",
     ]),
    ("--authenv-http", {"authenvHttp": True}, False, [
        "401 401 401 401 401",
        "- - - - -",
        "401 401 401 401 401",
        "- - 403 403>200 403",  # 1: readonly users may lock
        "- - - - 403",
    ]),
    ("--authenv-http --unauth-readonly",
     {"authenvHttp": True, "unauth": Permission.READONLY}, False, [
         "- - 401 - 401",
         "- - - - -",
         "- - 403>401 - 403>401",  # 3: bad credentials get 401
         "- - 403 403>200 403",  # 1: readonly users may lock
         "- - - - 403",
     ]),
    ("--authenv-http --unauth-appendonly --unauth-nolocking",
     {"authenvHttp": True, "unauth": Permission.APPENDONLY,
      "unauthNoLocking": True}, False, [
         "- - - 200>401 401",  # 2: nolocking applies in appendonly mode
         "- - - - -",
         "- - - 200>401 403>401",  # 2 (lock), 3 (remove)
         "- - 403 403>200 403",  # 1: readonly users may lock
         "- - - - 403",
     ]),
    ("--authenv (over HTTP)", {"authenv": True}, False, [
        "401>403 401>403 401>403 401>403 401>403",  # 4: no challenge
        "401>403 401>403 401>403 401>403 401>403",  # 5: credentials ignored
        "401>403 401>403 401>403 401>403 401>403",  # 5
        "401>403 401>403 401>403 401>403 401>403",  # 5
        "401>403 401>403 401>403 401>403 401>403",  # 5
    ]),
    ("--authenv --unauth-readonly (over HTTP)",
     {"authenv": True, "unauth": Permission.READONLY}, False, [
         "- - 401>403 - 401>403",  # 4: no challenge over plain HTTP
         "- - 403 - 403",
         "- - 403 - 403",
         "- - 403 - 403",
         "- - 403 - 403",
     ]),
    # Not measured; what the reference's source gives over HTTPS.
    ("--authenv (over HTTPS)", {"authenv": True}, True, [
        "401 401 401 401 401",
        "- - - - -",
        "401 401 401 401 401",
        "- - 403 403>200 403",  # 1: readonly users may lock
        "- - - - 403",
    ]),
    ("--authenv --unauth-readonly (over HTTPS)",
     {"authenv": True, "unauth": Permission.READONLY}, True, [
         "- - 401 - 401",
         "- - - - -",
         "- - 403>401 - 403>401",  # 3: bad credentials get 401
         "- - 403 403>200 403",  # 1: readonly users may lock
         "- - - - 403",
     ]),
]


def parseCell(token):
    """
    A matrix token: C{(reference, annexd)} statuses.
    """
    if ">" in token:
        ref, ours = token.split(">")
        return int(ref), int(ours)
    status = 200 if token == "-" else int(token)
    return status, status


class MatrixTests(unittest.SynchronousTestCase):
    """
    The measured p2phttp matrix, with annexd's deliberate deviations.
    """

    def test_matrix(self):
        """
        Every cell of L{MATRIX} gets the annexd status, and authorised
        requests name the authenticated user (or none when anonymous).
        """
        wrong = []
        for label, options, secure, rows in MATRIX:
            policy = buildPolicy(environ=ENVIRON, **options)
            for (column, header), cells in zip(COLUMNS, rows):
                tokens = cells.split()
                self.assertEqual(len(tokens), len(ACTIONS), (label, column))
                for action, token in zip(ACTIONS, tokens):
                    _ref, expected = parseCell(token)
                    decision = self.successResultOf(
                        policy.authorize(header, action, secure))
                    if decision.status != expected:
                        wrong.append("%s / %s / %s: got %d, expected %d" % (
                            label, column, action.value, decision.status,
                            expected))
                    if decision.allowed and decision.user is not None:
                        self.assertEqual(decision.user, column.split()[0])
        self.assertEqual(wrong, [])

    def test_deviationsListed(self):
        """
        Each deviating cell of L{MATRIX} has an entry in L{DEVIATIONS} with
        the same reference and annexd statuses, and every entry of
        L{DEVIATIONS} is used by the matrix.
        """
        listed = {(ref, ours) for _, ref, ours, _ in DEVIATIONS}
        used = set()
        for _label, _options, _secure, rows in MATRIX:
            for cells in rows:
                for token in cells.split():
                    ref, ours = parseCell(token)
                    if ref != ours:
                        self.assertIn((ref, ours), listed, token)
                        used.add((ref, ours))
        self.assertEqual(used, listed)

    def test_deviationsShape(self):
        """
        L{DEVIATIONS} holds C{(situation, reference status, annexd status,
        reason)} tuples with one-line texts and differing statuses.
        """
        self.assertTrue(DEVIATIONS)
        for situation, ref, ours, reason in DEVIATIONS:
            self.assertIsInstance(ref, int)
            self.assertIsInstance(ours, int)
            self.assertNotEqual(ref, ours)
            for text in (situation, reason):
                self.assertTrue(text)
                self.assertNotIn("\n", text)

    def test_challengeOnlyOn401(self):
        """
        The challenge is the exact reference value; refusals say why in one
        line.
        """
        self.assertEqual(AuthPolicy.CHALLENGE,
                         b'Basic realm="git-annex", charset="UTF-8"')
        policy = buildPolicy(environ=ENVIRON, authenvHttp=True)
        decision = self.successResultOf(
            policy.authorize(None, Action.READ, False))
        self.assertEqual(decision.status, 401)
        self.assertFalse(decision.allowed)
        self.assertTrue(decision.reason)
        self.assertNotIn("\n", decision.reason)

    def test_wideopenNoLocking(self):
        """
        C{--wideopen} allows everything, locking included, whatever the
        other anonymous options say.
        """
        policy = AuthPolicy(wideopen=True, unauth=Permission.READONLY,
                            unauthNoLocking=True)
        for action in Action:
            self.assertEqual(
                self.successResultOf(policy.authorize(None, action, False)),
                Decision(200, None))


class HeaderTests(unittest.SynchronousTestCase):
    """
    Parsing the C{Authorization} header.
    """

    def setUp(self):
        self.policy = buildPolicy(environ=ENVIRON, authenvHttp=True)

    def decide(self, header, action=Action.READ, secure=False):
        return self.successResultOf(
            self.policy.authorize(header, action, secure))

    def test_malformed(self):
        """
        A header that is not C{Basic <base64 of user:password>} gets 400
        "invalid basic auth header".
        """
        for header in [b"Bearer abc", b"Basic", b"Basic !!!!",
                       b"Basic " + base64.b64encode(b"nocolon"),
                       b"", b"Digest username=alice",
                       b"Basic YWxpY2U6YWxpY2UtcHc"]:  # bad padding
            decision = self.decide(header)
            self.assertEqual(
                (decision.status, decision.reason),
                (400, "invalid basic auth header"), header)

    def test_malformedWideopen(self):
        """
        With C{--wideopen} even a malformed header is ignored.
        """
        policy = AuthPolicy(wideopen=True)
        self.assertEqual(
            self.successResultOf(
                policy.authorize(b"Bearer x", Action.REMOVE, False)),
            Decision(200, None))

    def test_schemeCaseInsensitive(self):
        """
        The scheme name is matched case-insensitively.
        """
        for scheme in (b"basic", b"BASIC", b"bAsIc"):
            self.assertEqual(
                self.decide(basic("alice", "alice-pw", scheme), Action.REMOVE),
                Decision(200, "alice"))

    def test_passwordWithColon(self):
        """
        The password is everything after the first C{:}.
        """
        policy = buildPolicy(environ={
            "GIT_ANNEX_P2PHTTP_PASSWORD_dave": "a:b::c"}, authenvHttp=True)
        self.assertEqual(
            self.successResultOf(policy.authorize(
                basic("dave", "a:b::c"), Action.WRITE, False)),
            Decision(200, "dave"))
        self.assertEqual(
            self.successResultOf(policy.authorize(
                basic("dave", "a:b"), Action.WRITE, False)).status, 401)
        self.assertEqual(parseBasicAuthorization(basic("x", ":y:")),
                         (b"x", b":y:"))

    def test_strHeader(self):
        """
        A header given as L{str} is accepted too.
        """
        self.assertEqual(
            self.decide(basic("alice", "alice-pw").decode("ascii")),
            Decision(200, "alice"))

    def test_actionStrings(self):
        """
        The action may be given as its string value.
        """
        self.assertEqual(
            self.decide(basic("bob", "bob-pw"), "remove").status, 403)


class TransportTests(unittest.SynchronousTestCase):
    """
    Which credentials are honoured over HTTP and over HTTPS.
    """

    def test_authenvHttpVsHttps(self):
        """
        C{--authenv} users are honoured over HTTPS only; C{--authenv-http}
        users over both.
        """
        httpsOnly = buildPolicy(environ=ENVIRON, authenv=True)
        both = buildPolicy(environ=ENVIRON, authenvHttp=True)
        alice = basic("alice", "alice-pw")
        self.assertEqual(
            self.successResultOf(httpsOnly.authorize(alice, Action.WRITE, True)),
            Decision(200, "alice"))
        self.assertEqual(
            self.successResultOf(
                httpsOnly.authorize(alice, Action.WRITE, False)).status, 403)
        self.assertFalse(httpsOnly.canAuthenticate(False))
        self.assertTrue(httpsOnly.canAuthenticate(True))
        for secure in (False, True):
            self.assertEqual(
                self.successResultOf(both.authorize(alice, Action.WRITE, secure)),
                Decision(200, "alice"))

    def test_usersFileOverHttpWithAuthenv(self):
        """
        With a users file and C{--authenv}, over plain HTTP the file's users
        are honoured and environment users are not (their credentials are
        just wrong there, so 401); over HTTPS both are.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("erin:%s:appendonly\n" % (hashPassword("erin-pw", n=16),))
        policy = buildPolicy(usersFile=path, authenv=True, environ=ENVIRON)
        erin, alice = basic("erin", "erin-pw"), basic("alice", "alice-pw")
        self.assertEqual(
            self.successResultOf(policy.authorize(erin, Action.WRITE, False)),
            Decision(200, "erin"))
        self.assertEqual(
            self.successResultOf(
                policy.authorize(alice, Action.WRITE, False)).status, 401)
        self.assertEqual(
            self.successResultOf(policy.authorize(alice, Action.WRITE, True)),
            Decision(200, "alice"))
        self.assertEqual(
            self.successResultOf(policy.authorize(None, Action.READ, False)
                                 ).status, 401)

    def test_usersFileWinsOverEnvironment(self):
        """
        A name in both the users file and the environment gets the users
        file's password and permission.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("alice:%s:readonly\n" % (hashPassword("file-pw", n=16),))
        policy = buildPolicy(usersFile=path, authenvHttp=True, environ=ENVIRON)
        self.assertEqual(
            self.successResultOf(policy.authorize(
                basic("alice", "file-pw"), Action.REMOVE, False)).status, 403)
        self.assertEqual(
            self.successResultOf(policy.authorize(
                basic("alice", "file-pw"), Action.READ, False)),
            Decision(200, "alice"))
        self.assertEqual(
            self.successResultOf(policy.authorize(
                basic("alice", "alice-pw"), Action.READ, False)).status, 401)

    def test_usersOverHttpFalse(self):
        """
        L{AuthPolicy} with C{users_over_http=False} ignores the portal on
        plain HTTP.
        """
        users = EnvironmentUsers(ENVIRON, overHttp=True)
        portal = Portal(AnnexRealm([users]), [CredentialSources([users])])
        policy = AuthPolicy(portal, unauth=Permission.READONLY,
                            users_over_http=False)
        alice = basic("alice", "alice-pw")
        self.assertEqual(
            self.successResultOf(policy.authorize(alice, Action.READ, False)),
            Decision(200, None))
        self.assertEqual(
            self.successResultOf(
                policy.authorize(alice, Action.WRITE, False)).status, 403)
        self.assertEqual(
            self.successResultOf(policy.authorize(alice, Action.WRITE, True)),
            Decision(200, "alice"))

    def test_plainPortal(self):
        """
        A portal whose checker has no C{honours} method (any twisted.cred
        checker) is honoured wherever the policy allows credentials.
        """
        users = EnvironmentUsers(ENVIRON, overHttp=True)
        portal = Portal(AnnexRealm([users]), [users])
        policy = AuthPolicy(portal)
        self.assertTrue(policy.canAuthenticate(False))
        self.assertEqual(
            self.successResultOf(policy.authorize(
                basic("carol", "carol-pw"), Action.WRITE, False)),
            Decision(200, "carol"))


class HashTests(unittest.SynchronousTestCase):
    """
    L{hashPassword} and L{verifyPassword}.
    """

    def test_roundTrip(self):
        """
        The default hash is self-describing scrypt and verifies the password
        it was made from, and no other.
        """
        encoded = hashPassword("s3cret")
        fields = encoded.split("$")
        self.assertEqual(fields[:4], ["scrypt", "16384", "8", "1"])
        self.assertEqual(len(fields), 6)
        self.assertTrue(verifyPassword("s3cret", encoded))
        self.assertTrue(verifyPassword(b"s3cret", encoded))
        self.assertFalse(verifyPassword("s3cret ", encoded))
        self.assertFalse(verifyPassword("", encoded))
        self.assertNotIn(":", encoded)

    def test_salted(self):
        """
        Two hashes of one password differ (random salt); a given salt gives
        a reproducible hash.
        """
        self.assertNotEqual(hashPassword("pw", n=16), hashPassword("pw", n=16))
        self.assertEqual(hashPassword("pw", n=16, salt=b"0" * 16),
                         hashPassword("pw", n=16, salt=b"0" * 16))

    def test_unicode(self):
        """
        Non-ASCII passwords are hashed as UTF-8.
        """
        encoded = hashPassword("pässwörd", n=16)
        self.assertTrue(verifyPassword("pässwörd".encode("utf-8"), encoded))
        self.assertFalse(verifyPassword("passwort", encoded))

    def test_malformed(self):
        """
        A malformed or out-of-bounds hash raises L{ValueError}.
        """
        good = hashPassword("pw", n=16)
        for encoded in ["", "plain", "md5$1$2$3$4$5",
                        good.replace("scrypt$16$", "scrypt$15$"),
                        good.replace("scrypt$16$", "scrypt$%d$" % (2 ** 30,)),
                        good.replace("scrypt$16$8$", "scrypt$16$x$"),
                        good[:-3] + "!!!"]:
            self.assertRaises(ValueError, verifyPassword, "pw", encoded)


class CountingVerify:
    """
    A L{verifyPassword} that counts its calls.
    """

    def __init__(self):
        self.calls = 0

    def __call__(self, password, encoded):
        self.calls += 1
        return verifyPassword(password, encoded)


class UsersFileTests(unittest.SynchronousTestCase):
    """
    L{UsersFile}: parsing, checking, reloading and caching.
    """

    def setUp(self):
        self.path = self.mktemp()
        self.verify = CountingVerify()
        self.write({"alice": ("alice-pw", "full"), "bob": ("bob-pw", "readonly")})
        self.users = UsersFile(self.path, verify=self.verify)

    def write(self, users, extra=""):
        """
        Write the users file, and move its mtime on so a change is seen
        even within one clock tick.
        """
        before = os.stat(self.path).st_mtime_ns if os.path.exists(self.path) else 0
        with open(self.path, "w") as f:
            f.write("# annexd users\n\n" + extra)
            for name, (pw, perm) in users.items():
                f.write("%s:%s:%s\n" % (name, hashPassword(pw, n=16), perm))
        os.utime(self.path, ns=(before + 10 ** 9, before + 10 ** 9))

    def login(self, name, password, checker=None):
        creds = UsernamePassword(name.encode("utf-8"), password.encode("utf-8"))
        return (checker or self.users).requestAvatarId(creds)

    def test_interfaces(self):
        """
        L{UsersFile} is a credential source, hence a twisted.cred checker.
        """
        self.assertTrue(verifyObject(ICredentialSource, self.users))
        self.assertTrue(verifyObject(ICredentialsChecker, self.users))
        self.assertIn(IUsernamePassword, self.users.credentialInterfaces)

    def test_goodAndBad(self):
        """
        The right password gives the user name; a wrong password or an
        unknown user fails with L{UnauthorizedLogin}.
        """
        self.assertEqual(self.successResultOf(self.login("alice", "alice-pw")),
                         "alice")
        self.failureResultOf(self.login("alice", "bob-pw"), UnauthorizedLogin)
        self.failureResultOf(self.login("mallory", "x"), UnauthorizedLogin)
        self.assertEqual(self.users.permissionOf("bob"), Permission.READONLY)
        self.assertIsNone(self.users.permissionOf("mallory"))

    def test_unknownUserCostsAVerification(self):
        """
        An unknown user costs one hash verification too, so timing does not
        reveal which names exist.
        """
        self.failureResultOf(self.login("mallory", "x"), UnauthorizedLogin)
        self.assertEqual(self.verify.calls, 1)

    def test_cache(self):
        """
        Repeated logins with the same credentials verify the hash once; a
        different password is verified again; failures are not cached.
        """
        for _ in range(5):
            self.assertEqual(
                self.successResultOf(self.login("alice", "alice-pw")), "alice")
        self.assertEqual(self.verify.calls, 1)
        self.successResultOf(self.login("bob", "bob-pw"))
        self.assertEqual(self.verify.calls, 2)
        for _ in range(3):
            self.failureResultOf(self.login("alice", "wrong"),
                                 UnauthorizedLogin)
        self.assertEqual(self.verify.calls, 5)
        self.successResultOf(self.login("alice", "alice-pw"))
        self.assertEqual(self.verify.calls, 5)

    def test_cacheHoldsNoPassword(self):
        """
        The cache keeps a keyed digest, never the password.
        """
        self.successResultOf(self.login("alice", "alice-pw"))
        self.assertEqual(len(self.users._cache), 1)
        (name, digest), = self.users._cache
        self.assertEqual(name, "alice")
        self.assertNotIn(b"alice-pw", digest)
        self.assertNotIn("alice-pw", repr(self.users._cache))

    def test_cacheBounded(self):
        """
        The cache keeps at most C{cacheSize} entries, dropping the least
        recently used.
        """
        users = UsersFile(self.path, verify=self.verify, cacheSize=1)
        self.successResultOf(self.login("alice", "alice-pw", users))
        self.successResultOf(self.login("bob", "bob-pw", users))
        self.assertEqual(len(users._cache), 1)
        self.successResultOf(self.login("alice", "alice-pw", users))
        self.assertEqual(self.verify.calls, 3)

    def test_reload(self):
        """
        A changed file is re-read: new users can log in, removed ones
        cannot, and the cache is dropped.
        """
        self.successResultOf(self.login("alice", "alice-pw"))
        self.write({"carol": ("carol-pw", "appendonly")})
        self.failureResultOf(self.login("alice", "alice-pw"), UnauthorizedLogin)
        self.assertEqual(self.successResultOf(self.login("carol", "carol-pw")),
                         "carol")
        self.assertEqual(self.users.permissionOf("carol"), Permission.APPENDONLY)
        self.assertEqual(len(self.users._cache), 1)

    def test_reloadInvalidatesCache(self):
        """
        After a change of the file, a cached credential is verified again
        (against the new hash: a changed password stops the old one).
        """
        self.successResultOf(self.login("alice", "alice-pw"))
        self.write({"alice": ("new-pw", "full")})
        self.failureResultOf(self.login("alice", "alice-pw"), UnauthorizedLogin)
        self.successResultOf(self.login("alice", "new-pw"))
        self.assertEqual(self.verify.calls, 3)

    def test_unchangedFileNotReread(self):
        """
        The file is parsed again only when it changes.
        """
        parses = []
        original = auth._parseUsers
        self.patch(auth, "_parseUsers",
                   lambda lines: parses.append(1) or original(lines))
        for _ in range(3):
            self.users.permissionOf("alice")
        self.assertEqual(parses, [])
        self.write({"alice": ("alice-pw", "full")})
        self.users.permissionOf("alice")
        self.assertEqual(parses, [1])

    def test_missingFile(self):
        """
        A users file that disappears means no users until it is back.
        """
        os.rename(self.path, self.path + ".away")
        self.failureResultOf(self.login("alice", "alice-pw"), UnauthorizedLogin)
        self.assertIsNone(self.users.permissionOf("alice"))
        os.rename(self.path + ".away", self.path)
        self.successResultOf(self.login("alice", "alice-pw"))

    def test_missingAtStart(self):
        """
        A users file that does not exist at start is an error.
        """
        self.assertRaises(OSError, UsersFile, self.mktemp())

    def test_badLinesSkipped(self):
        """
        Malformed lines, invalid permissions and duplicate names (after the
        first) are skipped; the other lines still count.
        """
        h = hashPassword("pw", n=16)
        self.write({"ok": ("pw", "readonly")}, extra=(
            "nocolons\n"
            "bad:notahash:full\n"
            "perm:%s:admin\n"
            "  spaced:%s:full  \n"
            "ok:%s:full\n" % (h, h, h)))
        self.assertEqual(self.users.permissionOf("spaced"), Permission.FULL)
        self.assertIsNone(self.users.permissionOf("bad"))
        self.assertIsNone(self.users.permissionOf("perm"))
        self.assertIsNone(self.users.permissionOf("nocolons"))
        self.assertEqual(self.users.permissionOf("ok"), Permission.FULL)

    def test_deferToThread(self):
        """
        With C{deferToThread}, verification runs through it; cached
        credentials do not.
        """
        calls = []

        def deferToThread(f, *args):
            calls.append(f)
            return succeed(f(*args))

        users = UsersFile(self.path, verify=self.verify,
                          deferToThread=deferToThread)
        self.successResultOf(self.login("alice", "alice-pw", users))
        self.successResultOf(self.login("alice", "alice-pw", users))
        self.assertEqual(calls, [self.verify])

    def test_nonUtf8Name(self):
        """
        A user name that is not UTF-8 is an unknown user.
        """
        creds = UsernamePassword(b"\xff", b"x")
        self.failureResultOf(self.users.requestAvatarId(creds),
                             UnauthorizedLogin)


class EnvironmentUsersTests(unittest.SynchronousTestCase):
    """
    L{EnvironmentUsers}: git-annex's C{--authenv} users.
    """

    def test_users(self):
        """
        Passwords and permissions come from the environment, full by
        default; other variables are ignored.
        """
        users = EnvironmentUsers(ENVIRON)
        self.assertTrue(verifyObject(ICredentialSource, users))
        self.assertFalse(users.overHttp)
        self.assertEqual(users.permissionOf("alice"), Permission.FULL)
        self.assertEqual(users.permissionOf("bob"), Permission.READONLY)
        self.assertEqual(users.permissionOf("carol"), Permission.APPENDONLY)
        self.assertIsNone(users.permissionOf("PATH"))
        self.assertEqual(self.successResultOf(users.requestAvatarId(
            UsernamePassword(b"bob", b"bob-pw"))), "bob")
        self.failureResultOf(users.requestAvatarId(
            UsernamePassword(b"bob", b"alice-pw")), UnauthorizedLogin)
        self.failureResultOf(users.requestAvatarId(
            UsernamePassword(b"dave", b"")), UnauthorizedLogin)

    def test_permissionWithoutPassword(self):
        """
        A permission without a password makes no user.
        """
        users = EnvironmentUsers(
            {"GIT_ANNEX_P2PHTTP_PERMISSIONS_eve": "readonly"})
        self.assertIsNone(users.permissionOf("eve"))

    def test_badPermission(self):
        """
        An unknown permission value is a configuration error (the reference
        would grant full access).
        """
        self.assertRaises(ValueError, EnvironmentUsers, {
            "GIT_ANNEX_P2PHTTP_PASSWORD_eve": "pw",
            "GIT_ANNEX_P2PHTTP_PERMISSIONS_eve": "read-only"})
        self.assertEqual(EnvironmentUsers({
            "GIT_ANNEX_P2PHTTP_PASSWORD_eve": "pw",
            "GIT_ANNEX_P2PHTTP_PERMISSIONS_eve": "full"}).permissionOf("eve"),
            Permission.FULL)


class RealmTests(unittest.SynchronousTestCase):
    """
    L{AnnexRealm} and L{CredentialSources}.
    """

    def setUp(self):
        self.env = EnvironmentUsers(ENVIRON, overHttp=False)
        self.realm = AnnexRealm([self.env])
        self.checker = CredentialSources([self.env])

    def test_interfaces(self):
        """
        The realm and checker provide the twisted.cred interfaces.
        """
        self.assertTrue(verifyObject(IRealm, self.realm))
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    def test_avatar(self):
        """
        Logging in through a portal gives an L{IAnnexUser} with the user's
        name and permission.
        """
        portal = Portal(self.realm, [self.checker])
        iface, avatar, logout = self.successResultOf(portal.login(
            BasicCredentials(b"bob", b"bob-pw", True), RequestMind(True),
            IAnnexUser))
        self.assertIs(iface, IAnnexUser)
        self.assertTrue(verifyObject(IAnnexUser, avatar))
        self.assertEqual((avatar.name, avatar.permission),
                         ("bob", Permission.READONLY))
        logout()

    def test_transport(self):
        """
        Sources not honoured on plain HTTP are skipped by both the checker
        and the realm.
        """
        self.failureResultOf(self.checker.requestAvatarId(
            BasicCredentials(b"bob", b"bob-pw", False)), UnauthorizedLogin)
        self.failureResultOf(self.checker.requestAvatarId(
            UsernamePassword(b"bob", b"bob-pw")), UnauthorizedLogin)
        self.assertIsNone(self.realm.permissionFor("bob", secure=False))
        self.assertEqual(self.realm.permissionFor("bob", secure=True),
                         Permission.READONLY)
        self.assertRaises(UnauthorizedLogin, self.realm.requestAvatar,
                          "bob", RequestMind(False), IAnnexUser)

    def test_otherInterface(self):
        """
        The realm provides only L{IAnnexUser}.
        """
        self.assertRaises(NotImplementedError, self.realm.requestAvatar,
                          "bob", RequestMind(True), IRealm)

    def test_credentialsRepr(self):
        """
        The credentials' repr does not show the password.
        """
        self.assertNotIn("bob-pw", repr(BasicCredentials(b"bob", b"bob-pw",
                                                         True)))


class PasswdCommandTests(unittest.SynchronousTestCase):
    """
    C{annexd passwd USERSFILE NAME [--permission ...]}.
    """

    def runCommand(self, *args, stdin="s3cret\n"):
        """
        Run C{annexd passwd} through L{cli.main}.

        @return: C{(status, stderr text)}
        """
        stderr = io.StringIO()
        self.patch(sys, "stdin", io.StringIO(stdin))
        self.patch(sys, "stderr", stderr)
        return cli.main(["passwd"] + list(args)), stderr.getvalue()

    def test_createsFile(self):
        """
        The command creates a 0600 users file that L{UsersFile} accepts,
        printing nothing.
        """
        path = self.mktemp()
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.assertEqual(self.runCommand(path, "alice"), (0, ""))
        self.assertEqual(stdout.getvalue(), "")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        users = UsersFile(path)
        self.assertEqual(users.permissionOf("alice"), Permission.FULL)
        self.assertEqual(self.successResultOf(users.requestAvatarId(
            UsernamePassword(b"alice", b"s3cret"))), "alice")

    def test_replaces(self):
        """
        Running it again for a name replaces that user's line, keeping the
        others and the comments.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# users\n")
        os.chmod(path, 0o640)
        self.assertEqual(self.runCommand(path, "alice"), (0, ""))
        self.assertEqual(self.runCommand(path, "bob", "--permission", "readonly",
                                         stdin="bob-pw"), (0, ""))
        self.assertEqual(self.runCommand(path, "alice", "--permission=appendonly",
                                         stdin="new:pw\r\n"), (0, ""))
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "# users")
        self.assertEqual([line.split(":")[0] for line in lines[1:]],
                         ["alice", "bob"])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        users = UsersFile(path)
        self.assertEqual(users.permissionOf("alice"), Permission.APPENDONLY)
        self.assertEqual(users.permissionOf("bob"), Permission.READONLY)
        self.successResultOf(users.requestAvatarId(
            UsernamePassword(b"alice", b"new:pw")))
        self.successResultOf(users.requestAvatarId(
            UsernamePassword(b"bob", b"bob-pw")))

    def test_badUsage(self):
        """
        Bad usage prints one line on stderr and exits 2, without touching
        the file.
        """
        path = self.mktemp()
        for args in [(), (path,), (path, "alice", "extra"),
                     (path, "alice", "--permission", "admin"),
                     (path, "al:ice"), (path, "#alice"), (path, "a b")]:
            status, err = self.runCommand(*args)
            self.assertEqual(status, 2, args)
            self.assertEqual(err.count("\n"), 1, (args, err))
            self.assertTrue(err.startswith("annexd passwd: error: "), err)
        self.assertFalse(os.path.exists(path))

    def test_emptyPassword(self):
        """
        An empty password is refused.
        """
        path = self.mktemp()
        status, err = self.runCommand(path, "alice", stdin="\n")
        self.assertEqual(status, 1)
        self.assertIn("empty password", err)
        self.assertFalse(os.path.exists(path))

    def test_twistdOtherwise(self):
        """
        Anything else still runs twistd in the foreground with the annexd
        plugin.
        """
        from twisted.application import app
        from twisted.application.service import IServiceMaker

        runs = []
        self.patch(sys, "argv", list(sys.argv))

        def run(runApp, optionsClass):
            options = optionsClass()
            makers = {p.tapname for p in options._getPlugins(IServiceMaker)}
            runs.append((list(sys.argv), "annexd" in makers))

        self.patch(app, "run", run)
        cli.main(["--http", "tcp:0"])
        self.assertEqual(runs, [(["twistd", "--nodaemon", "--pidfile=",
                                  "annexd", "--http", "tcp:0"], True)])


class AddUserTests(unittest.SynchronousTestCase):
    """
    L{addUser}, the function behind C{annexd passwd}.
    """

    def test_validation(self):
        """
        Invalid names and empty passwords raise L{ValueError}.
        """
        path = self.mktemp()
        for name in ["", "a:b", "#a", "a b", "a\tb"]:
            self.assertRaises(ValueError, addUser, path, name, "pw")
        self.assertRaises(ValueError, addUser, path, "a", "")
        self.assertFalse(os.path.exists(path))

    def test_hasher(self):
        """
        The hash function can be injected; the line is C{name:hash:perm}.
        """
        path = self.mktemp()
        addUser(path, "zed", "pw", "readonly",
                hasher=lambda pw: hashPassword(pw, n=16))
        with open(path) as f:
            name, encoded, perm = f.read().strip().split(":")
        self.assertEqual((name, perm), ("zed", "readonly"))
        self.assertTrue(verifyPassword("pw", encoded))
