# -*- test-case-name: tests.test_control -*-
"""
The daemon's unix control socket: how C{annexd-shell} hands an ssh session
to the running daemon.

sshd starts one C{annexd-shell} per connection.  For a P2P session
(C{p2pstdio}) the shell connects to the control socket and, in one
C{sendmsg}, passes its standard input and output (C{SCM_RIGHTS}) with a
one-line JSON request::

    {"version": 1, "command": "p2pstdio", "repo": "/srv/gw.git",
     "client": "<client uuid>", "target": "<uuid or null>",
     "mode": "read-write", "user": "alice"}

The daemon answers one JSON line:

  - C{{"ok": true}}: it now serves the P2P session directly on the passed
    descriptors (no copying through the shell), through the same router,
    node sessions, locks and metrics as its other front-ends; when the
    session ends it closes them and sends C{{"exit": 0}};
  - C{{"error": "..."}}: refused (unknown target, bad request); the shell
    shows the reason, as git-annex-shell would, and exits 1;
  - C{{"fallback": "..."}}: the daemon does not serve that repository; the
    shell serves the session itself.

C{mode} and C{user} are the restrictions and identity the shell was given
(C{authorized_keys}); the socket's file mode decides who may connect, so
only the account sshd runs the shell as (and the daemon's) should.  If the
shell goes away mid-session the session is ended.
"""

import json
import os

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.logger import Logger
from zope.interface import implementer

from annexd.protocol.framing import P2PConnection
from annexd.protocol.server import P2PServer, ServerMode
from annexd.router.host import SessionTarget
from annexd.router.router import UnknownTarget
from annexd.streams import PipeStandardIO

#: The longest request line accepted.
MAX_REQUEST = 64 * 1024

PROTOCOL_VERSION = 1


class BadRequest(Exception):
    """
    The shell's request cannot be served; the message says why.
    """


def parseRequest(line):
    """
    Parse and check one request line.

    @return: a dict with C{repo}, C{client}, C{target} (bytes or None),
        C{mode} (a L{ServerMode}) and C{user}.
    @raise BadRequest: otherwise.
    """
    try:
        request = json.loads(line)
    except ValueError:
        raise BadRequest("the request is not JSON")
    if not isinstance(request, dict):
        raise BadRequest("the request is not a JSON object")
    if request.get("version") != PROTOCOL_VERSION:
        raise BadRequest("unsupported control protocol version %r (this "
                         "daemon speaks %d)" % (request.get("version"),
                                                PROTOCOL_VERSION))
    if request.get("command") != "p2pstdio":
        raise BadRequest("unsupported command %r" % (request.get("command"),))
    for name in ("repo", "client"):
        if not isinstance(request.get(name), str) or not request[name]:
            raise BadRequest("missing %s" % (name,))
    target = request.get("target")
    if target is not None and not isinstance(target, str):
        raise BadRequest("bad target")
    user = request.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("bad user")
    try:
        mode = ServerMode(request.get("mode"))
    except ValueError:
        raise BadRequest("bad mode %r" % (request.get("mode"),))
    return {"repo": request["repo"],
            "client": request["client"].encode("ascii", "replace"),
            "target": target.encode("ascii", "replace") if target else None,
            "mode": mode, "user": user}


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


