"""Pick what goes in: ?glob=, ?since=, ?until=, ?max_size= on /list, /cluster/list and /cluster/files."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile

import pytest

import support

HOUR = 3600


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Nodes a and b with old and new logs, a big dump and a text file; b is asked through a."""
    cl = support.start_cluster(tmp_path_factory.mktemp("selection"), ("a", "b"))
    now = time.time()
    for name in "ab":
        root = cl[name].root
        for rel, data, age in [("logs/app.log", b"new app\n", 60), ("logs/old/app.log", b"old app\n", 3 * HOUR),
                               ("logs/web/access.log", b"new web\n", 120), ("logs/notes.txt", b"notes\n", 30),
                               ("logs/core.dump", b"x" * 4096, 10)]:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (now - age, now - age))
    yield cl
    cl.stop()


def members(cl, query: str) -> tuple[set[str], dict]:
    r = support.http("GET", cl.url("a") + "/cluster/files/logs" + query, timeout=60)
    assert r.status == 200, r.data
    assert int(r.headers["Content-Length"]) == len(r.data)
    with zipfile.ZipFile(io.BytesIO(r.data)) as zf:
        assert zf.testzip() is None
        report = json.loads(zf.read("_cluster.json"))
        return {n for n in zf.namelist() if n != "_cluster.json"}, report


def test_glob_picks_by_name_in_any_folder(logs):
    got, report = members(logs, "?glob=*.log")
    assert got == {f"{n}/logs/{p}" for n in "ab" for p in ("app.log", "old/app.log", "web/access.log")}
    assert report["selection"]["glob"] == ["*.log"]


def test_glob_with_a_slash_and_several_patterns(logs):
    got, _ = members(logs, "?glob=web/*&glob=*.txt&nodes=b")
    assert got == {"b/logs/web/access.log", "b/logs/notes.txt"}


def test_the_last_hour_of_logs(logs):
    got, report = members(logs, "?glob=*.log&since=1h")
    assert got == {f"{n}/logs/{p}" for n in "ab" for p in ("app.log", "web/access.log")}
    assert report["selection"] == {"glob": ["*.log"], "since": "1h", "until": None, "max_size": None}


def test_until_and_max_size(logs):
    got, _ = members(logs, "?until=2h")
    assert got == {"a/logs/old/app.log", "b/logs/old/app.log"}
    got, _ = members(logs, "?max_size=1k")
    assert not any(name.endswith("core.dump") for name in got) and len(got) == 8


def test_a_single_file_is_selected_too(logs):
    r = support.http("GET", logs.url("a") + "/cluster/files/logs/core.dump?max_size=100", timeout=30)
    assert r.status == 404 and r.json()["error"] == "nothing_selected"


def test_nothing_selected_is_404_not_an_empty_archive(logs):
    r = support.http("GET", logs.url("a") + "/cluster/files/logs?glob=*.nothing", timeout=30)
    assert r.status == 404 and r.json()["error"] == "nothing_selected"


@pytest.mark.parametrize("query", ["?since=yesterday", "?max_size=big", "?since=1h&until=2h"])
def test_bad_values_are_400(logs, query):
    for path in ("/cluster/files/logs", "/cluster/list/logs", "/list/logs"):
        r = support.http("GET", logs.url("a") + path + query, timeout=30)
        assert r.status == 400 and r.json()["error"] == "bad_selection", path


def test_listings_preview_the_selection(logs):
    own = support.http("GET", logs.url("a") + "/list/logs?recursive=1&glob=*.log&since=1h").json()
    assert [e["path"] for e in own["entries"]] == ["logs/app.log", "logs/web/access.log"]
    peer = support.http("GET", logs.url("a") + "/nodes/b/list/logs?recursive=1&glob=*.txt").json()
    assert [e["path"] for e in peer["entries"]] == ["logs/notes.txt"]
    merged = support.http("GET", logs.url("a") + "/cluster/list/logs?glob=*.log").json()
    # Folders stay, to browse into; files are picked.
    assert [(e["name"], e["type"]) for e in merged["entries"]] == [("app.log", "file"), ("old", "dir"), ("web", "dir")]
