"""Shared helpers for the wsgi_stream benchmark scripts.

Everything here starts processes on loopback (127.0.0.x, free ports) and stops
them by PID at the end, also on Ctrl-C or on an error (``Bench`` is a context
manager; its ``__exit__`` stops everything it started).

Measurements:
  * throughput: ``curl`` downloads (or ``curl -T`` uploads) to /dev/null, N runs,
    median MB/s (MB = 10**6 bytes) of ``size / time_total``;
  * CPU: utime+stime of the serving process tree from /proc/<pid>/stat, read
    before and after the N runs, divided by the GiB transferred;
  * memory: peak RSS (VmHWM from /proc/<pid>/status) of the serving process
    (the largest VmHWM in its process tree: the worker for nginx/gunicorn).

Nothing here imports wsgi_stream: the server under test is always a separate
process, so a missing or broken server only turns its row into "n/a".
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable

# every process we started, so that an atexit / signal handler can stop them
_STARTED: list["Proc"] = []


# --------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """'1G', '256M', '64MiB', '1048576' -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1 << (10 * ("KMGT".index(t[-1]) + 1))
        t = t[:-1]
    return int(float(t) * mult)


def fmt_size(n: int) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= div and n % div == 0 or n >= 10 * div:
            v = n / div
            return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float, proc: "Proc | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with status {proc.popen.returncode}: {proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name if proc else 'server'} not listening on {host}:{port} after {timeout:g}s"
                       + (f": {proc.tail()}" if proc else ""))


def make_random_file(path: str, size: int) -> str:
    """Random bytes, written once and reused (cached) while the work dir lives."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    block = 4 * MiB
    with open(tmp, "wb") as f:
        left = size
        while left > 0:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n
    os.replace(tmp, path)
    return path


def link_or_copy(src: str, dst: str) -> str:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        if os.path.samefile(src, dst):
            return dst
        os.unlink(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def warm_cache(path: str) -> None:
    """Read the file once so every system under test is served from page cache."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 * MiB)
        while f.readinto(buf):
            pass


def version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception as exc:  # noqa: BLE001
        return f"? ({exc})"


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime (plus reaped children) of pid and its live descendants."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # fields[0] is state (field 3); utime=14, stime=15, cutime=16, cstime=17
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def peak_rss_mib(pid: int, field: str = "VmHWM:") -> float:
    """Largest VmHWM (or another /proc status field) in the process tree (the serving process), MiB."""
    best = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field):
                        best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best / 1024


class RssSampler:
    """Samples VmRSS of some processes every `interval` s in a thread, keeping the maximum.

    The kernel's VmHWM is only brought up to date at some events (unmaps, exit), so a
    peak that was given back with madvise() can be missed; the peak reported is the
    larger of VmHWM and this sampled maximum."""

    def __init__(self, pids: list[int], interval: float = 0.1):
        import threading
        self.pids, self.interval = pids, interval
        self.peak = {p: 0.0 for p in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for p in self.pids:
                self.peak[p] = max(self.peak[p], peak_rss_mib(p, "VmRSS:"))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def peak_of(pid: int, sampler: "RssSampler | None" = None) -> float:
    hwm = peak_rss_mib(pid)
    return max(hwm, sampler.peak.get(pid, 0.0)) if sampler else hwm


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: str
    host: str = ""
    port: int = 0
    stop_signal: int = signal.SIGTERM
    known_pids: set = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def tail(self, n: int = 3) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [l.strip() for l in f.read().splitlines() if l.strip()]
            return " | ".join(lines[-n:]) or "(no output)"
        except OSError:
            return "(no log)"

    def remember_tree(self) -> None:
        self.known_pids.update(process_tree(self.pid))

    def stop(self) -> None:
        self.remember_tree()
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
        # children (nginx / gunicorn workers) that outlived their parent: by PID
        for p in self.known_pids - {self.pid}:
            try:
                os.kill(p, 0)
            except OSError:
                continue
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if cmd:  # still a live process we started (not reused: short window)
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        if self in _STARTED:
            _STARTED.remove(self)


def start_process(name: str, argv: list[str], log_dir: str, *, env: dict | None = None,
                  cwd: str | None = None, host: str = "", port: int = 0,
                  stop_signal: int = signal.SIGTERM, ready_timeout: float = 20.0) -> Proc:
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{name}.log")
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log = open(log_path, "wb")
    try:
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=full_env, cwd=cwd, start_new_session=True)
    except OSError as exc:
        log.close()
        raise RuntimeError(f"cannot start {argv[0]}: {exc}") from exc
    log.close()
    proc = Proc(name, popen, log_path, host, port, stop_signal)
    _STARTED.append(proc)
    if port:
        try:
            wait_port(host, port, ready_timeout, proc)
        except Exception:
            proc.stop()
            raise
        time.sleep(0.1)
        proc.remember_tree()
    return proc


