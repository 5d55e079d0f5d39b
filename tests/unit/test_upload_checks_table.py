"""The checks an upload passes before its body is read, as tables: length, size, digests, replacing.

Pure functions of a WSGI environ, a header or a stat_result: no app, no socket, no file written.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat as stat_mod

import pytest
from werkzeug.datastructures import Headers
from werkzeug.http import http_date

from wsgi_stream.errors import BadRequest, Conflict, LengthRequired, PayloadTooLarge, PreconditionFailed
from wsgi_stream.local import file_etag
from wsgi_stream.uploads import WANT_DIGEST, check_replace, check_size, declared_length, wanted_digests

MTIME = 1_700_000_000


def fake_stat(mode: int = stat_mod.S_IFREG | 0o644, size: int = 5) -> os.stat_result:
    """A stat_result as os.stat would give (st_mtime and st_mtime_ns filled in)."""
    ns = MTIME * 10**9
    return os.stat_result((mode, 77, 1, 1, 0, 0, size, MTIME, MTIME, MTIME, MTIME, MTIME, MTIME, ns, ns, ns))


# -- declared_length: Content-Length or a chunked body the server decodes (RFC 9112 §6) ----------

LENGTHS = [
    # (id, environ, expected length)
    ("rfc9112-6.2-content-length", {"CONTENT_LENGTH": "10"}, 10),
    ("rfc9112-6.2-content-length-zero", {"CONTENT_LENGTH": "0"}, 0),
    ("rfc9112-6.2-content-length-surrounding-space", {"CONTENT_LENGTH": " 42 "}, 42),
    ("rfc9112-6.2-content-length-leading-zeros", {"CONTENT_LENGTH": "007"}, 7),
    ("rfc9112-6.2-content-length-past-4-gib", {"CONTENT_LENGTH": str(5 << 30)}, 5 << 30),
    ("rfc9112-6.1-chunked-decoded-by-server", {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True},
     None),
    ("rfc9112-6.1-chunked-case-insensitive", {"HTTP_TRANSFER_ENCODING": "Chunked", "wsgi.input_terminated": True},
     None),
    ("rfc9112-6.1-chunked-last-of-several-codings",
     {"HTTP_TRANSFER_ENCODING": "gzip, chunked", "wsgi.input_terminated": True}, None),
    ("rfc9112-6.1-chunked-under-uwsgi", {"HTTP_TRANSFER_ENCODING": "chunked", "uwsgi.version": b"2.0"}, None),
    ("rfc9112-6.3-chunked-overrides-content-length",
     {"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": "10", "wsgi.input_terminated": True}, None),
]


@pytest.mark.parametrize("environ, expected", [c[1:] for c in LENGTHS], ids=[c[0] for c in LENGTHS])
def test_declared_length(environ, expected):
    assert declared_length(environ) == expected


LENGTH_ERRORS = [
    # (id, environ, error, words of the message)
    ("rfc9112-6.3-content-length-not-a-number-400", {"CONTENT_LENGTH": "abc"}, BadRequest, "not a number"),
    ("rfc9112-6.3-content-length-negative-400", {"CONTENT_LENGTH": "-1"}, BadRequest, "not a number"),
    ("rfc9112-6.3-content-length-plus-sign-400", {"CONTENT_LENGTH": "+5"}, BadRequest, "not a number"),
    ("rfc9112-6.3-content-length-exponent-400", {"CONTENT_LENGTH": "1e3"}, BadRequest, "not a number"),
    ("rfc9112-6.3-content-length-list-400", {"CONTENT_LENGTH": "5, 5"}, BadRequest, "not a number"),
    ("rfc9110-8.6-content-length-non-ascii-digits-400", {"CONTENT_LENGTH": "\u0661\u0662"}, BadRequest,
     "not a number"),
    ("rfc9110-15.5.12-no-length-no-chunked-411", {}, LengthRequired, "needs Content-Length"),
    ("rfc9110-15.5.12-empty-content-length-411", {"CONTENT_LENGTH": ""}, LengthRequired, "needs Content-Length"),
    ("rfc9110-15.5.12-chunked-the-server-cannot-decode-411", {"HTTP_TRANSFER_ENCODING": "chunked"}, LengthRequired,
     "cannot read a chunked body"),
]


@pytest.mark.parametrize("environ, error, words", [c[1:] for c in LENGTH_ERRORS], ids=[c[0] for c in LENGTH_ERRORS])
def test_declared_length_refused(environ, error, words):
    with pytest.raises(error) as err:
        declared_length(environ)
    assert words in err.value.message


# -- check_size ----------------------------------------------------------------------------------

@pytest.mark.parametrize("length, limit", [
    pytest.param(10, 10, id="at-the-limit"),
    pytest.param(0, 10, id="empty-body"),
    pytest.param(None, 10, id="chunked-checked-while-reading"),
    pytest.param(10**15, 0, id="limit-0-means-none"),
])
def test_check_size_accepts(length, limit):
    check_size(length, limit)


def test_check_size_over_the_limit_is_413_naming_both():
    with pytest.raises(PayloadTooLarge) as err:
        check_size(11, 10)
    assert err.value.status == 413 and "11 bytes" in err.value.message and "10 bytes" in err.value.message


# -- wanted_digests: Content-Digest (RFC 9530) ---------------------------------------------------

BODY = b"hello"
SHA256 = hashlib.sha256(BODY).digest()
SHA512 = hashlib.sha512(BODY).digest()


def sf(raw: bytes) -> str:
    """A digest as an RFC 8941 byte sequence, :base64:."""
    return ":" + base64.b64encode(raw).decode() + ":"


DIGESTS = [
    # (id, header, expected {algorithm: raw digest})
    ("rfc9530-absent-nothing-to-check", None, {}),
    ("rfc9530-2-sha-256", f"sha-256={sf(SHA256)}", {"sha-256": SHA256}),
    ("rfc9530-2-sha-512", f"sha-512={sf(SHA512)}", {"sha-512": SHA512}),
    ("rfc9530-2-both-checked", f"sha-256={sf(SHA256)}, sha-512={sf(SHA512)}", {"sha-256": SHA256, "sha-512": SHA512}),
    ("rfc9530-5-algorithm-key-case-insensitive", f"SHA-256={sf(SHA256)}", {"sha-256": SHA256}),
    ("rfc9530-2-unknown-algorithm-ignored-beside-known", f"md5={sf(b'x' * 16)}, sha-256={sf(SHA256)}",
     {"sha-256": SHA256}),
    ("rfc8941-3.2-parameters-ignored", f"sha-256={sf(SHA256)};note=1", {"sha-256": SHA256}),
    ("rfc9530-2-no-space-after-comma", f"sha-256={sf(SHA256)},sha-512={sf(SHA512)}",
     {"sha-256": SHA256, "sha-512": SHA512}),
]


@pytest.mark.parametrize("header, expected", [c[1:] for c in DIGESTS], ids=[c[0] for c in DIGESTS])
def test_wanted_digests(header, expected):
    assert wanted_digests(header) == expected


DIGEST_ERRORS = [
    # (id, header, error code, words of the message)
    ("rfc9530-2-not-a-byte-sequence-400", "sha-256=abc", "bad_digest", "is not :base64:"),
    ("rfc9530-2-hex-not-base64-400", f"sha-256={SHA256.hex()}", "bad_digest", "is not :base64:"),
    ("rfc8941-3.3.5-invalid-base64-400", "sha-256=:not base64!:", "bad_digest", "is not :base64:"),
    ("rfc8941-3.3.5-colon-only-400", "sha-256=:", "bad_digest", "is not :base64:"),
    ("rfc9530-2-no-value-400", "sha-256", "bad_digest", "is not :base64:"),
    ("rfc9530-2-wrong-length-for-sha-256-400", f"sha-256={sf(SHA512)}", "bad_digest", "wrong length"),
    ("rfc9530-2-wrong-length-for-sha-512-400", f"sha-512={sf(SHA256)}", "bad_digest", "wrong length"),
    ("rfc9530-2-one-bad-of-two-400", f"sha-256={sf(SHA256)}, sha-512=:bad:", "bad_digest", "sha-512"),
    ("rfc9530-5-deprecated-md5-only-400", f"md5={sf(b'x' * 16)}", "unsupported_digest", "(md5)"),
    ("rfc9530-5-deprecated-sha-only-400", f"sha={sf(b'x' * 20)}", "unsupported_digest", "(sha)"),
    ("rfc9530-5-several-unknown-named-400", f"md5={sf(b'x' * 16)}, crc32c=:AAAAAA==:", "unsupported_digest",
     "(md5, crc32c)"),
    ("rfc9530-empty-header-400", "", "unsupported_digest", "(none)"),
]


@pytest.mark.parametrize("header, code, words", [c[1:] for c in DIGEST_ERRORS], ids=[c[0] for c in DIGEST_ERRORS])
def test_wanted_digests_refused(header, code, words):
    with pytest.raises(BadRequest) as err:
        wanted_digests(header)
    assert (err.value.status, err.value.code) == (400, code) and words in err.value.message
    if code == "unsupported_digest":  # RFC 9530 §4: tell the client what it may send instead
        assert err.value.headers == [("Want-Content-Digest", WANT_DIGEST)]
        assert "use sha-256 or sha-512" in err.value.message


# -- check_replace: may this PUT put a file where `st` is now? (RFC 9110 §13.1, §9.3.4) -----------

FILE = fake_stat()
DIR = fake_stat(stat_mod.S_IFDIR | 0o755)
FIFO = fake_stat(stat_mod.S_IFIFO | 0o644)
ETAG = file_etag(FILE)

REPLACE = [
    # (id, headers, what is there now (None: nothing), expected error class and code, or None)
    ("rfc9110-9.3.4-create", {}, None, None),
    ("rfc9110-9.3.4-replace", {}, FILE, None),
    ("rfc9110-13.1.1-if-match-star-nothing-there-412", {"If-Match": "*"}, None, (PreconditionFailed, None)),
    ("rfc9110-13.1.1-if-match-etag-nothing-there-412", {"If-Match": ETAG}, None, (PreconditionFailed, None)),
    ("rfc9110-13.1.2-if-none-match-star-creates", {"If-None-Match": "*"}, None, None),
    ("rfc9110-13.1.2-if-none-match-star-file-there-412", {"If-None-Match": "*"}, FILE, (PreconditionFailed, None)),
    ("rfc9110-13.1.1-if-match-etag-replaces", {"If-Match": ETAG}, FILE, None),
    ("rfc9110-13.1.1-if-match-star-replaces", {"If-Match": "*"}, FILE, None),
    ("rfc9110-13.1.1-if-match-other-412", {"If-Match": '"other"'}, FILE, (PreconditionFailed, None)),
    ("rfc9110-13.1.1-if-match-weak-412", {"If-Match": "W/" + ETAG}, FILE, (PreconditionFailed, None)),
    ("rfc9110-13.1.2-if-none-match-etag-412", {"If-None-Match": ETAG}, FILE, (PreconditionFailed, None)),
    ("rfc9110-13.1.2-if-none-match-weak-412", {"If-None-Match": "W/" + ETAG}, FILE, (PreconditionFailed, None)),
    ("rfc9110-13.1.2-if-none-match-other-replaces", {"If-None-Match": '"other"'}, FILE, None),
    ("rfc9110-13.1.4-if-unmodified-since-earlier-412", {"If-Unmodified-Since": http_date(MTIME - 1)}, FILE,
     (PreconditionFailed, None)),
    ("rfc9110-13.1.4-if-unmodified-since-same-second-replaces", {"If-Unmodified-Since": http_date(MTIME)}, FILE,
     None),
    ("rfc9110-13.1.4-if-unmodified-since-nothing-there-creates", {"If-Unmodified-Since": http_date(MTIME - 1)},
     None, None),
    ("rfc9110-13.1.3-if-modified-since-ignored-on-put", {"If-Modified-Since": http_date(MTIME)}, FILE, None),
    ("directory-409-is-directory", {}, DIR, (Conflict, "is_directory")),
    ("directory-409-before-preconditions", {"If-Match": '"other"'}, DIR, (Conflict, "is_directory")),
    ("special-file-409-not-a-file", {}, FIFO, (Conflict, "not_a_file")),
]


@pytest.mark.parametrize("headers, st, error", [c[1:] for c in REPLACE], ids=[c[0] for c in REPLACE])
def test_check_replace(headers, st, error):
    if error is None:
        check_replace(Headers(headers), st)
        return
    kind, code = error
    with pytest.raises(kind) as err:
        check_replace(Headers(headers), st)
    assert code is None or err.value.code == code
