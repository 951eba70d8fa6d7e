# -*- test-case-name: tests.test_client -*-
"""
The client side of a P2P session: annexd asking a repository (a node, or
another gateway) the protocol's questions.

A L{P2PClient} drives one L{P2PConnection} in git-annex's strict lock-step:
one exchange at a time.  It implements L{IRepository}; exchanges that are
started while another runs wait their turn.  A download or upload holds the
session until it is finished; a content lock holds it until released.

Errors: an C{ERROR} reply is a L{RepositoryError} and leaves the session
usable (as git-annex's client does for the requests where the server goes on
serving).  A lost connection, or a reply that breaks the protocol, is a
L{RepositoryUnavailable}; the session is closed and every later request fails
at once with the same reason.
"""

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from annexd.interfaces import (
    IContentLock, IDownload, IRepository, IUpload, Outcome,
    ProtocolNotSupported, RepositoryError, RepositoryUnavailable)
from annexd.protocol import messages as m
from annexd.protocol.framing import ConnectionClosed, ProtocolError
from annexd.protocol.messages import UnparseableMessage


def _expected(types):
    return " or ".join(t.WORD.decode("ascii") for t in types)


@implementer(IRepository)
class P2PClient:
    """
    A client session over a L{P2PConnection}.

    @ivar uuid: the repository's uuid (as announced by AUTH-SUCCESS, or as
        expected when given).
    @ivar version: the negotiated protocol version.
    @ivar broken: L{None} while usable, else why the session ended.
    """

    _log = Logger()

    def __init__(self, connection, uuid=None):
        self.connection = connection
        self.uuid = uuid
        self.version = 0
        self.broken = None
        self._turn = defer.DeferredLock()
        # A session whose connection goes away while idle (the node's
        # process died, its ssh connection dropped) is not reused.
        connection.whenClosed().addCallback(self._connectionClosed)

    def _connectionClosed(self, _):
        if self.broken is None:
            self.broken = "connection to %s closed" % (self.connection.peer,)

    # -- session set-up ---------------------------------------------------

    def handshake(self, version=m.MAX_PROTOCOL_VERSION, bypass=(),
                  auth=None, serverSpeaksFirst=True):
        """
        Open the session.

        @param version: the highest protocol version to offer.
        @param bypass: uuids to send in a BYPASS (version 2 and later).
        @param auth: C{(clientUUID, token)} to authenticate with (P2P
            addresses); else, with C{serverSpeaksFirst}, wait for the
            server's unprompted AUTH-SUCCESS (ssh and local sessions).
        @return: a Deferred firing with this client once ready.
        """
        return defer.Deferred.fromCoroutine(
            self._handshake(version, bypass, auth, serverSpeaksFirst))

    async def _handshake(self, version, bypass, auth, serverSpeaksFirst):
        if auth is not None:
            self.connection.sendMessage(m.Auth(auth[0], auth[1]))
            reply = await self._reply((m.AuthSuccess, m.AuthFailure), "AUTH")
            if isinstance(reply, m.AuthFailure):
                self._break("authentication refused")
                raise RepositoryUnavailable(
                    "%s refused the authentication token" % (self.connection.peer,))
            self._checkUUID(reply.uuid)
        elif serverSpeaksFirst:
            reply = await self._reply((m.AuthSuccess,), "AUTH-SUCCESS")
            self._checkUUID(reply.uuid)
        self.connection.sendMessage(m.Version(version))
        try:
            reply = await self._reply((m.Version,), "VERSION")
        except RepositoryError:
            # A server too old to know VERSION answers ERROR: version 0.
            self.version = 0
        else:
            self.version = min(reply.version, version)
        if bypass and self.version >= 2:
            self.connection.sendMessage(m.Bypass(tuple(sorted(bypass))))
        return self

    def _checkUUID(self, uuid):
        if self.uuid is not None and uuid != self.uuid:
            self._break("wrong uuid")
            raise RepositoryUnavailable(
                "%s answered as repository %s, expected %s" % (
                    self.connection.peer, uuid.decode("utf-8", "replace"),
                    self.uuid.decode("utf-8", "replace")))
        self.uuid = uuid

    # -- plumbing ---------------------------------------------------------

    def _break(self, why, graceful=False):
        """
        End the session for good.  With C{graceful}, what was already
        written is still delivered before the connection closes (a node
        then keeps the part of an upload it got, for a later resume).
        """
        if self.broken is None:
            self.broken = why
        if graceful:
            self.connection.close()
        else:
            self.connection.abort(why)

    async def _reply(self, types, what=None):
        """
        Read the reply to the current request.

        @raise RepositoryError: for an ERROR reply.
        @raise RepositoryUnavailable: for anything that ends the session.
        """
        what = what or _expected(types)
        try:
            msg = await self.connection.readMessage()
        except UnparseableMessage as e:
            self.connection.sendMessage(m.Error.of("expected " + what))
            self._break("unparseable reply")
            raise RepositoryUnavailable(
                "%s sent an unparseable reply %r (expected %s)" % (
                    self.connection.peer, e.line[:200], what))
        except ConnectionClosed as e:
            self._break(str(e))
            raise RepositoryUnavailable(
                "%s: %s" % (self.connection.peer, _describeLoss(e)))
        except ProtocolError as e:
            self._break(str(e))
            raise RepositoryUnavailable(str(e))
        if isinstance(msg, m.Error):
            raise RepositoryError(msg.text)
        if not isinstance(msg, types):
            self.connection.sendMessage(m.Error.of("expected " + what))
            self._break("unexpected reply")
            raise RepositoryUnavailable("%s sent %s, expected %s" % (
                self.connection.peer, msg.WORD.decode("ascii"), what))
        return msg

    def _exchange(self, coroutineFunction, *args, holdsTurn=False):
        """
        Run one exchange when the session is free.

        With C{holdsTurn}, the exchange keeps the session after the
        coroutine returns; the object it returns releases it.
        """
        async def run():
            await self._turn.acquire()
            release = True
            try:
                if self.broken is not None:
                    raise RepositoryUnavailable(
                        "session with %s ended: %s" % (
                            self.connection.peer, self.broken))
                result = await coroutineFunction(*args)
                release = not holdsTurn or not isinstance(result, _Turn)
                return result
            finally:
                if release:
                    self._turn.release()
        return defer.Deferred.fromCoroutine(run())

    def _releaseTurn(self):
        self._turn.release()

    # -- IRepository ------------------------------------------------------

    def checkPresent(self, key):
        return self._exchange(self._checkPresent, key)

    async def _checkPresent(self, key):
        self.connection.sendMessage(m.CheckPresent(key))
        reply = await self._reply((m.Success, m.Failure))
        return isinstance(reply, m.Success)

    def lockContent(self, key):
        return self._exchange(self._lockContent, key, holdsTurn=True)

    async def _lockContent(self, key):
        self.connection.sendMessage(m.LockContent(key))
        reply = await self._reply((m.Success, m.Failure))
        if isinstance(reply, m.Failure):
            return None
        return _ContentLock(self, key)

    def remove(self, key, before=None):
        return self._exchange(self._remove, key, before)

    async def _remove(self, key, before):
        if before is not None and self.version >= 3:
            self.connection.sendMessage(m.RemoveBefore(before, key))
        else:
            self.connection.sendMessage(m.Remove(key))
        return _outcome(await self._reply(
            (m.Success, m.SuccessPlus, m.Failure, m.FailurePlus)))

    def getTimestamp(self):
        return self._exchange(self._getTimestamp)

    async def _getTimestamp(self):
        if self.version < 3:
            raise ProtocolNotSupported(
                "%s speaks protocol %d: no GETTIMESTAMP" % (
                    self.connection.peer, self.version))
        self.connection.sendMessage(m.GetTimestamp())
        return (await self._reply((m.Timestamp,))).timestamp

    def get(self, key, associatedFile, offset):
        return self._exchange(self._get, key, associatedFile, offset,
                              holdsTurn=True)

    async def _get(self, key, associatedFile, offset):
        self.connection.sendMessage(m.Get(offset, associatedFile, key))
        reply = await self._reply((m.Data,))
        return _Download(self, reply.length)

    def put(self, key, associatedFile):
        return self._exchange(self._put, key, associatedFile, holdsTurn=True)

    async def _put(self, key, associatedFile):
        self.connection.sendMessage(m.Put(associatedFile, key))
        reply = await self._reply(
            (m.PutFrom, m.AlreadyHave, m.AlreadyHavePlus),
            "PUT-FROM or ALREADY-HAVE")
        if isinstance(reply, m.PutFrom):
            return _Upload(self, reply.offset)
        return Outcome(True, getattr(reply, "uuids", ()), alreadyHad=True)

    def close(self):
        """
        End the session cleanly (git-annex's way: close our side).

        @return: a Deferred firing when the connection is gone.
        """
        if self.broken is None:
            self.broken = "closed"
        self.connection.close()
        return self.connection.whenClosed()


