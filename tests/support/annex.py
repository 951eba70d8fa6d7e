"""
Real git-annex repositories for tests.

L{build_cluster} builds, with the real C{git-annex} (the PyPI wheel's
multicall binary, see L{annexd.gitannex}), the same test bed as
C{tools/mkcluster.sh}: a bare gateway repository that is the gateway of the
cluster C{mycluster} made of N bare node repositories, and a client clone
that reaches the gateway over ssh (a fake ssh that runs the remote command
locally) and so sees the proxied remotes C{gw-mycluster}, C{gw-node1}, ...

Building takes about a second, so tests should use L{cluster_for}: it builds
one template per C{(nodes, wanted)} per test process and gives every test a
fresh copy of it, with every absolute path rewritten to the copy's.

Layout of a cluster directory::

    bin/            git-annex, git-annex-shell, ... (symlinks to the
                    multicall binary) and fakessh
    home/           $HOME of every command (global git config)
    env.sh          `. env.sh` to use the repositories from a shell
    gateway.git/    bare gateway, `git annex initcluster mycluster`
    nodes/nodeI.git bare nodes
    client/         non-bare clone; remotes gw (ssh) and node1path (path)

All the repositories of copies of one template share the template's uuids.
"""

import atexit
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass

from annexd import gitannex

CLUSTER_NAME = "mycluster"
GATEWAY_REMOTE = "gw"
NODE_GROUP = "clusternodes"
DEFAULT_TIMEOUT = 120

_AUTHOR_NAME = "annexd tests"
_AUTHOR_EMAIL = "annexd-tests@localhost"

# Environment variables never inherited from the process running the tests:
# they would point git at another repository or configuration.
_DROPPED_ENV = (
    "HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
    "XDG_STATE_HOME", "EMAIL", "SSH_ORIGINAL_COMMAND",
    "FAKESSH_FORCED_COMMAND", "MAGIC",
)

# The fake ssh of tools/mkcluster.sh, without the baked-in forced command.
#: The start of a wrapper around the fake ssh that acts by the ssh host
#: (tests and benchmarks that give each host its own forced command): it
#: skips ssh's options the way the fake ssh does and leaves the first
#: other argument, the host, in C{$host}.
FAKESSH_HOST_PRELUDE = r"""skip=0
host=
for a in "$@"; do
	if [ "$skip" -gt 0 ]; then skip=$((skip - 1)); continue; fi
	case "$a" in
		-[BbcDEeFIiJLlmOoPpQRSWw]) skip=1 ;;
		-*) ;;
		*) host=$a; break ;;
	esac
done
"""


_FAKESSH = r"""#!/bin/sh
# fake ssh for tests: ignores the host, runs the remote command locally
# through sh -c, with SSH_ORIGINAL_COMMAND exported (like sshd).
# FAKESSH_FORCED_COMMAND, if set, is run instead (like an authorized_keys
# command="..." forced command).
PATH=@BINDIR@:"$PATH"; export PATH
nostdin=
while [ $# -gt 0 ]; do
	case "$1" in
		-G|-V) exit 255 ;;              # make git's ssh-variant probe say "not OpenSSH"
		-n) nostdin=1; shift ;;
		-[1246AaCfgKkMNqsTtvXxYy]) shift ;;
		-[BbcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;
		-[BbcDEeFIiJLlmOoPpQRSWw]*) shift ;;
		--) shift; break ;;
		-*) shift ;;
		*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "fakessh: no host" >&2; exit 255; }
shift   # the host, ignored
# git-annex (GIT_SSH_COMMAND mode) passes "-p PORT" after the host
while [ $# -gt 0 ]; do
	case "$1" in
		-p) shift 2 ;;
		-p*) shift ;;
		*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "fakessh: no command (interactive login not supported)" >&2; exit 255; }
SSH_ORIGINAL_COMMAND="$*"
export SSH_ORIGINAL_COMMAND
[ -n "$nostdin" ] && exec </dev/null
if [ -n "$FAKESSH_FORCED_COMMAND" ]; then
	exec sh -c "$FAKESSH_FORCED_COMMAND"
fi
exec sh -c "$SSH_ORIGINAL_COMMAND"
"""


