# -*- test-case-name: tests.test_p2ptokens -*-
"""
P2P addresses and their auth tokens, in git-annex's own files.

A gateway repository's C{.git/annex/creds/} holds, exactly as git-annex
keeps them (so C{git annex p2p --gen-addresses} run in the gateway and
C{annexd p2p} hand out tokens the other honours):

  - C{p2paddrs}: the repository's P2P addresses, one per line, newest first
    (C{p2p-annex::NET:ADDRESS}, C{tor-annex::ONION.onion:PORT});
  - C{p2pauth}: the tokens clients may present, newest first, one per line:
    C{TOKEN p2p-annex::NET:ADDRESS} (valid on that address only) or a bare
    C{TOKEN} (a tor token, valid on the repository's onion addresses).

Tor tokens are bare because a git-annex client keeps one token per onion
(its creds file C{<onion>%2Eonion} leaves out the port): a client linked to
two virtual ports of annexd's onion (the gateway and a cluster, say) holds
one token for both.

Both files are mode 0600 in a 0700 directory and are replaced atomically;
L{TokenStore} re-reads C{p2pauth} when it changes, so a token revoked with
C{annexd p2p --revoke} stops working for the next connection without a
restart.
"""

import hmac
import os
import re
import secrets

from annexd.annex.watch import fileStamp

TOR_SCHEME = "tor-annex::"
P2P_SCHEME = "p2p-annex::"

#: The network name of annexd's own transport program
#: (contrib/git-annex-p2p-annexd).
NETNAME = "annexd"

_TOKEN = re.compile(r"^[A-Za-z0-9]*$")


class BadAddress(ValueError):
    """
    Not a P2P address git-annex understands.
    """


def isTorAddress(address):
    return address.startswith(TOR_SCHEME)


def checkAddress(address):
    """
    Check that C{address} is a P2P address as git-annex formats them.

    @return: C{address}.
    @raise BadAddress: if it is not one.
    """
    if address.startswith(TOR_SCHEME):
        onion, sep, port = address[len(TOR_SCHEME):].rpartition(":")
        if not (sep and onion and port.isdigit()):
            raise BadAddress("%r: a tor address is tor-annex::ONION:PORT"
                             % (address,))
    elif address.startswith(P2P_SCHEME):
        net, sep, where = address[len(P2P_SCHEME):].partition(":")
        if not (sep and net and where):
            raise BadAddress("%r: a P2P address is p2p-annex::NETNAME:ADDRESS"
                             % (address,))
    else:
        raise BadAddress("%r is neither a tor-annex:: nor a p2p-annex:: "
                         "address" % (address,))
    if any(c.isspace() for c in address):
        raise BadAddress("%r: an address has no whitespace" % (address,))
    return address


def withToken(address, token):
    """
    The address-with-token a user gives to C{git annex p2p --link}.
    """
    return "%s:%s" % (address, token)


def _writeCreds(path, lines):
    """
    Replace a creds file atomically with C{lines}, mode 0600.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = "%s.new.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _readLines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


class TokenStore:
    """
    One gateway repository's P2P addresses and auth tokens.

    @ivar authFile: the path of C{p2pauth}.
    @ivar addressFile: the path of C{p2paddrs}.
    """

    def __init__(self, gitDir):
        creds = os.path.join(gitDir, "annex", "creds")
        self.authFile = os.path.join(creds, "p2pauth")
        self.addressFile = os.path.join(creds, "p2paddrs")
        self._stamp = object()
        self._entries = []

    # -- tokens -----------------------------------------------------------

    def entries(self):
        """
        The tokens, newest first: C{(token, address or None)} pairs
        (C{None} for a bare tor token).  Lines git-annex would not parse
        are left out, as git-annex leaves them out.
        """
        stamp = fileStamp(self.authFile)
        if stamp != self._stamp:
            entries = []
            for line in _readLines(self.authFile):
                token, _, address = line.partition(" ")
                if not token or not _TOKEN.match(token):
                    continue
                entries.append((token.lower(), address or None))
            self._entries, self._stamp = entries, stamp
        return list(self._entries)

    def allows(self, token, address):
        """
        Whether a client presenting C{token} may use C{address} (the
        listener's P2P address).  Tokens compare case-insensitively, in
        constant time; an empty token is never valid.

        @type token: L{bytes} or L{str}
        """
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        token = token.lower()
        if not token:
            return False
        tor = isTorAddress(address)
        allowed = False
        for candidate, scope in self.entries():
            inScope = scope is None if tor else scope == address
            # Every candidate is compared, matching or not: the time taken
            # says nothing about the tokens.
            if hmac.compare_digest(candidate.encode(), token.encode()):
                allowed = allowed or inScope
        return allowed

    def generate(self, address):
        """
        Make a new token for C{address} (128 lowercase hex characters, as
        git-annex makes them) and store it.

        @return: the token.
        """
        checkAddress(address)
        token = secrets.token_hex(64)
        line = token if isTorAddress(address) else "%s %s" % (token, address)
        _writeCreds(self.authFile, [line] + _readLines(self.authFile))
        return token

    def revoke(self, what):
        """
        Revoke tokens: C{what} is a token, an address-with-token, or an
        address (every token of that address; for a tor address, every
        tor token).

        @return: how many tokens were revoked.
        """
        what = what.strip()
        isAddress = what.startswith((TOR_SCHEME, P2P_SCHEME))
        token = address = None
        if isAddress:
            head, _, tail = what.rpartition(":")
            if _TOKEN.match(tail) and len(tail) >= 32 and not tail.isdigit():
                token = tail.lower()
            else:
                address = what
        else:
            token = what.lower()
        kept, revoked = [], 0
        for line in _readLines(self.authFile):
            entry, _, scope = line.partition(" ")
            scope = scope or None
            if token is not None:
                gone = entry.lower() == token
            else:
                gone = ((scope is None) if isTorAddress(address)
                        else scope == address)
            if gone:
                revoked += 1
            else:
                kept.append(line)
        if revoked:
            _writeCreds(self.authFile, kept)
        return revoked

    # -- addresses --------------------------------------------------------

    def addresses(self):
        """
        The repository's P2P addresses, newest first.
        """
        return [line for line in _readLines(self.addressFile)
                if line.startswith((TOR_SCHEME, P2P_SCHEME))]

    def addAddress(self, address):
        """
        Record C{address} in C{p2paddrs} (first), unless it is there.

        @return: whether the file changed.
        """
        checkAddress(address)
        current = _readLines(self.addressFile)
        if address in current:
            return False
        _writeCreds(self.addressFile, [address] + current)
        return True
