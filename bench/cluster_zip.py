#!/usr/bin/env python3
"""Cluster ZIP: GET /cluster/files/f.bin on node a, the file present on 3 nodes (a, b, c).

Compared, in the same run, with
  * plain forwarding of the same bytes through the same node a:
    GET /nodes/a/files/f.bin, /nodes/b/files/f.bin, /nodes/c/files/f.bin in turn
    (a is served locally, b and c are forwarded: the same reads the ZIP does);
  * the naive blog recipe (bench/naive_app.py under waitress: requests +
    zipstream-new, ZIP_DEFLATED, iter_content(8192)) of 3 copies from nginx,
    on a smaller file (--naive-size, default 64 MiB).
Runs at --size and at twice --size, each with fresh processes, to show that peak
RSS stays flat.

    python bench/cluster_zip.py [--size 256M] [--runs 5] [--threads 8]
        [--naive-size 64M] [--naive-runs 3] [--verify] [--keep] [--workdir DIR] [--quick]

Targets: >= 0.8x forwarding, <= 60 MiB peak RSS on node a, at both sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common as c  # noqa: E402

RSS_TARGET = 60.0
FWD_TARGET = 0.8


def verify_zip(url: str, path: str, member_size: int, data_path: str) -> str:
    """Download once to a file and check it with zipfile: returns a one-line verdict."""
    subprocess.run(["curl", "-s", "-o", path, url], check=True)
    try:
        crc = 0
        with open(data_path, "rb") as f:
            while chunk := f.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            bad = [i.filename for i in infos if i.filename.endswith("f.bin")
                   and (i.file_size != member_size or i.CRC != crc)]
            names = ", ".join(i.filename for i in infos)
            tested = z.testzip()
        verdict = "OK" if not bad and tested is None else f"BAD (members {bad}, testzip {tested})"
        return f"{verdict}: members {names}"
    except (zipfile.BadZipFile, OSError) as exc:
        return f"BAD: {type(exc).__name__}: {exc}"
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def main(argv=None) -> str:
    p = c.base_parser(__doc__.split("\n\n")[0], "256M")
    p.add_argument("--naive-size", default="64M", help="member size for the naive deflating recipe (default 64M)")
    p.add_argument("--naive-runs", type=int, default=3, help="runs for the naive recipe (default 3; 0 = skip)")
    p.add_argument("--no-double", action="store_true", help="skip the run at twice --size")
    p.add_argument("--verify", action="store_true",
                   help="also download each archive once to disk and check it with zipfile (sizes, CRCs)")
    p.add_argument("--arena-max", type=int, default=2,
                   help="also run the ZIP with every node under MALLOC_ARENA_MAX=N, to show glibc's per-thread "
                        "malloc arenas in the peak RSS (0 = skip; default 2)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs, args.naive_size, args.naive_runs = "32M", 2, "8M", 1
    size = c.parse_size(args.size)
    sizes = [size] if args.no_double else [size, 2 * size]
    naive_size = c.parse_size(args.naive_size)

    with c.Bench(args, "zip") as b:
        rows, results, notes_extra = [], [], []

        def start_cluster(tag, roots, env=None):
            hosts = {n: b.host() for n in "abc"}
            ports = {n: c.free_port(hosts[n]) for n in "abc"}
            cfg = c.write_cluster_config(b.path(f"zip-{tag}.toml"),
                                         {n: (f"http://{hosts[n]}:{ports[n]}", roots[n]) for n in "abc"})
            procs = {}
            for n in "cba":
                procs[n] = b.track(c.start_node(b.workdir, cfg, n, hosts[n], ports[n], threads=args.threads,
                                                env=env))
            return procs

        for s in sizes:
            data = c.make_random_file(b.path("data", f"random-{s}.bin"), s)
            roots = {n: b.path(f"zip_{s}", f"root_{n}") for n in "abc"}
            for n in "abc":
                c.link_or_copy(data, os.path.join(roots[n], "f.bin"))
            c.warm_cache(data)

            def zip_row(env=None):
                procs = start_cluster(f"zip-{s}-{bool(env)}", roots, env)
                url = f"{procs['a'].base_url}/cluster/files/f.bin"
                hdrs = c.probe(url)
                clen = int(hdrs["content-length"]) if "content-length" in hdrs else None
                if clen is not None and clen < 3 * s:
                    raise c.Unavailable(f"Content-Length {clen} < 3 x {s}")

                def after(r):
                    r.extra["peers_rss"] = max(c.peak_rss_mib(procs[n].pid) for n in "bc")
                    if args.verify:  # after the timed runs, so that it does not raise the peak RSS
                        notes_extra.append(f"verify {c.fmt_size(s)}: " +
                                           verify_zip(url, b.path("check.zip"), s, data))
                return c.Target([procs["a"]], [url], clen, after=after)

            def fwd_row():
                procs = start_cluster(f"fwd-{s}", roots)
                urls = [f"{procs['a'].base_url}/nodes/{n}/files/f.bin" for n in "abc"]
                for u in urls:
                    c.probe(u)

                def after(r):
                    r.extra["peers_rss"] = max(c.peak_rss_mib(procs[n].pid) for n in "bc")
                return c.Target([procs["a"]], urls, s, after=after)

            items = [b.prepare("wsgi_stream /cluster/files/f.bin (stored ZIP)", "waitress", zip_row),
                     b.prepare("3 x forward (/nodes/{a,b,c}/files/f.bin)", "waitress", fwd_row)]
            if args.arena_max:
                items.append(b.prepare(f"wsgi_stream /cluster/files/f.bin, MALLOC_ARENA_MAX={args.arena_max}",
                                       "waitress", lambda: zip_row({"MALLOC_ARENA_MAX": str(args.arena_max)})))
            z, fwd, *za = b.run(items, args.runs)
            results += [z, fwd]
            def met_of(r):
                vs = c.ratio(r, fwd)
                met = [c.check(vs, ">=", FWD_TARGET), c.check(r.rss_mib, "<=", RSS_TARGET)]
                return ("n/a" if "n/a" in met else ("yes" if met == ["yes", "yes"] else f"NO ({', '.join(met)})"),
                        c._f(vs, ".2f"))
            tgt = f">={FWD_TARGET}x forwarding, <={RSS_TARGET:.0f} MiB"
            for r, tgt, (m, rt) in [(z, tgt, met_of(z))] + [(r2, tgt, met_of(r2)) for r2 in za] + \
                                   [(fwd, "(reference)", ("", "1.00" if fwd.ok else "n/a"))]:
                peers = f"{r.extra['peers_rss']:.1f}" if "peers_rss" in r.extra else "n/a"
                rows.append([r.label, f"3 x {c.fmt_size(s)}"] + c.result_cells(r) + [peers, rt, tgt, m])

        def naive_row():
            root_n = b.path("root_naive")
            nd = c.make_random_file(b.path("data", f"random-{naive_size}.bin"), naive_size)
            c.link_or_copy(nd, os.path.join(root_n, "f.bin"))
            c.warm_cache(nd)
            back = b.track(c.start_nginx(b.workdir, "zip-naive-back", b.host(), "static", root=root_n))
            host = b.host()
            proc = b.track(c.start_wsgi(b.workdir, "naive-zip", "waitress", "naive_app:application", host,
                                        args.threads, c.BENCH_DIR,
                                        {"NAIVE_MODE": "zip", "NAIVE_UPSTREAMS": ",".join([back.base_url] * 3)}))
            return c.measure("", proc, f"{proc.base_url}/f.bin", None, args.naive_runs, min_mbps=0.5)

        naive = b.attempt("naive: requests + zipstream ZIP_DEFLATED -> nginx", "waitress", naive_row) \
            if args.naive_runs > 0 else c.na("naive", "skipped (--naive-runs 0)")
        results.append(naive)
        ref = results[1] if len(results) > 1 else None
        if args.naive_runs > 0:
            rows.append([naive.label, f"3 x {c.fmt_size(naive_size)}"] + c.result_cells(naive) +
                        ["", c._f(c.ratio(naive, ref), ".2f"), "(reference)", ""])
        notes = [f"{args.runs} runs, ZIP and forwarding interleaved ({args.naive_runs} for the naive row), median (min-max) MB/s of the bytes "
                 "received (MB = 10^6 B), curl to /dev/null, page cache warm; every node under waitress, "
                 f"{args.threads} threads; all 3 copies are hard links of one random file.",
                 "Each row has its own fresh 3-node cluster; CPU s/GiB and peak RSS are node a's (the one the client "
                 "talks to); 'peers RSS' is the larger of b's and c's.",
                 "Forwarding reference: the same 3 reads as the ZIP (a local, b and c forwarded), "
                 "throughput = total bytes / total time.",
                 f"The naive recipe deflates (random data: no gain) and moves 3 x {c.fmt_size(naive_size)}; its "
                 "ratio is against the first forwarding row."]
        return c.print_table(f"Cluster ZIP, GET /cluster/files/f.bin on node a, file on 3 nodes",
                             ["system", "data", "MB/s", "CPU s/GiB", "peak RSS MiB", "peers RSS MiB",
                              "x forwarding", "target", "met"], rows,
                             notes + notes_extra + c.error_notes([r for r in results if r.label != "naive"]))


# (results holds the ZIP and forwarding rows; the MALLOC_ARENA_MAX rows are only printed)


if __name__ == "__main__":
    c.run_main(main)
