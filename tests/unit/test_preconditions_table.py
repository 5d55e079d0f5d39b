"""The pure deciders of local.py as tables: RFC 9110 preconditions, ranges, and the planned answer.

No WSGI app and no socket: a stat_result is built by hand, headers are werkzeug Headers. Where a
body is needed (multipart lengths), it is read from a temporary file by local._plan_body itself.
The WSGI-level behaviour is in test_local_unit.py; these tables pin each rule on its own.
"""

from __future__ import annotations

import os
import re
import stat as stat_mod

import pytest
from werkzeug.datastructures import Headers
from werkzeug.http import http_date

from wsgi_stream import local
from wsgi_stream.errors import PreconditionFailed, RangeNotSatisfiable

MTIME = 1_700_000_000  # whole seconds: what Last-Modified carries
MTIME_NS = MTIME * 10**9 + 500_000_000  # the file's real mtime has a fraction the header drops


def fake_stat(size: int = 100, mtime_ns: int = MTIME_NS, ino: int = 0x1234,
              mode: int = stat_mod.S_IFREG | 0o644) -> os.stat_result:
    """A stat_result as os.stat would give for a file (st_mtime and st_mtime_ns filled in)."""
    seconds = mtime_ns // 10**9
    return os.stat_result((mode, ino, 1, 1, 0, 0, size, seconds, seconds, seconds,
                           mtime_ns / 1e9, mtime_ns / 1e9, mtime_ns / 1e9, mtime_ns, mtime_ns, mtime_ns))


ST = fake_stat()
ETAG = local.file_etag(ST)  # with its quotes, as sent in the ETag header
LAST_MODIFIED = http_date(MTIME)
EARLIER = http_date(MTIME - 1)
LATER = http_date(MTIME + 3600)


def test_etag_is_strong_and_made_of_inode_mtime_ns_and_size():
    assert ETAG == f'"1234-{MTIME_NS:x}-64"'
    assert local.file_etag(fake_stat(mtime_ns=MTIME_NS + 1)) != ETAG  # a rewrite within the same second
    assert local.file_etag(fake_stat(ino=0x1235)) != ETAG  # a replaced file (rename over it)
    assert local.file_etag(fake_stat(size=101)) != ETAG


# -- check_preconditions: RFC 9110 §13.2.2, steps 1 to 4 in order --------------------------------

