"""
L{annexd.nodes.pool.SessionPool}: idle timeouts, down marking with backoff,
counters and status, with fake sessions and a fake clock; and the idle
timeout with a real git-annex node.
"""

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.trial import unittest

from annexd.interfaces import RepositoryUnavailable
from annexd.nodes import pool as poolModule
from annexd.nodes.local import LocalNode
from annexd.nodes.pool import SessionPool
from annexd.protocol.keys import Key
from tests.support.annex import cluster_for

UUID = b"aaaaaaaa-1111-2222-3333-444444444444"
GATEWAY_UUID = b"11111111-2222-3333-4444-555555555555"


class FakeConnection:
    def __init__(self):
        self.closed = defer.Deferred()

    def whenClosed(self):
        d = defer.Deferred()
        self.closed.addBoth(lambda result: (d.callback(None), result)[1])
        return d


class FakeLock:
    def __init__(self):
        self.completed = defer.Deferred()

    def release(self):
        self.completed.callback(None)
        return defer.succeed(None)


class FakeSession:
    """
    A session that answers from what the test set up.

    @ivar answers: Deferreds to hand out for the next checkPresent calls
        (default: an answer of C{True} at once).
    """

    def __init__(self, number):
        self.number = number
        self.broken = None
        self.connection = FakeConnection()
        self.answers = []
        self.asked = []

    def checkPresent(self, key):
        self.asked.append(key)
        if self.answers:
            return self.answers.pop(0)
        return defer.succeed(True)

    def lockContent(self, key):
        return defer.succeed(FakeLock())

    def close(self):
        if self.broken is None:
            self.broken = "closed"
        self.connection.closed.callback(None)
        return defer.succeed(None)

    @property
    def closed(self):
        return self.connection.closed.called


class FakeNode:
    """
    A C{connect} function: opens L{FakeSession}s, or fails with C{error}
    while set; with C{hold}, connects wait for the test.
    """

    def __init__(self):
        self.sessions = []
        self.attempts = 0
        self.error = None
        self.hold = False
        self.pending = []

    def connect(self):
        self.attempts += 1
        if self.hold:
            d = defer.Deferred()
            self.pending.append(d)
            return d
        if self.error is not None:
            return defer.fail(RepositoryUnavailable(self.error))
        return defer.succeed(self.newSession())

    def newSession(self):
        session = FakeSession(len(self.sessions))
        self.sessions.append(session)
        return session


class PoolTestsMixin:
    def makePool(self, **kwargs):
        self.clock = task.Clock()
        self.node = FakeNode()
        self.events = []
        kwargs.setdefault("name", "node1")
        pool = SessionPool(UUID, self.node.connect, reactor=self.clock,
                           **kwargs)
        pool._log = Logger(observer=self.events.append)
        self.addCleanup(pool.close)
        return pool

    def heldRequest(self, pool, key):
        """
        Start a checkPresent on a new session that answers only when the
        test says so.

        @return: the request's Deferred, the session, and the Deferred of
            its answer.
        """
        self.node.hold = True
        result = pool.checkPresent(key)
        self.node.hold = False
        session = self.node.newSession()
        answer = defer.Deferred()
        session.answers.append(answer)
        self.node.pending.pop().callback(session)
        self.assertNoResult(result)
        return result, session, answer


