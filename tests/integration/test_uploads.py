"""Uploads (contract §4.2, PUT of §4.4): real nodes on loopback, real clients, real faults."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import urllib3

import support
from support import wait_for
from faultproxy import FaultProxy

TEMP_PREFIX = ".wsgi_stream-upload-"
LIMIT = 8 << 20  # max_upload_size of the shared cluster


# -- helpers ---------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """Every name under `root` (temp files included) with its sha256, or "dir".

    The root's spool directory (where wsgi-stream receives bodies) is there for good: left out,
    but not what is in it.
    """
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            if dirpath == str(root) and name == TEMP_PREFIX + "spool":
                continue
            result[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, root)] = hashlib.file_digest(f, "sha256").hexdigest()
    return result


def digest_header(data: bytes, algorithm: str = "sha-256") -> str:
    raw = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(raw).decode()}:"


def put(node, path: str, data, headers=None) -> urllib3.BaseHTTPResponse:
    return support.http("PUT", f"{node.url}/files/{path}", headers=headers, body=data, timeout=60)


def chunked_put(node, path: str, blocks, headers=None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """PUT with Transfer-Encoding: chunked from http.client; (status, headers, body)."""
    conn = http.client.HTTPConnection(node.host, node.port, timeout=60)
    try:
        conn.request("PUT", "/files/" + path if not path.startswith("/") else path, body=iter(blocks),
                     headers=headers or {}, encode_chunked=True)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def assert_json_error(response, status: int, code: str | None = None) -> dict:
    assert response.status == status, response.data
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert set(document) == {"error", "message"}
    if code:
        assert document["error"] == code
    return document


def raw_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP response from a raw socket: (status, body)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


def refused_body_is_not_a_request(node, path: str) -> None:
    """A body refused before it was read must never be parsed as a next request on the connection."""
    smuggled = b"PUT /files/smuggled.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nX"
    with socket.create_connection((node.host, node.port), timeout=15) as s:
        s.sendall(f"PUT /files/{path} HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\n"
                  f"Content-Length: {len(smuggled)}\r\n\r\n".encode() + smuggled)
        s.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while data := s.recv(65536):
                received += data
        except OSError:
            pass
    assert received.startswith(b"HTTP/1.1 412 ") and received.count(b"HTTP/1.1 ") == 1, received
    assert not (node.root / "smuggled.txt").exists()


def no_temp_files(root: Path) -> bool:
    return not any(TEMP_PREFIX in name for name in snapshot(root))


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    """Two waitress nodes a and b with uploads on and an 8 MiB limit, shared by the quick tests."""
    cluster = support.start_cluster(tmp_path_factory.mktemp("uploads"), ("a", "b"), uploads=True,
                                    max_upload_size=LIMIT, chunk_size=65536)
    yield cluster
    cluster.stop()


# -- storing ---------------------------------------------------------------------------------------

def test_put_new_then_replace(cl):
    a = cl["a"]
    r = put(a, "new/deep/dir/hello.txt", b"hello")
    assert r.status == 201
    assert r.headers["Location"] == "/files/new/deep/dir/hello.txt"
    assert r.json() == {"node": "a", "path": "new/deep/dir/hello.txt", "size": 5, "etag": r.headers["ETag"]}
    got = support.http("GET", f"{a.url}/files/new/deep/dir/hello.txt")
    assert got.data == b"hello" and got.headers["ETag"] == r.headers["ETag"]

    r2 = put(a, "new/deep/dir/hello.txt", b"hello again")
    assert r2.status == 204 and r2.data == b""
    assert r2.headers["ETag"] != r.headers["ETag"]
    got = support.http("GET", f"{a.url}/files/new/deep/dir/hello.txt")
    assert got.data == b"hello again" and got.headers["ETag"] == r2.headers["ETag"]
    assert no_temp_files(a.root)
    assert "stored new/deep/dir/hello.txt (11 bytes)" in a.log()


def test_replace_keeps_mode_and_empty_body(cl):
    a = cl["a"]
    (a.root / "mode.sh").write_bytes(b"old")
    os.chmod(a.root / "mode.sh", 0o750)
    assert put(a, "mode.sh", b"").status == 204
    assert (a.root / "mode.sh").read_bytes() == b""
    assert (a.root / "mode.sh").stat().st_mode & 0o777 == 0o750


def test_unicode_name(cl):
    a = cl["a"]
    r = put(a, "rapport d'%C3%A9t%C3%A9.txt", "été".encode())
    assert r.status == 201
    assert r.headers["Location"] == "/files/rapport%20d%27%C3%A9t%C3%A9.txt"
    assert (a.root / "rapport d'été.txt").read_text() == "été"


def test_chunked_upload_with_http_client(cl):
    a = cl["a"]
    blocks = [os.urandom(n) for n in (1, 1000, 70000, 300000)]
    status, headers, body = chunked_put(a, "chunked/blob.bin", blocks)
    assert status == 201, body
    assert (a.root / "chunked/blob.bin").read_bytes() == b"".join(blocks)
    assert json.loads(body)["size"] == sum(map(len, blocks))


def test_curl_upload_with_digest(cl, tmp_path):
    a = cl["a"]
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(3 << 20))
    header = f"Content-Digest: sha-256=:{base64.b64encode(hashlib.sha256(src.read_bytes()).digest()).decode()}:"
    out = subprocess.run(["curl", "-sS", "-T", str(src), "-H", header, "-w", "\n%{http_code}",
                          f"{a.url}/files/curl/f.bin"], capture_output=True, text=True, timeout=60)
    assert out.stdout.rstrip().endswith("201"), out
    assert (a.root / "curl/f.bin").read_bytes() == src.read_bytes()
    assert f"sha-256 {hashlib.sha256(src.read_bytes()).hexdigest()}" in a.log()
    # curl's own chunked upload (from stdin, no length known)
    out = subprocess.run(["curl", "-sS", "-T", "-", "-w", "\n%{http_code}", f"{a.url}/files/curl/stdin.bin"],
                         input="from stdin", capture_output=True, text=True, timeout=60)
    assert out.stdout.rstrip().endswith("201"), out
    assert (a.root / "curl/stdin.bin").read_text() == "from stdin"


# -- checks before and after the body -----------------------------------------------------------------

def test_content_digest(cl):
    a = cl["a"]
    data = os.urandom(200_000)
    assert put(a, "digest/good.bin", data, {"Content-Digest": digest_header(data)}).status == 201
    assert put(a, "digest/good512.bin", data,
               {"Content-Digest": f"md5=:AAAA:, {digest_header(data, 'sha-512')}"}).status == 201
    before = snapshot(a.root)
    assert_json_error(put(a, "digest/good.bin", data + b"x", {"Content-Digest": digest_header(data)}),
                      400, "digest_mismatch")
    assert_json_error(put(a, "digest/new/bad.bin", data, {"Content-Digest": digest_header(b"other")}),
                      400, "digest_mismatch")
    # chunked too: the check runs as the body streams, before the rename
    status, _, body = chunked_put(a, "digest/bad-chunked.bin", [data[:1000], data[1000:]],
                                  {"Content-Digest": digest_header(b"nope")})
    assert status == 400 and json.loads(body)["error"] == "digest_mismatch"
    r = put(a, "digest/md5.bin", data, {"Content-Digest": "md5=:AAAAAAAAAAAAAAAAAAAAAA==:"})
    assert_json_error(r, 400, "unsupported_digest")
    assert "sha-256" in r.headers["Want-Content-Digest"]
    assert_json_error(put(a, "digest/x.bin", data, {"Content-Digest": "sha-256=abc"}), 400, "bad_digest")
    assert_json_error(put(a, "digest/x.bin", data, {"Content-Digest": "sha-256=:AAAA:"}), 400, "bad_digest")
    assert snapshot(a.root) == before
    assert (a.root / "digest/good.bin").read_bytes() == data


def test_if_none_match_star(cl):
    a = cl["a"]
    assert put(a, "cond/once.txt", b"first", {"If-None-Match": "*"}).status == 201
    before = snapshot(a.root)
    assert_json_error(put(a, "cond/once.txt", b"second", {"If-None-Match": "*"}), 412, "precondition_failed")
    etag = support.http("HEAD", f"{a.url}/files/cond/once.txt").headers["ETag"]
    assert_json_error(put(a, "cond/once.txt", b"second", {"If-None-Match": etag}), 412)
    refused_body_is_not_a_request(a, "cond/once.txt")
    assert snapshot(a.root) == before


def test_if_match(cl):
    a = cl["a"]
    etag = put(a, "cond/m.txt", b"v1").headers["ETag"]
    r = put(a, "cond/m.txt", b"v2", {"If-Match": etag})
    assert r.status == 204
    before = snapshot(a.root)
    assert_json_error(put(a, "cond/m.txt", b"v3", {"If-Match": etag}), 412)  # stale now
    assert_json_error(put(a, "cond/missing.txt", b"v3", {"If-Match": "*"}), 412)
    assert_json_error(put(a, "cond/m.txt", b"v3", {"If-Match": "W/" + r.headers["ETag"]}), 412)
    assert_json_error(put(a, "cond/m.txt", b"v3", {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}), 412)
    assert snapshot(a.root) == before
    assert put(a, "cond/m.txt", b"v3", {"If-Match": "*"}).status == 204
    current = support.http("HEAD", f"{a.url}/files/cond/m.txt").headers["ETag"]
    assert put(a, "cond/m.txt", b"v4", {"If-Match": f'"nope", {current}'}).status == 204


def test_max_upload_size(cl):
    a = cl["a"]
    assert put(a, "size/exact.bin", b"x" * LIMIT).status == 201
    before = snapshot(a.root)
    assert_json_error(put(a, "size/over.bin", b"x" * (LIMIT + 1)), 413, "payload_too_large")
    status, _, body = chunked_put(a, "size/over-chunked.bin", [b"x" * (1 << 20)] * 9)
    assert status == 413 and json.loads(body)["error"] == "payload_too_large"
    assert_json_error(put(a, "size/exact.bin", b"y" * (LIMIT + 1)), 413)
    assert snapshot(a.root) == before


def test_paths_refused(cl):
    a = cl["a"]
    (a.root / "adir").mkdir()
    (a.root / "afile").write_bytes(b"f")
    before = snapshot(a.root)
    assert_json_error(put(a, "adir", b"x"), 409, "is_directory")
    assert_json_error(put(a, "adir/", b"x"), 400, "trailing_slash")  # a path ending in "/" never names a file
    assert_json_error(put(a, "afile/below.txt", b"x"), 409, "parent_not_directory")
    assert_json_error(put(a, "afile/deeper/below.txt", b"x"), 409, "parent_not_directory")
    assert_json_error(put(a, ".wsgi_stream-upload-sneaky", b"x"), 404)
    assert_json_error(put(a, "a/%2e%2e/%2e%2e/escape.txt", b"x"), 404)
    conn = http.client.HTTPConnection(a.host, a.port, timeout=10)
    conn.request("PUT", "/files/../escape.txt", body=b"x")
    assert conn.getresponse().status == 404
    conn.close()
    assert snapshot(a.root) == before


def test_far_too_large_refused_before_reading(cl):
    # waitress itself refuses a Content-Length far over the limit, before any body byte (its own 413)
    a = cl["a"]
    with socket.create_connection((a.host, a.port), timeout=10) as s:
        s.sendall(b"PUT /files/huge.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 107374182400\r\n\r\n")
        status, _ = raw_response(s)
    assert status == 413
    assert not (a.root / "huge.bin").exists()


def test_length_required(cl):
    a = cl["a"]
    with socket.create_connection((a.host, a.port), timeout=10) as s:
        s.sendall(b"PUT /files/nolength.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = raw_response(s)
    assert status == 411 and json.loads(body)["error"] == "length_required"
    assert not (a.root / "nolength.txt").exists()


def test_uploads_off(cluster_factory):
    cluster = cluster_factory(("a", "b"))
    r = put(cluster["a"], "x.txt", b"x")
    assert_json_error(r, 405, "method_not_allowed")
    assert r.headers["Allow"] == "GET, HEAD"
    r = support.http("PUT", f"{cluster['a'].url}/nodes/b/files/x.txt", body=b"x")
    assert_json_error(r, 405)
    assert r.headers["Allow"] == "GET, HEAD"
    assert snapshot(cluster["a"].root) == {} and snapshot(cluster["b"].root) == {}


def test_token(cluster_factory):
    cluster = cluster_factory(("a", "b"), uploads=True, token="s3cret")
    a, b = cluster["a"], cluster["b"]
    assert_json_error(put(a, "t.txt", b"x"), 401)
    assert_json_error(support.http("PUT", f"{a.url}/nodes/b/files/t.txt", body=b"x"), 401)
    auth = {"Authorization": "Bearer s3cret"}
    assert put(a, "t.txt", b"x", auth).status == 201
    assert support.http("PUT", f"{a.url}/nodes/b/files/t.txt", body=b"on b", headers=auth).status == 201
    assert (b.root / "t.txt").read_bytes() == b"on b"
    assert snapshot(a.root) == {"t.txt": hashlib.sha256(b"x").hexdigest()}


# -- faults ----------------------------------------------------------------------------------------

def test_client_aborts_mid_body(cl):
    a = cl["a"]
    (a.root / "abort.bin").write_bytes(b"old content")
    before = snapshot(a.root)
    for head in (b"Content-Length: 4000000\r\n", b"Transfer-Encoding: chunked\r\n"):
        with socket.create_connection((a.host, a.port), timeout=10) as s:
            s.sendall(b"PUT /files/abort.bin HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            if b"chunked" in head:
                s.sendall(b"100000\r\n" + b"z" * 500_000)
            else:
                s.sendall(b"z" * 2_000_000)
    with socket.create_connection((a.host, a.port), timeout=10) as s:  # a body shorter than announced
        s.sendall(b"PUT /files/short.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"z" * 50)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        try:
            s.recv(1000)
        except OSError:
            pass
    time.sleep(0.3)
    assert snapshot(a.root) == before
    assert support.http("GET", f"{a.url}/healthz").status == 200


def test_concurrent_uploads_one_wins_whole(cl):
    a = cl["a"]
    contents = [bytes([65 + i]) * (6 << 20) for i in range(2)]
    for round_ in range(3):
        results = []
        threads = [threading.Thread(target=lambda c=c: results.append(put(a, "race/same.bin", c).status))
                   for c in contents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(s in (201, 204) for s in results), results
        assert (a.root / "race/same.bin").read_bytes() in contents
    assert no_temp_files(a.root)


def test_concurrent_conditional_uploads_one_wins(cl):
    a = cl["a"]
    for round_ in range(4):
        contents = [bytes([97 + i]) * (4 << 20) for i in range(3)]
        results = {}
        barrier = threading.Barrier(len(contents))

        def send(content):
            barrier.wait()
            results[content[:1]] = put(a, f"race/once-{round_}.bin", content, {"If-None-Match": "*"}).status

        threads = [threading.Thread(target=send, args=(c,)) for c in contents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values()) == [201, 412, 412], results
        winner = next(k for k, v in results.items() if v == 201)
        assert (a.root / f"race/once-{round_}.bin").read_bytes() == winner * (4 << 20)


def test_condition_checked_again_right_before_the_rename(tmp_path):
    # The winner lands while the loser's body is still streaming: the loser's rename must not happen.
    from werkzeug.datastructures import Headers

    from wsgi_stream import errors, uploads

    target = tmp_path / "once.bin"

    def body():
        yield b"loser " * 1000
        target.write_bytes(b"winner")
        yield b"loser"

    with pytest.raises(errors.PreconditionFailed):
        uploads.store(target, body(), {}, Headers({"If-None-Match": "*"}))
    assert snapshot(tmp_path) == {"once.bin": hashlib.sha256(b"winner").hexdigest()}


def test_lingering_temp_files_are_invisible(cl):
    a = cl["a"]
    (a.root / "tmpvis").mkdir()
    (a.root / "tmpvis" / "real.txt").write_bytes(b"real")
    (a.root / "tmpvis" / (TEMP_PREFIX + "dead1234")).write_bytes(b"half an upload")
    (a.root / (TEMP_PREFIX + "top")).write_bytes(b"half")
    names = [e["name"] for e in support.http("GET", f"{a.url}/list/tmpvis").json()["entries"]]
    assert names == ["real.txt"]
    top = [e["name"] for e in support.http("GET", f"{a.url}/list/").json()["entries"]]
    assert not any(n.startswith(TEMP_PREFIX) for n in top)
    deep = support.http("GET", f"{a.url}/list/tmpvis?recursive=1").json()["entries"]
    assert [e["path"] for e in deep] == ["tmpvis/real.txt"]
    assert support.http("GET", f"{a.url}/files/tmpvis/{TEMP_PREFIX}dead1234").status == 404
    assert support.http("GET", f"{a.url}/nodes/a/files/{TEMP_PREFIX}top").status == 404
    z = support.http("GET", f"{a.url}/cluster/files/tmpvis?nodes=a")
    if z.status == 501:
        pytest.skip("cluster ZIPs are not built yet")
    import io
    import zipfile
    names = zipfile.ZipFile(io.BytesIO(z.data)).namelist()
    assert "a/tmpvis/real.txt" in names and not any(TEMP_PREFIX in n for n in names)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root/CAP_SYS_ADMIN): {out.stderr.strip()}")


def test_disk_full(cluster_factory):
    cluster = cluster_factory(("a",), uploads=True, chunk_size=65536, start=[])
    a = cluster["a"]
    _mount_tmpfs(a.root, "4m")
    try:
        support.launch(a, cluster.config_path).wait_ready()
        old = os.urandom(1 << 20)
        assert put(a, "big.bin", old).status == 201
        before = snapshot(a.root)
        # Content-Length over the free space: refused before writing
        assert_json_error(put(a, "big.bin", os.urandom(6 << 20)), 507, "insufficient_storage")
        # chunked: the disk fills up while writing
        status, _, body = chunked_put(a, "big.bin", [os.urandom(1 << 20) for _ in range(5)])
        assert status == 507 and json.loads(body)["error"] == "insufficient_storage"
        status, _, body = chunked_put(a, "sub/new.bin", [os.urandom(1 << 20) for _ in range(5)])
        assert status == 507
        assert snapshot(a.root) == before
        assert (a.root / "big.bin").read_bytes() == old
        assert put(a, "small.txt", b"still fine").status == 201  # the space came back
        subprocess.run(["mount", "-o", "remount,ro", str(a.root)], check=True)
        assert_json_error(put(a, "small.txt", b"read-only"), 403, "not_writable")
        assert (a.root / "small.txt").read_bytes() == b"still fine"
    finally:
        a.stop()
        subprocess.run(["umount", str(a.root)], check=False)


# -- through a peer --------------------------------------------------------------------------------

def test_upload_through_peer(cl):
    a, b = cl["a"], cl["b"]
    data = os.urandom(3 << 20)
    r = support.http("PUT", f"{a.url}/nodes/b/files/fwd/one.bin", body=data,
                     headers={"Content-Digest": digest_header(data)})
    assert r.status == 201, r.data
    assert r.headers["Location"] == "/nodes/b/files/fwd/one.bin"
    assert r.json()["node"] == "b"
    assert (b.root / "fwd/one.bin").read_bytes() == data
    assert support.http("HEAD", f"{b.url}/files/fwd/one.bin").headers["ETag"] == r.headers["ETag"]
    assert not (a.root / "fwd").exists()
    # chunked in, chunked on
    blocks = [os.urandom(100_000) for _ in range(7)]
    status, headers, _ = chunked_put(a, "/nodes/b/files/fwd/one.bin", blocks)
    on_b = support.http("HEAD", f"{b.url}/files/fwd/one.bin")
    assert status == 204 and headers["ETag"] == on_b.headers["ETag"]
    assert (b.root / "fwd/one.bin").read_bytes() == b"".join(blocks)
    # the node itself: stored locally
    assert support.http("PUT", f"{a.url}/nodes/a/files/fwd/self.bin", body=b"me").status == 201
    assert (a.root / "fwd/self.bin").read_bytes() == b"me"


def test_upload_through_peer_errors(cl):
    a, b = cl["a"], cl["b"]
    support.http("PUT", f"{a.url}/nodes/b/files/fwd/kept.bin", body=b"keep me")
    before = snapshot(b.root)
    url = f"{a.url}/nodes/b/files/fwd/kept.bin"
    assert_json_error(support.http("PUT", url, body=b"x", headers={"If-None-Match": "*"}), 412)
    assert_json_error(support.http("PUT", url, body=b"x", headers={"If-Match": '"stale"'}), 412)
    assert_json_error(support.http("PUT", url, body=b"x", headers={"Content-Digest": digest_header(b"y")}), 400,
                      "digest_mismatch")
    assert_json_error(support.http("PUT", url, body=b"x" * (LIMIT + 1)), 413)
    status, _, body = chunked_put(a, "/nodes/b/files/fwd/kept.bin", [b"x" * (1 << 20)] * 9)
    assert status == 413, body
    assert_json_error(support.http("PUT", f"{a.url}/nodes/zz/files/x.bin", body=b"x"), 404)
    assert_json_error(support.http("PUT", f"{a.url}/nodes/b/files/fwd", body=b"x"), 409)
    assert wait_for(lambda: snapshot(b.root) == before)


@pytest.mark.parametrize("mode, status, codes", [
    ("cut_request", 502, {"peer_broken"}),
    ("refuse", 502, {"peer_unreachable", "peer_broken"}),  # depends on when the reset is noticed
    ("stall", 504, {"peer_timeout"})])
def test_peer_fails_mid_upload(cluster_factory, mode, status, codes):
    with FaultProxy() as proxy:
        cluster = cluster_factory(("a", "b"), uploads=True, urls={"b": proxy.url}, start=["a"], read_timeout=1)
        b = cluster["b"]
        proxy.target = (b.host, b.port)
        support.launch(b, cluster.config_path).wait_ready()
        (b.root / "victim.bin").write_bytes(b"the old file")
        before = snapshot(b.root)
        proxy.set(mode, cut_after=1 << 20)
        data = os.urandom(8 << 20)
        url = f"{cluster['a'].url}/nodes/b/files/victim.bin"
        r = support.http("PUT", url, body=data, timeout=60)
        assert assert_json_error(r, status)["error"] in codes
        got, _, body = chunked_put(cluster["a"], "/nodes/b/files/victim.bin",
                                   [data[i:i + 65536] for i in range(0, len(data), 65536)])
        assert got == status and json.loads(body)["error"] in codes
        assert wait_for(lambda: snapshot(b.root) == before)
        assert "Traceback" not in cluster["a"].log()
        proxy.set("pass")
        assert support.http("PUT", url, body=data, timeout=60).status == 204
        assert (b.root / "victim.bin").read_bytes() == data


# -- other servers, memory -------------------------------------------------------------------------

@pytest.mark.parametrize("server", ["uwsgi", "gunicorn"])
def test_other_servers(cluster_factory, server):
    # uwsgi hands a chunked body over undecoded (read with uwsgi.chunked_read); gunicorn's
    # wsgi.input returns a short body silently: both must still never store a partial file.
    if server == "uwsgi" and shutil.which("uwsgi") is None:
        pytest.skip("uwsgi is not installed")
    cluster = cluster_factory(("a",), server=server, uploads=True, max_upload_size=LIMIT)
    a = cluster["a"]
    blocks = [os.urandom(n) for n in (10, 65536, 500_000, 1000)]
    data = b"".join(blocks)
    status, _, body = chunked_put(a, "uw/chunked.bin", blocks, {"Content-Digest": digest_header(data)})
    assert status == 201, body
    assert (a.root / "uw/chunked.bin").read_bytes() == data
    assert put(a, "uw/plain.bin", data).status == 201
    assert (a.root / "uw/plain.bin").read_bytes() == data
    before = snapshot(a.root)
    status, _, body = chunked_put(a, "uw/bad.bin", blocks, {"Content-Digest": digest_header(b"no")})
    assert status == 400
    status, _, body = chunked_put(a, "uw/over.bin", [b"x" * 500_000] * 20)
    assert status == 413, body
    # refused before the body is read: the answer still arrives, and the connection is closed
    r = put(a, "uw/plain.bin", b"y" * 300_000, {"If-None-Match": "*"})
    assert_json_error(r, 412)
    refused_body_is_not_a_request(a, "uw/plain.bin")
    for head, rest in ((b"Content-Length: 100\r\n", b"z" * 50), (b"Transfer-Encoding: chunked\r\n", b"64\r\nz")):
        with socket.create_connection((a.host, a.port), timeout=15) as s:
            s.sendall(b"PUT /files/uw/short.bin HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + rest)
            s.shutdown(socket.SHUT_WR)
            try:
                status, _ = raw_response(s)
                assert status == 400
            except (OSError, http.client.HTTPException):
                pass  # a server may also just close the connection
    assert wait_for(lambda: snapshot(a.root) == before)
    assert "Traceback" not in a.log()


class _Pattern:
    """A large body made up on the fly, hashed as it is sent."""

    def __init__(self, size: int, block: int = 1 << 20):
        self.size, self.block = size, block
        self.sha = hashlib.sha256()
        self.seed = os.urandom(block)

    def __iter__(self):
        sent = 0
        while sent < self.size:
            n = min(self.block, self.size - sent)
            data = bytes([sent // self.block % 251]) + self.seed[1:n]
            self.sha.update(data)
            sent += n
            yield data


def test_large_upload_memory(cluster_factory):
    size = (1 << 30) + (64 << 20)  # over waitress's default body limit of 1 GiB, which serve.py lifts
    cluster = cluster_factory(("a", "b"), uploads=True)
    a, b = cluster["a"], cluster["b"]
    body = _Pattern(size)
    pool = urllib3.PoolManager()
    r = pool.request("PUT", f"{a.url}/files/big/direct.bin", body=iter(body),
                     headers={"Content-Length": str(size)}, timeout=120)
    assert r.status == 201, r.data
    with open(a.root / "big/direct.bin", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == body.sha.hexdigest()
    assert a.rss_peak_kib() < 100 * 1024, a.rss_peak_kib()
    (a.root / "big/direct.bin").unlink()

    body = _Pattern(512 << 20)
    r = pool.request("PUT", f"{a.url}/nodes/b/files/big/through.bin", body=iter(body), timeout=120)  # chunked
    assert r.status == 201, r.data
    with open(b.root / "big/through.bin", "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == body.sha.hexdigest()
    assert a.rss_peak_kib() < 100 * 1024, a.rss_peak_kib()
    assert b.rss_peak_kib() < 100 * 1024, b.rss_peak_kib()
