# -*- test-case-name: tests.test_httpauth -*-
"""
Authentication and authorisation for the HTTP P2P API, as
C{git annex p2phttp} offers them (shared/spec/p2phttp.md section 4), built
on L{twisted.cred}.

The pieces:

  - L{AuthPolicy.authorize} turns the C{Authorization} header, the L{Action}
    a request performs and whether it came over TLS into a L{Decision}
    (200, 400, 401 or 403).  On 401 the server sends
    L{AuthPolicy.CHALLENGE} as C{WWW-Authenticate}.
  - Credential sources, each an L{ICredentialSource} (a twisted.cred
    checker for L{IUsernamePassword} that also knows each user's
    L{Permission}): L{UsersFile} (annexd's own users file, passwords stored
    as scrypt hashes, honoured over HTTP and HTTPS) and L{EnvironmentUsers}
    (git-annex's C{--authenv} / C{--authenv-http} users).
  - L{CredentialSources} checks a login against the sources honoured on
    the request's transport, and L{AnnexRealm} hands out an L{IAnnexUser}
    avatar with the user's permission.
  - L{buildPolicy} assembles all of this from p2phttp-like options.

Users file format, one user per line (C{#} comments and blank lines are
allowed)::

    name:scrypt$16384$8$1$<salt base64>$<hash base64>:readonly|appendonly|full

C{annexd passwd USERSFILE NAME [--permission ...]} adds or replaces a line
(L{addUser}).  The file is re-read when it changes.

Deliberate differences from the reference (git-annex 10.20261026), also
kept as L{DEVIATIONS} for conformance tests:

  1. An authenticated I{readonly} user may lock content (lockcontent,
     keeplocked).  The reference refuses (403) although it lets anonymous
     C{--unauth-readonly} users lock.  Locking does not change the
     repository; other repositories need it to drop safely.
  2. C{--unauth-nolocking} also applies with C{--unauth-appendonly}.  The
     reference ignores it there.
  3. Wrong or unknown credentials get 401, not 403, when the action is not
     open to anonymous users and some credential source is honoured on the
     transport.  The reference answers 403 whenever an anonymous mode is on;
     git-annex clients since 10.20260316 reject a stored credential only on
     401, so a 403 leaves a bad credential cached for good.  (When anonymous
     users may do the action the request proceeds anonymously, as in the
     reference.)
  4. When no credential source can be honoured on the transport
     (C{--authenv} over plain HTTP), requests anonymous users may not make
     get 403, not 401.  The reference challenges, so the client prompts for
     credentials that will be ignored and then discards a credential that
     works over HTTPS.  (With no mode at all every request still gets 401,
     as in the reference.)

Also different, outside the status matrix: an unknown
C{GIT_ANNEX_P2PHTTP_PERMISSIONS_<user>} value is a configuration error
(L{EnvironmentUsers} raises L{ValueError}); the reference silently grants
full access.

Passwords are never logged, and never kept in memory beyond the request:
the verification cache holds keyed digests only.
"""

import base64
import binascii
import hashlib
import hmac
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import fail, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer


class Action(Enum):
    """
    What a request does (spec section 4, action classes).
    """

    READ = "read"  # GET key, checkpresent, gettimestamp, git fetch/clone
    WRITE = "write"  # put, putoffset, git push
    REMOVE = "remove"  # remove, remove-before
    LOCK = "lock"  # lockcontent, keeplocked


class Permission(Enum):
    """
    What a user (or anonymous users) may do.

    readonly allows L{Action.READ} and L{Action.LOCK}; appendonly also
    L{Action.WRITE}; full everything.
    """

    READONLY = "readonly"
    APPENDONLY = "appendonly"
    FULL = "full"

    def allows(self, action):
        """
        @type action: L{Action}
        @rtype: L{bool}
        """
        return Action(action) in _ALLOWED[self]


_ALLOWED = {
    Permission.READONLY: frozenset({Action.READ, Action.LOCK}),
    Permission.APPENDONLY: frozenset({Action.READ, Action.WRITE, Action.LOCK}),
    Permission.FULL: frozenset(Action),
}


