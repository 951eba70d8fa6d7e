# -*- test-case-name: tests.test_gitannex -*-
"""
Locating the git-annex programs.

The PyPI wheel C{git-annex} ships one multicall binary that picks its role
from C{argv[0]}.  Its console scripts start a Python interpreter first; annexd
runs the binary itself (with C{argv[0]} set to the role) so that spawning a
node session costs one exec, and so that the pid we signal is git-annex's.
"""

import os
import shutil
from dataclasses import dataclass


class GitAnnexNotFound(RuntimeError):
    """
    No git-annex binary could be found.
    """


@dataclass(frozen=True)
class GitAnnex:
    """
    A git-annex installation.

    @ivar binary: path of the multicall executable.
    @ivar env: extra environment variables the binary needs (the wheel's
        embedded libmagic database).
    """

    binary: str
    env: dict

    def argv(self, role, *args):
        """
        The executable and argument list to run C{role} (C{git-annex},
        C{git-annex-shell}, ...) with C{args}.

        @return: C{(executable, [role, *args])}
        """
        return self.binary, [role, *args]

    def environ(self, base=None):
        """
        An environment for running git-annex: C{base} (default
        C{os.environ}) plus L{env}.
        """
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        return env

    def bindir(self, directory):
        """
        Populate C{directory} with symlinks named after every role of the
        multicall binary (C{git-annex}, C{git-annex-shell},
        C{git-remote-annex}, C{git-remote-tor-annex}, C{git-remote-p2p-annex})
        and return it: put it first on C{PATH} for programs that look the
        roles up by name (git, ssh forced commands).
        """
        os.makedirs(directory, exist_ok=True)
        for role in ("git-annex", "git-annex-shell", "git-remote-annex",
                     "git-remote-tor-annex", "git-remote-p2p-annex"):
            link = os.path.join(directory, role)
            if not os.path.lexists(link):
                os.symlink(self.binary, link)
        return directory


def find(path=None):
    """
    Find git-annex: the wheel's binary when the C{git_annex} package is
    installed, else C{git-annex} on C{path} (default C{$PATH}).

    @rtype: L{GitAnnex}
    @raise GitAnnexNotFound: when there is none.
    """
    try:
        import git_annex
    except ImportError:
        git_annex = None
    if git_annex is not None:
        pkgdir = os.path.dirname(os.path.abspath(git_annex.__file__))
        binary = os.path.join(pkgdir, "git-annex")
        if os.access(binary, os.X_OK):
            env = {}
            magic = os.path.join(pkgdir, "magic.mgc")
            if os.path.exists(magic):
                env["MAGIC"] = magic
            return GitAnnex(binary, env)
    found = shutil.which("git-annex", path=path)
    if found is None:
        raise GitAnnexNotFound(
            "git-annex is not installed (pip install git-annex)")
    return GitAnnex(os.path.realpath(found), {})
