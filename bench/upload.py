#!/usr/bin/env python3
"""Uploads: curl -T of a file to a node (PUT /files/up.bin) and through a node to its peer
(PUT /nodes/b/files/up.bin on node a), config `uploads = true`.

Batch "upload" (--size, default 1 GiB), measured in the same rounds:
  * curl -T to nginx WebDAV (dav_methods PUT: body to a temp file, renamed);
  * curl -T to nginx proxy_pass (proxy_request_buffering off) -> nginx WebDAV: the reference
    of the upload through a peer;
  * the node under each server, started as deploy/ does, to itself and through a peer.
Batch "fan-out" (issue 15; --fanout-servers, default waitress,uwsgi; '' = skip), per server:
  * PUT /files/up.bin to one node: the reference;
  * PUT /cluster/files/up.bin on node a of a 3-node cluster: the body once, landing on a, b and c
    (staged, then committed); compared by time with the single upload, and node a's peak RSS.
  A node without `PUT /cluster/files/` (fan-out not merged yet) makes the row n/a, saying so.
nginx does not fsync; wsgi_stream does (contract 4.2), so the disk's fsync speed (noted under
the table) bounds the node and not nginx. Each upload replaces the previous one.

How to run (repository root, the venv's python):

    python bench/upload.py [--size 1G] [--servers waitress,uwsgi,gunicorn] [--fanout-servers waitress,uwsgi]
        [--variants 'uwsgi:LABEL=ARGS; ...'] [--rounds 5] [--quick] [--keep]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datafiles  # noqa: E402
import servers  # noqa: E402
from measuring import GiB, Upload, fmt_size, parse_size  # noqa: E402
from measuring import probe  # noqa: E402
from processes import Unavailable  # noqa: E402
from runner import Batch, Benchmark, Option, Row, System, faster, main, rss_at_most, time_at_most  # noqa: E402

RSS = 60.0
VS_NGINX = {"uwsgi": 1.0}   # x nginx WebDAV (issue 16); 0.5 for the others
VS_NGINX_DEFAULT = 0.5
FANOUT_TIME = 1.3           # fan-out to 3 nodes, x the time of one upload to one node (issue 15)
FANOUT_RSS = 80.0           # MiB, the gateway (node a)
FANOUT_NODES = "abc"


def disk_fsync_mbps(path: str, size: int) -> float | None:
    """Write `size` bytes and fsync: what the disk under the work dir does."""
    try:
        buf = os.urandom(1 << 20)
        t0 = time.monotonic()
        with open(path, "wb") as f:
            for _ in range(max(1, size >> 20)):
                f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        return size / (time.monotonic() - t0) / 1e6
    except OSError:
        return None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _dir(ws, *parts) -> str:
    path = ws.path("upload", *parts)
    os.makedirs(path, exist_ok=True)
    return path


def _nginx_dav(ws, proxied: bool):
    def start():
        if not proxied:
            return System(servers.nginx(ws, "dav", "dav", root=_dir(ws, "nginx")))
        back = servers.nginx(ws, "dav-back", "dav", root=_dir(ws, "nginx_proxied"))
        return System(servers.nginx(ws, "dav-front", "proxy", upstream=back.base_url), peers=[back])
    return start


def _node(ws, server, threads, through: bool, size: int, extra=None, tag=""):
    def start():
        roots = {n: _dir(ws, f"{server}_{int(through)}{tag}", f"root_{n}") for n in "ab"}
        nodes = servers.cluster(ws, f"upload-{server}", roots, server, threads, uploads=True,
                                start=None if through else "a", extra=extra)
        dest = os.path.join(roots["b" if through else "a"], "up.bin")

        def after():
            got = os.path.getsize(dest)
            if got != size:
                raise ValueError(f"stored file has {got} bytes, expected {size}")
            return ""
        return System(nodes["a"], peers=[nodes["b"]] if through else [], after=after)
    return start


def _fanout(ws, server, threads, size: int):
    def start():
        roots = {n: _dir(ws, f"fanout_{server}", f"root_{n}") for n in FANOUT_NODES}
        nodes = servers.cluster(ws, f"fanout-{server}", roots, server, threads, uploads=True)
        url = nodes["a"].base_url + "/cluster/files/probe.bin"
        try:
            probe(url, "PUT", b"x", expect=(200, 201))
        except Unavailable as exc:
            if " 405 " in f" {exc} " or " 404 " in f" {exc} ":
                raise Unavailable("this tree has no PUT /cluster/files/ yet (fan-out, issue 15, is on branch "
                                  f"`fanout`, not merged): {exc}") from None
            raise

        def after():
            sizes = {n: os.path.getsize(os.path.join(roots[n], "up.bin")) for n in FANOUT_NODES}
            if set(sizes.values()) != {size}:
                raise ValueError(f"stored sizes {sizes}, expected {size} on every node")
            return f"every node holds up.bin of {size} bytes"
        return System(nodes["a"], peers=[nodes[n] for n in FANOUT_NODES[1:]], after=after)
    return start


def fanout_batch(ws, o, data: str, size: int, disk) -> Batch:
    d = fmt_size(size)
    rows = []
    for server in [s.strip() for s in o.fanout_servers.split(",") if s.strip()]:
        single = f"single {server}"
        rows += [Row("wsgi_stream PUT /files/up.bin (one node)", server, _node(ws, server, o.threads, False, size),
                     Upload("/files/up.bin", data, size), data=d, id=single),
                 Row("fan-out PUT /cluster/files/up.bin (a, b, c)", server, _fanout(ws, server, o.threads, size),
                     Upload("/cluster/files/up.bin", data, size, codes=(200, 201)), ref=single,
                     data=f"{d} to 3 nodes", id=f"fanout {server}",
                     targets=(time_at_most(FANOUT_TIME, single, True), rss_at_most(FANOUT_RSS, True)))]
    return Batch(f"Fan-out upload, curl -T {d} to 3 nodes vs to one", rows, notes=[
        "Fan-out: one body to node a, streamed at once to a's own disk and to b and c (PUT /stages/...), "
        "committed when all three have it; its time is compared with one upload to one node, round by round.",
        "CPU s/GiB and peak RSS: node a (the gateway); 'peers RSS': the larger of b's and c's.",
        f"All 3 nodes write (and fsync) to the same disk here: {'n/a' if disk is None else f'{disk:.0f}'} MB/s "
        "written + fsync under the work dir; on separate machines each node writes one copy.",
        f"{o.threads} threads per WSGI server; curl -T with 'Expect:' disabled, file in the page cache."])


def batches(ws, o):
    size = parse_size(o.size)
    data = datafiles.warm(datafiles.random_file(ws.path("data", f"random-{size}.bin"), size))
    subprocess.run(["sync"], check=False)
    disk = disk_fsync_mbps(ws.path("fsync-test.bin"), min(size, GiB))
    put, put_b = Upload("/files/up.bin", data, size), Upload("/nodes/b/files/up.bin", data, size)
    dav_put = Upload("/up.bin", data, size)
    d = fmt_size(size)
    rows = [Row("nginx WebDAV PUT", "nginx", _nginx_dav(ws, False), dav_put, data=d, id="nginx"),
            Row("nginx proxy_pass -> nginx WebDAV PUT", "nginx", _nginx_dav(ws, True), dav_put, ref="nginx", data=d,
                id="nginx proxy")]
    for server in o.server_list:
        vs = VS_NGINX.get(server, VS_NGINX_DEFAULT)
        rows.append(Row("wsgi_stream PUT /files/up.bin", server, _node(ws, server, o.threads, False, size), put,
                        ref="nginx", targets=(faster(vs, "nginx", True), rss_at_most(RSS)), data=d,
                        id=f"node {server}"))
        rows.append(Row("wsgi_stream PUT /nodes/b/files/up.bin (a -> b)", server,
                        _node(ws, server, o.threads, True, size), put_b, ref="nginx proxy",
                        targets=(faster(VS_NGINX_DEFAULT, "nginx"), rss_at_most(RSS)), data=d))
    ids = {row.id for row in rows}
    for i, (server, label, extra) in enumerate(servers.parse_variants(o.variants)):
        # × ref: the variant against the node as deployed when it is measured too, else against nginx
        rows.append(Row(f"wsgi_stream PUT /files/up.bin, {label}", server,
                        _node(ws, server, o.threads, False, size, extra, f"_v{i}"), put,
                        ref=f"node {server}" if f"node {server}" in ids else "nginx",
                        targets=(faster(VS_NGINX.get(server, VS_NGINX_DEFAULT), "nginx"),), data=d,
                        id=f"node {server} {label}"))
    try:
        yield Batch(f"Upload, curl -T {d}", rows, notes=[
            "CPU s/GiB and peak RSS: the process the client talks to (node a / nginx front); 'peers RSS': node b's "
            "(same server as a) or the nginx WebDAV behind the proxy.",
            "waitress reads a whole request body (to a temporary file past 512 KiB) before it calls the app: "
            "under waitress an upload is received, then stored; uwsgi and gunicorn stream it.",
            f"Disk under the work dir: {'n/a' if disk is None else f'{disk:.0f}'} MB/s for "
            f"{fmt_size(min(size, GiB))} written + fsync (wsgi_stream fsyncs every upload before the rename, "
            "nginx WebDAV does not).",
            f"{o.threads} threads per WSGI server; curl -T with 'Expect:' disabled, file in the page cache."])
        shutil.rmtree(ws.path("upload"), ignore_errors=True)
        if o.fanout_servers.strip():
            yield fanout_batch(ws, o, data, size, disk)
    finally:
        shutil.rmtree(ws.path("upload"), ignore_errors=True)


BENCH = Benchmark("upload", __doc__, batches,
                  options={"size": Option("1G", "file size"),
                           "fanout_servers": Option("waitress,uwsgi", "servers of the fan-out batch ('' = skip it)"),
                           "variants": Option("", "'SERVER:LABEL=ARGS; ...': also the node (PUT /files/) with ARGS "
                                                  "added to deploy/'s settings")},
                  quick={"size": "32M"})

if __name__ == "__main__":
    main(BENCH)