PRECONDITIONS = [
    # (id, method, headers, expected verdict)
    ("no-preconditions-none", "GET", {}, None),
    # Step 1: If-Match, strong comparison (§13.1.1).
    ("rfc9110-13.2.2-if-match-fails-412", "GET", {"If-Match": '"other"'}, 412),
    ("rfc9110-13.1.1-if-match-matches", "GET", {"If-Match": ETAG}, None),
    ("rfc9110-13.1.1-if-match-star-matches-a-file", "GET", {"If-Match": "*"}, None),
    ("rfc9110-13.1.1-if-match-one-of-a-list", "GET", {"If-Match": f'"x", {ETAG}, "y"'}, None),
    ("rfc9110-13.1.1-if-match-weak-never-matches-412", "GET", {"If-Match": "W/" + ETAG}, 412),
    ("rfc9110-13.1.1-if-match-fails-on-put-412", "PUT", {"If-Match": '"other"'}, 412),
    ("rfc9110-13.1.1-if-match-matches-on-put", "PUT", {"If-Match": ETAG}, None),
    # Step 2: If-Unmodified-Since, only when If-Match is absent.
    ("rfc9110-13.2.2-if-unmodified-since-earlier-412", "GET", {"If-Unmodified-Since": EARLIER}, 412),
    ("rfc9110-13.1.4-if-unmodified-since-same-second", "GET", {"If-Unmodified-Since": LAST_MODIFIED}, None),
    ("rfc9110-13.1.4-if-unmodified-since-later", "GET", {"If-Unmodified-Since": LATER}, None),
    ("rfc9110-13.1.4-if-unmodified-since-invalid-date-ignored", "GET", {"If-Unmodified-Since": "yesterday"}, None),
    ("rfc9110-13.2.2-if-unmodified-since-ignored-with-if-match", "GET",
     {"If-Match": ETAG, "If-Unmodified-Since": EARLIER}, None),
    ("rfc9110-13.2.2-if-unmodified-since-earlier-on-put-412", "PUT", {"If-Unmodified-Since": EARLIER}, 412),
    # Step 3: If-None-Match, weak comparison; 304 for GET/HEAD, 412 otherwise.
    ("rfc9110-13.2.2-if-none-match-matches-get-304", "GET", {"If-None-Match": ETAG}, 304),
    ("rfc9110-13.2.2-if-none-match-matches-head-304", "HEAD", {"If-None-Match": ETAG}, 304),
    ("rfc9110-13.2.2-if-none-match-matches-put-412", "PUT", {"If-None-Match": ETAG}, 412),
    ("rfc9110-13.1.2-if-none-match-weak-comparison-304", "GET", {"If-None-Match": "W/" + ETAG}, 304),
    ("rfc9110-13.1.2-if-none-match-one-of-a-list-304", "GET", {"If-None-Match": f'"x", W/{ETAG}'}, 304),
    ("rfc9110-13.1.2-if-none-match-star-get-304", "GET", {"If-None-Match": "*"}, 304),
    ("rfc9110-13.1.2-if-none-match-star-put-412", "PUT", {"If-None-Match": "*"}, 412),
    ("rfc9110-13.1.2-if-none-match-no-match", "GET", {"If-None-Match": '"other"'}, None),
    # Step 4: If-Modified-Since, GET/HEAD only, only when If-None-Match is absent.
    ("rfc9110-13.2.2-if-modified-since-same-second-304", "GET", {"If-Modified-Since": LAST_MODIFIED}, 304),
    ("rfc9110-13.2.2-if-modified-since-later-304", "HEAD", {"If-Modified-Since": LATER}, 304),
    ("rfc9110-13.1.3-if-modified-since-earlier-200", "GET", {"If-Modified-Since": EARLIER}, None),
    ("rfc9110-13.1.3-if-modified-since-invalid-date-ignored", "GET", {"If-Modified-Since": "not a date"}, None),
    ("rfc9110-13.1.3-if-modified-since-ignored-on-put", "PUT", {"If-Modified-Since": LAST_MODIFIED}, None),
    ("rfc9110-13.2.2-if-modified-since-ignored-with-if-none-match", "GET",
     {"If-None-Match": '"other"', "If-Modified-Since": LAST_MODIFIED}, None),
    # The order: a failing step 1 or 2 wins over a 304 of step 3 or 4.
    ("rfc9110-13.2.2-order-if-match-412-before-if-none-match-304", "GET",
     {"If-Match": '"other"', "If-None-Match": ETAG}, 412),
    ("rfc9110-13.2.2-order-if-unmodified-since-412-before-if-modified-since-304", "GET",
     {"If-Unmodified-Since": EARLIER, "If-Modified-Since": LAST_MODIFIED}, 412),
    ("rfc9110-13.2.2-order-if-match-passes-then-if-none-match-304", "GET",
     {"If-Match": ETAG, "If-None-Match": ETAG}, 304),
]


@pytest.mark.parametrize("method, headers, expected", [case[1:] for case in PRECONDITIONS],
                         ids=[case[0] for case in PRECONDITIONS])
def test_check_preconditions(method, headers, expected):
    assert local.check_preconditions(method, Headers(headers), ST) == expected


# -- requested_ranges and If-Range (RFC 9110 §14.2, §13.1.5) -------------------------------------