@dataclass(frozen=True)
class Decision:
    """
    The outcome of L{AuthPolicy.authorize}.

    @ivar status: 200 (allowed), 400 (malformed C{Authorization} header),
        401 (send L{AuthPolicy.CHALLENGE}) or 403.
    @ivar user: the authenticated user's name, or L{None} (anonymous).
    @ivar reason: one line for the response body or the log on refusal.
    """

    status: int
    user: "str | None"
    reason: str = ""

    @property
    def allowed(self):
        return self.status == 200


# (situation, reference status, annexd status, reason)
DEVIATIONS = [
    ("authenticated readonly user, lockcontent or keeplocked",
     403, 200,
     "locking does not change the repository, and anonymous readonly users"
     " may already lock"),
    ("anonymous user, --unauth-appendonly --unauth-nolocking, lockcontent,"
     " a credential source honoured on the transport",
     200, 401,
     "--unauth-nolocking applies to appendonly mode too (403 when no"
     " credential source is honoured on the transport)"),
    ("wrong password or unknown user, an --unauth-* mode on, action not"
     " open to anonymous users, a credential source honoured on the"
     " transport",
     403, 401,
     "the client rejects a stored credential only on 401; a 403 keeps a bad"
     " credential cached"),
    ("no credentials, --authenv over plain HTTP (no credential source"
     " honoured on the transport), action not open to anonymous users",
     401, 403,
     "a challenge would make the client prompt for credentials that are"
     " ignored over plain HTTP"),
    ("credentials (good or bad), --authenv over plain HTTP without an"
     " --unauth-* mode",
     401, 403,
     "credentials are ignored over plain HTTP; a 401 makes the client"
     " discard a credential that works over HTTPS"),
]


# --- password hashes -------------------------------------------------------

SCRYPT_N = 16384
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32


def _toBytes(password):
    if isinstance(password, str):
        return password.encode("utf-8")
    return bytes(password)


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(text):
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("bad base64 in password hash")


def hashPassword(password, *, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, salt=None):
    """
    Hash a password for the users file.

    @param password: the password; L{str} is encoded as UTF-8.
    @type password: L{str} or L{bytes}
    @param n: scrypt cost (a power of two); r, p: scrypt block size and
        parallelism.  The defaults suit production; tests may lower n.
    @param salt: for tests only; random by default.
    @return: C{scrypt$N$r$p$<salt base64>$<hash base64>}
    @rtype: L{str}
    """
    if salt is None:
        salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(_toBytes(password), salt, n, r, p, _HASH_BYTES)
    return "scrypt$%d$%d$%d$%s$%s" % (n, r, p, _b64(salt), _b64(digest))


def parseHash(encoded):
    """
    Parse and check a hash made by L{hashPassword}.

    @type encoded: L{str}
    @return: C{(n, r, p, salt, digest)}
    @raise ValueError: when C{encoded} is not such a hash, or its
        parameters are out of bounds.
    """
    fields = encoded.split("$")
    if len(fields) != 6 or fields[0] != "scrypt":
        raise ValueError("not an scrypt$N$r$p$salt$hash password hash")
    try:
        n, r, p = (int(f, 10) for f in fields[1:4])
    except ValueError:
        raise ValueError("bad scrypt parameters in password hash")
    if not (2 <= n <= 2 ** 20 and n & (n - 1) == 0 and 1 <= r <= 32
            and 1 <= p <= 16):
        raise ValueError("scrypt parameters out of bounds in password hash")
    salt, digest = _unb64(fields[4]), _unb64(fields[5])
    if not salt or not 16 <= len(digest) <= 64:
        raise ValueError("bad salt or hash length in password hash")
    return n, r, p, salt, digest


def _scrypt(password, salt, n, r, p, dklen):
    maxmem = 128 * r * (n + p + 2) + 2 ** 20
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=maxmem)


