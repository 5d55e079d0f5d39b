"""GET /cluster/files and /cluster/list against real nodes on loopback, faults included."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess
import threading
import time
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3
import webtest

import support
from faultproxy import proxied_cluster
from test_zipfmt import check_archive, save_sparse
from wsgi_stream import ClusterArchive, PeerClient, load_config, local_node, make_app, wsgi_error
from wsgi_stream.errors import ApiError, StreamBroken
from wsgi_stream.zipfmt import dos_date_time

MiB = 1 << 20


def put(root: Path, rel: str, data: bytes, mtime: float | None = None) -> bytes:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return data


def sparse(root: Path, rel: str, size: int, head: bytes, tail: bytes) -> int:
    """A sparse file of `size` bytes starting with `head` and ending with `tail`; returns its CRC-32."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
        f.seek(size - len(tail))
        f.write(tail)
    return zlib.crc32(tail, zlib.crc32(bytes(size - len(head) - len(tail)), zlib.crc32(head)))


def download(url: str, tmp_path: Path, name: str = "got.zip", headers=None):
    """GET url; check the status is 200, the length exact, and the archive good; return (zipfile, report)."""
    r = support.http("GET", url, headers=headers, timeout=120)
    assert r.status == 200, r.data
    assert r.headers["Content-Type"] == "application/zip"
    if "Content-Length" in r.headers:
        assert int(r.headers["Content-Length"]) == len(r.data)
    path = tmp_path / name
    path.write_bytes(r.data)
    check_archive(path)
    zf = zipfile.ZipFile(path)
    assert zf.namelist()[-1] == "_cluster.json"
    return zf, json.loads(zf.read("_cluster.json")), r


def names(zf) -> list[str]:
    return zf.namelist()[:-1]


def error_of(r) -> str:
    assert r.headers["Content-Type"] == "application/json"
    return r.json()["error"]


# -- the archive -----------------------------------------------------------------------------------

