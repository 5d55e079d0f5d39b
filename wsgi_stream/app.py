"""The WSGI application: authentication, routing, the access log, and errors mapped to JSON."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.wrappers import Request

from . import cluster, listing, local, peers, uploads
from .config import Config, check_node, load_config
from .errors import ApiError, MethodNotAllowed, NotFound, Unauthorized, error_body, error_headers

access_log = logging.getLogger("wsgi_stream.access")
log = logging.getLogger("wsgi_stream")


@dataclass
class Reply:
    """A response before it is started: status, headers and a body iterable."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Iterable[bytes] = ()
    # Set when `body` is the server's wsgi.file_wrapper around this file: the log hooks its close().
    file: local.TrackedFile | None = None


def json_reply(document, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Reply:
    """A JSON document as a Reply."""
    body = json.dumps(document, ensure_ascii=False).encode("utf-8") + b"\n"
    return Reply(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                          ("Cache-Control", "no-store"), *(headers or [])], [body])


def error_reply(error: ApiError) -> Reply:
    """The JSON answer for `error`."""
    body = error_body(error)
    return Reply(error.status, error_headers(error, body), [body])


URL_MAP = Map([
    Rule("/", endpoint="page", methods=["GET"]),
    Rule("/static/<name>", endpoint="static", methods=["GET"]),
    Rule("/healthz", endpoint="healthz", methods=["GET"]),
    Rule("/api/nodes", endpoint="api_nodes", methods=["GET"]),
    Rule("/files/<path:path>", endpoint="file", methods=["GET", "HEAD", "PUT"]),
    Rule("/list/", endpoint="list", methods=["GET"], defaults={"path": ""}),
    Rule("/list/<path:path>", endpoint="list", methods=["GET"]),
    Rule("/nodes/<node>/files/<path:path>", endpoint="peer_file", methods=["GET", "HEAD", "PUT"]),
    Rule("/nodes/<node>/list/", endpoint="peer_list", methods=["GET"], defaults={"path": ""}),
    Rule("/nodes/<node>/list/<path:path>", endpoint="peer_list", methods=["GET"]),
    Rule("/cluster/files/", endpoint="cluster_files", methods=["GET", "HEAD"], defaults={"path": ""}),
    Rule("/cluster/files/<path:path>", endpoint="cluster_files", methods=["GET", "HEAD"]),
    Rule("/cluster/list/", endpoint="cluster_list", methods=["GET"], defaults={"path": ""}),
    Rule("/cluster/list/<path:path>", endpoint="cluster_list", methods=["GET"]),
], merge_slashes=False, strict_slashes=False)


def _raw_path_is_suspect(environ: dict) -> bool:
    # PATH_INFO arrives decoded; an encoded "/" or NUL would be indistinguishable from a real one.
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI") or ""
    raw = raw.split("?", 1)[0].lower()
    return "%2f" in raw or "%00" in raw or "\x00" in environ.get("PATH_INFO", "")


