"""
Tests for L{annexd.p2p.throttle}: token guessing on the P2P-address
listeners is slowed down, per source, in bounded memory.

Everything runs on a L{task.Clock}; no reactor is involved.
"""

import bisect

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from annexd.p2p.throttle import AuthThrottle, TooManyAttempts


def nextCall(clock):
    """
    Advance C{clock} to its next delayed call and run it.

    @return: C{False} if there was none.
    """
    calls = clock.getDelayedCalls()
    if not calls:
        return False
    clock.advance(max(0, min(c.getTime() for c in calls) - clock.seconds()))
    return True


def fail(throttle, source, n):
    """
    C{n} sequential wrong tokens from C{source}, each admitted at once.
    """
    for i in range(n):
        d = throttle.admit(source)
        assert d.called, "attempt %d was not admitted at once" % (i,)
        throttle.failed(source)


def guessSequentially(clock, throttle, source, attempts):
    """
    One client trying C{attempts} wrong tokens, each as soon as it may.

    @return: the clock times at which the attempts were admitted.
    """
    times = []
    for i in range(attempts):
        d = throttle.admit(source)
        while not d.called:
            assert nextCall(clock), "an admission never fired"
        times.append(clock.seconds())
        throttle.failed(source)
    return times


def mostInWindow(times, window):
    """
    The most C{times} in any half-open interval (t - window, t].
    """
    times = sorted(times)
    return max([bisect.bisect_right(times, t)
                - bisect.bisect_right(times, t - window) for t in times]
               or [0])


def perWindowBound(free, window, baseDelay, maxDelay):
    """
    How many wrong tokens one sequential guesser can get checked in a
    window: C{free + 1} at once, then one after each doubling delay, as
    long as the delays add up to less than the window.
    """
    k, total = 0, 0.0
    while True:
        total += min(maxDelay, baseDelay * 2 ** k)
        if total >= window:
            return free + 1 + k
        k += 1


