#!/usr/bin/env python3
"""Forwarding: GET /nodes/b/files/big.bin on node a, the file living on node b.

Batch "forwarding" (--size, default 1 GiB), measured in the same rounds, all from ONE nginx peer
(sendfile) serving the file, except the a -> b rows:
  * nginx proxy_pass -> the nginx peer (proxy_buffering on, no disk spill, HTTP/1.1 upstream);
  * HAProxy 2.x, `option splice-response` -> the nginx peer (the bytes never enter user space);
  * node a -> node b (both wsgi_stream, same server), under each server (deploy/ settings);
  * node a -> the nginx peer standing in for b, under each server: the forwarder alone,
    compared with HAProxy doing the same job;
  * node a -> node b with MALLOC_ARENA_MAX=N on a (--arena-max N; 0 = skip).
Batch "naive" (--naive-rounds, 0 = skip): the blog recipes (bench/naive_app.py, plain waitress)
from the same kind of nginx peer, on smaller files because they are so slow, each beside nginx
proxy_pass on the same file: 1-byte chunks (requests' iter_content() default) on --naive-size,
8 KiB chunks on --naive8k-size.

How to run (repository root, the venv's python):

    python bench/forward.py [--size 1G] [--servers waitress,uwsgi,gunicorn] [--arena-max 2]
        [--naive-size 512K] [--naive8k-size 64M] [--naive-rounds 3] [--rounds 5] [--quick] [--keep]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datafiles  # noqa: E402
import servers  # noqa: E402
from measuring import Download, fmt_size, parse_size  # noqa: E402
from runner import Batch, Benchmark, Option, Row, System, faster, main, rss_at_most  # noqa: E402

RSS = 60.0
VS_NGINX = 0.7      # x nginx proxy_pass
VS_HAPROXY = 1.0    # x HAProxy splice-response, same nginx peer (issue 16)


def _peer(ws, root):
    """The batch's one nginx peer (sendfile), shared by every row that reads from nginx."""
    return ws.shared("nginx peer", lambda: servers.nginx(ws, "peer", "static", root=root))


def _a_to_b(ws, roots, server, threads, env=None):
    def start():
        nodes = servers.cluster(ws, f"fwd-{server}", roots, server, threads, env=env)
        return System(nodes["a"], peers=[nodes["b"]])
    return start


def _a_to_nginx(ws, roots, server, threads):
    def start():
        peer = _peer(ws, roots["b"])
        nodes = servers.cluster(ws, f"fwd-nginx-{server}", roots, server, threads, urls={"b": peer.base_url},
                                start="a")
        return System(nodes["a"], peers=[peer])
    return start


def forwarding(ws, o) -> Batch:
    size = parse_size(o.size)
    roots = {"a": ws.path("fwd_root_a"), "b": ws.path("fwd_root_b")}
    os.makedirs(roots["a"], exist_ok=True)
    data = datafiles.warm(datafiles.random_file(ws.path("data", f"random-{size}.bin"), size))
    datafiles.place(data, os.path.join(roots["b"], "big.bin"))
    peer = lambda: _peer(ws, roots["b"])  # noqa: E731
    direct, through = Download(["/big.bin"], size), Download(["/nodes/b/files/big.bin"], size)
    d = fmt_size(size)
    rows = [Row("nginx proxy_pass -> nginx", "nginx",
                lambda: System(servers.nginx(ws, "front", "proxy", upstream=peer().base_url), [peer()]),
                direct, data=d, id="nginx"),
            Row("HAProxy splice-response -> nginx", "haproxy",
                lambda: System(servers.haproxy(ws, "front", peer().base_url), [peer()]),
                direct, ref="nginx", data=d, id="haproxy")]
    for server in o.server_list:
        rows.append(Row("wsgi_stream a -> wsgi_stream b", server, _a_to_b(ws, roots, server, o.threads), through,
                        ref="nginx", targets=(faster(VS_NGINX, "nginx"), rss_at_most(RSS)), data=d,
                        id=f"a-b {server}"))
        rows.append(Row("wsgi_stream a -> nginx as peer b", server, _a_to_nginx(ws, roots, server, o.threads),
                        through, ref="haproxy",
                        targets=(faster(VS_HAPROXY, "haproxy", True), faster(VS_NGINX, "nginx"), rss_at_most(RSS)),
                        data=d, id=f"a-nginx {server}"))
    if o.arena_max and "waitress" in o.server_list:
        rows.append(Row(f"wsgi_stream a -> wsgi_stream b, a with MALLOC_ARENA_MAX={o.arena_max}", "waitress",
                        _a_to_b(ws, roots, "waitress", o.threads, {"MALLOC_ARENA_MAX": str(o.arena_max)}),
                        through, ref="nginx", targets=(faster(VS_NGINX, "nginx"), rss_at_most(RSS)), data=d))
    return Batch(f"Forwarding, GET /nodes/b/files/big.bin on node a ({d})", rows,
                 notes=["CPU s/GiB and peak RSS: the forwarding process (node a, nginx front, HAProxy); "
                        "'peers RSS': node b's, or the nginx peer's.",
                        f"{o.threads} threads per WSGI server; page cache warm; curl to /dev/null."])


def naive(ws, o) -> Batch:
    root = ws.path("naive_root")
    rows = []
    for chunk, size_opt in ((1, o.naive_size), (8192, o.naive8k_size)):
        size = parse_size(size_opt)
        name = f"naive-{chunk}.bin"
        datafiles.place(datafiles.warm(datafiles.random_file(ws.path("data", f"random-{size}.bin"), size)),
                        os.path.join(root, name))
        get = Download([f"/{name}"], size, min_mbps=0.02)
        peer = lambda: _peer(ws, root)  # noqa: E731
        rows.append(Row("nginx proxy_pass -> nginx", "nginx",
                        lambda: System(servers.nginx(ws, "front", "proxy", upstream=peer().base_url), [peer()]),
                        get, data=fmt_size(size), id=f"nginx {chunk}"))
        recipe = "iter_content() (1-byte chunks)" if chunk == 1 else f"iter_content({chunk})"
        rows.append(Row(f"naive: {recipe} -> nginx", "waitress",
                        lambda c=chunk: System(servers.naive_app(
                            ws, f"forward-{c}", {"NAIVE_MODE": "forward", "NAIVE_UPSTREAMS": peer().base_url,
                                                 "NAIVE_FORWARD_CHUNK": str(c)}, o.threads), [peer()]),
                        get, ref=f"nginx {chunk}", data=fmt_size(size)))
    return Batch("Forwarding, the naive recipes (bench/naive_app.py) vs nginx proxy_pass", rows,
                 rounds=o.naive_rounds,
                 notes=["The naive forwarders move smaller files than the other batch: they are too slow for "
                        "the full size. urllib3's r.stream(n) is what requests' iter_content(n) calls."])


def batches(ws, o):
    yield forwarding(ws, o)
    if o.naive_rounds > 0:
        yield naive(ws, o)


BENCH = Benchmark(
    "forward", __doc__, batches,
    options={"size": Option("1G", "file size"),
             "arena_max": Option(2, "also node a (waitress) under MALLOC_ARENA_MAX=N (0 = skip)"),
             "naive_size": Option("512K", "file size for the 1-byte-chunk naive forwarder"),
             "naive8k_size": Option("64M", "file size for the 8 KiB-chunk naive forwarder"),
             "naive_rounds": Option(3, "rounds of the naive batch (0 = skip)")},
    quick={"size": "32M", "naive_size": "128K", "naive8k_size": "8M", "naive_rounds": 2})

if __name__ == "__main__":
    main(BENCH)
