#!/usr/bin/env python3
"""Cluster ZIP: GET /cluster/files/<file> on node a, the file present on 3 nodes (a, b, c), waitress.

Batches, each row with its own fresh 3-node cluster:
  * "stored", at --size and again at twice --size (--no-double: once) to show that peak RSS
    stays flat: the ZIP vs the same bytes read by plain forwarding through node a
    (GET /nodes/a/files/f.bin, /nodes/b/..., /nodes/c/... in turn: the reads the ZIP does),
    and the ZIP with every node under MALLOC_ARENA_MAX=N (--arena-max N; 0 = skip);
  * "deflate": ?compress=deflate of 3 copies of --log-size of log text, MB/s of the *input*
    (no Content-Length then), beside forwarding the same files (--log-size 0 = skip);
  * "naive" (--naive-rounds, 0 = skip): the blog recipe (bench/naive_app.py: zipstream-new
    ZIP_DEFLATED fed by 8 KiB reads from 3 upstreams) on 3 x --naive-size of random data,
    beside forwarding the same bytes.
--verify also downloads each archive once after the rounds and checks it with zipfile.

How to run (repository root, the venv's python):

    python bench/cluster_zip.py [--size 256M] [--no-double] [--log-size 256M] [--naive-size 64M]
        [--naive-rounds 3] [--arena-max 2] [--verify] [--rounds 5] [--quick] [--keep]
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
import zlib
from importlib import util

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datafiles  # noqa: E402
import servers  # noqa: E402
from measuring import Download, fmt_size, parse_size, probe  # noqa: E402
from processes import Unavailable  # noqa: E402
from runner import Batch, Benchmark, Option, Row, System, faster, main, rss_at_most, speed_at_least  # noqa: E402

RSS = 60.0
VS_FORWARD = 0.8        # stored ZIP x forwarding (it made 0.91x: keep, no regression)
DEFLATE_MBPS = 250.0    # MB/s of input for ?compress=deflate, with the fast extra (issue 16)
NODES = "abc"


def _roots(ws, tag: str, name: str, data: str) -> dict[str, str]:
    """Three roots holding hard links of one file."""
    roots = {n: ws.path(f"zip_{tag}", f"root_{n}") for n in NODES}
    for n in NODES:
        datafiles.place(data, os.path.join(roots[n], name))
    return roots


def crc32_of(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def verify_zip(url: str, dest: str, member: str, data_path: str) -> str:
    """Download the archive once and check every member named `member` with zipfile: one line."""
    subprocess.run(["curl", "-s", "-o", dest, url], check=True)
    try:
        size, crc = os.path.getsize(data_path), crc32_of(data_path)
        with zipfile.ZipFile(dest) as z:
            infos = [i for i in z.infolist() if i.filename.endswith(member)]
            bad = [i.filename for i in infos if i.file_size != size or i.CRC != crc]
            tested = z.testzip()
        if len(infos) != len(NODES) or bad or tested is not None:
            raise ValueError(f"BAD archive: {len(infos)} members, wrong {bad}, testzip {tested}")
        return f"verify: OK, {len(infos)} members of {fmt_size(size)} ({', '.join(i.filename for i in infos)})"
    finally:
        try:
            os.unlink(dest)
        except OSError:
            pass


def _zip(ws, o, roots, name, data_path, query="", env=None, min_size=0):
    def start():
        nodes = servers.cluster(ws, f"zip-{name}", roots, "waitress", o.threads, env=env)
        url = f"{nodes['a'].base_url}/cluster/files/{name}{query}"
        clen = probe(url).get("content-length")
        if clen is not None and int(clen) < min_size:
            raise Unavailable(f"Content-Length {clen} < {min_size}")
        after = (lambda: verify_zip(url, ws.path("check.zip"), name, data_path)) if o.verify else None
        return System(nodes["a"], peers=[nodes["b"], nodes["c"]], after=after)
    return start


def _forward(ws, o, roots, name):
    def start():
        nodes = servers.cluster(ws, f"zip-fwd-{name}", roots, "waitress", o.threads)
        return System(nodes["a"], peers=[nodes["b"], nodes["c"]])
    return start


def _forward_row(ws, o, roots, name, size, data) -> Row:
    return Row(f"3 x forward (/nodes/{{a,b,c}}/files/{name})", "waitress", _forward(ws, o, roots, name),
               Download([f"/nodes/{n}/files/{name}" for n in NODES], size), data=data, id="forward")


def stored(ws, o, size: int) -> Batch:
    data_path = datafiles.warm(datafiles.random_file(ws.path("data", f"random-{size}.bin"), size))
    roots = _roots(ws, f"stored_{size}", "f.bin", data_path)
    d = f"3 x {fmt_size(size)}"
    get = Download(["/cluster/files/f.bin"], None)
    targets = (faster(VS_FORWARD, "forward", True), rss_at_most(RSS, True))
    rows = [_forward_row(ws, o, roots, "f.bin", size, d),
            Row("wsgi_stream /cluster/files/f.bin (stored ZIP)", "waitress",
                _zip(ws, o, roots, "f.bin", data_path, min_size=3 * size), get, ref="forward", targets=targets,
                data=d)]
    if o.arena_max:
        rows.append(Row(f"wsgi_stream /cluster/files/f.bin, MALLOC_ARENA_MAX={o.arena_max}", "waitress",
                        _zip(ws, o, roots, "f.bin", data_path, env={"MALLOC_ARENA_MAX": str(o.arena_max)},
                             min_size=3 * size), get, ref="forward",
                        targets=(faster(VS_FORWARD, "forward"), rss_at_most(RSS)), data=d))
    return Batch(f"Cluster ZIP, GET /cluster/files/f.bin on node a, {d} of random data", rows,
                 notes=["CPU s/GiB and peak RSS: node a's (the one the client talks to); 'peers RSS': the larger "
                        "of b's and c's. Forwarding: the same 3 reads as the ZIP, total bytes / total time.",
                        f"every node under waitress, {o.threads} threads; the 3 copies are hard links of one file."])


def deflate(ws, o) -> Batch:
    size = parse_size(o.log_size)
    data_path = datafiles.warm(datafiles.log_text_file(ws.path("data", f"log-{size}.log"), size))
    roots = _roots(ws, f"deflate_{size}", "app.log", data_path)
    d = f"3 x {fmt_size(size)} log text"
    rows = [_forward_row(ws, o, roots, "app.log", size, d),
            Row("wsgi_stream /cluster/files/app.log?compress=deflate", "waitress",
                _zip(ws, o, roots, "app.log", data_path, query="?compress=deflate"),
                Download(["/cluster/files/app.log?compress=deflate"], None, counted=3 * size), ref="forward",
                targets=(speed_at_least(DEFLATE_MBPS, True),), data=d)]
    fast = "installed" if util.find_spec("isal") else "NOT installed"
    return Batch(f"Cluster ZIP, ?compress=deflate of log text, {d}", rows,
                 notes=["MB/s and CPU s/GiB of the deflate row count the input (3 x the file), not the smaller archive sent.",
                        f"isal (the `fast` extra) is {fast} in the interpreter running the bench."])


def naive(ws, o) -> Batch:
    size = parse_size(o.naive_size)
    data_path = datafiles.warm(datafiles.random_file(ws.path("data", f"random-{size}.bin"), size))
    roots = _roots(ws, f"naive_{size}", "f.bin", data_path)
    d = f"3 x {fmt_size(size)}"

    def start():
        back = servers.nginx(ws, "zip-naive-back", "static", root=roots["a"])
        app = servers.naive_app(ws, "zip", {"NAIVE_MODE": "zip", "NAIVE_UPSTREAMS": ",".join([back.base_url] * 3)},
                                o.threads)
        return System(app, peers=[back])
    rows = [_forward_row(ws, o, roots, "f.bin", size, d),
            Row("naive: zipstream ZIP_DEFLATED, 8 KiB reads -> nginx", "waitress", start,
                Download(["/f.bin"], None, min_mbps=0.5), ref="forward", data=d)]
    return Batch(f"Cluster ZIP, the naive recipe (bench/naive_app.py) vs forwarding, {d}", rows,
                 rounds=o.naive_rounds,
                 notes=["The naive recipe deflates random data (no gain) from nginx, the fastest upstream there is."])


def batches(ws, o):
    size = parse_size(o.size)
    for s in ([size] if o.no_double else [size, 2 * size]):
        yield stored(ws, o, s)
    if parse_size(o.log_size) > 0:
        yield deflate(ws, o)
    if o.naive_rounds > 0:
        yield naive(ws, o)


BENCH = Benchmark(
    "zip", __doc__, batches,
    options={"size": Option("256M", "size of the file on each node (stored batches)"),
             "no_double": Option(False, "skip the batch at twice --size"),
             "log_size": Option("256M", "size of the log file on each node (deflate batch; 0 = skip)"),
             "naive_size": Option("64M", "size of the file on each node for the naive recipe"),
             "naive_rounds": Option(3, "rounds of the naive batch (0 = skip)"),
             "arena_max": Option(2, "also the ZIP with every node under MALLOC_ARENA_MAX=N (0 = skip)"),
             "verify": Option(False, "after the rounds, download each archive once and check it with zipfile")},
    quick={"size": "16M", "log_size": "16M", "naive_size": "4M", "naive_rounds": 2})

if __name__ == "__main__":
    main(BENCH)
