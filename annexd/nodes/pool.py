# -*- test-case-name: tests.test_localnode -*-
"""
A repository reached through a bounded set of reusable P2P sessions.

L{SessionPool} implements L{IRepository} on top of a C{connect} function
that opens one L{P2PClient} session.  Each request checks a session out (an
idle one, or a new one while fewer than C{maxSessions} exist), and checks it
back in when its exchange is over: at once for CHECKPRESENT, REMOVE and
GETTIMESTAMP; when the download or upload is finished; when a content lock
is released.  Broken sessions are dropped, never reused.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.interfaces import IRepository, Outcome, RepositoryUnavailable
from annexd.nodes.process import spawnP2P
from annexd.protocol.client import P2PClient


@implementer(IRepository)
class SessionPool:
    """
    @ivar uuid: the repository's uuid.
    @ivar name: a human name for logs and errors.
    @ivar maxSessions: at most this many sessions at once (annex.jobs).
    """

    _log = Logger()

    #: Content locks are held for as long as a client wants (up to a lease
    #: of 10 minutes): they get sessions of their own, never one of the
    #: C{maxSessions} transfer slots, so that a held lock cannot queue
    #: other requests behind it.  Front-ends bound the number of locks.
    maxLockSessions = 100

    def __init__(self, uuid, connect, maxSessions=1, name=None,
                 maxIdle=None):
        """
        @param maxIdle: keep at most this many idle sessions open (default:
            all of them, up to C{maxSessions}).
        """
        self.uuid = uuid
        self.maxIdle = maxSessions if maxIdle is None else maxIdle
        self.name = name or uuid.decode("ascii", "replace")
        self.maxSessions = maxSessions
        self._connect = connect
        self._slots = defer.DeferredSemaphore(maxSessions)
        self._idle = []
        self._open = set()
        self._closed = False
        self._lockPool = None
        #: key -> Deferred firing when the process of a broken transfer
        #: session for that key has exited
        self._ending = {}
        #: the child processes (L{P2PProcessProtocol}) of running sessions
        self.processes = []

    def _childSession(self, reactor, executable, args, environment, what,
                      version, bypass):
        """
        Start a child process that speaks P2P on its stdio (see
        L{annexd.nodes.process}), track it until it exits, and open a
        client session over it.

        @param what: the program, for the error when it cannot start.
        @return: a Deferred firing with the ready L{P2PClient}.
        """
        try:
            bridge = spawnP2P(reactor, executable, args, environment,
                              peer="node %s" % (self.name,))
        except OSError as e:
            return defer.fail(RepositoryUnavailable(
                "cannot start %s for %s: %s" % (what, self.name, e)))
        self.processes.append(bridge)
        bridge.ended.addBoth(lambda _: self.processes.remove(bridge))
        client = P2PClient(bridge.connection, self.uuid)
        client.process = bridge
        return client.handshake(version, bypass)

    async def _checkout(self):
        if self._closed:
            raise RepositoryUnavailable("%s: closed" % (self.name,))
        await self._slots.acquire()
        try:
            while self._idle:
                session = self._idle.pop()
                if session.broken is None:
                    return session
                self._open.discard(session)
            session = await self._connect()
        except BaseException:
            self._slots.release()
            raise
        self._open.add(session)
        return session

    def _checkin(self, session, key=None):
        if (session.broken is None and not self._closed
                and len(self._idle) < self.maxIdle):
            self._idle.append(session)
        else:
            self._open.discard(session)
            if session.broken is None:
                session.close()
        process = getattr(session, "process", None)
        if (session.broken is not None and process is not None
                and not process.ended.called):
            # A broken session's process may still hold the node's
            # transfer lock ("transfer already in progress"): its slot is
            # free only once the process is gone (it is killed if it does
            # not exit soon, see annexd.nodes.process).  Another transfer
            # of the same key waits for it too, even when a slot is free:
            # until it exits, it may still write the node's partial file
            # of that key.
            def gone(result):
                self._slots.release()
                if self._ending.get(key) is process.ended:
                    del self._ending[key]
                return result
            if key is not None:
                self._ending[key] = process.ended
            process.ended.addBoth(gone)
            return
        self._slots.release()

    def _run(self, method, *args, key=None):
        """
        Run one exchange on a checked-out session.

        @param key: for transfers, the key: a transfer of a key waits until
            a broken earlier transfer of the same key has let go of the
            node.
        """
        async def run():
            while key in self._ending:
                ending = defer.Deferred()
                self._ending[key].addBoth(
                    lambda result: (ending.callback(None), result)[1])
                await ending
            session = await self._checkout()
            try:
                result = await getattr(session, method)(*args)
            except BaseException:
                self._checkin(session, key)
                raise
            completed = getattr(result, "completed", None)
            if completed is None:
                self._checkin(session, key)
            else:
                completed.addBoth(
                    lambda outcome: (self._checkin(session, key), outcome)[1])
            return result
        return defer.Deferred.fromCoroutine(run())

    def checkPresent(self, key):
        return self._run("checkPresent", key)

    def lockContent(self, key):
        if self._lockPool is None:
            if self._closed:
                return defer.fail(RepositoryUnavailable(
                    "%s: closed" % (self.name,)))
            # Locks come in bursts (a drop locks, then lets go): keep one
            # session ready, close the rest as their locks are released.
            self._lockPool = SessionPool(self.uuid, self._connect,
                                         self.maxLockSessions, self.name,
                                         maxIdle=1)
        return self._lockPool._run("lockContent", key)

    def remove(self, key, before=None):
        def locked(reason):
            # git-annex-shell refuses to remove locked content by ending the
            # session ("content is locked"): that is a plain "not removed",
            # and the node is fine.
            reason.trap(RepositoryUnavailable)
            if "content is locked" not in str(reason.value):
                return reason
            return Outcome(False)
        return self._run("remove", key, before).addErrback(locked)

    def getTimestamp(self):
        return self._run("getTimestamp")

    def get(self, key, associatedFile, offset):
        return self._run("get", key, associatedFile, offset, key=key)

    def put(self, key, associatedFile):
        return self._run("put", key, associatedFile, key=key)

    def session(self):
        """
        Check out a session for exclusive use (tests, and callers that need
        several exchanges on one session); give it back with L{release}.

        @return: a Deferred firing with a L{P2PClient}.
        """
        return defer.Deferred.fromCoroutine(self._checkout())

    def release(self, session):
        """
        Give back a session from L{session}.
        """
        self._checkin(session)

    def close(self):
        """
        Close every session; later requests fail.

        @return: a Deferred firing when every open session has ended and
            every child process has exited.
        """
        running = [bridge.ended for bridge in self.processes]
        self._closed = True
        if self._lockPool is not None:
            running.append(self._lockPool.close())
        idle, self._idle = self._idle, []
        waits = [s.close() for s in idle]
        for s in idle:
            self._open.discard(s)
        for s in list(self._open):
            waits.append(s.connection.whenClosed())
            s.close()
        return defer.DeferredList(waits + running)
