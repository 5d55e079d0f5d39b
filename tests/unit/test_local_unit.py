"""GET/HEAD /files and /list through the WSGI callable (webtest): RFC 9110 ranges and conditionals."""

import json
import os

import pytest
from webtest import TestApp
from werkzeug.http import http_date

from wsgi_stream import make_app
from wsgi_stream.config import config_from_dict
from wsgi_stream.local import content_disposition, content_type

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "logs" / "old").mkdir(parents=True)
    (r / "data.bin").write_bytes(DATA)
    (r / "empty.txt").write_bytes(b"")
    (r / "logs" / "app.log").write_text("line\n")
    (r / "été à l'heure \"q\".txt").write_text("utf8")
    (r / ".hidden").write_text("hidden")
    (r / ".wsgi_stream-upload-xyz").write_text("partial")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", r / "escape.txt")
    os.symlink(r / "data.bin", r / "inside-link.bin")
    return r


def make(root, **cluster):
    config = config_from_dict({"cluster": cluster, "nodes": {"a": {"url": "http://127.0.0.1:1", "root": str(root)}}})
    return make_app(config, "a")


@pytest.fixture
def app(root):
    return TestApp(make(root))


def test_get_whole_file_with_full_header_set(app, root):
    r = app.get("/files/data.bin")
    assert r.status_int == 200 and r.body == DATA
    assert r.headers["Content-Length"] == str(len(DATA))
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == "attachment; filename=\"data.bin\"; filename*=UTF-8''data.bin"
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"].startswith('"') and not r.headers["ETag"].startswith("W/")
    assert r.headers["Last-Modified"] == http_date(int(os.stat(root / "data.bin").st_mtime))


def test_head_has_same_headers_and_no_body(app):
    get, head = app.get("/files/data.bin"), app.head("/files/data.bin")
    assert head.body == b""
    for name in ("Content-Length", "Content-Type", "ETag", "Last-Modified", "Content-Disposition"):
        assert head.headers[name] == get.headers[name]


def test_empty_file(app):
    r = app.get("/files/empty.txt")
    assert r.body == b"" and r.headers["Content-Length"] == "0"
    r = app.get("/files/empty.txt", headers={"Range": "bytes=0-"}, status=416)
    assert r.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize("name, expected", [
    ("bundle.tar.gz", "application/gzip"), ("a.tgz", "application/gzip"), ("a.log.xz", "application/x-xz"), ("notes.txt", "text/plain; charset=utf-8"),
    ("x.unknownext", "application/octet-stream"), ("noext", "application/octet-stream"), ("a.json", "application/json; charset=utf-8"),
])
def test_content_type(name, expected):
    assert content_type(name) == expected


def test_content_disposition_utf8_quotes_and_spaces():
    value = content_disposition('été à l\'heure "q".txt')
    assert value == ("attachment; filename=\"ete a l'heure _q_.txt\"; "
                     "filename*=UTF-8''%C3%A9t%C3%A9%20%C3%A0%20l%27heure%20%22q%22.txt")
    assert content_disposition("日本.txt").startswith('attachment; filename="download.txt"; ')
    assert content_disposition("日本").startswith('attachment; filename="download"; ')
    assert content_disposition(".bashrc").startswith('attachment; filename=".bashrc"; ')


def test_single_range(app):
    r = app.get("/files/data.bin", headers={"Range": "bytes=0-499"}, status=206)
    assert r.body == DATA[:500]
    assert r.headers["Content-Range"] == f"bytes 0-499/{len(DATA)}"
    assert r.headers["Content-Length"] == "500"


@pytest.mark.parametrize("spec, part", [
    ("bytes=-500", slice(-500, None)), ("bytes=9500-", slice(9500, None)),
    ("bytes=10000-99999", slice(10000, None)), ("bytes=0-0", slice(0, 1)), ("bytes=-99999", slice(0, None)),
])
def test_suffix_open_and_clamped_ranges(app, spec, part):
    r = app.get("/files/data.bin", headers={"Range": spec}, status=206)
    assert r.body == DATA[part]
    start = len(DATA) - len(r.body) if spec.startswith("bytes=-") else int(spec[6:].split("-")[0])
    assert r.headers["Content-Range"] == f"bytes {start}-{start + len(r.body) - 1}/{len(DATA)}"