def _outcome(reply):
    return Outcome(isinstance(reply, (m.Success, m.SuccessPlus)),
                   getattr(reply, "uuids", ()))


def _describeLoss(error):
    reason = getattr(error, "reason", None)
    detail = getattr(getattr(reason, "value", None), "annexdDetail", None)
    if detail:
        return "%s (%s)" % (error, detail)
    return str(error)


class _Turn:
    """
    An object that holds its session's turn until it is done.
    """

    def __init__(self, client):
        self._client = client
        self._done = False
        #: fires (with None) when the exchange is over and the session free
        self.completed = defer.Deferred()

    def _complete(self):
        if not self._done:
            self._done = True
            self._client._releaseTurn()
            self.completed.callback(None)


@implementer(IContentLock)
class _ContentLock(_Turn):
    """
    A lock held on a session.  C{UNLOCKCONTENT} has no reply, so that the
    release is known to have happened on the node before anything else is
    asked of it (on this session or another), L{release} follows it with a
    C{CHECKPRESENT} of the same key and waits for the answer.
    """

    def __init__(self, client, key):
        _Turn.__init__(self, client)
        self._key = key
        self._releasing = None

    def release(self):
        if self._done:
            return defer.succeed(None)
        if self._releasing is None:
            self._client.connection.sendMessage(m.UnlockContent())
            self._releasing = defer.Deferred.fromCoroutine(self._confirm())
        released = defer.Deferred()
        self._releasing.addBoth(lambda _: released.callback(None) or _)
        return released

    async def _confirm(self):
        try:
            self._client.connection.sendMessage(m.CheckPresent(self._key))
            await self._client._reply((m.Success, m.Failure))
        except Exception:
            # The session broke: the node's process ends, and its lock
            # with it.
            pass
        finally:
            self._complete()


