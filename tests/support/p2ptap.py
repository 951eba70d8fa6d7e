"""
A P2P protocol tap: an ssh forced command that runs C{git-annex-shell} (or
another program) and logs every P2P message in both directions,
framing-aware.

Usage (as a forced command, like C{git-annex-shell -c ...})::

    P2PTAP_LOG=/path/tap.log python p2ptap.py [--program PROG] -c "$SSH_ORIGINAL_COMMAND"

For a C{p2pstdio} command the tap runs C{PROG -c COMMAND} (C{PROG} is split
with shell quoting; default C{git-annex-shell}) as its child, and relays
both directions byte-exactly (what is read is written, unchanged, in the
same chunks).  Each direction is parsed on the way as P2P lines and C{DATA
n} payloads: the C{n} raw bytes after a C{DATA n} line are skipped, never
mistaken for lines.  Every line is appended to the log as one tab-separated
record, before it is passed on (so a request is logged before the node can
have answered it)::

    DIRECTORY <TAB> PID <TAB> > or < <TAB> VERB <TAB> KEY-OR-ARGUMENTS

C{DIRECTORY} is the repository of the p2pstdio command, C{>} a message to
the served repository, C{<} one from it; the last field is the key for
requests that name one (C{PUT}, C{GET}, C{CHECKPRESENT}, C{LOCKCONTENT},
C{REMOVE}, C{REMOVE-BEFORE}) and the whole argument string otherwise
(C{VERSION 4}, C{BYPASS uuid...}, C{DATA n}, C{SUCCESS-PLUS uuid...}).
Records are written with one C{write} each to a file opened with
C{O_APPEND}, so concurrent taps never interleave within a record.  Without
C{P2PTAP_LOG} nothing is logged.  The end of each direction is logged as a
pseudo-message C{EOF} (before it is passed on: the first C{EOF} of a session
says who hung up first), and the served side's exit status as C{< EXIT n}.

When the served side hangs up, the tap closes its standard output and exits
with the child's status at once; when the client hangs up, the child's
input is closed and the tap exits when the child has.

Any other command (C{configlist}, C{git-upload-pack}, ...) is handed to
C{PROG} untapped (the tap execs it).

Standard library only: the tap must run where annexd is not importable.
"""

import os
import re
import shlex
import subprocess
import sys
import threading

LOG_ENV = "P2PTAP_LOG"

#: requests whose last field is a key, and how many fields precede it
KEYED = {b"PUT": 1, b"GET": 2, b"CHECKPRESENT": 0, b"LOCKCONTENT": 0,
         b"REMOVE": 0, b"REMOVE-BEFORE": 1}

_SPACE = re.compile(rb"\s")


def nodeDirectory(words):
    """
    The directory of a C{git-annex-shell p2pstdio DIR ...} command line (the
    words after the program name), or L{None} for any other command.
    """
    if words and os.path.basename(words[0]) == "git-annex-shell":
        words = words[1:]
    if len(words) >= 2 and words[0] == "p2pstdio":
        return words[1]
    return None


def record(line):
    """
    C{(verb, detail)} of one message line (without its newline).
    """
    parts = _SPACE.split(line, 1)
    verb = parts[0]
    rest = parts[1] if len(parts) > 1 else b""
    fields = KEYED.get(verb)
    if fields is not None:
        split = _SPACE.split(rest, fields)
        if len(split) == fields + 1:
            return verb, split[-1]
    return verb, rest


class Parser:
    """
    Splits one direction's byte stream into message lines and DATA
    payloads (skipped); calls C{emit(verb, detail)} for every line.
    """

    def __init__(self, emit):
        self.emit = emit
        self.buffer = b""
        self.payload = 0

    def feed(self, data):
        self.buffer += data
        while self.buffer:
            if self.payload:
                taken = min(self.payload, len(self.buffer))
                self.payload -= taken
                self.buffer = self.buffer[taken:]
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 1:]
            if line.endswith(b"\r"):
                line = line[:-1]
            verb, detail = record(line)
            if verb == b"DATA":
                try:
                    self.payload = max(0, int(detail))
                except ValueError:
                    self.payload = 0
            self.emit(verb, detail)


def _logger(path, node):
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    fd = os.open(path, flags, 0o644) if path else None
    prefix = b"%s\t%d\t" % (os.fsencode(node), os.getpid())

    def emitter(direction):
        def emit(verb, detail):
            if fd is not None:
                os.write(fd, prefix + direction + b"\t" + verb + b"\t"
                         + detail.replace(b"\t", b" ") + b"\n")
        return emit
    return emitter


def _writeAll(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pump(source, sink, parser):
    """
    Copy C{source} to C{sink} (descriptors) until either ends; every chunk
    is parsed (and so logged) before it is passed on.

    @return: whether C{source} ended (C{False}: C{sink} is gone).
    """
    while True:
        try:
            data = os.read(source, 65536)
        except OSError:
            return True
        if not data:
            return True
        parser.feed(data)
        try:
            _writeAll(sink, data)
        except OSError:
            return False


def parseArguments(argv):
    """
    C{[--program PROGRAM] -c COMMAND} or C{[--program PROGRAM] WORDS...}.

    @return: C{(program words, arguments for it, the command's words)}
    """
    argv = list(argv)
    program = ["git-annex-shell"]
    if len(argv) >= 2 and argv[0] == "--program":
        program = shlex.split(argv[1])
        argv = argv[2:]
    if len(argv) >= 2 and argv[0] == "-c":
        return program, argv, shlex.split(argv[1])
    return program, argv, argv


def main(argv):
    program, arguments, words = parseArguments(argv)
    node = nodeDirectory(words)
    if node is None:
        sys.stdout.flush()
        os.execvp(program[0], program + arguments)
    child = subprocess.Popen(program + arguments, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=None)
    emitter = _logger(os.environ.get(LOG_ENV), node)

    def up():
        # The node's side: relayed to our client; when the node hangs up
        # (the end of the session, or an error) so does the tap, without
        # waiting for more input.
        if _pump(child.stdout.fileno(), 1, Parser(emitter(b"<"))):
            emitter(b"<")(b"EOF", b"")
        # (Else our client is gone: the node gets EPIPE from now on.)
        child.stdout.close()
        os.close(1)
        status = child.wait()
        emitter(b"<")(b"EXIT", b"%d" % (status,))
        os._exit(status)
    upward = threading.Thread(target=up, daemon=True)
    upward.start()

    if _pump(0, child.stdin.fileno(), Parser(emitter(b">"))):
        emitter(b">")(b"EOF", b"")
    try:
        child.stdin.close()
    except OSError:
        pass
    # The node ends its output when it has seen the end of its input; the
    # upward relay then exits the process.
    upward.join()


if __name__ == "__main__":
    main(sys.argv[1:])
