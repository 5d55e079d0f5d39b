#!/usr/bin/env python3
"""Log bundles at scale (issue 14): a cluster ZIP of many small files from 4 nodes, near and far.

Every node (a, b, c, d) holds `logs/`: --files files of --file-size (default 10,000 x 4 KiB, in 20
sub-folders, random bytes, different on every node) and one --big-size file (default 256 MiB,
`logs/big.bin`), and `many/`: --plan-files entries (default 25,000, hard links of its small files),
so that `many/` of 4 nodes is a 100,000-entry plan. The client (curl) asks node a.

Batch "40,000 entries" (GET /cluster/files/logs: 4 x 10,001 members + _cluster.json), in the same rounds:
  * loopback: node a reaches b, c, d directly;
  * through a TCP proxy (tests/faultproxy.py, in this process) in front of each of b, c, d, 0 ms:
    what the proxy itself costs;
  * the same proxies with `latency = 0.02`: every request piece node a sends a peer waits 20 ms
    (as between sites 20 ms apart), compared by time with the loopback row.
Batch "100,000 entries" (GET /cluster/files/many, loopback): node a's peak RSS for a big plan.

Measured per round: entries/s (members of the archive over curl's total time), MB/s, time to the
first byte (curl's time_starttransfer: the plan of every node is made before it), node a's CPU and
peak RSS (and the peers' peak). Before the batch reads (POST /batch), the same kind of archive ran
at about 220 entries/s (issue 14: 70,001 files in 323 s on loopback).

How to run (repository root, the venv's python):

    python bench/many_files.py [--files 10000] [--file-size 4K] [--big-size 256M] [--plan-files 25000]
        [--latency-ms 20] [--servers waitress] [--verify] [--rounds 5] [--quick] [--keep] [--workdir DIR]

--workdir keeps the (slow to write) files for the next run; --verify downloads each archive once
after the rounds and checks its members with zipfile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datafiles  # noqa: E402
import servers  # noqa: E402
from measuring import RunResult, _check, curl, fmt_size, parse_size, probe  # noqa: E402
from processes import REPO_ROOT, Unavailable  # noqa: E402
from runner import (Batch, Benchmark, Option, Row, System, entries_at_least, first_byte_within, main,  # noqa: E402
                    rss_at_most, time_at_most)

sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
from faultproxy import FaultProxy  # noqa: E402  (tests/faultproxy.py: `latency` adds a delay per request piece)

NODES = "abcd"
ENTRIES_PER_S = 5000.0   # loopback (issue 14; ~220 before the batch reads)
LATENCY_TIME = 2.0       # x the loopback time, with 20 ms per peer round trip
FIRST_BYTE_S = 1.0       # for the 40,000-entry plan
RSS_100K = 100.0         # MiB, node a, 100,000-entry plan
BEFORE = "about 220 entries/s before the batch reads (issue 14: 70,001 files in 323 s on loopback)"
BEFORE_100K = ("228 MiB with the plan held as objects and the listings parsed whole "
               "(bench/results/many-2026-11-26T110625Z.json)")


# ---------------------------------------------------------------- test files

def _done_marker(folder: str, *what) -> str:
    """Where to note that `folder` is complete: beside the node's root, never inside it (it would be zipped)."""
    root = os.path.dirname(os.path.dirname(folder))
    return os.path.join(root, ".complete-" + "-".join(map(str, (os.path.relpath(folder, root).replace(os.sep, "_"),
                                                                *what))))


def _small_files(folder: str, count: int, size: int) -> list[str]:
    """`count` files of `size` random bytes under folder/svc-NN/ (written once; kept with --workdir)."""
    paths = [os.path.join(folder, f"svc-{i % 20:02d}", f"{i:05d}.log") for i in range(count)]
    done = _done_marker(folder, count, size)
    if os.path.exists(done):
        return paths
    for i in range(20):
        os.makedirs(os.path.join(folder, f"svc-{i:02d}"), exist_ok=True)
    for path in paths:
        with open(path, "wb") as f:
            f.write(os.urandom(size))
    open(done, "w").close()
    return paths