def stop_all() -> None:
    for p in list(reversed(_STARTED)):
        try:
            p.stop()
        except Exception:  # noqa: BLE001
            pass


atexit.register(stop_all)


def _on_sigterm(signum, frame):  # turn SIGTERM/SIGHUP into an exception: finally blocks run
    raise SystemExit(128 + signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    try:
        signal.signal(_sig, _on_sigterm)
    except (ValueError, OSError):
        pass


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------

class Unavailable(Exception):
    """The system under test cannot be measured; the message is the reason."""


def write_cluster_config(path: str, nodes: dict[str, tuple[str, str]], **cluster) -> str:
    """nodes: name -> (url, root). cluster: extra [cluster] keys (uploads=True, ...)."""
    lines = ["[cluster]"]
    for k, v in cluster.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f'{k} = "{v}"')
    for name, (url, root) in nodes.items():
        lines += ["", f"[nodes.{name}]", f'url = "{url}"', f'root = "{root}"']
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _uid_user() -> str:
    return "user root;\n" if os.geteuid() == 0 else ""


def start_nginx(workdir: str, name: str, host: str, mode: str, *, root: str = "",
                upstream: str = "", workers: int = 1) -> Proc:
    """mode: 'static' (sendfile), 'proxy' (proxy_pass upstream), 'dav' (PUT into root).

    'static' serves root at / and also at /files/ (so nginx can stand in for a
    wsgi_stream peer).
    """
    port = free_port(host)
    prefix = os.path.join(workdir, "nginx", name)
    for d in ("logs", "client_body", "proxy_temp", "conf"):
        os.makedirs(os.path.join(prefix, d), exist_ok=True)
    if mode == "static":
        loc = f"""
        location /files/ {{ alias {root}/; }}
        location / {{ root {root}; }}"""
    elif mode == "proxy":
        loc = f"""
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_request_buffering off;
            client_max_body_size 0;
        }}"""
    elif mode == "dav":
        loc = f"""
        location / {{
            root {root};
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
            client_body_temp_path {root}/.nginx_tmp;
        }}"""
        os.makedirs(os.path.join(root, ".nginx_tmp"), exist_ok=True)
    else:
        raise ValueError(mode)
    conf = f"""{_uid_user()}worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    server {{
        listen {host}:{port};
        server_name localhost;{loc}
    }}
}}
"""
    conf_path = os.path.join(prefix, "conf", "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return start_process(f"nginx-{name}", [nginx, "-p", prefix, "-c", conf_path, "-e", f"{prefix}/logs/error.log"],
                         os.path.join(workdir, "logs"), host=host, port=port, stop_signal=signal.SIGQUIT)


def server_argv(server: str, module: str, host: str, port: int, threads: int, chdir: str,
                env: dict) -> tuple[list[str], dict]:
    """argv + env to run the WSGI callable `module` ('pkg.mod:attr') under server."""
    if server == "uwsgi":
        argv = ["uwsgi", "--http-socket", f"{host}:{port}", "--module", module,
                "--chdir", chdir, "--pythonpath", chdir, "--threads", str(threads),
                "--processes", "1", "--need-app", "--die-on-term", "--disable-logging",
                "--buffer-size", "32768", "--http-keepalive"]
        for k, v in env.items():
            argv += ["--env", f"{k}={v}"]
        return argv, {}
    if server == "gunicorn":
        argv = ["gunicorn", "-k", "gthread", "--threads", str(threads), "-w", "1",
                "-b", f"{host}:{port}", "--chdir", chdir, "--timeout", "300", module]
        return argv, dict(env)
    if server == "waitress":
        argv = [PYTHON, "-m", "waitress", f"--listen={host}:{port}", f"--threads={threads}", module]
        # waitress-serve imports from cwd
        return argv, dict(env)
    raise ValueError(f"unknown server {server!r}")


