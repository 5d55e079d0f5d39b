"""What one run of a system measures, and how: curl transfers, CPU and memory from /proc, machine load.

  * throughput: ``curl`` to /dev/null (``curl -T`` for uploads), MB/s (MB = 10**6 bytes) of the
    bytes counted over the transfer time; N concurrent curls: total bytes over the wall time;
  * CPU: utime+stime (+ reaped children) of the serving process tree from /proc/<pid>/stat,
    read before and after each run, per GiB moved;
  * memory: the larger of VmHWM and VmRSS sampled every 0.1 s, of the largest process in the
    serving tree (the worker, for nginx, uwsgi and gunicorn);
  * load: the 1-minute load average and how busy the CPUs were (/proc/stat) around each round.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

from processes import Unavailable, process_tree

MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    """'1G', '256M', '64MiB', '1048576' -> bytes (binary units)."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1 << (10 * ("KMGT".index(t[-1]) + 1))
        t = t[:-1]
    return int(float(t) * mult)


def fmt_size(n: int) -> str:
    """1073741824 -> '1 GiB'."""
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= div and n % div == 0 or n >= 10 * div:
            v = n / div
            return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------- /proc

def cpu_seconds(pid: int) -> float:
    """utime+stime (plus reaped children) of pid and its live descendants."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_mib(pid: int, key: str = "VmHWM:") -> float:
    """The largest VmHWM (or another /proc status field) in pid's process tree, MiB."""
    best = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key):
                        best = max(best, int(line.split()[1]))
                        break
        except OSError:
            pass
    return best / 1024


