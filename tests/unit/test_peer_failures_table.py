"""How a failing peer reaches this node's client, as tables: urllib3 errors and peer statuses -> 502/504.

No socket: urllib3's exception classes are built directly, and PeerResponse is fed urllib3
HTTPResponse objects over an in-memory body.
"""

from __future__ import annotations

import io
import json
import socket
import string

import pytest
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, IncompleteRead, MaxRetryError, NameResolutionError,
                                NewConnectionError, ProtocolError, ReadTimeoutError)
from urllib3.response import HTTPResponse

from wsgi_stream.errors import ApiError
from wsgi_stream.peers import FAILURES, JsonItems, PeerResponse, failure_of, peer_error, status_failure

NODE = "b"


# -- the table itself ----------------------------------------------------------------------------

def test_failures_table_is_502_or_504_only_and_504_means_too_slow():
    assert {code: status for code, (status, _) in FAILURES.items() if status != 502} == {"peer_timeout": 504}


@pytest.mark.parametrize("code", sorted(FAILURES))
def test_every_failure_names_the_node_in_one_line(code):
    status, template = FAILURES[code]
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    assert "node" in fields and fields <= {"node", "status"}
    error = peer_error(code, NODE, status=503)
    assert (error.status, error.code) == (status, code)
    assert error.message == template.format(node=NODE, status=503)
    assert f"Node {NODE} " in error.message and "\n" not in error.message


def test_peer_error_takes_a_message_of_its_own():
    error = peer_error("peer_error", NODE, "Node b went away mid-listing.")
    assert (error.status, error.code, error.message) == (502, "peer_error", "Node b went away mid-listing.")


# -- failure_of: urllib3 / socket exceptions -> the ApiError of FAILURES -------------------------

def max_retry(reason):
    return MaxRetryError(None, "/files/x", reason)


EXCEPTIONS = [
    # (id, exception, code when sending/opening, code while reading a body)
    ("connection-refused-502", NewConnectionError(None, "Connection refused"), "peer_unreachable", "peer_broken"),
    ("name-not-resolved-502", NameResolutionError("nohost", None, socket.gaierror("no such host")),
     "peer_unreachable", "peer_broken"),
    ("connect-timeout-504", ConnectTimeoutError("connect timed out"), "peer_timeout", "peer_timeout"),
    ("read-timeout-504", ReadTimeoutError(None, "/files/x", "read timed out"), "peer_timeout", "peer_timeout"),
    ("connection-reset-502", ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
     "peer_unreachable", "peer_broken"),
    ("remote-closed-without-answer-502", ProtocolError("Remote end closed connection without response"),
     "peer_unreachable", "peer_broken"),
    ("body-cut-short-502", IncompleteRead(10, 90), "peer_unreachable", "peer_broken"),
    # TLS failures say why in their message: tests/unit/test_tls_tables.py.
    ("bare-oserror-502", ConnectionResetError(104, "Connection reset by peer"), "peer_unreachable", "peer_broken"),
    ("broken-pipe-502", BrokenPipeError(32, "Broken pipe"), "peer_unreachable", "peer_broken"),
    ("any-other-urllib3-error-502", HTTPError("something else"), "peer_unreachable", "peer_broken"),
    # MaxRetryError is unwrapped to its reason: a refused connection must not look like a timeout.
    ("max-retry-connect-timeout-504", max_retry(ConnectTimeoutError("t")), "peer_timeout", "peer_timeout"),
    ("max-retry-read-timeout-504", max_retry(ReadTimeoutError(None, "/", "t")), "peer_timeout", "peer_timeout"),
    ("max-retry-refused-502", max_retry(NewConnectionError(None, "refused")), "peer_unreachable", "peer_broken"),
    ("max-retry-no-reason-502", max_retry(None), "peer_unreachable", "peer_broken"),
]


@pytest.mark.parametrize("exc, opening, reading", [c[1:] for c in EXCEPTIONS], ids=[c[0] for c in EXCEPTIONS])
def test_failure_of(exc, opening, reading):
    for is_reading, code in ((False, opening), (True, reading)):
        error = failure_of(exc, NODE, reading=is_reading)
        assert isinstance(error, ApiError)
        assert (error.status, error.code) == (FAILURES[code][0], code)
        assert error.message == FAILURES[code][1].format(node=NODE)


