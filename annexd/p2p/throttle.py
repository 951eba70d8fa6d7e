# -*- test-case-name: tests.test_throttle -*-
"""
Slowing down token guessing on the P2P-address listeners.

A client of a P2P-address listener proves itself with C{AUTH <uuid>
<token>}.  L{AuthThrottle} decides when such an attempt may be checked, per
I{source}: a peer's host for TCP listeners, or a listener's name for unix
socket and tor listeners, where all clients look alike.

  - A source with at most C{free} failed attempts in the last C{window}
    seconds is admitted at once: mistyped tokens and a few reconnecting
    clients are not slowed down.
  - Beyond that, attempts are admitted one at a time.  An attempt made
    with C{n} failures (counting the attempts still waiting ahead of it,
    which will presumably fail too) is admitted no sooner than
    C{min(maxDelay, baseDelay * 2 ** (n - free - 1))} seconds after the
    source's previous admitted attempt.  So parallel connections guess no
    faster than one connection guessing sequentially, and over any
    C{window} seconds a source gets at most C{free + 1 + window /
    baseDelay} wrong guesses checked (with the defaults, a guesser gets
    at most 17 a minute, and 100 wrong tokens take about 7 minutes).
  - Callers report every admitted attempt's outcome (L{AuthThrottle.failed} or
    L{AuthThrottle.succeeded}) as soon as the token is checked, before
    serving anything else: the waiting attempts' delays assume that it
    failed.
  - At most C{maxWaiting} attempts of one source wait; more fail at once
    with L{TooManyAttempts}, and the caller refuses them without checking
    the token.  A waiting attempt whose client goes away is cancelled, and
    the attempts behind it move up.

A good token does not clear a source's failures: an attacker holding one
valid token must not be able to reset the counter.

Memory is bounded: failures older than C{window} are forgotten when a
source is next looked at, a source remembers at most C{free + 64} failures
(beyond C{free + 1 + log2(maxDelay / baseDelay)} they all mean the longest
delay anyway), and at most C{maxSources} sources are tracked (the one whose
last failure is the oldest is forgotten first; its waiting attempts fail
with L{TooManyAttempts}).
"""

import collections

from twisted.internet import defer

#: How many failures beyond C{free} a source remembers.
_EXTRA_MEMORY = 64


class TooManyAttempts(Exception):
    """
    Too many authentication attempts from one source are already waiting
    (or the source was forgotten while its attempts waited): answer
    C{AUTH-FAILURE} without checking the token.
    """


class _Waiting:
    """
    One attempt waiting for its slot.

    @ivar source: whose attempt it is.
    @ivar deferred: what L{AuthThrottle.admit} returned.
    @ivar call: the L{IDelayedCall} that admits it.
    @ivar slot: when it is admitted (the clock's seconds).
    """

    __slots__ = ("source", "deferred", "call", "slot")


class _Source:
    """
    What L{AuthThrottle} remembers of one source.

    @ivar failures: the times of its failures in the window, oldest first.
    @ivar lastAdmitted: when its last attempt was admitted, or C{None}.
    @ivar waiting: its waiting attempts (L{_Waiting}), in slot order.
    @ivar lastFailure: when it last failed (kept when C{failures} empties).
    """

    __slots__ = ("failures", "lastAdmitted", "waiting", "lastFailure")

    def __init__(self, memory):
        self.failures = collections.deque(maxlen=memory)
        self.lastAdmitted = None
        self.waiting = []
        self.lastFailure = None


