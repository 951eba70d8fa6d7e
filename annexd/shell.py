# -*- test-case-name: tests.test_shell -*-
"""
C{annexd-shell}: the ssh forced-command entry point, a drop-in for
C{git-annex-shell}.

In C{authorized_keys}::

    command="annexd-shell --repo /srv/gw.git",restrict ssh-ed25519 AAAA...

The command comes from C{-c "COMMAND"} (how sshd runs a login shell, and how
git-annex-shell is set up as a forced command) or from
C{SSH_ORIGINAL_COMMAND}.  It is split with POSIX shell quoting, and a leading
C{git-annex-shell} word is dropped.  Subcommands:

  - C{configlist DIR}: the gateway's uuid, as git-annex-shell prints it;
  - C{p2pstdio DIR CLIENTUUID --uuid TARGET}: a P2P session with the target
    the L{Router} resolves (the gateway, a proxied node or a cluster);
  - C{git-upload-pack DIR}, C{git-receive-pack DIR}: git itself;
  - C{notifychanges}, C{inannex}, C{recvkey}, C{sendkey}, C{dropkey},
    C{gcryptsetup}: handed to git-annex-shell with the same restrictions;
  - anything else is refused with a one-line reason and exit status 1.

With C{--control PATH} (or C{control} in the configuration file, or
C{ANNEXD_CONTROL}), a C{p2pstdio} session is handed to the running annexd
daemon over that unix socket (see L{annexd.control}): the daemon serves it
with its shared node sessions, locks and metrics, and C{--user NAME} (set
per key in C{authorized_keys}) names the ssh identity in its logs.  With no
daemon there, or one that does not serve the repository, the session is
served here, in-process.

Restrictions: C{--readonly} / C{GIT_ANNEX_SHELL_READONLY} (no PUT, REMOVE;
annexd's C{--readonly} also refuses git pushes, which git-annex-shell's
variable does not), C{--appendonly} / C{GIT_ANNEX_SHELL_APPENDONLY} (no
REMOVE), C{GIT_ANNEX_SHELL_LIMITED} (no git commands),
C{GIT_ANNEX_SHELL_DIRECTORY} and C{--repo} (the only repositories served).
"""

import argparse
import configparser
import os
import shlex
import sys


#: Subcommands handed to git-annex-shell itself.
PASSTHROUGH = ("notifychanges", "inannex", "recvkey", "sendkey", "dropkey",
               "gcryptsetup")

#: Seconds the daemon has to answer a relayed session's request.
ANSWER_TIMEOUT = 30

#: git commands, served by git.
GIT_COMMANDS = ("git-upload-pack", "git-receive-pack", "git-upload-archive")


class Refused(Exception):
    """
    The command is refused; the message is shown to the user.
    """


def parseCommand(words):
    """
    Parse a git-annex-shell command line (after the program name).

    @return: C{(subcommand, directory, params, options)} where C{options}
        holds C{uuid}, C{debug} and C{fields}, and C{params} the remaining
        positional words.
    @raise Refused: when it cannot be parsed.
    """
    if not words:
        raise Refused("no command given")
    subcommand = words[0]
    options = {"uuid": None, "debug": False, "fields": {}}
    params = []
    rest = list(words[1:])
    while rest:
        word = rest.pop(0)
        if word == "--uuid":
            if not rest:
                raise Refused("--uuid needs a value")
            options["uuid"] = rest.pop(0)
        elif word == "--debug":
            options["debug"] = True
        elif word == "--":
            while rest and rest[0] != "--":
                field, _, value = rest.pop(0).partition("=")
                options["fields"][field] = value
            if rest:
                rest.pop(0)
        else:
            params.append(word)
    if not params:
        raise Refused("%s: missing directory parameter" % (subcommand,))
    return subcommand, params[0], params[1:], options


