"""Peers: the pooled client that reaches other nodes, and forwarding through this node."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import urllib3
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError,
                                ReadTimeoutError)

from .errors import ApiError, BadGateway, GatewayTimeout, NotFound, StreamBroken
from .paths import clean_relpath

log = logging.getLogger("wsgi_stream.peers")

# The client's headers that decide which bytes the peer sends (RFC 9110 §13, §14).
FORWARDED_REQUEST_HEADERS = ("Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since",
                             "If-Unmodified-Since")
# The peer's headers that describe what it sends; nothing hop-by-hop, no Location, no auth challenge.
PASSED_RESPONSE_HEADERS = ("Content-Length", "Content-Type", "Content-Disposition", "ETag",
                           "Last-Modified", "Accept-Ranges", "Content-Range", "Cache-Control", "Allow")
# How long GET /api/nodes waits for each peer's /healthz.
HEALTH_TIMEOUT = 1.0


def quote_path(path: str) -> str:
    """A relative file path percent-encoded for a URL (slashes kept)."""
    return quote(path, safe="/")


def request_failure(name: str, exc: Exception) -> ApiError:
    """The answer for a request to peer `name` that failed with `exc`: 504 for a timeout, else 502."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError (refused, no route, bad name) subclasses ConnectTimeoutError in urllib3 2.
    if not isinstance(exc, NewConnectionError) and isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        return GatewayTimeout(f"Node {name} did not answer in time.", code="peer_timeout")
    return BadGateway(f"Node {name} is unreachable.", code="peer_unreachable")


class PeerClient:
    """The pooled HTTP client this node uses to reach its configured peers (and only them)."""

    def __init__(self, config, self_name: str):
        self.config = config
        self.self_name = self_name
        self.timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        self.pool = urllib3.PoolManager(num_pools=max(len(config.nodes), 1), maxsize=16, block=False,
                                        retries=False, timeout=self.timeout)

    def node(self, name: str):
        """The configured peer `name`; 404 for a name the config does not know."""
        if name not in self.config.nodes:
            raise NotFound(f"No node called {name!r} in this cluster.", code="unknown_node")
        return self.config.nodes[name]

    def request(self, name: str, method: str, url_path: str, headers: dict | None = None, body=None,
                timeout=None) -> urllib3.BaseHTTPResponse:
        """Send a request to peer `name`; the response body is not read yet (preload_content=False).

        Connection failures become 502 and timeouts 504, naming the node.
        """
        node = self.node(name)
        headers = dict(headers or {})
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        for attempt in (1, 2):
            try:
                return self.pool.request(method, node.url + url_path, headers=headers, body=body,
                                         preload_content=False, decode_content=False, redirect=False,
                                         retries=False, timeout=timeout or self.timeout)
            except ProtocolError as exc:
                # A pooled keep-alive connection the peer closed just as we reused it fails before
                # any answer (uwsgi closes after every response); a fresh one is safe for GET/HEAD.
                if attempt == 2 or method not in ("GET", "HEAD"):
                    raise request_failure(name, exc) from exc
            except (HTTPError, OSError) as exc:
                raise request_failure(name, exc) from exc

    def get_json(self, name: str, url_path: str) -> dict:
        """GET a JSON document from peer `name`; a non-2xx answer becomes an ApiError with its status."""
        response = self.request(name, "GET", url_path)
        try:
            data = response.read()
        except (HTTPError, OSError) as exc:
            raise BadGateway(f"Node {name} broke off its answer.", code="peer_broken") from exc
        finally:
            response.release_conn()
        try:
            document = json.loads(data)
        except ValueError:
            raise BadGateway(f"Node {name} sent something that is not JSON.", code="peer_bad_answer") from None
        if response.status >= 400:
            raise ApiError(document.get("message", f"Node {name} answered {response.status}."),
                           status=response.status, code=document.get("error", "peer_error"))
        return document


# -- forwarding ----------------------------------------------------------------------------------

class PeerBody:
    """A peer's response body relayed in chunk_size blocks; close() frees or discards its connection."""

    def __init__(self, response: urllib3.BaseHTTPResponse, first: bytes, node: str, path: str,
                 chunk_size: int):
        self.response, self.first, self.node, self.path = response, first, node, path
        self.chunk_size = chunk_size
        remaining = response.length_remaining
        self.expected = None if remaining is None else remaining + len(first)
        self.sent = 0
        self.released = False

    def __iter__(self):
        chunk = self.first
        self.first = b""
        try:
            while chunk:
                self.sent += len(chunk)
                yield chunk
                chunk = self.response.read(self.chunk_size)
        except (HTTPError, OSError) as exc:
            # urllib3 raises ProtocolError (IncompleteRead) when the peer closes before its
            # Content-Length, ReadTimeoutError when it stalls: the client must not see an end.
            self._broken(exc)
        if self.expected is not None and self.sent != self.expected:
            self._broken(None)
        self._release()

    def _broken(self, exc: Exception | None):
        log.warning("stream from node %s broke off: %s, %d of %s bytes sent (%s)", self.node, self.path,
                    self.sent, "?" if self.expected is None else self.expected, exc or "short body")
        self.close()
        # The warning above names the cause; the chain would only lengthen the server's traceback.
        raise StreamBroken(f"Node {self.node} broke off {self.path} after {self.sent} bytes.") from None

    def _release(self) -> None:
        if not self.released:
            self.released = True
            self.response.release_conn()

    def close(self) -> None:
        """Return a fully read connection to the pool; close one with unread bytes (an abort)."""
        if self.released:
            return
        if not self.response.isclosed() or self.response.length_remaining:  # bytes left unread
            # Draining a multi-GiB body the client no longer wants would tie up the peer: close the
            # socket. The closed connection object goes back to the pool (as urllib3 itself does after
            # an error), so its slot reconnects fresh next time.
            self.response.close()
        self._release()


def _first_block(response: urllib3.BaseHTTPResponse, name: str, chunk_size: int) -> bytes:
    """The body's first bytes (whatever arrives first); failing here is still a clean 502/504."""
    try:
        # Even an empty read matters: it closes a HEAD or 304 answer so the connection can be reused.
        return response.read1(chunk_size)
    except ReadTimeoutError as exc:
        response.close()
        raise GatewayTimeout(f"Node {name} did not answer in time.", code="peer_timeout") from exc
    except (HTTPError, OSError) as exc:
        response.close()
        raise BadGateway(f"Node {name} broke off its answer.", code="peer_broken") from exc


def peer_failure(response: urllib3.BaseHTTPResponse, name: str) -> ApiError | None:
    """The 502 to answer instead of a peer's 401 or 5xx (not the client's business), else None."""
    if response.status == 401:
        return BadGateway(f"Node {name} refused this node's token; the cluster token must be the same "
                          "on every node.", code="peer_unauthorized")
    if response.status >= 500 and response.status != 507:  # 507 (peer disk full) is the client's news
        return BadGateway(f"Node {name} failed with status {response.status}.", code="peer_error")
    return None


def forward(app, request, name: str, url_path: str, method: str | None = None) -> "Reply":
    """Relay `method url_path` to peer `name`: its status, representation headers and streamed body."""
    from .app import Reply  # app imports this module

    method = method or request.method
    headers = {k: request.headers[k] for k in FORWARDED_REQUEST_HEADERS if k in request.headers}
    response = app.peers.request(name, method, url_path, headers)
    error = peer_failure(response, name)
    if error is not None:
        response.close()
        response.release_conn()
        raise error
    first = _first_block(response, name, app.chunk_size)
    passed = [(k, response.headers[k]) for k in PASSED_RESPONSE_HEADERS if k in response.headers]
    return Reply(response.status, passed, PeerBody(response, first, name, url_path, app.chunk_size))


def peer_file(app, request, node: str, path: str) -> "Reply":
    """GET, HEAD or PUT /nodes/{node}/files/{path}: a peer's file through this node, or ours."""
    if node == app.name:
        return app.handlers["file"](app, request, path=path)
    app.peers.node(node)
    clean = clean_relpath(path)
    if not clean:
        raise NotFound("No such file.")
    if request.method == "PUT":
        return forward_upload(app, request, node, clean)
    return forward(app, request, node, "/files/" + quote_path(clean))


def peer_list(app, request, node: str, path: str) -> "Reply":
    """GET /nodes/{node}/list/{path}: a peer's directory listing, or ours."""
    if node == app.name:
        return app.handlers["list"](app, request, path=path)
    app.peers.node(node)
    url_path = "/list/" + quote_path(clean_relpath(path))
    if request.args.get("recursive", "") not in ("", "0", "false"):
        url_path += "?recursive=1"
    return forward(app, request, node, url_path)


def forward_upload(app, request, node: str, path: str) -> "Reply":
    """PUT through this node to a peer; the streaming upload lives with the uploads."""
    from . import uploads  # uploads imports this module

    return uploads.forward_upload(app, request, node, path)


# -- cluster health --------------------------------------------------------------------------------

def node_health(app, name: str) -> tuple[str, str]:
    """("ok" | "down", message) for peer `name`, from its /healthz within HEALTH_TIMEOUT seconds."""
    if name == app.name:
        return "ok", ""
    try:
        response = app.peers.request(name, "GET", "/healthz", timeout=urllib3.Timeout(total=HEALTH_TIMEOUT))
        try:
            data = response.read(64 * 1024)
        finally:
            if response.length_remaining != 0:  # not read to its end: not reusable
                response.close()
            response.release_conn()
    except ApiError as exc:
        return "down", exc.message
    except (HTTPError, OSError) as exc:
        return "down", f"Node {name} broke off its answer ({exc.__class__.__name__})."
    if response.status != 200:
        return "down", f"Node {name} answered /healthz with status {response.status}."
    try:
        answer = json.loads(data)
    except ValueError:
        return "down", f"Node {name} answered /healthz with something that is not JSON."
    if not isinstance(answer, dict) or answer.get("node") != name:
        who = answer.get("node") if isinstance(answer, dict) else None
        return "down", f"The server at {app.config.nodes[name].url} says it is node {who!r}, not {name!r}."
    return "ok", ""


def api_nodes(app, request) -> "Reply":
    """GET /api/nodes: this node, whether uploads are on, and every node's health, in config order."""
    from .app import json_reply

    names = list(app.config.nodes)
    with ThreadPoolExecutor(max_workers=max(len(names), 1), thread_name_prefix="healthz") as pool:
        health = list(pool.map(lambda name: node_health(app, name), names))
    nodes = [{"name": name, "url": app.config.nodes[name].url, "status": status, "message": message}
             for name, (status, message) in zip(names, health)]
    return json_reply({"self": app.name, "uploads": app.config.uploads, "nodes": nodes})
