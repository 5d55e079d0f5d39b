"""The WSGI application: authentication, dispatch to the endpoints, the access log, errors as JSON."""

from __future__ import annotations

import base64
import hmac
import logging
import time
from pathlib import Path
from typing import Iterable

from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Request

from .config import Config, load_config, local_node
from .crc import CrcCache, cache_path_for, keep_in_file
from .endpoints import HANDLERS, PUBLIC, TAKES_BODY, URL_MAP, Services
from .errors import ApiError, BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, Unauthorized
from .fanout import FanoutRegistry
from .logtext import log_safe
from .peers import PeerClient
from .replies import Reply, error_reply, status_line
from .stages import StageArea
from .uploads import UploadLimits, check_enabled, check_size, closing, declared_length

access_log = logging.getLogger("wsgi_stream.access")
log = logging.getLogger("wsgi_stream")


def _raw_path_is_suspect(environ: dict) -> bool:
    # PATH_INFO arrives decoded; an encoded "/" or NUL would be indistinguishable from a real one.
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI") or ""
    raw = raw.split("?", 1)[0].lower()
    return "%2f" in raw or "%00" in raw or "\x00" in environ.get("PATH_INFO", "")


def _has_body(environ: dict) -> bool:
    return environ.get("CONTENT_LENGTH", "").strip() not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ


def token_matches(token: str | None, authorization: str) -> bool:
    """Whether an Authorization header carries `token` (Bearer, or Basic password); any, without a token."""
    if token is None:
        return True
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode("utf-8"), token.encode("utf-8"))


class App:
    """One node's WSGI application."""

    def __init__(self, config: Config, node: str):
        self.config = config
        self.local = local_node(config, node)
        self.peers = PeerClient(config, self.local.name)
        self.crcs = CrcCache()
        if config.keep_crcs:
            keep_in_file(self.crcs, cache_path_for(self.local.root))
        self.services = Services(config, self.local, self.peers, UploadLimits.of(config), self.crcs,
                                 StageArea(self.local, config.stage_expiry), FanoutRegistry())

    @property
    def name(self) -> str:
        return self.local.name

    @property
    def root(self) -> Path:
        return self.local.root

    def authorized(self, environ: dict) -> bool:
        """Whether the request carries the cluster token (Bearer, or Basic password)."""
        return token_matches(self.config.token, environ.get("HTTP_AUTHORIZATION", ""))

    def _route(self, environ: dict) -> tuple[str, dict]:
        """The request's endpoint and values, its token checked: ApiError or RequestRedirect otherwise.

        The token is checked before anything about the route is told: without it, an unknown path,
        a wrong method and a protected route all get the same 401 (only public routes answer).
        """
        try:
            endpoint, values = URL_MAP.bind_to_environ(environ).match()
        except HTTPException as exc:  # 404, 405 or a redirect: told only to a client with the token
            endpoint, values, miss = None, {}, exc
        else:
            miss = None
        if endpoint not in PUBLIC and not self.authorized(environ):
            raise Unauthorized("This cluster needs its token.",
                               headers=[("WWW-Authenticate", 'Basic realm="wsgi_stream"')])
        if isinstance(miss, RequestRedirect):
            raise miss
        if isinstance(miss, RouteMethodNotAllowed):
            allow = ", ".join(sorted(miss.valid_methods or []))
            raise MethodNotAllowed(f"{environ.get('REQUEST_METHOD')} is not allowed here.",
                                   headers=[("Allow", allow)])
        if miss is not None:
            raise NotFound("No such endpoint.")
        return endpoint, values

    def check_head(self, environ: dict) -> Reply | None:
        """The answer a request with a body gets from its head alone (None: read the body).

        Token, route, method, uploads on, declared size: a server may call this before it reads
        a single body byte (wsgi_stream's waitress channel does); dispatch() decides the same.
        """
        try:
            coding = environ.get("HTTP_TRANSFER_ENCODING")
            if coding is not None and (environ.get("CONTENT_LENGTH", "").strip() or coding.strip().lower() != "chunked"):
                # Two readings of where the body ends (request smuggling): refuse both (RFC 9112 §6.3).
                raise BadRequest("Send Content-Length or Transfer-Encoding: chunked, not both.")
            endpoint, _ = self._route(environ)
            method = environ.get("REQUEST_METHOD")
            if endpoint in TAKES_BODY:  # a small JSON body (POST /batch, a stage's commit)
                length = declared_length(environ)
                if length is None or length > TAKES_BODY[endpoint]:
                    raise PayloadTooLarge(f"This request's body must have a Content-Length of at most "
                                          f"{TAKES_BODY[endpoint]} bytes.")
                return None
            if method != "PUT":
                raise PayloadTooLarge(f"A {method} request takes no body.")
            check_enabled(self.services.limits, environ)
            check_size(declared_length(environ), self.services.limits.max_size)
        except RequestRedirect as exc:
            return Reply(308, [("Location", exc.new_url), ("Content-Length", "0")])
        except ApiError as error:
            return error_reply(closing(error, None, environ))
        return None

    def dispatch(self, environ: dict) -> Reply:
        """Route the request and run its handler; every ApiError becomes its JSON answer."""
        request = Request(environ)
        try:
            if _has_body(environ) and (refusal := self.check_head(environ)) is not None:
                return refusal
            try:
                endpoint, values = self._route(environ)
            except RequestRedirect as exc:
                return Reply(308, [("Location", exc.new_url), ("Content-Length", "0")])
            if "path" in values and _raw_path_is_suspect(environ):
                raise NotFound("No such file.")
            return HANDLERS[endpoint](self.services, request, **values)
        except ApiError as error:
            return error_reply(error)
        except Exception:
            log.exception("unexpected error answering %s %s", log_safe(environ.get("REQUEST_METHOD", "-")),
                          log_safe(environ.get("PATH_INFO", "")))
            return error_reply(ApiError("The server hit an unexpected error; see its log.",
                                        code="internal_error"))

    def __call__(self, environ: dict, start_response):
        started = time.monotonic()
        reply = self.dispatch(environ)
        start_response(status_line(reply.status), reply.headers)
        logger = _AccessLogEntry(environ, reply.status, started)
        if environ.get("REQUEST_METHOD") == "HEAD" and reply.file is None:
            _close(reply.body)
            logger.finish(0)
            return []
        if reply.file is not None:
            reply.file.on_close = lambda position: logger.finish(position)
            return reply.body
        return _LoggedBody(reply.body, logger)


