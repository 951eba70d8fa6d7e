# -*- test-case-name: tests.test_tap -*-
"""
The C{annexd} command: runs the twistd plugin in the foreground.
"""

import sys


def main(argv=None):
    """
    C{annexd [twistd annexd options]}: C{twistd --nodaemon annexd ...}.
    """
    from twisted.scripts.twistd import run

    args = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "annexd"] + args
    run()
