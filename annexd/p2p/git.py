# -*- test-case-name: tests.test_p2pgit -*-
"""
git over a P2P connection: C{CONNECT} and C{NOTIFYCHANGE}.

C{git pull} and C{git push} through a C{p2p-annex::} or C{tor-annex::}
remote run git's remote helper (C{git-remote-p2p-annex}), which sends
C{CONNECT git-upload-pack} (or C{git-receive-pack}) and then relays git's
protocol in C{DATA} frames both ways (shared/spec/transports.md section B).
L{relayGit} runs git's own service program on the gateway repository and
relays:

  - the client's C{DATA} frames stream into git's standard input (the
    connection pauses while git's pipe is full); the client's
    C{CONNECTDONE} closes it;
  - git's standard output goes out as C{DATA} frames as it comes (git is
    paused while the client's socket is full);
  - C{CONNECTDONE <exit code>} is sent only once git has exited *and*
    every byte of its output has been sent -- git-annex's own server
    sometimes sends it before the pack's end and the client's fetch hangs.

L{RefWatcher} answers C{NOTIFYCHANGE}: it waits until one of the
repository's refs changes and gives the shas of the changed refs.
"""

import os

from twisted.internet import defer, error, protocol
from twisted.internet.task import LoopingCall
from twisted.internet.utils import getProcessOutput
from twisted.logger import Logger

from annexd.protocol import messages as m
from annexd.protocol.framing import ConnectionClosed, LineTooLong
from annexd.protocol.messages import UnparseableMessage

SERVICES = {b"git-upload-pack": "upload-pack",
            b"git-receive-pack": "receive-pack"}


class _GitProcess(protocol.ProcessProtocol):
    """
    git's service program: its output goes to the client as DATA frames.
    """

    _log = Logger()

    def __init__(self, connection, service):
        self.connection = connection
        self.service = service
        self.ended = defer.Deferred()
        self._stderr = bytearray()

    def connectionMade(self):
        transport = self.connection.transport
        if transport is not None and not self.connection.disconnected:
            # The client's socket paces git's output.
            transport.registerProducer(self.transport, True)

    def childDataReceived(self, childFD, data):
        if childFD == 1:
            if not self.connection.disconnected:
                self.connection.sendData(len(data)).write(data)
        elif len(self._stderr) < 4096:
            self._stderr += data[:4096 - len(self._stderr)]

    def processEnded(self, reason):
        # Twisted calls this once the process has exited *and* every pipe
        # is closed: all of git's output has been handed on.
        transport = self.connection.transport
        if transport is not None and not self.connection.disconnected:
            transport.unregisterProducer()
        code = getattr(reason.value, "exitCode", None)
        if code is None:
            code = 1
        if code and self._stderr:
            self._log.info("git {service} exited {code}: {stderr}",
                           service=self.service, code=code,
                           stderr=bytes(self._stderr).decode(
                               "utf-8", "replace").strip())
        self.ended.callback(code)


async def relayGit(reactor, connection, service, gitDir, env=None,
                   git="git"):
    """
    Relay git's C{service} on C{gitDir} over C{connection} (after the
    client's C{CONNECT}) until git has exited and its output is sent, then
    send C{CONNECTDONE}.

    @param service: C{b"git-upload-pack"} or C{b"git-receive-pack"}.
    @return: git's exit code (or L{None} when the client went away).
    """
    program = SERVICES.get(service)
    if program is None:
        connection.sendMessage(m.Error(b"unsupported service"))
        return None
    gitProcess = _GitProcess(connection, program)
    try:
        reactor.spawnProcess(gitProcess, git, [git, program, gitDir],
                             env=env, path=gitDir)
    except OSError as e:
        connection.sendMessage(m.Error.of(
            ("cannot run git %s: %s" % (program, e)).encode()))
        return None
    feeding = defer.ensureDeferred(_feed(connection, gitProcess))
    code = await gitProcess.ended
    if connection.disconnected:
        return None
    connection.sendMessage(m.ConnectDone(code))
    connection.close()
    await feeding
    return code