def start_wsgi(workdir: str, name: str, server: str, module: str, host: str, threads: int,
               chdir: str, env: dict, ready_timeout: float = 20.0) -> Proc:
    port = free_port(host)
    argv, penv = server_argv(server, module, host, port, threads, chdir, env)
    if shutil.which(argv[0]) is None and not os.path.isabs(argv[0]):
        raise Unavailable(f"{argv[0]} not installed")
    try:
        return start_process(name, argv, os.path.join(workdir, "logs"), env=penv, cwd=chdir, host=host,
                             port=port, stop_signal=signal.SIGINT if server == "uwsgi" else signal.SIGTERM,
                             ready_timeout=ready_timeout)
    except RuntimeError as exc:
        raise Unavailable(str(exc)) from exc


def start_node(workdir: str, config: str, node: str, host: str, port: int, *, server: str = "waitress",
               threads: int = 8, ready_timeout: float = 20.0, env: dict | None = None) -> Proc:
    """Start wsgi_stream node `node` (its url in `config` must be http://host:port).
    `env`: extra environment variables for the node process (e.g. MALLOC_ARENA_MAX)."""
    if not os.path.exists(os.path.join(REPO_ROOT, "serve.py")) and server == "waitress":
        raise Unavailable("serve.py not in the repository yet")
    if not os.path.isdir(os.path.join(REPO_ROOT, "wsgi_stream")):
        raise Unavailable("wsgi_stream package not in the repository yet")
    name = f"node-{node}-{server}-{port}"
    if server == "waitress":
        argv = [PYTHON, "serve.py", "--config", config, "--node", node, "--threads", str(threads)]
        try:
            proc = start_process(name, argv, os.path.join(workdir, "logs"), cwd=REPO_ROOT, host=host, port=port,
                                 ready_timeout=ready_timeout, env=env)
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from exc
    else:
        wenv = {"WSGI_STREAM_CONFIG": config, "WSGI_STREAM_NODE": node}
        argv, penv = server_argv(server, "wsgi_stream.wsgi:application", host, port, threads, REPO_ROOT, wenv)
        penv.update(env or {})
        if shutil.which(argv[0]) is None:
            raise Unavailable(f"{argv[0]} not installed")
        try:
            proc = start_process(name, argv, os.path.join(workdir, "logs"), env=penv, cwd=REPO_ROOT, host=host,
                                 port=port, ready_timeout=ready_timeout,
                                 stop_signal=signal.SIGINT if server == "uwsgi" else signal.SIGTERM)
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from exc
    _wait_app(proc, ready_timeout)
    return proc