# -- status_failure: which peer statuses are not the client's business ---------------------------

STATUSES = [
    # (id, the peer's status, expected code or None: pass the peer's answer on)
    ("peer-401-token-mismatch-502", 401, "peer_unauthorized"),
    ("peer-500-502", 500, "peer_error"),
    ("peer-502-502", 502, "peer_error"),
    ("peer-503-shutting-down-502", 503, "peer_error"),
    ("peer-504-502", 504, "peer_error"),
    ("peer-599-502", 599, "peer_error"),
    ("peer-507-disk-full-passed-on", 507, None),
    ("peer-200-passed-on", 200, None),
    ("peer-206-passed-on", 206, None),
    ("peer-304-passed-on", 304, None),
    ("peer-400-passed-on", 400, None),
    ("peer-403-passed-on", 403, None),
    ("peer-404-passed-on", 404, None),
    ("peer-409-passed-on", 409, None),
    ("peer-412-passed-on", 412, None),
    ("peer-413-passed-on", 413, None),
    ("peer-416-passed-on", 416, None),
]


@pytest.mark.parametrize("status, code", [c[1:] for c in STATUSES], ids=[c[0] for c in STATUSES])
def test_status_failure(status, code):
    error = status_failure(status, NODE)
    if code is None:
        assert error is None
        return
    assert (error.status, error.code) == (502, code)
    assert error.message == FAILURES[code][1].format(node=NODE, status=status)


# -- PeerResponse.json: a peer's answer as a document or an ApiError -----------------------------

def response(status: int, body: bytes, content_type: str = "application/json") -> PeerResponse:
    raw = HTTPResponse(body=io.BytesIO(body), status=status, preload_content=False,
                       headers={"Content-Type": content_type, "Content-Length": str(len(body))})
    return PeerResponse(NODE, raw)


def doc(value) -> bytes:
    return json.dumps(value).encode()


NOT_JSON = "Node b sent something that is not JSON."
JSON_ANSWERS = [
    # (id, status, body, expected document, or (status, code, message) of the ApiError)
    ("200-json-document", 200, doc({"entries": []}), {"entries": []}),
    ("404-passes-the-peers-code-and-message", 404, doc({"error": "not_found", "message": "No such directory."}),
     (404, "not_found", "No such directory.")),
    ("409-passes-the-peers-code-and-message", 409, doc({"error": "is_directory", "message": "A folder."}),
     (409, "is_directory", "A folder.")),
    ("4xx-without-fields-names-the-node", 403, doc({}), (403, "peer_error", "Node b answered 403.")),
    ("4xx-json-not-an-object", 400, doc([1, 2]), (400, "peer_error", "Node b answered 400.")),
    ("401-becomes-502-unauthorized", 401, doc({"error": "unauthorized", "message": "x"}),
     (502, "peer_unauthorized", FAILURES["peer_unauthorized"][1].format(node=NODE))),
    ("500-becomes-502", 500, doc({"error": "error", "message": "Traceback..."}),
     (502, "peer_error", "Node b failed with status 500.")),
    ("not-json-502", 200, b"<html>proxy error</html>", (502, "peer_bad_answer", NOT_JSON)),
    ("empty-body-502", 200, b"", (502, "peer_bad_answer", NOT_JSON)),
    ("5xx-not-json-is-a-bad-answer-502", 502, b"Bad Gateway", (502, "peer_bad_answer", NOT_JSON)),
]


@pytest.mark.parametrize("status, body, expected", [c[1:] for c in JSON_ANSWERS], ids=[c[0] for c in JSON_ANSWERS])
def test_peer_response_json(status, body, expected):
    answer = response(status, body)
    if isinstance(expected, dict):
        assert answer.json() == expected
    else:
        with pytest.raises(ApiError) as err:
            answer.json()
        assert (err.value.status, err.value.code, err.value.message) == expected
    assert answer.ended and answer.raw.isclosed()


class BreakingRaw:
    """A urllib3 response whose read raises `exc`; records how the connection was ended."""

    def __init__(self, exc: Exception):
        self.exc, self.status, self.headers, self.length_remaining = exc, 200, {}, 100
        self.calls = []

    def read(self, amount=None, decode_content=False):
        raise self.exc

    read1 = read

    def isclosed(self):
        return "close" in self.calls

    def close(self):
        self.calls.append("close")

    def release_conn(self):
        self.calls.append("release_conn")


