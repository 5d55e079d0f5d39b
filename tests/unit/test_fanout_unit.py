"""Fan-out and stages without sockets: the outcome table, the channel, a node's StageArea (webtest)."""

import hashlib
import json
import os
import threading
import time

import pytest
from webtest import TestApp

from wsgi_stream import make_app
from wsgi_stream.config import LocalNode, config_from_dict
from wsgi_stream.errors import ApiError, BadRequest, NotFound
from wsgi_stream.fanout import Aborted, Channel, mode_of, outcome, render
from wsgi_stream.stages import STAGE_DIR, StageArea, StageBusy, check_id, commit_request

SHA = hashlib.sha256(b"data").hexdigest()


def ok(created=True):
    return {"status": "committed", "created": created, "etag": '"e"'}


def failed(http=502, error="peer_unreachable", message="Node x is unreachable."):
    return {"status": "failed", "phase": "stage", "error": error, "message": message, "http": http}


UNCHANGED = {"status": "unchanged", "message": "Called off."}
UNKNOWN = {"status": "unknown", "error": "peer_broken", "message": "?"}


# -- the outcome: status, outcome, error code --------------------------------------------------------

@pytest.mark.parametrize("mode, lines, cause, expected", [
    # every node committed: 201 if one of them is a new file, 200 if all replaced one
    ("atomic", {"a": ok(), "b": ok(False)}, None, (201, "committed", None)),
    ("atomic", {"a": ok(False), "b": ok(False)}, None, (200, "committed", None)),
    ("best-effort", {"a": ok()}, None, (201, "committed", None)),
    # atomic, called off: the status and code of the node that called it off
    ("atomic", {"a": UNCHANGED, "b": failed(412, "precondition_failed")}, "b", (412, "unchanged", "precondition_failed")),
    ("atomic", {"a": UNCHANGED, "b": failed(507, "insufficient_storage"), "c": failed()}, "b",
     (507, "unchanged", "insufficient_storage")),
    # a commit failed after others committed: never a 2xx in atomic mode
    ("atomic", {"a": ok(), "b": {**failed(), "phase": "commit"}}, None, (502, "partial", "partially_committed")),
    ("atomic", {"a": ok(), "b": UNKNOWN}, None, (502, "partial", "partially_committed")),
    ("atomic", {"a": UNKNOWN, "b": failed()}, None, (502, "partial", "partially_committed")),
    # best-effort: some committed is a 207 (curl -f passes it: the caller asked for as many as possible)
    ("best-effort", {"a": ok(), "b": failed()}, None, (207, "partial", None)),
    ("best-effort", {"a": UNKNOWN, "b": failed()}, None, (502, "partial", "partially_committed")),
    # nobody committed: one shared failure keeps its status, different ones are 502 nodes_failed
    ("best-effort", {"a": failed(412, "precondition_failed"), "b": failed(412, "precondition_failed")}, None,
     (412, "unchanged", "precondition_failed")),
    ("best-effort", {"a": failed(412, "precondition_failed"), "b": failed()}, None, (502, "unchanged", "nodes_failed")),
])
def test_outcome_table(mode, lines, cause, expected):
    status, result, code, message = outcome(mode, lines, cause)
    assert (status, result, code) == expected
    assert (message is None) == (result == "committed")


def test_outcome_client_error_wins():
    error = BadRequest("The body ended after 5 of 10 bytes.", code="incomplete_body")
    status, result, code, message = outcome("atomic", {"a": UNCHANGED}, None, error)
    assert (status, result, code) == (400, "unchanged", "incomplete_body")
    assert message.endswith("No node changed.")


def test_outcome_partial_message_names_the_new_version():
    _, _, _, message = outcome("atomic", {"a": ok(), "b": ok(), "c": {**failed(), "phase": "commit"}})
    assert message == "Only a, b have the new version; failed: c."


@pytest.mark.parametrize("query, expected", [({}, "atomic"), ({"mode": ""}, "atomic"), ({"mode": "atomic"}, "atomic"),
                                             ({"mode": "Best-Effort"}, "best-effort")])
def test_mode_of(query, expected):
    assert mode_of(query) == expected


def test_mode_of_refuses_others():
    with pytest.raises(BadRequest):
        mode_of({"mode": "fast"})


@pytest.mark.parametrize("stage_id, good", [("a" * 8, True), ("A-b_9" * 3, True), ("x" * 64, True),
                                            ("short", False), ("x" * 65, False), ("../../etc", False),
                                            ("with space", False), ("", False), ("dots.dots.", False)])
def test_stage_id_rule(stage_id, good):
    if good:
        assert check_id(stage_id) == stage_id
    else:
        with pytest.raises(BadRequest):
            check_id(stage_id)


