# -*- test-case-name: tests.test_watch -*-
"""
Noticing that the gateway's state changed, so a long-running annexd reloads
it without a restart.

The state lives in the git config, the git-annex branch (and the unmerged
branches pushed next to it) and the journal.  L{StateWatcher} stats the few
files that change when any of them does, once per interval, and calls back
when their signature differs.  A stat per file per second costs nothing
against a 100k-key branch, and it works on every filesystem (inotify does
not see changes made over NFS).
"""

import os

from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def fileStamp(path):
    """
    What changes when C{path} is rewritten: C{(mtime_ns, size, inode)}, or
    L{None} when it does not exist.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class StateWatcher:
    """
    Calls C{onChange()} when the gateway state of C{gitDir} may have
    changed.

    @ivar interval: seconds between checks.
    """

    _log = Logger()

    def __init__(self, reactor, gitDir, onChange, interval=1.0):
        self.gitDir = gitDir
        self.onChange = onChange
        self.interval = interval
        self._loop = LoopingCall(self.check)
        self._loop.clock = reactor
        self._last = self.signature()

    def _paths(self):
        git = self.gitDir
        paths = [os.path.join(git, "config"),
                 os.path.join(git, "packed-refs"),
                 os.path.join(git, "refs", "heads", "git-annex"),
                 os.path.join(git, "refs", "heads", "synced", "git-annex"),
                 os.path.join(git, "annex", "journal"),
                 os.path.join(git, "annex", "journal-private")]
        remotes = os.path.join(git, "refs", "remotes")
        try:
            for remote in os.listdir(remotes):
                paths.append(os.path.join(remotes, remote, "git-annex"))
        except OSError:
            pass
        return paths

    def signature(self):
        """
        What the state files look like now.  A journal directory's mtime
        changes whenever a journal file is created, replaced or removed.
        """
        return tuple((path, fileStamp(path)) for path in self._paths())

    def check(self):
        """
        Compare with the last signature; call back on a difference.
        """
        now = self.signature()
        if now != self._last:
            self._last = now
            try:
                self.onChange()
            except Exception:
                self._log.failure("reloading the gateway state failed")

    def start(self):
        self._loop.start(self.interval, now=False)

    def stop(self):
        if self._loop.running:
            self._loop.stop()