RANGES = [
    # (id, headers, ranges for a 100-byte file; None = the whole file)
    ("rfc9110-14.2-no-range-whole-file", {}, None),
    ("rfc9110-14.1.2-first-bytes", {"Range": "bytes=0-9"}, [(0, 10)]),
    ("rfc9110-14.1.2-one-byte", {"Range": "bytes=0-0"}, [(0, 1)]),
    ("rfc9110-14.1.2-open-ended", {"Range": "bytes=90-"}, [(90, 100)]),
    ("rfc9110-14.1.2-last-byte-pos-clamped", {"Range": "bytes=50-1000"}, [(50, 100)]),
    ("rfc9110-14.1.2-suffix", {"Range": "bytes=-10"}, [(90, 100)]),
    ("rfc9110-14.1.2-suffix-longer-than-file", {"Range": "bytes=-1000"}, [(0, 100)]),
    ("rfc9110-14.1.2-several-ascending", {"Range": "bytes=0-9, 50-59, -1"}, [(0, 10), (50, 60), (99, 100)]),
    ("rfc9110-14.1.2-adjacent-kept-apart", {"Range": "bytes=0-9, 10-19"}, [(0, 10), (10, 20)]),
    # §14.2 lets a server ignore Range (here: werkzeug's parser) when the parts are not ascending,
    # overlap, or ask for nothing: the whole file is the answer, never a 416.
    ("rfc9110-14.2-descending-ignored", {"Range": "bytes=50-59, 0-9"}, None),
    ("rfc9110-14.2-overlapping-ignored", {"Range": "bytes=0-9, 5-14"}, None),
    ("rfc9110-14.2-open-ended-then-more-ignored", {"Range": "bytes=0-, 5-6"}, None),
    ("rfc9110-14.2-zero-length-suffix-ignored", {"Range": "bytes=-0"}, None),
    ("rfc9110-14.1.2-unsatisfiable-part-dropped", {"Range": "bytes=0-1, 200-300"}, [(0, 2)]),
    ("rfc9110-14.2-invalid-syntax-ignored", {"Range": "bytes=abc"}, None),
    ("rfc9110-14.2-other-unit-ignored", {"Range": "items=0-1"}, None),
    ("rfc9110-14.1.2-last-before-first-ignored", {"Range": "bytes=5-1"}, None),
    ("rfc9110-14.2-missing-equals-ignored", {"Range": "bytes 0-1"}, None),
    ("rfc9110-14.2-more-than-max-ranges-ignored",
     {"Range": "bytes=" + ",".join(f"{i}-{i}" for i in range(local.MAX_RANGES + 1))}, None),
    ("rfc9110-14.2-max-ranges-served",
     {"Range": "bytes=" + ",".join(f"{i}-{i}" for i in range(local.MAX_RANGES))},
     [(i, i + 1) for i in range(local.MAX_RANGES)]),
    # If-Range: the range only if the validator still matches, else the whole file (§13.1.5).
    ("rfc9110-13.1.5-if-range-strong-etag-matches", {"Range": "bytes=0-9", "If-Range": ETAG}, [(0, 10)]),
    ("rfc9110-13.1.5-if-range-etag-differs-whole-file", {"Range": "bytes=0-9", "If-Range": '"other"'}, None),
    ("rfc9110-13.1.5-if-range-weak-etag-never-matches", {"Range": "bytes=0-9", "If-Range": "W/" + ETAG}, None),
    ("rfc9110-13.1.5-if-range-date-equals-last-modified", {"Range": "bytes=0-9", "If-Range": LAST_MODIFIED},
     [(0, 10)]),
    ("rfc9110-13.1.5-if-range-date-earlier-whole-file", {"Range": "bytes=0-9", "If-Range": EARLIER}, None),
    ("rfc9110-13.1.5-if-range-date-later-whole-file", {"Range": "bytes=0-9", "If-Range": LATER}, None),
    ("rfc9110-13.1.5-if-range-garbage-whole-file", {"Range": "bytes=0-9", "If-Range": "garbage"}, None),
    ("rfc9110-13.1.5-if-range-without-range-ignored", {"If-Range": ETAG}, None),
    ("rfc9110-13.1.5-if-range-fails-before-416", {"Range": "bytes=200-", "If-Range": '"other"'}, None),
]


@pytest.mark.parametrize("headers, expected", [case[1:] for case in RANGES], ids=[case[0] for case in RANGES])
def test_requested_ranges(headers, expected):
    assert local.requested_ranges(Headers(headers), ST) == expected


