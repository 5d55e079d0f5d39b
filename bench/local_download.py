#!/usr/bin/env python3
"""Local download: GET /files/big.bin from one wsgi_stream node.

Compared, in the same run, with
  * bench/bare_app.py under the same WSGI server and threads (only
    ``wsgi.file_wrapper(open(path), 1 MiB)``: the best a WSGI app can do there);
  * nginx with sendfile (one worker).

    python bench/local_download.py [--size 1G] [--runs 5] [--threads 8]
        [--servers waitress,uwsgi,gunicorn] [--keep] [--workdir DIR] [--quick]

Targets: >= 0.95x the bare app (same server), <= 60 MiB peak RSS; under uwsgi
also >= 0.8x nginx.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as c  # noqa: E402

RSS_TARGET = 60.0
BARE_TARGET = 0.95
NGINX_TARGET_UWSGI = 0.8


def main(argv=None) -> str:
    p = c.base_parser(__doc__.split("\n\n")[0], "1G")
    p.add_argument("--servers", default="waitress,uwsgi,gunicorn",
                   help="comma-separated WSGI servers to run both apps under (default waitress,uwsgi,gunicorn)")
    p.add_argument("--arena-max", type=int, default=2,
                   help="also run the node under waitress with MALLOC_ARENA_MAX=N, to show glibc's per-thread "
                        "malloc arenas in the peak RSS (0 = skip; default 2)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs = "64M", 2
    size = c.parse_size(args.size)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]

    with c.Bench(args, "local") as b:
        data = c.make_random_file(b.path("data", f"random-{size}.bin"), size)
        root = b.path("root_a")
        c.link_or_copy(data, os.path.join(root, "big.bin"))
        c.warm_cache(data)

        def nginx_row():
            ng = b.track(c.start_nginx(b.workdir, "static", b.host(), "static", root=root))
            url = f"{ng.base_url}/big.bin"
            c.probe(url)
            return c.Target([ng], [url], size)

        def bare_row(server):
            def fn():
                host = b.host()
                if server == "waitress":
                    port = c.free_port(host)
                    proc = c.start_process(f"bare-waitress-{port}",
                                           [c.PYTHON, os.path.join(c.BENCH_DIR, "bare_app.py"), "--root", root,
                                            "--listen", f"{host}:{port}", "--threads", str(args.threads)],
                                           b.path("logs"), host=host, port=port)
                else:
                    proc = c.start_wsgi(b.workdir, f"bare-{server}", server, "bare_app:application", host,
                                        args.threads, c.BENCH_DIR, {"BARE_ROOT": root})
                b.track(proc)
                url = f"{proc.base_url}/big.bin"
                c.probe(url)
                return c.Target([proc], [url], size)
            return fn

        def node_row(server, env=None):
            def fn():
                host = b.host()
                port = c.free_port(host)
                cfg = c.write_cluster_config(b.path(f"local-{server}-{port}.toml"),
                                             {"a": (f"http://{host}:{port}", root)})
                proc = b.track(c.start_node(b.workdir, cfg, "a", host, port, server=server, threads=args.threads,
                                            env=env))
                url = f"{proc.base_url}/files/big.bin"
                c.probe(url)
                return c.Target([proc], [url], size)
            return fn

        # every system is started first, then measured with runs interleaved
        items = [b.prepare("nginx sendfile", "nginx", nginx_row)]
        for server in servers:
            items.append(b.prepare("bare file_wrapper app", server, bare_row(server)))
            items.append(b.prepare("wsgi_stream /files/", server, node_row(server)))
        arena = args.arena_max and "waitress" in servers
        if arena:
            items.append(b.prepare(f"wsgi_stream /files/, MALLOC_ARENA_MAX={args.arena_max}", "waitress",
                                   node_row("waitress", {"MALLOC_ARENA_MAX": str(args.arena_max)})))
        results = b.run(items, args.runs)
        nginx = results[0]
        rows = []
        pairs = [(server, results[1 + 2 * k], results[2 + 2 * k]) for k, server in enumerate(servers)]
        if arena:
            pairs.insert(servers.index("waitress") + 1,
                         ("waitress", results[1 + 2 * servers.index("waitress")], results[-1]))
        for server, bare, node in pairs:
            for r in ((bare, node) if node is not results[-1] or not arena else (node,)):
                vs_bare = c.ratio(r, bare) if r is node else None
                vs_nginx = c.ratio(r, nginx)
                if r is node:
                    target = f">={BARE_TARGET}x bare, <={RSS_TARGET:.0f} MiB"
                    met = [c.check(vs_bare, ">=", BARE_TARGET), c.check(r.rss_mib, "<=", RSS_TARGET)]
                    if server == "uwsgi":
                        target += f", >={NGINX_TARGET_UWSGI}x nginx"
                        met.append(c.check(vs_nginx, ">=", NGINX_TARGET_UWSGI))
                    met_s = "n/a" if "n/a" in met else ("yes" if all(m == "yes" for m in met) else
                                                        "NO (" + ", ".join(m for m in met) + ")")
                else:
                    target, met_s = "(reference)", ""
                rows.append([server, r.label] + c.result_cells(r) +
                            [c._f(vs_bare, ".2f") if r is node else "1.00" if r.ok else "n/a",
                             c._f(vs_nginx, ".2f"), target, met_s])
        rows.append(["nginx", "sendfile, 1 worker"] + c.result_cells(nginx) + ["", "1.00" if nginx.ok else "n/a",
                                                                                "(reference)", ""])
        notes = [f"{c.fmt_size(size)} random file, page cache warm, {args.runs} runs interleaved across systems (shuffled each round), median (min-max) MB/s "
                 f"(MB = 10^6 B), curl to /dev/null; {args.threads} threads per WSGI server.",
                 "CPU s/GiB = utime+stime of the server process tree, per GiB sent.",
                 "met: 'NO (a, b, c)' lists each part of the target in order."]
        return c.print_table(f"Local download, GET /files/big.bin ({c.fmt_size(size)})",
                             ["server", "app", "MB/s", "CPU s/GiB", "peak RSS MiB", "x bare", "x nginx",
                              "target", "met"], rows, notes + c.error_notes(results))


if __name__ == "__main__":
    c.run_main(main)