class AdmissionTests(SynchronousTestCase):
    """
    Free attempts, then increasing, serialised delays.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.throttle = AuthThrottle(self.clock)

    def test_freeAttemptsAdmittedAtOnce(self):
        """
        While a source has at most C{free} failures in the window, its
        attempts are admitted synchronously.
        """
        for i in range(self.throttle.free + 1):
            d = self.throttle.admit("10.0.0.1")
            self.assertIsNone(self.successResultOf(d))
            self.throttle.failed("10.0.0.1")
        self.assertEqual(self.clock.seconds(), 0)
        self.assertEqual(self.throttle.status(), {
            "10.0.0.1": {"failures": self.throttle.free + 1, "waiting": 0}})

    def test_delaysIncrease(self):
        """
        Beyond the free failures, each attempt waits twice as long as the
        one before, after the previous attempt was admitted.
        """
        fail(self.throttle, "h", 11)
        d = self.throttle.admit("h")
        self.assertNoResult(d)
        self.assertEqual(self.throttle.status()["h"]["waiting"], 1)
        self.clock.advance(0.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.successResultOf(d)
        self.throttle.failed("h")
        gaps = []
        for i in range(5):
            before = self.clock.seconds()
            d = self.throttle.admit("h")
            self.assertNoResult(d)
            while not d.called:
                nextCall(self.clock)
            gaps.append(self.clock.seconds() - before)
            self.throttle.failed("h")
        self.assertEqual(gaps, [1.0, 2.0, 4.0, 8.0, 16.0])

    def test_aSlowGuesserIsNotDelayedFurther(self):
        """
        The delay runs from the previous admitted attempt: a client that
        waited that long anyway is admitted at once.
        """
        fail(self.throttle, "h", 11)
        self.clock.advance(0.5)
        self.successResultOf(self.throttle.admit("h"))

    def test_parallelAttemptsSerialised(self):
        """
        Ten attempts made at the same moment are admitted one after
        another, exactly when ten sequential attempts would have been.
        """
        throttle = AuthThrottle(self.clock, window=1000.0)
        fail(throttle, "h", 11)
        admitted = []

        def checked(_):
            admitted.append(self.clock.seconds())
            throttle.failed("h")

        for i in range(10):
            throttle.admit("h").addCallback(checked)
        self.assertEqual(throttle.status()["h"]["waiting"], 10)
        while nextCall(self.clock):
            pass
        self.assertEqual(admitted, [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 61.5,
                                    91.5, 121.5, 151.5])

        sequentialClock = task.Clock()
        sequential = AuthThrottle(sequentialClock, window=1000.0)
        fail(sequential, "h", 11)
        self.assertEqual(
            guessSequentially(sequentialClock, sequential, "h", 10),
            admitted)

    def test_delayCapped(self):
        """
        No delay exceeds C{maxDelay}.
        """
        throttle = AuthThrottle(self.clock, window=10000.0, maxDelay=5.0)
        times = guessSequentially(self.clock, throttle, "h", 40)
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertEqual(max(gaps), 5.0)
        self.assertEqual(gaps[-10:], [5.0] * 10)

    def test_windowExpiry(self):
        """
        Failures older than the window are forgotten: the source is
        admitted at once again, and no longer listed.
        """
        throttle = AuthThrottle(self.clock, baseDelay=100.0, maxDelay=100.0)
        fail(throttle, "h", 11)
        self.clock.advance(59.9)
        self.assertEqual(throttle.status()["h"]["failures"], 11)
        waiting = throttle.admit("h")
        self.assertNoResult(waiting)
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        self.clock.advance(0.1)
        self.assertEqual(throttle.status(), {})
        self.successResultOf(throttle.admit("h"))

    def test_waitingMoveUpWhenFailuresExpire(self):
        """
        Attempts waiting when the failures leave the window are admitted
        as soon as the source is next looked at.
        """
        throttle = AuthThrottle(self.clock, baseDelay=100.0, maxDelay=100.0)
        fail(throttle, "h", 11)
        self.clock.advance(30)
        first = throttle.admit("h")
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()],
                         [100.0])
        self.clock.advance(30)
        second = throttle.admit("h")
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.clock.advance(0)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sourcesIndependent(self):
        """
        One source's failures do not delay another's attempts.
        """
        fail(self.throttle, "attacker", 11)
        for i in range(9):
            self.throttle.failed("attacker")
        self.assertNoResult(self.throttle.admit("attacker"))
        self.successResultOf(self.throttle.admit("someone else"))
        self.successResultOf(self.throttle.admit(("unix", "/run/p2p")))

    def test_successDoesNotReset(self):
        """
        A good token does not clear the failures.
        """
        fail(self.throttle, "h", 11)
        self.clock.advance(0.5)
        self.successResultOf(self.throttle.admit("h"))
        self.throttle.succeeded("h")
        self.assertEqual(self.throttle.status()["h"]["failures"], 11)
        self.assertNoResult(self.throttle.admit("h"))

    def test_badParameters(self):
        """
        Parameters that would not throttle are refused.
        """
        for kwargs in [dict(free=-1), dict(window=0), dict(baseDelay=0),
                       dict(baseDelay=2.0, maxDelay=1.0),
                       dict(maxWaiting=-1), dict(maxSources=0)]:
            self.assertRaises(ValueError, AuthThrottle, self.clock, **kwargs)


class WaitingTests(SynchronousTestCase):
    """
    A bounded number of attempts wait, and they can be cancelled.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.throttle = AuthThrottle(self.clock, maxWaiting=3)
        fail(self.throttle, "h", 11)

    def test_tooManyWaiting(self):
        """
        Beyond C{maxWaiting} waiting attempts, an attempt fails at once.
        """
        waiting = [self.throttle.admit("h") for i in range(3)]
        for d in waiting:
            self.assertNoResult(d)
        self.failureResultOf(self.throttle.admit("h"), TooManyAttempts)
        self.assertEqual(self.throttle.status()["h"]["waiting"], 3)
        self.successResultOf(self.throttle.admit("other"))

    def test_cancelFreesPlace(self):
        """
        Cancelling a waiting attempt frees its place and lets the attempts
        behind it move up.
        """
        first, second, third = [self.throttle.admit("h") for i in range(3)]
        self.assertEqual(
            sorted(c.getTime() for c in self.clock.getDelayedCalls()),
            [0.5, 1.5, 3.5])
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.assertEqual(self.throttle.status()["h"]["waiting"], 2)
        self.assertEqual(
            sorted(c.getTime() for c in self.clock.getDelayedCalls()),
            [0.5, 1.5])
        fourth = self.throttle.admit("h")
        self.assertNoResult(fourth)
        self.clock.advance(0.5)
        self.successResultOf(second)
        self.assertNoResult(third)

    def test_cancelAll(self):
        """
        Cancelling every waiting attempt leaves no delayed call behind.
        """
        for d in [self.throttle.admit("h") for i in range(3)]:
            d.cancel()
            self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.throttle.status()["h"]["waiting"], 0)

    def test_cancelAfterAdmission(self):
        """
        Cancelling an attempt that was already admitted changes nothing.
        """
        d = self.throttle.admit("h")
        self.clock.advance(0.5)
        self.successResultOf(d)
        d.cancel()
        self.assertEqual(self.throttle.status()["h"]["waiting"], 0)

    def test_noWaiting(self):
        """
        With C{maxWaiting=0}, an attempt that would wait fails at once.
        """
        throttle = AuthThrottle(self.clock, free=0, maxWaiting=0)
        fail(throttle, "h", 1)
        self.failureResultOf(throttle.admit("h"), TooManyAttempts)