UNSATISFIABLE = [
    # (id, Range, file size)
    ("rfc9110-15.5.17-first-pos-at-size-416", "bytes=100-", 100),
    ("rfc9110-15.5.17-all-parts-past-the-end-416", "bytes=150-160, 200-", 100),
    ("rfc9110-14.1.2-empty-file-any-range-416", "bytes=0-", 0),
    ("rfc9110-14.1.2-empty-file-suffix-416", "bytes=-5", 0),
]


@pytest.mark.parametrize("value, size", [case[1:] for case in UNSATISFIABLE], ids=[case[0] for case in UNSATISFIABLE])
def test_unsatisfiable_range_is_416_with_the_size(value, size):
    with pytest.raises(RangeNotSatisfiable) as err:
        local.requested_ranges(Headers({"Range": value}), fake_stat(size=size))
    assert err.value.status == 416 and err.value.code == "range_not_satisfiable"
    assert err.value.headers == [("Content-Range", f"bytes */{size}")]


# -- plan_file_response: which status, which headers, which bytes --------------------------------

DATA = bytes(range(256)) * 4 + b"tail"  # 1,028 bytes: the Content-Range numbers get 4 digits


@pytest.fixture
def data_file(tmp_path):
    """A real file with DATA and its stat, for plans whose body local._plan_body then reads."""
    path = tmp_path / "notes.txt"
    path.write_bytes(DATA)
    return path, os.stat(path)


def body_of(path, plan: local.FilePlan, chunk_size: int = 7) -> bytes:
    """The bytes local._plan_body sends for `plan` (small chunks: several reads per part)."""
    return b"".join(local._plan_body(open(path, "rb"), plan, chunk_size))


def header(plan: local.FilePlan, name: str) -> str | None:
    values = [v for k, v in plan.headers if k == name]
    assert len(values) <= 1, f"{name} twice"
    return values[0] if values else None


def test_plan_200_whole_file_with_every_representation_header(data_file):
    path, st = data_file
    plan = local.plan_file_response("GET", Headers(), "notes.txt", st)
    assert plan.status == 200 and plan.ranges == [(0, len(DATA))] and plan.boundary is None
    assert dict(plan.headers) == {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Disposition": "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt",
        "ETag": local.file_etag(st), "Last-Modified": http_date(int(st.st_mtime)),
        "Accept-Ranges": "bytes", "Cache-Control": "no-cache", "Content-Length": str(len(DATA))}
    assert body_of(path, plan) == DATA


def test_plan_head_is_planned_like_get(data_file):
    _, st = data_file
    get = local.plan_file_response("GET", Headers({"Range": "bytes=1-2"}), "notes.txt", st)
    head = local.plan_file_response("HEAD", Headers({"Range": "bytes=1-2"}), "notes.txt", st)
    assert (head.status, head.headers, head.ranges) == (get.status, get.headers, get.ranges)


@pytest.mark.parametrize("headers", [
    pytest.param({"If-None-Match": "*"}, id="rfc9110-15.4.5-304-if-none-match"),
    pytest.param({"If-Modified-Since": "LM"}, id="rfc9110-15.4.5-304-if-modified-since"),
    pytest.param({"If-None-Match": "*", "Range": "bytes=0-1"}, id="rfc9110-13.2.2-304-before-range"),
])
def test_plan_304_carries_validators_and_cache_control_only(data_file, headers):
    _, st = data_file
    headers = {k: http_date(int(st.st_mtime)) if v == "LM" else v for k, v in headers.items()}
    plan = local.plan_file_response("GET", Headers(headers), "notes.txt", st)
    assert plan.status == 304 and plan.ranges == []
    assert [k for k, _ in plan.headers] == ["ETag", "Last-Modified", "Accept-Ranges", "Cache-Control"]
    # §15.4.5: whatever of Cache-Control, Content-Location, Date, ETag, Expires and Vary a 200
    # would carry, the 304 carries too, with the same value.
    whole = dict(local.plan_file_response("GET", Headers(), "notes.txt", st).headers)
    required = {k: v for k, v in whole.items()
                if k in ("Cache-Control", "Content-Location", "Date", "ETag", "Expires", "Vary")}
    assert required.items() <= dict(plan.headers).items()


