"""
A small HTTP load client for the checkpresent workload of C{python -m bench}:
N concurrent clients, each on its own keep-alive HTTP/1.1 connection, each
sending C{POST /git-annex/UUID/v4/checkpresent?key=K&clientuuid=C} (as a
git-annex client does, with C{Accept: application/json}) one after the
other, cycling through the keys, for a fixed time.

    python -m bench.load --port PORT --uuid SERVERUUID --client CLIENTUUID
        --keys FILE --concurrency N [--duration 5] [--warmup 1]
        [--expect true|false]

Prints one JSON object: C{requests} (answered during the measured window),
C{seconds}, C{rps}, C{p50_ms}, C{p99_ms}, C{max_ms}, C{errors} (non-200
answers, warm-up included, answers other than C{{"present": EXPECT}}, broken connections),
C{first_error}, C{cpu} (this process's CPU seconds over the whole run: near
the wall time means the load client itself may be the limit).

Only the standard library (asyncio streams), so that the client costs
little next to the servers it measures.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import quote


class HTTPError(Exception):
    pass


async def readResponse(reader):
    """
    Read one HTTP/1.1 response.

    @return: C{(status, body, close)}.
    """
    line = await reader.readline()
    if not line:
        raise HTTPError("connection closed by the server")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise HTTPError("bad status line %r" % (line,))
    status = int(parts[1])
    length = None
    chunked = close = False
    if parts[0] == b"HTTP/1.0":
        close = True
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n"):
            break
        if not header:
            raise HTTPError("connection closed in the headers")
        name, _, value = header.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection":
            close = value == b"close" or (close and value != b"keep-alive")
    if chunked:
        body = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(body)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body = await reader.read()
        close = True
    return status, body, close


class Load:
    def __init__(self, host, port, paths, expect):
        self.host = host
        self.port = port
        self.paths = paths
        self.next = 0
        self.expect = expect
        self.latencies = []
        self.errors = 0
        self.firstError = None
        self.counting = False
        self.stopping = False

    def error(self, message):
        # Counted during the warm-up too: any error fails the workload.
        self.errors += 1
        if self.firstError is None:
            self.firstError = message

    async def client(self):
        reader = writer = None
        host = ("%s:%d" % (self.host, self.port)).encode()
        try:
            while not self.stopping:
                if writer is None:
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port)
                path = self.paths[self.next % len(self.paths)]
                self.next += 1
                request = (b"POST " + path + b" HTTP/1.1\r\nHost: " + host
                           + b"\r\nAccept: application/json\r\n"
                             b"Content-Length: 0\r\n\r\n")
                started = time.perf_counter()
                try:
                    writer.write(request)
                    status, body, close = await readResponse(reader)
                except (OSError, HTTPError, asyncio.IncompleteReadError,
                        ValueError) as e:
                    self.error("%s: %s" % (type(e).__name__, e))
                    writer.close()
                    writer = None
                    await asyncio.sleep(0.01)
                    continue
                elapsed = time.perf_counter() - started
                if status != 200:
                    self.error("HTTP %d: %r" % (status, body[:200]))
                else:
                    try:
                        present = json.loads(body)["present"]
                    except (ValueError, KeyError, TypeError):
                        present = None
                    if present is not self.expect:
                        self.error("unexpected answer %r" % (body[:200],))
                    elif self.counting:
                        self.latencies.append(elapsed)
                if close:
                    writer.close()
                    writer = None
        finally:
            if writer is not None:
                writer.close()


def percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1,
                max(0, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


async def run(host, port, paths, concurrency, duration, warmup, expect):
    """
    Run the load; return the figures (a dict, see the module docstring).
    """
    load = Load(host, port, paths, expect)
    tasks = [asyncio.ensure_future(load.client())
             for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    load.counting = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    load.counting = False
    seconds = time.perf_counter() - started
    load.stopping = True
    done, pending = await asyncio.wait(tasks, timeout=30)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            load.error("client crashed: %r" % (task.exception(),))
    if pending:
        load.error("%d clients did not finish within 30 s" % (len(pending),))
    latencies = sorted(load.latencies)
    ms = (lambda v: None if v is None else v * 1000)
    times = os.times()
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(latencies[-1] if latencies else None),
        "errors": load.errors,
        "first_error": load.firstError,
        "cpu": times.user + times.system,
    }


def paths(serverUUID, clientUUID, keys):
    return [("/git-annex/%s/v4/checkpresent?key=%s&clientuuid=%s" % (
        quote(serverUUID, safe=""), quote(key, safe=""),
        quote(clientUUID, safe=""))).encode("ascii") for key in keys]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uuid", required=True, help="the server uuid")
    parser.add_argument("--client", required=True, help="the client uuid")
    parser.add_argument("--keys", required=True,
                        help="a file with one key per line")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--expect", choices=("true", "false"),
                        default="true")
    args = parser.parse_args(argv)
    with open(args.keys) as f:
        keys = [line.strip() for line in f if line.strip()]
    if not keys:
        parser.error("no keys in %s" % (args.keys,))
    result = asyncio.run(run(
        args.host, args.port, paths(args.uuid, args.client, keys),
        args.concurrency, args.duration, args.warmup,
        args.expect == "true"))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
