#!/usr/bin/env python3
"""Uploads: ``curl -T`` of a file to a node (PUT /files/up.bin) and through a node
to its peer (PUT /nodes/b/files/up.bin on node a), config ``uploads = true``.

Compared, in the same run, with
  * curl -T to nginx WebDAV (``dav_methods PUT``: body to a temp file, renamed);
  * curl -T to nginx proxy_pass (proxy_request_buffering off) -> nginx WebDAV,
    the reference for the forwarded upload.
nginx does not fsync; wsgi_stream does (contract 4.2), so the disk's fsync speed
(printed) bounds it.

    python bench/upload.py [--size 1G] [--runs 5] [--threads 8] [--servers waitress]
        [--keep] [--workdir DIR] [--quick]

Targets: >= 0.5x nginx WebDAV PUT, <= 60 MiB peak RSS on the node the client talks to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as c  # noqa: E402

RSS_TARGET = 60.0
NGINX_TARGET = 0.5


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
        return (size / (time.monotonic() - t0)) / 1e6
    except OSError:
        return None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def main(argv=None) -> str:
    p = c.base_parser(__doc__.split("\n\n")[0], "1G")
    p.add_argument("--servers", default="waitress",
                   help="WSGI servers to run node a under (peer b runs under the same server), e.g. waitress,uwsgi,gunicorn")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs = "64M", 2
    size = c.parse_size(args.size)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]

    with c.Bench(args, "upload") as b:
        data = c.make_random_file(b.path("data", f"random-{size}.bin"), size)
        c.warm_cache(data)
        up = b.path("upload")
        subprocess.run(["sync"], check=False)
        disk = disk_fsync_mbps(b.path("fsync-test.bin"), min(size, c.GiB))

        def nginx_row():
            root_n = os.path.join(up, "nginx")
            os.makedirs(root_n, exist_ok=True)
            ng = b.track(c.start_nginx(b.workdir, "dav", b.host(), "dav", root=root_n))
            c.probe(f"{ng.base_url}/probe.bin", "PUT", b"x", expect=(201, 204))
            return c.Target([ng], [f"{ng.base_url}/up.bin"], size, upload=data, expect_codes=(201, 204))

        def nginx_proxy_row():
            root_n = os.path.join(up, "nginx_proxied")
            os.makedirs(root_n, exist_ok=True)
            back = b.track(c.start_nginx(b.workdir, "dav-back", b.host(), "dav", root=root_n))
            front = b.track(c.start_nginx(b.workdir, "dav-front", b.host(), "proxy", upstream=back.base_url))
            c.probe(f"{front.base_url}/probe.bin", "PUT", b"x", expect=(201, 204))
            return c.Target([front], [f"{front.base_url}/up.bin"], size, upload=data, expect_codes=(201, 204))

        def node_row(server, through):
            def fn():
                root_a = os.path.join(up, f"{server}_{int(through)}", "root_a")
                root_b = os.path.join(up, f"{server}_{int(through)}", "root_b")
                os.makedirs(root_a, exist_ok=True)
                os.makedirs(root_b, exist_ok=True)
                ha, hb = b.host(), b.host()
                pa, pb = c.free_port(ha), c.free_port(hb)
                cfg = c.write_cluster_config(b.path(f"upload-{server}-{int(through)}.toml"),
                                             {"a": (f"http://{ha}:{pa}", root_a), "b": (f"http://{hb}:{pb}", root_b)},
                                             uploads=True)
                peer = (b.track(c.start_node(b.workdir, cfg, "b", hb, pb, server=server, threads=args.threads))
                        if through else None)
                node_a = b.track(c.start_node(b.workdir, cfg, "a", ha, pa, server=server, threads=args.threads))
                prefix = "/nodes/b/files" if through else "/files"
                dest_root = root_b if through else root_a
                c.probe(f"{node_a.base_url}{prefix}/probe.bin", "PUT", b"x", expect=(201, 204))

                def after(r):
                    got = os.path.getsize(os.path.join(dest_root, "up.bin"))
                    if got != size:
                        r.error = f"stored file has {got} bytes, expected {size}"
                    if peer is not None:
                        r.extra["peer_rss"] = c.peak_rss_mib(peer.pid)
                return c.Target([node_a], [f"{node_a.base_url}{prefix}/up.bin"], size, upload=data,
                                expect_codes=(201, 204), after=after)
            return fn

        items = [b.prepare("nginx WebDAV PUT", "nginx", nginx_row),
                 b.prepare("nginx proxy_pass -> nginx WebDAV PUT", "nginx", nginx_proxy_row)]
        for server in servers:
            for through, label in ((False, "wsgi_stream PUT /files/up.bin"),
                                   (True, "wsgi_stream PUT /nodes/b/files/up.bin (a -> b)")):
                items.append(b.prepare(label, server, node_row(server, through)))
        try:
            results = b.run(items, args.runs)
        finally:
            shutil.rmtree(up, ignore_errors=True)
        nginx, nginx_proxy = results[0], results[1]
        rows = []
        for r in results[2:]:
            through, label, server = "/nodes/" in r.label, r.label, r.server
            vs = c.ratio(r, nginx)
            met = [c.check(vs, ">=", NGINX_TARGET), c.check(r.rss_mib, "<=", RSS_TARGET)]
            met_s = "n/a" if "n/a" in met else ("yes" if met == ["yes", "yes"] else f"NO ({', '.join(met)})")
            peer = f"{r.extra['peer_rss']:.1f}" if "peer_rss" in r.extra else ""
            rows.append([label, server] + c.result_cells(r) + [peer, c._f(vs, ".2f"),
                         c._f(c.ratio(r, nginx_proxy), ".2f") if through else "",
                         f">={NGINX_TARGET}x nginx, <={RSS_TARGET:.0f} MiB", met_s])
        rows.append(["nginx WebDAV PUT", "nginx"] + c.result_cells(nginx) +
                    ["", "1.00" if nginx.ok else "n/a", "", "(reference)", ""])
        rows.append(["nginx proxy_pass -> nginx WebDAV PUT", "nginx"] + c.result_cells(nginx_proxy) +
                     ["", c._f(c.ratio(nginx_proxy, nginx), ".2f"), "1.00" if nginx_proxy.ok else "n/a",
                      "(reference)", ""])
        notes = [f"curl -T of a {c.fmt_size(size)} random file (page cache warm, 'Expect:' disabled), {args.runs} runs "
                 "interleaved across systems, "
                 f"median (min-max) MB/s (MB = 10^6 B); {args.threads} threads per WSGI server; each upload replaces "
                 "the previous one.",
                 "CPU s/GiB and peak RSS: the process the client talks to (node a / nginx front); 'peer RSS' is node b's "
                 "(same WSGI server as a).",
                 "waitress reads a whole request body (to a temporary file past 512 KiB) before it calls the app, so "
                 "under waitress an upload is received, then stored: not pipelined; uwsgi and gunicorn stream it.",
                 f"Disk under the work dir: {c._f(disk, '.0f')} MB/s for {c.fmt_size(min(size, c.GiB))} written + fsync "
                 "(wsgi_stream fsyncs every upload before the rename, nginx WebDAV does not)."]
        return c.print_table(f"Upload, curl -T {c.fmt_size(size)}",
                             ["system", "server", "MB/s", "CPU s/GiB", "peak RSS MiB", "peer RSS MiB", "x nginx",
                              "x nginx proxy", "target", "met"], rows, notes + c.error_notes(results))


if __name__ == "__main__":
    c.run_main(main)