class AuthThrottle:
    """
    Decides when an C{AUTH} attempt from a source may be checked.

    @ivar free: failures in the window a source may have and still be
        admitted at once.
    @ivar window: how long a failure is remembered (seconds).
    @ivar baseDelay: the first delay beyond C{free} failures (seconds);
        each further failure doubles it.
    @ivar maxDelay: the longest delay between two attempts (seconds).
    @ivar maxWaiting: how many attempts of one source may wait.
    @ivar maxSources: how many sources are remembered.
    """

    def __init__(self, clock, free=10, window=60.0, baseDelay=0.5,
                 maxDelay=30.0, maxWaiting=16, maxSources=10000):
        """
        @param clock: the L{IReactorTime} whose C{seconds} and C{callLater}
            are used.
        @raise ValueError: for parameters that would not throttle
            anything (negative counts, a non-positive window or delay, a
            C{maxDelay} below C{baseDelay}, no room for a source).
        """
        if free < 0 or maxWaiting < 0:
            raise ValueError("free and maxWaiting must not be negative")
        if window <= 0 or baseDelay <= 0:
            raise ValueError("window and baseDelay must be positive")
        if maxDelay < baseDelay:
            raise ValueError("maxDelay must be at least baseDelay")
        if maxSources < 1:
            raise ValueError("maxSources must be at least 1")
        self._clock = clock
        self.free = free
        self.window = window
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.maxWaiting = maxWaiting
        self.maxSources = maxSources
        # Sources by their last failure, oldest first.
        self._sources = collections.OrderedDict()

    def admit(self, source):
        """
        Wait until an C{AUTH} attempt from C{source} may be checked.

        Report the outcome of every admitted attempt with L{failed} (or
        L{succeeded}) as soon as the token is checked: the delays of the
        attempts behind it assume it failed.

        @param source: who makes the attempt (hashable): a peer's host, or
            the listener's name where clients cannot be told apart.
        @return: a L{Deferred} that fires with C{None} when the token may be
            checked (synchronously while the source is under its free
            failures), or fails with L{TooManyAttempts}: then refuse the
            attempt without checking it.  Cancel it if the client goes away
            while it waits; that frees its place.
        """
        now = self._clock.seconds()
        self._forgetOld(now)
        state = self._current(source, now)
        if state is None:
            return defer.succeed(None)
        slot = self._schedule(state, now)
        if slot <= now and not state.waiting:
            state.lastAdmitted = now
            return defer.succeed(None)
        if len(state.waiting) >= self.maxWaiting:
            return defer.fail(TooManyAttempts(
                "%d authentication attempts from %s are already waiting"
                % (len(state.waiting), source)))
        entry = _Waiting()
        entry.source = source

        def cancel(deferred):
            if entry in state.waiting:
                state.waiting.remove(entry)
                entry.call.cancel()
                if self._sources.get(source) is state:
                    self._schedule(state, self._clock.seconds())

        entry.deferred = defer.Deferred(cancel)
        entry.slot = slot
        entry.call = self._clock.callLater(
            slot - now, self._admitWaiting, state, entry)
        state.waiting.append(entry)
        return entry.deferred

    def failed(self, source):
        """
        Record a failed C{AUTH} from C{source} (a wrong token, or an attempt
        refused with L{TooManyAttempts}).
        """
        now = self._clock.seconds()
        self._forgetOld(now)
        state = self._current(source, now)
        if state is None:
            while len(self._sources) >= self.maxSources:
                self._forgetSource(*self._sources.popitem(last=False))
            state = self._sources[source] = _Source(
                self.free + _EXTRA_MEMORY)
        else:
            self._sources.move_to_end(source)
        state.failures.append(now)
        state.lastFailure = now
        if state.waiting:
            self._schedule(state, now)

    def succeeded(self, source):
        """
        Record a good C{AUTH} from C{source}.

        This deliberately changes nothing: the source's failures are not
        cleared, or an attacker holding one valid token could reset the
        counter between guesses.  It is a hook for subclasses and keeps
        callers symmetrical.
        """

    def status(self):
        """
        The sources being throttled, for the status page.

        @return: C{{source: {"failures": n, "waiting": n}}}, where
            C{failures} counts the failures in the window and C{waiting}
            the attempts waiting for their slot.  Sources with neither are
            forgotten.
        """
        now = self._clock.seconds()
        result = {}
        for source, state in list(self._sources.items()):
            self._expire(state, now)
            if not state.failures and not state.waiting:
                del self._sources[source]
                continue
            result[source] = {"failures": len(state.failures),
                              "waiting": len(state.waiting)}
        return result

    def _delay(self, failures):
        """
        The least time between an attempt made with C{failures} failures
        and the attempt before it.
        """
        if failures <= self.free:
            return 0.0
        return min(self.maxDelay, self.baseDelay
                   * 2.0 ** min(failures - self.free - 1, _EXTRA_MEMORY))

    def _schedule(self, state, now):
        """
        (Re)compute the slots of C{state}'s waiting attempts, each after the
        one before it, the first after the last admitted attempt; move the
        ones whose slot changed.

        @return: the slot of an attempt made now, behind them.
        """
        # A source whose failures were recorded without admit() counts
        # from its last failure.
        previous = state.lastAdmitted
        if previous is None:
            previous = state.lastFailure
        failures = len(state.failures)
        for ahead, entry in enumerate(state.waiting):
            slot = max(now, previous + self._delay(failures + ahead))
            if slot != entry.slot:
                entry.slot = slot
                entry.call.reset(slot - now)
            previous = slot
        return max(now, previous
                   + self._delay(failures + len(state.waiting)))

    def _admitWaiting(self, state, entry):
        """
        C{entry}'s slot has come: admit it.
        """
        state.waiting.remove(entry)
        state.lastAdmitted = self._clock.seconds()
        entry.deferred.callback(None)
        # If it came late, or did not fail, the ones behind it move.
        if state.waiting and self._sources.get(entry.source) is state:
            self._schedule(state, self._clock.seconds())

    def _expire(self, state, now):
        """
        Forget C{state}'s failures older than the window.
        """
        horizon = now - self.window
        failures = state.failures
        while failures and failures[0] <= horizon:
            failures.popleft()

    def _current(self, source, now):
        """
        C{source}'s state with its old failures forgotten, or C{None} if
        nothing is remembered of it.
        """
        state = self._sources.get(source)
        if state is None:
            return None
        self._expire(state, now)
        if not state.failures and not state.waiting:
            del self._sources[source]
            return None
        return state

    def _forgetOld(self, now):
        """
        Forget the sources whose last failure left the window (oldest
        first, stopping at one that is still remembered or has attempts
        waiting).
        """
        horizon = now - self.window
        sources = self._sources
        while sources:
            source = next(iter(sources))
            state = sources[source]
            if state.waiting or state.lastFailure > horizon:
                return
            del sources[source]

    def _forgetSource(self, source, state):
        """
        C{source} was evicted to make room: its waiting attempts fail.
        """
        waiting, state.waiting = state.waiting, []
        for entry in waiting:
            entry.call.cancel()
            entry.deferred.errback(TooManyAttempts(
                "too many sources are being throttled; %s was forgotten"
                % (source,)))
