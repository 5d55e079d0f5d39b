"""Processes a benchmark starts: loopback addresses, free ports, start, wait, stop by PID.

Every process is started in its own session, remembered with its process tree, and
stopped by PID: by its `Workspace` when a batch ends, and by `stop_all()` at exit, on
Ctrl-C, SIGTERM or SIGHUP (see `install_signal_handlers`). Nothing is ever stopped by
name.
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
PYTHON = sys.executable

# every process started and not yet stopped, for stop_all()
_STARTED: list["Proc"] = []


class Unavailable(Exception):
    """A system cannot be measured; the message is the reason (its row becomes n/a)."""


def free_port(host: str) -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(extra: dict | None = None, base: dict | None = None) -> dict:
    """The environment for a child: this interpreter's bin dir first on PATH (uwsgi, gunicorn of the venv)."""
    env = dict(os.environ if base is None else base)
    bin_dir = os.path.dirname(PYTHON)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def process_tree(pid: int) -> list[int]:
    """pid and its live descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    return out


@dataclass
class Proc:
    """One started process (and the children it forked: nginx, uwsgi and gunicorn workers)."""

    name: str
    popen: subprocess.Popen
    argv: list
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

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 3) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [line.strip() for line in f.read().splitlines() if line.strip()]
            return " | ".join(lines[-n:]) or "(no output)"
        except OSError:
            return "(no log)"

    def remember_tree(self) -> None:
        self.known_pids.update(process_tree(self.pid))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process by its PID, then any child of it that outlived it, by PID."""
        self.remember_tree()
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(self.stop_signal)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        for pid in self.known_pids - {self.pid}:
            _kill_if_ours(pid, self.popen.pid)
        if self in _STARTED:
            _STARTED.remove(self)


def _kill_if_ours(pid: int, session: int) -> None:
    """SIGKILL a leftover child, only if it still belongs to the session we started."""
    try:
        if os.getsid(pid) == session:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def start(name: str, argv: list[str], log_dir: str, *, env: dict | None = None, cwd: str | None = None,
          host: str = "", port: int = 0, stop_signal: int = signal.SIGTERM, ready_timeout: float = 30.0) -> Proc:
    """Start argv (output to log_dir/name.log); with a port, wait until it accepts connections."""
    os.makedirs(log_dir, exist_ok=True)
    env = env if env is not None else child_env()
    exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=env.get("PATH"))
    if exe is None:
        raise Unavailable(f"{argv[0]} not installed")
    log_path = os.path.join(log_dir, f"{name}.log")
    with open(log_path, "wb") as log:
        try:
            popen = subprocess.Popen([exe] + argv[1:], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        except OSError as exc:
            raise Unavailable(f"cannot start {argv[0]}: {exc}") from exc
    proc = Proc(name, popen, list(argv), log_path, host, port, stop_signal)
    _STARTED.append(proc)
    if port:
        try:
            wait_listening(proc, ready_timeout)
        except Exception:
            proc.stop()
            raise
    return proc


def wait_listening(proc: Proc, timeout: float) -> None:
    """Wait until proc accepts TCP connections; its death or a timeout raises Unavailable."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise Unavailable(f"{proc.name} exited with status {proc.popen.returncode}: {proc.tail()}")
        try:
            with socket.create_connection((proc.host, proc.port), timeout=0.5):
                proc.remember_tree()
                return
        except OSError:
            time.sleep(0.05)
    raise Unavailable(f"{proc.name} not listening on {proc.host}:{proc.port} after {timeout:g}s: {proc.tail()}")


def wait_http(proc: Proc, path: str = "/healthz", timeout: float = 30.0) -> None:
    """Wait for any HTTP answer on path: uwsgi and gunicorn listen before the app has loaded."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise Unavailable(f"{proc.name} exited with status {proc.popen.returncode}: {proc.tail()}")
        conn = http.client.HTTPConnection(proc.host, proc.port, timeout=2)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            time.sleep(0.2)  # a worker that dies right after its first answer shows up here
            if proc.alive():
                proc.remember_tree()
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise Unavailable(f"{proc.name} gave no HTTP answer within {timeout:g}s: {proc.tail()}")
        time.sleep(0.1)


def stop_all() -> None:
    """Stop every process still running that this interpreter started, newest first."""
    for proc in list(reversed(_STARTED)):
        try:
            proc.stop()
        except Exception:  # noqa: BLE001 - go on stopping the others
            pass


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # finally blocks and Workspace.__exit__ run


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP stop everything started, like Ctrl-C does."""
    atexit.register(stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, _exit_on_signal)
        except (ValueError, OSError):
            pass


class Workspace:
    """The work dir (test files, configs, logs) and the processes of the current batch."""

    def __init__(self, workdir: str | None, keep: bool, prefix: str = "bench"):
        self.own_dir = workdir is None
        self.workdir = tempfile.mkdtemp(prefix=f"wsgi_stream_bench_{prefix}_") if workdir is None \
            else os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.keep = keep
        self.procs: list[Proc] = []
        self._shared: dict[str, object] = {}
        self._cleanups: list = []
        self._ip = 10

    def host(self) -> str:
        """A fresh 127.0.0.x address for the next server (11..250, round robin)."""
        self._ip = self._ip + 1 if self._ip < 250 else 11
        return f"127.0.0.{self._ip}"

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    @property
    def logs(self) -> str:
        return self.path("logs")

    def start(self, name: str, argv: list[str], **kw) -> Proc:
        """processes.start with the log in the work dir; the process is stopped with the batch."""
        proc = start(name, argv, self.logs, **kw)
        self.procs.append(proc)
        return proc

    def shared(self, key: str, factory):
        """One instance per batch of what factory() starts (e.g. one nginx peer for several rows)."""
        if key not in self._shared:
            self._shared[key] = factory()
        return self._shared[key]

    def defer(self, cleanup) -> None:
        """Call cleanup() when the batch stops (e.g. stop an in-process proxy)."""
        self._cleanups.append(cleanup)

    def stop_batch(self) -> None:
        """Stop every process started since the last call, newest first, then run the deferred cleanups."""
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception:  # noqa: BLE001
                pass
        self.procs.clear()
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception:  # noqa: BLE001
                pass
        self._shared.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_batch()
        stop_all()
        if self.own_dir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return False