@pytest.mark.parametrize("body, expected", [
    (json.dumps({"size": 4, "sha-256": SHA}).encode(), (4, SHA)),
    (json.dumps({"size": 0, "sha-256": SHA.upper()}).encode(), (0, SHA)),
    (b"not json", None), (b"[]", None), (json.dumps({"size": 4}).encode(), None),
    (json.dumps({"size": -1, "sha-256": SHA}).encode(), None),
    (json.dumps({"size": True, "sha-256": SHA}).encode(), None),
    (json.dumps({"size": 4, "sha-256": "abc"}).encode(), None),
])
def test_commit_body_rule(body, expected):
    if expected is None:
        with pytest.raises(BadRequest):
            commit_request(body)
    else:
        assert commit_request(body) == expected


def test_render_one_line_per_node_and_valid_json():
    document = {"path": "p", "outcome": "committed", "nodes": {"a": ok(), "b": ok(False)}}
    data = render(document)
    assert json.loads(data) == document
    lines = data.decode().splitlines()
    assert len(lines) == 3 and lines[1].startswith(' "a": ') and lines[2].startswith(' "b": ')


# -- the channel ---------------------------------------------------------------------------------------

def test_channel_is_bounded_and_ends():
    channel = Channel(capacity=2)
    assert channel.put(b"1") and channel.put(b"2")
    blocked = threading.Thread(target=channel.put, args=(b"3",))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # full: the producer waits for the slowest target
    reader = iter(channel)
    assert next(reader) == b"1"
    blocked.join(2)
    assert not blocked.is_alive()
    channel.end()
    assert list(reader) == [b"2", b"3"] and channel.taken == 3


def test_channel_abort_raises_into_the_reader_and_frees_the_producer():
    channel = Channel(capacity=1)
    channel.put(b"1")
    results = []
    producer = threading.Thread(target=lambda: results.append(channel.put(b"2")))
    producer.start()
    channel.abort()
    producer.join(2)
    assert results == [False]
    with pytest.raises(Aborted):
        next(iter(channel))


def test_channel_stop_frees_the_producer():
    channel = Channel(capacity=1)
    channel.put(b"1")
    channel.stop()
    assert channel.put(b"2") is False


# -- a node's stages (StageArea directly, and the HTTP API through webtest) --------------------------

@pytest.fixture
def area(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return StageArea(LocalNode("a", root), expiry=60)


def leftovers(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root)
                  for n in dirs + files if n.startswith(".wsgi_stream-upload-"))


def test_stage_commit_is_idempotent_and_forgotten(area):
    root = area.local.root
    record = area.stage("stage-0001", "d/e/f.txt", {}, 4, [b"da", b"ta"])
    assert record.state == "staged" and record.size == 4 and record.sha256 == SHA
    assert not (root / "d/e/f.txt").exists() and leftovers(root)
    first = area.commit("stage-0001", 4, SHA)
    assert (root / "d/e/f.txt").read_bytes() == b"data" and first.created
    again = area.commit("stage-0001", 4, SHA)  # a gateway that lost the answer asks again
    assert (again.state, again.etag, again.created) == ("committed", first.etag, True)
    area.abort("stage-0001")  # forget the record; the file stays
    assert (root / "d/e/f.txt").read_bytes() == b"data"
    assert leftovers(root) == [] and not (root / STAGE_DIR).exists()


@pytest.mark.parametrize("size, sha, code", [(5, SHA, "size_mismatch"), (4, "0" * 64, "digest_mismatch")])
def test_commit_mismatch_drops_the_stage(area, size, sha, code):
    root = area.local.root
    (root / "f.txt").write_bytes(b"old")
    area.stage("stage-0002", "new/dir/f.txt", {}, None, [b"data"])
    with pytest.raises(BadRequest) as caught:
        area.commit("stage-0002", size, sha)
    assert caught.value.code == code
    with pytest.raises(NotFound):
        area.status("stage-0002")
    assert leftovers(root) == [] and not (root / "new").exists()


def test_preconditions_checked_at_stage_and_again_at_commit(area):
    root = area.local.root
    (root / "taken.txt").write_bytes(b"old")
    with pytest.raises(ApiError) as caught:
        area.stage("stage-0003", "taken.txt", {"If-None-Match": "*"}, None, [b"new"])
    assert caught.value.status == 412
    area.stage("stage-0004", "free.txt", {"If-None-Match": "*"}, None, [b"new"])
    (root / "free.txt").write_bytes(b"someone else")
    with pytest.raises(ApiError) as caught:
        area.commit("stage-0004", 3, hashlib.sha256(b"new").hexdigest())
    assert caught.value.status == 412
    assert (root / "free.txt").read_bytes() == b"someone else" and leftovers(root) == []