async def _feed(connection, gitProcess):
    """
    The client's side: DATA frames into git's standard input, until the
    client's CONNECTDONE or git's end.
    """
    stdin = gitProcess.transport
    try:
        while not gitProcess.ended.called:
            try:
                msg = await connection.readMessage()
            except UnparseableMessage:
                msg = None
            if isinstance(msg, m.Data):
                if gitProcess.ended.called:
                    await connection.readData(msg.length, None)
                else:
                    await connection.readData(msg.length, stdin)
            elif isinstance(msg, m.ConnectDone):
                break
            else:
                connection.sendMessage(m.Error(
                    b"expected DATA or CONNECTDONE"))
                _stop(stdin)
                return
    except (ConnectionClosed, LineTooLong):
        # The client is gone: so is git.
        _stop(stdin)
        return
    try:
        stdin.closeStdin()
    except Exception:
        pass


def _stop(transport):
    try:
        transport.signalProcess("TERM")
    except (error.ProcessExitedAlready, OSError):
        pass


class RefWatcher:
    """
    Waits for a repository's refs to change (C{NOTIFYCHANGE}).

    One watcher serves every waiting client: while somebody waits, it
    stats the ref files every C{interval} seconds, and when they changed
    lists the refs with C{git show-ref} and hands every waiter the shas of
    the refs that changed (coalescing changes within one interval, as
    git-annex coalesces within ~50 ms).
    """

    _log = Logger()

    def __init__(self, reactor, gitDir, env=None, git="git", interval=1.0):
        self.reactor = reactor
        self.gitDir = gitDir
        self.env = env if env is not None else os.environ
        self.git = git
        self.interval = interval
        self._waiters = []
        self._loop = None
        self._refs = None
        self._stamp = None
        self._checking = False

    def _signature(self):
        stamps = []
        for top in ("refs", "packed-refs"):
            path = os.path.join(self.gitDir, top)
            if os.path.isdir(path):
                for dirpath, dirnames, filenames in os.walk(path):
                    dirnames.sort()
                    for name in sorted(filenames + [""]):
                        try:
                            st = os.stat(os.path.join(dirpath, name))
                        except OSError:
                            continue
                        stamps.append((dirpath, name, st.st_mtime_ns,
                                       st.st_size, st.st_ino))
            else:
                try:
                    st = os.stat(path)
                    stamps.append((path, st.st_mtime_ns, st.st_size,
                                   st.st_ino))
                except OSError:
                    pass
        return tuple(stamps)

    async def _showRefs(self):
        try:
            out = await getProcessOutput(self.git, ["show-ref"], env=self.env,
                                         path=self.gitDir, errortoo=False,
                                         reactor=self.reactor)
        except IOError:
            # show-ref exits 1 (with output on stderr) when there are no refs.
            out = b""
        refs = {}
        for line in out.splitlines():
            sha, _, name = line.partition(b" ")
            if name:
                refs[name] = sha
        return refs

    def wait(self):
        """
        @return: a (cancellable) Deferred firing with the list of shas of
            the refs that changed, once some did.
        """
        def cancel(d):
            if d in self._waiters:
                self._waiters.remove(d)
            if not self._waiters:
                self._stop()
        d = defer.Deferred(cancel)
        self._waiters.append(d)
        if self._loop is None:
            self._refs = None
            self._stamp = self._signature()
            self._loop = LoopingCall(self._check)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)
            defer.ensureDeferred(self._baseline())
        return d

    async def _baseline(self):
        refs = await self._showRefs()
        if self._refs is None:
            self._refs = refs

    def _stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _check(self):
        if self._checking or self._refs is None:
            return
        stamp = self._signature()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self._checking = True
        d = defer.ensureDeferred(self._compare())
        d.addErrback(lambda f: self._log.failure("listing refs failed", f))
        d.addBoth(lambda _: setattr(self, "_checking", False))

    async def _compare(self):
        refs = await self._showRefs()
        changed = sorted({sha for name, sha in refs.items()
                          if self._refs.get(name) != sha})
        self._refs = refs
        if not changed:
            return
        waiters, self._waiters = self._waiters, []
        self._stop()
        for d in waiters:
            d.callback(changed)

    def close(self):
        """
        Stop watching; waiters are cancelled.
        """
        for d in list(self._waiters):
            d.cancel()
        self._stop()