@pytest.mark.parametrize("exc, code", [
    pytest.param(ReadTimeoutError(None, "/files/x", "read timed out"), "peer_timeout", id="read-timeout-mid-body-504"),
    pytest.param(ProtocolError("Connection broken: IncompleteRead"), "peer_broken", id="cut-mid-body-502"),
    pytest.param(ConnectionResetError(104, "reset"), "peer_broken", id="reset-mid-body-502"),
])
@pytest.mark.parametrize("method", ["read", "read1"])
def test_a_body_that_breaks_is_an_api_error_and_the_socket_is_closed(exc, code, method):
    raw = BreakingRaw(exc)
    with pytest.raises(ApiError) as err, PeerResponse(NODE, raw) as answer:
        getattr(answer, method)(10)
    assert (err.value.status, err.value.code) == (FAILURES[code][0], code)
    assert err.value.__cause__ is exc
    # Never handed back to the pool half read: closed (once or twice, harmless), then released once.
    assert raw.calls[0] == "close" and raw.calls[-1] == "release_conn" and raw.calls.count("release_conn") == 1


@pytest.mark.parametrize("read_all, calls", [
    pytest.param(True, ["release_conn"], id="fully-read-released-to-the-pool"),
    pytest.param(False, ["close", "release_conn"], id="unread-bytes-socket-closed-first"),
])
def test_clean_exit_releases_or_closes_by_what_is_left(read_all, calls):
    raw = BreakingRaw(None)
    raw.length_remaining = 0 if read_all else 100
    raw.isclosed = lambda: read_all
    with PeerResponse(NODE, raw):
        pass
    assert raw.calls == calls


# -- PeerResponse.json_items: a listing digested entry by entry as it arrives ---------------------

LISTINGS = [
    ("entries-then-skipped", {"node": "b", "path": "x", "entries": [{"path": f'a\u00e9"entries": [{i}', "size": i}
                                                                     for i in range(40)], "skipped": [{"path": "f"}]}),
    ("empty", {"entries": [], "skipped": []}),
    ("items-of-every-kind", {"entries": [1, "two", [3, "]"], {"x": "]"}, None]}),
    ("entries-last", {"skipped": [], "entries": [{"a": 1}]}),
]


@pytest.mark.parametrize("ascii_only", [True, False], ids=["escaped", "utf8"])
@pytest.mark.parametrize("document", [c[1] for c in LISTINGS], ids=[c[0] for c in LISTINGS])
def test_json_items_gives_each_entry_then_the_other_fields(document, ascii_only, monkeypatch):
    monkeypatch.setattr(JsonItems, "PIECE", 7)  # every entry and name split across pieces
    listing = response(200, json.dumps(document, ensure_ascii=ascii_only).encode()).json_items("entries")
    assert list(listing.items()) == document["entries"]
    assert listing.rest == {k: v for k, v in document.items() if k != "entries"}


@pytest.mark.parametrize("body, message", [
    (b"", NOT_JSON), (b"<html>proxy error</html>", NOT_JSON), (b'{"entries": [1, 2', NOT_JSON),
    (b'{"entries": [{"a": 1}] trailing', NOT_JSON), (b'{"x": 1}', "Node b sent no 'entries' list."),
    (b'{"entries": "no"}', "Node b sent no 'entries' list."), (b'{"entries": [1, \xff]}', NOT_JSON),
], ids=["empty", "html", "cut", "trailing", "no-entries", "not-a-list", "not-utf8"])
def test_json_items_of_a_bad_listing_is_a_bad_answer(body, message):
    with pytest.raises(ApiError) as err:
        list(response(200, body).json_items("entries").items())
    assert (err.value.status, err.value.code, err.value.message) == (502, "peer_bad_answer", message)


def test_json_items_of_a_refusal_is_the_peers_error():
    with pytest.raises(ApiError) as err:
        response(404, doc({"error": "not_found", "message": "No such directory."})).json_items("entries")
    assert (err.value.status, err.value.code) == (404, "not_found")
