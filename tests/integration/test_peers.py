"""Forwarding a peer's file through a node (/nodes/{node}/...), /api/nodes, and every fault on the hop.

One module cluster on loopback, token on, read_timeout 1 s:
- a: the node clients talk to; its own url in the config is a dead port (so /nodes/a/... must be local),
- b: reached by a only through a FaultProxy,
- c: configured, never started (connection refused),
- d: reached directly; holds the 1 GiB file for the memory test.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
import urllib3

import support
from faultproxy import FaultProxy

TOKEN = "peer-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1 << 20
BIG = 1 << 30
UTF8_NAME = "rapport d'été.txt"


class Net:
    """The module's cluster, its proxy in front of b, and the seeded files."""

    def __init__(self, cluster, proxy):
        self.cluster, self.proxy = cluster, proxy
        a = cluster["a"]
        self.a_url = f"http://{a.host}:{a.port}"
        self.b_direct = f"http://{cluster['b'].host}:{cluster['b'].port}"

    def get(self, path, headers=None):
        return support.http("GET", self.a_url + path, headers={**AUTH, **(headers or {})})

    def direct_b(self, path, headers=None, method="GET"):
        return support.http(method, self.b_direct + path, headers={**AUTH, **(headers or {})})

    def raw(self, path, method="GET", headers=None, timeout=30):
        """A raw http.client request to a: (connection, response) with the body unread."""
        a = self.cluster["a"]
        conn = http.client.HTTPConnection(a.host, a.port, timeout=timeout)
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in {**AUTH, **(headers or {})}.items():
            conn.putheader(k, v)
        conn.endheaders()
        return conn, conn.getresponse()