def _linked_files(folder: str, sources: list[str], count: int) -> None:
    """`count` hard links of `sources` (cycling) under folder/: a big plan without the disk space."""
    done = _done_marker(folder, count)
    if os.path.exists(done):
        return
    for i in range(100):
        os.makedirs(os.path.join(folder, f"part-{i:02d}"), exist_ok=True)
    for i in range(count):
        datafiles.place(sources[i % len(sources)], os.path.join(folder, f"part-{i % 100:02d}", f"{i:06d}.log"))
    open(done, "w").close()


def make_roots(ws, o) -> dict[str, str]:
    """Every node's root: logs/ (small files + big.bin) and many/ (links)."""
    size = parse_size(o.big_size)
    big = datafiles.warm(datafiles.random_file(ws.path("data", f"random-{size}.bin"), size))
    roots = {}
    for n in NODES:
        root = roots[n] = ws.path("many_files", f"root_{n}")
        small = _small_files(os.path.join(root, "logs"), o.files, parse_size(o.file_size))
        for path in small:  # kept from an earlier run, they may have left the page cache: round 1
            datafiles.warm(path)  # read them from disk once took 22 s instead of 5 (2026-11-26)
        datafiles.place(big, os.path.join(root, "logs", "big.bin"))
        _linked_files(os.path.join(root, "many"), small, o.plan_files)
    return roots


# ---------------------------------------------------------------- what a round measures

@dataclass
class ZipDownload:
    """GET a cluster ZIP once: its bytes must be the Content-Length announced; entries/s and first byte."""
    path: str
    entries: int
    min_mbps: float = 2.0
    length: int | None = None

    def describe(self) -> str:
        return f"GET {self.path} ({self.entries} entries)"

    def probe(self, base_url: str) -> None:
        headers = probe(base_url + self.path, method="HEAD")
        if "content-length" not in headers:
            raise Unavailable(f"HEAD {self.path}: no Content-Length")
        self.length = int(headers["content-length"])

    def run(self, base_url: str) -> RunResult:
        url = base_url + self.path
        t = curl(url, max_time=max(120.0, (self.length or 0) / (self.min_mbps * 1e6)))
        err = _check(t, url, (200,), self.length)
        if err:
            return RunResult(error=err)
        return RunResult(t.nbytes, t.nbytes, t.seconds, extra={"entries": self.entries, "ttfb_s": t.ttfb})


def verify(url: str, dest: str, entries: int) -> str:
    """Download the archive once; check its member count and every CRC with zipfile: one line."""
    subprocess.run(["curl", "-s", "-o", dest, url], check=True)
    try:
        with zipfile.ZipFile(dest) as z:
            count = len(z.infolist())
            bad = z.testzip()
        if count != entries or bad is not None:
            raise ValueError(f"BAD archive: {count} members (expected {entries}), first bad member {bad}")
        return f"verify: OK, {count} members, every CRC checked"
    finally:
        try:
            os.unlink(dest)
        except OSError:
            pass


# ---------------------------------------------------------------- systems

def _cluster(ws, o, roots, server, latency: float | None, path: str, entries: int):
    """Nodes a..d under `server`; with `latency` (seconds; 0 allowed), node a reaches b, c, d through proxies."""
    def start():
        proxies = {}
        if latency is not None:
            for n in NODES[1:]:
                proxy = FaultProxy(listen_host=ws.host(), max_connections=256)
                proxy.latency = latency
                ws.defer(proxy.stop)
                proxies[n] = proxy
        nodes = servers.cluster(ws, f"many-{server}", roots, server, o.threads,
                                urls={n: p.url for n, p in proxies.items()})
        for n, proxy in proxies.items():
            proxy.target = (nodes[n].host, nodes[n].port)
        url = nodes["a"].base_url + path
        after = (lambda: verify(url, ws.path("check.zip"), entries)) if o.verify else None
        return System(nodes["a"], peers=[nodes[n] for n in NODES[1:]], after=after)
    return start


