# -*- test-case-name: tests.test_shell -*-
"""
C{annexd-shell}: the ssh forced-command entry point (a drop-in for
C{git-annex-shell}).

This first version serves the gateway's own repository: C{configlist} and
C{p2pstdio} (annexd's P2P server in front of the repository, which annexd
drives through C{git-annex-shell p2pstdio}).  Everything else is refused with
a one-line reason and exit status 1.  Routing to proxied nodes and clusters
joins it with the router.

The command comes from C{-c "COMMAND"} (how sshd runs a login shell, and how
git-annex-shell is set up as a forced command) or from
C{SSH_ORIGINAL_COMMAND}; it is split with POSIX shell quoting, and a leading
C{git-annex-shell} word is dropped.
"""

import os
import shlex
import subprocess
import sys

from annexd import gitannex


class Refused(Exception):
    """
    The command is refused; the message is shown to the user.
    """


def parseCommand(words):
    """
    Parse a git-annex-shell command line (after the program name).

    @return: C{(subcommand, directory, params, options)} where C{options}
        holds C{uuid} and C{debug}, and C{params} the remaining positional
        words.
    @raise Refused: when it is not a command annexd-shell serves.
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


def repositoryUUID(path):
    """
    The annex.uuid of the repository at C{path}.

    @raise Refused: if it is not a git repository.
    """
    result = subprocess.run(["git", "-C", path, "config", "annex.uuid"],
                            capture_output=True, text=True)
    if result.returncode not in (0, 1) or not os.path.isdir(path):
        raise Refused("failed to read git config of %s" % (path,))
    return result.stdout.strip()


def _serveP2P(path, uuid, clientUUID):
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import (
        FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
        globalLogBeginner, textFileLogObserver)

    from annexd.nodes.local import LocalNode
    from annexd.protocol.framing import P2PConnection
    from annexd.protocol.server import P2PServer, ServerMode

    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False)
    mode = ServerMode.READ_WRITE
    if os.environ.get("GIT_ANNEX_SHELL_READONLY"):
        mode = ServerMode.READ_ONLY
    elif os.environ.get("GIT_ANNEX_SHELL_APPENDONLY"):
        mode = ServerMode.APPEND_ONLY
    repository = LocalNode(reactor, path, uuid.encode(), clientUUID.encode(),
                           name=path)
    connection = P2PConnection("client")
    StandardIO(connection, reactor=reactor)
    server = P2PServer(connection, repository, mode, clientUUID=clientUUID)

    def done(_):
        return repository.close()

    d = server.serve()
    d.addBoth(done)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()


def run(words, out=sys.stdout):
    """
    Serve one git-annex-shell command.

    @return: the exit status.
    """
    if words and os.path.basename(words[0]) == "git-annex-shell":
        words = words[1:]
    subcommand, directory, params, options = parseCommand(words)
    path = expandDirectory(directory)
    if subcommand == "configlist":
        uuid = repositoryUUID(path)
        if options["uuid"] and options["uuid"] != uuid:
            raise Refused("expected repository UUID %s but found UUID %s" % (
                options["uuid"], uuid))
        out.write("annex.uuid=%s\ncore.gcrypt-id=\n" % (uuid,))
        out.flush()
        return 0
    if subcommand == "p2pstdio":
        if not params:
            raise Refused("p2pstdio: missing UUID parameter")
        uuid = repositoryUUID(path)
        if not uuid:
            raise Refused("%s is not a git-annex repository" % (path,))
        if options["uuid"] and options["uuid"] != uuid:
            raise Refused("expected repository UUID %s but found UUID %s" % (
                options["uuid"], uuid))
        _serveP2P(path, uuid, params[0])
        return 0
    raise Refused("%s is not supported by annexd-shell" % (subcommand,))


def main(argv=None):
    """
    Console entry point: C{annexd-shell [-c COMMAND]}, else
    C{$SSH_ORIGINAL_COMMAND}, else the arguments as a command.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    gitannex.find()  # fail early and clearly when git-annex is missing
    try:
        if len(args) >= 2 and args[0] == "-c":
            words = shlex.split(args[1])
        elif os.environ.get("SSH_ORIGINAL_COMMAND"):
            words = shlex.split(os.environ["SSH_ORIGINAL_COMMAND"])
        else:
            words = args
        status = run(words)
    except ValueError as e:
        sys.stderr.write("annexd-shell: cannot parse the command: %s\n" % (e,))
        status = 1
    except Refused as e:
        sys.stderr.write("annexd-shell: %s\n" % (e,))
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