def verifyPassword(password, encoded):
    """
    Check a password against a hash made by L{hashPassword}, in constant
    time with respect to the digest.

    @type password: L{bytes} or L{str}
    @type encoded: L{str}
    @rtype: L{bool}
    @raise ValueError: for a malformed C{encoded}.
    """
    n, r, p, salt, digest = parseHash(encoded)
    return hmac.compare_digest(
        _scrypt(_toBytes(password), salt, n, r, p, len(digest)), digest)


_dummy = []


def _dummyHash():
    """
    A hash to verify against for unknown users, so that the time taken does
    not tell which user names exist.
    """
    if not _dummy:
        _dummy.append(hashPassword(os.urandom(16)))
    return _dummy[0]


# --- credential sources ----------------------------------------------------

class ICredentialSource(ICredentialsChecker):
    """
    A twisted.cred checker for L{IUsernamePassword} whose
    C{requestAvatarId} fires with the user name (a L{str}), and which knows
    each user's permission.
    """

    overHttp = Attribute(
        "True when the source's users are honoured over plain HTTP, False"
        " when only over TLS")

    def permissionOf(name):
        """
        @type name: L{str}
        @return: the user's L{Permission}, or L{None} for an unknown user.
        """


class IAnnexUser(Interface):
    """
    The avatar of an authenticated HTTP user.
    """

    name = Attribute("The user name (str)")
    permission = Attribute("The user's Permission")


@implementer(IAnnexUser)
@dataclass(frozen=True)
class AnnexUser:
    """
    The L{IAnnexUser} avatar.
    """

    name: str
    permission: Permission


@implementer(IUsernamePassword)
class BasicCredentials(UsernamePassword):
    """
    Credentials from a Basic C{Authorization} header, with the transport
    they came over.

    @ivar username: L{bytes}
    @ivar password: L{bytes}
    @ivar secure: whether the request came over TLS.
    """

    def __init__(self, username, password, secure):
        UsernamePassword.__init__(self, username, password)
        self.secure = secure

    def checkPassword(self, password):
        return hmac.compare_digest(self.password, _toBytes(password))

    def __repr__(self):
        return "<BasicCredentials %r secure=%r>" % (self.username, self.secure)