def expandDirectory(directory, home=None):
    """
    Map a directory as git-annex clients send it to a path: C{/~/x} and
    C{/~user/x} are home-relative, a relative path is relative to the home
    directory.
    """
    home = home or os.path.expanduser("~")
    if directory.startswith("/~/") or directory == "/~":
        return os.path.join(home, directory[3:])
    if directory.startswith("/~"):
        return os.path.expanduser(directory[1:])
    if directory.startswith("~"):
        return os.path.expanduser(directory)
    if not directory.startswith("/"):
        return os.path.join(home, directory)
    return directory


class Settings:
    """
    What one annexd-shell invocation may do.

    @ivar repos: real paths of the repositories it serves (empty: any).
    @ivar readonly: annexd's own read-only flag (refuses git pushes too).
    @ivar mode: the P2P L{ServerMode} name.
    @ivar limited: whether git commands are refused.
    @ivar directory: GIT_ANNEX_SHELL_DIRECTORY, if set.
    @ivar control: the daemon's control socket (C{--control}, the
        configuration file, or C{ANNEXD_CONTROL}), or L{None}.
    @ivar user: the ssh identity (C{--user}), passed on to the daemon.
    """

    def __init__(self, repos=(), readonly=False, appendonly=False,
                 environ=None, control=None, user=None):
        environ = os.environ if environ is None else environ
        self.control = control or environ.get("ANNEXD_CONTROL") or None
        self.user = user
        self.repos = [os.path.realpath(expandDirectory(r)) for r in repos]
        self.readonly = readonly
        envReadonly = bool(environ.get("GIT_ANNEX_SHELL_READONLY"))
        envAppendonly = bool(environ.get("GIT_ANNEX_SHELL_APPENDONLY"))
        if readonly or envReadonly:
            self.mode = "read-only"
        elif appendonly or envAppendonly:
            self.mode = "append-only"
        else:
            self.mode = "read-write"
        self.appendonly = appendonly
        self.limited = bool(environ.get("GIT_ANNEX_SHELL_LIMITED"))
        directory = environ.get("GIT_ANNEX_SHELL_DIRECTORY")
        self.directory = (os.path.realpath(expandDirectory(directory))
                          if directory else None)

    def checkPath(self, directory):
        """
        The real path of C{directory} if this invocation may serve it.

        @raise Refused: otherwise.
        """
        path = os.path.realpath(expandDirectory(directory))
        if self.directory is not None and path != self.directory:
            raise Refused("Only allowed to access %s not %s" % (
                self.directory, directory))
        if self.repos and path not in self.repos:
            raise Refused("%s is not a repository served here" % (directory,))
        return path

    def restrictionEnvironment(self):
        """
        The GIT_ANNEX_SHELL_* variables that carry these restrictions to a
        git-annex-shell this invocation hands a command to.
        """
        env = {}
        if self.mode == "read-only":
            env["GIT_ANNEX_SHELL_READONLY"] = "1"
        elif self.mode == "append-only":
            env["GIT_ANNEX_SHELL_APPENDONLY"] = "1"
        if self.limited:
            env["GIT_ANNEX_SHELL_LIMITED"] = "1"
        return env


def loadConfig(path):
    """
    Read annexd-shell settings from the C{[shell]} section of an annexd
    configuration file (see C{etc/annexd.conf.example}).

    @return: C{(repos, readonly, appendonly, control)}; C{control} comes
        from C{[shell]}, else from the daemon's own C{[annexd]} section.
    """
    parser = configparser.ConfigParser()
    with open(path) as f:
        parser.read_file(f)
    control = (parser.get("annexd", "control", fallback=None) or None)
    if not parser.has_section("shell"):
        return [], False, False, control
    section = parser["shell"]
    repos = [line.strip() for line in section.get("repo", "").splitlines()
             if line.strip()]
    return (repos, section.getboolean("readonly", False),
            section.getboolean("appendonly", False),
            section.get("control") or control)


def _configlist(state, options):
    from annexd.annex.logs import isClusterUUID
    own = state.uuid.decode()
    asked = options["uuid"]
    if asked and asked != own:
        if isClusterUUID(asked.encode()) or state.isProxied(asked.encode()):
            raise Refused("Cannot proxy configlist command.")
        raise Refused("expected repository UUID %s but found UUID %s" % (
            asked, own))
    return "annex.uuid=%s\ncore.gcrypt-id=\n" % (own,)


