"""A real node (`python serve.py` under waitress) on loopback, talked to with curl and http.client."""

import hashlib
import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from werkzeug.http import parse_options_header

from support import REPO, NodeProcess, free_port, loopback_host

UTF8_NAME = "rapport d'été \"final\" 2026.txt"


@pytest.fixture
def node(cluster_factory):
    cluster = cluster_factory(names=("a",))
    root = cluster["a"].root
    (root / UTF8_NAME).write_text("été\n" * 1000)
    (root / "blob.bin").write_bytes(os.urandom(3 << 20))
    return cluster["a"]


def connect(node):
    return http.client.HTTPConnection(node.host, node.port, timeout=30)


def curl(*args, cwd=None):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, cwd=cwd, timeout=60)


def test_curl_OJ_saves_under_the_name(node, tmp_path):
    (node.root / "weekly report 2026.txt").write_text("report")
    out = tmp_path / "dl"
    out.mkdir()
    result = curl("-OJ", f"{node.url}/files/weekly%20report%202026.txt", cwd=out)
    assert result.returncode == 0, result.stderr
    assert (out / "weekly report 2026.txt").read_text() == "report"


def test_utf8_name_is_exact_in_filename_star_and_ascii_in_filename(node, tmp_path):
    # curl -J reads only filename= (curl's known TODO), so it gets the ASCII fallback;
    # browsers and wget read filename*, which carries the exact UTF-8 name.
    out = tmp_path / "dl"
    out.mkdir()
    url = f"{node.url}/files/{urllib.request.quote(UTF8_NAME)}"
    assert curl("-OJ", url, cwd=out).returncode == 0
    assert os.listdir(out) == ["rapport d'ete _final_ 2026.txt"]
    with urllib.request.urlopen(url) as r:
        _, options = parse_options_header(r.headers["Content-Disposition"])
        assert options["filename"] == UTF8_NAME
        assert r.read() == (node.root / UTF8_NAME).read_bytes()


def test_curl_resumes_a_cut_download_to_the_identical_file(node, tmp_path):
    data = (node.root / "blob.bin").read_bytes()
    partial = tmp_path / "blob.bin"
    partial.write_bytes(data[:1234567])
    result = curl("-C", "-", "-o", str(partial), f"{node.url}/files/blob.bin")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(partial.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_http_client_get_head_range(node):
    data = (node.root / "blob.bin").read_bytes()
    conn = connect(node)
    conn.request("HEAD", "/files/blob.bin")
    head = conn.getresponse()
    assert head.status == 200 and head.read() == b"" and head.getheader("Content-Length") == str(len(data))
    conn.request("GET", "/files/blob.bin", headers={"Range": "bytes=100-199"})
    part = conn.getresponse()
    assert part.status == 206 and part.read() == data[100:200]
    conn.request("GET", "/files/blob.bin")  # same keep-alive connection
    whole = conn.getresponse()
    assert whole.status == 200 and whole.read() == data
    conn.close()


@pytest.mark.parametrize("raw_path", [
    "/files/../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/..%2f..%2fetc%2fpasswd",
    "/files//etc/passwd", "/files/blob.bin%00", "/files/%2Fetc%2Fpasswd", "/files/a/../../x",
])
def test_traversal_tricks_are_404_json(node, raw_path):
    conn = connect(node)
    conn.request("GET", raw_path)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 404 and r.getheader("Content-Type") == "application/json", body
    assert b"Traceback" not in body
    conn.close()


def test_symlink_pointing_out_is_404(node, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", node.root / "link.txt")
    conn = connect(node)
    conn.request("GET", "/files/link.txt")
    assert conn.getresponse().status == 404


def test_token_with_curl(cluster_factory):
    cluster = cluster_factory(names=("a",), token="s3cret")
    node = cluster["a"]
    (node.root / "f.txt").write_text("x")
    assert curl("-f", f"{node.url}/files/f.txt").returncode == 22
    assert curl("-f", "-u", "me:s3cret", f"{node.url}/files/f.txt").stdout == b"x"
    assert curl("-f", "-H", "Authorization: Bearer s3cret", f"{node.url}/files/f.txt").stdout == b"x"
    assert curl("-f", f"{node.url}/healthz").returncode == 0


def test_access_log_has_one_line_per_request(node):
    conn = connect(node)
    conn.request("GET", "/files/blob.bin")
    conn.getresponse().read()
    conn.request("GET", "/files/missing")
    conn.getresponse().read()
    conn.close()
    time.sleep(0.3)
    log = node.log()
    assert f'"GET /files/blob.bin" 200 {3 << 20} ' in log
    assert '"GET /files/missing" 404 ' in log


def test_aborted_downloads_release_their_files(node):
    fd_dir = f"/proc/{node.pid}/fd"
    before = len(os.listdir(fd_dir))
    for i in range(30):
        s = socket.create_connection((node.host, node.port))
        s.sendall(b"GET /files/blob.bin HTTP/1.1\r\nHost: x\r\n" + (b"Range: bytes=10-\r\n" if i % 2 else b"") + b"\r\n")
        s.recv(1000)
        s.close()

    def blob_fds():
        found = []
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{fd}").endswith("blob.bin"):
                    found.append(fd)
            except FileNotFoundError:  # closed while we looked
                pass
        return found

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (blob_fds() or len(os.listdir(fd_dir)) > before + 2):
        time.sleep(0.2)
    assert blob_fds() == []
    assert len(os.listdir(fd_dir)) <= before + 2


def test_no_config_serves_root_on_listen(tmp_path):
    (tmp_path / "hello.txt").write_text("hi")
    host = loopback_host()
    port = free_port(host)
    node = NodeProcess("local", f"http://{host}:{port}", tmp_path, host, port, tmp_path / "log")
    with open(node.log_path, "wb") as log:
        node.proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--root", str(tmp_path),
                                      "--listen", f"{host}:{port}", "--node", "solo"], stdout=log, stderr=log)
    try:
        node.wait_ready()
        with urllib.request.urlopen(f"{node.url}/healthz") as r:
            assert r.read() == b'{"node": "solo", "status": "ok"}\n'
        with urllib.request.urlopen(f"{node.url}/files/hello.txt") as r:
            assert r.read() == b"hi"
    finally:
        node.stop()


def test_one_gib_download_keeps_memory_flat(node):
    big = node.root / "big.bin"
    with open(big, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(1 << 30)  # sparse: fast to make, still read through the page cache
    conn = connect(node)
    conn.request("GET", "/files/big.bin")
    r = conn.getresponse()
    got = 0
    while chunk := r.read(1 << 20):
        got += len(chunk)
    assert got == 1 << 30
    assert node.rss_peak_kib() < 100 * 1024