@pytest.mark.parametrize("headers, error", [
    pytest.param({"If-Match": '"other"'}, PreconditionFailed, id="rfc9110-15.5.13-412-if-match"),
    pytest.param({"If-Unmodified-Since": http_date(0)}, PreconditionFailed,
                 id="rfc9110-15.5.13-412-if-unmodified-since"),
    pytest.param({"If-Match": '"other"', "Range": "bytes=5000-"}, PreconditionFailed,
                 id="rfc9110-13.2.2-412-before-416"),
    pytest.param({"Range": "bytes=5000-"}, RangeNotSatisfiable, id="rfc9110-15.5.17-416"),
])
def test_plan_errors_are_raised_before_any_io(data_file, headers, error):
    _, st = data_file
    with pytest.raises(error):
        local.plan_file_response("GET", Headers(headers), "notes.txt", st)


@pytest.mark.parametrize("spec, part", [
    pytest.param("bytes=0-0", slice(0, 1), id="rfc9110-14.4-206-first-byte"),
    pytest.param("bytes=1000-", slice(1000, None), id="rfc9110-14.4-206-open-ended"),
    pytest.param("bytes=-4", slice(-4, None), id="rfc9110-14.4-206-suffix"),
    pytest.param("bytes=10-99999", slice(10, None), id="rfc9110-14.4-206-clamped"),
    pytest.param("bytes=0-1, 1500-", slice(0, 2), id="rfc9110-14.4-206-one-satisfiable-of-two-is-single-part"),
])
def test_plan_206_single_part(data_file, spec, part):
    path, st = data_file
    plan = local.plan_file_response("GET", Headers({"Range": spec}), "notes.txt", st)
    expected = DATA[part]
    start = len(DATA) - len(expected) if part.start is not None and part.start < 0 else part.start
    assert plan.status == 206 and plan.boundary is None
    assert header(plan, "Content-Range") == f"bytes {start}-{start + len(expected) - 1}/{len(DATA)}"
    assert header(plan, "Content-Length") == str(len(expected))
    assert header(plan, "Content-Type") == "text/plain; charset=utf-8"
    assert body_of(path, plan) == expected


MULTIPART = [
    # (id, Range, the parts' slices of DATA in order)
    ("rfc9110-14.6-two-parts", "bytes=0-9, 100-109", [slice(0, 10), slice(100, 110)]),
    ("rfc9110-14.6-three-parts-with-suffix", "bytes=0-0, 500-999, -4",
     [slice(0, 1), slice(500, 1000), slice(-4, None)]),
    ("rfc9110-14.6-adjacent-parts-kept-apart", "bytes=0-9, 10-19", [slice(0, 10), slice(10, 20)]),
    ("rfc9110-14.6-clamped-last-part", "bytes=1-1, 1000-5000", [slice(1, 2), slice(1000, None)]),
    ("rfc9110-14.6-max-ranges-parts", "bytes=" + ",".join(f"{i}-{i}" for i in range(local.MAX_RANGES)),
     [slice(i, i + 1) for i in range(local.MAX_RANGES)]),
]


def parse_multipart(body: bytes, boundary: str) -> list[tuple[dict, bytes]]:
    """The parts of a multipart/byteranges body (RFC 9110 §14.6, RFC 2046 §5.1.1), strictly framed."""
    delimiter = f"--{boundary}".encode()
    assert body.startswith(delimiter + b"\r\n") and body.endswith(b"\r\n" + delimiter + b"--\r\n")
    parts = []
    for raw in body[len(delimiter) + 2:-len(delimiter) - 6].split(b"\r\n" + delimiter + b"\r\n"):
        head, sep, content = raw.partition(b"\r\n\r\n")
        assert sep
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((fields, content))
    return parts


