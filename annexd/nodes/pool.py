# -*- test-case-name: tests.test_pool,tests.test_localnode -*-
"""
A repository reached through a bounded set of reusable P2P sessions.

L{SessionPool} implements L{IRepository} on top of a C{connect} function
that opens one L{P2PClient} session.  Each request checks a session out (an
idle one, or a new one while fewer than C{maxSessions} exist), and checks it
back in when its exchange is over: at once for CHECKPRESENT, REMOVE and
GETTIMESTAMP; when the download or upload is finished; when a content lock
is released.  Broken sessions are dropped, never reused.

Idle sessions are closed after C{idleTimeout} seconds without use (a timer
per idle session, cancelled when the session is checked out again).

A node whose sessions cannot be opened (C{connect} fails) is marked down:
until its retry time, a request that needs a new session fails at once
with L{RepositoryUnavailable} (C{"NAME is down: ERROR (next try in N s)"})
instead of trying to connect; idle sessions that are still open are used as
usual.  From the retry time on, the first request that needs a new session
tries to connect; while it tries, the others fail at once (C{"NAME is down:
ERROR (trying again now)"}).  The delay before a retry starts at
L{BACKOFF_INITIAL} seconds and doubles with every failed retry, up to
L{BACKOFF_MAX}; any successful connect marks the node up again and resets
it.  A session that breaks during an exchange does not mark the node down
(a client going away breaks sessions too).  Content-lock sessions come from
a sub-pool that shares the node's down state.  L{NodeHealth} keeps that
state; the HTTP, S3 and external special remote nodes use it too.

L{SessionPool.status} reports the pool's state for monitoring.
"""

import math
from contextlib import contextmanager

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.interfaces import IRepository, Outcome, RepositoryUnavailable
from annexd.nodes.process import spawnP2P
from annexd.protocol.client import P2PClient

#: Seconds an idle session stays open (default of C{idleTimeout}).
IDLE_TIMEOUT = 60.0

#: Seconds before the first retry of a node that went down.
BACKOFF_INITIAL = 1.0

#: The longest delay between retries of a node that stays down.
BACKOFF_MAX = 60.0