class MemoryTests(SynchronousTestCase):
    """
    What the throttle remembers is bounded.
    """

    def setUp(self):
        self.clock = task.Clock()

    def test_maxSources(self):
        """
        At most C{maxSources} sources are tracked: the one whose last
        failure is the oldest is forgotten first.
        """
        throttle = AuthThrottle(self.clock, maxSources=3)
        for source in "abc":
            throttle.failed(source)
            self.clock.advance(1)
        throttle.failed("a")            # now b's last failure is the oldest
        throttle.failed("d")
        self.assertEqual(sorted(throttle.status()), ["a", "c", "d"])
        throttle.failed("e")
        self.assertEqual(sorted(throttle.status()), ["a", "d", "e"])
        self.assertEqual(throttle.status()["a"]["failures"], 2)

    def test_evictedWaitingFail(self):
        """
        The waiting attempts of a forgotten source fail with
        L{TooManyAttempts}, and leave no delayed call behind.
        """
        throttle = AuthThrottle(self.clock, maxSources=2)
        fail(throttle, "a", 11)
        waiting = throttle.admit("a")
        self.assertNoResult(waiting)
        throttle.failed("b")
        throttle.failed("c")
        self.failureResultOf(waiting, TooManyAttempts)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(sorted(throttle.status()), ["b", "c"])

    def test_manySourcesOverTime(self):
        """
        Sources whose failures left the window are forgotten as new ones
        come, without reaching C{maxSources}.
        """
        throttle = AuthThrottle(self.clock, window=10.0, maxSources=1000)
        for i in range(5000):
            throttle.failed("10.%d.%d.%d" % (i >> 16, (i >> 8) & 255,
                                             i & 255))
            self.clock.advance(0.1)
            self.assertLessEqual(len(throttle._sources), 101)

    def test_failuresPerSourceBounded(self):
        """
        A source remembers a bounded number of failures, and still gets
        the longest delay.
        """
        throttle = AuthThrottle(self.clock, window=1e9)
        for i in range(10000):
            throttle.failed("h")
        state = throttle._sources["h"]
        self.assertLessEqual(len(state.failures), throttle.free + 64)
        throttle.admit("h")
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()],
                         [throttle.maxDelay])


class GuessingTests(SynchronousTestCase):
    """
    Guessing tokens is slow.
    """

    def test_hundredRapidWrongTokens(self):
        """
        100 wrong tokens tried as fast as the throttle allows take minutes,
        not milliseconds: with the defaults a sequential guesser gets at
        most C{perWindowBound} = 17 checked in any 60 s, so 100 need at
        least 5 windows.
        """
        clock = task.Clock()
        throttle = AuthThrottle(clock)
        perWindow = perWindowBound(throttle.free, throttle.window,
                                   throttle.baseDelay, throttle.maxDelay)
        self.assertEqual(perWindow, 17)
        times = guessSequentially(clock, throttle, "h", 100)
        self.assertLessEqual(mostInWindow(times, throttle.window), perWindow)
        # Attempts i and i + perWindow can never share a window.
        bound = ((100 - 1) // perWindow) * throttle.window
        self.assertEqual(bound, 300.0)
        self.assertGreaterEqual(times[-1] - times[0], bound)

    def test_parallelGuessersNoFaster(self):
        """
        Sixteen connections guessing in parallel, each retrying as soon as
        its attempt is refused, get no more guesses checked than one
        sequential guesser.
        """
        clock = task.Clock()
        throttle = AuthThrottle(clock)
        admitted = []

        def attempt(_=None):
            d = throttle.admit("h")
            d.addCallback(checked)

        def checked(_):
            admitted.append(clock.seconds())
            throttle.failed("h")
            if len(admitted) < 100:
                attempt()

        for i in range(16):
            attempt()
        while len(admitted) < 100:
            self.assertTrue(nextCall(clock))
        sequentialClock = task.Clock()
        sequential = guessSequentially(
            sequentialClock, AuthThrottle(sequentialClock), "h", 100)
        self.assertEqual(admitted[:100], sequential)
        self.assertLessEqual(mostInWindow(admitted, 60.0), 17)
        self.assertGreaterEqual(admitted[99] - admitted[0], 300.0)


# Clock steps are multiples of 1/8 and the delays powers of two, so the
# clock's arithmetic is exact.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.sampled_from("ab"),
                  st.sampled_from(["fail", "fail", "fail", "succeed"])),
        # Parallel connections trying at the same moment.
        st.tuples(st.just("burst"), st.sampled_from("ab"),
                  st.integers(2, 20)),
        st.tuples(st.just("failed"), st.sampled_from("ab")),
        st.tuples(st.just("advance"), st.one_of(
            st.integers(0, 8), st.integers(0, 160))
            .map(lambda n: n / 8.0)),
        st.tuples(st.just("cancel"), st.integers(0, 20))),
    max_size=150)


