#!/usr/bin/env python3
"""Run every benchmark in turn and print all tables (optionally also into a file).

    python bench/run_all.py [--quick] [--runs 5] [--threads 8] [--only local,forward,zip,upload]
        [--servers waitress,uwsgi,gunicorn] [--size SIZE] [--out tables.md] [--keep] [--workdir DIR]

The scripts share one work dir, so the random test files are written once.
Each script keeps its own default size (1 GiB; 256 MiB for the cluster ZIP)
unless --size is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster_zip  # noqa: E402
import common as c  # noqa: E402
import forward  # noqa: E402
import local_download  # noqa: E402
import upload  # noqa: E402

SCRIPTS = {"local": local_download, "forward": forward, "zip": cluster_zip, "upload": upload}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 2 runs: a smoke test")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--size", default=None, help="override every script's --size")
    p.add_argument("--only", default=",".join(SCRIPTS), help=f"subset of {','.join(SCRIPTS)}")
    p.add_argument("--servers", default="waitress,uwsgi,gunicorn", help="WSGI servers for local_download.py, forward.py and upload.py")
    p.add_argument("--out", default=None, help="also write the tables (Markdown) to this file")
    p.add_argument("--wait-idle", type=float, default=20.0, help="see the scripts' --wait-idle")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)

    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="wsgi_stream_bench_all_")
    tables = [f"Machine: {c.machine_line()}", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    print("\n".join(tables), flush=True)
    try:
        for name in [n.strip() for n in args.only.split(",") if n.strip()]:
            mod = SCRIPTS[name]
            sub = ["--runs", str(args.runs), "--threads", str(args.threads), "--workdir", workdir, "--keep",
                   "--wait-idle", str(args.wait_idle)]
            if args.quick:
                sub.append("--quick")
            if args.size:
                sub += ["--size", args.size]
            if name in ("local", "forward", "upload"):
                sub += ["--servers", args.servers]
            t0 = time.monotonic()
            try:
                tables.append(mod.main(sub))
            except SystemExit as exc:  # argparse error in a script
                tables.append(f"### {name}: exited ({exc.code})\n")
            except Exception as exc:  # noqa: BLE001 - one script failing must not stop the others
                msg = f"### {name}: n/a ({type(exc).__name__}: {exc})\n"
                print(msg, flush=True)
                tables.append(msg)
            c.log(f"{name} took {time.monotonic() - t0:.0f}s")
    finally:
        c.stop_all()
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(tables) + "\n")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    c.run_main(main)
