#!/usr/bin/env python3
"""Forwarding: GET /nodes/b/files/big.bin on node a (the file lives on node b).

Compared, in the same run, with
  * nginx proxy_pass -> nginx (sendfile) serving the same file;
  * node a forwarding from nginx standing in as peer b (isolates the forwarder);
  * the naive recipe (bench/naive_app.py under waitress: requests, stream=True,
    iter_content() with its default chunk size of 1 byte) from nginx, on a
    much smaller file (--naive-size, default 512 KiB) because it is so slow, and
    the same with iter_content(8192) (--naive8k-size, default 64 MiB).

    python bench/forward.py [--size 1G] [--runs 5] [--threads 8] [--servers waitress]
        [--naive-size 512K] [--naive8k-size 64M] [--naive-runs 3] [--keep] [--workdir DIR] [--quick]

Targets: >= 0.7x nginx proxy_pass, <= 60 MiB peak RSS on the forwarding node.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as c  # noqa: E402

RSS_TARGET = 60.0
NGINX_TARGET = 0.7


def main(argv=None) -> str:
    p = c.base_parser(__doc__.split("\n\n")[0], "1G")
    p.add_argument("--servers", default="waitress",
                   help="WSGI servers to run the forwarding node a under (peer b, when a wsgi_stream node, runs under the same server); "
                        "e.g. waitress,uwsgi,gunicorn (default waitress)")
    p.add_argument("--arena-max", type=int, default=2,
                   help="also run node a (waitress) with MALLOC_ARENA_MAX=N, to show glibc's per-thread "
                        "malloc arenas in the peak RSS (0 = skip; default 2)")
    p.add_argument("--naive-size", default="512K",
                   help="file size for the naive iter_content() forwarder (1-byte chunks; default 512K)")
    p.add_argument("--naive8k-size", default="64M",
                   help="file size for the naive iter_content(8192) forwarder (default 64M)")
    p.add_argument("--naive-runs", type=int, default=3, help="runs for the naive forwarders (default 3; 0 = skip)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs, args.naive_size, args.naive8k_size, args.naive_runs = "64M", 2, "256K", "16M", 1
    size = c.parse_size(args.size)
    naive_size = c.parse_size(args.naive_size)
    naive8k_size = c.parse_size(args.naive8k_size)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]

    with c.Bench(args, "forward") as b:
        data = c.make_random_file(b.path("data", f"random-{size}.bin"), size)
        naive_data = c.make_random_file(b.path("data", f"random-{naive_size}.bin"), naive_size)
        naive8k_data = c.make_random_file(b.path("data", f"random-{naive8k_size}.bin"), naive8k_size)
        root_a, root_b = b.path("root_a"), b.path("root_b")
        os.makedirs(root_a, exist_ok=True)
        c.link_or_copy(data, os.path.join(root_b, "big.bin"))
        c.link_or_copy(naive_data, os.path.join(root_b, "naive.bin"))
        c.link_or_copy(naive8k_data, os.path.join(root_b, "naive8k.bin"))
        c.warm_cache(data)
        c.warm_cache(naive_data)
        c.warm_cache(naive8k_data)

        def nginx_row():
            back = b.track(c.start_nginx(b.workdir, "back", b.host(), "static", root=root_b))
            front = b.track(c.start_nginx(b.workdir, "front", b.host(), "proxy", upstream=back.base_url))
            url = f"{front.base_url}/big.bin"
            c.probe(url)
            return c.Target([front], [url], size)

        def node_row(server, peer_is_nginx, env=None):
            def fn():
                ha, hb = b.host(), b.host()
                pa = c.free_port(ha)
                if peer_is_nginx:
                    peer = b.track(c.start_nginx(b.workdir, "peer", hb, "static", root=root_b))
                    url_b = peer.base_url
                else:
                    url_b = f"http://{hb}:{c.free_port(hb)}"
                cfg = c.write_cluster_config(b.path(f"forward-{server}-{int(peer_is_nginx)}-{pa}.toml"),
                                             {"a": (f"http://{ha}:{pa}", root_a), "b": (url_b, root_b)})
                if not peer_is_nginx:
                    peer = b.track(c.start_node(b.workdir, cfg, "b", hb, int(url_b.rsplit(":", 1)[1]),
                                                server=server, threads=args.threads))
                node_a = b.track(c.start_node(b.workdir, cfg, "a", ha, pa, server=server, threads=args.threads,
                                              env=env))
                url = f"{node_a.base_url}/nodes/b/files/big.bin"
                c.probe(url)

                def after(r):
                    r.extra["peer_rss"] = c.peak_rss_mib(peer.pid)
                return c.Target([node_a], [url], size, after=after)
            return fn

        def naive_row(chunk, name, nsize):
            def fn():
                back = b.track(c.start_nginx(b.workdir, "naive-back", b.host(), "static", root=root_b))
                host = b.host()
                proc = b.track(c.start_wsgi(b.workdir, f"naive-forward-{chunk}", "waitress", "naive_app:application",
                                            host, args.threads, c.BENCH_DIR,
                                            {"NAIVE_MODE": "forward", "NAIVE_UPSTREAMS": back.base_url,
                                             "NAIVE_FORWARD_CHUNK": str(chunk)}))
                url = f"{proc.base_url}/{name}"
                return c.measure("naive", proc, url, nsize, args.naive_runs, min_mbps=0.02)
            return fn

        items = [b.prepare("nginx proxy_pass -> nginx", "nginx", nginx_row)]
        for server in servers:
            for peer_is_nginx in (False, True):
                label = ("wsgi_stream a -> nginx as peer b" if peer_is_nginx
                         else "wsgi_stream a -> wsgi_stream b")
                items.append(b.prepare(label, server, node_row(server, peer_is_nginx)))
        if args.arena_max:
            items.append(b.prepare(f"wsgi_stream a -> wsgi_stream b, a with MALLOC_ARENA_MAX={args.arena_max}",
                                   "waitress", node_row("waitress", False, {"MALLOC_ARENA_MAX": str(args.arena_max)})))
        results = b.run(items, args.runs)
        nginx = results[0]
        rows = []
        for r in results[1:]:
            vs = c.ratio(r, nginx)
            met = [c.check(vs, ">=", NGINX_TARGET), c.check(r.rss_mib, "<=", RSS_TARGET)]
            met_s = "n/a" if "n/a" in met else ("yes" if met == ["yes", "yes"] else f"NO ({', '.join(met)})")
            peer = f"{r.extra['peer_rss']:.1f}" if "peer_rss" in r.extra else "n/a"
            rows.append([r.label, r.server, c.fmt_size(size)] + c.result_cells(r) + [peer, c._f(vs, ".2f"),
                         f">={NGINX_TARGET}x nginx, <={RSS_TARGET:.0f} MiB", met_s])
        rows.append(["nginx proxy_pass -> nginx", "nginx", c.fmt_size(size)] + c.result_cells(nginx) +
                     ["", "1.00" if nginx.ok else "n/a", "(reference)", ""])
        for chunk, name, nsize, label in ((0, "naive.bin", naive_size,
                                           "naive: requests iter_content() (default, 1-byte chunks) -> nginx"),
                                          (8192, "naive8k.bin", naive8k_size,
                                           "naive: requests iter_content(8192) -> nginx")):
            if args.naive_runs <= 0:
                continue
            naive = b.attempt(label, "waitress", naive_row(chunk, name, nsize))
            results.append(naive)
            rows.append([label, "waitress", c.fmt_size(nsize)]
                        + c.result_cells(naive) + ["", c._f(c.ratio(naive, nginx), ".3f"), "(reference)", ""])
        notes = [f"{args.runs} runs interleaved across systems ({args.naive_runs} for the naive rows, measured after), median (min-max) MB/s (MB = 10^6 B), "
                 "curl to /dev/null, page cache warm; "
                 f"{args.threads} threads per WSGI server.",
                 "CPU s/GiB and peak RSS are those of the forwarding process (node a, nginx front, naive app); "
                 "'peer RSS' is node b's (or nginx's) peak.",
                 f"The naive forwarders move smaller files ({c.fmt_size(naive_size)} and {c.fmt_size(naive8k_size)}) "
                 f"than the others ({c.fmt_size(size)}): they are too slow for the full size.",
                 "nginx front: proxy_buffering on, proxy_max_temp_file_size 0 (no disk spill), HTTP/1.1 upstream."]
        return c.print_table(f"Forwarding, GET /nodes/b/files/big.bin on node a ({c.fmt_size(size)})",
                             ["system", "server", "file", "MB/s", "CPU s/GiB", "peak RSS MiB", "peer RSS MiB",
                              "x nginx proxy", "target", "met"], rows, notes + c.error_notes(results))


if __name__ == "__main__":
    c.run_main(main)
