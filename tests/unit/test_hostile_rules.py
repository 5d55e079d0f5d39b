"""The pure rules behind issue 12's capability fixes, as tables; plus the few cases a root-run
test suite cannot make on a real disk (an unreadable folder), through the WSGI callable."""

import errno
import io
import json
import os
import stat
import zipfile

import pytest
from webtest import TestApp

from wsgi_stream import make_app, plan
from wsgi_stream.plan import NodeResult, check_found
from wsgi_stream.config import Config, config_from_dict
from wsgi_stream.endpoints import URL_MAP
from wsgi_stream.errors import ApiError, Conflict
from wsgi_stream.forward import _timed_out
from wsgi_stream.logtext import log_safe
from wsgi_stream.paths import read_error, upload_relpath, write_error
from wsgi_stream.portable import check_segments, portable_path, portable_segment
from wsgi_stream.uploads import check_replace


# -- portable ZIP member names -----------------------------------------------------------------------

@pytest.mark.parametrize("segment, portable", [
    ("plain.txt", "plain.txt"),
    ("été à l'heure.txt", "été à l'heure.txt"),     # non-ASCII is fine (UTF-8 flag)
    ("100%.txt", "100%.txt"),                          # '%' alone needs nothing
    ("new\nline.txt", "new%0Aline.txt"),
    ("c\rr.txt", "c%0Dr.txt"),
    ("tab\tname", "tab%09name"),
    ("bell\x07", "bell%07"),
    ("del\x7f", "del%7F"),
    ("a:b", "a%3Ab"),
    ('q"uote', "q%22uote"),
    ("star*?<>|", "star%2A%3F%3C%3E%7C"),
    ("back\\slash", "back%5Cslash"),
    ("50%:off", "50%25%3Aoff"),                        # once escaped, '%' is escaped too: reversible
    ("trailing.", "trailing%2E"),
    ("trailing ", "trailing%20"),
    ("dots...", "dots%2E%2E%2E"),
    ("...", "%2E%2E%2E"),
    (" . ", "%20%2E%20"),                            # all of it is a trailing run
    ("CON", "%43ON"),
    ("con", "%63on"),
    ("nul.txt", "%6Eul.txt"),
    ("Com1.tar.gz", "%43om1.tar.gz"),
    ("LPT9", "%4CPT9"),
    ("AUX .txt", "%41UX .txt"),
    ("CON.", "%43ON%2E"),
    ("CONSOLE", "CONSOLE"),                            # only the exact device names
    ("COM10", "COM10"),
    (".hidden", ".hidden"),
])
def test_portable_segment(segment, portable):
    assert portable_segment(segment) == portable


@pytest.mark.parametrize("path, portable", [
    ("b/dir/new\nline.txt", "b/dir/new%0Aline.txt"),
    ("a/con/x:y/ok", "a/%63on/x%3Ay/ok"),
    ("a/a\\..\\..\\b", "a/a%5C..%5C..%5Cb"),
])
def test_portable_path(path, portable):
    assert portable_path(path) == portable


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "a/./b", "a/../b", "..", "a/\x00b", "a/\udcffb"])
def test_no_disk_holds_these_names(path):
    with pytest.raises(ValueError):
        check_segments(path)


# -- OSError -> answer -------------------------------------------------------------------------------

@pytest.mark.parametrize("code, status, error", [
    (errno.ENOENT, 404, "not_found"),
    (errno.ENOTDIR, 404, "not_found"),
    (errno.EISDIR, 404, "not_found"),
    (errno.ELOOP, 404, "not_found"),
    (errno.EINVAL, 404, "not_found"),
    (errno.EILSEQ, 404, "not_found"),
    (errno.ENAMETOOLONG, 400, "name_too_long"),
    (errno.EACCES, 403, "not_readable"),
    (errno.EPERM, 403, "not_readable"),
    (errno.EIO, 500, "io_error"),
])
def test_read_error(code, status, error):
    answer = read_error(OSError(code, os.strerror(code)), "directory")
    assert (answer.status, answer.code) == (status, error)
    assert answer.message