def _wait_app(proc: Proc, timeout: float) -> None:
    """uwsgi and gunicorn listen before the app is loaded: wait for any HTTP answer
    on /healthz, or for the process to die (then its log says why)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            proc.stop()
            raise Unavailable(f"{proc.name} exited with status {proc.popen.returncode}: {proc.tail()}")
        conn = http.client.HTTPConnection(proc.host, proc.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            time.sleep(0.3)  # a worker that fails right after its first answer shows up here
            if proc.popen.poll() is None:
                proc.remember_tree()
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            proc.stop()
            raise Unavailable(f"{proc.name} gave no HTTP answer within {timeout:g}s: {proc.tail()}")
        time.sleep(0.1)


# --------------------------------------------------------------------------
# HTTP probing and measuring
# --------------------------------------------------------------------------

def probe(url: str, method: str = "GET", body: bytes | None = None, expect=(200,),
          timeout: float = 15.0, headers: dict | None = None) -> dict:
    """Small request before the big runs: returns headers; raises Unavailable with the reason."""
    assert url.startswith("http://")
    hostport, _, path = url[len("http://"):].partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers or {})
        resp = conn.getresponse()
        head = resp.read(300) if resp.status not in expect else b""
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status not in expect:
            snippet = head.decode("utf-8", "replace").replace("\n", " ").strip()
            raise Unavailable(f"{method} {path}: HTTP {resp.status} {snippet[:160]}".strip())
        return hdrs
    except (OSError, http.client.HTTPException) as exc:
        raise Unavailable(f"{method} /{path}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


def curl_once(url: str, *, upload: str | None = None, max_time: float = 600.0) -> tuple[int, int, float]:
    """Returns (http_code, bytes transferred, seconds)."""
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", f"{max_time:.0f}", "-H", "Expect:"]
    if upload:
        argv += ["-T", upload, "-w", "%{http_code} %{size_upload} %{time_total}"]
    else:
        argv += ["-w", "%{http_code} %{size_download} %{time_total}"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True)
    try:
        code, size, secs = out.stdout.split()
        return int(code), int(size), float(secs)
    except ValueError:
        return 0, 0, 0.0


@dataclass
class Result:
    label: str
    server: str = ""
    mbps: float | None = None
    mbps_min: float | None = None
    mbps_max: float | None = None
    cpu_per_gib: float | None = None
    rss_mib: float | None = None
    note: str = ""
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.mbps is not None and not self.error


@dataclass
class Target:
    """One system under test, started and probed, ready to be measured.

    Each run fetches (or uploads to) every url in turn; the run's throughput is
    total bytes / total time. CPU is summed over `procs` (their process trees);
    peak RSS is read from `rss_proc` (default: procs[0]). `after(result)` may add
    extras or turn the result into an error (e.g. a check of the stored file).
    """
    procs: list
    urls: list
    expect_bytes: int | None
    upload: str | None = None
    expect_codes: tuple = (200, 201, 204)
    rss_proc: "Proc | None" = None
    min_mbps: float = 2.0
    after: object = None
    label: str = ""
    server: str = ""
    note: str = ""


def _one_run(t: Target, max_time: float) -> tuple[int, float, str]:
    run_bytes, run_secs = 0, 0.0
    for url in t.urls:
        for p in t.procs:
            if p.popen.poll() is not None:
                return 0, 0.0, f"{p.name} died (status {p.popen.returncode}): {p.tail()}"
        code, nbytes, secs = curl_once(url, upload=t.upload, max_time=max_time)
        if code not in t.expect_codes:
            return 0, 0.0, f"HTTP {code or 'failed/timeout'} for {url.split('/', 3)[-1]}"
        if t.expect_bytes is not None and nbytes != t.expect_bytes:
            return 0, 0.0, f"got {nbytes} bytes, expected {t.expect_bytes} ({url.split('/', 3)[-1]})"
        run_bytes += nbytes
        run_secs += secs
    return run_bytes, run_secs, ""


def machine_busy(interval: float = 0.5) -> float:
    """Fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


WAIT_IDLE = {"max_seconds": 0.0, "threshold": 0.15, "samples": []}


def wait_idle() -> None:
    """Before a round of runs: wait (at most WAIT_IDLE['max_seconds']) until other
    processes leave the machine nearly idle; record how busy it was."""
    if WAIT_IDLE["max_seconds"] <= 0:
        return
    deadline = time.monotonic() + WAIT_IDLE["max_seconds"]
    busy = machine_busy()
    while busy > WAIT_IDLE["threshold"] and time.monotonic() < deadline:
        busy = machine_busy()
    WAIT_IDLE["samples"].append(busy)


def busy_note() -> str:
    s = WAIT_IDLE["samples"]
    if not s:
        return ""
    return (f"Other load: the machine was {statistics.median(s) * 100:.0f}% busy (median; max {max(s) * 100:.0f}%) "
            f"just before the rounds of runs (waited up to {WAIT_IDLE['max_seconds']:g}s for it to fall below "
            f"{WAIT_IDLE['threshold'] * 100:.0f}%); load average now {os.getloadavg()[0]:.2f}.")


def _rounds(items, state, runs, sampler) -> None:
    rng = random.Random(1)
    for _ in range(runs):
        if state:
            wait_idle()
        order = list(state)
        rng.shuffle(order)  # no system is always first (right after the idle wait) or last
        for i in order:
            st = state[i]
            if st["error"]:
                continue
            t = items[i]
            max_time = max(120.0, ((t.expect_bytes or GiB) * len(t.urls)) / (t.min_mbps * 1e6))
            nbytes, secs, err = _one_run(t, max_time)
            if err:
                st["error"] = err
                continue
            st["bytes"] += nbytes
            st["speeds"].append(nbytes / secs / 1e6 if secs > 0 else 0.0)
            if len(st["speeds"]) == 1:
                st["rss1"] = peak_of((t.rss_proc or t.procs[0]).pid, sampler)
            for p in t.procs:
                p.remember_tree()


