"""
Running annexd (C{twistd annexd}) as a separate process for tests, the way
an operator runs it, so that synchronous git-annex clients can talk to it.
"""

import os
import signal
import socket
import subprocess
import sys
import time

_START = "import sys; from annexd.cli import main; main(sys.argv[1:])"


def freePort():
    """
    A TCP port on 127.0.0.1 nothing listens on right now.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    """
    A running annexd.

    @ivar port: its HTTP port on 127.0.0.1.
    @ivar log: the path of its log (stdout and stderr).
    """

    def __init__(self, process, port, log):
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self):
        return "http://127.0.0.1:%d" % (self.port,)

    def annexUrl(self, scheme="annex+http"):
        return "%s://127.0.0.1:%d/git-annex/" % (scheme, self.port)

    def output(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def startDaemon(testcase, env, args, port=None, scheme="tcp", timeout=60):
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
    log = os.path.join(testcase.mktemp() + ".log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _START] + args, env=env,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    daemon = Daemon(process, port, log)
    testcase.addCleanup(daemon.stop)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError("annexd exited with %s:\n%s" % (
                process.returncode, daemon.output()))
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return daemon
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("annexd did not listen within %d s:\n%s"
                                   % (timeout, daemon.output()))
            time.sleep(0.05)
