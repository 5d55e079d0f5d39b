"""Reporting: the one Markdown table printer, the tables of a batch, the JSON results, the machine description."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata

from processes import REPO_ROOT, child_env

PACKAGES = ("waitress", "uWSGI", "gunicorn", "werkzeug", "urllib3", "zipstream-new", "isal")
TOOLS = {"nginx": ["nginx", "-v"], "haproxy": ["haproxy", "-v"], "curl": ["curl", "--version"],
         "uwsgi": ["uwsgi", "--version"]}
ORDER = ["local", "forward", "zip", "upload", "many"]
# metric -> (key of a round's record, words before the target, unit)
METRICS = {"speed": ("mbps", "", " MB/s"), "cpu": ("cpu_per_gib", "CPU/GiB ", " s/GiB"),
           "rss": (None, "peak RSS ", " MiB"), "time": ("seconds", "time ", " s"),
           "entries": ("entries_per_s", "", " entries/s"), "ttfb": ("ttfb_s", "first byte ", " s")}
RSS_NOTE = ("peak RSS = the larger of VmHWM and VmRSS sampled every 0.1 s, of the largest process in the serving "
            "process tree, over all rounds (in brackets: after round 1).")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stamp() -> str:
    """The date of a run as it appears in result file names (UTC)."""
    return time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())


# ---------------------------------------------------------------- tables

def table(header: list[str], rows: list[list]) -> str:
    """A Markdown pipe table, aligned for the terminal too; columns empty in every row are left out."""
    cells = [[("" if c is None else str(c)) for c in r] for r in rows]
    keep = [i for i in range(len(header)) if any(r[i] for r in cells)] or list(range(len(header)))
    header = [header[i] for i in keep]
    cells = [[r[i] for i in keep] for r in cells]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def _num(v, digits: int | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{_digits(v) if digits is None else digits}f}"


def _digits(v: float) -> int:
    v = abs(v)
    return 0 if v >= 20 else 2 if v >= 0.1 or v == 0 else 3 if v >= 0.01 else 4


def spread(s: dict | None, unit: str = "", digits: int | None = None) -> str:
    """'median (min–max)' of a summary dict."""
    if not s or s.get("median") is None:
        return "n/a"
    if digits is None:
        digits = _digits(s["median"])
    if s["min"] == s["max"]:
        return f"{_num(s['median'], digits)}{unit}"
    return f"{_num(s['median'], digits)}{unit} ({_num(s['min'], digits)}–{_num(s['max'], digits)})"


def measured(t: dict) -> str:
    """A target's per-round values as 'median (min–max)' in its unit."""
    unit = "×" if t["vs"] else METRICS[t["metric"]][2]
    return spread(t, unit, 2 if t["metric"] == "ttfb" and not t["vs"] else None)


def render_batch(b: dict) -> str:
    """The tables and notes of one batch: systems, then targets with verdicts."""
    names = {r["id"]: r["system"] for r in b["rows"]}
    rows = []
    for r in b["rows"]:
        ok = not r["error"]
        rss = f"{_num(r.get('rss_mib'), 1)} ({_num(r.get('rss_mib_round1'), 1)})" if ok else "n/a"
        rows.append([r["system"], r["server"], r["data"], spread(r.get("mbps")) if ok else "n/a",
                     spread(r["entries_per_s"]) if ok and "entries_per_s" in r else "",
                     spread(r["ttfb_s"], digits=2) if ok and "ttfb_s" in r else "",
                     _num(r.get("cpu_per_gib")) if ok else "n/a", rss,
                     _num(r.get("peers_rss_mib"), 1) if "peers_rss_mib" in r else "",
                     spread(r.get("ratio_to_ref"), "×") if r["ref"] else "", names.get(r["ref"], "")])
    out = [f"### {b['title']}", "",
           table(["system", "server", "data", "MB/s", "entries/s", "first byte s", "CPU s/GiB", "peak RSS MiB",
                  "peers RSS MiB", "× ref", "ref"], rows)]
    targets = [[r["system"], r["server"], t["text"], measured(t), t["verdict"]]
               for r in b["rows"] for t in r.get("targets", [])]
    if targets:
        out += ["", table(["system", "server", "target", "measured", "verdict"], targets)]
    out += [""] + [f"- {n}" for n in batch_notes(b)] + [""]
    return "\n".join(out)