def _serveP2P(state, settings, target, clientUUID):
    """
    Serve one P2P session on stdio; return when it ends.
    """
    from twisted.internet import reactor

    from annexd.annex.location import commitJournal
    from annexd.protocol.framing import P2PConnection
    from annexd.protocol.server import P2PServer, ServerMode
    from annexd.router.recording import RecordingRepository
    from annexd.router.router import Router, UnknownTarget
    from annexd.streams import PipeStandardIO

    router = Router(reactor, state)
    try:
        repository = router.resolve(target, clientUUID)
    except UnknownTarget as e:
        raise Refused(str(e))
    served = RecordingRepository(repository, router.record, state.uuid)
    connection = P2PConnection("client")
    PipeStandardIO(connection, reactor=reactor)
    server = P2PServer(connection, served, ServerMode(settings.mode),
                       clientUUID=clientUUID)

    async def session():
        await server.serve()
        await served.close()
        if served.changed:
            try:
                await commitJournal(state.path)
            except Exception as e:
                sys.stderr.write("annexd-shell: could not commit the "
                                 "git-annex branch: %s\n" % (e,))

    def stop(_):
        reactor.stop()

    from twisted.internet import defer
    reactor.callWhenRunning(
        lambda: defer.ensureDeferred(session()).addBoth(stop))
    reactor.run()


def _startLogging():
    from twisted.logger import (
        FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
        globalLogBeginner, textFileLogObserver)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False)


def run(words, settings, out=sys.stdout):
    """
    Serve one git-annex-shell command.

    @return: the exit status.
    @raise Refused: for anything not served.
    """
    if words and os.path.basename(words[0]) == "git-annex-shell":
        words = words[1:]
    if words and words[0] in GIT_COMMANDS:
        return _git(words, settings)
    subcommand, directory, params, options = parseCommand(words)
    if subcommand not in ("configlist", "p2pstdio") + PASSTHROUGH:
        raise Refused("%s is not a command annexd-shell serves" % (subcommand,))
    path = settings.checkPath(directory)
    if subcommand in PASSTHROUGH:
        return _passthrough(words, settings)
    if subcommand == "p2pstdio" and settings.control:
        if not params:
            raise Refused("p2pstdio: missing UUID parameter")
        status = relay(settings.control, {
            "version": 1, "command": "p2pstdio", "repo": path,
            "client": params[0], "target": options["uuid"],
            "mode": settings.mode, "user": settings.user})
        if status is not None:
            return status
    from annexd.annex.state import GatewayState
    try:
        state = GatewayState.load(path)
    except Exception as e:
        raise Refused("failed to read git config of %s: %s" % (directory, e))
    if not state.uuid:
        raise Refused("%s is not a git-annex repository" % (directory,))
    if subcommand == "configlist":
        out.write(_configlist(state, options))
        out.flush()
        return 0
    if not params:
        raise Refused("p2pstdio: missing UUID parameter")
    target = options["uuid"].encode() if options["uuid"] else None
    _startLogging()
    _serveP2P(state, settings, target, params[0].encode())
    return 0


