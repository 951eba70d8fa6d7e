# -*- test-case-name: tests.test_locks -*-
"""
Content locks held for clients between requests (HTTP C{lockcontent} /
C{keeplocked}, shared/spec/p2phttp.md section 3).

A client proves a copy exists before a drop by locking it in another
repository.  Over HTTP the lock outlives the request that took it: the
L{LockTable} holds it, under a random lock id, as a lease:

  - taken by L{LockTable.take}; it expires L{LEASE} seconds later unless
    the client keeps it (C{keeplocked}) before then;
  - kept (L{LockTable.keep}) while the client's keeplocked request is open;
  - released at once when the client says C{{"unlock": true}}
    (L{LockTable.release});
  - when the keeplocked request ends any other way (the client vanished,
    the body ended, it did not parse), the lock stays until the end of the
    lease the client counts on: L{LEASE} seconds after keeplocked began.
    (git-annex's p2phttp releases at once then, although the client
    believes its lock holds for those 10 minutes; annexd keeps the promise
    the client relies on.)

The number of locks is bounded (C{maxLocks}, like p2phttp's
C{--lockedfiles}): beyond it a client is told the content could not be
locked, and every path (expiry, unlock, vanishing, shutdown) gives the lock
back.
"""

import uuid as uuidlib

from twisted.internet import defer
from twisted.logger import Logger

#: How long a lock lasts without the client keeping it, and how long after
#: keeplocked began the client counts on it (git-annex's 10 minutes).
LEASE = 600.0


class _Lease:
    def __init__(self, lockid, repositoryUUID, key, lock):
        self.lockid = lockid
        self.repositoryUUID = repositoryUUID
        self.key = key
        self.lock = lock
        self.timer = None
        self.kept = None


class LockTable:
    """
    @ivar maxLocks: how many locks may be held at once.
    """

    _log = Logger()

    def __init__(self, reactor, maxLocks=100, lease=LEASE):
        """
        @param reactor: an L{IReactorTime} (a L{twisted.internet.task.Clock}
            in tests).
        """
        self.reactor = reactor
        self.maxLocks = maxLocks
        self.lease = lease
        self._leases = {}
        self._pending = 0

    def __len__(self):
        return len(self._leases) + self._pending

    def isLocked(self, repositoryUUID, key):
        """
        Whether this table holds a lock on C{key} (raw bytes) in the
        repository C{repositoryUUID}.
        """
        return any(l.repositoryUUID == repositoryUUID and l.key == key
                   for l in self._leases.values())

    @defer.inlineCallbacks
    def take(self, repository, key):
        """
        Lock C{key} (a L{annexd.protocol.keys.Key}) in C{repository}.

        @return: a Deferred firing with the lock id (L{bytes}), or L{None}
            when the content is not there to lock or the budget is used up.
        """
        if len(self) >= self.maxLocks:
            self._log.warn("lock budget of {n} used up: lock of {key} refused",
                           n=self.maxLocks, key=str(key))
            return None
        self._pending += 1
        try:
            lock = yield repository.lockContent(key)
        finally:
            self._pending -= 1
        if lock is None:
            return None
        lockid = str(uuidlib.uuid4()).encode("ascii")
        lease = _Lease(lockid, repository.uuid, key.raw, lock)
        self._leases[lockid] = lease
        lease.timer = self.reactor.callLater(self.lease, self.release, lockid)
        return lockid

    def keep(self, lockid):
        """
        The client keeps the lock (its keeplocked request arrived): no expiry
        while it does.

        @return: whether C{lockid} names a lock held now.
        """
        lease = self._leases.get(lockid)
        if lease is None:
            return False
        if lease.timer is not None and lease.timer.active():
            lease.timer.cancel()
        lease.timer = None
        lease.kept = self.reactor.seconds()
        return True

    def abandon(self, lockid):
        """
        The keeplocked request ended without an unlock: hold the lock until
        the end of the lease the client counts on, then release it.
        """
        lease = self._leases.get(lockid)
        if lease is None or lease.timer is not None:
            return
        started = lease.kept if lease.kept is not None else self.reactor.seconds()
        remaining = started + self.lease - self.reactor.seconds()
        if remaining <= 0:
            self.release(lockid)
        else:
            lease.timer = self.reactor.callLater(remaining, self.release, lockid)

    def release(self, lockid):
        """
        Release the lock C{lockid} now (no-op for an unknown one).

        @return: a Deferred firing when the repository has released it.
        """
        lease = self._leases.pop(lockid, None)
        if lease is None:
            return defer.succeed(None)
        if lease.timer is not None and lease.timer.active():
            lease.timer.cancel()
        d = defer.maybeDeferred(lease.lock.release)

        def failed(reason):
            self._log.warn("releasing a lock on {key} failed: {why}",
                           key=lease.key.decode("utf-8", "replace"),
                           why=reason.getErrorMessage())
        return d.addErrback(failed)

    def close(self):
        """
        Release every lock (shutdown).
        """
        return defer.DeferredList([self.release(lockid)
                                   for lockid in list(self._leases)])