def test_multiple_ranges_are_multipart_byteranges(app):
    r = app.get("/files/data.bin", headers={"Range": "bytes=0-9, 100-109, -5"}, status=206)
    ctype = r.headers["Content-Type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    assert int(r.headers["Content-Length"]) == len(r.body)
    boundary = ctype.split("boundary=")[1].encode()
    parts = r.body.split(b"--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    found = []
    for part in parts[1:-1]:
        head, _, body = part.partition(b"\r\n\r\n")
        assert b"Content-Type: application/octet-stream" in head
        found.append((head.split(b"Content-Range: ")[1].decode(), body[:-2]))
    n = len(DATA)
    assert found == [(f"bytes 0-9/{n}", DATA[0:10]), (f"bytes 100-109/{n}", DATA[100:110]),
                     (f"bytes {n - 5}-{n - 1}/{n}", DATA[-5:])]


def test_unsatisfiable_range_is_416_with_size(app):
    r = app.get("/files/data.bin", headers={"Range": "bytes=20000-"}, status=416)
    assert r.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert r.json["error"] == "range_not_satisfiable"


@pytest.mark.parametrize("spec", ["bytes=abc", "items=0-1", "bytes=5-1", "bytes 0-1"])
def test_invalid_range_is_ignored(app, spec):
    r = app.get("/files/data.bin", headers={"Range": spec})
    assert r.status_int == 200 and r.body == DATA


def test_if_range_etag_and_date(app):
    etag = app.head("/files/data.bin").headers["ETag"]
    last = app.head("/files/data.bin").headers["Last-Modified"]
    assert app.get("/files/data.bin", headers={"Range": "bytes=0-1", "If-Range": etag}).status_int == 206
    assert app.get("/files/data.bin", headers={"Range": "bytes=0-1", "If-Range": last}).status_int == 206
    r = app.get("/files/data.bin", headers={"Range": "bytes=0-1", "If-Range": '"other"'})
    assert r.status_int == 200 and r.body == DATA
    r = app.get("/files/data.bin", headers={"Range": "bytes=0-1", "If-Range": "W/" + etag})
    assert r.status_int == 200
    r = app.get("/files/data.bin", headers={"Range": "bytes=0-1", "If-Range": http_date(1)})
    assert r.status_int == 200


def test_if_none_match_and_if_modified_since_give_304(app):
    head = app.head("/files/data.bin")
    etag, last = head.headers["ETag"], head.headers["Last-Modified"]
    for headers in ({"If-None-Match": etag}, {"If-None-Match": f'"x", W/{etag}'}, {"If-None-Match": "*"},
                    {"If-Modified-Since": last}):
        r = app.get("/files/data.bin", headers=headers, status=304)
        assert r.body == b"" and r.headers["ETag"] == etag
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
    assert app.get("/files/data.bin", headers={"If-None-Match": '"x"', "If-Modified-Since": last}).status_int == 200
    assert app.get("/files/data.bin", headers={"If-Modified-Since": http_date(1)}).status_int == 200


def test_if_match_and_if_unmodified_since_give_412(app):
    etag = app.head("/files/data.bin").headers["ETag"]
    assert app.get("/files/data.bin", headers={"If-Match": etag}).status_int == 200
    assert app.get("/files/data.bin", headers={"If-Match": "*"}).status_int == 200
    assert app.get("/files/data.bin", headers={"If-Match": '"nope"'}, status=412).json["error"] == "precondition_failed"
    assert app.get("/files/data.bin", headers={"If-Match": "W/" + etag}, status=412)
    assert app.get("/files/data.bin", headers={"If-Unmodified-Since": http_date(1)}, status=412)
    assert app.get("/files/data.bin", headers={"If-Unmodified-Since": http_date(4102444800)}).status_int == 200


@pytest.mark.parametrize("url", [
    "/files/logs", "/files/missing.txt", "/files/logs/", "/files/../secret.txt", "/files/logs/../../secret.txt",
    "/files/escape.txt", "/files/.wsgi_stream-upload-xyz", "/files//etc/passwd", "/files/%2e%2e/secret.txt",
])
def test_directories_missing_and_traversal_are_404(app, url):
    r = app.get(url, status=404, expect_errors=True)
    assert r.content_type == "application/json" and set(r.json) == {"error", "message"}


def test_encoded_slash_and_nul_are_404(app):
    assert app.get("/files/logs%2Fapp.log", extra_environ={"REQUEST_URI": "/files/logs%2Fapp.log"}, status=404)
    assert app.get("/files/data.bin%00", extra_environ={"REQUEST_URI": "/files/data.bin%00"}, status=404)


def test_hidden_files_and_inside_symlinks_are_served(app):
    assert app.get("/files/.hidden").body == b"hidden"
    assert app.get("/files/inside-link.bin").body == DATA


def test_listing(app):
    doc = app.get("/list/").json
    assert doc["node"] == "a" and doc["path"] == ""
    names = [e["name"] for e in doc["entries"]]
    assert names == sorted(names)
    assert ".wsgi_stream-upload-xyz" not in names and "escape.txt" not in names and ".hidden" in names
    logs = next(e for e in doc["entries"] if e["name"] == "logs")
    assert logs == {"name": "logs", "path": "logs", "type": "dir"}
    data = next(e for e in doc["entries"] if e["name"] == "data.bin")
    assert data["size"] == len(DATA) and data["type"] == "file" and data["path"] == "data.bin"
    assert data["etag"] == app.head("/files/data.bin").headers["ETag"]
    assert app.get("/list/logs").json["entries"][0]["path"] == "logs/app.log"


def test_recursive_listing_has_files_only(app):
    doc = app.get("/list/?recursive=1").json
    paths = [e["path"] for e in doc["entries"]]
    assert "logs/app.log" in paths and all(e["type"] == "file" for e in doc["entries"])
    assert app.get("/list/logs?recursive=1").json["entries"][0]["path"] == "logs/app.log"


def test_listing_errors(app):
    assert app.get("/list/nope", status=404).json["error"] == "not_found"
    assert app.get("/list/data.bin", status=404)
    assert app.get("/list/../", status=404)


def test_healthz_and_unknown_endpoint_and_wrong_method(app):
    assert app.get("/healthz").json == {"node": "a", "status": "ok"}
    assert app.get("/nope", status=404).json["error"] == "not_found"
    r = app.post("/files/data.bin", status=405)
    assert r.headers["Allow"] == "GET, HEAD, PUT" and r.json["error"] == "method_not_allowed"
    r = app.delete("/list/", status=405)
    assert "GET" in r.headers["Allow"]


def test_auth_bearer_and_basic(root):
    app = TestApp(make(root, token="s3cret"))
    r = app.get("/files/data.bin", status=401)
    assert r.headers["WWW-Authenticate"] == 'Basic realm="wsgi_stream"' and r.json["error"] == "unauthorized"
    assert app.get("/healthz").status_int == 200
    assert app.get("/files/data.bin", headers={"Authorization": "Bearer s3cret"}).body == DATA
    app.authorization = ("Basic", ("anyone", "s3cret"))
    assert app.get("/list/").status_int == 200
    app.authorization = ("Basic", ("anyone", "wrong"))
    assert app.get("/list/", status=401)
    app.authorization = None
    for bad in ("Bearer wrong", "Basic !!!", "Token s3cret", "Bearer", ""):
        assert app.get("/list/", headers={"Authorization": bad}, status=401)


def test_file_is_closed_when_iterable_is_closed_early(root):
    app = make(root, chunk_size=4096)
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/files/data.bin", "SERVER_NAME": "x", "SERVER_PORT": "80",
           "wsgi.url_scheme": "http", "HTTP_RANGE": "bytes=0-", "wsgi.input": None}
    before = len(os.listdir("/proc/self/fd"))
    body = app(env, lambda status, headers: None)
    next(iter(body))
    body.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_json_error_never_traceback(app):
    r = app.get("/files/" + "a" * 5000, status=404, expect_errors=True)
    assert "Traceback" not in r.text and json.loads(r.text)["error"]
