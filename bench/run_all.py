#!/usr/bin/env python3
"""Run every benchmark in turn: one work dir (the test files are written once), one date stamp.

How to run (repository root, the venv's python; nginx, haproxy and curl on the PATH):

    python bench/run_all.py --quick          # smoke test: small files, 2 rounds, no verdicts (< 3 minutes)
    python bench/run_all.py                  # the recorded run: full sizes, 5 rounds (long: the machine is shared)
    python bench/run_all.py [--only local,forward,zip,upload,many] [--rounds 5] [--repeat 3] [--threads 64]
        [--servers waitress,uwsgi,gunicorn] [--size SIZE] [--wait-idle 20] [--out tables.md] [--keep] [--workdir DIR]
    python bench/report.py                   # README's headline table from the newest bench/results/*.json

Each benchmark writes bench/results/<bench>-<date>.json (quick runs: ...-quick.json, not committed).
Options left out keep each benchmark's own default (see `python bench/<script>.py --help`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cluster_zip  # noqa: E402
import forward  # noqa: E402
import local_download  # noqa: E402
import many_files  # noqa: E402
import reporting  # noqa: E402
import runner  # noqa: E402
import upload  # noqa: E402
from processes import Workspace, install_signal_handlers, stop_all  # noqa: E402

BENCHES = {b.name: b for b in (local_download.BENCH, forward.BENCH, cluster_zip.BENCH, upload.BENCH, many_files.BENCH)}
PASSED_ON = ("rounds", "repeat", "threads", "servers", "size", "wait_idle", "results")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: a smoke test")
    p.add_argument("--only", default=",".join(BENCHES), help=f"subset of {','.join(BENCHES)}")
    p.add_argument("--rounds", "--runs", dest="rounds", type=int)
    p.add_argument("--repeat", type=int, help="transfers back to back per row and round (each benchmark's default: 3)")
    p.add_argument("--threads", type=int)
    p.add_argument("--servers")
    p.add_argument("--size", help="override every benchmark's --size")
    p.add_argument("--wait-idle", dest="wait_idle", type=float)
    p.add_argument("--results", help="directory of the JSON results (default bench/results)")
    p.add_argument("--no-results", action="store_true")
    p.add_argument("--out", help="also write every table (Markdown) to this file")
    p.add_argument("--workdir")
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def bench_argv(args: argparse.Namespace, bench: runner.Benchmark | None = None) -> list[str]:
    """The options run_all passes on to each benchmark (only those given, and that it takes)."""
    argv = ["--quick"] if args.quick else []
    for dest in PASSED_ON:
        value = getattr(args, dest)
        if dest == "size" and bench is not None and "size" not in bench.options:
            continue  # e.g. many_files: sizes of its own
        if value is not None:
            argv += ["--" + dest.replace("_", "-"), str(value)]
    return argv + (["--no-results"] if args.no_results else [])


def main(argv=None) -> None:
    args = parse(argv)
    install_signal_handlers()
    stamp = reporting.stamp()
    tables = [f"Date: {stamp}", ""]
    t_all = time.monotonic()
    try:
        with Workspace(args.workdir, args.keep, "all") as ws:
            for name in [n.strip() for n in args.only.split(",") if n.strip()]:
                bench, t0 = BENCHES[name], time.monotonic()
                try:
                    results = runner.run(bench, runner.parse(bench, bench_argv(args, bench)), ws, stamp)
                    tables += [reporting.render_batch(b) for b in results["batches"]]
                except Exception as exc:  # noqa: BLE001 - one benchmark failing must not stop the others
                    msg = f"### {name}: n/a ({type(exc).__name__}: {exc})\n"
                    print(msg, flush=True)
                    tables.append(msg)
                reporting.log(f"{name} took {time.monotonic() - t0:.0f}s")
    except KeyboardInterrupt:
        stop_all()
        print("interrupted: every process started was stopped", file=sys.stderr)
        sys.exit(130)
    finally:
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(tables) + "\n")
    reporting.log(f"all benchmarks took {time.monotonic() - t_all:.0f}s")


if __name__ == "__main__":
    main()