class AnnexCommandError(subprocess.CalledProcessError):
    """
    A command run by L{AnnexEnvironment.run} failed or timed out.

    @ivar cwd: the directory it ran in.
    """

    def __init__(self, cmd, cwd, returncode, stdout, stderr, timeout=None):
        super().__init__(returncode, cmd, stdout, stderr)
        self.cwd = cwd
        self.timeout = timeout

    def __str__(self):
        def text(b):
            if isinstance(b, bytes):
                b = b.decode("utf-8", "replace")
            return (b or "").rstrip("\n")

        if self.timeout is not None:
            status = "timed out after %s seconds" % (self.timeout,)
        else:
            status = "exited with code %s" % (self.returncode,)
        return "command %s (in %s) %s\n--- stdout:\n%s\n--- stderr:\n%s" % (
            shlex.join(self.cmd), self.cwd, status, text(self.stdout),
            text(self.stderr))


def _text(b):
    return b.decode("utf-8", "surrogateescape")


class AnnexEnvironment:
    """
    An isolated environment for running git and git-annex.

    Creating one populates C{base_dir} with C{home/} (a C{$HOME} with its own
    global git config), C{bin/} (the git-annex roles and C{fakessh}) and
    C{env.sh}; creating one again on the same directory (or a copy of it)
    rewrites them for that directory.

    @ivar base_dir: absolute, symlink-free path of the directory.
    @ivar gitannex: the L{annexd.gitannex.GitAnnex} used.
    @ivar home: the C{$HOME} directory.
    @ivar bindir: the directory first on C{$PATH}.
    @ivar fakessh: path of the fake ssh (C{$GIT_SSH_COMMAND}).
    @ivar env: the environment (a C{dict}) every command runs with.
    """

    def __init__(self, base_dir, annex=None):
        os.makedirs(base_dir, exist_ok=True)
        self.base_dir = os.path.realpath(base_dir)
        self.gitannex = annex if annex is not None else gitannex.find()
        self.home = os.path.join(self.base_dir, "home")
        self.bindir = self.gitannex.bindir(os.path.join(self.base_dir, "bin"))
        self.fakessh = os.path.join(self.bindir, "fakessh")
        self._write_files()
        self.env = self._make_env()

    def _write_files(self):
        template = os.path.join(self.home, "git-template")
        os.makedirs(template, exist_ok=True)
        # An empty init.templateDir: no sample hooks, so repositories (and
        # the copies cluster_for makes) are smaller.  git-annex creates the
        # hooks it needs itself.
        with open(os.path.join(self.home, ".gitconfig"), "w") as f:
            f.write(
                "[init]\n"
                "\tdefaultBranch = main\n"
                "\ttemplateDir = %s\n"
                "[user]\n"
                "\tname = %s\n"
                "\temail = %s\n"
                "[advice]\n"
                "\tdetachedHead = false\n"
                % (template, _AUTHOR_NAME, _AUTHOR_EMAIL))
        tmp = self.fakessh + ".tmp"
        with open(tmp, "w") as f:
            f.write(_FAKESSH.replace("@BINDIR@", shlex.quote(self.bindir)))
        os.chmod(tmp, 0o755)
        os.replace(tmp, self.fakessh)
        with open(os.path.join(self.base_dir, "env.sh"), "w") as f:
            f.write("# . %s  (sets HOME too)\n" % (shlex.quote(
                os.path.join(self.base_dir, "env.sh")),))
            for name, value in sorted(self._own_env().items()):
                if name == "PATH":
                    f.write('export PATH=%s:"$PATH"\n'
                            % (shlex.quote(self.bindir),))
                else:
                    f.write("export %s=%s\n" % (name, shlex.quote(value)))

    def _own_env(self):
        env = {
            "HOME": self.home,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": _AUTHOR_NAME,
            "GIT_AUTHOR_EMAIL": _AUTHOR_EMAIL,
            "GIT_COMMITTER_NAME": _AUTHOR_NAME,
            "GIT_COMMITTER_EMAIL": _AUTHOR_EMAIL,
            "GIT_SSH_COMMAND": self.fakessh,
            "GIT_SSH_VARIANT": "simple",
            "GIT_ANNEX_USE_GIT_SSH": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "PATH": self.bindir,
        }
        env.update(self.gitannex.env)
        return env

    def _make_env(self):
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("GIT_") and name not in _DROPPED_ENV}
        env.update(self._own_env())
        env["PATH"] = os.pathsep.join(
            [self.bindir, os.environ.get("PATH", os.defpath)])
        return env

    def run(self, args, cwd, input=None, check=True, env=None,
            timeout=DEFAULT_TIMEOUT):
        """
        Run a command synchronously in this environment.

        @param args: the argument list; C{args[0]} is looked up on the
            environment's C{PATH}.
        @param cwd: the directory to run it in.
        @param input: C{bytes} or C{str} for its stdin (default: none,
            stdin is C{/dev/null}).
        @param check: raise L{AnnexCommandError} if it exits non-zero.
        @param env: extra environment variables (e.g.
            C{FAKESSH_FORCED_COMMAND}).
        @param timeout: seconds; the whole process group is killed and
            L{AnnexCommandError} raised when it runs longer.
        @rtype: L{subprocess.CompletedProcess} (C{stdout} and C{stderr} are
            C{bytes})
        """
        args = [os.fspath(a) for a in args]
        full_env = self.env
        if env:
            full_env = dict(self.env)
            full_env.update(env)
        if isinstance(input, str):
            input = input.encode("utf-8")
        proc = subprocess.Popen(
            args, cwd=cwd, env=full_env,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            # sh -c, git-annex-shell ... may hold the pipes: kill them all.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            stdout, stderr = proc.communicate()
            raise AnnexCommandError(args, cwd, proc.returncode, stdout,
                                    stderr, timeout=timeout)
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
        if check and proc.returncode != 0:
            raise AnnexCommandError(args, cwd, proc.returncode, stdout,
                                    stderr)
        return subprocess.CompletedProcess(args, proc.returncode, stdout,
                                           stderr)

    def git(self, repo, *args, **kw):
        """
        Run C{git ARGS} in C{repo}; keyword arguments as for L{run}.

        @return: its stdout.
        @rtype: L{str}
        """
        return _text(self.run(["git", *args], cwd=repo, **kw).stdout)

    def annex(self, repo, *args, **kw):
        """
        Run C{git annex ARGS} in C{repo}; keyword arguments as for L{run}.

        @return: its stdout.
        @rtype: L{str}
        """
        return _text(self.run(["git-annex", *args], cwd=repo, **kw).stdout)

    def config(self, repo, name):
        """
        The value of git config C{name} in C{repo}, or L{None} when unset.
        """
        result = self.run(["git", "config", "--get", name], cwd=repo,
                          check=False)
        if result.returncode == 1:
            return None
        if result.returncode != 0:
            raise AnnexCommandError(result.args, repo, result.returncode,
                                    result.stdout, result.stderr)
        return _text(result.stdout).strip()


@dataclass(frozen=True)
class Repo:
    """
    A repository of a L{Cluster}.

    @ivar name: its git-annex description (C{gateway}, C{node1}, C{client}),
        which is also the name of the remote that the gateway has for a node.
    @ivar path: absolute path (the C{.git} directory's parent for the client).
    @ivar uuid: its git-annex uuid.
    """

    name: str
    path: str
    uuid: str


class Cluster:
    """
    A real git-annex cluster, built by L{build_cluster}.

    @ivar base_dir: the directory holding everything.
    @ivar env: the L{AnnexEnvironment} of C{base_dir}.
    @ivar gateway: the bare gateway L{Repo}.
    @ivar nodes: the bare node L{Repo}s, C{node1} first.
    @ivar client: the client L{Repo}.
    @ivar name: the cluster's name (C{mycluster}).
    @ivar cluster_uuid: the cluster's uuid.
    @ivar remote: the client's remote for the gateway (C{gw}): the proxied
        remotes are C{gw-mycluster}, C{gw-node1}, ...
    @ivar wanted: the preferred content expression of every node, or
        L{None}.
    """

    def __init__(self, base_dir, env, gateway, nodes, client, cluster_uuid,
                 wanted=None, name=CLUSTER_NAME, remote=GATEWAY_REMOTE):
        self.base_dir = base_dir
        self.env = env
        self.gateway = gateway
        self.nodes = list(nodes)
        self.client = client
        self.cluster_uuid = cluster_uuid
        self.wanted = wanted
        self.name = name
        self.remote = remote

    def __repr__(self):
        return "<Cluster %s: %d nodes in %s>" % (
            self.name, len(self.nodes), self.base_dir)

    @property
    def fakessh(self):
        """
        Path of the fake ssh the client reaches the gateway with.
        """
        return self.env.fakessh

    def remote_name(self, target):
        """
        The client's name for a proxied remote: C{remote_name("node1")} is
        C{"gw-node1"}; C{target} may be a node L{Repo} or the cluster's name.
        """
        if isinstance(target, Repo):
            target = target.name
        return "%s-%s" % (self.remote, target)

    def node(self, which):
        """
        A node L{Repo}, given it, its name (C{"node2"}) or its number
        (C{2}).
        """
        if isinstance(which, Repo):
            return which
        if isinstance(which, int):
            return self.nodes[which - 1]
        for node in self.nodes:
            if node.name == which:
                return node
        raise KeyError(which)

    def client_annex(self, *args, **kw):
        """
        Run C{git annex ARGS} in the client; see L{AnnexEnvironment.annex}.
        """
        return self.env.annex(self.client.path, *args, **kw)

    def client_git(self, *args, **kw):
        """
        Run C{git ARGS} in the client; see L{AnnexEnvironment.git}.
        """
        return self.env.git(self.client.path, *args, **kw)

    def add_file(self, name, data):
        """
        Write C{data} to the file C{name} in the client, C{git annex add} and
        commit it.

        @type data: L{bytes} (or L{str}, encoded as UTF-8)
        @return: its key.
        @rtype: L{str}
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        path = os.path.join(self.client.path, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.client_annex("add", "--quiet", "--", name)
        self.client_git("commit", "-q", "-m", "add %s" % (name,))
        return self.client_annex("lookupkey", "--", name).strip()

    def object_path(self, node, key):
        """
        Where the content of C{key} is (or would be) in a node: git-annex's
        C{hashdirlower} layout of bare repositories,
        C{annex/objects/xxx/yyy/KEY/KEY}.
        """
        node = self.node(node)
        hashed = hashlib.md5(key.encode("utf-8")).hexdigest()
        name = (key.replace("&", "&a").replace("%", "&s")
                .replace(":", "&c").replace("/", "%"))
        return os.path.join(node.path, "annex", "objects", hashed[:3],
                            hashed[3:6], name, name)

    def _content_path(self, node, key):
        node = self.node(node)
        if not any(c in key for c in "&%:/"):
            path = self.object_path(node, key)
            return path if os.path.isfile(path) else None
        # Escaped key names: let git-annex find it.
        result = self.env.run(["git-annex", "contentlocation", key],
                              cwd=node.path, check=False)
        if result.returncode != 0:
            return None
        return os.path.join(node.path, _text(result.stdout).strip())

    def node_has(self, node, key):
        """
        Whether a node's repository holds the content of C{key} (looked at
        on disk, not in git-annex's location log).
        """
        return self._content_path(node, key) is not None

    def node_sha256(self, node, key):
        """
        The SHA-256 (hex) of the content of C{key} in a node, or L{None} if
        the node does not have it.
        """
        path = self._content_path(node, key)
        if path is None:
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def whereis(self, key):
        """
        The uuids of the repositories that the client believes hold C{key}
        (C{git annex whereis --key KEY --json}; includes the cluster's uuid
        when a node has it, and untrusted repositories).

        @rtype: L{set} of L{str}
        """
        result = self.env.run(
            ["git-annex", "whereis", "--json", "--key", key],
            cwd=self.client.path, check=False)
        try:
            info = json.loads(result.stdout.splitlines()[0])
        except (IndexError, ValueError):
            raise AnnexCommandError(result.args, self.client.path,
                                    result.returncode, result.stdout,
                                    result.stderr)
        return {entry["uuid"]
                for entry in info.get("whereis", []) + info.get(
                    "untrusted", [])}


def build_cluster(base_dir, nodes=3, wanted=None, annex=None):
    """
    Build a cluster like C{tools/mkcluster.sh} does, in C{base_dir} (which
    must not exist or be empty).

    @param nodes: the number of nodes.
    @param wanted: a preferred content expression for every node (which are
        then put in the group C{clusternodes}); default: none (every node
        wants everything).
    @param annex: the L{annexd.gitannex.GitAnnex} to use (default:
        L{annexd.gitannex.find}).
    @rtype: L{Cluster}
    """
    if nodes < 1:
        raise ValueError("a cluster needs at least one node")
    if os.path.exists(base_dir) and os.listdir(base_dir):
        raise ValueError("%s exists and is not empty" % (base_dir,))
    env = AnnexEnvironment(base_dir, annex)
    base = env.base_dir
    git, ann = env.git, env.annex

    # ------------------------------------------------------------ gateway
    gw = os.path.join(base, "gateway.git")
    git(base, "init", "-q", "--bare", gw)
    ann(gw, "init", "--quiet", "gateway")
    # Seed a commit on main so that clones have a branch.
    blob = git(gw, "hash-object", "-w", "--stdin",
               input=b"annex cluster test bed\n").strip()
    tree = git(gw, "mktree", input="100644 blob %s\tREADME\n" % blob).strip()
    commit = git(gw, "commit-tree", "-m", "seed", tree).strip()
    git(gw, "update-ref", "refs/heads/main", commit)
    git(gw, "symbolic-ref", "HEAD", "refs/heads/main")

    # -------------------------------------------------------------- nodes
    os.makedirs(os.path.join(base, "nodes"))
    node_paths = []
    for i in range(1, nodes + 1):
        node = os.path.join(base, "nodes", "node%d.git" % i)
        git(base, "clone", "-q", "--bare", gw, node)
        ann(node, "init", "--quiet", "node%d" % i)
        git(node, "config", "annex.autocommit", "false")
        node_paths.append(node)

    ann(gw, "initcluster", CLUSTER_NAME)
    for i, node in enumerate(node_paths, 1):
        git(gw, "remote", "add", "node%d" % i, node)
        git(gw, "config", "remote.node%d.annex-cluster-node" % i,
            CLUSTER_NAME)
    git(gw, "fetch", "-q", "--all")
    ann(gw, "updatecluster")
    git(gw, "config", "annex.jobs", "cpus")
    ann(gw, "wanted", "here", "nothing")
    if wanted:
        for i in range(1, nodes + 1):
            ann(gw, "group", "node%d" % i, NODE_GROUP)
            ann(gw, "wanted", "node%d" % i, wanted)

    # ------------------------------------------------------------- client
    cl = os.path.join(base, "client")
    git(base, "clone", "-q", "-o", GATEWAY_REMOTE, gw, cl)
    git(cl, "remote", "set-url", GATEWAY_REMOTE, "ssh://localhost" + gw)
    git(cl, "config", "core.sshCommand", env.fakessh)
    git(cl, "config", "ssh.variant", "simple")
    git(cl, "config", "annex.sshcaching", "false")
    git(cl, "config", "annex.security.allowed-ip-addresses", "all")
    git(cl, "remote", "add", "node1path", node_paths[0])
    ann(cl, "init", "--quiet", "client")
    ann(cl, "wanted", "here", "anything")
    git(cl, "fetch", "-q", "--all")
    ann(cl, "merge", "--quiet")
    # Contacts the gateway through the fake ssh: records remote.gw.annex-uuid
    # and so makes the proxied remotes appear.
    info = ann(cl, "info", GATEWAY_REMOTE)
    if "gateway to cluster: %s-%s" % (GATEWAY_REMOTE, CLUSTER_NAME) \
            not in info:
        raise RuntimeError("the client does not see the cluster:\n" + info)

    return _load(env, nodes, wanted)


def _load(env, nodes, wanted):
    """
    The L{Cluster} in C{env.base_dir}, reading the uuids from the
    repositories' configs.
    """
    base = env.base_dir

    def repo(name, path):
        return Repo(name, path, env.config(path, "annex.uuid"))

    gw = repo("gateway", os.path.join(base, "gateway.git"))
    node_repos = [
        repo("node%d" % i, os.path.join(base, "nodes", "node%d.git" % i))
        for i in range(1, nodes + 1)]
    client = repo("client", os.path.join(base, "client"))
    cluster_uuid = env.config(gw.path, "annex.cluster.%s" % CLUSTER_NAME)
    return Cluster(base, env, gw, node_repos, client, cluster_uuid,
                   wanted=wanted)


def _make_writable(top):
    """
    Give the owner write permission on every directory under C{top}
    (git-annex makes the directories of the objects it holds read-only), so
    that the tree can be removed.
    """
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISDIR(mode) and not mode & stat.S_IWUSR:
                    os.chmod(path, stat.S_IMODE(mode) | stat.S_IWUSR)
            except OSError:
                pass


def _rmtree(top):
    if os.path.exists(top):
        _make_writable(top)
        shutil.rmtree(top, ignore_errors=True)


def copy_cluster(template, base_dir):
    """
    Copy the cluster C{template} to C{base_dir} (which must not exist) and
    rewrite every absolute path that refers to the template's directory
    (git remote urls, C{core.sshCommand}, the fake ssh, C{env.sh}, the
    global git config, FETCH_HEAD and reflogs).

    @rtype: L{Cluster}
    """
    dest = os.path.abspath(base_dir)
    shutil.copytree(template.base_dir, dest, symlinks=True)
    env = AnnexEnvironment(dest, template.env.gitannex)
    old = os.fsencode(template.base_dir)
    new = os.fsencode(env.base_dir)
    for dirpath, dirnames, filenames in os.walk(env.base_dir):
        # git's and git-annex's object stores hold no paths (and git's
        # objects are compressed anyway).
        if "objects" in dirnames:
            dirnames.remove("objects")
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            if old in data:
                with open(path, "wb") as f:
                    f.write(data.replace(old, new))

    # Same uuids as the template: no need to ask git.
    def moved(repo):
        path = env.base_dir + repo.path[len(template.base_dir):]
        return Repo(repo.name, path, repo.uuid)

    return Cluster(env.base_dir, env, moved(template.gateway),
                   [moved(node) for node in template.nodes],
                   moved(template.client), template.cluster_uuid,
                   wanted=template.wanted, name=template.name,
                   remote=template.remote)


_templates = {}
_template_root = None


def template_cluster(nodes=3, wanted=None):
    """
    The template cluster for C{(nodes, wanted)}, built on first use in a
    temporary directory that is removed when the interpreter exits.  Do not
    modify it: copy it with L{copy_cluster}.
    """
    global _template_root
    key = (nodes, wanted or None)
    cluster = _templates.get(key)
    if cluster is None:
        if _template_root is None:
            _template_root = tempfile.mkdtemp(prefix="annexd-clusters-")
            atexit.register(_rmtree, _template_root)
        base = tempfile.mkdtemp(prefix="n%d-" % nodes, dir=_template_root)
        cluster = build_cluster(base, nodes, wanted)
        _templates[key] = cluster
    return cluster


def cluster_for(testcase, nodes=3, wanted=None):
    """
    A fresh copy of the template cluster for C{(nodes, wanted)} in
    C{testcase.mktemp()}.  When the test ends its directories are made
    writable again, so that trial can remove C{_trial_temp}.

    @param testcase: a L{twisted.trial.unittest.TestCase} (or anything with
        C{mktemp} and C{addCleanup}).
    @rtype: L{Cluster}
    """
    template = template_cluster(nodes, wanted)
    cluster = copy_cluster(template, testcase.mktemp())
    testcase.addCleanup(_make_writable, cluster.base_dir)
    return cluster


class ClusterMixin:
    """
    Mixin for L{twisted.trial.unittest.TestCase}: C{self.makeCluster()}.
    """

    def makeCluster(self, nodes=3, wanted=None):
        """
        See L{cluster_for}.
        """
        return cluster_for(self, nodes, wanted)