@pytest.mark.parametrize("spec, slices", [case[1:] for case in MULTIPART], ids=[case[0] for case in MULTIPART])
def test_plan_206_multipart_length_is_the_bytes_sent(data_file, spec, slices):
    path, st = data_file
    plan = local.plan_file_response("GET", Headers({"Range": spec}), "notes.txt", st)
    assert plan.status == 206 and plan.boundary and re.fullmatch(r"[0-9a-f]{32}", plan.boundary)
    assert header(plan, "Content-Type") == f"multipart/byteranges; boundary={plan.boundary}"
    assert header(plan, "Content-Range") is None  # only in each part (§14.6)
    body = body_of(path, plan)
    assert header(plan, "Content-Length") == str(len(body))
    parts = parse_multipart(body, plan.boundary)
    assert [content for _, content in parts] == [DATA[s] for s in slices]
    for (fields, content), (start, stop) in zip(parts, plan.ranges):
        assert fields == {"Content-Type": "text/plain; charset=utf-8",
                          "Content-Range": f"bytes {start}-{stop - 1}/{len(DATA)}"}


def test_plan_multipart_boundary_differs_per_answer(data_file):
    _, st = data_file
    headers = Headers({"Range": "bytes=0-1, 4-5"})
    first, second = (local.plan_file_response("GET", headers, "notes.txt", st) for _ in range(2))
    assert first.boundary != second.boundary


# -- content_type / content_disposition: the fallbacks -------------------------------------------

@pytest.mark.parametrize("name, expected", [
    pytest.param("a.tar.bz2", "application/x-bzip2", id="compressed-tar-is-the-compression-bzip2"),
    pytest.param("a.Z", "application/x-compress", id="compressed-is-the-compression-compress"),
    pytest.param("a.br", "application/x-brotli", id="compressed-is-the-compression-brotli"),
    pytest.param("a.gz", "application/gzip", id="compressed-is-the-compression-gzip"),
    pytest.param("NOTES.TXT", "text/plain; charset=utf-8", id="extension-case-insensitive"),
    pytest.param("page.html", "text/html; charset=utf-8", id="text-gets-utf8-charset"),
    pytest.param("a.zip", "application/zip", id="binary-no-charset"),
    pytest.param("Makefile", "application/octet-stream", id="no-extension-octet-stream"),
    pytest.param("a.", "application/octet-stream", id="empty-extension-octet-stream"),
    pytest.param(".bashrc", "application/octet-stream", id="dotfile-octet-stream"),
])
def test_content_type_fallbacks(name, expected):
    assert local.content_type(name) == expected


@pytest.mark.parametrize("name, fallback, encoded", [
    pytest.param("naïve.txt", "naive.txt", "na%C3%AFve.txt", id="rfc6266-latin-accents-decomposed"),
    pytest.param("a\\b.txt", "a_b.txt", "a%5Cb.txt", id="rfc6266-backslash-replaced"),
    pytest.param('a"b', "a_b", "a%22b", id="rfc6266-quote-replaced"),
    pytest.param("tab\there.txt", "tab_here.txt", "tab%09here.txt", id="rfc6266-control-char-replaced"),
    pytest.param("€.txt", "download.txt", "%E2%82%AC.txt", id="rfc6266-nothing-ascii-left-download-ext"),
    pytest.param("日本", "download", "%E6%97%A5%E6%9C%AC", id="rfc6266-nothing-ascii-no-ext-download"),
    pytest.param("  .txt", "download.txt", "%20%20.txt", id="rfc6266-blank-stem-download-ext"),
    pytest.param("a b;c.txt", "a b;c.txt", "a%20b%3Bc.txt", id="rfc8187-space-and-semicolon-encoded"),
    pytest.param("日本.tar.gz", "download.tar.gz", "%E6%97%A5%E6%9C%AC.tar.gz",
                 id="rfc6266-double-extension-download-ext"),
])
def test_content_disposition_fallback_and_exact_name(name, fallback, encoded):
    assert local.content_disposition(name) == f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