@implementer(IFileDescriptorReceiver)
class ControlProtocol(protocol.Protocol):
    """
    One shell's connection to the control socket.
    """

    _log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self._fds = []
        self._buffer = b""
        self._session = None
        self._stdio = None
        self._gone = False

    def fileDescriptorReceived(self, descriptor):
        if self._session is not None or len(self._fds) >= 2:
            _close(descriptor)
            return
        self._fds.append(descriptor)

    def dataReceived(self, data):
        if self._session is not None:
            return
        self._buffer += data
        if b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REQUEST:
                self._refuse("request too long")
            return
        line = self._buffer.split(b"\n", 1)[0]
        self._session = True
        try:
            request = parseRequest(line)
            if len(self._fds) != 2:
                raise BadRequest("expected the session's standard input and "
                                 "output with the request")
            host = self.factory.hostFor(request["repo"])
            if host is None:
                self._answer({"fallback": "%s is not served by this daemon"
                              % (request["repo"],)})
                self._release()
                self.transport.loseConnection()
                return
            try:
                target = SessionTarget(
                    host, request["target"] or host.state.uuid, "ssh")
            except UnknownTarget as e:
                raise BadRequest(str(e))
            self._serve(host, target, request)
        except BadRequest as e:
            self._refuse(str(e))
        except Exception:
            # Nothing was served yet: the shell serves the session itself.
            self._log.failure("cannot serve a relayed ssh session")
            self._answer({"fallback": "internal error in annexd"})
            self._release()
            self.transport.loseConnection()

    def _answer(self, message):
        self.transport.write(json.dumps(message).encode() + b"\n")

    def _refuse(self, reason):
        self._session = True
        self._answer({"error": reason})
        self._release()
        self.transport.loseConnection()

    def _release(self):
        fds, self._fds = self._fds, []
        for fd in fds:
            _close(fd)

    def _serve(self, host, target, request):
        factory = self.factory
        stdin, stdout = self._fds
        connection = P2PConnection("ssh client%s" % (
            " %s" % (request["user"],) if request["user"] else ""))
        closed = connection.whenClosed()
        server = P2PServer(connection, target, request["mode"],
                           clientUUID=request["client"])
        self._stdio = PipeStandardIO(connection, stdin=stdin, stdout=stdout,
                                     reactor=factory.reactor)
        # Only now is the session ours: the shell lets go of its
        # descriptors when it reads this.
        self._answer({"ok": True})
        factory.sessionOpened(self, request)

        def over(_):
            # PipeStandardIO does not close the descriptors: they are ours.
            self._stdio = None
            self._release()
            factory.sessionClosed(self, request)
            if not self._gone:
                self._answer({"exit": 0})
                self.transport.loseConnection()

        d = server.serve()
        d.addCallback(lambda _: closed)
        d.addBoth(over)

    def connectionLost(self, reason):
        self._gone = True
        if self._stdio is not None:
            # The shell is gone (its ssh connection dropped, or it was
            # killed): so is the session.
            self._stdio.loseConnection()
            self._stdio.connectionLost(reason)
        else:
            self._release()


class ControlFactory(protocol.ServerFactory):
    """
    Serves the control socket for a set of gateway hosts.

    @ivar sessions: the open relayed sessions (protocol -> request).
    """

    _log = Logger()

    def __init__(self, reactor, hosts, monitor=None):
        self.reactor = reactor
        self.hosts = hosts
        self.monitor = monitor
        self.sessions = {}
        self._byPath = None

    def hostFor(self, path):
        """
        The host serving the gateway repository at C{path}, if any.
        """
        if self._byPath is None:
            self._byPath = {}
            for host in self.hosts:
                for where in (host.state.path,
                              os.path.join(host.state.path, ".git")):
                    self._byPath[os.path.realpath(where)] = host
        return self._byPath.get(os.path.realpath(path))

    def buildProtocol(self, addr):
        return ControlProtocol(self)

    def sessionOpened(self, proto, request):
        self.sessions[proto] = request
        self._log.info("ssh session for {user} to {target} opened",
                       user=request["user"] or "(unnamed)",
                       target=(request["target"] or b"gateway").decode())
        if self.monitor is not None:
            self.monitor.sessionOpened("ssh")

    def sessionClosed(self, proto, request):
        self.sessions.pop(proto, None)
        self._log.info("ssh session for {user} closed",
                       user=request["user"] or "(unnamed)")
        if self.monitor is not None:
            self.monitor.sessionClosed("ssh")

    def close(self):
        """
        End every relayed session.

        @return: a Deferred firing when they are over.
        """
        for proto in list(self.sessions):
            proto.transport.loseConnection()
        return defer.succeed(None)