class NodeHealth:
    """
    Whether a node is up, and when a node that is down may be tried again:
    the down-marking of the module docstring, for L{SessionPool} (shared by
    a pool and its lock sub-pool) and for the other connectors (HTTP, S3,
    external special remotes).

    The owner passes its name (for errors and log lines) and its L{Logger}
    when they are used, so that they are read at that time.

    @ivar error: L{None} while up; else the text of the last connect error.
    @ivar since: when the node went down (reactor time).
    @ivar retryAt: from when a new connect may be tried.
    @ivar delay: the delay that led to C{retryAt}.
    @ivar probing: a retry is under way.
    """

    def __init__(self, clock):
        """
        @param clock: the reactor (L{IReactorTime}) for the back-off.
        """
        self._clock = clock
        self.probing = False
        self.reset()

    def reset(self):
        """
        The node is up.
        """
        self.error = None
        self.since = None
        self.retryAt = None
        self.delay = None

    def downError(self, name):
        """
        @return: the L{RepositoryUnavailable} for a request that needs a
            new connection now, or L{None} if it may try to connect.
        """
        if self.error is None:
            return None
        if self.probing:
            when = "trying again now"
        else:
            wait = self.retryAt - self._clock.seconds()
            if wait <= 0:
                return None
            when = "next try in %d s" % (math.ceil(wait),)
        return RepositoryUnavailable(
            "%s is down: %s (%s)" % (name, self.error, when))

    def check(self, name):
        """
        Raise L{downError} if there is one.
        """
        refused = self.downError(name)
        if refused is not None:
            raise refused

    @contextmanager
    def attempt(self):
        """
        A connect attempt, in a C{with} block: while the node is down, it
        is the probe (requests that would connect meanwhile are refused
        with "trying again now").

        @return: a context manager giving whether the attempt is a probe
            (for L{failed}).
        """
        probe = self.error is not None
        if probe:
            self.probing = True
        try:
            yield probe
        finally:
            if probe:
                self.probing = False

    async def connect(self, connect, name, log):
        """
        Call C{connect} unless the node is down and not due for a retry
        (then raise L{downError}); a failure marks the node down (see
        L{failed}).  The caller calls L{connected} on success.

        @return: what C{connect}'s Deferred fired with.
        """
        self.check(name)
        with self.attempt() as probe:
            try:
                return await connect()
            except defer.CancelledError:
                raise
            except Exception as e:
                self.failed(e, probe, name, log)
                raise

    def connected(self, name, log):
        """
        A connect worked (or the node answered): the node is up.
        """
        if self.error is not None:
            log.info(
                "{name} is up again (down {duration:.1f} s: {error})",
                name=name, error=self.error,
                duration=self._clock.seconds() - self.since)
            self.reset()

    def failed(self, error, probe, name, log):
        """
        A connect failed: the node is down, with a retry scheduled by the
        back-off.

        @param error: the exception.
        @param probe: what L{attempt} gave for this connect.
        """
        text = str(error) or error.__class__.__name__
        now = self._clock.seconds()
        if self.error is None:
            self.since = now
            self.delay = BACKOFF_INITIAL
            log.warn("{name} is down: {error} (next try in {delay} s)",
                     name=name, error=text, delay=self.delay)
        elif probe:
            self.delay = min(self.delay * 2, BACKOFF_MAX)
        else:
            # A connect begun before the node went down: no new schedule.
            self.error = text
            return
        self.error = text
        self.retryAt = now + self.delay

    def status(self, name, uuid, idle, busy, started, maxSessions,
               unusable=None):
        """
        A node's state, for monitoring (see L{SessionPool.status}).

        @param uuid: the node's uuid (L{bytes}).
        @param unusable: while up, why the node cannot be used anyway
            (then it is reported down, with that as its error), or
            L{None}.
        """
        retryIn = None
        error = self.error
        if error is not None:
            retryIn = 0.0 if self.probing else max(
                0.0, self.retryAt - self._clock.seconds())
        elif unusable is not None:
            error = unusable
        return {
            "name": name,
            "uuid": uuid.decode("utf-8", "replace"),
            "up": error is None,
            "idle": idle,
            "busy": busy,
            "started": started,
            "error": error,
            "retryIn": retryIn,
            "maxSessions": maxSessions,
        }


def _passing(f, *args):
    """
    A callback that calls C{f(*args)} and passes the result on unchanged.
    """
    def callback(result):
        f(*args)
        return result
    return callback


def _whenFired(d):
    """
    A new Deferred that fires (with L{None}) when C{d} fires, leaving
    C{d}'s result to its other callbacks.
    """
    fired = defer.Deferred()
    d.addBoth(_passing(fired.callback, None))
    return fired


