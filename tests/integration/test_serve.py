"""serve.py as sysadmins meet it: graceful SIGTERM, a second signal, --check, and the demo's lifecycle."""

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support import REPO, NodeProcess, free_port, loopback_host, start_cluster, write_config


def start_node(tmp_path, *extra, name="a"):
    host = loopback_host()
    port = free_port(host)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "big.bin").write_bytes(os.urandom(8 << 20))
    config = write_config(tmp_path / "c.toml", {name: (f"http://{host}:{port}", root)}, chunk_size=65536)
    node = NodeProcess(name, f"http://{host}:{port}", root, host, port, tmp_path / "node.log")
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--config", str(config),
                                      "--node", name, "--threads", "4", *extra], stdout=log, stderr=log)
    node.wait_ready()
    return node


class Client(socket.socket):
    first = b""


def slow_download(node):
    """Start a download over a socket with a tiny receive buffer, reading nothing yet."""
    s = Client()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((node.host, node.port))
    s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    s.first = s.recv(1024)  # the response has started
    return s


def read_all(s, timeout=30):
    s.settimeout(timeout)
    data = s.first
    while chunk := s.recv(1 << 20):
        data += chunk
    return data


def test_sigterm_finishes_running_downloads_refuses_new_ones_and_exits_0(tmp_path):
    node = start_node(tmp_path)
    try:
        s = slow_download(node)
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection((node.host, node.port), timeout=2).recv(1)
        assert node.proc.poll() is None  # still sending the running download
        data = read_all(s)
        head, _, body = data.partition(b"\r\n\r\n")
        assert body == (node.root / "big.bin").read_bytes()  # everything arrived
        assert node.proc.wait(10) == 0
        assert "SIGTERM: refusing new requests" in node.log()
    finally:
        node.stop()


