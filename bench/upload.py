#!/usr/bin/env python3
"""Uploads: curl -T of a file to a node (PUT /files/up.bin) and through a node to its peer
(PUT /nodes/b/files/up.bin on node a), config `uploads = true`.

One batch (--size, default 1 GiB), measured in the same rounds:
  * curl -T to nginx WebDAV (dav_methods PUT: body to a temp file, renamed);
  * curl -T to nginx proxy_pass (proxy_request_buffering off) -> nginx WebDAV: the reference
    of the upload through a peer;
  * the node under each server, started as deploy/ does, to itself and through a peer.
nginx does not fsync; wsgi_stream does (contract 4.2), so the disk's fsync speed (noted under
the table) bounds the node and not nginx. Each upload replaces the previous one.

How to run (repository root, the venv's python):

    python bench/upload.py [--size 1G] [--servers waitress,uwsgi,gunicorn] [--rounds 5] [--quick] [--keep]
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
from runner import Batch, Benchmark, Option, Row, System, faster, main, rss_at_most  # noqa: E402

RSS = 60.0
VS_NGINX = {"uwsgi": 1.0}   # x nginx WebDAV (issue 16); 0.5 for the others
VS_NGINX_DEFAULT = 0.5


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


def _node(ws, server, threads, through: bool, size: int):
    def start():
        roots = {n: _dir(ws, f"{server}_{int(through)}", f"root_{n}") for n in "ab"}
        nodes = servers.cluster(ws, f"upload-{server}", roots, server, threads, uploads=True,
                                start=None if through else "a")
        dest = os.path.join(roots["b" if through else "a"], "up.bin")

        def after():
            got = os.path.getsize(dest)
            if got != size:
                raise ValueError(f"stored file has {got} bytes, expected {size}")
            return ""
        return System(nodes["a"], peers=[nodes["b"]] if through else [], after=after)
    return start


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
                        ref="nginx", targets=(faster(vs, "nginx", True), rss_at_most(RSS)), data=d))
        rows.append(Row("wsgi_stream PUT /nodes/b/files/up.bin (a -> b)", server,
                        _node(ws, server, o.threads, True, size), put_b, ref="nginx proxy",
                        targets=(faster(VS_NGINX_DEFAULT, "nginx"), rss_at_most(RSS)), data=d))
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
    finally:
        shutil.rmtree(ws.path("upload"), ignore_errors=True)


BENCH = Benchmark("upload", __doc__, batches, options={"size": Option("1G", "file size")},
                  quick={"size": "32M"})

if __name__ == "__main__":
    main(BENCH)