@pytest.mark.parametrize("code, status, error", [
    (errno.ENAMETOOLONG, 400, "name_too_long"),
    (errno.EINVAL, 400, "bad_name"),
    (errno.EILSEQ, 400, "bad_name"),
    (errno.ENOTDIR, 409, "parent_not_directory"),
    (errno.EISDIR, 409, "is_directory"),
    (errno.ELOOP, 409, "symlink"),
    (errno.ENOENT, 409, "conflict"),
    (errno.EIO, None, None),                      # not about the path: the caller decides
])
def test_write_error(code, status, error):
    answer = write_error(OSError(code, os.strerror(code)))
    assert ((answer.status, answer.code) if answer else (None, None)) == (status, error)


# -- what a PUT may name ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, answer", [
    ("a.txt", "a.txt"),
    ("dir/a.txt", "dir/a.txt"),
    ("dir/./a.txt", "dir/a.txt"),
    ("new\nline", "new\nline"),
    ("dir/", 400),
    ("dir/.", 400),
    ("dir//", 400),
    ("dir/..", 404),
    ("/etc/passwd", 404),
])
def test_upload_relpath(raw, answer):
    if isinstance(answer, int):
        with pytest.raises(ApiError) as caught:
            upload_relpath(raw)
        assert caught.value.status == answer
    else:
        assert upload_relpath(raw) == answer


def _st(mode):
    return os.stat_result((mode, 1, 1, 1, 0, 0, 5, 0, 0, 0))


@pytest.mark.parametrize("mode, code", [
    (stat.S_IFLNK | 0o777, "symlink"),
    (stat.S_IFDIR | 0o755, "is_directory"),
    (stat.S_IFIFO | 0o644, "not_a_file"),
    (stat.S_IFSOCK | 0o644, "not_a_file"),
])
def test_a_put_replaces_only_a_regular_file(mode, code):
    with pytest.raises(Conflict) as caught:
        check_replace({}, _st(mode))
    assert caught.value.code == code


# -- routes: any name a disk holds -----------------------------------------------------------------

@pytest.mark.parametrize("path, value", [
    ("/files/new\nline.txt", "new\nline.txt"),
    ("/files/dir/c\rr\t.txt", "dir/c\rr\t.txt"),
    ("/files/\n", "\n"),
    ("/list/a\nb/c", "a\nb/c"),
    ("/cluster/files/x\ny", "x\ny"),
    ("/nodes/b/files/\n\n", "\n\n"),
])
def test_routes_match_every_character_a_name_can_hold(path, value):
    endpoint, values = URL_MAP.bind("localhost").match(path, method="GET")
    assert values["path"] == value


# -- the access log --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, logged", [
    ("/files/plain.txt", "/files/plain.txt"),
    ("/files/été", "/files/été"),
    ("/a\nb", "/a\\x0ab"),
    ("/a\r\nb", "/a\\x0d\\x0ab"),
    ("/a\x1b[31m", "/a\\x1b[31m"),
    ('/q"uote', '/q\\"uote'),
    ("/back\\slash", "/back\\\\slash"),
    ("/nel\x85", "/nel\\x85"),
    ("/ls\u2028ps\u2029", "/ls\\u2028ps\\u2029"),
    ("/bidi\u202e", "/bidi\\u202e"),
    ("/raw\udcff", "/raw\\xff"),
])
def test_log_safe(text, logged):
    assert log_safe(text) == logged
    assert "\n" not in log_safe(text) and "\r" not in log_safe(text)


# -- the cluster's verdict when no node has the path ----------------------------------------------

@pytest.mark.parametrize("results, status, code", [
    ([NodeResult("a", "missing"), NodeResult("b", "missing")], 404, "not_found"),
    ([NodeResult("a", "missing", "long", code="name_too_long"),
      NodeResult("b", "missing", "long", code="name_too_long")], 400, "name_too_long"),
    ([NodeResult("a", "missing", "long", code="name_too_long"), NodeResult("b", "missing")], 404, "not_found"),
    ([NodeResult("a", "missing", "long", code="name_too_long"), NodeResult("b", "error", "down")],
     502, "nodes_failed"),
    ([NodeResult("a", "ok"), NodeResult("b", "error", "down")], None, None),
])
def testcheck_found(results, status, code):
    if status is None:
        check_found(results, "x")
        return
    with pytest.raises(ApiError) as caught:
        check_found(results, "x")
    assert (caught.value.status, caught.value.code) == (status, code)


