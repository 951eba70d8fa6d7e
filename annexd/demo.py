# -*- test-case-name: tests.test_demo -*-
"""
C{annexd demo DIR [--port N] [--admin-port N]}: a git-annex cluster of three nodes in local
directories, served by annexd over HTTP on 127.0.0.1 in the foreground, and
the commands a stock git-annex client runs to use it.

The cluster is built the way git-annex sets one up (C{git annex
initcluster}, C{remote.NODE.annex-cluster-node}, C{git annex
updatecluster}), with the real git-annex of the PyPI wheel
(L{annexd.gitannex.find}).  Layout of C{DIR}::

    .annexd-demo     marks DIR as a demo directory ("building" until complete)
    bin/             git-annex's roles (symlinks to the wheel's binary)
    gateway/         bare gateway repository, gateway of the cluster mycluster
    nodes/nodeN/     the bare node repositories (every node wants everything)
    annexd.log       the daemon's log

C{annexd demo DIR} on an existing demo directory reuses it (the cluster keeps
its content); an existing directory that is neither empty nor a demo is
refused.  The daemon is C{twistd annexd} run in this process, as
C{annexd -n --pidfile= annexd --repo DIR/gateway --http
tcp:PORT:interface=127.0.0.1 --wideopen --admin tcp:PORT+1:...}: no
authentication, which is safe only because it listens on the loopback
interface; the status page and C{/metrics} are on the next port (or
C{--admin-port}; left out if that port is taken).  Once it listens, the
client's commands are printed as lines that start with two spaces and
C{$ }, to be run in order by bash from one directory.  Ctrl-C or SIGTERM
stops it.
"""

import argparse
import os
import socket
import subprocess
import sys

from annexd import gitannex

#: The port served when C{--port} is not given.
DEFAULT_PORT = 9417

#: The cluster's name: the client reaches it as C{origin-mycluster}.
CLUSTER = "mycluster"

#: How many nodes the cluster has.
NODES = 3

#: The name (in DIR) of the file that marks a demo directory.
MARKER = ".annexd-demo"

#: The marker's content once the directory is complete.
READY = "annexd demo directory\n"

#: The marker's content while the directory is being built.
BUILDING = "building\n"

#: The directory the printed commands clone the gateway into.
CLIENT = "annexd-client"

#: The file the printed commands add, and its content.
FILE = "hello.txt"
CONTENT = "hello from the annexd demo"

#: The identity of the demo's own commits (setup, and the daemon's commits
#: to the gateway's git-annex branch: it is in the repositories' config).
_NAME = "annexd demo"
_EMAIL = "annexd-demo@localhost"

#: Variables that would point git at another repository.
_GIT_LOCATION = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE",
                 "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR", "GIT_NAMESPACE",
                 "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG")


class DemoError(Exception):
    """
    The demo cannot go on; the message is one line for the user.

    @ivar status: the exit status.
    """

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise DemoError(message, 2)


def _port(text):
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError("invalid port %r" % (text,))
    return port