def _userName(credentials):
    """
    The user name of C{credentials} as L{str}, or L{None} when it is not
    UTF-8.
    """
    name = credentials.username
    if isinstance(name, str):
        return name
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def validUserName(name):
    """
    Whether C{name} can be stored in a users file: not empty, no C{:}, no
    whitespace or control characters, not starting with C{#}, UTF-8.

    @type name: L{str}
    @rtype: L{bool}
    """
    if not name or name.startswith("#") or ":" in name:
        return False
    if any(c.isspace() or not c.isprintable() for c in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class _Entry:
    hash: str
    permission: Permission


def _parseUsers(lines):
    """
    Parse the lines of a users file.

    @return: C{(users, problems)}: a L{dict} of name to L{_Entry} and a
        L{list} of C{(line number, problem)} for the lines skipped.  The
        first line for a name wins.
    """
    users, problems = {}, []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3:
            problems.append((lineno, "expected name:hash:permission"))
            continue
        name, encoded, perm = fields
        if not validUserName(name):
            problems.append((lineno, "invalid user name"))
            continue
        try:
            parseHash(encoded)
            permission = Permission(perm)
        except ValueError as e:
            problems.append((lineno, str(e)))
            continue
        if name in users:
            problems.append((lineno, "duplicate user (first line wins)"))
            continue
        users[name] = _Entry(encoded, permission)
    return users, problems


@implementer(ICredentialSource)
class UsersFile:
    """
    Users from annexd's users file.  Honoured over HTTP and HTTPS.

    The file is re-read whenever its modification time, size or inode
    change (checked on every lookup, one C{stat}).  Verifying an scrypt
    hash is slow, so successful verifications are remembered (an LRU of
    C{cacheSize} entries keyed by the user name and an HMAC of the password
    under a per-process random key; the password itself is never kept).  A
    reload empties the cache.

    @ivar path: the file's path.
    """

    credentialInterfaces = (IUsernamePassword,)
    overHttp = True

    _log = Logger()

    def __init__(self, path, verify=verifyPassword, cacheSize=1024,
                 deferToThread=None):
        """
        @param path: the users file.  It must exist now; if it disappears
            later, nobody can log in until it is back.
        @param verify: C{verify(password bytes, hash str) -> bool}.
        @param cacheSize: how many verified credentials to remember.
        @param deferToThread: when given, a callable like
            L{twisted.internet.threads.deferToThread} that C{verify} runs
            through, so scrypt does not block the reactor.  By default
            C{verify} runs synchronously.
        @raise OSError: when the file cannot be read.
        """
        self.path = path
        self._verify = verify
        self._cacheSize = cacheSize
        self._deferToThread = deferToThread
        self._cacheKey = os.urandom(32)
        self._cache = OrderedDict()
        self._users = {}
        self._stamp = None
        self._generation = 0
        self._load(os.stat(path))

    def _load(self, st):
        with open(self.path, encoding="utf-8", errors="replace") as f:
            users, problems = _parseUsers(f)
        for lineno, problem in problems:
            self._log.warn("users file {path} line {lineno} skipped: {problem}",
                           path=self.path, lineno=lineno, problem=problem)
        self._replace(users, (st.st_mtime_ns, st.st_size, st.st_ino))

    def _replace(self, users, stamp):
        self._users = users
        self._stamp = stamp
        self._cache.clear()
        self._generation += 1

    def _refresh(self):
        """
        Re-read the file if it changed.
        """
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                self._load(st)
        except OSError as e:
            if self._stamp != "missing":
                self._log.error("users file {path} unreadable, no users:"
                                " {error}", path=self.path, error=e.strerror)
                self._replace({}, "missing")

    def permissionOf(self, name):
        self._refresh()
        entry = self._users.get(name)
        return None if entry is None else entry.permission

    def _cacheKeyFor(self, name, password):
        return (name, hmac.digest(self._cacheKey, password, "sha256"))

    def requestAvatarId(self, credentials):
        self._refresh()
        name = _userName(credentials)
        password = _toBytes(credentials.password)
        entry = self._users.get(name)
        if entry is None:
            # Spend the same time as for a known user.
            d = self._run(password, _dummyHash())
            d.addCallback(lambda _: _unauthorized())
            return d
        key = self._cacheKeyFor(name, password)
        if self._cache.get(key) == entry.hash:
            self._cache.move_to_end(key)
            return succeed(name)
        generation = self._generation

        def verified(ok):
            if not ok:
                return _unauthorized()
            if generation == self._generation:
                self._cache[key] = entry.hash
                while len(self._cache) > self._cacheSize:
                    self._cache.popitem(last=False)
            return name

        return self._run(password, entry.hash).addCallback(verified)

    def _run(self, password, encoded):
        if self._deferToThread is not None:
            return self._deferToThread(self._verify, password, encoded)
        return maybeDeferred(self._verify, password, encoded)


def _unauthorized():
    raise UnauthorizedLogin("invalid credentials")


PASSWORD_PREFIX = "GIT_ANNEX_P2PHTTP_PASSWORD_"
PERMISSIONS_PREFIX = "GIT_ANNEX_P2PHTTP_PERMISSIONS_"


@implementer(ICredentialSource)
class EnvironmentUsers:
    """
    git-annex's C{--authenv} users: C{GIT_ANNEX_P2PHTTP_PASSWORD_<user>}
    gives a user's password and the optional
    C{GIT_ANNEX_P2PHTTP_PERMISSIONS_<user>} (readonly, appendonly or full)
    the permission, full by default.  Read once, at construction.

    @ivar overHttp: False for C{--authenv} (HTTPS only), True for
        C{--authenv-http}.
    """

    credentialInterfaces = (IUsernamePassword,)

    _log = Logger()

    def __init__(self, environ, overHttp=False):
        """
        @param environ: a mapping like L{os.environ}.
        @raise ValueError: for a permission value that is not readonly,
            appendonly or full.
        """
        self.overHttp = overHttp
        self._users = {}
        for key, value in environ.items():
            if not key.startswith(PASSWORD_PREFIX):
                continue
            name = self._name(key[len(PASSWORD_PREFIX):])
            if name is None:
                continue
            perm = environ.get(PERMISSIONS_PREFIX + key[len(PASSWORD_PREFIX):],
                               "full")
            try:
                permission = Permission(perm)
            except ValueError:
                raise ValueError("%s%s: permission must be readonly,"
                                 " appendonly or full"
                                 % (PERMISSIONS_PREFIX, name))
            self._users[name] = (os.fsencode(value), permission)

    def _name(self, raw):
        try:
            return os.fsencode(raw).decode("utf-8")
        except UnicodeDecodeError:
            self._log.warn("ignoring {prefix} user whose name is not UTF-8",
                           prefix=PASSWORD_PREFIX)
            return None

    def permissionOf(self, name):
        entry = self._users.get(name)
        return None if entry is None else entry[1]

    def requestAvatarId(self, credentials):
        name = _userName(credentials)
        entry = self._users.get(name)
        given = _toBytes(credentials.password)
        stored = b"\0" if entry is None else entry[0]
        if hmac.compare_digest(given, stored) and entry is not None:
            return succeed(name)
        return fail(UnauthorizedLogin("invalid credentials"))


@implementer(ICredentialsChecker)
class CredentialSources:
    """
    The portal's checker: tries a login against the first source honoured
    on the request's transport that knows the user.  An unknown user is
    handed to the first honoured source anyway, so that it spends the time
    a known user would.

    Credentials without a C{secure} attribute count as plain HTTP.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, sources):
        """
        @param sources: L{ICredentialSource} providers, in priority order.
        """
        self.sources = list(sources)

    def honoured(self, secure):
        """
        @return: the sources honoured on a transport (TLS when C{secure}).
        """
        return [s for s in self.sources if secure or s.overHttp]

    def honours(self, secure):
        """
        @return: whether any source is honoured on that transport.
        """
        return bool(self.honoured(secure))

    def requestAvatarId(self, credentials):
        sources = self.honoured(getattr(credentials, "secure", False))
        if not sources:
            return fail(UnauthorizedLogin("no credentials honoured here"))
        name = _userName(credentials)
        for source in sources:
            if source.permissionOf(name) is not None:
                return source.requestAvatarId(credentials)
        return sources[0].requestAvatarId(credentials)


@dataclass(frozen=True)
class RequestMind:
    """
    The mind handed to L{Portal.login}: what the realm needs to know about
    the request.
    """

    secure: bool


@implementer(IRealm)
class AnnexRealm:
    """
    Gives an authenticated user name its L{IAnnexUser} avatar, with the
    permission from the first source (honoured on the request's transport)
    that knows the user, the same source L{CredentialSources} checked.
    """

    def __init__(self, sources):
        self.sources = list(sources)

    def permissionFor(self, name, secure=True):
        """
        @return: the user's L{Permission}, or L{None} when no source
            honoured on the transport knows C{name}.
        """
        for source in self.sources:
            if secure or source.overHttp:
                permission = source.permissionOf(name)
                if permission is not None:
                    return permission
        return None

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IAnnexUser not in interfaces:
            raise NotImplementedError("AnnexRealm only provides IAnnexUser")
        permission = self.permissionFor(avatarId, getattr(mind, "secure", False))
        if permission is None:
            # The user went away (users file edited) after the check.
            raise UnauthorizedLogin("invalid credentials")
        return IAnnexUser, AnnexUser(avatarId, permission), lambda: None


# --- the policy ------------------------------------------------------------

def parseBasicAuthorization(value):
    """
    Parse an C{Authorization: Basic ...} header value.  The scheme is
    matched case-insensitively; the password is everything after the first
    C{:}.

    @type value: L{bytes} (or L{str})
    @return: C{(username, password)}, both L{bytes}.
    @raise ValueError: when it is not a Basic header with base64 of
        C{user:password}.
    """
    if isinstance(value, str):
        value = value.encode("latin-1")
    parts = value.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != b"basic":
        raise ValueError("invalid basic auth header")
    try:
        decoded = base64.b64decode(parts[1].strip(), validate=True)
    except binascii.Error:
        raise ValueError("invalid basic auth header")
    username, colon, password = decoded.partition(b":")
    if not colon:
        raise ValueError("invalid basic auth header")
    return username, password


class AuthPolicy:
    """
    Decides whether a request may proceed (spec section 4, with the
    deliberate differences listed in the module docstring).

    @ivar portal: a L{Portal} whose checker for L{IUsernamePassword} fires
        with a user name and whose realm gives an L{IAnnexUser}; or L{None}
        for no users at all.
    @ivar unauth: L{None}, L{Permission.READONLY} or
        L{Permission.APPENDONLY}: what anonymous users may do.
    @ivar unauthNoLocking: anonymous users may not lock.
    @ivar wideopen: everybody may do everything; C{Authorization} headers
        are ignored.
    @ivar users_over_http: False when credentials are honoured only on TLS
        connections.  (A portal checker with a C{honours(secure)} method,
        like L{CredentialSources}, may narrow this per source.)
    """

    CHALLENGE = b'Basic realm="git-annex", charset="UTF-8"'

    _log = Logger()

    def __init__(self, portal=None, unauth=None, unauthNoLocking=False,
                 wideopen=False, users_over_http=True):
        if unauth is not None:
            unauth = Permission(unauth)
            if unauth is Permission.FULL:
                raise ValueError("unauth must be readonly or appendonly;"
                                 " use wideopen for full anonymous access")
        self.portal = portal
        self.unauth = unauth
        self.unauthNoLocking = unauthNoLocking
        self.wideopen = wideopen
        self.users_over_http = users_over_http

    def canAuthenticate(self, secure):
        """
        Whether credentials sent on this transport could be honoured.
        """
        if self.portal is None or not (secure or self.users_over_http):
            return False
        checker = self.portal.checkers.get(IUsernamePassword)
        if checker is None:
            return False
        honours = getattr(checker, "honours", None)
        return True if honours is None else bool(honours(secure))

    def anonymousAllows(self, action):
        """
        Whether anonymous users may perform C{action}.
        """
        if self.wideopen:
            return True
        if self.unauth is None:
            return False
        if action is Action.LOCK and self.unauthNoLocking:
            return False
        return self.unauth.allows(action)

    def _noMode(self):
        return self.portal is None and self.unauth is None and not self.wideopen

    def authorize(self, authorization, action, secure):
        """
        Decide about one request.

        @param authorization: the raw C{Authorization} header value, or
            L{None}.
        @type authorization: L{bytes} or L{None}
        @type action: L{Action}
        @param secure: whether the request came over TLS.
        @rtype: L{Deferred} firing with a L{Decision}.  It fails only on
            unexpected errors (a credential source that breaks).
        """
        action = Action(action)
        if self.wideopen:
            return succeed(Decision(200, None))
        if authorization is None:
            return succeed(self._anonymous(action, secure, None))
        try:
            username, password = parseBasicAuthorization(authorization)
        except ValueError:
            return succeed(self._refused(
                Decision(400, None, "invalid basic auth header"), action))
        if not self.canAuthenticate(secure):
            return succeed(self._anonymous(
                action, secure, "credentials are not accepted on this"
                                " connection"))
        credentials = BasicCredentials(username, password, secure)
        d = self.portal.login(credentials, RequestMind(secure), IAnnexUser)
        d.addCallbacks(self._loggedIn, self._loginFailed,
                       callbackArgs=(action,), errbackArgs=(action, secure))
        return d

    def _loggedIn(self, result, action):
        _interface, avatar, logout = result
        logout()
        if avatar.permission.allows(action):
            return Decision(200, avatar.name)
        return self._refused(
            Decision(403, avatar.name, "user %s (%s) may not %s"
                     % (avatar.name, avatar.permission.value, action.value)),
            action)

    def _loginFailed(self, reason, action, secure):
        reason.trap(UnauthorizedLogin)
        return self._anonymous(action, secure, "invalid credentials")

    def _anonymous(self, action, secure, badCredentials):
        """
        The decision for a request without usable credentials.

        @param badCredentials: L{None} when no credentials came, else why
            they were not used.
        """
        if self.anonymousAllows(action):
            return Decision(200, None)
        if self._noMode() or self.canAuthenticate(secure):
            decision = Decision(401, None,
                                badCredentials or "authentication required")
        elif badCredentials is not None:
            decision = Decision(403, None, badCredentials)
        else:
            decision = Decision(403, None, "anonymous users may not %s"
                                % (action.value,))
        return self._refused(decision, action)

    def _refused(self, decision, action):
        self._log.debug("{action} refused: {status} {reason}",
                        action=action.value, status=decision.status,
                        reason=decision.reason)
        return decision


def buildPolicy(usersFile=None, authenv=False, authenvHttp=False,
                environ=os.environ, unauth=None, unauthNoLocking=False,
                wideopen=False, deferToThread=None):
    """
    Build an L{AuthPolicy} from p2phttp-like options.

    Users file users are honoured over HTTP and HTTPS; environment users
    over HTTPS only with C{authenv}, over both with C{authenvHttp}.  When a
    name is in both, the users file wins (where it is honoured).

    @param usersFile: path of a users file, or L{None}.
    @param unauth: L{None}, L{Permission.READONLY} or
        L{Permission.APPENDONLY} (or their string values).
    @param deferToThread: see L{UsersFile.__init__}.
    @raise OSError: the users file cannot be read.
    @raise ValueError: bad options or environment.
    """
    sources = []
    if usersFile is not None:
        sources.append(UsersFile(usersFile, deferToThread=deferToThread))
    if authenv or authenvHttp:
        sources.append(EnvironmentUsers(environ, overHttp=authenvHttp))
    portal = None
    if sources:
        portal = Portal(AnnexRealm(sources), [CredentialSources(sources)])
    return AuthPolicy(portal, unauth=unauth, unauthNoLocking=unauthNoLocking,
                      wideopen=wideopen,
                      users_over_http=any(s.overHttp for s in sources) or not sources)


# --- editing the users file ------------------------------------------------

def addUser(path, name, password, permission=Permission.FULL,
            hasher=hashPassword):
    """
    Add C{name} to the users file at C{path}, or replace its line; other
    lines are kept as they are.  The file is replaced atomically; a new
    file gets mode 0600, an existing one keeps its mode (and, where
    permitted, its owner).

    @type name: L{str}
    @type password: L{str}
    @type permission: L{Permission} (or its string value)
    @raise ValueError: for an invalid name or an empty password.
    @raise OSError: when the file cannot be read or written.
    """
    permission = Permission(permission)
    if not validUserName(name):
        raise ValueError("invalid user name %r (no ':', spaces or leading"
                         " '#')" % (name,))
    if not password:
        raise ValueError("empty password")
    newLine = "%s:%s:%s\n" % (name, hasher(password), permission.value)
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        st, lines = None, []
    out, replaced = [], False
    for line in lines:
        stripped = line.strip()
        if (stripped and not stripped.startswith("#")
                and stripped.split(":", 1)[0] == name):
            if not replaced:
                out.append(newLine)
                replaced = True
            continue
        out.append(line if line.endswith("\n") else line + "\n")
    if not replaced:
        out.append(newLine)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".annexd-users-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if st is None:
                os.fchmod(f.fileno(), 0o600)
            else:
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                try:
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
                except OSError:
                    pass
            f.writelines(out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