def _seed(root_b: Path, root_d: Path, root_a: Path) -> dict:
    data = os.urandom(4 * MiB + 123)
    (root_b / "data.bin").write_bytes(data)
    (root_b / "dir" / "sub").mkdir(parents=True)
    (root_b / "dir" / "x.txt").write_text("x on b\n")
    (root_b / "dir" / "sub" / "y.txt").write_text("y on b\n")
    (root_b / UTF8_NAME).write_text("UTF-8 names work.\n")
    (root_b / "empty.bin").write_bytes(b"")
    with open(root_b / "long.bin", "wb") as f:  # sparse: long enough that aborts stop mid-stream
        f.truncate(256 * MiB)
    (root_a / "local.txt").write_text("served by a itself\n")
    big = hashlib.sha256()
    with open(root_d / "big.bin", "wb") as f:  # sparse, with random blocks so order matters
        f.truncate(BIG)
        for i in range(8):
            block = os.urandom(MiB)
            f.seek(i * (BIG // 8) + 4097)
            f.write(block)
    with open(root_d / "big.bin", "rb") as f:
        while chunk := f.read(8 * MiB):
            big.update(chunk)
    return {"data": data, "big_sha": big.hexdigest()}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peers")
    proxy = FaultProxy()
    dead = f"http://127.0.0.1:{support.free_port()}"
    cluster = support.start_cluster(tmp, ("a", "b", "c", "d"), urls={"a": dead, "b": proxy.url}, start=["d"],
                                    token=TOKEN, read_timeout=1.0, connect_timeout=1.0)
    try:
        seeded = _seed(cluster["b"].root, cluster["d"].root, cluster["a"].root)
        proxy.target = (cluster["b"].host, cluster["b"].port)
        a = cluster["a"]
        a.url = f"http://{a.host}:{a.port}"  # clients use a's real address; its config url stays dead
        for name in ("a", "b"):
            support.launch(cluster[name], cluster.config_path)
        for name in ("a", "b"):
            cluster[name].wait_ready()
        n = Net(cluster, proxy)
        n.files = seeded
        yield n
    finally:
        cluster.stop()
        proxy.stop()


@pytest.fixture
def hop(net):
    """The module cluster with the proxy passing, and passing again after the test."""
    net.proxy.set("pass")
    yield net
    net.proxy.set("pass")


def _json_error(r, status, code=None):
    assert r.status == status, r.data
    assert r.headers["Content-Type"] == "application/json"
    doc = r.json()
    assert set(doc) == {"error", "message"}
    if code:
        assert doc["error"] == code
    return doc


REPRESENTATION = ("Content-Length", "Content-Type", "Content-Disposition", "ETag", "Last-Modified",
                  "Accept-Ranges")


# -- the happy path ------------------------------------------------------------------------------

def test_identical_bytes_and_headers(hop):
    r = hop.get("/nodes/b/files/data.bin")
    assert r.status == 200
    assert hashlib.sha256(r.data).digest() == hashlib.sha256(hop.files["data"]).digest()
    direct = hop.direct_b("/files/data.bin", method="HEAD")
    for key in REPRESENTATION:
        assert r.headers[key] == direct.headers[key], key


def test_head(hop):
    conn, r = hop.raw("/nodes/b/files/data.bin", "HEAD")
    assert r.status == 200
    assert int(r.getheader("Content-Length")) == len(hop.files["data"])
    assert r.read() == b""
    conn.close()


def test_utf8_name_and_empty_file(hop):
    r = hop.get("/nodes/b/files/" + quote(UTF8_NAME))
    assert r.status == 200 and r.data == b"UTF-8 names work.\n"
    assert "filename*=UTF-8''rapport%20d%27%C3%A9t%C3%A9.txt" in r.headers["Content-Disposition"]
    r = hop.get("/nodes/b/files/empty.bin")
    assert r.status == 200 and r.data == b"" and r.headers["Content-Length"] == "0"


def test_single_range(hop):
    r = hop.get("/nodes/b/files/data.bin", {"Range": "bytes=100-199"})
    assert r.status == 206
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(hop.files['data'])}"
    assert r.data == hop.files["data"][100:200]


def test_multipart_ranges(hop):
    ranges = {"Range": "bytes=0-9,1000-1009,-5"}
    r = hop.get("/nodes/b/files/data.bin", ranges)
    direct = hop.direct_b("/files/data.bin", ranges)
    assert r.status == 206
    assert r.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert r.headers["Content-Length"] == str(len(r.data))
    assert r.data.count(hop.files["data"][1000:1010]) == 1 and hop.files["data"][-5:] in r.data
    assert len(r.data) == len(direct.data)


def test_unsatisfiable_range(hop):
    r = hop.get("/nodes/b/files/data.bin", {"Range": "bytes=99999999-"})
    _json_error(r, 416)
    assert r.headers["Content-Range"] == f"bytes */{len(hop.files['data'])}"


def test_conditionals_304_and_412(hop):
    first = hop.get("/nodes/b/files/data.bin", {"Range": "bytes=0-0"})
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    r = hop.get("/nodes/b/files/data.bin", {"If-None-Match": etag})
    assert r.status == 304 and r.data == b"" and r.headers["ETag"] == etag
    r = hop.get("/nodes/b/files/data.bin", {"If-Modified-Since": modified})
    assert r.status == 304
    _json_error(hop.get("/nodes/b/files/data.bin", {"If-Match": '"nope"'}), 412)
    old_date = "Mon, 01 Jan 2001 00:00:00 GMT"
    _json_error(hop.get("/nodes/b/files/data.bin", {"If-Unmodified-Since": old_date}), 412)
    assert hop.get("/nodes/b/files/data.bin", {"If-Match": etag, "Range": "bytes=0-0"}).status == 206


def test_if_range(hop):
    etag = hop.get("/nodes/b/files/data.bin", {"Range": "bytes=0-0"}).headers["ETag"]
    r = hop.get("/nodes/b/files/data.bin", {"Range": "bytes=10-19", "If-Range": etag})
    assert r.status == 206 and r.data == hop.files["data"][10:20]
    r = hop.get("/nodes/b/files/data.bin", {"Range": "bytes=10-19", "If-Range": '"other"'})
    assert r.status == 200 and len(r.data) == len(hop.files["data"])


def test_missing_file_passes_peer_404(hop):
    doc = _json_error(hop.get("/nodes/b/files/nope.bin"), 404)
    assert doc["message"]
    _json_error(hop.get("/nodes/b/files/dir"), 404)


def test_listing_through_the_hop(hop):
    r = hop.get("/nodes/b/list/")
    assert r.status == 200 and r.json() == hop.direct_b("/list/").json()
    assert r.json()["node"] == "b"
    r = hop.get("/nodes/b/list/dir")
    assert [e["name"] for e in r.json()["entries"]] == ["sub", "x.txt"]
    r = hop.get("/nodes/b/list/dir?recursive=1")
    assert [e["path"] for e in r.json()["entries"]] == ["dir/sub/y.txt", "dir/x.txt"]
    _json_error(hop.get("/nodes/b/list/nope"), 404)


# -- what never leaves the node --------------------------------------------------------------------

def test_unknown_node_is_404(hop):
    before = hop.proxy.total
    _json_error(hop.get("/nodes/zz/files/data.bin"), 404, "unknown_node")
    _json_error(hop.get("/nodes/zz/list/"), 404, "unknown_node")
    assert hop.proxy.total == before


@pytest.mark.parametrize("path", [
    "/nodes/b/files/../b/data.bin", "/nodes/b/files/%2e%2e/secret", "/nodes/b/files/dir/%2E%2E/%2e%2e/x",
    "/nodes/b/files/dir%2F..%2F..%2Fx", "/nodes/b/files/%00x", "/nodes/b/files/.wsgi_stream-upload-x",
    "/nodes/b/list/%2e%2e", "/nodes/b/files/./", "/nodes/127.0.0.1:80/files/x", "/nodes/%2e%2e/files/x",
])
def test_traversal_refused_before_any_connection(hop, path):
    before = hop.proxy.total
    conn, r = hop.raw(path)
    body = r.read()
    conn.close()
    assert r.status == 404, body
    assert json.loads(body)["error"] in ("not_found", "unknown_node")
    assert hop.proxy.total == before


def test_self_is_served_locally(hop):
    # a's own url in the config is a dead port: anything but a local answer would fail.
    r = hop.get("/nodes/a/files/local.txt")
    assert r.status == 200 and r.data == b"served by a itself\n"
    r = hop.get("/nodes/a/files/local.txt", {"Range": "bytes=0-5"})
    assert r.status == 206 and r.data == b"served"
    assert [e["name"] for e in hop.get("/nodes/a/list/").json()["entries"]] == ["local.txt"]
    _json_error(hop.get("/nodes/a/files/../x"), 404)


def test_token(hop):
    r = support.http("GET", hop.a_url + "/nodes/b/files/data.bin", timeout=10)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Basic realm="wsgi_stream"'
    assert support.http("GET", hop.b_direct + "/files/dir/x.txt", timeout=10).status == 401
    # b wants the token too: a passed its own, the client's Basic password got a in.
    basic = urllib3.make_headers(basic_auth=f"anyone:{TOKEN}")
    r = support.http("GET", hop.a_url + "/nodes/b/files/dir/x.txt", headers=basic, timeout=10)
    assert r.status == 200 and r.data == b"x on b\n"


def test_put_through_the_hop_when_uploads_are_off(hop):
    # The upload itself is tested with the uploads; here: PUT reaches that code and is refused.
    r = support.http("PUT", hop.a_url + "/nodes/b/files/new.txt", body=b"x", headers=AUTH, timeout=10)
    _json_error(r, 405)
    assert not (hop.cluster["b"].root / "new.txt").exists()


# -- /api/nodes -----------------------------------------------------------------------------------

def test_api_nodes(hop):
    started = time.monotonic()
    doc = hop.get("/api/nodes").json()
    assert time.monotonic() - started < 3
    assert doc["self"] == "a" and doc["uploads"] is False
    assert [(n["name"], n["status"]) for n in doc["nodes"]] == [
        ("a", "ok"), ("b", "ok"), ("c", "down"), ("d", "ok")]
    assert doc["nodes"][1]["url"] == hop.proxy.url
    assert "c" in doc["nodes"][2]["message"]


def test_api_nodes_with_a_stalled_peer(hop):
    hop.proxy.set("stall")
    started = time.monotonic()
    doc = hop.get("/api/nodes").json()
    assert time.monotonic() - started < 2.5
    assert [n["status"] for n in doc["nodes"]] == ["ok", "down", "down", "ok"]


# -- peers that are not what the config says ------------------------------------------------------

def test_peer_with_another_token_is_502_not_401(cluster_factory, tmp_path):
    cl = cluster_factory(names=("a", "b"), start=["a"], token=TOKEN)
    other = tmp_path / "other.toml"
    other.write_text(cl.config_path.read_text().replace(TOKEN, "a-different-token"))
    support.launch(cl["b"], other).wait_ready()
    (cl["b"].root / "f.txt").write_text("f")
    r = support.http("GET", cl["a"].url + "/nodes/b/files/f.txt", headers=AUTH, timeout=10)
    doc = _json_error(r, 502, "peer_unauthorized")
    assert "WWW-Authenticate" not in r.headers and "Node b" in doc["message"]


class _Impostor(BaseHTTPRequestHandler):
    """Not a wsgi_stream node: fails every file with 500 and calls itself "zz"."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body, status = (b'{"node": "zz", "status": "ok"}', 200) if self.path == "/healthz" else (b"oops", 500)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_peer_5xx_and_wrong_identity(cluster_factory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        impostor = f"http://127.0.0.1:{server.server_port}"
        cl = cluster_factory(names=("a", "b"), start=["a"], urls={"b": impostor})
        doc = _json_error(support.http("GET", cl["a"].url + "/nodes/b/files/f.txt", timeout=10), 502, "peer_error")
        assert "Node b" in doc["message"] and "500" in doc["message"]
        nodes = support.http("GET", cl["a"].url + "/api/nodes", timeout=10).json()["nodes"]
        assert nodes[1]["status"] == "down" and "'zz'" in nodes[1]["message"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- faults ---------------------------------------------------------------------------------------

def test_refused_connection_is_502(hop):
    doc = _json_error(hop.get("/nodes/c/files/data.bin"), 502, "peer_unreachable")
    assert "c" in doc["message"].split()


def test_reset_connection_is_502(hop):
    hop.proxy.set("refuse")
    doc = _json_error(hop.get("/nodes/b/files/data.bin"), 502)
    assert "Node b" in doc["message"]
    _json_error(hop.get("/nodes/b/list/"), 502)


def test_stall_is_504_within_read_timeout(hop):
    hop.proxy.set("stall")
    started = time.monotonic()
    doc = _json_error(hop.get("/nodes/b/files/data.bin"), 504, "peer_timeout")
    assert time.monotonic() - started < 3  # read_timeout = 1
    assert "Node b" in doc["message"]


def test_cut_in_headers_is_502(hop):
    hop.proxy.set("cut", cut_after=10)
    _json_error(hop.get("/nodes/b/files/data.bin"), 502)


def test_stale_pooled_connection_is_retried(hop):
    # Closed as the request arrives, like a kept-alive connection the peer closed just then.
    hop.proxy.set("cut_request", cut_after=0, times=1)
    assert hop.get("/nodes/b/files/dir/x.txt").data == b"x on b\n"


def _read_all(response) -> tuple[bytes, Exception | None]:
    got = bytearray()
    try:
        while chunk := response.read(256 * 1024):
            got += chunk
    except (http.client.IncompleteRead, ConnectionError) as exc:
        if isinstance(exc, http.client.IncompleteRead):
            got += exc.partial
        return bytes(got), exc
    if response.length:  # http.client's read(amt) ends quietly at EOF; what remains tells a cut
        return bytes(got), http.client.IncompleteRead(bytes(got), response.length)
    return bytes(got), None


def test_cut_mid_body_cuts_the_client(hop):
    hop.proxy.set("cut", cut_after=1536 * 1024)
    conn, r = hop.raw("/nodes/b/files/data.bin")
    assert r.status == 200 and int(r.getheader("Content-Length")) == len(hop.files["data"])
    got, exc = _read_all(r)
    conn.close()
    assert exc is not None, "a short body was presented as complete"
    assert 0 < len(got) < len(hop.files["data"]) and hop.files["data"].startswith(got)
    deadline = time.monotonic() + 5
    while "stream from node b broke off" not in hop.cluster["a"].log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(l for l in hop.cluster["a"].log().splitlines() if "stream from node b broke off" in l)
    assert "WARNING wsgi_stream.peers" in line and "data.bin" in line and str(len(hop.files["data"])) in line


def test_cut_mid_body_curl_exit_18(hop, tmp_path):
    hop.proxy.set("cut", cut_after=2 * MiB)
    out = tmp_path / "out.bin"
    done = subprocess.run(["curl", "-sS", "-o", str(out), "-H", f"Authorization: Bearer {TOKEN}",
                           hop.a_url + "/nodes/b/files/data.bin"], capture_output=True, timeout=30)
    assert done.returncode == 18, done.stderr
    assert out.stat().st_size < len(hop.files["data"])


def test_stall_mid_body_cuts_the_client(hop):
    hop.proxy.set("stall_after", cut_after=1536 * 1024)
    started = time.monotonic()
    conn, r = hop.raw("/nodes/b/files/data.bin")
    got, exc = _read_all(r)
    conn.close()
    assert exc is not None and len(got) < len(hop.files["data"])
    assert time.monotonic() - started < 5


def test_resume_after_cut_with_range_and_if_range(hop):
    data = hop.files["data"]
    hop.proxy.set("cut", cut_after=3 * MiB, times=1)
    conn, r = hop.raw("/nodes/b/files/data.bin")
    etag = r.getheader("ETag")
    got, exc = _read_all(r)
    conn.close()
    assert exc is not None
    r = hop.get("/nodes/b/files/data.bin", {"Range": f"bytes={len(got)}-", "If-Range": etag})
    assert r.status == 206
    assert got + r.data == data


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settle(measure, limit, seconds=10.0):
    deadline = time.monotonic() + seconds
    while (value := measure()) > limit and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_aborted_downloads_leak_nothing(hop):
    a = hop.cluster["a"]
    hop.get("/nodes/b/files/dir/x.txt")  # warm up: the pool to b exists
    time.sleep(0.3)
    fds_before = _fd_count(a.pid)
    for i in range(200):
        s = socket.create_connection((a.host, a.port))
        s.sendall(f"GET /nodes/b/files/long.bin HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                  .encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        if i % 2:  # half end with an RST, half with a FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # Every upstream connection of an aborted download is closed, none left half-read in the pool.
    assert _settle(lambda: hop.proxy.active, 2) <= 2
    assert _settle(lambda: _fd_count(a.pid), fds_before + 4) <= fds_before + 4
    r = hop.get("/nodes/b/files/data.bin")  # and the node still works
    assert r.status == 200 and len(r.data) == len(hop.files["data"])
    assert "Traceback" not in "\n".join(l for l in a.log().splitlines() if "peers" in l)


def test_memory_flat_forwarding_1gib(net, cluster_factory):
    # A fresh pair, so the peak is this download's alone; d's sparse file is linked in, not copied.
    pair = cluster_factory(names=("x", "y"))
    os.link(net.cluster["d"].root / "big.bin", pair["y"].root / "big.bin")
    x = pair["x"]
    conn = http.client.HTTPConnection(x.host, x.port, timeout=60)
    conn.request("GET", "/nodes/y/files/big.bin")
    r = conn.getresponse()
    assert r.status == 200 and int(r.getheader("Content-Length")) == BIG
    digest, total = hashlib.sha256(), 0
    while chunk := r.read(MiB):
        digest.update(chunk)
        total += len(chunk)
    conn.close()
    assert total == BIG and digest.hexdigest() == net.files["big_sha"]
    assert x.rss_peak_kib() < 100 * 1024, f"peak RSS {x.rss_peak_kib()} KiB"
