"""Real nodes on loopback for the tests: configs, free ports, processes stopped by PID."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import urllib3

REPO = Path(__file__).resolve().parent.parent
_next_host = itertools.count(2)


def loopback_host() -> str:
    """A fresh 127.0.0.x address, so nodes of one test are told apart by address too."""
    return f"127.0.0.{next(_next_host) % 250 + 2}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_config(path: Path, nodes: dict[str, tuple[str, Path]], **cluster) -> Path:
    """Write a cluster TOML: nodes maps name -> (url, root); cluster holds [cluster] keys."""
    lines = ["[cluster]"] + [f"{k} = {toml_value(v)}" for k, v in cluster.items() if v is not None]
    for name, (url, root) in nodes.items():
        lines += ["", f"[nodes.{name}]", f"url = {toml_value(url)}", f"root = {toml_value(root)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class ServerTLS:
    """A node serving https itself (deploy/*-tls): its certificate chain and key, and the CA the tests
    trust for it; with client_ca, it requires client certificates signed by that CA, and the tests'
    own requests show client_cert (certificate and key in one PEM)."""

    cert: Path
    key: Path
    ca: Path
    client_ca: Path | None = None
    client_cert: Path | None = None

    def context(self) -> ssl.SSLContext:
        """What the tests' own requests to such a node trust and show."""
        context = ssl.create_default_context(cafile=str(self.ca))
        # The chain is checked, not the name: a node whose certificate names another address (to
        # test that its peers refuse it) must still be reachable by the tests.
        context.check_hostname = False
        if self.client_cert:
            context.load_cert_chain(str(self.client_cert))
        return context


def server_command(server: str, config: Path, name: str, host: str, port: int, threads: int = 16,
                   tls: ServerTLS | None = None) -> tuple[list[str], dict]:
    """The command line and environment that run node `name` under `server`.

    uwsgi and gunicorn run with the settings we ship (deploy/uwsgi.ini, deploy/gunicorn.conf.py);
    only the listening address and the thread count are given here (README.md, "Servers").
    """
    env = dict(os.environ, WSGI_STREAM_CONFIG=str(config), WSGI_STREAM_NODE=name, PYTHONUNBUFFERED="1")
    if server == "waitress":
        # --listen: the node's url may point at a FaultProxy in front of it.
        cmd = [sys.executable, str(REPO / "serve.py"), "--config", str(config), "--node", name,
               "--listen", f"{host}:{port}", "--threads", str(threads)]
    elif server == "uwsgi":
        cmd = ["uwsgi", "--ini", str(REPO / "deploy" / "uwsgi.ini"), "--http-socket", f"{host}:{port}",
               "--threads", str(threads), "--chdir", str(REPO)]
    elif server == "gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "deploy" / "gunicorn.conf.py"),
               "-b", f"{host}:{port}", "--threads", str(threads), "--chdir", str(REPO)]
    else:
        raise ValueError(server)
    if tls is not None:
        cmd = _tls_command(server, cmd, f"{host}:{port}", tls)
    return cmd, env


def _tls_command(server: str, cmd: list[str], address: str, tls: ServerTLS) -> list[str]:
    """`cmd` as its https variant: deploy/uwsgi-tls.ini or deploy/gunicorn-tls.conf.py, and the node's
    certificate given on the command line as docs/servers.md ("TLS") says."""
    deploy = REPO / "deploy"
    if server == "uwsgi":
        socket_spec = f"{address},{tls.cert},{tls.key},HIGH" + (f",!{tls.client_ca}" if tls.client_ca else "")
        swap = {str(deploy / "uwsgi.ini"): str(deploy / "uwsgi-tls.ini"), "--http-socket": "--https-socket",
                address: socket_spec}
        return [swap.get(arg, arg) for arg in cmd]
    if server == "gunicorn":
        swap = {str(deploy / "gunicorn.conf.py"): str(deploy / "gunicorn-tls.conf.py")}
        extra = ["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
        if tls.client_ca:
            extra += ["--ca-certs", str(tls.client_ca), "--cert-reqs", "2"]
        return [swap.get(arg, arg) for arg in cmd] + extra
    raise ValueError(f"{server} serves plain HTTP only (a TLS terminator goes in front of it)")


@dataclass
class NodeProcess:
    """One running node: its name, URL, root and process."""

    name: str
    url: str
    root: Path
    host: str
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    tls: ServerTLS | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited {self.proc.returncode}:\n{self.log()}")
            try:
                context = self.tls.context() if self.tls else None
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1, context=context) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"node {self.name} did not come up:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def rss_peak_kib(self) -> int:
        """VmHWM of the node's process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")


@dataclass
class Cluster:
    """Nodes sharing one config file."""

    config_path: Path
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    token: str | None = None

    def __getitem__(self, name: str) -> NodeProcess:
        return self.nodes[name]

    def url(self, name: str) -> str:
        return self.nodes[name].url

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def start_cluster(tmp_path: Path, names=("a", "b", "c"), *, server: str = "waitress", start=None,
                  threads: int = 16, urls: dict[str, str] | None = None,
                  tls: Callable[[str, str], ServerTLS] | None = None, **cluster_keys) -> Cluster:
    """Write a config for `names` (roots under tmp_path) and start the nodes listed in `start`.

    With `tls`, nodes serve https (uwsgi, gunicorn): tls(name, host) gives each one's certificate.
    """
    tmp_path = Path(tmp_path)
    specs = {}
    for name in names:
        host = loopback_host()
        port = free_port(host)
        url = (urls or {}).get(name, f"{'https' if tls else 'http'}://{host}:{port}")
        root = tmp_path / f"root-{name}"
        root.mkdir(parents=True, exist_ok=True)
        specs[name] = (url, root, host, port)
    config = write_config(tmp_path / "cluster.toml", {n: (u, r) for n, (u, r, _, _) in specs.items()},
                          **cluster_keys)
    result = Cluster(config, token=cluster_keys.get("token"))
    for name, (url, root, host, port) in specs.items():
        result.nodes[name] = NodeProcess(name, url, root, host, port, tmp_path / f"node-{name}.log",
                                         tls=tls(name, host) if tls else None)
    for name in (names if start is None else start):
        launch(result.nodes[name], config, server=server, threads=threads)
    for name in (names if start is None else start):
        result.nodes[name].wait_ready()
    return result


def launch(node: NodeProcess, config: Path, server: str = "waitress", threads: int = 16) -> NodeProcess:
    """Start `node`'s process (its log goes to node.log_path)."""
    cmd, env = server_command(server, config, node.name, node.host, node.port, threads, tls=node.tls)
    log = open(node.log_path, "ab")
    node.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return node


def raw_get(node: NodeProcess, path: str, extra: bytes = b"", rcvbuf: int | None = None) -> socket.socket:
    """Send `GET path` on a raw socket (optionally with a small receive buffer) and return the socket unread."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect((node.host, node.port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {node.host}\r\n".encode() + extra + b"\r\n")
    return s


def can_strace() -> bool:
    """Whether strace is installed and may attach to processes here (ptrace can be refused)."""
    return shutil.which("strace") is not None and subprocess.run(
        ["strace", "-qq", "-e", "trace=none", "true"], capture_output=True).returncode == 0


def traced_bytes(pid: int, syscall: str, out: Path, request: Callable[[], None]) -> int:
    """Run `request()` with strace -f attached to `pid`: the sum of what its `syscall` calls returned."""
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", f"trace={syscall}", "-e", "signal=none", "-o", str(out),
                               "-p", str(pid)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)  # attached
        request()
        time.sleep(0.5)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    results = [line.rsplit("=", 1)[1].strip() for line in out.read_text().splitlines() if f"{syscall}(" in line]
    return sum(int(r) for r in results if r.isdigit())


# Programs the test extra installs (uwsgi) and the interpreter itself sit in the venv's bin/:
# put it first on PATH, so `.venv/bin/python -m pytest` finds them without an activated venv.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def http(method: str, url: str, headers: dict | None = None, body=None, stream: bool = False,
         timeout: float = 30, tls: ServerTLS | None = None) -> urllib3.BaseHTTPResponse:
    """One request on a connection of its own: the urllib3 response (.status, .headers, .data, .json()).

    Like requests.get & co.: no retries, and the body is read unless `stream` (then read it with
    .stream(n) and close it; a cut body raises urllib3.exceptions.ProtocolError). Unlike requests:
    no decompression (the nodes never send Content-Encoding) and no redirects followed. `tls`: an
    https node's CA (and the client certificate it asks for).
    """
    # The tests check a node's chain, not its name (ServerTLS.context).
    verify = {"ssl_context": tls.context(), "assert_hostname": False} if tls else {}
    pool = urllib3.PoolManager(retries=False, **verify)
    response = pool.request(method, url, headers=headers, body=body, timeout=timeout,
                            preload_content=not stream, redirect=False)
    if not stream:
        pool.clear()
    return response


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (or `timeout` s pass); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def read_head(s: socket.socket, data: bytes = b"") -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and the body bytes that came with them, read from `s`."""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the headers: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest
