"""Replies: a response before it is started, and the one way an ApiError becomes JSON.

The bottom of the house with errors.py: every module may import it, it imports nothing of ours
but errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from werkzeug.http import HTTP_STATUS_CODES

from .errors import ApiError, ServiceUnavailable, error_body, error_headers


@dataclass
class Reply:
    """A response before it is started: status, headers and a body iterable."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Iterable[bytes] = ()
    # Set when `body` is the server's wsgi.file_wrapper around this file (a local.TrackedFile):
    # the access log hooks its close().
    file: Any = None


def status_line(status: int) -> str:
    """`200 OK` for 200: the status line WSGI's start_response wants."""
    return f"{status} {HTTP_STATUS_CODES.get(status, 'Unknown')}"


def json_reply(document, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Reply:
    """A JSON document as a Reply."""
    body = json.dumps(document, ensure_ascii=False).encode("utf-8") + b"\n"
    return Reply(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                          ("Cache-Control", "no-store"), *(headers or [])], [body])


def error_reply(error: ApiError) -> Reply:
    """The JSON answer for `error`."""
    body = error_body(error)
    return Reply(error.status, error_headers(error, body), [body])


def shutting_down() -> Reply:
    """The 503 a node answers once it has started to stop."""
    return error_reply(ServiceUnavailable("This node is shutting down; try another node or retry.",
                                          headers=[("Retry-After", "5")]))


def wsgi_error(error: ApiError, start_response) -> list[bytes]:
    """Answer a WSGI request with `error` as JSON (for embedding code that catches an ApiError)."""
    reply = error_reply(error)
    start_response(status_line(reply.status), reply.headers)
    return list(reply.body)
