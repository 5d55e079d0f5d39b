"""The one runner of every benchmark: start a batch of rows, measure them in interleaved rounds, judge targets.

A benchmark script declares `BENCH = Benchmark(...)` whose `batches(ws, opts)` yields `Batch`es:
lists of `Row`s, each row being

  * a system: its name and server,
  * how to start it: `start()` -> `System` (the process the client talks to, its peers),
  * what to measure: a `measuring.Download` / `Upload` / `Concurrent`,
  * which reference it is compared with (`ref`, another row's id) and its `Target`s.

Theory of operation (why the numbers reproduce on a busy machine):

  1. every row of a batch is started first (a row that cannot start becomes "n/a" with the reason);
  2. then R rounds (--rounds, default 5): each round runs every row once, in an order
     rotated every round (A B C, B C A, C A B, ...), so that a row and its reference always
     run minutes apart at most and no system is always first or last; a row's turn is
     --repeat transfers back to back (default 3), timed together, so that a round's figure
     is not a single sub-second transfer that one hiccup of a busy machine decides;
  3. every comparison is made *per round* (row's MB/s in round r / reference's in round r)
     and reported as median (min-max); so are CPU s/GiB;
  4. a target gets a verdict only with at least MIN_ROUNDS rounds and when the spread of the
     per-round values toward the target is no wider than the margin between their median and
     the target: every round on the same side of it ("yes" or "NO"); otherwise it says
     "no verdict: spread wider than margin";
  5. the 1-minute load average and how busy the CPUs were just before each round are
     recorded with the batch, and everything goes to bench/results/<bench>-<date>.json
     (bench/report.py makes README's headline table from such files).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

import measuring as m
import reporting
from processes import BENCH_DIR, Proc, Unavailable, Workspace, install_signal_handlers, stop_all

MIN_ROUNDS = 5
NO_VERDICT_SPREAD = "no verdict: spread wider than margin"
DEPLOY_THREADS = 64  # deploy/uwsgi.ini, deploy/gunicorn.conf.py, deploy/wsgi_stream@.service


@dataclass(frozen=True)
class Target:
    """metric op value, of this row alone (vs=None) or as a ratio to row `vs`.

    metric: one of reporting.METRICS: 'speed' (MB/s), 'cpu' (CPU s/GiB), 'rss' (peak RSS MiB, one
    value per batch), 'time' (s per run), 'entries' (archive entries/s), 'ttfb' (s to the first byte)."""
    metric: str
    op: str
    value: float
    vs: str | None = None
    headline: bool = False  # shown in README's headline table (bench/report.py; --all shows every target)

    def text(self, names: dict[str, str]) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        _, what, unit = reporting.METRICS[self.metric]
        if self.vs is not None:
            return f"{what}{sign}{self.value:g}× {names.get(self.vs, self.vs)}"
        return f"{what}{sign}{self.value:g}{unit}"


def faster(ratio: float, vs: str, headline: bool = False) -> Target:
    """MB/s at least `ratio` × row vs's, round by round."""
    return Target("speed", ">=", ratio, vs, headline)


def cpu_at_most(ratio: float, vs: str, headline: bool = False) -> Target:
    """CPU s/GiB at most `ratio` × row vs's, round by round."""
    return Target("cpu", "<=", ratio, vs, headline)


def rss_at_most(mib: float, headline: bool = False) -> Target:
    return Target("rss", "<=", mib, None, headline)


def speed_at_least(mbps: float, headline: bool = False) -> Target:
    return Target("speed", ">=", mbps, None, headline)


def time_at_most(ratio: float, vs: str, headline: bool = False) -> Target:
    """Seconds per run at most `ratio` × row vs's, round by round."""
    return Target("time", "<=", ratio, vs, headline)


def entries_at_least(per_second: float, headline: bool = False) -> Target:
    """Archive entries per second (the measure reports `entries`) at least this."""
    return Target("entries", ">=", per_second, None, headline)


def first_byte_within(seconds: float, headline: bool = False) -> Target:
    """Time to the first byte (the measure reports `ttfb_s`) at most this, every round's median."""
    return Target("ttfb", "<=", seconds, None, headline)


@dataclass
class System:
    """A started system: `proc` serves the client (its tree's CPU and peak RSS are the row's)."""
    proc: Proc
    peers: list = field(default_factory=list)  # processes whose peak RSS is shown as "peers RSS"
    after: Callable[[], str] | None = None     # after the rounds: a note; raising turns the row n/a
    path_prefix: str = ""

    @property
    def base_url(self) -> str:
        return self.proc.base_url + self.path_prefix