def forty_thousand(ws, o, roots) -> Batch:
    entries = len(NODES) * (o.files + 1) + 1
    get = ZipDownload("/cluster/files/logs", entries)
    d = f"{len(NODES)} x ({o.files} x {fmt_size(parse_size(o.file_size))} + {fmt_size(parse_size(o.big_size))})"
    ms = o.latency_ms
    rows = []
    for server in o.server_list:
        lo = f"loopback {server}"
        rows += [
            Row("cluster ZIP of logs/, loopback", server, _cluster(ws, o, roots, server, None, get.path, entries),
                get, data=d, id=lo,
                targets=(entries_at_least(ENTRIES_PER_S, True), first_byte_within(FIRST_BYTE_S, True))),
            Row("same, peers through a TCP proxy, 0 ms", server,
                _cluster(ws, o, roots, server, 0.0, get.path, entries), get, ref=lo, data=d,
                id=f"proxy0 {server}", targets=(time_at_most(LATENCY_TIME, lo),)),
            Row(f"same, peers through the proxy, +{ms:g} ms per round trip", server,
                _cluster(ws, o, roots, server, ms / 1000, get.path, entries), get, ref=lo, data=d,
                id=f"latency {server}",
                targets=(time_at_most(LATENCY_TIME, lo, True), first_byte_within(FIRST_BYTE_S))),
        ]
    return Batch(f"Many files: cluster ZIP of logs/ on 4 nodes, {entries} entries", rows, notes=[
        f"Before: {BEFORE}.",
        "entries/s = members of the archive (every file + _cluster.json) over curl's total time; first byte = "
        "curl's time_starttransfer (the plan of all 4 nodes comes before it).",
        "CPU s/GiB and peak RSS: node a's; 'peers RSS': the largest of b, c, d.",
        f"The proxy (tests/faultproxy.py) runs in the bench's own process; with latency it holds every piece "
        f"(up to 64 KiB) node a sends a peer {ms:g} ms: a round trip costs {ms:g} ms more, and so does every "
        "64 KiB of a request body (a batch request naming 10,000 files is about 0.6 MB).",
        f"every node under the same server, {o.threads} threads; × ref = MB/s ratio to the loopback row."])


def hundred_thousand(ws, o, roots) -> Batch:
    entries = len(NODES) * o.plan_files + 1
    get = ZipDownload("/cluster/files/many", entries)
    d = f"{len(NODES)} x {o.plan_files} x {fmt_size(parse_size(o.file_size))}"
    rows = [Row("cluster ZIP of many/, loopback", server, _cluster(ws, o, roots, server, None, get.path, entries),
                get, data=d, id=f"100k {server}", targets=(rss_at_most(RSS_100K, True),))
            for server in o.server_list]
    return Batch(f"Many files: cluster ZIP of many/ on 4 nodes, a {entries}-entry plan", rows, notes=[
        "Peak RSS of node a (the gateway) holding the plan of every node and streaming it; 'peers RSS': the "
        "largest of b, c, d.", f"Before: {BEFORE_100K}.", "many/ holds hard links of each node's small files (same bytes, other names)."])


def batches(ws, o):
    roots = make_roots(ws, o)
    yield forty_thousand(ws, o, roots)
    if o.plan_files > 0:
        yield hundred_thousand(ws, o, roots)


BENCH = Benchmark(
    "many", __doc__, batches,
    options={"files": Option(10000, "small files per node (logs/)"),
             "file_size": Option("4K", "size of each small file"),
             "big_size": Option("256M", "size of the one big file per node (logs/big.bin)"),
             "plan_files": Option(25000, "entries per node under many/ (x 4 = the big plan; 0 = skip that batch)"),
             "latency_ms": Option(20.0, "added per peer round trip in the far row"),
             "verify": Option(False, "after the rounds, download each archive once and check it with zipfile")},
    quick={"files": 1000, "big_size": "16M", "plan_files": 2500},
    defaults={"servers": "waitress"})

if __name__ == "__main__":
    main(BENCH)
