#!/usr/bin/env python3
"""Local download: GET /files/big.bin from one wsgi_stream node, by one client and by many at once.

Batch "one client" (--size, default 1 GiB), measured in the same rounds:
  * nginx sendfile, one worker;
  * bench/bare_app.py (nothing but wsgi.file_wrapper(open(path), 1 MiB)) under each WSGI
    server with deploy/'s settings: the best a WSGI app can do there;
  * the node under each server, started as deploy/ does (tests/support.py server_command);
  * the waitress node with MALLOC_ARENA_MAX=N (--arena-max N; 0 = skip);
  * --variants 'uwsgi:LABEL=ARGS; ...': the node with other settings than deploy/'s (ARGS added
    to its command line, after deploy/'s file), to try settings before shipping them
    (e.g. 'uwsgi:no offload=--offload-threads 0'); --bare-variants does the same for the bare app.
Batch "many clients": --clients curls at once (default 32 x 64 MiB), node vs nginx, aggregate MB/s.

How to run (repository root, the venv's python: /work/main/.venv/bin/python or `. .venv/bin/activate`):

    python bench/local_download.py [--size 1G] [--servers waitress,uwsgi,gunicorn] [--arena-max 2]
        [--clients 32] [--clients-size 64M] [--variants 'uwsgi:LABEL=ARGS; ...'] [--bare-variants ...]
        [--rounds 5] [--threads 64] [--quick] [--keep]

Targets (issue 16 and the earlier ones) are declared with the rows below.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datafiles  # noqa: E402
import servers  # noqa: E402
from measuring import Concurrent, Download, fmt_size, parse_size  # noqa: E402
from runner import (Batch, Benchmark, Option, Row, System, cpu_at_most, faster, main,  # noqa: E402
                    rss_at_most)

RSS = 60.0            # MiB, peak of the node, every server
CLIENTS_RSS = 100.0   # MiB, waitress node serving --clients downloads at once

# Issue 16's targets per server, on top of >= 0.95x the bare app and the RSS bound.
NODE_TARGETS = {
    "waitress": lambda: (faster(0.95, "nginx", True), cpu_at_most(2.0, "nginx", True)),
    "uwsgi": lambda: (faster(1.0, "nginx", True),),
    "gunicorn": lambda: (faster(0.95, "bare gunicorn", True),),
}


def _files(ws, size: int) -> str:
    root = ws.path(f"root_local_{size}")
    data = datafiles.warm(datafiles.random_file(ws.path("data", f"random-{size}.bin"), size))
    datafiles.place(data, os.path.join(root, "big.bin"))
    return root


def _node(ws, root, server, threads, env=None, extra=None):
    return lambda: System(servers.cluster(ws, f"local-{server}", {"a": root}, server, threads, env=env,
                                          extra=extra)["a"])


def one_client(ws, o) -> Batch:
    size = parse_size(o.size)
    root = _files(ws, size)
    get = Download(["/files/big.bin"], size)
    data = fmt_size(size)
    rows = [Row("nginx sendfile", "nginx", lambda: System(servers.nginx(ws, "static", "static", root=root)), get,
                data=data, id="nginx")]
    for server in o.server_list:
        bare = f"bare {server}"
        rows.append(Row("bare file_wrapper app", server,
                        lambda s=server: System(servers.bare_app(ws, s, root, o.threads)), get,
                        ref="nginx", data=data, id=bare))
        rows.append(Row("wsgi_stream /files/", server, _node(ws, root, server, o.threads), get, ref="nginx",
                        targets=NODE_TARGETS.get(server, tuple)() + (faster(0.95, bare), rss_at_most(RSS)),
                        data=data, id=f"node {server}"))
    if o.arena_max and "waitress" in o.server_list:
        env = {"MALLOC_ARENA_MAX": str(o.arena_max)}
        rows.append(Row(f"wsgi_stream /files/, MALLOC_ARENA_MAX={o.arena_max}", "waitress",
                        _node(ws, root, "waitress", o.threads, env), get, ref="nginx",
                        targets=(faster(0.95, "bare waitress"), rss_at_most(RSS)), data=data))
    if o.range_rows:
        # Range requests never take the file_wrapper path: the app's generator (read_range) sends them.
        ranged = Download(["/files/big.bin"], size - 1, codes=(206,), byte_range="1-")
        rows.append(Row("nginx sendfile, Range: bytes=1-", "nginx",
                        lambda: System(servers.nginx(ws, "static", "static", root=root)), ranged, data=data,
                        id="nginx range"))
        for server in o.server_list:
            rows.append(Row("wsgi_stream /files/, Range: bytes=1- (generator)", server,
                            _node(ws, root, server, o.threads), ranged, ref="nginx range", data=data,
                            id=f"node {server} range"))
    ids = {row.id for row in rows}
    for server, label, extra in servers.parse_variants(o.variants):
        # × ref: the variant against the node as deployed when it is measured too, else against nginx
        rows.append(Row(f"wsgi_stream /files/, {label}", server, _node(ws, root, server, o.threads, extra=extra), get,
                        ref=f"node {server}" if f"node {server}" in ids else "nginx",
                        targets=NODE_TARGETS.get(server, tuple)(), data=data,
                        id=f"node {server} {label}"))
    for server, label, extra in servers.parse_variants(o.bare_variants):
        rows.append(Row(f"bare file_wrapper app, {label}", server,
                        lambda s=server, e=extra: System(servers.bare_app(ws, s, root, o.threads, e)), get,
                        ref=f"bare {server}" if f"bare {server}" in ids else "nginx", data=data,
                        id=f"bare {server} {label}"))
    return Batch(f"Local download, GET /files/big.bin ({data}), one client", rows,
                 notes=[f"{o.threads} threads per WSGI server; page cache warm; curl to /dev/null."])


def many_clients(ws, o) -> Batch:
    size = parse_size(o.clients_size)
    root = _files(ws, size)
    get = Concurrent("/files/big.bin", o.clients, size)
    data = f"{o.clients} x {fmt_size(size)}"
    rows = [Row("nginx sendfile", "nginx", lambda: System(servers.nginx(ws, "static", "static", root=root)), get,
                data=data, id="nginx")]
    for server in o.server_list:
        targets = (faster(0.85, "nginx", True), rss_at_most(CLIENTS_RSS, True)) if server == "waitress" else ()
        rows.append(Row("wsgi_stream /files/, clients at once", server, _node(ws, root, server, o.threads), get,
                        ref="nginx", targets=targets, data=data, id=f"node {server}"))
    ids = {row.id for row in rows}
    for server, label, extra in servers.parse_variants(o.variants):
        rows.append(Row(f"wsgi_stream /files/, clients at once, {label}", server,
                        _node(ws, root, server, o.threads, extra=extra), get,
                        ref=f"node {server}" if f"node {server}" in ids else "nginx", data=data,
                        id=f"node {server} {label}"))
    return Batch(f"Local download, {o.clients} clients at once, GET /files/big.bin ({fmt_size(size)})", rows,
                 notes=["MB/s = all the bytes of the round over its wall time (every curl started at once)."])


def batches(ws, o):
    if not o.no_one_client:
        yield one_client(ws, o)
    if o.clients > 0:
        yield many_clients(ws, o)


BENCH = Benchmark(
    "local", __doc__, batches,
    options={"size": Option("1G", "file size, one client"),
             "arena_max": Option(2, "also the waitress node under MALLOC_ARENA_MAX=N (0 = skip)"),
             "no_one_client": Option(False, "skip the one-client batch"),
             "clients": Option(32, "downloads at once in the 'many clients' batch (0 = skip)"),
             "clients_size": Option("64M", "file size in the 'many clients' batch"),
             "range_rows": Option(False, "also Range: bytes=1- (all but the first byte) from nginx and each node"),
             "variants": Option("", "'SERVER:LABEL=ARGS; ...': also the node with ARGS added to deploy/'s settings"),
             "bare_variants": Option("", "the same for the bare file_wrapper app")},
    quick={"size": "32M", "clients": 8, "clients_size": "8M"})

if __name__ == "__main__":
    main(BENCH)
