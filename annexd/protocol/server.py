# -*- test-case-name: tests.test_server -*-
"""
The server side of a P2P session: annexd answering a git-annex client on
behalf of an L{IRepository} (the gateway itself, a proxied node, a cluster).

It shares the codec and framing with the client side (L{P2PClient}); only
the direction of the exchanges differs.  Behaviour follows git-annex's plain
server (shared/spec/p2p-protocol.md section 1.6): an unparseable line gets
C{ERROR unknown command}, a message that is no request gets C{ERROR
unexpected command}, and the session goes on; the client's C{ERROR} or EOF
ends it.  Content streams straight between the client's connection and the
repository's consumer or producer, with backpressure both ways.

Nothing the repository raises reaches the client as a traceback: a
L{RepositoryError} is relayed as C{ERROR text}; anything else is logged and
answered with a one-line C{ERROR}.
"""

from enum import Enum

from twisted.internet import defer
from twisted.logger import Logger

from annexd.interfaces import Outcome, RepositoryError, RepositoryUnavailable
from annexd.protocol import messages as m
from annexd.protocol.framing import ConnectionClosed, LineTooLong
from annexd.protocol.messages import UnparseableMessage, plusReply

READONLY_ERROR = b"this repository is read-only; write access denied"
APPENDONLY_ERROR = b"this repository is append-only; removal denied"


class ServerMode(Enum):
    """
    What a client may do (git-annex's C{ServerMode}).
    """

    READ_WRITE = "read-write"
    APPEND_ONLY = "append-only"
    READ_ONLY = "read-only"


class _SessionOver(Exception):
    """
    The session cannot go on (client ERROR, EOF, broken stream).
    """


