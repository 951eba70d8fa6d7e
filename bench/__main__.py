"""
The benchmark of issue 7: annexd against git-annex's own gateways and
against direct access to a node, on the same fixture and data, in one run.

    python -m bench [--size-mib 1024] [--files 1000] [--repeat 3] [--smoke]
                    [--only WORKLOAD,...] [--transports path,ssh,http]
                    [--configs NAME,...] [--node-configs NAME,...]
                    [--concurrency 1,8,32] [--interleave]
                    [--out bench/RESULTS.md] [--keep DIR]

Builds one fixture with the real git-annex (L{bench.fixture}: a 3-node
cluster behind a bare gateway that also proxies node4 over ssh and node5
over annex+http, a client with one remote per configuration), starts the
servers (one annexd daemon with --http, --control and --admin, git-annex
p2phttp -J4 and -J16 in the gateway, p2phttp -J16 in node1 and in node5),
then for each
repeat runs every workload (L{bench.workloads}) for every configuration,
the order of the configurations alternating between repeats (with
C{--interleave}: for each workload every configuration in turn), and writes
the markdown report (L{bench.report}) — after every repeat, so that an
interrupted run leaves its partial figures.

The nodes on other hosts (workloads C{put-big-ssh-node},
C{get-big-ssh-node}, C{put-big-http-node}, C{get-big-http-node}) are
measured for the configurations of C{--node-configs} (default: all that can
reach them); their report, bench/RESULTS-nodes.md, comes from:

    python -m bench --only put-big-ssh-node,get-big-ssh-node,\
        put-big-http-node,get-big-http-node \
        --configs gw,ref16,ax,axd,axh,n4ssh,n5http --repeat 3 --interleave \
        --out bench/RESULTS-nodes.md

C{--smoke} (for CI): 64 MiB, 100 files, 1 repeat, concurrency 1 and 8,
short checkpresent windows, the node workloads for C{gw}, C{axd}, C{axh},
C{n4ssh} and C{n5http} only; the report goes to a temporary file (never to
bench/RESULTS.md unless --out says so) and the exit status is 1 if any
workload errored or any content mismatched — never because of timing.
Without --smoke the exit status is 1 too when a workload failed, after the
report is written.

Progress goes to stderr; the report's path is printed on stdout.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    # The tests package (tests.support) is not installed.
    sys.path.insert(0, ROOT)

import argparse
import datetime
import shlex
import signal
import tempfile
import time
import traceback

from bench.fixture import BY_NAME, CONFIGS, Fixture, FixtureError
from bench.common import MiB, _terminate
from bench.report import Report
from bench.workloads import NODE_WORKLOADS, WORKLOADS, Runner, applicable
from tests.support.annex import _rmtree

#: The configurations of the node workloads in a smoke run.
SMOKE_NODE_CONFIGS = ["gw", "axd", "axh", "n4ssh", "n5http"]


def log(message):
    sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


def otherActivity(runner, wall):
    """
    A sentence on the CPU that processes outside the benchmark used during
    the run (seen in the snapshots taken before every timed command).
    """
    if runner is None:
        return ""
    runner.foreign.snapshot()
    used = runner.foreign.used()
    total = sum(u[0] for u in used)
    text = ("Processes outside the benchmark used at least %.0f CPU-s"
            " during its %.0f s (%d CPUs; from snapshots before every timed"
            " command)" % (total, wall, len(os.sched_getaffinity(0))))
    if used:
        text += ": " + "; ".join("%.0f s `%s` (pid %d)" % (d, line[:90], pid)
                                 for d, pid, line in used[:5])
    return text + "."


def _list(text):
    return [w.strip() for w in text.split(",") if w.strip()]


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=None,
                        help="size of the big file (1024; smoke: 64)")
    parser.add_argument("--files", type=int, default=None,
                        help="number of 4 KiB files (1000; smoke: 100)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repeats (3; smoke: 1)")
    parser.add_argument("--smoke", action="store_true",
                        help="reduced run for CI; fails only on errors")
    parser.add_argument("--only", type=_list, default=list(WORKLOADS),
                        help="workloads, comma-separated, among: "
                             + ", ".join(WORKLOADS))
    parser.add_argument("--transports", type=_list,
                        default=["path", "ssh", "http"],
                        help="path, ssh, http (all)")
    parser.add_argument("--configs", type=_list, default=None,
                        help="configurations (remote names) among: "
                             + ", ".join(c.name for c in CONFIGS))
    parser.add_argument("--node-configs", type=_list, default=None,
                        help="configurations of the node workloads (%s):"
                             " all that can reach the node; smoke: %s" % (
                                 ", ".join(NODE_WORKLOADS),
                                 ",".join(SMOKE_NODE_CONFIGS)))
    parser.add_argument("--concurrency", type=lambda t: [int(n) for n in
                                                         _list(t)],
                        default=None,
                        help="checkpresent clients (1,8,32; smoke: 1,8)")
    parser.add_argument("--cp-duration", type=float, default=None,
                        help="seconds measured per checkpresent level (5;"
                             " smoke: 1.5)")
    parser.add_argument("--cp-warmup", type=float, default=None,
                        help="warm-up seconds per level (1; smoke: 0.5)")
    parser.add_argument("--interleave", action="store_true",
                        help="workload by workload, every configuration in"
                             " turn (instead of configuration by"
                             " configuration): measurements of two"
                             " configurations are seconds apart, which"
                             " evens out a changing background load")
    parser.add_argument("--out", default=None,
                        help="the report (bench/RESULTS.md; smoke: a"
                             " temporary file)")
    parser.add_argument("--keep", metavar="DIR",
                        help="build the fixture in DIR and keep it")
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {"size_mib": (1024, 64), "files": (1000, 100),
                "repeat": (3, 1), "concurrency": ([1, 8, 32], [1, 8]),
                "cp_duration": (5.0, 1.5), "cp_warmup": (1.0, 0.5)}
    for name, (full, reduced) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, reduced if smoke else full)
    if args.out is None:
        if smoke:
            fd, args.out = tempfile.mkstemp(prefix="annexd-bench-smoke-",
                                            suffix=".md")
            os.close(fd)
        else:
            args.out = os.path.join(ROOT, "bench", "RESULTS.md")
    unknown = set(args.only) - set(WORKLOADS)
    if unknown:
        parser.error("unknown workload(s): %s" % (", ".join(unknown),))
    unknown = set(args.transports) - {"path", "ssh", "http"}
    if unknown:
        parser.error("unknown transport(s): %s" % (", ".join(unknown),))
    if args.configs is not None:
        unknown = set(args.configs) - set(BY_NAME)
        if unknown:
            parser.error("unknown configuration(s): %s"
                         % (", ".join(unknown),))
    if args.node_configs is None and smoke:
        args.node_configs = list(SMOKE_NODE_CONFIGS)
    if args.node_configs is not None:
        unknown = set(args.node_configs) - set(BY_NAME)
        if unknown:
            parser.error("unknown configuration(s): %s"
                         % (", ".join(unknown),))
    if args.size_mib < 1 or args.files < 1 or args.repeat < 1:
        parser.error("--size-mib, --files and --repeat must be positive")
    args.commandLine = "python -m bench" + (
        " " + shlex.join(argv) if argv else "")
    args.date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    configs = [c for c in CONFIGS if c.transport in args.transports
               and (args.configs is None or c.name in args.configs)
               and any(applicable(c, w, args.node_configs)
                       for w in args.only)]
    if not configs:
        log("no configuration selected")
        return 2
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        workdir = os.path.realpath(args.keep)
    else:
        workdir = tempfile.mkdtemp(prefix="annexd-bench-")
    log("python -m bench: %d MiB, %d files, %d repeat(s), configurations %s,"
        " workloads %s, work in %s" % (
            args.size_mib, args.files, args.repeat,
            ",".join(c.name for c in configs), ",".join(args.only),
            workdir))
    started = time.monotonic()
    fixture = runner = None
    done = 0
    fatal = None

    def write():
        wall = time.monotonic() - started
        report = Report(runner, configs, args, done, wall,
                        otherActivity(runner, wall))
        text = report.markdown()
        if fatal is not None:
            text += "\n## Aborted\n\n%s\n" % (fatal,)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
        return report

    try:
        fixture = Fixture(
            workdir, args.size_mib * MiB, args.files, configs, log=log,
            node5=any(NODE_WORKLOADS.get(w) == "http-node"
                      for w in args.only))
        fixture.start()
        runner = Runner(fixture, args.only, args.concurrency,
                        args.cp_duration, args.cp_warmup, log,
                        nodeConfigs=args.node_configs)
        for repeat in range(args.repeat):
            order = configs if repeat % 2 == 0 else configs[::-1]
            log("repeat %d/%d: %s" % (repeat + 1, args.repeat,
                                      " ".join(c.name for c in order)))
            if args.interleave:
                for workload in runner.workloads:
                    for config in order:
                        runner.runWorkload(config, workload, repeat)
                for config in order:
                    runner.ensureAbsent(config, "big")
                    runner.ensureAbsent(config, "small")
            else:
                for config in order:
                    runner.runConfig(config, repeat)
            done = repeat + 1
            runner.evidence = fixture.evidence()
            write()
            log("repeat %d/%d done (%.0f min so far), report in %s" % (
                done, args.repeat, (time.monotonic() - started) / 60,
                args.out))
    except (Exception, KeyboardInterrupt, SystemExit) as e:
        fatal = "%s: %s" % (type(e).__name__, e)
        if not isinstance(e, (FixtureError, KeyboardInterrupt, SystemExit)):
            traceback.print_exc()
        log("aborted: %s" % (fatal,))
    finally:
        if fixture is not None:
            fixture.stop()
        if runner is not None:
            write()
        if not args.keep:
            _rmtree(workdir)
    print(args.out)
    if fatal is not None or runner is None:
        return 1
    if runner.errors:
        log("%d workload(s) failed: see the Errors section of %s"
            % (len(runner.errors), args.out))
        return 1
    log("all workloads ran, all content checked out; report in %s"
        % (args.out,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