def relay(control, request, stdin=0, stdout=1):
    """
    Hand this P2P session to the daemon listening on the unix socket
    C{control} (see L{annexd.control}): pass it our standard input and
    output with the request, and wait for the session to end.

    @return: the exit status, or L{None} when there is no daemon there, or
        it does not serve the repository (the caller serves it itself).
    @raise Refused: when the daemon refuses the session.
    """
    import json
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(control)
    except OSError:
        sock.close()
        return None
    with sock, sock.makefile("rb") as replies:
        try:
            socket.send_fds(sock, [json.dumps(request).encode() + b"\n"],
                            [stdin, stdout])
        except OSError:
            return None
        # The daemon answers at once; one that does not (stopped, wedged)
        # must not hang the ssh session.  It may hold our descriptors by
        # now, so this session is not served here either.
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            answer = replies.readline(65536)
        except OSError as e:
            raise Refused("the annexd daemon did not answer (%s)" % (
                e.strerror or "timed out",))
        sock.settimeout(None)
        try:
            answer = json.loads(answer) if answer else {}
        except ValueError:
            answer = {}
        if "error" in answer:
            raise Refused(str(answer["error"]))
        if not answer.get("ok"):
            # No daemon that serves this (gone, or another repository).
            return None
        # The daemon serves the session on the descriptors now: let go of
        # ours, so that the client sees the end when the daemon closes
        # them.
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, stdin)
        os.dup2(devnull, stdout)
        os.close(devnull)
        try:
            end = json.loads(replies.readline(65536) or b"{}")
        except (OSError, ValueError):
            end = {}
    if "exit" not in end:
        sys.stderr.write("annexd-shell: the daemon ended the session\n")
        return 1
    return int(end["exit"])


def _git(words, settings):
    if settings.limited:
        raise Refused("Action blocked by GIT_ANNEX_SHELL_LIMITED")
    if len(words) != 2:
        raise Refused("%s takes one directory" % (words[0],))
    if words[0] == "git-receive-pack" and settings.readonly:
        raise Refused("this repository is read-only; write access denied")
    path = settings.checkPath(words[1])
    service = words[0][len("git-"):]
    sys.stdout.flush()
    os.execvp("git", ["git", service, path])


def _passthrough(words, settings):
    from annexd import gitannex
    annex = gitannex.find()
    executable, argv = annex.argv("git-annex-shell", *words)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_ANNEX_SHELL_")}
    env.update(annex.env)
    env.update(settings.restrictionEnvironment())
    if settings.directory:
        env["GIT_ANNEX_SHELL_DIRECTORY"] = settings.directory
    sys.stdout.flush()
    os.execve(executable, argv, env)


def _arguments(argv):
    parser = argparse.ArgumentParser(
        prog="annexd-shell", add_help=True,
        description="git-annex-shell drop-in for annexd (ssh forced command)")
    parser.add_argument("--repo", action="append", default=[],
                        help="a repository to serve (repeatable; default: any)")
    parser.add_argument("--readonly", action="store_true")
    parser.add_argument("--appendonly", action="store_true")
    parser.add_argument("--config", help="annexd configuration file")
    parser.add_argument("--control",
                        help="the annexd daemon's control socket (sessions "
                             "are relayed to it; without a daemon there, "
                             "served here)")
    parser.add_argument("--user", help="the ssh identity, for the daemon's "
                                       "logs and metrics")
    parser.add_argument("-c", dest="command", help="the command to run")
    parser.add_argument("words", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def main(argv=None):
    """
    Console entry point: C{annexd-shell [options] [-c COMMAND]}; without
    C{-c}, C{$SSH_ORIGINAL_COMMAND}, else the remaining arguments.
    """
    args = _arguments(sys.argv[1:] if argv is None else list(argv))
    try:
        repos, readonly, appendonly = list(args.repo), args.readonly, args.appendonly
        control = args.control
        if args.config:
            cRepos, cReadonly, cAppendonly, cControl = loadConfig(args.config)
            repos += cRepos
            readonly = readonly or cReadonly
            appendonly = appendonly or cAppendonly
            control = control or cControl
        settings = Settings(repos, readonly, appendonly, control=control,
                            user=args.user)
        if args.command is not None:
            words = shlex.split(args.command)
        elif os.environ.get("SSH_ORIGINAL_COMMAND"):
            words = shlex.split(os.environ["SSH_ORIGINAL_COMMAND"])
        else:
            words = args.words
        status = run(words, settings)
    except (ValueError, OSError, configparser.Error) as e:
        sys.stderr.write("annexd-shell: %s\n" % (e,))
        status = 1
    except Refused as e:
        sys.stderr.write("annexd-shell: %s\n" % (e,))
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