class P2PServer:
    """
    Serve one client connection.

    @ivar repository: the L{IRepository} requests go to.
    @ivar mode: a L{ServerMode}.
    @ivar version: the negotiated protocol version.
    @ivar bypass: the uuids of the last BYPASS the client sent.
    @ivar clientUUID: the client's uuid, when known (AUTH, p2pstdio).
    """

    _log = Logger()

    def __init__(self, connection, repository, mode=ServerMode.READ_WRITE,
                 checkAuth=None, clientUUID=None, connect=None,
                 notifyChange=None):
        """
        @param checkAuth: for P2P-address connections, a callable
            C{(uuid, token) -> bool} (or a Deferred of one); the client must
            then AUTH first, and a failed AUTH ends the connection (one
            guess per connection).  Without it the server announces itself
            with an unprompted AUTH-SUCCESS, as over ssh.
        @param connect: serves C{CONNECT}: a callable C{(service,
            connection) -> Deferred} that relays git's C{service}
            (C{b"git-upload-pack"} or C{b"git-receive-pack"}) over the
            connection until it sends C{CONNECTDONE}; the session then ends,
            as git-annex's does.  Without it CONNECT is refused (ssh).
        @param notifyChange: serves C{NOTIFYCHANGE}: a callable returning a
            Deferred that fires with the git shas of the refs that changed,
            once some did.  Without it NOTIFYCHANGE is refused.
        """
        self.connection = connection
        self.repository = repository
        self.mode = mode
        self.version = 0
        self.bypass = ()
        self.clientUUID = clientUUID
        self._checkAuth = checkAuth
        self._connect = connect
        self._notifyChange = notifyChange

    def serve(self):
        """
        Run the session until the client ends it.

        @return: a Deferred that fires (with L{None}) when the session is
            over; it never fails.
        """
        return defer.Deferred.fromCoroutine(self._serve())

    async def _serve(self):
        try:
            if self._checkAuth is None:
                self.connection.sendMessage(m.AuthSuccess(self.repository.uuid))
            elif not await self._authenticate():
                return
            while True:
                await self._serveOne()
        except _SessionOver:
            pass
        except Exception:
            self._log.failure("P2P session with {peer} failed",
                              peer=self.connection.peer)
            self.connection.sendMessage(m.Error(b"internal error in annexd"))
        finally:
            self.connection.close()

    async def _read(self):
        """
        Read the client's next message.

        @raise UnparseableMessage: the line is not a message.
        @raise _SessionOver: the connection is gone.
        """
        try:
            return await self.connection.readMessage()
        except (ConnectionClosed, LineTooLong):
            raise _SessionOver()

    async def _readReply(self, onEnd):
        """
        Read the client's reply inside an exchange: the message, or L{None}
        for an unparseable line.  If the session ends instead, C{onEnd()}
        (which may return a Deferred) cleans up the exchange first.
        """
        try:
            return await self._read()
        except UnparseableMessage:
            return None
        except _SessionOver:
            await defer.maybeDeferred(onEnd)
            raise

    async def _authenticate(self):
        while True:
            try:
                msg = await self._read()
            except UnparseableMessage:
                self.connection.sendMessage(m.Error(b"unknown command"))
                continue
            if isinstance(msg, m.Auth):
                if await defer.maybeDeferred(self._checkAuth, msg.uuid, msg.token):
                    self.clientUUID = msg.uuid
                    self.connection.sendMessage(m.AuthSuccess(self.repository.uuid))
                    return True
                self.connection.sendMessage(m.AuthFailure())
                return False
            elif isinstance(msg, m.Error):
                return False
            else:
                self.connection.sendMessage(m.Error(b"unexpected command"))

    async def _serveOne(self):
        try:
            msg = await self._read()
        except UnparseableMessage:
            self.connection.sendMessage(m.Error(b"unknown command"))
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            if isinstance(msg, m.Error):
                raise _SessionOver()
            self.connection.sendMessage(m.Error(b"unexpected command"))
            return
        try:
            await handler(self, msg)
        except (RepositoryError, RepositoryUnavailable) as e:
            self.connection.sendMessage(m.Error.of(_errorText(e)))

    # -- handlers ---------------------------------------------------------

    async def _version(self, msg):
        self.version = min(msg.version, m.MAX_PROTOCOL_VERSION)
        self.connection.sendMessage(m.Version(self.version))

    async def _bypass(self, msg):
        self.bypass = msg.uuids
        setBypass = getattr(self.repository, "setBypass", None)
        if setBypass is not None:
            setBypass(msg.uuids)

    async def _checkPresent(self, msg):
        present = await self.repository.checkPresent(msg.key)
        self.connection.sendMessage(m.Success() if present else m.Failure())

    async def _getTimestamp(self, msg):
        timestamp = await self.repository.getTimestamp()
        self.connection.sendMessage(m.Timestamp(timestamp))

    async def _remove(self, msg):
        if self.mode is not ServerMode.READ_WRITE:
            self.connection.sendMessage(m.Error(
                READONLY_ERROR if self.mode is ServerMode.READ_ONLY
                else APPENDONLY_ERROR))
            return
        before = msg.timestamp if isinstance(msg, m.RemoveBefore) else None
        outcome = await self.repository.remove(msg.key, before)
        self.connection.sendMessage(
            plusReply(outcome.ok, outcome.uuids, self.version))

    async def _lockContent(self, msg):
        lock = await self.repository.lockContent(msg.key)
        if lock is None:
            self.connection.sendMessage(m.Failure())
            return
        self.connection.sendMessage(m.Success())
        reply = await self._readReply(lock.release)
        await lock.release()
        if not isinstance(reply, m.UnlockContent):
            # The message is consumed, not executed (as git-annex does).
            self.connection.sendMessage(m.Error(b"expected UNLOCKCONTENT"))

    async def _get(self, msg):
        download = await self.repository.get(msg.key, msg.associatedFile,
                                             msg.offset)
        sink = self.connection.sendData(download.length)
        # deliver() reports the outcome; a lost connection also shows there
        # or at the next read, so the sink's own failure is no news.
        sink.done.addErrback(lambda _: None)
        try:
            valid = await download.deliver(sink)
        except Exception:
            # DATA is announced and cannot be completed: the client's stream
            # is lost (it keeps what it got, and resumes).
            download.finish(False)
            self.connection.abort("the repository failed mid-download")
            raise _SessionOver()
        if sink.written != download.length:
            # A short payload cannot be completed or revised; a verdict now
            # would be read as payload.  Only dropping the connection helps.
            download.finish(False)
            self.connection.abort("the repository delivered %d of %d bytes" % (
                sink.written, download.length))
            raise _SessionOver()
        if self.version >= 1:
            self.connection.sendMessage(m.Invalid() if valid is False or (
                valid is None and download.length) else m.Valid())
        reply = await self._readReply(lambda: download.finish(False))
        ok = isinstance(reply, (m.Success, m.SuccessPlus))
        await download.finish(ok)
        if not isinstance(reply, (m.Success, m.SuccessPlus, m.Failure,
                                  m.FailurePlus, m.Error)):
            self.connection.sendMessage(m.Error(
                b"expected SUCCESS or SUCCESS-PLUS or FAILURE or FAILURE-PLUS"
                if self.version >= 2 else b"expected SUCCESS or FAILURE"))

    async def _put(self, msg):
        if self.mode is ServerMode.READ_ONLY:
            self.connection.sendMessage(m.Error(READONLY_ERROR))
            return
        offer = await self.repository.put(msg.key, msg.associatedFile)
        if isinstance(offer, Outcome):
            if offer.alreadyHad:
                self.connection.sendMessage(
                    m.AlreadyHavePlus(tuple(offer.uuids))
                    if self.version >= 2 and offer.uuids else m.AlreadyHave())
            else:
                # PUT has no FAILURE reply: refuse it as git-annex does.
                self.connection.sendMessage(
                    m.Error(b"the repository does not accept this content"))
            return
        upload = offer
        self.connection.sendMessage(m.PutFrom(upload.offset))
        reply = await self._readReply(lambda: upload.abort("client went away"))
        if isinstance(reply, m.Data):
            outcome = await self._receiveContent(upload, reply.length)
        elif isinstance(reply, m.DataPresent) and self.version >= 4:
            outcome = await upload.dataPresent()
        elif isinstance(reply, m.Error):
            upload.abort("client abandoned the upload")
            return
        else:
            upload.abort("client sent no DATA")
            self.connection.sendMessage(m.Error(b"expected DATA"))
            return
        self.connection.sendMessage(
            plusReply(outcome.ok, outcome.uuids, self.version))

    async def _receiveContent(self, upload, length):
        try:
            sink = upload.receive(length)
        except Exception:
            # The payload and its verdict come anyway: skip them, so that no
            # byte of content is ever read as a command.
            upload.abort("the repository cannot take the content")
            await self._skipContent(length)
            raise
        try:
            await self.connection.readData(length, sink)
        except ConnectionClosed:
            upload.abort("client went away mid-upload")
            raise _SessionOver()
        valid = None
        if self.version >= 1:
            reply = await self._readReply(
                lambda: upload.abort("client went away before VALID"))
            if isinstance(reply, (m.Valid, m.Invalid)):
                valid = isinstance(reply, m.Valid)
            else:
                self.connection.sendMessage(
                    m.Error(b"expected VALID or INVALID"))
        return await upload.finish(valid)

    async def _skipContent(self, length):
        try:
            await self.connection.readData(length, None)
        except ConnectionClosed:
            raise _SessionOver()
        if self.version >= 1:
            try:
                await self._read()
            except UnparseableMessage:
                pass

    async def _connectGit(self, msg):
        if self._connect is None:
            self.connection.sendMessage(m.Error(
                b"relaying to git not supported on this connection"))
            raise _SessionOver()
        if msg.service == b"git-receive-pack" and (
                self.mode is not ServerMode.READ_WRITE):
            # As git-annex: a push could overwrite refs, so append-only
            # clients may not push either.
            self.connection.sendMessage(m.Error(READONLY_ERROR))
            raise _SessionOver()
        await self._connect(msg.service, self.connection)
        # git may have left unread bytes behind: the session is over.
        raise _SessionOver()

    async def _notify(self, msg):
        if self._notifyChange is None:
            self.connection.sendMessage(m.Error(
                b"change notification not available"))
            raise _SessionOver()
        waiting = defer.maybeDeferred(self._notifyChange)
        closed = self.connection.whenClosed()
        closed.addErrback(lambda f: f.trap(defer.CancelledError))
        try:
            shas, which = await defer.DeferredList(
                [waiting, closed], fireOnOneCallback=True,
                fireOnOneErrback=True, consumeErrors=True)
        except defer.FirstError as e:
            raise e.subFailure.value
        if which == 1:
            waiting.cancel()
            raise _SessionOver()
        closed.cancel()
        self.connection.sendMessage(m.Changed(tuple(shas)))

    _handlers = {
        m.Version: _version,
        m.Bypass: _bypass,
        m.CheckPresent: _checkPresent,
        m.GetTimestamp: _getTimestamp,
        m.Remove: _remove,
        m.RemoveBefore: _remove,
        m.LockContent: _lockContent,
        m.Get: _get,
        m.Put: _put,
        m.Connect: _connectGit,
        m.NotifyChange: _notify,
    }


def _errorText(error):
    text = getattr(error, "text", None)
    if text is None:
        text = str(error).encode("utf-8", "replace")
    return text
