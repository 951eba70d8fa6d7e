"""
Benchmark: a large file through the local node connector, both ways, against
git-annex copying the same file to the same node by path.

    python -m bench.connector [--size MiB] [--repeats N] [--keep DIR]

Each round:
  1. C{git annex copy --to node1path FILE} (git-annex, no gateway) — timed;
  2. the content is dropped from the node, then annexd's L{LocalNode} puts
     the client's object file to the node (C{git-annex-shell p2pstdio}) —
     timed, the node's copy checked by sha256;
  3. C{git annex get --from node1path FILE} after dropping the client's
     copy — timed;
  4. annexd's connector gets the content into a file — timed, checked by
     sha256.

Throughput figures are MiB/s; ratios are annexd over git-annex (1.0 = as
fast).  Peak RSS growth is this process's high-water mark during the
transfer minus its resident size before it (the kernel's VmHWM, reset before
each transfer).
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task

from annexd import gitannex
from annexd.nodes.local import LocalNode
from annexd.protocol.keys import Key
from annexd.streams import HashingConsumer, sendFile
from bench.common import MiB, _status, makeFile, resetPeak

GATEWAY_UUID = b"bench000-0000-0000-0000-000000000000"


def peakGrowth(before):
    return max(0, _status(os.getpid(), "VmHWM") - before)


class Bench:
    def __init__(self, reactor, workdir, size):
        from tests.support.annex import build_cluster
        self.reactor = reactor
        self.size = size
        self.cluster = build_cluster(os.path.join(workdir, "cluster"), nodes=1)
        self.env = self.cluster.env
        self.node = self.cluster.nodes[0]
        path = os.path.join(self.cluster.client.path, "big.bin")
        makeFile(path, size)
        self.env.annex(self.cluster.client.path, "add", "big.bin")
        self.env.git(self.cluster.client.path, "commit", "-q", "-m", "big")
        self.key = self.env.annex(self.cluster.client.path, "lookupkey", "big.bin").strip()
        self.sha256 = Key.parse(self.key.encode()).name.split(b".")[0].decode()
        self.objectPath = os.path.join(
            self.cluster.client.path,
            self.env.annex(self.cluster.client.path, "contentlocation", self.key).strip())

    def annex(self, *args):
        start = time.perf_counter()
        self.env.annex(self.cluster.client.path, *args, timeout=3600)
        return time.perf_counter() - start

    def dropFromNode(self):
        self.env.annex(self.cluster.client.path, "drop", "--force",
                       "--from", "node1path", "big.bin")
        assert not self.cluster.node_has(self.node, self.key)

    def connector(self):
        node = LocalNode(self.reactor, self.node.path, self.node.uuid.encode(),
                         GATEWAY_UUID, environment=self.env.env)
        return node

    async def put(self):
        node = self.connector()
        key = Key.parse(self.key.encode())
        before = resetPeak(os.getpid())
        start = time.perf_counter()
        upload = await node.put(key, b"big.bin")
        sink = upload.receive(self.size - upload.offset)
        with open(self.objectPath, "rb") as f:
            f.seek(upload.offset)
            await sendFile(f, sink)
        outcome = await upload.finish(True)
        elapsed = time.perf_counter() - start
        growth = peakGrowth(before)
        await node.close()
        assert outcome.ok, outcome
        got = self.cluster.node_sha256(self.node, self.key)
        assert got == self.sha256, (got, self.sha256)
        return elapsed, growth

    async def get(self, target):
        node = self.connector()
        key = Key.parse(self.key.encode())
        before = resetPeak(os.getpid())
        start = time.perf_counter()
        download = await node.get(key, b"big.bin", 0)
        with open(target, "wb") as f:
            consumer = HashingConsumer(fileObject=f)
            valid = await download.deliver(consumer)
            ok = valid and consumer.hexdigest() == self.sha256
            await download.finish(ok)
        elapsed = time.perf_counter() - start
        growth = peakGrowth(before)
        await node.close()
        assert ok and consumer.length == self.size
        os.unlink(target)
        return elapsed, growth

    async def round(self, results):
        self.dropFromNode()
        results["git annex copy --to (by path)"].append(
            self.annex("copy", "--to", "node1path", "big.bin"))
        self.dropFromNode()
        elapsed, growth = await self.put()
        results["annexd connector put"].append(elapsed)
        results["rss put"].append(growth)
        self.annex("drop", "--force", "big.bin")
        results["git annex get --from (by path)"].append(
            self.annex("get", "--from", "node1path", "big.bin"))
        elapsed, growth = await self.get(
            os.path.join(os.path.dirname(self.objectPath), "..", "bench-get"))
        results["annexd connector get"].append(elapsed)
        results["rss get"].append(growth)


def table(results, size, repeats):
    mib = size / MiB

    def row(name, values):
        rates = sorted(mib / v for v in values)
        return "| %s | %.0f | %.0f | %.0f |" % (
            name, rates[0], statistics.median(rates), rates[-1])

    lines = [
        "| transfer (%d MiB, %d rounds) | min MiB/s | median MiB/s | max MiB/s |" % (mib, repeats),
        "|---|---|---|---|",
    ]
    for name in ("git annex copy --to (by path)", "annexd connector put",
                 "git annex get --from (by path)", "annexd connector get"):
        lines.append(row(name, results[name]))
    put = statistics.median(results["git annex copy --to (by path)"]) / statistics.median(results["annexd connector put"])
    get = statistics.median(results["git annex get --from (by path)"]) / statistics.median(results["annexd connector get"])
    lines += [
        "",
        "| ratio (annexd / git-annex, median throughput) | value |",
        "|---|---|",
        "| put vs `git annex copy --to` | %.2f |" % put,
        "| get vs `git annex get --from` | %.2f |" % get,
        "",
        "| peak RSS growth of the annexd process | max MiB |",
        "|---|---|",
        "| put | %.1f |" % (max(results["rss put"]) / MiB),
        "| get | %.1f |" % (max(results["rss get"]) / MiB),
    ]
    return "\n".join(lines)


def machine():
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    version = subprocess.run(
        [gitannex.find().binary, "version", "--raw"],
        capture_output=True, text=True).stdout.strip()
    return "%s, %d cores, %.0f GiB, Python %s, git-annex %s" % (
        platform.platform(), os.cpu_count(), mem, platform.python_version(),
        version)


async def main(reactor, args):
    workdir = args.keep or tempfile.mkdtemp(prefix="annexd-bench-")
    bench = Bench(reactor, workdir, args.size * MiB)
    results = {k: [] for k in (
        "git annex copy --to (by path)", "annexd connector put",
        "git annex get --from (by path)", "annexd connector get",
        "rss put", "rss get")}
    for i in range(args.repeats):
        await bench.round(results)
        print("round %d done" % (i + 1), file=sys.stderr)
    print(machine())
    print()
    print(table(results, bench.size, args.repeats))
    if not args.keep:
        subprocess.run(["chmod", "-R", "u+w", workdir])
        subprocess.run(["rm", "-rf", workdir])


def run():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB (1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="work in DIR and keep it")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))


if __name__ == "__main__":
    run()
