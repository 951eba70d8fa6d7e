"""
Benchmark: the gateway state layer on a large gateway.

    python -m bench.state [--keys 100000] [--lookups 2000]

Builds a real git-annex gateway repository whose git-annex branch holds
location logs for KEYS keys on three nodes (written with git fast-import on
top of the branch git-annex made), then measures:

  - location lookup (L{LocationLog.presentSync}, and the non-blocking
    L{LocationLog.present} through the reactor): p50/p99 per key;
  - loading the gateway state (L{GatewayState.load});
  - repository sizes: a full sweep, and the reload after a branch change
    (a commit touching 100 keys), when L{annexd.annex.sizes} offers it.
"""

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task

from annexd.annex.location import LocationLog, locationLogPath
from annexd.annex.state import GatewayState

NODES = [b"11111111-1111-4111-8111-111111111111",
         b"22222222-2222-4222-8222-222222222222",
         b"33333333-3333-4333-8333-333333333333"]


def run(args, cwd, env, input=None):
    return subprocess.run(args, cwd=cwd, env=env, input=input, check=True,
                          capture_output=True).stdout


def makeKeys(count, seed=1):
    rng = random.Random(seed)
    keys = []
    for i in range(count):
        size = rng.randrange(1, 10 ** 9)
        digest = hashlib.sha256(b"%d" % i).hexdigest().encode()
        keys.append(b"SHA256E-s%d--%s.bin" % (size, digest))
    return keys


def locationLog(key, rng, when):
    lines = []
    for uuid in NODES:
        if rng.random() < 0.6:
            lines.append(b"%ds 1 %s\n" % (when, uuid))
    return b"".join(lines) or b"%ds 1 %s\n" % (when, NODES[0])


def buildGateway(workdir, keys, env):
    """
    A gateway repository whose git-annex branch has a location log for
    every key in C{keys}.
    """
    gw = os.path.join(workdir, "gateway.git")
    run(["git", "init", "-q", "--bare", gw], workdir, env)
    run(["git-annex", "init", "gateway"], gw, env)
    rng = random.Random(2)
    stream = [b"commit refs/heads/git-annex\n",
              b"committer bench <bench@localhost> 1700000000 +0000\n",
              b"data 5\nbench\n", b"from refs/heads/git-annex^0\n"]
    for key in keys:
        data = locationLog(key, rng, 1700000000)
        path = locationLogPath(key).encode()
        stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (path, len(data), data))
    stream.append(b"\n")
    run(["git", "fast-import", "--quiet"], gw, env, input=b"".join(stream))
    return gw


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def measure(reactor, gw, keys, lookups):
    rng = random.Random(3)
    sample = [rng.choice(keys) for _ in range(lookups)]
    results = {}

    log = LocationLog(gw)
    log.presentSync(sample[0])
    times = []
    for key in sample:
        start = time.perf_counter()
        present = log.presentSync(key)
        times.append(time.perf_counter() - start)
        assert present, key
    results["location lookup, blocking"] = times

    times = []
    for key in sample:
        start = time.perf_counter()
        present = await log.present(key)
        times.append(time.perf_counter() - start)
        assert present, key
    results["location lookup, via the reactor"] = times
    await defer.maybeDeferred(log.close)

    start = time.perf_counter()
    GatewayState.load(gw)
    results["GatewayState.load"] = [time.perf_counter() - start]

    try:
        from annexd.annex import sizes
    except ImportError:
        sizes = None
    if sizes is not None:
        start = time.perf_counter()
        repoSizes = sizes.RepoSizes.fromLocationLogs(gw)
        results["repository sizes, full sweep"] = [time.perf_counter() - start]
        reload = getattr(repoSizes, "reload", None)
        if reload is not None:
            changeBranch(gw, keys[:100])
            start = time.perf_counter()
            reload()
            results["repository sizes, reload after a 100-key change"] = [
                time.perf_counter() - start]
    return results


def changeBranch(gw, keys):
    env = dict(os.environ)
    stream = [b"commit refs/heads/git-annex\n",
              b"committer bench <bench@localhost> 1700000100 +0000\n",
              b"data 6\nchange\n", b"from refs/heads/git-annex^0\n"]
    for key in keys:
        data = b"1700000100s 0 %s\n" % (NODES[0],)
        stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (
            locationLogPath(key).encode(), len(data), data))
    stream.append(b"\n")
    run(["git", "fast-import", "--quiet"], gw, env, input=b"".join(stream))


def report(results, count):
    print("| measure (%d keys) | p50 ms | p99 ms | max ms |" % count)
    print("|---|---|---|---|")
    for name, times in results.items():
        print("| %s | %.3f | %.3f | %.3f |" % (
            name, statistics.median(times) * 1000,
            percentile(times, 0.99) * 1000, max(times) * 1000))


def main(reactor, args):
    workdir = tempfile.mkdtemp(prefix="annexd-bench-state-")
    env = dict(os.environ, HOME=workdir, GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    keys = makeKeys(args.keys)
    start = time.perf_counter()
    gw = buildGateway(workdir, keys, env)
    print("built a gateway with %d location logs in %.1f s" % (
        len(keys), time.perf_counter() - start), file=sys.stderr)
    os.environ.update(HOME=workdir, GIT_CONFIG_NOSYSTEM="1")

    async def go():
        results = await measure(reactor, gw, keys, args.lookups)
        report(results, len(keys))
        subprocess.run(["rm", "-rf", workdir])
    return defer.ensureDeferred(go())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100000)
    parser.add_argument("--lookups", type=int, default=2000)
    task.react(main, [parser.parse_args()])