def batch_notes(b: dict) -> list[str]:
    load, busy = b["loadavg_1min"], b["cpu_busy_before_rounds"]
    repeat = b.get("repeat", 1)
    turn = f", {repeat} transfers back to back timed together" if repeat > 1 else ""
    notes = [f"{b['rounds']} rounds, every system once per round (order rotated each round{turn}); MB/s (MB = 10^6 B) "
             "and '× ref' (the ratio to the reference in the same round) are median (min–max) over the rounds; "
             "CPU s/GiB = utime+stime of the serving process tree over all rounds, per GiB moved.",
             f"Load average (1 min) during the batch: {spread(load, digits=2)}; CPUs busy just before the rounds: "
             f"{_num(busy['median'] * 100, 0)}% (max {_num(busy['max'] * 100, 0)}%)"
             + (f", after waiting up to {busy['waited_up_to_s']:g} s for < 15%." if busy["waited_up_to_s"] else "."),
             RSS_NOTE] + list(b["notes"])
    for r in b["rows"]:
        notes += [f"{r['system']} ({r['server']}): {n}" for n in r["notes"]]
        if r["error"]:
            notes.append(f"n/a {r['system']} ({r['server']}): {r['error']}")
    return notes


# ---------------------------------------------------------------- results

def _tool_version(argv: list[str]) -> str | None:
    """The version a tool prints first ('1.22.1' from 'nginx version: nginx/1.22.1'); None if missing."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=child_env())
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\d+\.\d+[\w.+~-]*", out.stdout + out.stderr)
    return found.group(0) if found else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _git() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", ".")),
                "branch": git("rev-parse", "--abbrev-ref", "HEAD")}
    except OSError:
        return {}


def machine() -> dict:
    """What the numbers were measured on: CPUs, memory, kernel, versions, load, code."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": _cpu_model(),
            "memory_gib": _memory_gib(), "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
            "os": _os_name(), "python": sys.version.split()[0], "packages": packages,
            "tools": {k: _tool_version(v) for k, v in TOOLS.items()}, "load_at_start": list(os.getloadavg()),
            "git": _git()}


def write_results(results: dict, directory: str) -> str:
    """bench/results/<bench>-<date>[-quick].json; returns its path."""
    os.makedirs(directory, exist_ok=True)
    name = f"{results['bench']}-{results['date']}{'-quick' if results['quick'] else ''}.json"
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return path


def machine_line(mc: dict) -> str:
    pk = mc.get("packages", {})
    return (f"{mc.get('cpu_model')}, {mc.get('nproc')} CPUs, {mc.get('memory_gib')} GiB RAM, {mc.get('kernel')}, "
            f"{mc.get('os')}, Python {mc.get('python')}; "
            + ", ".join(f"{k} {v}" for k, v in pk.items() if v) + "; "
            + ", ".join(f"{k} {v}" for k, v in mc.get("tools", {}).items() if v and k not in map(str.lower, pk)))


def headline(results: list[tuple[str, dict]], every_target: bool = False) -> str:
    """README's headline table: the headline targets (or every one) of the chosen results, with their source."""
    rows, sources = [], []
    results = sorted(results, key=lambda pr: (ORDER.index(pr[1]["bench"]) if pr[1]["bench"] in ORDER else 99))
    for path, res in results:
        loads = [b["loadavg_1min"] for b in res["batches"]]
        lo = min((x["min"] for x in loads if x["min"] is not None), default=None)
        hi = max((x["max"] for x in loads if x["max"] is not None), default=None)
        rounds = sorted({b["rounds"] for b in res["batches"]})
        git = res["machine"].get("git", {})
        sources.append(f"`{os.path.relpath(path, REPO_ROOT)}`: {res['date']}, "
                       f"{'/'.join(map(str, rounds))} rounds{' (quick)' if res['quick'] else ''}, "
                       f"load average {_num(lo, 2)}–{_num(hi, 2)}, "
                       f"commit {git.get('commit', '?')[:10]}{' + local changes' if git.get('dirty') else ''}")
        for b in res["batches"]:
            for r in b["rows"]:
                for t in r.get("targets", []):
                    if not (every_target or t.get("headline")):
                        continue
                    rows.append([res["bench"], r["system"], r["server"], r["data"], t["text"], measured(t),
                                 t["verdict"]])
    machines = sorted({machine_line(res["machine"]) for _, res in results})
    out = [table(["bench", "system", "server", "data", "target", "measured", "verdict"], rows), ""]
    out += ["Generated by `python bench/report.py` from:"] + [f"- {s}" for s in sources]
    out += ["", "Machine: " + " / ".join(machines)]
    return "\n".join(out)
