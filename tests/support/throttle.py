"""
A program that runs a command and slows down what it writes.

    python -m tests.support.throttle BYTES_PER_SECOND -- COMMAND [ARGS...]

The command's stdin and stderr are ours; its stdout goes through a pipe
that this program relays to its own stdout at no more than
C{BYTES_PER_SECOND} (in 16 KiB pieces, sleeping as needed).  Used as a
node's C{annex-shell} to make a node slow to serve downloads; the exit
status is the command's.
"""

import os
import subprocess
import sys
import time

PIECE = 16 * 1024


def main(argv):
    rate = float(argv[1])
    if argv[2] != "--":
        sys.exit("usage: throttle BYTES_PER_SECOND -- COMMAND [ARGS...]")
    child = subprocess.Popen(argv[3:], stdout=subprocess.PIPE)
    out = sys.stdout.buffer.fileno()
    due = 0.0
    while True:
        data = os.read(child.stdout.fileno(), PIECE)
        if not data:
            break
        # No credit for idle time: a burst after a pause is paced too.
        now = time.monotonic()
        due = max(due, now)
        if due > now:
            time.sleep(due - now)
        try:
            os.write(out, data)
        except OSError:
            child.kill()
            break
        due += len(data) / rate
    sys.exit(child.wait())


if __name__ == "__main__":
    main(sys.argv)
