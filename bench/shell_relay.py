"""
Benchmark: short ssh sessions to a proxied node (connect, one CHECKPRESENT,
disconnect), as git-annex makes them for `whereis --fast`-like queries,
served three ways in the same run:

  - git-annex-shell, git-annex's own proxy (the forced command is
    git-annex-shell itself, which proxies to the node);
  - annexd-shell in-process (no daemon: each session loads the gateway
    state and starts its own git-annex-shell for the node);
  - annexd-shell relaying to the annexd daemon over its control socket
    (the daemon's node sessions are reused).

    python bench/shell_relay.py [--sessions 100]

Each session goes through the fake ssh of L{tests.support.annex} (the
command is run locally, as sshd runs a forced command), opened by annexd's
own P2P client (L{annexd.nodes.ssh.SshNode} with no idle session kept, so
every request is a new ssh session).  Figures are the mean wall time per
session, and ratios against git-annex-shell (below 1.0 = faster).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import shutil
import tempfile
import time

from twisted.internet import defer, reactor

from annexd.nodes.ssh import SshNode
from annexd.protocol.keys import Key
from tests.support.annex import _rmtree, build_cluster
from tests.support.daemon import annexdArgv, freePort, spawnServer


async def measure(cluster, forced, sessions):
    node = cluster.nodes[0]
    environment = dict(cluster.env.env)
    if forced is not None:
        environment["FAKESSH_FORCED_COMMAND"] = forced
    remote = SshNode(reactor, "ssh://gw" + cluster.gateway.path,
                     node.uuid.encode(), cluster.client.uuid.encode(),
                     environment=environment, maxIdle=0)
    key = Key.parse(b"SHA256E-s1--" + b"0" * 64)
    try:
        # One untimed session first (caches warm, daemon's node session
        # open).
        if await remote.checkPresent(key):
            raise AssertionError("the key should be absent")
        started = time.monotonic()
        for i in range(sessions):
            await remote.checkPresent(key)
        return (time.monotonic() - started) / sessions
    finally:
        await remote.close()


async def main(options):
    base = tempfile.mkdtemp(prefix="annexd-bench-")
    sockets = tempfile.mkdtemp(prefix="annexd-ctl-")
    daemon = None
    try:
        cluster = build_cluster(os.path.join(base, "cluster"), nodes=1)
        control = os.path.join(sockets, "control.sock")
        port = freePort()
        daemon = spawnServer(annexdArgv([
            "--repo", cluster.gateway.path, "--control", control,
            "--http", "tcp:%d:interface=127.0.0.1" % (port,)]), port,
            os.path.join(base, "annexd.log"), env=cluster.env.env,
            name="annexd")
        daemon.waitListening()
        shell = "%s -m annexd.shell" % (sys.executable,)
        ways = [("git-annex-shell", None), ("annexd-shell in-process", shell),
                ("annexd-shell via daemon",
                 "%s --control %s" % (shell, control))]
        results = {}
        for name, forced in ways:
            results[name] = await measure(cluster, forced, options.sessions)
        reference = results["git-annex-shell"]
        print("%d sessions each (connect, CHECKPRESENT on a proxied node, "
              "disconnect)" % (options.sessions,))
        print("%-26s %10s %8s" % ("", "ms/session", "ratio"))
        for name, seconds in results.items():
            print("%-26s %10.1f %8.2f" % (name, seconds * 1000,
                                          seconds / reference))
    finally:
        if daemon is not None:
            daemon.stop()
        _rmtree(base)
        shutil.rmtree(sockets, True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sessions", type=int, default=100)
    options = parser.parse_args()
    d = defer.ensureDeferred(main(options))
    failures = []
    d.addErrback(failures.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        failures[0].printTraceback()
        sys.exit(1)