def test_a_broken_body_leaves_nothing(area):
    def blocks():
        yield b"part"
        raise BadRequest("The body broke off after 4 bytes.", code="incomplete_body")

    with pytest.raises(BadRequest):
        area.stage("stage-0005", "x/y/z.bin", {}, None, blocks())
    assert leftovers(area.local.root) == [] and not (area.local.root / "x").exists()


def test_a_receiving_stage_is_busy_and_never_swept(area):
    gate, started = threading.Event(), threading.Event()

    def blocks():
        yield b"da"
        started.set()
        gate.wait(5)
        yield b"ta"

    thread = threading.Thread(target=area.stage, args=("stage-0006", "busy.bin", {}, None, blocks()))
    thread.start()
    started.wait(5)
    with pytest.raises(StageBusy):
        area.commit("stage-0006", 4, SHA)
    with pytest.raises(StageBusy):
        area.abort("stage-0006")
    assert area.sweep(now=time.time() + 3600) == 0  # expired or not, its receiver holds it
    gate.set()
    thread.join(5)
    assert area.status("stage-0006").state == "staged"
    assert area.sweep(now=time.time() + 3600) == 1
    assert leftovers(area.local.root) == []


def test_sweep_drops_expired_stages_and_crash_leftovers(area):
    root = area.local.root
    area.stage("stage-0007", "keep/f.bin", {}, None, [b"x"])
    assert area.sweep() == 0
    folder = root / STAGE_DIR
    (folder / "crashed-1.json").write_bytes(b"")          # a record cut short by a crash
    (folder / "crashed-2.new-abcd").write_bytes(b"{")     # one a crash left unnamed
    past = time.time() - 61  # expired, and past the grace for unnamed records
    for name in ("crashed-1.json", "crashed-2.new-abcd"):
        os.utime(folder / name, (past, past))
    assert area.sweep() == 1
    assert sorted(os.listdir(folder)) == ["stage-0007.json"]
    assert area.sweep(now=time.time() + 61) == 1
    assert leftovers(root) == [] and not (root / "keep").exists()


def test_duplicate_id_is_refused(area):
    area.stage("stage-0008", "a.bin", {}, None, [b"1"])
    with pytest.raises(ApiError) as caught:
        area.stage("stage-0008", "b.bin", {}, None, [b"2"])
    assert caught.value.code == "stage_exists"
    assert area.status("stage-0008").path == "a.bin"


def make(root, **cluster):
    config = config_from_dict({"cluster": {"uploads": True, **cluster},
                               "nodes": {"a": {"url": "http://127.0.0.1:1", "root": str(root)}}})
    return TestApp(make_app(config, "a"))


def test_stage_api_needs_uploads_on(tmp_path):
    app = make(tmp_path, uploads=False)
    for method, path in (("put", "/stages/stage-0009?path=f"), ("get", "/stages/stage-0009"),
                         ("delete", "/stages/stage-0009"), ("post", "/stages/stage-0009/commit"),
                         ("put", "/cluster/files/f")):
        r = getattr(app, method)(path, expect_errors=True)
        assert r.status_int == 405, (method, path)


def test_fanout_to_this_node_alone(tmp_path):
    app = make(tmp_path)
    r = app.put("/cluster/files/one/f.txt?id=only-here", b"data")
    assert r.status_int == 201 and r.headers["Location"] == "/cluster/files/one/f.txt"
    assert r.json["nodes"] == {"a": {"status": "committed", "created": True, "etag": r.json["nodes"]["a"]["etag"]}}
    assert r.json["sha-256"] == SHA and r.json["size"] == 4
    assert app.get("/cluster/uploads/only-here").json["state"] == "done"
    assert app.put("/cluster/files/one/f.txt?id=only-here", b"x", expect_errors=True).json["error"] == "upload_exists"
    r = app.put("/cluster/files/one/f.txt", b"data2", headers={"If-None-Match": "*"}, expect_errors=True)
    assert r.status_int == 412 and r.json["outcome"] == "unchanged"
    assert (tmp_path / "one/f.txt").read_bytes() == b"data" and leftovers(tmp_path) == []
    r = app.put("/cluster/files/one/f.txt", b"data", headers={"Content-Digest": "sha-256=:" + "A" * 43 + "=:"},
                expect_errors=True)
    assert r.status_int == 400 and r.json["error"] == "digest_mismatch"
    assert app.get("/list/").json["entries"] == [{"name": "one", "path": "one", "type": "dir"}]


# -- the coordinator, with fake nodes ------------------------------------------------------------------

