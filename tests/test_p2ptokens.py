"""
P2P addresses and auth tokens in git-annex's own files (annexd.p2p.tokens),
checked against real git-annex.
"""

import os
import stat

from twisted.trial import unittest

from annexd.p2p.tokens import BadAddress, TokenStore, checkAddress
from tests.support.annex import AnnexEnvironment

ADDR = "p2p-annex::annexd:/run/annexd/gw.sock"
OTHER = "p2p-annex::annexd:127.0.0.1:5555"
TOR = "tor-annex::abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcd.onion:5555"


class TokenStoreTests(unittest.TestCase):

    def setUp(self):
        self.gitDir = self.mktemp()
        os.makedirs(os.path.join(self.gitDir, "annex"))
        self.store = TokenStore(self.gitDir)

    def test_generate(self):
        """
        A token is 128 lowercase hex characters, valid on its address only;
        the file is mode 0600 in a 0700 directory.
        """
        token = self.store.generate(ADDR)
        self.assertRegex(token, "^[0-9a-f]{128}$")
        self.assertTrue(self.store.allows(token, ADDR))
        self.assertTrue(self.store.allows(token.upper().encode(), ADDR))
        self.assertFalse(self.store.allows(token, OTHER))
        self.assertFalse(self.store.allows(token, TOR))
        self.assertFalse(self.store.allows(token[:-1], ADDR))
        self.assertFalse(self.store.allows("", ADDR))
        mode = os.stat(self.store.authFile).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(
            self.store.authFile)).st_mode), 0o700)
        with open(self.store.authFile) as f:
            self.assertEqual(f.read(), "%s %s\n" % (token, ADDR))

    def test_tor(self):
        """
        Tor tokens are bare and valid on every tor address of the
        repository (a client keeps one token per onion), never on a
        p2p-annex address.
        """
        token = self.store.generate(TOR)
        with open(self.store.authFile) as f:
            self.assertEqual(f.read(), token + "\n")
        self.assertTrue(self.store.allows(token, TOR))
        self.assertTrue(self.store.allows(token, TOR[:-4] + "5556"))
        self.assertFalse(self.store.allows(token, ADDR))

    def test_newestFirstAndReread(self):
        """
        New tokens go first; a change to the file made elsewhere is seen.
        """
        first = self.store.generate(ADDR)
        second = TokenStore(self.gitDir).generate(OTHER)
        with open(self.store.authFile) as f:
            self.assertEqual(f.read().split(), [second, OTHER, first, ADDR])
        self.assertTrue(self.store.allows(second, OTHER))

    def test_revoke(self):
        """
        Revoke by token, by address-with-token, or every token of an
        address.
        """
        a1 = self.store.generate(ADDR)
        a2 = self.store.generate(ADDR)
        o1 = self.store.generate(OTHER)
        t1 = self.store.generate(TOR)
        self.assertEqual(self.store.revoke(a1), 1)
        self.assertFalse(self.store.allows(a1, ADDR))
        self.assertTrue(self.store.allows(a2, ADDR))
        self.assertEqual(self.store.revoke("%s:%s" % (OTHER, o1)), 1)
        self.assertFalse(self.store.allows(o1, OTHER))
        self.assertEqual(self.store.revoke(ADDR), 1)
        self.assertFalse(self.store.allows(a2, ADDR))
        self.assertEqual(self.store.revoke(TOR), 1)
        self.assertFalse(self.store.allows(t1, TOR))
        self.assertEqual(self.store.revoke("nothing"), 0)

    def test_unparseableLinesIgnored(self):
        """
        Lines git-annex would not parse are not tokens.
        """
        os.makedirs(os.path.dirname(self.store.authFile), exist_ok=True)
        with open(self.store.authFile, "w") as f:
            f.write("bad-token! %s\n\n %s\nGOOD %s\n" % (ADDR, ADDR, ADDR))
        self.assertTrue(self.store.allows("good", ADDR))
        self.assertFalse(self.store.allows("bad-token!", ADDR))

    def test_addresses(self):
        self.assertTrue(self.store.addAddress(ADDR))
        self.assertTrue(self.store.addAddress(TOR))
        self.assertFalse(self.store.addAddress(ADDR))
        self.assertEqual(self.store.addresses(), [TOR, ADDR])
        self.assertRaises(BadAddress, self.store.addAddress, "ssh://x")

    def test_checkAddress(self):
        for bad in ("p2p-annex::", "p2p-annex::net", "tor-annex::x.onion",
                    "tor-annex::x.onion:port", "http://x", "p2p-annex::a:b c"):
            self.assertRaises(BadAddress, checkAddress, bad)
        self.assertEqual(checkAddress(OTHER), OTHER)


class GitAnnexCompatibilityTests(unittest.TestCase):
    """
    git-annex reads what annexd writes, and annexd honours what git-annex
    writes.
    """

    def test_genAddresses(self):
        env = AnnexEnvironment(self.mktemp())
        repo = os.path.join(env.base_dir, "repo")
        env.git(env.base_dir, "init", "-q", repo)
        env.annex(repo, "init", "-q", "gw")
        gitDir = os.path.join(repo, ".git")
        store = TokenStore(gitDir)
        store.addAddress(ADDR)
        mine = store.generate(ADDR)
        out = env.annex(repo, "p2p", "--gen-addresses").split()
        [line] = out
        self.assertTrue(line.startswith(ADDR + ":"))
        theirs = line.rsplit(":", 1)[1]
        self.assertNotEqual(theirs, mine)
        self.assertTrue(store.allows(theirs, ADDR))
        self.assertTrue(store.allows(mine, ADDR))
        self.assertFalse(store.allows(theirs, OTHER))