class RssSampler:
    """VmRSS of some processes every `interval` s in a thread, keeping each one's maximum.

    The kernel brings VmHWM up to date only at some events, so a peak given back with
    madvise() can be missed; `peak(pid)` is the larger of VmHWM and the sampled maximum."""

    def __init__(self, pids: list[int], interval: float = 0.1):
        self.interval = interval
        self.sampled = {p: 0.0 for p in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for p in self.sampled:
                self.sampled[p] = max(self.sampled[p], rss_mib(p, "VmRSS:"))
            self._stop.wait(self.interval)

    def peak(self, pid: int) -> float:
        return max(rss_mib(pid), self.sampled.get(pid, 0.0))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def cpu_busy(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(max_seconds: float, threshold: float = 0.15) -> float:
    """Wait (at most max_seconds) for other processes to leave the CPUs nearly idle; returns how busy they were."""
    deadline = time.monotonic() + max_seconds
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def summary(values: list[float]) -> dict:
    """{'median', 'min', 'max'} of values (None when empty)."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ---------------------------------------------------------------- HTTP

def probe(url: str, method: str = "GET", body: bytes | None = None, expect=(200,), timeout: float = 30.0,
          headers: dict | None = None) -> dict:
    """One small request before the timed runs: the answer's headers, or Unavailable with the reason."""
    hostport, _, path = url.removeprefix("http://").partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers or {})
        resp = conn.getresponse()
        if resp.status not in expect:
            snippet = resp.read(300).decode("utf-8", "replace").replace("\n", " ").strip()
            raise Unavailable(f"{method} /{path}: HTTP {resp.status} {snippet[:160]}".strip())
        return {k.lower(): v for k, v in resp.getheaders()}
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"{method} /{path}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


@dataclass
class Transfer:
    code: int
    nbytes: int
    seconds: float
    curl_status: int = 0  # non-zero: curl saw an error (e.g. 18: body shorter than announced)
    ttfb: float = 0.0     # seconds to the first byte of the answer (curl's time_starttransfer)


def _curl_argv(url: str, upload: str | None, max_time: float, byte_range: str | None = None) -> list[str]:
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", f"{max_time:.0f}", "-H", "Expect:"]
    if byte_range:
        argv += ["-r", byte_range]
    what = "size_upload" if upload else "size_download"
    if upload:
        argv += ["-T", upload]
    return argv + ["-w", f"%{{http_code}} %{{{what}}} %{{time_total}} %{{time_starttransfer}}", url]


def _parse_curl(out: str, status: int) -> Transfer:
    try:
        code, size, secs, first = out.split()
        return Transfer(int(code), int(size), float(secs), status, float(first))
    except ValueError:
        return Transfer(0, 0, 0.0, status)


def curl(url: str, upload: str | None = None, max_time: float = 600.0, byte_range: str | None = None) -> Transfer:
    """One curl transfer to /dev/null (or `curl -T upload`; `byte_range`: curl -r, e.g. '1-')."""
    out = subprocess.run(_curl_argv(url, upload, max_time, byte_range), capture_output=True, text=True)
    return _parse_curl(out.stdout, out.returncode)


def curl_parallel(urls: list[str], max_time: float) -> tuple[list[Transfer], float]:
    """Every url fetched at once by its own curl: the transfers and the wall time from first start to last end."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(_curl_argv(u, None, max_time), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for u in urls]
    transfers = [_parse_curl(p.communicate()[0], p.returncode) for p in procs]
    return transfers, time.monotonic() - t0


# ---------------------------------------------------------------- what a row measures

@dataclass
class RunResult:
    """One run: the bytes counted for throughput, the bytes moved (for CPU/GiB), seconds, or an error."""
    counted: int = 0
    moved: int = 0
    seconds: float = 0.0
    error: str = ""
    extra: dict = field(default_factory=dict)  # other per-round figures: entries, ttfb_s, ...


def _check(t: Transfer, url: str, codes, expect_bytes: int | None) -> str:
    where = "/" + url.split("/", 3)[-1]
    if t.code not in codes:
        return f"HTTP {t.code or 'failed/timeout'} for {where}"
    if t.curl_status:
        return f"curl exit status {t.curl_status} after {t.nbytes} bytes ({where})"
    if expect_bytes is not None and t.nbytes != expect_bytes:
        return f"got {t.nbytes} bytes, expected {expect_bytes} ({where})"
    return ""


@dataclass
class Download:
    """GET each path in turn; a run's throughput is the bytes over the summed time.

    `size`: bytes expected per path (None: don't check); `counted`: bytes the MB/s is
    computed from, per run (default: the bytes received; e.g. the input of a compressed ZIP)."""
    paths: list
    size: int | None
    counted: int | None = None
    min_mbps: float = 2.0  # sets the time limit of a run
    codes: tuple = (200,)
    byte_range: str | None = None  # curl -r: a Range request (then `size` is the range's length)
    repeatable: ClassVar[bool] = True  # --repeat runs make one measurement (runner._measure)

    def describe(self) -> str:
        return f"GET {', '.join(self.paths)}" + (f" Range: bytes={self.byte_range}" if self.byte_range else "")

    def max_time(self) -> float:
        return max(120.0, (self.size or GiB) * len(self.paths) / (self.min_mbps * 1e6))

    def probe(self, base_url: str) -> None:
        headers = {"Range": f"bytes={self.byte_range}"} if self.byte_range else None
        for path in self.paths:
            probe(base_url + path, expect=self.codes, headers=headers)

    def run(self, base_url: str) -> RunResult:
        res = RunResult()
        for path in self.paths:
            url = base_url + path
            t = curl(url, max_time=self.max_time(), byte_range=self.byte_range)
            err = _check(t, url, self.codes, self.size)
            if err:
                return RunResult(error=err)
            res.moved += t.nbytes
            res.seconds += t.seconds
        res.counted = self.counted if self.counted is not None else res.moved
        return res


@dataclass
class Upload:
    """curl -T `source` to path ('Expect:' disabled)."""
    path: str
    source: str
    size: int
    codes: tuple = (201, 204)
    min_mbps: float = 2.0
    repeatable: ClassVar[bool] = True

    def describe(self) -> str:
        return f"PUT {self.path}"

    def probe(self, base_url: str) -> None:
        probe(base_url + self.path.rsplit("/", 1)[0] + "/probe.bin", "PUT", b"x", expect=self.codes)

    def run(self, base_url: str) -> RunResult:
        url = base_url + self.path
        # The previous run's dirty pages (nginx does not fsync) would otherwise be written back during
        # this one, making each run's time depend on which system ran before it; not timed.
        os.sync()
        t = curl(url, upload=self.source, max_time=max(120.0, self.size / (self.min_mbps * 1e6)))
        err = _check(t, url, self.codes, self.size)
        return RunResult(error=err) if err else RunResult(t.nbytes, t.nbytes, t.seconds)


@dataclass
class Concurrent:
    """`clients` GETs of path at once; a run's throughput is the total bytes over the wall time."""
    path: str
    clients: int
    size: int
    min_mbps: float = 2.0
    repeatable: ClassVar[bool] = True

    def describe(self) -> str:
        return f"{self.clients} x GET {self.path} at once"

    def probe(self, base_url: str) -> None:
        probe(base_url + self.path)

    def run(self, base_url: str) -> RunResult:
        url = base_url + self.path
        max_time = max(120.0, self.size * self.clients / (self.min_mbps * 1e6))
        transfers, wall = curl_parallel([url] * self.clients, max_time)
        for t in transfers:
            err = _check(t, url, (200,), self.size)
            if err:
                return RunResult(error=err)
        total = sum(t.nbytes for t in transfers)
        return RunResult(total, total, wall)