@dataclass
class Row:
    """One system of a batch: name, how to start it, what to measure, what it is compared with."""
    name: str
    server: str
    start: Callable[[], System]
    measure: object
    ref: str | None = None
    targets: tuple = ()
    data: str = ""
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"{self.name} ({self.server})"


@dataclass
class Batch:
    """Rows started together and measured in interleaved rounds; `rounds` None = --rounds."""
    title: str
    rows: list
    rounds: int | None = None
    notes: list = field(default_factory=list)


@dataclass
class Option:
    default: object
    help: str


@dataclass
class Benchmark:
    """A benchmark script: its name (results file), options, --quick values and its batches."""
    name: str
    doc: str
    batches: Callable[[Workspace, argparse.Namespace], Iterable[Batch]]
    options: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)  # other defaults of the common options, e.g. servers


# ---------------------------------------------------------------- judging (pure)

def judge(values: list[float], op: str, target: float, rounds: int) -> str:
    """'yes', 'NO' or 'no verdict: ...' for per-round values against op target."""
    if not values:
        return "n/a"
    if rounds < MIN_ROUNDS:
        return f"no verdict: {rounds} rounds, need {MIN_ROUNDS}"
    met = [v >= target if op == ">=" else v <= target for v in values]
    if all(met):
        return "yes"
    if not any(met):
        return "NO"
    return NO_VERDICT_SPREAD  # some rounds on each side of the target: the spread crosses it


def _per_round(rec: dict, metric: str) -> list:
    if metric == "rss":
        return [rec["rss_mib"]] if rec.get("rss_mib") is not None else []
    key = reporting.METRICS[metric][0]
    return [r.get(key) for r in rec["rounds"]]


def _ratios(a: list, b: list) -> list[float]:
    """Per-round a/b, skipping rounds where either is missing or b is 0 (CPU below the clock tick)."""
    return [x / y for x, y in zip(a, b) if x is not None and y]


def target_values(rec: dict, target: Target, recs: dict[str, dict]) -> list[float]:
    """The per-round values a target is judged on."""
    mine = _per_round(rec, target.metric)
    if target.vs is None:
        return [v for v in mine if v is not None]
    ref = recs.get(target.vs)
    if ref is None or ref["error"]:
        return []
    return _ratios(mine, _per_round(ref, target.metric))


# ---------------------------------------------------------------- running a batch

def _start_rows(batch: Batch) -> dict[str, System | str]:
    systems = {}
    for row in batch.rows:
        reporting.log(f"starting {row.name} ({row.server})")
        try:
            systems[row.id] = row.start()
            row.measure.probe(systems[row.id].base_url)
        except Unavailable as exc:
            systems[row.id] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one system failing must not stop the batch
            systems[row.id] = f"{type(exc).__name__}: {exc}"
        if isinstance(systems[row.id], str):
            reporting.log(f"  n/a: {systems[row.id]}")
    return systems


def _measure(measure, base_url: str, repeat: int) -> m.RunResult:
    """`repeat` runs of a repeatable measure (one of any other) as one: bytes and seconds summed."""
    total = m.RunResult()
    for _ in range(repeat if getattr(measure, "repeatable", False) else 1):
        res = measure.run(base_url)
        if res.error:
            return res
        total.counted, total.moved, total.seconds = total.counted + res.counted, total.moved + res.moved, \
            total.seconds + res.seconds
        total.extra = res.extra
    return total


def _run_once(row: Row, system: System, repeat: int = 1) -> dict:
    for p in [system.proc] + list(system.peers):
        if not p.alive():
            return {"error": f"{p.name} died (status {p.popen.returncode}): {p.tail()}"}
    cpu0 = m.cpu_seconds(system.proc.pid)
    res = _measure(row.measure, system.base_url, repeat)
    cpu = m.cpu_seconds(system.proc.pid) - cpu0
    if res.error:
        return {"error": res.error}
    system.proc.remember_tree()
    one = {"mbps": res.counted / res.seconds / 1e6 if res.seconds > 0 else None,
           "cpu_s": cpu, "cpu_per_gib": cpu / (res.counted / m.GiB) if res.counted else None,
           "bytes": res.moved, "counted": res.counted, "seconds": res.seconds, **res.extra}
    if "entries" in res.extra and res.seconds > 0:
        one["entries_per_s"] = res.extra["entries"] / res.seconds
    return one


