"""serve.py as sysadmins meet it: graceful SIGTERM, a second signal, --check, --demo."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import time

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
        assert result.returncode == 1 and "PROBLEM" in result.stdout.splitlines()[2]
        swapped = write_config(tmp_path / "swapped.toml", {"a": (cluster.url("a"), cluster["a"].root),
                                                            "b": (cluster.url("a"), cluster["b"].root)}, token="right")
        result = subprocess.run([sys.executable, str(REPO / "serve.py"), "--check", "--config", str(swapped),
                                 "--node", "a"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and "says it is node 'a', not 'b'" in result.stdout
    finally:
        cluster.stop()


def test_demo_starts_three_nodes_and_stops_them_on_ctrl_c(tmp_path):
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--demo", "--demo-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        urls = []
        deadline = time.monotonic() + 20
        while len(urls) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "open http" in line:
                urls.append(line.split("open ")[1].strip())
        assert len(urls) == 3
        import urllib.request
        for url in urls:
            for _ in range(50):
                try:
                    with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                        assert r.status == 200
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                pytest.fail(f"{url} never answered")
        with urllib.request.urlopen(urls[0] + "files/hello.txt") as r:
            assert r.read() == b"Hello from node a!\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        for url in urls:
            with pytest.raises(OSError):
                urllib.request.urlopen(url + "healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