def test_keepalive_request_after_sigterm_gets_503(tmp_path):
    node = start_node(tmp_path)
    try:
        busy = slow_download(node)
        conn = http.client.HTTPConnection(node.host, node.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert r.status == 503 and r.getheader("Retry-After") == "5" and b"shutting_down" in r.read()
        read_all(busy)
        assert node.proc.wait(10) == 0
    finally:
        node.stop()


def test_grace_period_cuts_stalled_downloads_then_exits_0(tmp_path):
    node = start_node(tmp_path, "--grace", "1")
    try:
        s = slow_download(node)
        started = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(15) == 0
        assert time.monotonic() - started < 10
        data = read_all(s)
        assert len(data) < 8 << 20  # cut short: the client can tell it is incomplete
        assert "grace period of 1s is over" in node.log()
    finally:
        node.stop()


def test_second_signal_exits_at_once(tmp_path):
    node = start_node(tmp_path, "--grace", "60")
    try:
        client = slow_download(node)
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(5) != 0
        assert "second SIGTERM: exiting now" in node.log()
        client.close()
    finally:
        node.stop()


def test_check_reports_each_node(tmp_path):
    cluster = start_cluster(tmp_path, ("a", "b", "c"), token="t0k", start=["a", "b"])
    try:
        result = subprocess.run([sys.executable, str(REPO / "serve.py"), "--check", "--config",
                                 str(cluster.config_path), "--node", "a"], capture_output=True, text=True, timeout=30)
        lines = result.stdout.splitlines()
        assert result.returncode == 1, result.stdout + result.stderr
        assert lines[0].startswith("config ") and "3 nodes" in lines[0]
        assert "ok (this node" in lines[1] and lines[1].split()[0] == "a"
        assert lines[2].split()[0] == "b" and " ok (" in lines[2]
        assert lines[3].split()[0] == "c" and "PROBLEM: Node c is unreachable." in lines[3]
        cluster["c"].proc = None
        from support import launch
        launch(cluster["c"], cluster.config_path).wait_ready()
        result = subprocess.run([sys.executable, str(REPO / "serve.py"), "--check", "--config",
                                 str(cluster.config_path), "--node", "a"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout
    finally:
        cluster.stop()


def test_check_finds_a_wrong_token_and_a_swapped_url(tmp_path):
    cluster = start_cluster(tmp_path, ("a", "b"), token="right")
    try:
        wrong = write_config(tmp_path / "wrong.toml", {"a": (cluster.url("a"), cluster["a"].root),
                                                        "b": (cluster.url("b"), cluster["b"].root)}, token="wrong")
        result = subprocess.run([sys.executable, str(REPO / "serve.py"), "--check", "--config", str(wrong),
                                 "--node", "a"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        assert result.stdout.splitlines()[2].endswith("PROBLEM: Node b refused this node's token; the cluster "
                                                      "token must be the same on every node.")
        missing = write_config(tmp_path / "missing.toml", {"a": (cluster.url("a"), cluster["a"].root),
                                                            "b": (cluster.url("b"), cluster["b"].root)})
        result = subprocess.run([sys.executable, str(REPO / "serve.py"), "--check", "--config", str(missing),
                                 "--node", "a"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and "token not set" in result.stdout.splitlines()[0]
        assert result.stdout.splitlines()[2].endswith("PROBLEM: Node b needs a token; this config sets none "
                                                      "([cluster] token).")
        swapped = write_config(tmp_path / "swapped.toml", {"a": (cluster.url("a"), cluster["a"].root),
                                                            "b": (cluster.url("a"), cluster["b"].root)}, token="right")
        result = subprocess.run([sys.executable, str(REPO / "serve.py"), "--check", "--config", str(swapped),
                                 "--node", "a"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and "says it is node 'a', not 'b'" in result.stdout
    finally:
        cluster.stop()


class Demo:
    """`serve.py --demo` in a session of its own, as a terminal runs it: its output, nodes and PIDs."""

    def __init__(self, tmp_path):
        self.out_path = tmp_path / "demo.out"
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--demo", "--demo-dir",
                                          str(tmp_path / "demo"), "--threads", "4"],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 30
        while "Ctrl-C stops" not in self.output() and time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            time.sleep(0.1)
        self.nodes = {m[1]: (m[2], int(m[3])) for m in
                      re.finditer(r"node (\w+): open (http://\S+/)\s+\(pid (\d+)\)", self.output())}
        assert sorted(self.nodes) == ["a", "b", "c"], self.output()

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def url(self, name: str) -> str:
        return self.nodes[name][0]

    def running(self) -> list[int]:
        """PIDs of the demo's nodes still running (a zombie left to an init that does not reap is gone)."""
        return [pid for _, pid in self.nodes.values() if alive(pid)]

    def wait_nodes_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.running() == [], self.output()

    def ctrl_c(self) -> None:
        """What a terminal does: SIGINT to its foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def stop(self) -> None:
        for pid in [self.proc.pid, *self.running()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(5)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def demo(tmp_path):
    running = Demo(tmp_path)
    yield running
    running.stop()


def demo_download(demo, name="a"):
    """A download of bundle.tar.gz (8 MiB) from node `name` that reads nothing yet: it holds the node busy."""
    parts = urlsplit(demo.url(name))
    s = Client()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((parts.hostname, parts.port))
    s.sendall(b"GET /files/bundle.tar.gz HTTP/1.1\r\nHost: x\r\n\r\n")
    s.first = s.recv(1024)
    return s


def test_demo_serves_three_nodes_and_its_upload_example_works(demo):
    for name in ("a", "b", "c"):
        with urllib.request.urlopen(demo.url(name) + "files/hello.txt", timeout=5) as r:
            assert r.read() == f"Hello from node {name}!\n".encode()
    upload = next(line for line in demo.output().splitlines() if "curl -T" in line)
    command = upload.split("try:")[-1].split("#")[0].strip()
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and '"node": "c"' in result.stdout, result.stdout + result.stderr
    assert (Path(demo.output().split("files under ")[1].split(",")[0]) / "c" / "up" / "hi.txt").read_text() == "hi\n"


def test_demo_ctrl_c_drains_once_and_exits_0(demo):
    download = demo_download(demo)
    demo.ctrl_c()
    time.sleep(0.5)
    assert demo.proc.poll() is None  # node a is still sending
    data = read_all(download)
    assert len(data.partition(b"\r\n\r\n")[2]) == 8 << 20  # the running download finished whole
    assert demo.proc.wait(20) == 0
    demo.wait_nodes_gone(5)
    out = demo.output()
    assert out.count("SIGTERM: refusing new requests") == 3  # each node stopped once, by the demo
    assert "SIGINT: refusing" not in out and "second" not in out and "demo stopped\n" in out


def test_demo_second_ctrl_c_exits_at_once(demo):
    download = demo_download(demo)
    demo.ctrl_c()
    time.sleep(0.5)
    started = time.monotonic()
    demo.ctrl_c()
    assert demo.proc.wait(5) != 0 and time.monotonic() - started < 3
    demo.wait_nodes_gone(3)
    assert "demo stopped at once" in demo.output()
    download.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_to_the_demo_stops_its_nodes(demo, signum):
    os.kill(demo.proc.pid, signum)  # the demo alone, as systemd, timeout or a closed terminal send it
    assert demo.proc.wait(20) == 0
    demo.wait_nodes_gone(5)
    assert demo.output().count("SIGTERM: refusing new requests") == 3


def test_nodes_of_a_killed_demo_exit_by_themselves(demo):
    os.kill(demo.proc.pid, signal.SIGKILL)
    demo.proc.wait(5)
    demo.wait_nodes_gone(5)
    assert demo.output().count("the demo (pid") == 3


def test_client_that_stops_reading_a_generated_body_is_cut(tmp_path):
    """A multi-range answer is a generator whose blocks the request's thread sends itself."""
    node = start_node(tmp_path, "--client-timeout", "2")
    try:
        s = Client()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((node.host, node.port))
        s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9,100-8000000\r\n\r\n")
        time.sleep(4)
        assert "closing a connection that read nothing for 2s mid-response" in node.log()
        assert len(read_all(s, timeout=5)) < 8 << 20  # cut, not completed
        conn = http.client.HTTPConnection(node.host, node.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        node.stop()


def test_slow_reader_of_a_generated_body_gets_every_byte(tmp_path):
    node = start_node(tmp_path)
    try:
        s = Client()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        s.connect((node.host, node.port))
        s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9,100-\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := s.recv(64 << 10):
            raw += chunk
            time.sleep(0.001)
        whole = (node.root / "big.bin").read_bytes()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 206") and whole[:10] in body and body.count(whole[100:]) == 1
    finally:
        node.stop()


def test_client_that_stops_reading_is_cut_and_frees_its_thread(tmp_path):
    node = start_node(tmp_path, "--client-timeout", "2")
    node_threads = 4
    try:
        stalled = []
        for _ in range(node_threads):  # range answers are generators: each holds a worker thread
            s = Client()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((node.host, node.port))
            s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1-\r\n\r\n")
            stalled.append(s)
        time.sleep(6)
        conn = http.client.HTTPConnection(node.host, node.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        assert "read nothing for 2s" in node.log()
        for s in stalled:
            assert len(read_all(s, timeout=5)) < 8 << 20  # cut, not completed
    finally:
        node.stop()