class IdleTimeoutTests(PoolTestsMixin, unittest.TestCase):
    """
    Idle sessions are closed after C{idleTimeout} seconds.
    """

    def test_default(self):
        """
        The default idle timeout is L{poolModule.IDLE_TIMEOUT}, 60 seconds.
        """
        self.assertEqual(poolModule.IDLE_TIMEOUT, 60.0)
        self.assertEqual(SessionPool(UUID, FakeNode().connect).idleTimeout,
                         60.0)

    def test_idleSessionClosed(self):
        """
        A session idle for C{idleTimeout} seconds is closed; a later request
        opens a new one.
        """
        pool = self.makePool(idleTimeout=10.0)
        self.assertTrue(self.successResultOf(pool.checkPresent(b"k")))
        [first] = self.node.sessions
        self.assertEqual(pool.status()["idle"], 1)
        self.clock.advance(9.9)
        self.assertFalse(first.closed)
        self.clock.advance(0.1)
        self.assertTrue(first.closed)
        self.assertEqual((pool.status()["idle"], pool.status()["busy"]),
                         (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.successResultOf(pool.checkPresent(b"k")))
        self.assertEqual(len(self.node.sessions), 2)
        self.assertEqual(self.node.sessions[1].asked, [b"k"])
        self.assertEqual(pool.status()["started"], 2)

    def test_reuseRestartsTimer(self):
        """
        Taking a session out of the idle list cancels its timer: it is
        closed C{idleTimeout} seconds after its last use, not its first.
        """
        pool = self.makePool(idleTimeout=10.0)
        self.successResultOf(pool.checkPresent(b"k"))
        self.clock.advance(6)
        self.successResultOf(pool.checkPresent(b"k"))
        [session] = self.node.sessions
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(6)
        self.assertFalse(session.closed)
        self.clock.advance(4)
        self.assertTrue(session.closed)

    def test_busySessionNotClosed(self):
        """
        A session in use is never closed by the idle timer; it is timed
        from when it is idle again.
        """
        pool = self.makePool(idleTimeout=10.0)
        self.successResultOf(pool.checkPresent(b"k"))
        [session] = self.node.sessions
        answer = defer.Deferred()
        session.answers.append(answer)
        result = pool.checkPresent(b"slow")
        self.assertNoResult(result)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertFalse(session.closed)
        self.assertEqual(pool.status()["busy"], 1)
        answer.callback(False)
        self.assertFalse(self.successResultOf(result))
        self.clock.advance(9)
        self.assertFalse(session.closed)
        self.clock.advance(1)
        self.assertTrue(session.closed)
        self.assertEqual(self.node.attempts, 1)

    def test_noTimeout(self):
        """
        With C{idleTimeout=None} idle sessions stay open.
        """
        pool = self.makePool(idleTimeout=None)
        self.successResultOf(pool.checkPresent(b"k"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 ** 6)
        self.assertFalse(self.node.sessions[0].closed)
        self.assertEqual(pool.status()["idle"], 1)

    def test_lockPoolTimeout(self):
        """
        Content-lock sessions use the same clock and timeout.
        """
        pool = self.makePool(idleTimeout=5.0)
        lock = self.successResultOf(pool.lockContent(b"k"))
        [session] = self.node.sessions
        self.clock.advance(50)
        self.assertFalse(session.closed)
        lock.release()
        self.assertEqual(pool.status()["idle"], 1)
        self.clock.advance(5)
        self.assertTrue(session.closed)
        self.assertEqual(pool.status()["idle"], 0)

    def test_closeCancelsTimers(self):
        """
        close() cancels every idle timer, the lock sub-pool's included, and
        closes the idle sessions.
        """
        pool = self.makePool(idleTimeout=10.0, maxSessions=2)
        self.successResultOf(pool.checkPresent(b"a"))
        self.successResultOf(pool.lockContent(b"k")).release()
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.successResultOf(pool.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(all(s.closed for s in self.node.sessions))


class DownTests(PoolTestsMixin, unittest.TestCase):
    """
    A node whose sessions cannot be opened is down, and retried with an
    exponential backoff.
    """

    def assertDown(self, pool, error, retryIn):
        status = pool.status()
        self.assertEqual(
            (status["up"], status["error"], status["retryIn"]),
            (False, error, retryIn))

    def failFast(self, pool, when):
        attempts = self.node.attempts
        failure = self.failureResultOf(pool.checkPresent(b"k"),
                                       RepositoryUnavailable)
        self.assertEqual(str(failure.value),
                         "node1 is down: no route (%s)" % (when,))
        self.assertEqual(self.node.attempts, attempts)

    def test_backoffSequence(self):
        """
        A failed connect marks the node down; until the retry time requests
        fail at once; a failed retry doubles the delay; a successful one
        marks the node up, and the next failure starts again from 1 s.
        """
        self.assertEqual((poolModule.BACKOFF_INITIAL, poolModule.BACKOFF_MAX),
                         (1.0, 60.0))
        pool = self.makePool()
        self.assertEqual(pool.status(), {
            "name": "node1", "uuid": UUID.decode(), "up": True, "idle": 0,
            "busy": 0, "started": 0, "error": None, "retryIn": None,
            "maxSessions": 1})
        self.node.error = "no route"
        # The request that meets the failure gets the connect's own error.
        failure = self.failureResultOf(pool.checkPresent(b"k"),
                                       RepositoryUnavailable)
        self.assertEqual(str(failure.value), "no route")
        self.assertEqual(self.node.attempts, 1)
        self.assertDown(pool, "no route", 1.0)
        self.failFast(pool, "next try in 1 s")
        self.clock.advance(0.5)
        self.assertDown(pool, "no route", 0.5)
        self.failFast(pool, "next try in 1 s")
        self.clock.advance(0.5)
        self.assertDown(pool, "no route", 0.0)
        self.failureResultOf(pool.checkPresent(b"k"), RepositoryUnavailable)
        self.assertEqual(self.node.attempts, 2)
        self.assertDown(pool, "no route", 2.0)
        self.failFast(pool, "next try in 2 s")
        self.clock.advance(1.5)
        self.failFast(pool, "next try in 1 s")
        self.clock.advance(0.5)
        self.node.error = None
        self.assertTrue(self.successResultOf(pool.checkPresent(b"k")))
        self.assertEqual(self.node.attempts, 3)
        status = pool.status()
        self.assertEqual(
            (status["up"], status["error"], status["retryIn"],
             status["started"], status["idle"]),
            (True, None, None, 1, 1))
        # Down again: the backoff starts over.
        self.node.sessions[0].broken = "gone"
        self.node.error = "no route"
        self.failureResultOf(pool.checkPresent(b"k"), RepositoryUnavailable)
        self.assertDown(pool, "no route", 1.0)

    def test_backoffCapped(self):
        """
        The delay doubles up to 60 s.
        """
        pool = self.makePool()
        self.node.error = "no route"
        delays = []
        for i in range(9):
            self.failureResultOf(pool.checkPresent(b"k"))
            delay = pool.status()["retryIn"]
            delays.append(delay)
            self.clock.advance(delay)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60])
        self.assertEqual(self.node.attempts, 9)

    def test_exceptionFromConnect(self):
        """
        Any exception from C{connect}, even a synchronous one, marks the
        node down; it reaches the request as it is.
        """
        def connect():
            raise OSError("no such program")
        pool = SessionPool(UUID, connect, name="node1",
                           reactor=task.Clock())
        self.failureResultOf(pool.checkPresent(b"k"), OSError)
        self.assertEqual(pool.status()["error"], "no such program")
        failure = self.failureResultOf(pool.checkPresent(b"k"),
                                       RepositoryUnavailable)
        self.assertEqual(str(failure.value),
                         "node1 is down: no such program (next try in 1 s)")

    def test_oneRetryAtATime(self):
        """
        At the retry time one request tries to connect; while it tries,
        other requests fail at once; when it succeeds the node is up.
        """
        pool = self.makePool(maxSessions=2)
        self.node.error = "no route"
        self.failureResultOf(pool.checkPresent(b"k"))
        self.clock.advance(1)
        self.node.error = None
        self.node.hold = True
        first = pool.checkPresent(b"k")
        self.assertNoResult(first)
        self.assertEqual(self.node.attempts, 2)
        self.assertDown(pool, "no route", 0.0)
        self.failFast(pool, "trying again now")
        self.node.pending.pop().callback(self.node.newSession())
        self.assertTrue(self.successResultOf(first))
        self.assertTrue(pool.status()["up"])
        self.node.hold = False
        self.assertTrue(self.successResultOf(pool.checkPresent(b"k")))
        self.assertEqual(self.node.attempts, 2)

    def test_failedRetryDoubles(self):
        """
        A retry under way that fails doubles the delay.
        """
        pool = self.makePool()
        self.node.error = "no route"
        self.failureResultOf(pool.checkPresent(b"k"))
        self.clock.advance(1)
        self.node.hold = True
        retry = pool.checkPresent(b"k")
        self.node.pending.pop().errback(RepositoryUnavailable("refused"))
        self.failureResultOf(retry, RepositoryUnavailable)
        self.assertDown(pool, "refused", 2.0)

    def test_idleSessionsUsedWhileDown(self):
        """
        While down, sessions that are still open are used: only opening a
        new session fails fast.
        """
        pool = self.makePool(maxSessions=2)
        busy, session, answer = self.heldRequest(pool, b"a")
        self.assertNoResult(busy)
        self.node.error = "no route"
        self.failureResultOf(pool.checkPresent(b"b"), RepositoryUnavailable)
        self.assertFalse(pool.status()["up"])
        answer.callback(True)
        self.assertTrue(self.successResultOf(busy))
        self.assertTrue(self.successResultOf(pool.checkPresent(b"c")))
        self.assertEqual(session.asked, [b"a", b"c"])
        self.assertEqual(self.node.attempts, 2)
        self.assertFalse(pool.status()["up"])

    def test_brokenSessionIsNotDown(self):
        """
        A session that breaks during an exchange does not mark the node
        down: the next request opens a new session.
        """
        pool = self.makePool()
        self.successResultOf(pool.checkPresent(b"k"))
        [session] = self.node.sessions
        answer = defer.Deferred()
        session.answers.append(answer)
        result = pool.checkPresent(b"k")
        session.broken = "client went away"
        answer.errback(RepositoryUnavailable("session ended"))
        self.failureResultOf(result, RepositoryUnavailable)
        self.assertTrue(pool.status()["up"])
        self.assertTrue(self.successResultOf(pool.checkPresent(b"k")))
        self.assertEqual(self.node.attempts, 2)

    def test_lockPoolSharesDownState(self):
        """
        A failed content-lock session marks the node down for transfers
        too, and a lock fails fast while the node is down.
        """
        pool = self.makePool()
        self.node.error = "no route"
        self.failureResultOf(pool.lockContent(b"k"), RepositoryUnavailable)
        self.assertDown(pool, "no route", 1.0)
        self.failFast(pool, "next try in 1 s")
        failure = self.failureResultOf(pool.lockContent(b"k"),
                                       RepositoryUnavailable)
        self.assertIn("is down", str(failure.value))
        self.assertEqual(self.node.attempts, 1)

    def test_logged(self):
        """
        Going down is logged once, coming back once; failed retries are
        not logged.
        """
        pool = self.makePool()
        self.node.error = "no route"
        for i in range(3):
            self.failureResultOf(pool.checkPresent(b"k"))
            self.clock.advance(pool.status()["retryIn"])
        self.node.error = None
        self.successResultOf(pool.checkPresent(b"k"))
        self.successResultOf(pool.checkPresent(b"k"))
        self.assertEqual(
            [(e["log_level"].name, e["error"]) for e in self.events],
            [("warn", "no route"), ("info", "no route")])
        self.assertIn("up again", self.events[1]["log_format"])


class StatusTests(PoolTestsMixin, unittest.TestCase):
    """
    L{SessionPool.status} counts sessions.
    """

    def test_counts(self):
        """
        Busy sessions (lock sessions included) and idle ones are counted;
        C{started} counts every session opened.
        """
        pool = self.makePool(maxSessions=3)
        held = [self.heldRequest(pool, b"k") for i in range(2)]
        answers = [answer for result, session, answer in held]
        lock = self.successResultOf(pool.lockContent(b"k"))
        status = pool.status()
        self.assertEqual((status["busy"], status["idle"], status["started"],
                          status["maxSessions"]), (3, 0, 3, 3))
        answers[0].callback(True)
        lock.release()
        status = pool.status()
        self.assertEqual((status["busy"], status["idle"], status["started"]),
                         (1, 2, 3))
        answers[1].callback(True)
        status = pool.status()
        self.assertEqual((status["busy"], status["idle"]), (0, 3))
        self.assertEqual(pool.started, 3)


class RealNodeIdleTests(unittest.TestCase):
    """
    The idle timeout with a real git-annex node.
    """

    timeout = 60

    async def test_idleProcessExits(self):
        """
        An idle session is closed after the timeout and its
        git-annex-shell exits; the next request opens a new session.
        """
        cluster = cluster_for(self, nodes=1)
        repo = cluster.nodes[0]
        node = LocalNode(reactor, repo.path, repo.uuid.encode(), GATEWAY_UUID,
                         name=repo.name, environment=cluster.env.env)
        self.addCleanup(node.close)
        # Set on the pool itself (it reads the attribute whenever a session
        # becomes idle), whatever LocalNode's constructor forwards.
        node.idleTimeout = 0.5
        key = Key.parse(b"SHA256E-s1--" + b"0" * 64 + b".bin")
        self.assertFalse(await node.checkPresent(key))
        self.assertEqual(len(node.processes), 1)
        self.assertEqual(node.status()["idle"], 1)
        for _ in range(200):
            if not node.processes:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(node.processes, [])
        self.assertEqual(node.status()["idle"], 0)
        self.assertFalse(await node.checkPresent(key))
        status = node.status()
        self.assertEqual((status["started"], status["up"], status["idle"]),
                         (2, True, 1))
