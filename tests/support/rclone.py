"""
rclone for the tests of external special remotes: a configuration with a
C{type = local} remote, and a thin wrapper around the real C{rclone}.

The wrapper exists for one known incompatibility: rclone 1.5x and later
print C{rclone size}'s object count as C{Total objects: 1 (1)}, which the
parser of C{git-annex-remote-rclone} 0.6 (Debian bookworm's) does not
understand, so that it answers C{CHECKPRESENT-UNKNOWN} for every key it
has (git-annex's own C{fsck --from} fails on it too).  The wrapper prints
that line the old way (C{Total objects: 1}) and runs rclone unchanged for
everything else.
"""

import os
import shlex
import shutil

REMOTE = "testlocal"

_WRAPPER = r"""#!/bin/sh
# rclone, with "rclone size" printing its count the way
# git-annex-remote-rclone 0.6 parses it (see tests/support/rclone.py).
if [ "$1" = size ]; then
	out=$(%(rclone)s "$@" 2>&1)
	status=$?
	printf '%%s\n' "$out" | sed -E 's/^(Total objects: [0-9]+) \([^)]*\)$/\1/'
	exit $status
fi
exec %(rclone)s "$@"
"""


def findRclone(path=None):
    """
    The real rclone and git-annex-remote-rclone, or L{None} for each one
    missing.
    """
    return (shutil.which("rclone", path=path),
            shutil.which("git-annex-remote-rclone", path=path))


def setUp(directory, wrap=True):
    """
    Make C{directory}/rclone.conf (a local remote named L{REMOTE}) and,
    with C{wrap}, C{directory}/bin/rclone (the wrapper).

    @return: C{(environment additions, bin directory or None)}: put the
        bin directory first on C{PATH}.
    """
    os.makedirs(directory, exist_ok=True)
    config = os.path.join(directory, "rclone.conf")
    with open(config, "w") as f:
        f.write("[%s]\ntype = local\n" % (REMOTE,))
    env = {"RCLONE_CONFIG": config}
    if not wrap:
        return env, None
    real, _ = findRclone()
    if real is None:
        raise RuntimeError("rclone is not installed")
    bindir = os.path.join(directory, "bin")
    os.makedirs(bindir, exist_ok=True)
    wrapper = os.path.join(bindir, "rclone")
    with open(wrapper, "w") as f:
        f.write(_WRAPPER % {"rclone": shlex.quote(os.path.realpath(real))})
    os.chmod(wrapper, 0o755)
    return env, bindir
