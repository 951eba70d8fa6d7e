# -*- test-case-name: tests.test_p2pcommand -*-
"""
C{annexd p2p}: hand out and revoke P2P addresses with auth tokens.

    annexd p2p /srv/gw.git                      list the addresses in service
    annexd p2p /srv/gw.git --gen-addresses [--target mycluster]
                                                a new token per address,
                                                printed as ADDRESS:TOKEN
    annexd p2p /srv/gw.git --revoke TOKEN|ADDRESS[:TOKEN]

The addresses are those the daemon serves (it records them in
C{.git/annex/annexd/p2ptargets} when it starts listening); the tokens go to
git-annex's own C{.git/annex/creds/p2pauth}, so the daemon honours a new
token at once and refuses a revoked one from the next connection on.  A
user links with the printed line::

    echo 'p2p-annex::annexd:gw.example.org:5555:TOKEN' | \\
        git annex p2p --link --name gw

Run it as the daemon's user (the files are mode 0600).
"""

import os
import sys

from annexd.p2p.frontend import AddressBook
from annexd.p2p.tokens import TokenStore, isTorAddress, withToken


def _gitDir(repo):
    for candidate in (os.path.join(repo, ".git"), repo):
        if os.path.isdir(os.path.join(candidate, "annex")) or (
                os.path.isfile(os.path.join(candidate, "HEAD"))
                and os.path.isdir(os.path.join(candidate, "objects"))):
            return candidate
    return None


def p2p(args, stdout=None, stderr=None):
    """
    Run C{annexd p2p ARGS}.

    @return: the exit status (0, 1 on errors, 2 on bad usage).
    """
    from annexd.cli import _Parser, _UsageError
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = _Parser(prog="annexd p2p",
                     description="List, hand out (with new auth tokens) and "
                                 "revoke the P2P addresses annexd serves for "
                                 "a gateway repository.")
    parser.add_argument("repo", help="the gateway repository")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--gen-addresses", action="store_true",
                        help="print every address with a new token")
    action.add_argument("--revoke", metavar="TOKEN|ADDRESS",
                        help="revoke a token (or every token of an address)")
    parser.add_argument("--target", help="only the addresses of this target "
                                         "(gateway, a cluster, a node)")
    try:
        options = parser.parse_args(args)
    except _UsageError as e:
        stderr.write("annexd p2p: error: %s\n" % (e,))
        return 2
    gitDir = _gitDir(options.repo)
    if gitDir is None:
        stderr.write("annexd p2p: error: %s is not a git-annex repository\n"
                     % (options.repo,))
        return 1
    tokens = TokenStore(gitDir)
    try:
        if options.revoke:
            count = tokens.revoke(options.revoke)
            if not count:
                stderr.write("annexd p2p: error: no such token or address\n")
                return 1
            stdout.write("revoked %d token%s\n" % (count,
                                                   "" if count == 1 else "s"))
            return 0
        entries = AddressBook.read(gitDir)
        if options.target:
            entries = [e for e in entries if options.target in
                       (e[2], e[1].decode("ascii", "replace"))]
        if not entries:
            stderr.write("annexd p2p: error: no P2P address%s in service: "
                         "start annexd with --p2p or --onion first\n" % (
                             " for %s" % (options.target,)
                             if options.target else ""))
            return 1
        if options.gen_addresses:
            torToken = None
            for address, uuid, name in entries:
                if isTorAddress(address):
                    # One token for every port of the onion: the client keeps
                    # one per onion.
                    if torToken is None:
                        torToken = tokens.generate(address)
                    token = torToken
                else:
                    token = tokens.generate(address)
                stdout.write(withToken(address, token) + "\n")
            return 0
        held = tokens.entries()
        for address, uuid, name in entries:
            count = sum(1 for token, scope in held
                        if (scope is None if isTorAddress(address)
                            else scope == address))
            stdout.write("%s\t%s (%s)\t%d token%s\n" % (
                address, name, uuid.decode("ascii", "replace"), count,
                "" if count == 1 else "s"))
        return 0
    except OSError as e:
        stderr.write("annexd p2p: error: %s\n" % (e,))
        return 1
