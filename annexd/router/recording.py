# -*- test-case-name: tests.test_router -*-
"""
Location tracking: the gateway's git-annex branch records where content went.

L{RecordingRepository} wraps the repository a session is served by and, when
a PUT or REMOVE through it succeeds, records the node uuids that gained or
lost the content in the gateway's location log, as git-annex's own gateway
does (shared/spec/p2p-protocol.md section 5.6): the proxied node and every
uuid its answer lists, never a cluster uuid, never the gateway itself (a
gateway's own repository records itself).
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.annex.logs import isClusterUUID
from annexd.interfaces import IRepository, IUpload, Outcome


@implementer(IRepository)
class RecordingRepository:
    """
    @ivar changed: whether anything was recorded (so the journal needs a
        commit when the session ends).
    """

    _log = Logger()

    def __init__(self, repository, record, gatewayUUID):
        """
        @param record: C{record(key, uuids, present) -> bool}, e.g.
            L{annexd.router.router.Router.record}: one call per key.
        """
        self.repository = repository
        self.uuid = repository.uuid
        self._record = record
        self._gatewayUUID = gatewayUUID
        self.changed = False

    def _note(self, key, outcome, present, includeTarget):
        uuids = list(outcome.uuids)
        if includeTarget:
            uuids.insert(0, self.uuid)
        uuids = [u for u in uuids
                 if u != self._gatewayUUID and not isClusterUUID(u)]
        if not uuids:
            return outcome
        try:
            if self._record(key.raw, uuids, present):
                self.changed = True
        except Exception:
            self._log.failure(
                "could not record {key} {state} on {uuids}",
                key=str(key), state="present" if present else "missing",
                uuids=", ".join(u.decode("ascii", "replace") for u in uuids))
        return outcome

    def checkPresent(self, key):
        return self.repository.checkPresent(key)

    def lockContent(self, key):
        return self.repository.lockContent(key)

    def getTimestamp(self):
        return self.repository.getTimestamp()

    def get(self, key, associatedFile, offset):
        return self.repository.get(key, associatedFile, offset)

    def remove(self, key, before=None):
        d = self.repository.remove(key, before)
        return d.addCallback(lambda outcome: self._note(
            key, Outcome(outcome.ok, outcome.uuids), False, outcome.ok))

    def put(self, key, associatedFile):
        def wrap(offer):
            if isinstance(offer, Outcome):
                return self._note(key, offer, True, True)
            return _RecordingUpload(self, key, offer)
        return self.repository.put(key, associatedFile).addCallback(wrap)

    def setBypass(self, uuids):
        setBypass = getattr(self.repository, "setBypass", None)
        if setBypass is not None:
            setBypass(uuids)

    def close(self):
        close = getattr(self.repository, "close", None)
        return defer.maybeDeferred(close) if close else defer.succeed(None)


@implementer(IUpload)
class _RecordingUpload:
    def __init__(self, owner, key, upload):
        self._owner = owner
        self._key = key
        self._upload = upload
        self.offset = upload.offset

    def receive(self, length):
        return self._upload.receive(length)

    def _done(self, outcome):
        if outcome.ok:
            self._owner._note(self._key, outcome, True, True)
        return outcome

    def finish(self, valid):
        return self._upload.finish(valid).addCallback(self._done)

    def dataPresent(self):
        return self._upload.dataPresent().addCallback(self._done)

    def abort(self, reason):
        return self._upload.abort(reason)