def _close(body) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


class _AccessLogEntry:
    """One line per finished request: remote, method, path, status, bytes, seconds; never two lines."""

    def __init__(self, environ: dict, status: int, started: float):
        self.environ, self.status, self.started = environ, status, started

    def finish(self, sent: int, note: str = "") -> None:
        env = self.environ
        # PEP 3333 hands PATH_INFO over as latin-1 decoded bytes; show the UTF-8 name a user typed.
        path = env.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "surrogateescape")
        if env.get("QUERY_STRING"):
            path += "?" + env["QUERY_STRING"]
        access_log.info('%s "%s %s" %d %d %.3fs%s', log_safe(env.get("REMOTE_ADDR", "-")),
                        log_safe(env.get("REQUEST_METHOD", "-")), log_safe(path), self.status, sent,
                        time.monotonic() - self.started, log_safe(note))


class _LoggedBody:
    """Wraps a body iterable to count what was sent and log it when the server closes it."""

    def __init__(self, body: Iterable[bytes], entry: _AccessLogEntry):
        self.body, self.entry, self.sent, self.failed = body, entry, 0, ""

    def __iter__(self):
        try:
            for chunk in self.body:
                self.sent += len(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:
            self.failed = f" cut short: {exc}"
            raise

    def close(self) -> None:
        try:
            _close(self.body)
        finally:
            # A forwarded body may have had the server relay part of it (forward.RELAY).
            self.entry.finish(self.sent + getattr(self.body, "relayed", 0), self.failed)


def make_app(config: Config | str | Path, node: str) -> App:
    """The WSGI application of node `node` in `config` (a Config, or the path of a TOML file)."""
    if not isinstance(config, Config):
        config = load_config(config)
    return App(config, node)