def test_folder_from_every_node_byte_exact_with_names_times_and_report(cluster_factory, tmp_path):
    cl = cluster_factory(token="s3cret", chunk_size=65536)
    auth = {"Authorization": "Bearer s3cret"}
    files = {
        "a": {"logs/app.log": os.urandom(300_000), "logs/empty": b"", "logs/.hidden": b"h",
              "logs/sub/rapport d'été 日本.txt": "ünï\n".encode()},
        "b": {"logs/app.log": os.urandom(1_000_003), "logs/deep/er/x": b"x" * 70000},
        "c": {"logs/app.log": b"from c\n"},
    }
    old, new = 1e8, 1_700_000_001  # 1973 (before DOS time) and 2023 (odd second)
    for node, tree in files.items():
        for rel, data in tree.items():
            put(cl[node].root, rel, data, mtime=old if rel == "logs/empty" else new)
    put(cl["c"].root, "elsewhere/not-in-logs", b"no")

    zf, report, r = download(cl["b"].url + "/cluster/files/logs", tmp_path, headers=auth)

    expected = [f"{n}/{rel}" for n in "abc" for rel in sorted(files[n])]
    assert names(zf) == expected
    for info in zf.infolist()[:-1]:
        node, rel = info.filename.split("/", 1)
        data = files[node][rel]
        assert hashlib.sha256(zf.read(info)).digest() == hashlib.sha256(data).digest()
        assert info.compress_type == zipfile.ZIP_STORED and info.flag_bits & 0x800
        when = dos_date_time(old if rel == "logs/empty" else new)
        assert info.date_time == when[:5] + (when[5] // 2 * 2,)
    assert zf.getinfo("a/logs/empty").date_time == (1980, 1, 1, 0, 0, 0)
    assert 'filename="logs-cluster.zip"' in r.headers["Content-Disposition"]
    assert report["path"] == "logs"
    assert list(report["nodes"]) == ["a", "b", "c"]
    for node in "abc":
        entry = report["nodes"][node]
        assert entry["status"] == "ok" and entry["errors"] == []
        assert entry["files"] == [{"name": f"{node}/{rel}", "size": len(files[node][rel]),
                                   "crc32": f"{zlib.crc32(files[node][rel]):08x}"} for rel in sorted(files[node])]
    # Without the token, nothing.
    assert support.http("GET", cl["a"].url + "/cluster/files/logs").status == 401


def test_one_file_node_down_and_missing_are_reported_and_strict_refuses(cluster_factory, tmp_path):
    cl = cluster_factory(start=["a", "b"])
    data = put(cl["a"].root, "data/report.csv", b"x,y\n1,2\n")
    put(cl["b"].root, "data/other.csv", b"not this one")
    base = cl["a"].url + "/cluster/files/data/report.csv"

    zf, report, r = download(base, tmp_path)
    assert names(zf) == ["a/data/report.csv"]
    assert zf.read("a/data/report.csv") == data
    assert 'filename="report.csv-cluster.zip"' in r.headers["Content-Disposition"]
    assert report["nodes"]["a"]["status"] == "ok"
    assert report["nodes"]["b"]["status"] == "missing"
    assert report["nodes"]["c"] == {"status": "error", "message": "Node c is unreachable.", "files": [], "errors": []}

    strict = support.http("GET", base + "?strict=1")
    assert strict.status == 502 and error_of(strict) == "nodes_failed" and "c:" in strict.json()["message"]
    # Missing is not failing: a strict download of the nodes that answered goes through.
    zf, report, _ = download(base + "?strict=1&nodes=a,b", tmp_path, "strict.zip")
    assert list(report["nodes"]) == ["a", "b"]


def test_head_nodes_selection_root_folder_and_errors(cluster_factory, tmp_path):
    cl = cluster_factory()
    for node in "abc":
        put(cl[node].root, f"{node}.txt", node.encode() * 3)
        put(cl[node].root, "common/x", b"same")
    url = cl["b"].url + "/cluster/files/"

    get = support.http("GET", url + "common")
    head = support.http("HEAD", url + "common")
    assert head.status == 200 and head.data == b""
    for key in ("Content-Type", "Content-Length", "Content-Disposition"):
        assert head.headers[key] == get.headers[key]

    zf, report, r = download(url + "common?nodes=c,a", tmp_path, "sel.zip")
    assert names(zf) == ["a/common/x", "c/common/x"] and list(report["nodes"]) == ["a", "c"]

    zf, report, r = download(url, tmp_path, "root.zip")
    assert 'filename="root-cluster.zip"' in r.headers["Content-Disposition"]
    assert names(zf) == [f"{n}/{rel}" for n in "abc" for rel in sorted([f"{n}.txt", "common/x"])]
    assert report["path"] == ""

    for path, status, code in [("nothing/here", 404, "not_found"), ("common?nodes=a,zz", 404, "unknown_node"),
                               ("common?nodes=", 400, "bad_request"), ("common?compress=lzma", 400, "bad_request")]:
        r = support.http("GET", url + path)
        assert (r.status, error_of(r)) == (status, code), path
    conn = http.client.HTTPConnection(cl["b"].host, cl["b"].port, timeout=10)
    conn.request("GET", "/cluster/files/common/../../../etc")
    r = conn.getresponse()
    assert r.status == 404 and json.loads(r.read())["error"] == "not_found"
    conn.close()


def test_deflate_is_chunked_and_valid(cluster_factory, tmp_path):
    cl = cluster_factory(names=("a", "b"))
    text = b"the same log line over and over\n" * 100_000
    put(cl["a"].root, "logs/app.log", text)
    put(cl["b"].root, "logs/app.log", text[::-1])
    zf, report, r = download(cl["a"].url + "/cluster/files/logs?compress=deflate", tmp_path)
    assert "Content-Length" not in r.headers and r.headers.get("Transfer-Encoding") == "chunked"
    assert len(r.data) < len(text) // 10
    assert zf.getinfo("a/logs/app.log").compress_type == zipfile.ZIP_DEFLATED
    assert zf.read("b/logs/app.log") == text[::-1]
    assert report["nodes"]["b"]["files"][0]["crc32"] == f"{zlib.crc32(text[::-1]):08x}"
    head = support.http("HEAD", cl["a"].url + "/cluster/files/logs?compress=deflate")
    assert head.status == 200 and "Content-Length" not in head.headers


class _HostilePeer(BaseHTTPRequestHandler):
    """A peer answering with names that try to leave the archive, plus two good files.

    (A backslash is only a character on the peer's disk: its member gets a portable name.)
    """

    good = b"abc"
    entries = [
        {"path": "stuff/ok.txt", "type": "file", "size": 3, "mtime": 1.7e9, "etag": '"e1"'},
        {"path": "stuff/../../etc/passwd", "type": "file", "size": 1, "mtime": 0, "etag": '"e2"'},
        {"path": "/etc/shadow", "type": "file", "size": 1, "mtime": 0, "etag": '"e3"'},
        {"path": "stuff/a\\..\\..\\b", "type": "file", "size": 3, "mtime": 0, "etag": '"e4"'},
        {"path": "other/outside", "type": "file", "size": 1, "mtime": 0, "etag": '"e5"'},
        {"path": "stuff/negative", "type": "file", "size": -1, "mtime": 0, "etag": '"e6"'},
        {"path": "stuff/weak", "type": "file", "size": 1, "mtime": 0, "etag": 'W/"e7"'},
        {"path": "stuff/ok.txt", "type": "file", "size": 3, "mtime": 0, "etag": '"e1"'},
    ]

    def do_GET(self):
        if self.path.startswith("/list/stuff"):
            body = json.dumps({"node": "b", "path": "stuff", "entries": self.entries}).encode()
            self._answer(200, body, "application/json")
        elif self.path == "/files/stuff/ok.txt":
            self._answer(200, self.good, "text/plain", etag='"e1"')
        elif self.path == "/files/stuff/a%5C..%5C..%5Cb":
            self._answer(200, self.good, "text/plain", etag='"e4"')
        else:
            self._answer(404, b'{"error": "not_found", "message": "no"}', "application/json")

    def _answer(self, status, body, ctype, etag=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_names_from_a_hostile_peer_are_left_out_and_reported(cluster_factory, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostilePeer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cl = cluster_factory(names=("a", "b"), urls={"b": f"http://127.0.0.1:{server.server_port}"}, start=["a"])
        put(cl["a"].root, "stuff/mine", b"mine")
        zf, report, _ = download(cl["a"].url + "/cluster/files/stuff", tmp_path)
        assert names(zf) == ["a/stuff/mine", "b/stuff/a%5C..%5C..%5Cb", "b/stuff/ok.txt"]
        assert zf.read("b/stuff/ok.txt") == zf.read("b/stuff/a%5C..%5C..%5Cb") == b"abc"
        assert report["nodes"]["b"]["status"] == "ok"
        assert report["nodes"]["b"]["files"][0]["original_name"] == "b/stuff/a\\..\\..\\b"
        left_out = [e["name"] for e in report["nodes"]["b"]["errors"]]
        assert left_out == [e["path"] for e in _HostilePeer.entries[1:] if e["etag"] != '"e4"']
        assert all(e["message"].startswith("left out:") for e in report["nodes"]["b"]["errors"])
        strict = support.http("GET", cl["a"].url + "/cluster/files/stuff?strict=1")
        assert strict.status == 502 and error_of(strict) == "nodes_failed"
    finally:
        server.shutdown()
        server.server_close()


def test_cluster_list_merges_by_name(cluster_factory):
    cl = cluster_factory(start=["a", "b"])
    put(cl["a"].root, "logs/app.log", b"12345", mtime=1_700_000_000)
    put(cl["a"].root, "logs/old/x", b"")
    put(cl["b"].root, "logs/old/y", b"")
    put(cl["b"].root, "logs/app.log/inner", b"")  # a folder on b, a file on a
    r = support.http("GET", cl["b"].url + "/cluster/list/logs")
    assert r.status == 200
    doc = r.json()
    etag = support.http("HEAD", cl["a"].url + "/files/logs/app.log").headers["ETag"]
    assert doc == {
        "path": "logs",
        "nodes": {"a": {"status": "ok"}, "b": {"status": "ok"},
                  "c": {"status": "error", "message": "Node c is unreachable."}},
        "entries": [
            {"name": "app.log", "path": "logs/app.log", "type": "dir", "nodes": {"b": {}}},
            {"name": "app.log", "path": "logs/app.log", "type": "file",
             "nodes": {"a": {"size": 5, "mtime": 1_700_000_000.0, "etag": etag}}},
            {"name": "old", "path": "logs/old", "type": "dir", "nodes": {"a": {}, "b": {}}},
        ]}
    r = support.http("GET", cl["a"].url + "/cluster/list/logs?nodes=a")
    assert list(r.json()["nodes"]) == ["a"]
    root = support.http("GET", cl["a"].url + "/cluster/list/").json()
    assert [e["name"] for e in root["entries"]] == ["logs"]
    r = support.http("GET", cl["a"].url + "/cluster/list/nothing?nodes=a,b")
    assert r.status == 404 and error_of(r) == "not_found"


# -- changes between plan and stream (in-process app, real peer) -----------------------------------

def test_a_file_changed_after_the_plan_cuts_the_stream(cluster_factory):
    cl = cluster_factory(names=("a", "b"), start=["b"])
    app = make_app(cl.config_path, "a")
    for node in "ab":
        put(cl[node].root, "d/f", b"original")

    for changed in ("a", "b"):
        archive = ClusterArchive(app.local, app.peers, "d")
        assert archive.length is not None
        put(cl[changed].root, "d/f", b"replaced")  # same size, new file
        body = archive.body()
        with pytest.raises(StreamBroken, match="changed"):
            for _ in body:
                pass
        put(cl[changed].root, "d/f", b"original")

    archive = ClusterArchive(app.local, app.peers, "d")
    (cl["a"].root / "d" / "f").unlink()
    with pytest.raises(StreamBroken, match="disappeared"):
        b"".join(archive.body())


# -- faults on the way from a peer ----------------------------------------------------------------

def test_peer_cut_mid_member_again_and_again_is_resumed_byte_exact(cluster_factory, tmp_path):
    with proxied_cluster(cluster_factory, proxied=["b"], chunk_size=65536) as (cl, px):
        data = put(cl["b"].root, "big/file.bin", os.urandom(3 * MiB + 17))
        mine = put(cl["a"].root, "big/file.bin", os.urandom(100_000))
        px["b"].set("cut", cut_after=700_000)  # every connection to b breaks after 700 kB
        zf, report, _ = download(cl["a"].url + "/cluster/files/big", tmp_path)
        assert zf.read("b/big/file.bin") == data and zf.read("a/big/file.bin") == mine
        assert report["nodes"]["b"]["files"][0]["crc32"] == f"{zlib.crc32(data):08x}"
        assert px["b"].faulted >= 5
        ranged = [line for line in cl["b"].log().splitlines() if '"GET /files/big/file.bin" 206' in line]
        assert len(ranged) >= 4
        assert "asking node b again" in cl["a"].log()


def test_peer_stalling_past_read_timeout_is_resumed(cluster_factory, tmp_path):
    with proxied_cluster(cluster_factory, proxied=["b"], names=("a", "b"), chunk_size=65536,
                         read_timeout=1) as (cl, px):
        data = put(cl["b"].root, "f.bin", os.urandom(MiB))
        px["b"].set("stall_after", cut_after=600_000, times=2)  # listing + first stream stall
        started = time.monotonic()
        zf, report, _ = download(cl["a"].url + "/cluster/files/f.bin?nodes=b", tmp_path)
        assert zf.read("b/f.bin") == data
        assert time.monotonic() - started >= 1
        assert "timed out" in cl["a"].log() or "Read timed out" in cl["a"].log()


def _stream_until_headers(node, path: str):
    conn = http.client.HTTPConnection(node.host, node.port, timeout=30)
    conn.request("GET", path)
    return conn, conn.getresponse()


@pytest.mark.parametrize("query", ["", "&compress=deflate"])
def test_peer_file_changed_before_resume_closes_the_connection_early(cluster_factory, tmp_path, query):
    with proxied_cluster(cluster_factory, proxied=["b"], names=("a", "b"), chunk_size=65536,
                         read_timeout=1) as (cl, px):
        put(cl["b"].root, "f.bin", os.urandom(2 * MiB))
        px["b"].set("stall_after", cut_after=500_000)
        r = support.http("GET", cl["a"].url + "/cluster/files/f.bin?nodes=b" + query, stream=True)
        assert r.status == 200
        put(cl["b"].root, "f.bin", os.urandom(2 * MiB))  # a new file: If-Range fails, b sends 200
        got = b""
        # Short of its Content-Length, or chunked without the last chunk: either way an error.
        with pytest.raises(urllib3.exceptions.ProtocolError):
            for chunk in r.stream(65536):
                got += chunk
        r.close()
        assert len(got) < 2 * MiB
        (tmp_path / "cut.zip").write_bytes(got)
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(tmp_path / "cut.zip")
        assert "changed on node b" in cl["a"].log()


def test_peer_gone_for_good_mid_stream_curl_sees_a_partial_file(cluster_factory, tmp_path):
    with proxied_cluster(cluster_factory, proxied=["b"], names=("a", "b"), chunk_size=65536,
                         read_timeout=1) as (cl, px):
        put(cl["b"].root, "f.bin", os.urandom(2 * MiB))
        px["b"].set("stall_after", cut_after=500_000)
        out = tmp_path / "out.zip"
        curl = subprocess.Popen(["curl", "-sS", "-o", str(out),
                                 cl["a"].url + "/cluster/files/f.bin?nodes=b"], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not (out.exists() and out.stat().st_size > 100_000):  # curl's header file is buffered
                assert time.monotonic() < deadline, "nothing from node a"
                time.sleep(0.02)
            px["b"].set("refuse")  # b is gone: the stalled stream closes and every new try is reset
            assert curl.wait(30) == 18, curl.stderr.read()  # CURLE_PARTIAL_FILE
        finally:
            if curl.poll() is None:
                curl.kill()
                curl.wait()
        assert "gave up" in cl["a"].log()
        unzip = subprocess.run(["unzip", "-tqq", str(out)], capture_output=True)
        assert unzip.returncode != 0


def test_client_going_away_closes_the_upstream_at_once(cluster_factory):
    cl = cluster_factory(names=("a", "b"), chunk_size=65536)
    size = 512 * MiB
    sparse(cl["b"].root, "big.bin", size, b"head", b"tail")
    conn, response = _stream_until_headers(cl["a"], "/cluster/files/big.bin?nodes=b")
    response.read(2 * MiB)
    conn.sock.close()
    conn.close()
    # Were the upstream response left open, b would block on its full socket and never log the GET.
    deadline = time.monotonic() + 30
    while True:
        lines = [line for line in cl["b"].log().splitlines() if '"GET /files/big.bin" 200' in line]
        if lines:
            break
        assert time.monotonic() < deadline, "node b still streaming after the client left\n" + cl["b"].log()
        time.sleep(0.05)
    sent = int(lines[0].split('" 200 ')[1].split()[0])
    assert sent < size // 4


# -- big -------------------------------------------------------------------------------------------

def test_past_4_gib_and_memory_flat_while_zipping_3_nodes(cluster_factory, tmp_path):
    """a: one 4 GiB + 1 kB member from disk; b and c: 1 GiB each from peers. Node a stays small."""
    cl = cluster_factory(chunk_size=MiB)
    sizes = {"a": (4 << 30) + 1000, "b": 1 << 30, "c": (1 << 30) + 1}
    crcs = {n: sparse(cl[n].root, "dump/core.bin", sizes[n], f"head of {n}".encode(), f"tail of {n}".encode())
            for n in "abc"}
    put(cl["a"].root, "dump/small.txt", b"small")
    out = tmp_path / "big.zip"
    started = time.monotonic()
    with support.http("GET", cl["a"].url + "/cluster/files/dump", stream=True, timeout=120) as r:
        assert r.status == 200
        length = int(r.headers["Content-Length"])
        assert save_sparse(r.stream(MiB), out) == length
    print(f"{length / MiB:.0f} MiB in {time.monotonic() - started:.1f} s; node a peak RSS "
          f"{cl['a'].rss_peak_kib() // 1024} MiB")
    assert length > sum(sizes.values())
    infos = check_archive(out, unzip=False, testzip=False)  # 7z t checks every CRC, much faster
    assert [i.filename for i in infos] == ["a/dump/core.bin", "a/dump/small.txt", "b/dump/core.bin",
                                           "c/dump/core.bin", "_cluster.json"]
    report = json.loads(zipfile.ZipFile(out).read("_cluster.json"))
    for n in "abc":
        assert zipfile.ZipFile(out).getinfo(f"{n}/dump/core.bin").CRC == crcs[n]
        assert report["nodes"][n]["files"][0] == {"name": f"{n}/dump/core.bin", "size": sizes[n],
                                                  "crc32": f"{crcs[n]:08x}"}
    peak = cl["a"].rss_peak_kib()
    assert peak < 150 * 1024, f"node a peaked at {peak} KiB"


# -- embedding -------------------------------------------------------------------------------------

def test_embedding_app_adds_generated_members(tmp_path):
    root = tmp_path / "root"
    put(root, "logs/app.log", b"log line\n")
    config = load_config(support.write_config(tmp_path / "one.toml", {"a": ("http://127.0.0.1:1", root)}))
    here, peers = local_node(config, "a"), PeerClient(config, "a")  # no WSGI app needed

    def status_zip(environ, start_response):
        try:
            archive = ClusterArchive(here, peers, environ["PATH_INFO"].strip("/"))
        except ApiError as error:
            return wsgi_error(error, start_response)
        archive.add("status/service.txt", [b"running\n"], size=8)
        if "ps" in environ["QUERY_STRING"]:
            archive.add("status/ps.txt", (b"process %d\n" % i for i in range(1000)))
        return archive(environ, start_response)

    sent_headers = []

    def recorded(environ, start_response):
        def record(status, headers, *exc_info):
            sent_headers[:] = headers
            return start_response(status, headers, *exc_info)
        return status_zip(environ, record)

    web = webtest.TestApp(recorded)  # webob would add a Content-Length of its own
    for url, chunked in (("/logs", False), ("/logs?ps=1", True)):
        r = web.get(url)
        assert ("Content-Length" not in dict(sent_headers)) == chunked
        zf = zipfile.ZipFile(io.BytesIO(r.body))
        assert zf.testzip() is None
        assert zf.read("a/logs/app.log") == b"log line\n" and zf.read("status/service.txt") == b"running\n"
        report = json.loads(zf.read("_cluster.json"))
        assert report["generated"][0] == {"name": "status/service.txt", "size": 8,
                                          "crc32": f"{zlib.crc32(b'running' + bytes([10])):08x}"}
        if chunked:
            ps = zf.read("status/ps.txt")
            assert report["generated"][1] == {"name": "status/ps.txt", "size": len(ps),
                                              "crc32": f"{zlib.crc32(ps):08x}"}
    assert web.head("/logs").headers["Content-Length"] == web.get("/logs").headers["Content-Length"]
    missing = web.get("/nothing", status=404)
    assert missing.json["error"] == "not_found"


def test_embedding_app_cannot_add_a_name_the_archive_has(tmp_path):
    root = tmp_path / "root"
    put(root, "logs/app.log", b"log line\n")
    put(root, "logs/a:b.log", b"renamed\n")  # its member name is made portable: a/logs/a%3Ab.log
    config = load_config(support.write_config(tmp_path / "one.toml", {"a": ("http://127.0.0.1:1", root)}))
    archive = ClusterArchive(local_node(config, "a"), PeerClient(config, "a"), "logs")
    archive.add("status/service.txt", [b"running\n"], size=8)
    for taken in ("a/logs/app.log", "a/logs/a%3Ab.log", "status/service.txt", "_cluster.json"):
        with pytest.raises(ValueError):
            archive.add(taken, [b"x"], size=1)
    archive.add("a/logs/other.log", [b"x"], size=1)  # beside the planned files: fine
    with zipfile.ZipFile(io.BytesIO(b"".join(archive.body()))) as zf:
        assert zf.testzip() is None and sorted(zf.namelist()) == [
            "_cluster.json", "a/logs/a%3Ab.log", "a/logs/app.log", "a/logs/other.log", "status/service.txt"]
