"""
A real C{git annex remotedaemon} serving a repository at a generic P2P
address (C{p2p-annex::testnet:ADDR}), with the test transport program
tests/support/git-annex-p2p-testnet, set up as shared/spec/transports-e2e.sh
does (part B).

The testnet program reaches an address C{ADDR} through the symlink
C{$TESTNET_DIR/ADDR} to the socket remotedaemon listens on (no relay
process keeps running).
C{$TESTNET_DIR} is a short temporary directory, so the symlink's path fits
a unix socket address whatever the repository's path.
"""

import os
import shutil
import signal
import subprocess
import time

from tests.support.daemon import shortTempDir

#: The network name of the test transport.
NETNAME = "testnet"

#: The test transport program (tests/support/git-annex-p2p-testnet).
TESTNET_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "git-annex-p2p-testnet")

_SEARCH = [
    os.environ.get("ANNEXD_TESTNET_PROGRAM"),
    TESTNET_PROGRAM,
]


def testnetProgram():
    """
    The path of git-annex-p2p-testnet, or L{None} if it cannot be found.
    """
    for path in _SEARCH:
        if path and os.path.isfile(path):
            return path
    return None


def testnetEnvironment(testcase, env):
    """
    C{env} plus a bin directory holding C{git-annex-p2p-testnet} first on
    C{PATH}, a short C{$TESTNET_DIR} and a C{$TESTNET_LOG}.

    @return: the new environment (a dict).
    """
    source = testnetProgram()
    if source is None:
        from twisted.trial.unittest import SkipTest
        raise SkipTest("git-annex-p2p-testnet not found")
    top = os.path.realpath(shortTempDir(testcase))
    bindir = os.path.join(top, "bin")
    os.mkdir(bindir)
    program = os.path.join(bindir, "git-annex-p2p-" + NETNAME)
    shutil.copyfile(source, program)
    os.chmod(program, 0o755)
    netDir = os.path.join(top, "net")
    os.mkdir(netDir)
    env = dict(env)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    env["TESTNET_DIR"] = netDir
    env["TESTNET_LOG"] = os.path.join(top, "wire.log")
    return env


def _stat(pid):
    """
    C{(ppid, start time)} of process C{pid}, or L{None} if it is gone.
    """
    try:
        with open("/proc/%d/stat" % (pid,), "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[19])


def _descendants(pid):
    """
    The descendants of C{pid}: C{(pid, start time)} pairs (from /proc).
    """
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry), stat[1]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


class RemoteDaemon:
    """
    A running C{git-annex remotedaemon --foreground} (its own process
    group); it ends when its standard input closes.

    @ivar address: the P2P address it serves (C{p2p-annex::testnet:ADDR}).
    @ivar token: a token it accepts on that address.
    @ivar socket: the symlink to its socket, C{$TESTNET_DIR/ADDR}.
    """

    def __init__(self, repo, env, addr, log):
        self.repo = repo
        self.env = env
        self.addr = addr
        self.address = "p2p-annex::%s:%s" % (NETNAME, addr)
        self.socket = os.path.join(env["TESTNET_DIR"], addr)
        self.log = log
        self.process = None
        self.token = None

    def _run(self, *args, env=None):
        return subprocess.run(
            ["git-annex", *args], cwd=self.repo, env=env or self.env,
            stdin=subprocess.DEVNULL, capture_output=True, check=True,
            timeout=120)

    def start(self, timeout=60):
        """
        Enable the address, start remotedaemon, wait (polling, bounded)
        until its socket is reachable, and make a token.
        """
        self._run("p2p", "--enable", NETNAME,
                  env=dict(self.env, TESTNET_ADDR=self.addr))
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                ["git-annex", "remotedaemon", "--foreground"], cwd=self.repo,
                env=self.env, stdin=subprocess.PIPE, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self.process.poll() is not None:
                raise RuntimeError("remotedaemon exited with %s:\n%s" % (
                    self.process.returncode, self.output()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("remotedaemon did not listen in %s s:\n%s"
                                   % (timeout, self.output()))
            time.sleep(0.02)
        out = self._run("p2p", "--gen-addresses").stdout.decode()
        for line in out.splitlines():
            if line.startswith(self.address + ":"):
                self.token = line[len(self.address) + 1:]
        if not self.token:
            raise RuntimeError("no token for %s in:\n%s" % (self.address,
                                                             out))
        return self

    def output(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        """
        Close remotedaemon's standard input (it exits), then kill what it
        left behind: its transport children (it does not kill them), by
        pid.
        """
        process = self.process
        if process is None or process.returncode is not None:
            return
        children = _descendants(process.pid)
        process.stdin.close()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid, started in children:
            # The same process still (not a new one with a reused pid).
            stat = _stat(pid)
            if stat is not None and stat[1] == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def startRemoteDaemon(testcase, env, repo, addr="srv1"):
    """
    Serve C{repo} at C{p2p-annex::testnet:ADDR} until the test ends.

    @param env: an environment from L{testnetEnvironment}.
    @rtype: L{RemoteDaemon}
    """
    daemon = RemoteDaemon(repo, env, addr, testcase.mktemp() + ".rd.log")
    testcase.addCleanup(daemon.stop)
    return daemon.start()