def _rounds(batch: Batch, systems: dict, rounds: int, wait_idle: float, sampler: m.RssSampler,
            recs: dict[str, dict], repeat: int = 1) -> dict:
    load, busy = [], []
    for r in range(rounds):
        busy.append(m.wait_idle(wait_idle) if wait_idle > 0 else m.cpu_busy(0.3))
        load.append(os.getloadavg()[0])
        live = [row for row in batch.rows if not recs[row.id]["error"]]
        k = r % len(live) if live else 0
        for row in live[k:] + live[:k]:
            one = _run_once(row, systems[row.id], repeat)
            if "error" in one:
                recs[row.id]["error"] = f"round {r + 1}: {one['error']}"
                reporting.log(f"  {row.name} ({row.server}): n/a: {recs[row.id]['error']}")
                continue
            recs[row.id]["rounds"].append(one)
            if r == 0:
                recs[row.id]["rss_mib_round1"] = sampler.peak(systems[row.id].proc.pid)
        load.append(os.getloadavg()[0])
        reporting.log(f"  round {r + 1}/{rounds} done, load average {load[-1]:.2f}")
    return {"loadavg_1min": {**m.summary(load), "samples": load},
            "cpu_busy_before_rounds": {**m.summary(busy), "samples": busy, "waited_up_to_s": wait_idle}}


def _finish_row(row: Row, system: System, rec: dict, sampler: m.RssSampler) -> None:
    rec["rss_mib"] = sampler.peak(system.proc.pid)
    if system.peers:
        rec["peers_rss_mib"] = max(m.rss_mib(p.pid) for p in system.peers)
    counted = sum(r["counted"] for r in rec["rounds"])
    cpu = sum(r["cpu_s"] for r in rec["rounds"])
    rec["cpu_per_gib"] = cpu / (counted / m.GiB) if counted else None
    rec["mbps"] = m.summary([r["mbps"] for r in rec["rounds"] if r["mbps"] is not None])
    for key in ("entries_per_s", "ttfb_s"):
        values = [r[key] for r in rec["rounds"] if r.get(key) is not None]
        if values:
            rec[key] = m.summary(values)
    if system.after is not None and not rec["error"]:
        try:
            note = system.after()
            if note:
                rec["notes"].append(note)
        except Exception as exc:  # noqa: BLE001
            rec["error"] = f"check after the rounds failed: {type(exc).__name__}: {exc}"


def run_batch(ws: Workspace, batch: Batch, opts: argparse.Namespace) -> dict:
    """Start, measure (interleaved rounds), stop and judge one batch: a JSON-ready dict."""
    rounds = batch.rounds if batch.rounds is not None else opts.rounds
    ids = [row.id for row in batch.rows]
    if len(set(ids)) != len(ids) or any(r.ref not in ids for r in batch.rows if r.ref is not None):
        raise ValueError(f"{batch.title}: row ids must be unique and refs must name one: {ids}")
    reporting.log(f"batch: {batch.title}")
    try:
        systems = _start_rows(batch)
        recs = {row.id: _record(row, systems[row.id]) for row in batch.rows}
        live = [row.id for row in batch.rows if not recs[row.id]["error"]]
        reporting.log(f"measuring {len(live)} systems x {rounds} rounds, interleaved")
        with m.RssSampler([systems[i].proc.pid for i in live]) as sampler:
            load = _rounds(batch, systems, rounds, opts.wait_idle, sampler, recs, opts.repeat)
        for row in batch.rows:
            if row.id in live:
                _finish_row(row, systems[row.id], recs[row.id], sampler)
    finally:
        ws.stop_batch()
    _judge_all(batch, recs, rounds)
    return {"title": batch.title, "rounds": rounds, "repeat": opts.repeat,
            "order": "every row once per round, order rotated each round",
            "notes": list(batch.notes), **load, "rows": [recs[row.id] for row in batch.rows]}


def _record(row: Row, system: System | str) -> dict:
    rec = {"id": row.id, "system": row.name, "server": row.server, "data": row.data,
           "measures": row.measure.describe(), "ref": row.ref, "error": "", "notes": [], "rounds": []}
    if isinstance(system, str):
        rec["error"] = system
    else:
        rec["command"] = system.proc.argv
        rec["peer_commands"] = [p.argv for p in system.peers]
    return rec


