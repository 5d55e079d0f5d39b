#!/usr/bin/env python3
"""README's headline table, regenerated from recorded results: never typed by hand.

    python bench/report.py                                  # newest non-quick result of each bench
    python bench/report.py bench/results/local-....json ... # chosen files
    python bench/report.py --print                          # to stdout, README untouched

The table (the targets declared with headline=True, or --all: measured median (min–max) over the rounds, verdict)
replaces what lies between the lines `<!-- bench-table -->` and `<!-- /bench-table -->` of
README.md (--readme FILE for another file); without those markers it is printed instead.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reporting  # noqa: E402
from processes import BENCH_DIR, REPO_ROOT  # noqa: E402

START, END = "<!-- bench-table -->", "<!-- /bench-table -->"


def newest(results_dir: str, quick: bool = False) -> list[str]:
    """The newest results file of each bench in results_dir (quick ones only when asked)."""
    best: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        is_quick = path.endswith("-quick.json")
        if is_quick != quick:
            continue
        bench = os.path.basename(path).split("-", 1)[0]
        best[bench] = path  # sorted: names end in a sortable UTC date
    return list(best.values())


def replace_between_markers(text: str, table: str) -> str | None:
    """text with the part between the markers replaced by table; None if the markers are missing."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        return None
    return text[:i + len(START)] + "\n" + table.rstrip() + "\n" + text[j:]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="results files (default: the newest of each bench in --results)")
    p.add_argument("--results", default=os.path.join(BENCH_DIR, "results"))
    p.add_argument("--quick", action="store_true", help="pick the newest quick results instead (smoke test)")
    p.add_argument("--readme", default=os.path.join(REPO_ROOT, "README.md"))
    p.add_argument("--print", dest="to_stdout", action="store_true", help="print the table, don't touch README")
    p.add_argument("--all", dest="every_target", action="store_true",
                   help="every target, not only those declared headline=True")
    args = p.parse_args(argv)
    files = args.files or newest(args.results, args.quick)
    if not files:
        sys.exit(f"no results files in {args.results} (run python bench/run_all.py first)")
    results = []
    for path in files:
        with open(path) as f:
            results.append((os.path.abspath(path), json.load(f)))
    table = reporting.headline(results, args.every_target)
    if args.to_stdout:
        print(table)
        return
    try:
        with open(args.readme) as f:
            text = f.read()
    except OSError:
        text = ""
    new = replace_between_markers(text, table)
    if new is None:
        print(f"(no {START} ... {END} markers in {args.readme}: the table follows)", file=sys.stderr)
        print(table)
        return
    with open(args.readme, "w") as f:
        f.write(new)
    print(f"{args.readme}: headline table regenerated from {len(files)} results files", file=sys.stderr)


if __name__ == "__main__":
    main()