@implementer(IDownload)
class _Download(_Turn):
    def __init__(self, client, length):
        _Turn.__init__(self, client)
        self.length = length
        self._delivered = False

    def deliver(self, consumer):
        return defer.Deferred.fromCoroutine(self._deliver(consumer))

    async def _deliver(self, consumer):
        client = self._client
        try:
            await client.connection.readData(self.length, consumer)
        except ConnectionClosed as e:
            client._break(str(e))
            self._complete()
            raise RepositoryUnavailable(
                "%s: %s" % (client.connection.peer, _describeLoss(e)))
        self._delivered = True
        if client.version < 1:
            return None
        try:
            reply = await client._reply((m.Valid, m.Invalid))
        except RepositoryError as e:
            # Not a reply the protocol allows here: the session is lost.
            client._break("ERROR instead of VALID")
            self._complete()
            raise RepositoryUnavailable(str(e))
        except RepositoryUnavailable:
            self._complete()
            raise
        return isinstance(reply, m.Valid)

    def finish(self, ok):
        if self._done:
            return defer.succeed(None)
        client = self._client
        if not self._delivered:
            client._break("download abandoned")
        else:
            client.connection.sendMessage(m.Success() if ok else m.Failure())
        self._complete()
        return defer.succeed(None)


@implementer(IUpload)
class _Upload(_Turn):
    def __init__(self, client, offset):
        _Turn.__init__(self, client)
        self.offset = offset
        self._sink = None

    def receive(self, length):
        if self._sink is not None:
            raise RuntimeError("content already announced")
        self._sink = self._client.connection.sendData(length)
        return self._sink

    def finish(self, valid):
        return defer.Deferred.fromCoroutine(self._finish(valid))

    async def _finish(self, valid):
        client = self._client
        try:
            sink = self._sink
            if sink is None or sink.written < sink.length:
                client._break("upload ended short")
                raise RepositoryUnavailable(
                    "upload to %s ended after %d of %d bytes" % (
                        client.connection.peer,
                        0 if sink is None else sink.written,
                        0 if sink is None else sink.length))
            if client.broken is not None:
                raise RepositoryUnavailable(
                    "session with %s ended: %s" % (
                        client.connection.peer, client.broken))
            if client.version >= 1:
                client.connection.sendMessage(
                    m.Valid() if valid else m.Invalid())
            return _outcome(await client._reply(
                (m.Success, m.SuccessPlus, m.Failure, m.FailurePlus)))
        finally:
            self._complete()

    def dataPresent(self):
        return defer.Deferred.fromCoroutine(self._dataPresent())

    async def _dataPresent(self):
        client = self._client
        try:
            if self._sink is not None:
                raise RuntimeError("content already announced")
            if client.version < 4:
                self.abort("DATA-PRESENT needs protocol 4")
                raise ProtocolNotSupported(
                    "%s speaks protocol %d: no DATA-PRESENT" % (
                        client.connection.peer, client.version))
            client.connection.sendMessage(m.DataPresent())
            return _outcome(await client._reply(
                (m.Success, m.SuccessPlus, m.Failure, m.FailurePlus)))
        finally:
            self._complete()

    def abort(self, reason):
        if self._done:
            return
        client = self._client
        if self._sink is None:
            # Before any DATA, an ERROR makes the server abandon the PUT
            # and wait for the next request.
            client.connection.sendMessage(m.Error.of(reason))
        else:
            # Once DATA is announced the stream cannot be resynchronised.
            client._break("upload aborted: %s" % (reason,), graceful=True)
            # The sink's failure is this abort's consequence, not news.
            self._sink.done.addErrback(lambda _: None)
        self._complete()