class App:
    """One node's WSGI application."""

    def __init__(self, config: Config, node: str):
        self.config = config
        self.node = check_node(config, node)
        self.name = self.node.name
        self.root = Path(self.node.root)
        self.chunk_size = config.chunk_size
        self.peers = peers.PeerClient(config, self.name)
        # endpoint -> handler(app, request, **route_values)
        self.handlers: dict[str, Callable[..., Reply]] = {
            "page": App.page, "static": App.static, "healthz": App.healthz,
            "api_nodes": peers.api_nodes, "file": App.file, "list": App.list,
            "peer_file": peers.peer_file, "peer_list": peers.peer_list,
            "cluster_files": cluster.cluster_files, "cluster_list": cluster.cluster_list,
        }

    # -- endpoints -------------------------------------------------------------------------------

    def healthz(self, request: Request) -> Reply:
        return json_reply({"node": self.name, "status": "ok"})

    def file(self, request: Request, path: str) -> Reply:
        if request.method == "PUT":
            return uploads.put_file(self, request, path)
        f, st, name = local.open_file(self.root, path)
        try:
            plan = local.plan_file_response(request.method, request.headers, name, st)
        except BaseException:
            f.close()
            raise
        body, wrapped = local.file_body(request.environ, f, plan, self.chunk_size)
        return Reply(plan.status, plan.headers, body, file=f if wrapped else None)

    def list(self, request: Request, path: str) -> Reply:
        recursive = request.args.get("recursive", "") not in ("", "0", "false")
        return json_reply(listing.listing(self.name, self.root, path, recursive))

    def page(self, request: Request) -> Reply:
        return self.static(request, "index.html")

    def static(self, request: Request, name: str) -> Reply:
        types = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
        asset = resources.files("wsgi_stream") / "web" / name
        suffix = Path(name).suffix
        if suffix not in types or not asset.is_file():
            raise NotFound("No such page.")
        data = asset.read_bytes()
        return Reply(200, [("Content-Type", types[suffix]), ("Content-Length", str(len(data))),
                           ("Cache-Control", "no-cache")], [data])

    # -- plumbing --------------------------------------------------------------------------------

    def authorized(self, environ: dict) -> bool:
        """Whether the request carries the cluster token (Bearer, or Basic password)."""
        token = self.config.token
        if token is None:
            return True
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.encode("utf-8"), token.encode("utf-8"))

    def dispatch(self, environ: dict) -> Reply:
        """Route the request and run its handler; every ApiError becomes its JSON answer."""
        request = Request(environ)
        try:
            adapter = URL_MAP.bind_to_environ(environ)
            try:
                endpoint, values = adapter.match()
            except RouteNotFound:
                raise NotFound("No such endpoint.") from None
            except RouteMethodNotAllowed as exc:
                allow = ", ".join(sorted(exc.valid_methods or []))
                raise MethodNotAllowed(f"{request.method} is not allowed here.",
                                       headers=[("Allow", allow)]) from None
            except RequestRedirect as exc:
                return Reply(308, [("Location", exc.new_url), ("Content-Length", "0")])
            if endpoint != "healthz" and not self.authorized(environ):
                raise Unauthorized("This cluster needs its token.",
                                   headers=[("WWW-Authenticate", 'Basic realm="wsgi_stream"')])
            if "path" in values and _raw_path_is_suspect(environ):
                raise NotFound("No such file.")
            return self.handlers[endpoint](self, request, **values)
        except ApiError as error:
            return error_reply(error)
        except Exception:
            log.exception("unexpected error answering %s %s", environ.get("REQUEST_METHOD"),
                          environ.get("PATH_INFO"))
            return error_reply(ApiError("The server hit an unexpected error; see its log.",
                                        code="internal_error"))

    def __call__(self, environ: dict, start_response):
        started = time.monotonic()
        reply = self.dispatch(environ)
        start_response(f"{reply.status} {HTTP_STATUS_CODES.get(reply.status, 'Unknown')}", reply.headers)
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
    """One line per finished request: remote, method, path, status, bytes, seconds."""

    def __init__(self, environ: dict, status: int, started: float):
        self.environ, self.status, self.started = environ, status, started

    def finish(self, sent: int, note: str = "") -> None:
        env = self.environ
        # PEP 3333 hands PATH_INFO over as latin-1 decoded bytes; show the UTF-8 name a user typed.
        path = env.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")
        if env.get("QUERY_STRING"):
            path += "?" + env["QUERY_STRING"]
        access_log.info('%s "%s %s" %d %d %.3fs%s', env.get("REMOTE_ADDR", "-"), env.get("REQUEST_METHOD"),
                        path, self.status, sent, time.monotonic() - self.started, note)


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
            self.entry.finish(self.sent, self.failed)


def make_app(config: Config | str | Path, node: str) -> App:
    """The WSGI application of node `node` in `config` (a Config, or the path of a TOML file)."""
    if not isinstance(config, Config):
        config = load_config(config)
    return App(config, node)