def _judge_all(batch: Batch, recs: dict[str, dict], rounds: int) -> None:
    names = {row.id: row.name for row in batch.rows}
    for row in batch.rows:
        rec = recs[row.id]
        ok = not rec["error"]
        if row.ref is not None:
            ref = recs.get(row.ref)
            vals = _ratios([r["mbps"] for r in rec["rounds"]], [r["mbps"] for r in ref["rounds"]]) \
                if ok and ref and not ref["error"] else []
            rec["ratio_to_ref"] = {**m.summary(vals), "rounds": vals}
        rec["targets"] = []
        for t in row.targets:
            vals = target_values(rec, t, recs) if ok else []
            rec["targets"].append({"text": t.text(names), "metric": t.metric, "op": t.op, "value": t.value,
                                   "vs": t.vs, "headline": t.headline, **m.summary(vals), "rounds": vals,
                                   "verdict": judge(vals, t.op, t.value, rounds) if ok else "n/a"})


# ---------------------------------------------------------------- command line

def parser(bench: Benchmark) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=bench.doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(bench.doc.split("\n\n")[1:]))
    p.add_argument("--rounds", "--runs", dest="rounds", type=int, default=MIN_ROUNDS,
                   help=f"interleaved rounds; verdicts need at least {MIN_ROUNDS} (default {MIN_ROUNDS})")
    p.add_argument("--repeat", type=int, default=3,
                   help="transfers back to back per row and round, timed together (default 3, 1 with --quick)")
    p.add_argument("--threads", type=int, default=DEPLOY_THREADS,
                   help=f"threads of every WSGI server (default {DEPLOY_THREADS}, as deploy/ ships)")
    p.add_argument("--servers", default="waitress,uwsgi,gunicorn", help="WSGI servers to measure the node under")
    p.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: a smoke test, no verdicts")
    p.add_argument("--wait-idle", type=float, default=20.0,
                   help="before each round, wait up to this many seconds for the CPUs to be under 15%% busy "
                        "(0 = don't wait; default 20, 0 with --quick)")
    p.add_argument("--workdir", default=None, help="test files, configs and logs (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (files, configs, every server's log)")
    p.add_argument("--results", default=os.path.join(BENCH_DIR, "results"),
                   help="directory of the JSON results (default bench/results)")
    p.add_argument("--no-results", action="store_true", help="don't write the JSON results file")
    for dest, opt in bench.options.items():
        flag = "--" + dest.replace("_", "-")
        if isinstance(opt.default, bool):
            p.add_argument(flag, dest=dest, action="store_true", help=opt.help)
        else:
            p.add_argument(flag, dest=dest, type=type(opt.default), default=opt.default,
                           help=f"{opt.help} (default {opt.default})")
    p.set_defaults(**bench.defaults)
    return p


def parse(bench: Benchmark, argv: list[str] | None) -> argparse.Namespace:
    """The options, with --quick's values applied where not given explicitly."""
    p = parser(bench)
    opts = p.parse_args(argv)
    if opts.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for dest, value in {"rounds": 2, "wait_idle": 0.0, "repeat": 1, **bench.quick}.items():
            if "--" + dest.replace("_", "-") not in given and not (dest == "rounds" and "--runs" in given):
                setattr(opts, dest, value)
    opts.server_list = [s.strip() for s in opts.servers.split(",") if s.strip()]
    return opts


def run(bench: Benchmark, opts: argparse.Namespace, ws: Workspace | None = None, stamp: str | None = None) -> dict:
    """Run every batch of bench; print its tables, write its JSON results; return the results."""
    if ws is None:
        with Workspace(opts.workdir, opts.keep, bench.name) as own:
            return run(bench, opts, own, stamp)
    results = {"bench": bench.name, "date": stamp or reporting.stamp(), "quick": opts.quick,
               "options": {k: v for k, v in vars(opts).items() if k not in ("results", "no_results")},
               "machine": reporting.machine(), "batches": []}
    reporting.log(f"{bench.name}: work dir {ws.workdir}")
    try:
        for batch in bench.batches(ws, opts):
            done = run_batch(ws, batch, opts)
            results["batches"].append(done)
            print(reporting.render_batch(done), flush=True)
    finally:
        ws.stop_batch()
    results["machine"]["load_at_end"] = list(os.getloadavg())
    if not opts.no_results:
        reporting.log(f"results: {reporting.write_results(results, opts.results)}")
    return results


def main(bench: Benchmark, argv: list[str] | None = None) -> dict | None:
    """Entry point of a benchmark script; Ctrl-C stops everything started and exits 130."""
    install_signal_handlers()
    try:
        return run(bench, parse(bench, argv))
    except KeyboardInterrupt:
        stop_all()
        print("interrupted: every process started was stopped", file=sys.stderr)
        sys.exit(130)