def test_a_stalled_send_is_told_from_a_broken_one():
    stalled = ApiError("x")
    stalled.__cause__ = OSError("aborted")
    stalled.__cause__.__cause__ = TimeoutError("timed out")
    assert _timed_out(stalled) and not _timed_out(ApiError("y"))


def test_max_upload_size_has_a_finite_default():
    assert Config(nodes={}).max_upload_size == 64 << 30
    assert config_from_dict({"cluster": {"max_upload_size": 0},
                             "nodes": {"a": {"url": "http://h:1", "root": "/"}}}).max_upload_size == 0


# -- through the WSGI callable: what a root-run suite cannot make on disk -------------------------------

@pytest.fixture
def app(tmp_path):
    root = tmp_path / "root"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "first.bin").write_bytes(b"1" * 100)
    (root / "dir" / "sub" / "x.txt").write_bytes(b"x")
    config = config_from_dict({"nodes": {"a": {"url": "http://127.0.0.1:1", "root": str(root)}}})
    return TestApp(make_app(config, "a")), root


def _denied(real, denied):
    def wrapper(path, *args, **kwargs):
        if str(path).rstrip("/").endswith(denied):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)
    return wrapper


def test_an_unreadable_folder_is_403_json(app, monkeypatch):
    client, root = app
    monkeypatch.setattr(os, "scandir", _denied(os.scandir, "dir"))
    r = client.get("/list/dir", status=403)
    assert r.json == {"error": "not_readable", "message": "This node may not read that directory."}
    r = client.get("/list/dir?recursive=1", status=403)
    assert r.json["error"] == "not_readable"


def test_an_unreadable_subfolder_is_skipped_with_its_reason(app, monkeypatch):
    client, root = app
    monkeypatch.setattr(os, "scandir", _denied(os.scandir, "sub"))
    doc = client.get("/list/dir?recursive=1").json
    assert [e["path"] for e in doc["entries"]] == ["dir/first.bin"]
    assert doc["skipped"] == [{"name": "sub", "path": "dir/sub",
                               "reason": "a folder this node cannot read: Permission denied"}]


def test_an_unreadable_file_is_403_and_left_out_of_plans(app, monkeypatch):
    client, root = app
    monkeypatch.setattr(os, "open", _denied(os.open, "first.bin"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: not str(p).endswith("first.bin") and real_access(p, m, **k))
    assert client.get("/files/dir/first.bin", status=403).json["error"] == "not_readable"
    doc = client.get("/list/dir?recursive=1").json
    assert doc["skipped"] == [{"name": "first.bin", "path": "dir/first.bin", "reason": "a file this node may not read"}]
    r = client.get("/cluster/files/dir")
    zf = zipfile.ZipFile(io.BytesIO(r.body))
    assert zf.namelist() == ["a/dir/sub/x.txt", "_cluster.json"]
    errors = json.loads(zf.read("_cluster.json"))["nodes"]["a"]["errors"]
    assert errors == [{"name": "dir/first.bin", "message": "left out: a file this node may not read"}]


def test_a_first_member_failing_at_stream_start_is_json(app, monkeypatch):
    client, root = app
    real = plan.plan_local

    def plan_then_vanish(*args, **kwargs):
        result = real(*args, **kwargs)
        (root / "dir" / "first.bin").unlink()
        return result

    monkeypatch.setattr(plan, "plan_local", plan_then_vanish)
    r = client.get("/cluster/files/dir", status=503)
    assert r.content_type == "application/json"
    assert r.json["error"] == "archive_not_started" and "a/dir/first.bin disappeared" in r.json["message"]


def test_a_name_that_is_not_utf8_is_skipped_with_its_bytes_shown(app):
    client, root = app
    with open(os.fsencode(root / "dir") + b"/bad\xff.txt", "wb") as f:
        f.write(b"x")
    for path in ("/list/dir", "/list/dir?recursive=1"):
        doc = client.get(path).json
        assert {"name": "bad\\xff.txt", "path": "dir/bad\\xff.txt", "reason": "name is not valid UTF-8"} \
            in doc["skipped"]