def measure_group(items: list, runs: int) -> list[Result]:
    """Measure several Targets with their runs interleaved (run 1 of each in a shuffled
    order, then run 2 ...), so that background noise hits every system alike. Result items
    (already n/a) pass through. Peak RSS = max(VmHWM, VmRSS sampled every 0.1 s)."""
    state = {}
    for i, t in enumerate(items):
        if isinstance(t, Target):
            state[i] = {"cpu0": sum(cpu_seconds(p.pid) for p in t.procs), "speeds": [], "bytes": 0, "error": ""}
    sampler = RssSampler([(items[i].rss_proc or items[i].procs[0]).pid for i in state])
    with sampler:
        _rounds(items, state, runs, sampler)
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, Target):
            out.append(t)
            continue
        st = state[i]
        res = Result(t.label, t.server, note=t.note)
        if st["error"]:
            res.error = st["error"]
        else:
            cpu1 = sum(cpu_seconds(p.pid) for p in t.procs)
            res.mbps = statistics.median(st["speeds"])
            res.mbps_min, res.mbps_max = min(st["speeds"]), max(st["speeds"])
            res.cpu_per_gib = (cpu1 - st["cpu0"]) / (st["bytes"] / GiB) if st["bytes"] else None
            res.rss_mib = peak_of((t.rss_proc or t.procs[0]).pid, sampler)
            res.extra["rss1"] = st.get("rss1")
            if t.after is not None:
                try:
                    t.after(res)
                except Exception as exc:  # noqa: BLE001
                    res.error = f"check after the runs failed: {type(exc).__name__}: {exc}"
        out.append(res)
    return out


def measure(label: str, server_procs: list[Proc] | Proc, urls: list[str] | str, expect_bytes: int | None,
            runs: int, *, upload: str | None = None, server: str = "", note: str = "",
            expect_codes=(200, 201, 204), rss_proc: Proc | None = None, min_mbps: float = 2.0) -> Result:
    """Measure one system on its own (see Target and measure_group)."""
    t = Target(server_procs if isinstance(server_procs, list) else [server_procs],
               urls if isinstance(urls, list) else [urls], expect_bytes, upload, expect_codes, rss_proc, min_mbps,
               label=label, server=server, note=note)
    return measure_group([t], runs)[0]


def na(label: str, reason: str, server: str = "", note: str = "") -> Result:
    return Result(label, server, error=reason, note=note)


# --------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------

