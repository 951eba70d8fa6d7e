"""
Running servers (annexd as C{twistd annexd}, git-annex p2phttp) as separate
processes for tests and benchmarks, the way an operator runs them, so that
synchronous git-annex clients can talk to them.
"""

import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time

from tests.support.sshd import free_port as freePort

_START = "import sys; from annexd.cli import main; main(sys.argv[1:])"

__all__ = ["Daemon", "freePort", "shortTempDir", "spawnServer",
           "startDaemon"]


class Daemon:
    """
    A server process (in its own process group).

    @ivar port: its TCP port on 127.0.0.1.
    @ivar log: the path of its log (stdout and stderr).
    """

    def __init__(self, process, port, log, name="server"):
        self.process = process
        self.port = port
        self.log = log
        self.name = name

    @property
    def url(self):
        return "http://127.0.0.1:%d" % (self.port,)

    def annexUrl(self, scheme="annex+http"):
        return "%s://127.0.0.1:%d/git-annex/" % (scheme, self.port)

    def output(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def waitListening(self, timeout=60):
        """
        Wait (polling, with a bound) until the server accepts connections.

        @return: this L{Daemon}.
        @raise RuntimeError: if it exits or does not listen in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (
                    self.name, self.process.returncode, self.output()))
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("%s did not listen within %d s:\n%s"
                                       % (self.name, timeout, self.output()))
                time.sleep(0.05)

    def stop(self):
        """
        SIGTERM to its process group; SIGKILL if it has not ended in 20 s.
        """
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                self.process.wait()


def spawnServer(argv, port, log, cwd=None, env=None, executable=None,
                name=None):
    """
    Start a server listening on 127.0.0.1:C{port} in its own process group,
    its output going to C{log}; do not wait for it (see
    L{Daemon.waitListening}).

    @rtype: L{Daemon}
    """
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, executable=executable, cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    return Daemon(process, port, log, name or os.path.basename(argv[0]))


def annexdArgv(args):
    """
    The command line that runs C{annexd ARGS} with this Python.
    """
    return [sys.executable, "-c", _START] + list(args)


def startDaemon(testcase, env, args, port=None, timeout=60):
    """
    Start C{annexd ARGS --http tcp:PORT:interface=127.0.0.1} (unless ARGS
    has an --http), wait until it accepts connections, and stop it when the
    test ends.

    @param env: the environment (a dict).
    @rtype: L{Daemon}
    """
    port = port or freePort()
    args = list(args)
    if "--http" not in args:
        args += ["--http", "tcp:%d:interface=127.0.0.1" % (port,)]
    daemon = spawnServer(annexdArgv(args), port, testcase.mktemp() + ".log",
                         env=env, name="annexd")
    testcase.addCleanup(daemon.stop)
    return daemon.waitListening(timeout)


def shortTempDir(case):
    """
    A new directory with a short absolute path (unix socket paths are at
    most 107 bytes; trial's temporary directories can be longer), removed
    after the test.
    """
    path = tempfile.mkdtemp(prefix="annexd-")
    case.addCleanup(shutil.rmtree, path, True)
    return path