class DemoDirectory:
    """
    A demo directory: its paths, whether it is one, and building it.

    @ivar path: its absolute path.
    @ivar gateway: the gateway repository's path.
    @ivar nodes: the node repositories' paths.
    @ivar bindir: where git-annex's roles are.
    @ivar log: the daemon's log file.
    """

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self.marker = os.path.join(self.path, MARKER)
        self.gateway = os.path.join(self.path, "gateway")
        self.nodes = [os.path.join(self.path, "nodes", "node%d" % (i,))
                      for i in range(1, NODES + 1)]
        self.bindir = os.path.join(self.path, "bin")
        self.log = os.path.join(self.path, "annexd.log")

    def _marker(self):
        try:
            with open(self.marker) as f:
                return f.read()
        except OSError:
            return None

    def state(self):
        """
        C{"new"} (absent or empty), C{"ready"} (a complete demo),
        C{"interrupted"} (an incomplete one) or C{"foreign"}.
        """
        if not os.path.lexists(self.path):
            return "new"
        if not os.path.isdir(self.path):
            return "foreign"
        marker = self._marker()
        if marker == READY and os.path.isdir(self.gateway):
            return "ready"
        if marker == BUILDING:
            return "interrupted"
        if marker is None and not os.listdir(self.path):
            return "new"
        return "foreign"

    def environment(self, annex, base=None):
        """
        The environment of the demo's git and git-annex commands and of its
        daemon: C{base} (default C{os.environ}) without git's location
        variables, with git-annex's roles first on C{PATH}.
        """
        env = annex.environ({k: v for k, v in (os.environ if base is None
                                               else base).items()
                             if k not in _GIT_LOCATION})
        env["PATH"] = os.pathsep.join(
            [self.bindir, env.get("PATH") or os.defpath])
        return env

    def linkBinaries(self, annex):
        """
        Point C{bin/}'s roles at C{annex}'s binary (again: the wheel may
        have moved since the directory was built).
        """
        os.makedirs(self.bindir, exist_ok=True)
        for name in os.listdir(self.bindir):
            link = os.path.join(self.bindir, name)
            if os.path.islink(link) and os.readlink(link) != annex.binary:
                os.unlink(link)
        annex.bindir(self.bindir)

    def build(self, annex, env, say=lambda line: None):
        """
        Build the cluster (C{state()} must be C{"new"} or C{"interrupted"}).

        @raise DemoError: when a command fails.
        """
        if self.state() == "interrupted":
            say("the last setup of %s was interrupted: starting again"
                % (self.path,))
            self._clear()
        os.makedirs(self.path, exist_ok=True)
        with open(self.marker, "w") as f:
            f.write(BUILDING)
        self.linkBinaries(annex)
        env = dict(env, GIT_AUTHOR_NAME=_NAME, GIT_AUTHOR_EMAIL=_EMAIL,
                   GIT_COMMITTER_NAME=_NAME, GIT_COMMITTER_EMAIL=_EMAIL)

        def run(cwd, *args, input=None):
            result = subprocess.run(
                args, cwd=cwd, env=env, input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if result.returncode != 0:
                detail = (result.stderr or result.stdout).decode(
                    "utf-8", "replace").strip().splitlines()
                raise DemoError("`%s` failed in %s: %s" % (
                    " ".join(args), cwd,
                    detail[-1] if detail else "exit status %d"
                    % (result.returncode,)))
            return result.stdout.decode("utf-8", "replace").strip()

        def identify(repo):
            run(repo, "git", "config", "user.name", _NAME)
            run(repo, "git", "config", "user.email", _EMAIL)

        gw = self.gateway
        say("building a %d-node git-annex cluster in %s" % (NODES, self.path))
        run(self.path, "git", "init", "-q", "--bare", "--initial-branch=main",
            gw)
        identify(gw)
        run(gw, "git-annex", "init", "--quiet", "gateway")
        # A first commit on main, so that clones have a branch.
        blob = run(gw, "git", "hash-object", "-w", "--stdin",
                   input=_README.encode("utf-8"))
        tree = run(gw, "git", "mktree",
                   input=b"100644 blob %s\tREADME\n" % (blob.encode(),))
        commit = run(gw, "git", "commit-tree", "-m", "annexd demo", tree)
        run(gw, "git", "update-ref", "refs/heads/main", commit)
        run(gw, "git", "symbolic-ref", "HEAD", "refs/heads/main")

        os.makedirs(os.path.join(self.path, "nodes"), exist_ok=True)
        for i, node in enumerate(self.nodes, 1):
            run(self.path, "git", "clone", "-q", "--bare", gw, node)
            identify(node)
            run(node, "git-annex", "init", "--quiet", "node%d" % (i,))
            run(node, "git", "config", "annex.autocommit", "false")

        run(gw, "git-annex", "initcluster", CLUSTER)
        for i, node in enumerate(self.nodes, 1):
            run(gw, "git", "remote", "add", "node%d" % (i,), node)
            run(gw, "git", "config", "remote.node%d.annex-cluster-node"
                % (i,), CLUSTER)
        run(gw, "git", "fetch", "-q", "--all")
        run(gw, "git-annex", "updatecluster")
        run(gw, "git", "config", "annex.jobs", "cpus")
        run(gw, "git-annex", "wanted", "here", "nothing")

        with open(self.marker + ".tmp", "w") as f:
            f.write(READY)
        os.replace(self.marker + ".tmp", self.marker)

    def _clear(self):
        """
        Remove what an interrupted build left (only the demo's own names).
        """
        import shutil
        for name in ("bin", "gateway", "nodes", "annexd.log", MARKER):
            path = os.path.join(self.path, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)


_README = """\
annexd demo
===========

This repository is a clone of the gateway of a git-annex cluster of three
nodes, served by `annexd demo`.  The cluster is the remote origin-mycluster,
its nodes origin-node1, origin-node2 and origin-node3.
"""


def instructions(port, name="gateway"):
    """
    The commands a git-annex client runs, in order, from one directory, to
    use the demo gateway published as C{name} on C{port}: clone it over
    HTTP, allow 127.0.0.1 (git-annex refuses loopback addresses unless
    told), add a file, copy it to the cluster, drop it, get it back and
    show where it is.  The first git-annex command reads the gateway's
    C{/config} (its annex+http url and uuid); the cluster's and nodes'
    remotes (C{origin-mycluster}, C{origin-node1}, ...) come from the
    git-annex branch the clone has.

    @rtype: L{list} of L{str}
    """
    remote = "origin-%s" % (CLUSTER,)
    return [
        "git clone http://127.0.0.1:%d/%s %s" % (port, name, CLIENT),
        "cd %s" % (CLIENT,),
        "git config annex.security.allowed-ip-addresses all",
        "echo '%s' > %s" % (CONTENT, FILE),
        "git annex add %s" % (FILE,),
        "git annex copy --to %s %s" % (remote, FILE),
        "git annex drop %s" % (FILE,),
        "git annex get %s" % (FILE,),
        "git annex whereis %s" % (FILE,),
    ]


def daemonArguments(demo, port, adminPort=None):
    """
    The twistd command line (after C{twistd}) of the demo's daemon.

    @param adminPort: a port for annexd's admin listener (metrics and
        status page) on 127.0.0.1, or L{None} for none.
    """
    args = ["--nodaemon", "--pidfile=", "--logfile", demo.log,
            "annexd", "--repo", demo.gateway,
            "--http", "tcp:%d:interface=127.0.0.1" % (port,), "--wideopen"]
    if adminPort is not None:
        args += ["--admin", "tcp:%d:interface=127.0.0.1" % (adminPort,)]
    return args


def announcement(demo, port, adminPort=None):
    """
    What is printed once the daemon listens.

    @rtype: L{str}
    """
    lines = [
        "annexd is serving the cluster %s (nodes %s) in %s" % (
            CLUSTER, ", ".join("node%d" % (i,) for i in range(1, NODES + 1)),
            demo.path),
        "  git: http://127.0.0.1:%d/gateway   annex: "
        "annex+http://127.0.0.1:%d/gateway   (no authentication, loopback "
        "only)" % (port, port),
    ]
    if adminPort is not None:
        lines.append("  status page: http://127.0.0.1:%d/" % (adminPort,))
    lines += [
        "  log: %s" % (demo.log,),
        "",
        "Use it from another terminal, in an empty directory (git-annex "
        "must be on PATH):",
        "",
    ]
    lines += ["  $ " + command for command in instructions(port)]
    lines += [
        "",
        "whereis lists the file on node1, node2 and node3 (through "
        "origin-node1 ...).  Ctrl-C stops the gateway; `annexd demo %s` "
        "starts it again." % (demo.path,),
    ]
    return "\n".join(lines) + "\n"


def checkPort(port):
    """
    @raise DemoError: when 127.0.0.1:C{port} cannot be listened on.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As Twisted's listening ports do: a port in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1)
    except OSError as e:
        raise DemoError("port %d on 127.0.0.1 is not available (%s): "
                        "choose another with --port N"
                        % (port, e.strerror or e))
    finally:
        s.close()


def serve(demo, port, stdout, adminPort=None):
    """
    Run the daemon (twistd annexd) in this process until it is stopped,
    printing L{announcement} once it listens.

    @return: the signal that stopped it, or L{None}.
    @raise DemoError: when it cannot listen.
    """
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.python import usage
    from twisted.scripts.twistd import _SomeApplicationRunner

    from annexd.cli import _ServerOptions

    config = _ServerOptions()
    try:
        config.parseOptions(daemonArguments(demo, port, adminPort))
    except usage.UsageError as e:
        raise DemoError("the daemon's options: %s" % (e,))

    def announce():
        # twistd listens (synchronously) before the reactor runs, and has
        # redirected sys.stdout to its log by now: write to the real one.
        stdout.write(announcement(demo, port, adminPort))
        stdout.flush()

    reactor.callWhenRunning(announce)
    runner = _SomeApplicationRunner(config)
    try:
        runner.run()
    except CannotListenError as e:
        raise DemoError("cannot listen on 127.0.0.1:%s (%s): choose another"
                        " port with --port N or --admin-port N"
                        % (e.port, e.socketError))
    return runner._exitSignal


def demo(args, stdout=None, stderr=None):
    """
    C{annexd demo DIR [--port N]}: see the module's docstring.

    @return: the exit status: 2 on bad usage or when DIR is not a demo
        directory, 1 on other errors (each one line on stderr).
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = _Parser(
        prog="annexd demo",
        description="Build a 3-node git-annex cluster in DIR (or reuse it),"
                    " serve it over HTTP on 127.0.0.1 and print how a"
                    " git-annex client uses it.")
    parser.add_argument("dir", metavar="DIR")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help="HTTP port on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--admin-port", type=_port, default=None,
                        help="port of the status page and /metrics on "
                             "127.0.0.1 (default: the HTTP port + 1)")

    def say(line):
        stdout.write(line + "\n")
        stdout.flush()

    try:
        options = parser.parse_args(args)
        demoDir = DemoDirectory(options.dir)
        state = demoDir.state()
        if state == "foreign":
            raise DemoError("%s exists and is not an annexd demo directory"
                            " (give a new or empty directory)"
                            % (demoDir.path,), 2)
        port = options.port
        checkPort(port)
        # The status page and /metrics, by default on the next port (left
        # out, with a note, if that one is taken: 9418 is git daemon's).
        adminPort = options.admin_port
        if adminPort is not None:
            checkPort(adminPort)
        elif port < 65535:
            try:
                checkPort(port + 1)
                adminPort = port + 1
            except DemoError:
                say("port %d is taken: no status page (--admin-port N)"
                    % (port + 1,))
        annex = gitannex.find()
        env = demoDir.environment(annex)
        if state == "ready":
            say("reusing the annexd demo in %s" % (demoDir.path,))
            demoDir.linkBinaries(annex)
        else:
            demoDir.build(annex, env, say)
        # The daemon's children (git-annex-shell for the nodes, git
        # http-backend) find git-annex on PATH.
        os.environ.clear()
        os.environ.update(env)
        stopped = serve(demoDir, port, stdout, adminPort)
    except DemoError as e:
        stderr.write("annexd demo: error: %s\n" % (e,))
        stderr.flush()
        return e.status
    except (gitannex.GitAnnexNotFound, OSError) as e:
        stderr.write("annexd demo: error: %s\n" % (e,))
        stderr.flush()
        return 1
    except KeyboardInterrupt:
        stderr.write("annexd demo: interrupted\n")
        stderr.flush()
        return 130
    say("annexd demo stopped")
    if stopped is not None:
        from twisted.application import app
        app._exitWithSignal(stopped)
    return 0
