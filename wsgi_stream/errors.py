"""The few errors a request can end in, and the one place they become JSON responses."""

from __future__ import annotations

import json


class ApiError(Exception):
    """An error answered as `{"error": code, "message": ...}` with an HTTP status."""

    status = 500
    code = "error"

    def __init__(self, message: str, *, headers: list[tuple[str, str]] | None = None,
                 status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or []
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class IncompleteBody(BadRequest):
    code = "incomplete_body"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "not_writable"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class Conflict(ApiError):
    status, code = 409, "conflict"


class LengthRequired(ApiError):
    status, code = 411, "length_required"


class PreconditionFailed(ApiError):
    status, code = 412, "precondition_failed"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class RangeNotSatisfiable(ApiError):
    status, code = 416, "range_not_satisfiable"


class BadGateway(ApiError):
    status, code = 502, "bad_gateway"


class GatewayTimeout(ApiError):
    status, code = 504, "gateway_timeout"


class ServiceUnavailable(ApiError):
    status, code = 503, "shutting_down"


class InsufficientStorage(ApiError):
    status, code = 507, "insufficient_storage"


class StreamBroken(Exception):
    """Raised inside a body iterator after the headers went out: the server must cut the connection."""


def error_body(error: ApiError) -> bytes:
    """The JSON body of an error response."""
    return json.dumps({"error": error.code, "message": error.message}).encode() + b"\n"


def error_headers(error: ApiError, body: bytes) -> list[tuple[str, str]]:
    """The headers of an error response with `body`."""
    return [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"), *error.headers]