@implementer(IRepository)
class SessionPool:
    """
    @ivar uuid: the repository's uuid.
    @ivar name: a human name for logs and errors.
    @ivar maxSessions: at most this many sessions at once (annex.jobs).
    @ivar idleTimeout: seconds after which an idle session is closed
        (L{None}: never); read when a session becomes idle.
    @ivar started: how many sessions were opened successfully since the
        pool was made, content-lock sessions included.
    """

    _log = Logger()

    #: Content locks are held for as long as a client wants (up to a lease
    #: of 10 minutes): they get sessions of their own, never one of the
    #: C{maxSessions} transfer slots, so that a held lock cannot queue
    #: other requests behind it.  Front-ends bound the number of locks.
    maxLockSessions = 100

    def __init__(self, uuid, connect, maxSessions=1, name=None,
                 maxIdle=None, idleTimeout=IDLE_TIMEOUT, reactor=None):
        """
        @param maxIdle: keep at most this many idle sessions open (default:
            all of them, up to C{maxSessions}).
        @param idleTimeout: close a session that stayed idle this many
            seconds (L{None}: keep it).
        @param reactor: the reactor for timers and time (default: the
            global reactor).
        """
        self.uuid = uuid
        self.maxIdle = maxSessions if maxIdle is None else maxIdle
        self.name = name or uuid.decode("ascii", "replace")
        self.maxSessions = maxSessions
        self.idleTimeout = idleTimeout
        if reactor is None:
            from twisted.internet import reactor
        self._clock = reactor
        self._connect = connect
        self._slots = defer.DeferredSemaphore(maxSessions)
        self._idle = []
        self._open = set()
        #: idle session -> its idle-timeout IDelayedCall
        self._timers = {}
        self._closed = False
        self._lockPool = None
        self._health = NodeHealth(self._clock)
        self._started = 0
        #: key -> Deferred firing when the process of a broken transfer
        #: session for that key has exited
        self._ending = {}
        #: the child processes (L{P2PProcessProtocol}) of running sessions
        self.processes = []

    @property
    def started(self):
        started = self._started
        if self._lockPool is not None:
            started += self._lockPool._started
        return started

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

    async def _newSession(self):
        """
        Open a session, unless the node is down and not due for a retry;
        keep the node's up/down state.
        """
        session = await self._health.connect(self._connect, self.name,
                                             self._log)
        self._started += 1
        self._health.connected(self.name, self._log)
        return session

    # -- sessions -----------------------------------------------------------

    def _takeIdle(self):
        """
        @return: an idle usable session, out of the idle list, or L{None}.
        """
        while self._idle:
            session = self._idle.pop()
            timer = self._timers.pop(session, None)
            if timer is not None and timer.active():
                timer.cancel()
            if session.broken is None:
                return session
            self._open.discard(session)
        return None

    def _expire(self, session):
        """
        The idle timeout of C{session}: close it.
        """
        self._timers.pop(session, None)
        if session not in self._idle:
            return
        self._idle.remove(session)
        self._open.discard(session)
        if session.broken is None:
            session.close()

    async def _checkout(self):
        if self._closed:
            raise RepositoryUnavailable("%s: closed" % (self.name,))
        if not self._idle:
            # Fail fast, without waiting for a slot, if a new session would
            # be refused anyway.
            self._health.check(self.name)
        await self._slots.acquire()
        try:
            session = self._takeIdle()
            if session is None:
                session = await self._newSession()
        except BaseException:
            self._slots.release()
            raise
        self._open.add(session)
        return session

    def _checkin(self, session, key=None):
        if (session.broken is None and not self._closed
                and len(self._idle) < self.maxIdle):
            self._idle.append(session)
            if self.idleTimeout is not None:
                self._timers[session] = self._clock.callLater(
                    self.idleTimeout, self._expire, session)
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
                await _whenFired(self._ending[key])
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
                completed.addBoth(_passing(self._checkin, session, key))
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
                                         maxIdle=1,
                                         idleTimeout=self.idleTimeout,
                                         reactor=self._clock)
            # One node: a failed lock session marks it down for transfers
            # too, and the other way round.
            self._lockPool._health = self._health
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
        timers, self._timers = self._timers, {}
        for timer in timers.values():
            if timer.active():
                timer.cancel()
        idle, self._idle = self._idle, []
        waits = [s.close() for s in idle]
        for s in idle:
            self._open.discard(s)
        for s in list(self._open):
            waits.append(s.connection.whenClosed())
            s.close()
        return defer.DeferredList(waits + running)

    @property
    def up(self):
        """
        Whether the node is up (not marked down after a failed connect);
        cheap, for choosing among nodes on every request.
        """
        return self._health.error is None

    def status(self):
        """
        The pool's state, for monitoring.

        @return: a dict: C{name}, C{uuid} (str); C{up} (bool); C{idle} and
            C{busy}, the open sessions that are idle and those in use
            (content-lock sessions included in both); C{started}, the
            sessions opened since the pool was made; C{error}, the last
            connect error while down, else L{None}; C{retryIn}, the seconds
            until a new connect may be tried while down (0 while one is
            under way), else L{None}; C{maxSessions}.
        """
        pools = [self] if self._lockPool is None else [self, self._lockPool]
        idle = sum(len(pool._idle) for pool in pools)
        busy = sum(len(pool._open.difference(pool._idle)) for pool in pools)
        return self._health.status(self.name, self.uuid, idle, busy,
                                   self.started, self.maxSessions)
