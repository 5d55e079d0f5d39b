"""Strange disks and hostile requests against real nodes on loopback (issue 12, capability rules).

Each test answers within seconds and ends with /healthz still answering: a FIFO in a root, a
300-character name, names with a newline, a CR or ':' on a peer, a symlink under a PUT, a PUT
to `dir/`, a peer that stops reading a forwarded upload, the token checked before routing, and
an access log that a path cannot add lines to.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

import support
from faultproxy import proxied_cluster

LONG = "x" * 300  # longer than any Linux file system's 255-byte name limit


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    """Nodes a and b (waitress, 16 threads, uploads on), with strange things on their disks."""
    cluster = support.start_cluster(tmp_path_factory.mktemp("hostile"), ("a", "b"), uploads=True)
    a, b = cluster["a"].root, cluster["b"].root
    (a / "dir").mkdir()
    (a / "dir" / "plain.txt").write_bytes(b"plain")
    os.mkfifo(a / "dir" / "pipe")
    os.mkfifo(a / "pipe")
    (b / "dir").mkdir()
    for name, data in [("new\nline.txt", b"newline"), ("c\rr.txt", b"cr"), ("a:b", b"colon"),
                       ("tab\tname", b"tab"), ("CON.txt", b"con"), ("trailing.", b"dot"), ("ok.txt", b"ok")]:
        (b / "dir" / name).write_bytes(data)
    yield cluster
    cluster.stop()


def get(node, path: str, method: str = "GET", **kwargs):
    return support.http(method, node.url + path, timeout=10, **kwargs)


def json_error(response, status: int, code: str | None = None) -> dict:
    assert response.status == status, (response.status, response.data[:300])
    assert response.headers["Content-Type"] == "application/json"
    document = json.loads(response.data or b"{}")  # HEAD: no body
    if code is not None and response.data:
        assert document["error"] == code, document
    return document


def healthy(node) -> None:
    started = time.monotonic()
    assert get(node, "/healthz").status == 200
    assert time.monotonic() - started < 2


def archive(node, path: str):
    r = support.http("GET", node.url + path, timeout=30)
    assert r.status == 200, r.data[:300]
    assert int(r.headers["Content-Length"]) == len(r.data)
    zf = zipfile.ZipFile(io.BytesIO(r.data))
    assert zf.testzip() is None
    return zf, json.loads(zf.read("_cluster.json"))


# -- never block on a file -------------------------------------------------------------------------

def test_a_fifo_is_not_found_at_once_and_the_node_stays_up(cl):
    a = cl["a"]
    started = time.monotonic()
    # More requests than the node has threads: a single blocked open() would take one for good.
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda i: get(a, "/files/pipe" if i % 2 else "/files/dir/pipe"), range(48)))
    assert time.monotonic() - started < 10
    for r in answers:
        json_error(r, 404, "not_found")
    json_error(get(a, "/files/pipe", "HEAD"), 404)
    json_error(get(a, "/nodes/a/files/pipe"), 404)
    json_error(get(cl["b"], "/nodes/a/files/pipe"), 404)
    healthy(a)


def test_a_fifo_is_skipped_with_its_reason_in_listings_and_archives(cl):
    a = cl["a"]
    for path in ("/list/dir", "/list/dir?recursive=1"):
        doc = get(a, path).json()
        assert [e["name"] for e in doc["entries"]] == ["plain.txt"]
        assert doc["skipped"] == [{"name": "pipe", "path": "dir/pipe",
                                   "reason": "a FIFO (named pipe): only regular files are served"}]
    assert get(a, "/cluster/list/dir").json()["nodes"]["a"]["skipped"][0]["path"] == "dir/pipe"
    zf, report = archive(a, "/cluster/files/dir?nodes=a")
    assert zf.namelist() == ["a/dir/plain.txt", "_cluster.json"]
    assert report["nodes"]["a"]["errors"] == [
        {"name": "dir/pipe", "message": "left out: a FIFO (named pipe): only regular files are served"}]
    # The FIFO itself as the archive's path: nothing to put in, reported, no hang.
    zf, report = archive(a, "/cluster/files/pipe?nodes=a")
    assert zf.namelist() == ["_cluster.json"] and report["nodes"]["a"]["errors"][0]["name"] == "pipe"
    json_error(support.http("PUT", a.url + "/files/pipe", body=b"x", timeout=10), 409, "not_a_file")
    healthy(a)


# -- names the disk cannot hold, names the URL could not carry ---------------------------------------

@pytest.mark.parametrize("path", [f"/files/{LONG}", f"/files/dir/{LONG}", f"/list/{LONG}",
                                  f"/list/{LONG}?recursive=1", f"/nodes/b/files/{LONG}",
                                  f"/nodes/b/list/{LONG}", f"/cluster/files/{LONG}",
                                  f"/cluster/list/{LONG}", f"/cluster/files/dir/{LONG}"])
def test_a_name_too_long_is_400_everywhere(cl, path):
    doc = json_error(get(cl["a"], path), 400, "name_too_long")
    assert "longer than" in doc["message"]


def test_a_name_too_long_is_400_for_uploads(cl):
    for path in (f"/files/{LONG}", f"/files/{LONG}/inner.txt", f"/nodes/b/files/{LONG}"):
        r = support.http("PUT", cl["a"].url + path, body=b"data", timeout=10)
        json_error(r, 400, "name_too_long")
    healthy(cl["a"])


def test_a_newline_name_on_a_peer_is_served_and_zipped(cl):
    a = cl["a"]
    assert get(a, "/nodes/b/files/dir/new%0Aline.txt").data == b"newline"
    assert get(cl["b"], "/files/dir/new%0aline.txt").data == b"newline"
    zf, report = archive(a, "/cluster/files/dir?nodes=b")
    assert zf.read("b/dir/new%0Aline.txt") == b"newline"
    files = {f["name"]: f for f in report["nodes"]["b"]["files"]}
    assert files["b/dir/new%0Aline.txt"]["original_name"] == "b/dir/new\nline.txt"
    assert report["nodes"]["b"]["errors"] == []


def test_zip_names_windows_cannot_store_are_escaped_and_recorded(cl):
    zf, report = archive(cl["a"], "/cluster/files/dir")
    expected = {"b/dir/c%0Dr.txt": ("b/dir/c\rr.txt", b"cr"), "b/dir/a%3Ab": ("b/dir/a:b", b"colon"),
                "b/dir/tab%09name": ("b/dir/tab\tname", b"tab"), "b/dir/%43ON.txt": ("b/dir/CON.txt", b"con"),
                "b/dir/trailing%2E": ("b/dir/trailing.", b"dot"), "b/dir/new%0Aline.txt": ("b/dir/new\nline.txt", b"newline")}
    files = {f["name"]: f for f in report["nodes"]["b"]["files"]}
    for member, (original, data) in expected.items():
        assert zf.read(member) == data
        assert files[member]["original_name"] == original
    assert zf.read("b/dir/ok.txt") == b"ok" and "original_name" not in files["b/dir/ok.txt"]
    for name in zf.namelist():
        assert not any(c in name for c in '\r\n\t:*?"<>|\\'), name
    # Listings keep the names as they are on disk.
    names = [e["name"] for e in get(cl["a"], "/cluster/list/dir").json()["entries"]]
    assert "c\rr.txt" in names and "a:b" in names


def test_encoded_slash_and_nul_stay_refused(cl):
    for path in ("/files/dir%2Fplain.txt", "/files/dir/plain.txt%00", "/list/dir%2F", "/cluster/files/dir%00"):
        json_error(get(cl["a"], path), 404)


# -- uploads ---------------------------------------------------------------------------------------

def test_a_put_never_writes_through_a_symlink(cl):
    a = cl["a"]
    (a.root / "target.txt").write_bytes(b"original")
    (a.root / "real").mkdir()
    os.symlink("target.txt", a.root / "link.txt")
    os.symlink("real", a.root / "dirlink")
    for path in ("link.txt", "dirlink/new.txt"):
        r = support.http("PUT", f"{a.url}/files/{path}", body=b"replaced", timeout=10)
        json_error(r, 409, "symlink")
    r = support.http("PUT", f"{cl['b'].url}/nodes/a/files/link.txt", body=b"replaced", timeout=10)
    json_error(r, 409, "symlink")
    r = support.http("PUT", f"{a.url}/cluster/files/link.txt", body=b"replaced", timeout=10)  # fan-out
    assert r.status == 409 and r.json()["nodes"]["a"]["error"] == "symlink", r.data
    assert (a.root / "target.txt").read_bytes() == b"original"
    assert os.readlink(a.root / "link.txt") == "target.txt"
    assert list((a.root / "real").iterdir()) == []
    # Reading through the same links is unchanged.
    assert get(a, "/files/link.txt").data == b"original"


def test_a_put_to_a_path_ending_in_slash_is_400(cl):
    a = cl["a"]
    for path in ("/files/newdir/", "/files/newdir/.", "/nodes/b/files/newdir/", "/nodes/a/files/newdir/",
                 "/cluster/files/newdir/"):
        r = support.http("PUT", a.url + path, body=b"data", timeout=10)
        json_error(r, 400, "trailing_slash")
    assert not (a.root / "newdir").exists() and not (cl["b"].root / "newdir").exists()


def test_a_forwarded_upload_to_a_stalled_peer_gives_up_after_read_timeout(cluster_factory):
    with proxied_cluster(cluster_factory, names=("a", "b"), proxied=["b"], uploads=True,
                         connect_timeout=1, read_timeout=4) as (cluster, proxies):
        a = cluster["a"]
        proxies["b"].set("hold")  # b's host accepts, and never reads a byte
        body = b"\0" * (48 << 20)  # far more than the socket buffers on the way hold
        started = time.monotonic()
        r = support.http("PUT", a.url + "/nodes/b/files/big.bin", body=body, timeout=60)
        elapsed = time.monotonic() - started
        doc = json_error(r, 504, "peer_timeout")
        assert "took nothing more" in doc["message"]
        assert 3.5 < elapsed < 12, elapsed  # read_timeout (4 s), not connect_timeout (1 s)
        healthy(a)


# -- authentication before routing, the access log ---------------------------------------------------------

def test_without_the_token_every_route_looks_the_same(cluster_factory):
    cluster = cluster_factory(names=("a",), token="s3cret")
    a = cluster["a"]
    for method, path in [("GET", "/no/such/route"), ("POST", "/files/x"), ("DELETE", "/list/"),
                         ("GET", "/files/x"), ("PUT", "/files/x"), ("POST", "/healthz")]:
        r = support.http(method, a.url + path, timeout=10)
        json_error(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"] == 'Basic realm="wsgi_stream"'
    assert get(a, "/healthz").json() == {"node": "a", "status": "ok"}
    assert get(a, "/healthz", "HEAD").status == 200
    auth = {"Authorization": "Bearer s3cret"}
    json_error(get(a, "/no/such/route", headers=auth), 404, "not_found")
    json_error(get(a, "/files/x", "POST", headers=auth), 405, "method_not_allowed")


def test_a_path_cannot_forge_an_access_log_line(cl):
    a = cl["a"]
    get(a, "/files/x%0a127.0.0.1%20%22GET%20/forged%22%20200%200%200.000s%0d")
    get(a, "/files/q%22uote%5Cback")
    deadline = time.monotonic() + 5
    while "uote" not in a.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in a.log().splitlines() if "wsgi_stream.access" in line or "forged" in line]
    forged = [line for line in lines if "forged" in line]
    assert len(forged) == 1 and "\\x0a" in forged[0] and "\\x0d" in forged[0], forged
    assert all("wsgi_stream.access" in line for line in lines)
    assert any('/files/q\\"uote\\\\back' in line for line in lines)