def _f(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def ratio(a: Result, b: Result | None) -> float | None:
    if b is None or not a.ok or not b.ok or not b.mbps:
        return None
    return a.mbps / b.mbps


def check(value: float | None, op: str, target: float) -> str:
    if value is None:
        return "n/a"
    good = value >= target if op == ">=" else value <= target
    return "yes" if good else "NO"


def print_table(title: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> str:
    """Prints (and returns) a Markdown pipe table, aligned for the terminal too."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = [f"### {title}", ""]
    out.append("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    if notes:
        out.append("")
        out += [f"- {n}" for n in notes]
        if any("peak RSS" in h for h in header):
            out.append(f"- {RSS_NOTE}")
    bn = busy_note()
    if bn:
        out.append(f"- {bn}")
    out.append("")
    text = "\n".join(out)
    print(text, flush=True)
    return text


def result_cells(r: Result) -> list[str]:
    if not r.ok:
        return ["n/a", "n/a", "n/a"]
    d = ".0f" if r.mbps >= 20 else ".2f"
    spread = f"{r.mbps:{d}} ({r.mbps_min:{d}}-{r.mbps_max:{d}})"
    rss = _f(r.rss_mib, ".1f")
    if r.extra.get("rss1") is not None:
        rss += f" ({r.extra['rss1']:.1f})"
    return [spread, _f(r.cpu_per_gib, ".2f" if (r.cpu_per_gib or 0) < 100 else ".0f"), rss]


RSS_NOTE = ("peak RSS MiB = the larger of VmHWM and VmRSS sampled every 0.1 s, of the serving process, over all "
            "the runs (in brackets: up to the end of the first run); "
            "the RSS target is checked against the value after all runs.")


def error_notes(results: list[Result]) -> list[str]:
    return [f"n/a `{r.label}`{' (' + r.server + ')' if r.server else ''}: {r.error}" for r in results if r.error]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# command line and work dir
# --------------------------------------------------------------------------

def base_parser(description: str, default_size: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--size", default=default_size, help=f"file size, e.g. 1G, 256M (default {default_size})")
    p.add_argument("--runs", type=int, default=5, help="runs per system; the median is printed (default 5)")
    p.add_argument("--threads", type=int, default=8, help="worker threads for waitress/uwsgi/gunicorn (default 8)")
    p.add_argument("--workdir", default=None,
                   help="where test files, configs and logs go (default: a new temp dir; "
                        "files are cached there when --keep)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (test files, configs, logs) at the end")
    p.add_argument("--quick", action="store_true", help="small sizes and 2 runs: a smoke test, not a measurement")
    p.add_argument("--wait-idle", type=float, default=20.0,
                   help="before each round of runs, wait up to this many seconds for the machine to be "
                        "under 15%% busy (other processes); 0 = don't (default 20)")
    return p


class Bench:
    """Context manager: work dir + every process started inside is stopped at exit."""

    def __init__(self, args, name: str):
        self.args = args
        if args.workdir:
            self.workdir = os.path.abspath(args.workdir)
            os.makedirs(self.workdir, exist_ok=True)
            self.own_dir = False
        else:
            self.workdir = tempfile.mkdtemp(prefix=f"wsgi_stream_bench_{name}_")
            self.own_dir = True
        self.procs: list[Proc] = []
        self._ip = 10
        WAIT_IDLE["max_seconds"] = getattr(args, "wait_idle", 0.0) or 0.0
        WAIT_IDLE["samples"] = []

    def host(self) -> str:
        """A fresh 127.0.0.x loopback address for the next server."""
        self._ip = self._ip + 1 if self._ip < 250 else 11
        return f"127.0.0.{self._ip}"

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def track(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop(self, *procs: Proc | None) -> None:
        for p in procs:
            if p is not None:
                p.stop()
                if p in self.procs:
                    self.procs.remove(p)

    def attempt(self, label: str, server: str, fn, note: str = "") -> Result:
        """Run fn() -> Result; any failure becomes an "n/a" row with the reason.
        Every process started (tracked) inside fn is stopped afterwards."""
        before = len(self.procs)
        log(f"measuring {label} ({server})" if server else f"measuring {label}")
        try:
            r = fn()
            if not r.note:
                r.note = note
        except Unavailable as exc:
            r = na(label, str(exc), server, note)
        except Exception as exc:  # noqa: BLE001 - keep going, report the reason
            r = na(label, f"{type(exc).__name__}: {exc}", server, note)
        finally:
            self.stop(*self.procs[before:])
        r.label, r.server = label, server
        if r.ok:
            log(f"  {r.mbps:.0f} MB/s, {r.cpu_per_gib:.2f} CPU s/GiB, {r.rss_mib:.1f} MiB peak RSS")
        else:
            log(f"  n/a: {r.error}")
        return r

    def prepare(self, label: str, server: str, fn) -> "Target | Result":
        """fn() starts what it needs (self.track) and returns a Target; a failure
        becomes an "n/a" Result with the reason (and what it started is stopped)."""
        before = len(self.procs)
        log(f"starting {label} ({server})" if server else f"starting {label}")
        try:
            t = fn()
            t.label, t.server = label, server
            return t
        except Unavailable as exc:
            err = str(exc)
        except Exception as exc:  # noqa: BLE001 - keep going, report the reason
            err = f"{type(exc).__name__}: {exc}"
        self.stop(*self.procs[before:])
        log(f"  n/a: {err}")
        return na(label, err, server)

    def run(self, items: list, runs: int) -> list[Result]:
        """Measure the prepared targets (interleaved), then stop every tracked process."""
        names = [i.label for i in items if isinstance(i, Target)]
        if names:
            log(f"measuring {len(names)} systems x {runs} runs, interleaved: {'; '.join(names)}")
        try:
            results = measure_group(items, runs)
        finally:
            self.stop(*self.procs)
        for r in results:
            if r.ok:
                log(f"  {r.label} ({r.server}): {r.mbps:.1f} MB/s, {r.cpu_per_gib:.2f} CPU s/GiB, "
                    f"{r.rss_mib:.1f} MiB peak RSS")
            elif isinstance(r, Result) and r.error and r.label in names:
                log(f"  {r.label} ({r.server}): n/a: {r.error}")
        return results

    def __enter__(self):
        log(f"work dir {self.workdir}")
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:  # noqa: BLE001
                pass
        stop_all()
        if self.args.keep or not self.own_dir:
            log(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return False


def run_main(main) -> None:
    """Entry point of a script: Ctrl-C stops every started process and exits 130, quietly."""
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        print("interrupted: every process started was stopped", file=sys.stderr)
        sys.exit(130)


def machine_line() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {mem}, Linux {os.uname().release}, "
            f"Python {sys.version.split()[0]}, {version_of(['nginx', '-v'])}, curl {version_of(['curl', '--version']).split()[1]}")
