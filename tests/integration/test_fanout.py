"""Fan-out (PUT /cluster/files, issue 15) and the node-to-node stage API, on real nodes with real faults.

After every fault the same check: each node holds the old file or the new one, exactly as the
outcome's line for it says, and no stage file or record is left (at once, or after the expiry).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import support
from support import wait_for
from faultproxy import proxied_cluster

TEMP_PREFIX = ".wsgi_stream-upload-"
TOKEN = "fan-out-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- helpers ---------------------------------------------------------------------------------------

def fanout(node, path: str, data, headers=None, query: str = "", timeout: float = 60) -> tuple[int, dict]:
    """PUT /cluster/files/{path}{query} on `node`: (status, outcome document)."""
    r = support.http("PUT", f"{node.url}/cluster/files/{path}{query}", headers={**AUTH, **(headers or {})},
                     body=data, timeout=timeout)
    return r.status, json.loads(r.data)


def chunked_fanout(node, path: str, blocks, query: str = "") -> tuple[int, dict]:
    """The same with Transfer-Encoding: chunked (length unknown to every node)."""
    conn = http.client.HTTPConnection(node.host, node.port, timeout=60)
    try:
        conn.request("PUT", f"/cluster/files/{path}{query}", body=iter(blocks), headers=AUTH, encode_chunked=True)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def content(node, path: str) -> bytes | None:
    p = node.root / path
    return p.read_bytes() if p.exists() else None


SPOOL = TEMP_PREFIX + "spool"  # the server's folder for request bodies (not a stage's)


def leftovers(root: Path) -> list[str]:
    """Every stage file, stage record or upload temp file under `root`."""
    found = []
    for d, dirs, files in os.walk(root):
        if d == str(root) and SPOOL in dirs:
            dirs.remove(SPOOL)
        found += [os.path.join(d, n) for n in dirs + files if n.startswith(TEMP_PREFIX)]
    return found


def assert_as_reported(cluster, names, path: str, doc: dict, new: bytes, old: dict[str, bytes | None]) -> None:
    """Each node has the new bytes if its line says committed, else exactly its old file (or none)."""
    assert list(doc["nodes"]) == list(names)
    for name in names:
        line = doc["nodes"][name]
        assert line["status"] in ("committed", "unchanged", "failed"), (name, line)
        want = new if line["status"] == "committed" else old[name]
        assert content(cluster[name], path) == want, (name, line)
    assert doc["committed"] == [n for n in names if doc["nodes"][n]["status"] == "committed"]


def no_leftovers(cluster, names, timeout: float = 10.0) -> None:
    for name in names:
        assert wait_for(lambda: not leftovers(cluster[name].root), timeout), (name, leftovers(cluster[name].root))


def stage_state(node, stage_id: str) -> str | None:
    """The state node `node` gives for stage `stage_id` (None: it has none)."""
    r = support.http("GET", f"http://{node.host}:{node.port}/stages/{stage_id}", headers=AUTH, timeout=5)
    return r.json()["state"] if r.status == 200 else None


def seed(cluster, path: str, old: dict[str, bytes | None]) -> None:
    for name, data in old.items():
        p = cluster[name].root / path
        if data is None:
            p.unlink(missing_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


def no_tracebacks(cluster) -> None:
    for node in cluster.nodes.values():
        assert "Traceback" not in node.log(), node.log()[-3000:]


def background_fanout(node, path, data, **kwargs) -> tuple[threading.Thread, list]:
    """Run fanout() in a thread: its result (or the exception it raised) lands in the list."""
    result = []

    def run():
        try:
            result.append(fanout(node, path, data, **kwargs))
        except Exception as exc:  # the gateway may be killed on purpose
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    """Nodes a, b, c up with uploads on; d is in the config but never started (down)."""
    cluster = support.start_cluster(tmp_path_factory.mktemp("fanout"), ("a", "b", "c", "d"), start=("a", "b", "c"),
                                    uploads=True, token=TOKEN, chunk_size=65536, max_upload_size=64 << 20)
    yield cluster
    try:
        no_tracebacks(cluster)
    finally:
        cluster.stop()


ABC = ("a", "b", "c")


# -- every node takes it ---------------------------------------------------------------------------

def test_all_nodes_commit(cl):
    data = os.urandom(3 << 20)
    status, doc = fanout(cl["a"], "all/deep/new.bin", data, query="?nodes=a,b,c&id=all-nodes-1")
    assert status == 201, doc
    assert doc["outcome"] == "committed" and doc["committed"] == list(ABC) and doc["mode"] == "atomic"
    assert doc["size"] == len(data) and doc["sha-256"] == hashlib.sha256(data).hexdigest()
    assert doc["id"] == "all-nodes-1" and "error" not in doc
    for name in ABC:
        line = doc["nodes"][name]
        assert line["status"] == "committed" and line["created"] is True
        assert content(cl[name], "all/deep/new.bin") == data
        got = support.http("GET", f"{cl[name].url}/files/all/deep/new.bin", headers=AUTH)
        assert got.headers["ETag"] == line["etag"]
    no_leftovers(cl, ABC)
    # again through another gateway, replacing: 200, created false, the mode of the old file kept
    os.chmod(cl["b"].root / "all/deep/new.bin", 0o640)
    status, doc = fanout(cl["c"], "all/deep/new.bin", b"v2", query="?nodes=a,b,c")
    assert status == 200 and doc["outcome"] == "committed"
    assert all(doc["nodes"][n] == {"status": "committed", "created": False, "etag": doc["nodes"][n]["etag"]}
               for n in ABC)
    assert all(content(cl[n], "all/deep/new.bin") == b"v2" for n in ABC)
    assert (cl["b"].root / "all/deep/new.bin").stat().st_mode & 0o777 == 0o640
    no_leftovers(cl, ABC)


def test_the_answer_has_one_line_per_node(cl):
    r = support.http("PUT", f"{cl['a'].url}/cluster/files/lines.txt?nodes=a,c", headers=AUTH, body=b"x")
    lines = r.data.decode().splitlines()
    assert r.status == 201 and len(lines) == 3
    assert lines[1].startswith(' "a": {"status": "committed"') and lines[2].startswith(' "c": ')
    assert r.headers["Location"] == "/cluster/files/lines.txt"
    assert content(cl["b"], "lines.txt") is None


def test_chunked_body_and_selected_nodes(cl):
    blocks = [os.urandom(n) for n in (1, 70_000, 300_000, 5)]
    status, doc = chunked_fanout(cl["b"], "chunked/f.bin", blocks, query="?nodes=c,b")
    assert status == 201 and list(doc["nodes"]) == ["b", "c"]  # config order
    assert content(cl["b"], "chunked/f.bin") == content(cl["c"], "chunked/f.bin") == b"".join(blocks)
    assert content(cl["a"], "chunked/f.bin") is None


def test_names_with_query_characters_and_utf8(cl):
    name = "ét é/a b&c=d+e%23f%3F;.txt"  # as the URL spells it: the file is "a b&c=d+e#f?;.txt"
    status, doc = fanout(cl["a"], name, b"odd", query="?nodes=a,b,c")
    assert status == 201 and doc["path"] == "ét é/a b&c=d+e#f?;.txt", doc
    assert all(content(cl[n], "ét é/a b&c=d+e#f?;.txt") == b"odd" for n in ABC)


def test_curl_push(cl, tmp_path):
    src = tmp_path / "app.conf"
    src.write_text("key = 1\n")
    out = subprocess.run(["curl", "-sS", "-T", str(src), "-H", f"Authorization: Bearer {TOKEN}", "-w", "\n%{http_code}",
                          f"{cl['a'].url}/cluster/files/etc/app.conf?nodes=a,b,c"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.rstrip().endswith("\n201"), out
    assert all(content(cl[n], "etc/app.conf") == b"key = 1\n" for n in ABC)


def test_refusals_before_the_body(cl):
    a = cl["a"]
    for path, query, status, code in (("", "", 409, "is_directory"),
                                      ("x.bin", "?nodes=a,zz", 404, "unknown_node"),
                                      ("x.bin", "?nodes=", 400, "bad_request"),
                                      ("x.bin", "?mode=some", 400, "bad_request"),
                                      ("x.bin", "?id=bad id", 400, "bad_stage_id"),
                                      ("../x.bin", "", 404, "not_found")):
        r = support.http("PUT", f"{a.url}/cluster/files/{path}{query}", headers=AUTH, body=b"data")
        assert r.status == status and r.json()["error"] == code, (path, query, r.data)
    r = support.http("PUT", f"{a.url}/cluster/files/x.bin", body=b"data")
    assert r.status == 401
    assert content(a, "x.bin") is None


def test_client_digest_mismatch_changes_nothing(cl):
    seed(cl, "dig.bin", {n: b"old" for n in ABC})
    data = os.urandom(500_000)
    status, doc = fanout(cl["a"], "dig.bin", data, {"Content-Digest": f"sha-256=:{'A' * 43}=:"}, "?nodes=a,b,c")
    assert status == 400 and doc["error"] == "digest_mismatch" and doc["outcome"] == "unchanged"
    assert all(doc["nodes"][n]["status"] == "unchanged" for n in ABC)
    assert_as_reported(cl, ABC, "dig.bin", doc, data, {n: b"old" for n in ABC})
    no_leftovers(cl, ABC)


# -- one node down, cut, full, slow ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["atomic", "best-effort"])
def test_one_node_down_before_the_start(cl, mode):
    names = ("a", "b", "d")
    seed(cl, "down.bin", {"a": b"old-a", "b": None})
    data = os.urandom(1 << 20)
    status, doc = fanout(cl["a"], "down.bin", data, query=f"?nodes=a,b,d&mode={mode}")
    assert doc["nodes"]["d"]["status"] == "failed" and doc["nodes"]["d"]["error"] == "peer_unreachable"
    assert doc["nodes"]["d"]["phase"] == "stage"
    if mode == "atomic":
        assert status == 502 and doc["outcome"] == "unchanged" and doc["error"] == "peer_unreachable"
        assert doc["nodes"]["a"]["status"] == doc["nodes"]["b"]["status"] == "unchanged"
        assert "node d" in doc["nodes"]["a"]["message"]
    else:
        assert status == 207 and doc["outcome"] == "partial" and doc["committed"] == ["a", "b"]
        assert "error" not in doc
    cl["d"].root.mkdir(exist_ok=True)
    assert_as_reported(cl, names, "down.bin", doc, data, {"a": b"old-a", "b": None, "d": None})
    no_leftovers(cl, ("a", "b"))


@pytest.mark.parametrize("mode", ["atomic", "best-effort"])
def test_one_node_cut_mid_body(cluster_factory, mode):
    with proxied_cluster(cluster_factory, proxied=["b"], uploads=True, token=TOKEN, chunk_size=65536) as (cluster, px):
        seed(cluster, "cut.bin", {n: b"old " + n.encode() for n in ABC})
        data = os.urandom(6 << 20)
        px["b"].set("cut_request", cut_after=2 << 20)
        status, doc = fanout(cluster["a"], "cut.bin", data, query=f"?mode={mode}")
        line = doc["nodes"]["b"]
        assert line["status"] == "failed" and line["error"] in ("peer_broken", "peer_unreachable"), line
        if mode == "atomic":
            assert status == 502 and doc["outcome"] == "unchanged" and doc["committed"] == []
        else:
            assert status == 207 and doc["committed"] == ["a", "c"]
        assert_as_reported(cluster, ABC, "cut.bin", doc, data, {n: b"old " + n.encode() for n in ABC})
        no_leftovers(cluster, ABC)
        no_tracebacks(cluster)


@pytest.fixture
def full_folder(cluster_factory):
    """A cluster whose node b has a 4 MiB tmpfs at full/ (root only; skipped otherwise)."""
    cluster = cluster_factory(ABC, uploads=True, token=TOKEN, chunk_size=65536)
    mount = cluster["b"].root / "full"
    mount.mkdir()
    for name in ("a", "c"):
        (cluster[name].root / "full").mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (ENOSPC)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield cluster
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_one_node_full(full_folder):
    cluster = full_folder
    old = {n: b"old" for n in ABC}
    seed(cluster, "full/f.bin", old)
    blocks = [os.urandom(1 << 20) for _ in range(6)]
    data = b"".join(blocks)
    # chunked: no length to check first, the disk fills mid-body (ENOSPC)
    status, doc = chunked_fanout(cluster["a"], "full/f.bin", blocks)
    assert status == 507 and doc["error"] == "insufficient_storage" and doc["outcome"] == "unchanged", doc
    assert doc["nodes"]["b"]["status"] == "failed" and doc["nodes"]["b"]["http"] == 507
    assert_as_reported(cluster, ABC, "full/f.bin", doc, data, old)
    no_leftovers(cluster, ABC)
    # with a length, b refuses before the body; best-effort: the others take it
    status, doc = fanout(cluster["a"], "full/f.bin", data, query="?mode=best-effort")
    assert status == 207 and doc["committed"] == ["a", "c"] and doc["nodes"]["b"]["error"] == "insufficient_storage"
    assert_as_reported(cluster, ABC, "full/f.bin", doc, data, old)
    no_leftovers(cluster, ABC)
    assert (cluster["b"].root / "full").stat().st_dev != cluster["b"].root.stat().st_dev  # it was the tmpfs


def test_slow_node_sets_the_pace_in_bounded_memory(cluster_factory):
    size, rate = 96 << 20, 24 << 20
    with proxied_cluster(cluster_factory, proxied=["c"], uploads=True, token=TOKEN, chunk_size=65536) as (cluster, px):
        a = cluster["a"]
        fanout(a, "warm.bin", b"warm up every thread and pool")
        rss_before = a.rss_peak_kib()
        px["c"].set("slow", rate=rate)
        data = os.urandom(1 << 20) * (size >> 20)
        started = time.monotonic()
        thread, result = background_fanout(a, "slow.bin", data, query="?id=slow-one")
        leads, progress = [], []
        while thread.is_alive():
            r = support.http("GET", f"{a.url}/cluster/uploads/slow-one", headers=AUTH, timeout=5)
            if r.status == 200:
                progress.append(r.json())
                # what a's own copy took so far, against what really went on to c
                leads.append(progress[-1]["nodes"]["a"]["bytes"] - px["c"].sent_up)
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        status, doc = result[0]
        assert status == 201 and doc["committed"] == list(ABC), doc
        assert elapsed >= size / rate * 0.9  # everyone waited for c
        assert len(leads) > 20 and max(leads) < 16 << 20, max(leads)  # a never ran far ahead of c
        grown = a.rss_peak_kib() - rss_before
        assert grown < 40 * 1024, f"gateway peak RSS grew by {grown} KiB for a {size >> 20} MiB fan-out"
        assert all(content(cluster[n], "slow.bin") == data for n in ABC)
        # the progress the web page polls
        running = [p for p in progress if p["state"] == "receiving" and p["nodes"]["c"]["bytes"]]
        assert running and set(running[-1]["nodes"]) == set(ABC) and running[-1]["length"] == size
        assert any(p["nodes"]["a"]["state"] == "staging" for p in running)
        final = support.http("GET", f"{a.url}/cluster/uploads/slow-one", headers=AUTH).json()
        assert final["state"] == "done" and final["result"] == doc
        no_leftovers(cluster, ABC)


# -- the client, the gateway, a commit ------------------------------------------------------------

@pytest.mark.parametrize("server", ["uwsgi", "waitress"])
def test_client_aborts_mid_body(cluster_factory, server):
    # waitress reads a whole body before the app runs (so nothing starts); uwsgi streams it to the
    # app, which has already sent part of it to every node when the client goes away.
    if server == "uwsgi" and shutil.which("uwsgi") is None:
        pytest.skip("uwsgi is not installed")
    cluster = cluster_factory(ABC, server=server, uploads=True, token=TOKEN, chunk_size=65536)
    old = {n: b"old" for n in ABC}
    seed(cluster, "abort.bin", old)
    a = cluster["a"]
    with socket.create_connection((a.host, a.port), timeout=10) as s:
        s.sendall(f"PUT /cluster/files/abort.bin?id=client-gone HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {TOKEN}\r\nContent-Length: 8000000\r\n\r\n".encode())
        s.sendall(os.urandom(3_000_000))
        if server == "uwsgi":
            assert wait_for(lambda: any(stage_state(cluster[n], "client-gone") for n in ("b", "c")), 5)
    assert wait_for(lambda: all(content(cluster[n], "abort.bin") == b"old" for n in ABC))
    no_leftovers(cluster, ABC)
    assert all(stage_state(cluster[n], "client-gone") is None for n in ABC)
    assert support.http("GET", f"{a.url}/healthz").status == 200


def test_gateway_killed_between_stage_and_commit(cluster_factory):
    expiry = 3
    with proxied_cluster(cluster_factory, proxied=["c"], uploads=True, token=TOKEN, chunk_size=65536,
                         stage_expiry=expiry) as (cluster, px):
        old = {n: b"old " + n.encode() for n in ABC}
        seed(cluster, "kill/f.bin", old)
        px["c"].set("hold_answer")  # c stages, but the gateway does not hear it: it waits before committing
        thread, _ = background_fanout(cluster["a"], "kill/f.bin", os.urandom(2 << 20), query="?id=killed-gw")
        assert wait_for(lambda: all(stage_state(cluster[n], "killed-gw") == "staged" for n in ABC), 10)
        assert leftovers(cluster["b"].root)  # the staged copies exist, hidden
        cluster["a"].proc.send_signal(signal.SIGKILL)
        cluster["a"].proc.wait(5)
        px["c"].release()
        thread.join(30)
        assert all(content(cluster[n], "kill/f.bin") == old[n] for n in ABC)
        for name in ("b", "c"):  # nothing of the stages is visible
            listing = support.http("GET", f"{cluster[name].url}/list/kill", headers=AUTH).json()
            assert [(e["name"], e["size"]) for e in listing["entries"]] == [("f.bin", len(old[name]))]
        # b and c drop theirs when they expire; a restarted drops its own
        support.launch(cluster["a"], cluster.config_path).wait_ready()
        no_leftovers(cluster, ABC, timeout=expiry + 5)
        assert all(stage_state(cluster[n], "killed-gw") is None for n in ("b", "c"))
        assert all(content(cluster[n], "kill/f.bin") == old[n] for n in ABC)
        assert "expired (staged): dropped" in cluster["b"].log()


def test_commit_fails_after_others_committed(cluster_factory):
    with proxied_cluster(cluster_factory, proxied=["b"], uploads=True, token=TOKEN, chunk_size=65536,
                         stage_expiry=5) as (cluster, px):
        old = {n: b"old " + n.encode() for n in ABC}
        seed(cluster, "partial.bin", old)
        data = os.urandom(1 << 20)
        px["b"].set("hold_answer")
        thread, result = background_fanout(cluster["a"], "partial.bin", data, query="?id=partial-1")
        assert wait_for(lambda: all(stage_state(cluster[n], "partial-1") == "staged" for n in ABC), 10)
        cluster["c"].proc.send_signal(signal.SIGKILL)  # c staged, and dies before its commit
        cluster["c"].proc.wait(5)
        px["b"].release()
        thread.join(30)
        status, doc = result[0]
        assert status == 502 and doc["error"] == "partially_committed" and doc["outcome"] == "partial", doc
        assert doc["committed"] == ["a", "b"] and "a, b" in doc["message"]
        line = doc["nodes"]["c"]
        assert line["status"] == "failed" and line["phase"] == "commit" and line["error"] == "peer_unreachable"
        assert_as_reported(cluster, ABC, "partial.bin", doc, data, old)
        no_leftovers(cluster, ("a", "b"))
        assert leftovers(cluster["c"].root)  # c's stage is still there, invisible ...
        support.launch(cluster["c"], cluster.config_path).wait_ready()
        no_leftovers(cluster, ("c",), timeout=12)  # ... until it expires on the restarted node
        assert content(cluster["c"], "partial.bin") == old["c"]


# -- preconditions, per node -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["atomic", "best-effort"])
def test_if_none_match_fails_on_one_node(cl, mode):
    old = {"a": None, "b": b"b has it", "c": None}
    seed(cl, f"pre-{mode}.bin", old)
    data = b"new content"
    status, doc = fanout(cl["a"], f"pre-{mode}.bin", data, {"If-None-Match": "*"}, f"?nodes=a,b,c&mode={mode}")
    assert doc["nodes"]["b"]["status"] == "failed" and doc["nodes"]["b"]["error"] == "precondition_failed"
    if mode == "atomic":
        assert status == 412 and doc["error"] == "precondition_failed" and doc["committed"] == []
    else:
        assert status == 207 and doc["committed"] == ["a", "c"]
    assert_as_reported(cl, ABC, f"pre-{mode}.bin", doc, data, old)
    no_leftovers(cl, ABC)


def test_if_match_lists_every_nodes_etag(cl):
    seed(cl, "ifm.bin", {n: b"v1 " + n.encode() for n in ABC})
    etags = {n: support.http("HEAD", f"{cl[n].url}/files/ifm.bin", headers=AUTH).headers["ETag"] for n in ABC}
    status, doc = fanout(cl["a"], "ifm.bin", b"v2", {"If-Match": ", ".join(etags.values())}, "?nodes=a,b,c")
    assert status == 200 and doc["committed"] == list(ABC)
    # a stale list: only a's ETag is current now
    fresh_a = doc["nodes"]["a"]["etag"]
    status, doc = fanout(cl["a"], "ifm.bin", b"v3", {"If-Match": f"{fresh_a}, {etags['b']}"}, "?nodes=a,b,c")
    assert status == 412 and doc["committed"] == [] and doc["nodes"]["a"]["status"] == "unchanged"
    assert all(content(cl[n], "ifm.bin") == b"v2" for n in ABC)


# -- the node-to-node stage API ------------------------------------------------------------------------

def stage_url(node, stage_id: str, suffix: str = "") -> str:
    return f"{node.url}/stages/{stage_id}{suffix}"


def commit_body(data: bytes) -> bytes:
    return json.dumps({"size": len(data), "sha-256": hashlib.sha256(data).hexdigest()}).encode()


def test_stage_api_commit_rechecks_preconditions(cl):
    b = cl["b"]
    (b.root / "race.bin").unlink(missing_ok=True)
    r = support.http("PUT", stage_url(b, "race-stage-1") + "?path=race.bin", headers={**AUTH, "If-None-Match": "*"},
                     body=b"mine")
    assert r.status == 201 and r.json()["state"] == "staged"
    (b.root / "race.bin").write_bytes(b"someone else won")
    r = support.http("POST", stage_url(b, "race-stage-1", "/commit"), headers=AUTH, body=commit_body(b"mine"))
    assert r.status == 412 and r.json()["error"] == "precondition_failed"
    assert content(b, "race.bin") == b"someone else won"
    assert support.http("GET", stage_url(b, "race-stage-1"), headers=AUTH).status == 404
    assert not leftovers(b.root)


def test_stage_api_lifecycle_and_checks(cl):
    b = cl["b"]
    assert support.http("PUT", stage_url(b, "api-stage-1") + "?path=api/x.bin", body=b"x").status == 401
    r = support.http("PUT", stage_url(b, "api-stage-1") + "?path=api/x.bin", headers=AUTH, body=b"hello")
    assert r.status == 201
    assert support.http("PUT", stage_url(b, "api-stage-1") + "?path=api/y.bin", headers=AUTH,
                        body=b"x").json()["error"] == "stage_exists"
    assert not (b.root / "api").exists() or not any(p.name == "x.bin" for p in (b.root / "api").iterdir())
    assert support.http("GET", f"{b.url}/list/api", headers=AUTH).json()["entries"] == []  # hidden
    r = support.http("POST", stage_url(b, "api-stage-1", "/commit"), headers=AUTH, body=commit_body(b"hellO"))
    assert r.status == 400 and r.json()["error"] == "digest_mismatch"
    assert support.http("GET", stage_url(b, "api-stage-1"), headers=AUTH).status == 404  # dropped
    assert not (b.root / "api").exists()  # the folder it made, too
    for body in (b"nope", b'{"size": -1, "sha-256": "00"}', b'{"size": 1}'):
        r = support.http("POST", stage_url(b, "api-stage-2", "/commit"), headers=AUTH, body=body)
        assert r.status == 400, body
    assert support.http("DELETE", stage_url(b, "api-stage-2"), headers=AUTH).json()["error"] == "no_such_stage"
    assert support.http("PUT", stage_url(b, "api-stage-3"), headers=AUTH, body=b"x").status == 400  # no ?path=
    assert support.http("PUT", stage_url(b, "short"), headers=AUTH, body=b"x").json()["error"] == "bad_stage_id"
    assert not leftovers(b.root)


@pytest.mark.parametrize("server", ["waitress", "uwsgi", "gunicorn"])
def test_abandoned_stage_expires_on_a_live_node(cluster_factory, server):
    # uwsgi and gunicorn fork after loading the app: the sweeper's thread must run in the worker
    if shutil.which(server) is None and server != "waitress":
        pytest.skip(f"{server} is not installed")
    cluster = cluster_factory(("a",), server=server, uploads=True, token=TOKEN, stage_expiry=1)
    a = cluster["a"]
    r = support.http("PUT", stage_url(a, "abandoned-1") + "?path=deep/er/f.bin", headers=AUTH, body=b"x" * 1000)
    assert r.status == 201 and r.json()["expires"] > time.time()
    assert leftovers(a.root)
    no_leftovers(cluster, ("a",), timeout=5)  # the sweeper's timer, no request needed
    assert not (a.root / "deep").exists()
    assert "stage abandoned-1 of deep/er/f.bin expired (staged): dropped" in a.log()
