# -*- test-case-name: tests.test_tap,tests.test_httpauth -*-
"""
The C{annexd} command: runs the twistd plugin in the foreground, or, with
C{annexd passwd ...}, edits an HTTP users file, or, with C{annexd demo ...},
serves a demo cluster (L{annexd.demo}), or, with C{annexd p2p ...}, hands
out P2P addresses with auth tokens (L{annexd.p2p.command}).
"""

import argparse
import sys


class _UsageError(Exception):
    """
    Bad command line for a subcommand.
    """


class _Parser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line, not usage plus exit.
    """

    def error(self, message):
        raise _UsageError(message)


def _readPassword(name, stdin):
    """
    Read the password: prompt twice on a terminal, else one line of stdin.

    @raise ValueError: when the two entries differ.
    """
    if stdin.isatty():
        import getpass

        password = getpass.getpass("Password for %s: " % (name,))
        if getpass.getpass("Retype password: ") != password:
            raise ValueError("passwords do not match")
        return password
    return stdin.readline().rstrip("\r\n")


def passwd(args, stdin=None, stderr=None):
    """
    C{annexd passwd USERSFILE NAME [--permission readonly|appendonly|full]}:
    add or replace C{NAME} in the HTTP users file, with the password read
    from stdin.  Prints nothing on success.

    @return: the exit status: 0 on success, 2 on bad usage, 1 on other
        errors (each with one line on stderr).
    """
    from annexd.http.auth import Permission, addUser, validUserName

    stdin = sys.stdin if stdin is None else stdin
    stderr = sys.stderr if stderr is None else stderr
    parser = _Parser(prog="annexd passwd",
                     description="Add or replace a user in an annexd HTTP"
                                 " users file; the password is read from"
                                 " stdin.")
    parser.add_argument("usersfile")
    parser.add_argument("name")
    parser.add_argument("--permission", default="full",
                        choices=[p.value for p in Permission])
    try:
        options = parser.parse_args(args)
        if not validUserName(options.name):
            raise _UsageError("invalid user name %r (no ':', spaces or"
                              " leading '#')" % (options.name,))
    except _UsageError as e:
        stderr.write("annexd passwd: error: %s\n" % (e,))
        return 2
    try:
        password = _readPassword(options.name, stdin)
        addUser(options.usersfile, options.name, password,
                Permission(options.permission))
    except (ValueError, OSError) as e:
        stderr.write("annexd passwd: error: %s\n" % (e,))
        return 1
    return 0


def main(argv=None):
    """
    C{annexd passwd ...}: see L{passwd}.  C{annexd demo ...}: see
    L{annexd.demo.demo}.  Anything else,
    C{annexd [twistd annexd options]}: C{twistd --nodaemon annexd ...}.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["passwd"]:
        return passwd(args[1:])
    if args[:1] == ["demo"]:
        from annexd.demo import demo
        return demo(args[1:])
    if args[:1] == ["p2p"]:
        from annexd.p2p.command import p2p
        return p2p(args[1:])

    from twisted.application import app
    from twisted.scripts import twistd

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "annexd"] + args
    app.run(twistd.runApp, _ServerOptions)


def _serverOptions():
    from twisted.application.service import IServiceMaker, ServiceMaker
    from twisted.plugin import getPlugins
    from twisted.scripts import twistd

    class ServerOptions(twistd.ServerOptions):
        """
        twistd's options with the annexd service maker given directly, so
        that C{annexd} works wherever the package is importable, whether or
        not twistd's plugin scan finds C{twisted/plugins/annexd_plugin.py}
        (it does not for some editable installs).
        """

        def _getPlugins(self, interface):
            found = list(getPlugins(interface))
            if interface is IServiceMaker and not any(
                    p.tapname == "annexd" for p in found):
                found.append(ServiceMaker(
                    "annexd", "annexd.tap",
                    "A gateway for git-annex clusters.", "annexd"))
            return found

    return ServerOptions


def _ServerOptions(*args, **kwargs):
    return _serverOptions()(*args, **kwargs)