class FakeNode:
    """A target that stages into memory; `stage_error`/`commit_errors` make it fail on purpose."""

    def __init__(self, stage_error=None, commit_errors=()):
        self.stage_error, self.commit_errors = stage_error, list(commit_errors)
        self.received, self.calls = b"", []

    def stage(self, stage_id, rel, headers, length, channel, sha256_of):
        for block in channel:
            self.received += block
            if self.stage_error is not None and len(self.received) >= 2:
                raise self.stage_error
        self.calls.append("staged")

    def commit(self, stage_id, size, sha256):
        self.calls.append("commit")
        assert size == len(self.received) and sha256 == hashlib.sha256(self.received).hexdigest()
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        return {"created": True, "etag": '"e"'}

    def abort(self, stage_id):
        self.calls.append("abort")


def run_fanout(mode, nodes, body=(b"da", b"ta", b"!"), digests=None):
    from wsgi_stream.fanout import Fanout, Target
    fanout = Fanout("fake-0001", "f.bin", mode, [Target(n, node) for n, node in nodes.items()], {}, None, 600)
    return fanout.run(iter(body), digests or {})


PEER_DOWN = ApiError("Node b is unreachable.", status=502, code="peer_unreachable")
BROKEN = ApiError("Node b broke off its answer.", status=502, code="peer_broken")


@pytest.fixture(autouse=True)
def no_retry_pauses(monkeypatch):
    monkeypatch.setattr("wsgi_stream.fanout.COMMIT_RETRY_PAUSES", (0, 0, 0))


def test_atomic_all_commit_then_forget():
    nodes = {"a": FakeNode(), "b": FakeNode()}
    status, doc = run_fanout("atomic", nodes)
    assert status == 201 and doc["committed"] == ["a", "b"] and doc["size"] == 5
    assert all(node.received == b"data!" and node.calls == ["staged", "commit", "abort"] for node in nodes.values())


def test_atomic_one_stage_fails_calls_everything_off():
    nodes = {"a": FakeNode(), "b": FakeNode(stage_error=PEER_DOWN), "c": FakeNode()}
    status, doc = run_fanout("atomic", nodes)
    assert (status, doc["error"], doc["outcome"]) == (502, "peer_unreachable", "unchanged")
    assert doc["nodes"]["b"]["status"] == "failed" and doc["nodes"]["b"]["phase"] == "stage"
    assert doc["nodes"]["a"] == {"status": "unchanged", "message": "Called off: node b failed."}
    assert all("commit" not in node.calls for node in nodes.values())


def test_best_effort_goes_on_without_the_failed_node():
    nodes = {"a": FakeNode(), "b": FakeNode(stage_error=PEER_DOWN)}
    status, doc = run_fanout("best-effort", nodes)
    assert status == 207 and doc["committed"] == ["a"] and nodes["a"].received == b"data!"


def test_the_last_block_is_held_until_the_digest_matched():
    nodes = {"a": FakeNode()}
    status, doc = run_fanout("atomic", nodes, digests={"sha-256": hashlib.sha256(b"other").digest()})
    assert status == 400 and doc["error"] == "digest_mismatch"
    received = nodes["a"].received
    assert received != b"data!" and b"data!".startswith(received)  # never the whole body
    assert doc["nodes"]["a"]["status"] == "unchanged" and doc["sha-256"] is None


def test_a_cut_client_body_changes_nothing():
    def body():
        yield b"da"
        raise BadRequest("The body ended after 2 of 10 bytes.", code="incomplete_body")

    nodes = {"a": FakeNode(), "b": FakeNode()}
    status, doc = run_fanout("best-effort", nodes, body=body())
    assert status == 400 and doc["error"] == "incomplete_body"
    assert all(line["status"] == "unchanged" for line in doc["nodes"].values())


@pytest.mark.parametrize("errors, expected", [
    ([BROKEN], "committed"),                                   # the answer was lost, the retry gets it
    ([BROKEN, BROKEN, BROKEN, BROKEN], "unknown"),             # nothing ever comes back: cannot tell
    ([BROKEN, ApiError("gone", status=404, code="no_such_stage")], "failed"),   # dropped, not committed
    ([ApiError("x", status=412, code="precondition_failed")], "failed"),          # a plain no
])
def test_a_lost_commit_answer_is_asked_again(errors, expected):
    nodes = {"a": FakeNode(), "b": FakeNode(commit_errors=errors)}
    status, doc = run_fanout("atomic", nodes)
    assert doc["nodes"]["b"]["status"] == expected
    if expected == "committed":
        assert status == 201
    else:
        assert (status, doc["error"], doc["committed"]) == (502, "partially_committed", ["a"])