class PropertyTests(SynchronousTestCase):
    """
    Whatever clients do, wrong guesses are rate-limited and the waiting
    attempts bounded.
    """

    @settings(max_examples=300, deadline=None)
    @given(operations,
           st.integers(0, 5), st.sampled_from([2.0, 5.0, 10.0, 60.0]),
           st.sampled_from([0.25, 0.5, 1.0]), st.sampled_from([1.0, 4.0]),
           st.integers(0, 5))
    def test_guessesBounded(self, ops, free, window, baseDelay, maxDelay,
                            maxWaiting):
        """
        For any sequence of attempts (each refused or accepted when it is
        admitted), stray failures, cancellations and clock steps:

          - the attempts checked and refused from a source in any window
            never exceed C{free + 1 + window / baseDelay};
          - no source ever has more than C{maxWaiting} attempts waiting,
            and the count matches the attempts that are really pending;
          - every attempt that was not cancelled is eventually admitted
            or refused.
        """
        clock = task.Clock()
        throttle = AuthThrottle(clock, free=free, window=window,
                                baseDelay=baseDelay, maxDelay=maxDelay,
                                maxWaiting=maxWaiting)
        refusedAt = {"a": [], "b": []}
        pending = []

        def attempt(source, outcome):
            d = throttle.admit(source)
            entry = (source, d)

            def checked(_):
                if entry in pending:
                    pending.remove(entry)
                if outcome == "fail":
                    refusedAt[source].append(clock.seconds())
                    throttle.failed(source)
                else:
                    throttle.succeeded(source)

            def refused(f):
                f.trap(TooManyAttempts, defer.CancelledError)
                if entry in pending:
                    pending.remove(entry)
                if f.check(TooManyAttempts):
                    throttle.failed(source)

            if not d.called:
                pending.append(entry)
            d.addCallbacks(checked, refused)

        def check():
            status = throttle.status()
            for source in "ab":
                waiting = status.get(source, {"waiting": 0})["waiting"]
                self.assertLessEqual(waiting, maxWaiting)
                self.assertEqual(
                    waiting, len([e for e in pending if e[0] == source]))

        for op in ops:
            if op[0] == "admit":
                attempt(op[1], op[2])
            elif op[0] == "burst":
                for i in range(op[2]):
                    attempt(op[1], "fail")
            elif op[0] == "failed":
                # A failure reported outside admit(): must not help.
                throttle.failed(op[1])
            elif op[0] == "advance":
                clock.advance(op[1])
            elif pending:
                pending[op[1] % len(pending)][1].cancel()
            check()

        # Each waiting attempt comes at most maxDelay after the one before.
        end = clock.seconds()
        for i in range(2 * maxWaiting + 1):
            if not nextCall(clock):
                break
            check()
        self.assertEqual(pending, [])
        self.assertLessEqual(clock.seconds() - end, maxWaiting * maxDelay)
        self.assertEqual(clock.getDelayedCalls(), [])
        bound = free + 1 + window / baseDelay
        for source, times in refusedAt.items():
            self.assertLessEqual(mostInWindow(times, window), bound)
