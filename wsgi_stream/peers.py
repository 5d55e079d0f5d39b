"""PeerClient: the one boundary between this node and the others.

Every request to another node goes through `PeerClient.open`, and every answer is read through
the `PeerResponse` it returns. The two own the whole transaction, so nothing else has to know
urllib3's exceptions or its pool:

- failures become ApiErrors once, from one table (`FAILURES`): 504 when the peer was too slow,
  502 for every other way of failing, each naming the node;
- a response read to its end is released to the pool; one left with unread bytes (an abort, an
  error) has its socket closed first, so a half-read body is never handed to the next request;
- a GET/HEAD on a pooled keep-alive connection the peer had closed is asked again once.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Iterator, TypeVar
from urllib.parse import quote

import urllib3
from urllib3.exceptions import (ConnectTimeoutError, HTTPError, NewConnectionError, ProtocolError,
                                ReadTimeoutError)
from urllib3.util.ssl_match_hostname import CertificateError

from .errors import ApiError, NotFound

log = logging.getLogger("wsgi_stream.peers")

# How long a health check waits for a peer's /healthz.
HEALTH_TIMEOUT = 1.0
# Threads that ask nodes at once, for all requests of this node together.
ASKING_THREADS = 16

T = TypeVar("T")


class TooSlow(Exception):
    """A node that did not answer within the time budget of the request."""

# code -> (status, message): every way a peer can fail, as the client of this node hears it.
FAILURES = {
    "peer_unreachable": (502, "Node {node} is unreachable."),
    "peer_timeout": (504, "Node {node} did not answer in time."),
    "peer_broken": (502, "Node {node} broke off its answer."),
    "peer_bad_answer": (502, "Node {node} sent something that is not JSON."),
    "peer_unauthorized": (502, "Node {node} refused this node's token; the cluster token must be the "
                               "same on every node."),
    "peer_error": (502, "Node {node} failed with status {status}."),
}


def peer_error(code: str, node: str, message: str | None = None, **details) -> ApiError:
    """The ApiError `code` of FAILURES about `node` (its message, or `message` when given)."""
    status, template = FAILURES[code]
    return ApiError(message or template.format(node=node, **details), status=status, code=code)


def failure_of(exc: Exception, node: str, reading: bool = False) -> ApiError:
    """The ApiError for urllib3/socket error `exc` talking to `node` (while `reading` a body, or not)."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    # NewConnectionError (refused, no route, bad name) subclasses ConnectTimeoutError in urllib3 2.
    if not isinstance(exc, NewConnectionError) and isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        return peer_error("peer_timeout", node)
    tls = None if reading else tls_failure(exc)
    if tls is not None:
        log.warning("TLS with node %s failed: %s", node, tls)
        return peer_error("peer_unreachable", node, f"Node {node} is unreachable: TLS failed ({tls}).")
    return peer_error("peer_broken" if reading else "peer_unreachable", node)


def tls_failure(exc: BaseException | None) -> str | None:
    """What went wrong in TLS behind urllib3 error `exc` ('certificate verify failed: ...'), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError) and getattr(exc, "verify_message", None):
            return f"certificate verify failed: {exc.verify_message}"
        if isinstance(exc, CertificateError):  # urllib3's own host name check
            return f"certificate verify failed: {exc}"
        if isinstance(exc, ssl.SSLError):
            # OpenSSL's words without its codes: "[SSL: X] words (_ssl.c:1006)" -> "words"
            text = str(exc.args[1] if len(exc.args) > 1 else exc.args[0] if exc.args else "")
            return re.sub(r"^\[[^]]*\] | \(_ssl\.c:\d+\)$", "", text) or type(exc).__name__
        causes = [getattr(exc, "reason", None), *exc.args, exc.__cause__, exc.__context__]
        exc = next((c for c in causes if isinstance(c, BaseException) and id(c) not in seen), None)
    return None


def never_sent(error: ApiError) -> bool:
    """Whether a failed request never reached its peer (no connection was made): safe to call a no."""
    cause = error.__cause__
    if isinstance(cause, urllib3.exceptions.MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    # NewConnectionError (refused, no route) subclasses ConnectTimeoutError in urllib3 2.
    return isinstance(cause, ConnectTimeoutError)


def status_failure(status: int, node: str) -> ApiError | None:
    """The 502 to answer instead of a peer's 401 or 5xx (not the client's business), else None."""
    if status == 401:
        return peer_error("peer_unauthorized", node)
    if status >= 500 and status != 507:  # 507 (the peer's disk is full) is the client's news
        return peer_error("peer_error", node, status=status)
    return None


def quote_path(path: str) -> str:
    """A relative file path percent-encoded for a URL (slashes kept)."""
    return quote(path, safe="/")


class JsonItems:
    """One array of a peer's JSON object, parsed item by item as the body arrives: `items()`, then `rest`.

    A listing of 25,000 files parsed whole is some 20 MiB of dicts and strings at once; read this
    way only one piece of the body and one entry are held. The array is found by its key (as our
    nodes write it: before the fields that follow it); a body of another shape is parsed whole.
    """

    PIECE = 256 * 1024

    def __init__(self, response: PeerResponse, key: str):
        self.response, self.key = response, key
        self.rest: dict = {}  # the object's other fields, once `items()` is done
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text, self._pos, self._ended = "", 0, False

    def _more(self) -> bool:
        if self._ended:
            return False
        data = self.response.read(self.PIECE)
        self._ended = not data
        try:
            self._text = self._text[self._pos:] + self._decoder.decode(data, final=self._ended)
        except UnicodeDecodeError:
            raise peer_error("peer_bad_answer", self.response.node) from None
        self._pos = 0
        return True

    def _whole(self) -> dict:
        while self._more():
            pass
        try:
            return json.loads(self._text[self._pos:])
        except ValueError:
            raise peer_error("peer_bad_answer", self.response.node) from None

    def items(self) -> Iterator:
        """Each item of the array in turn; a body that is not JSON is a 502 (peer_bad_answer)."""
        opening = re.compile(r'"%s"\s*:\s*\[' % re.escape(self.key))
        while (found := opening.search(self._text)) is None and not self._ended and len(self._text) < self.PIECE:
            self._more()
        if found is None:
            document = self._whole()
            items = document.pop(self.key, None) if isinstance(document, dict) else None
            if not isinstance(items, list):
                raise ApiError(f"Node {self.response.node} sent no {self.key!r} list.", status=502,
                               code="peer_bad_answer")
            self.rest = document
            yield from items
            return
        head, self._pos = self._text[:found.start()], found.end()
        decode = json.JSONDecoder().raw_decode
        while True:
            while self._pos >= len(self._text) or self._text[self._pos] in " \t\r\n,":
                if self._pos < len(self._text):
                    self._pos += 1
                elif not self._more():
                    raise peer_error("peer_bad_answer", self.response.node)
            if self._text[self._pos] == "]":
                self._pos += 1
                break
            try:
                item, end = decode(self._text, self._pos)
            except ValueError:
                if self._more():
                    continue  # the item goes on in the next piece
                raise peer_error("peer_bad_answer", self.response.node) from None
            self._pos = end
            yield item
        tail = self._whole_tail()
        try:
            rest = json.loads(head + '"": null' + tail)
        except ValueError:
            raise peer_error("peer_bad_answer", self.response.node) from None
        rest.pop("", None)
        self.rest = rest

    def _whole_tail(self) -> str:
        while self._more():
            pass
        return self._text[self._pos:]


class PeerResponse:
    """A peer's answer with its body unread; use as a context manager, or end it with close()."""

    def __init__(self, node: str, raw: urllib3.BaseHTTPResponse):
        self.node, self.raw = node, raw
        self.status, self.headers = raw.status, raw.headers
        self.ended = False

    @property
    def length_remaining(self) -> int | None:
        return self.raw.length_remaining

    def read(self, amount: int | None = None) -> bytes:
        """Up to `amount` bytes of the body (all without it); a failure is a 502/504 ApiError."""
        try:
            return self.raw.read(amount, decode_content=False)
        except (HTTPError, OSError) as exc:
            raise failure_of(exc, self.node, reading=True) from exc

    def read1(self, amount: int) -> bytes:
        """Whatever part of the body arrives first, at most `amount` bytes."""
        try:
            return self.raw.read1(amount)
        except (HTTPError, OSError) as exc:
            raise failure_of(exc, self.node, reading=True) from exc

    def detach_body(self, at_least: int) -> tuple[bytes, socket.socket, int] | None:
        """The rest of the body as (bytes already buffered, the plain TCP socket, bytes still to come on it).

        For relaying the body socket to socket: None unless it is a plain Content-Length body of
        at least `at_least` more bytes on an unencrypted socket. After it, the connection is spent:
        close() closes it (the pool reconnects that slot next time).
        """
        raw = self.raw
        fp = getattr(raw, "_fp", None)  # http.client's response: holds the socket's read buffer
        remaining = raw.length_remaining
        conn = getattr(raw, "connection", None)
        sock = getattr(conn, "sock", None)
        if (remaining is None or remaining < at_least or fp is None or getattr(fp, "chunked", True)
                or getattr(fp, "length", None) != remaining or type(sock) is not socket.socket
                or len(getattr(raw, "_decoded_buffer", b"")) or self.ended):
            return None  # chunked, TLS, or bytes urllib3 holds itself: read it the ordinary way
        try:
            buffered = fp.fp.read(len(fp.fp.peek(0)[:remaining]))
        except OSError as exc:
            raise failure_of(exc, self.node, reading=True) from exc
        fp.length = remaining - len(buffered)
        return buffered, sock, remaining - len(buffered)

    def json(self, data: bytes | None = None) -> dict:
        """The whole body (or `data`, read from it before) as JSON; a 4xx answer becomes an ApiError
        with the peer's status and code."""
        if data is None:
            with self:
                data = self.read()
        try:
            document = json.loads(data)
        except ValueError:
            raise peer_error("peer_bad_answer", self.node) from None
        if self.status >= 400:
            failure = status_failure(self.status, self.node)
            if failure is not None:
                raise failure
            document = document if isinstance(document, dict) else {}
            raise ApiError(document.get("message", f"Node {self.node} answered {self.status}."),
                           status=self.status, code=document.get("error", "peer_error"))
        return document

    def json_items(self, key: str) -> JsonItems:
        """The items of the array `key` of this JSON answer as they arrive (see JsonItems)."""
        if self.status != 200:
            self.json()  # raises the answer's ApiError
            raise peer_error("peer_bad_answer", self.node)
        return JsonItems(self, key)

    def close(self) -> None:
        """Return a fully read connection to the pool; close one with unread bytes first."""
        if self.ended:
            return
        self.ended = True
        raw = self.raw
        if not raw.isclosed() or raw.length_remaining:  # bytes left unread
            # Draining a multi-GiB body nobody wants would tie up the peer: close the socket. The
            # closed connection goes back to the pool, which reconnects that slot next time.
            raw.close()
        raw.release_conn()

    def discard(self) -> None:
        """Close the connection whatever was read (after an error) and give its slot back."""
        if not self.ended:
            self.raw.close()
            self.close()

    def __enter__(self) -> "PeerResponse":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


class PeerClient:
    """The pooled HTTP client this node uses to reach its configured peers (and only them)."""

    def __init__(self, config, self_name: str):
        self.config = config
        self.self_name = self_name
        self.timeout = urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout)
        # Asking what a node has never outlasts the plan's budget, so a stalled node frees its thread.
        self.planning_timeout = urllib3.Timeout(connect=min(config.connect_timeout, config.plan_timeout),
                                                read=min(config.read_timeout, config.plan_timeout))
        # Peers with https:// urls are always verified: their chain against the cluster's CA (the
        # system's without ca_file) and their certificate against the url's host name or address.
        self.pool = urllib3.PoolManager(num_pools=max(len(config.nodes), 1), maxsize=16, block=False,
                                        retries=False, timeout=self.timeout, cert_reqs="CERT_REQUIRED",
                                        ca_certs=config.ca_file, cert_file=config.client_cert,
                                        key_file=config.client_key)
        # Bounded, and shared by every request: 200 nodes cost 16 threads, not 200 per request.
        self.askers = ThreadPoolExecutor(max_workers=min(ASKING_THREADS, max(2, len(config.nodes))),
                                         thread_name_prefix="ask-node")

    def each(self, function: Callable[[str], T], names: list[str], budget: float | None = None) -> list[T | TooSlow]:
        """`function(name)` for every node in `names` at once, in their order; TooSlow past `budget` s."""
        futures = [self.askers.submit(function, name) for name in names]
        wait(futures, timeout=budget)
        results = []
        for name, future in zip(names, futures):
            if future.done():
                results.append(future.result())
            else:
                future.cancel()  # not started yet: never will; running: its own timeouts end it
                results.append(TooSlow(f"Node {name} did not answer within {budget:g} s."))
        return results

    @property
    def names(self) -> list[str]:
        """Every node of the cluster, this one included, in config order."""
        return list(self.config.nodes)

    def node(self, name: str):
        """The configured node `name`; 404 for a name the config does not know."""
        if name not in self.config.nodes:
            raise NotFound(f"No node called {name!r} in this cluster.", code="unknown_node")
        return self.config.nodes[name]

    def open(self, name: str, method: str, url_path: str, headers: dict | None = None, body=None,
             timeout=None, replayable: Callable[[], bool] | None = None) -> PeerResponse:
        """Send a request to peer `name` and return its answer with the body unread.

        A pooled connection the peer closed just as it was reused fails before any answer; the
        request is sent again once when `replayable()` says so (default: GET and HEAD).
        """
        node = self.node(name)
        headers = dict(headers or {})
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        if replayable is None:
            replayable = lambda: method in ("GET", "HEAD")  # noqa: E731
        for attempt in (1, 2):
            try:
                raw = self.pool.request(method, node.url + url_path, headers=headers, body=body,
                                        preload_content=False, decode_content=False, redirect=False,
                                        retries=False, timeout=timeout or self.timeout)
                return PeerResponse(name, raw)
            except ProtocolError as exc:
                if attempt == 2 or not replayable():
                    raise failure_of(exc, name) from exc
            except (HTTPError, OSError) as exc:
                raise failure_of(exc, name) from exc
        raise AssertionError("unreachable")

    def get_json(self, name: str, url_path: str, timeout=None) -> dict:
        """GET a JSON document from peer `name`; a non-2xx answer becomes an ApiError."""
        return self.open(name, "GET", url_path, timeout=timeout).json()

    def health(self, name: str) -> tuple[str, str]:
        """("ok" | "down", message) for node `name`: its /healthz answers, and as that node."""
        if name == self.self_name:
            return "ok", ""
        try:
            with self.open(name, "GET", "/healthz", timeout=urllib3.Timeout(total=HEALTH_TIMEOUT)) as response:
                data = response.read(64 * 1024)
        except ApiError as exc:
            return "down", exc.message
        if response.status != 200:
            return "down", f"Node {name} answered /healthz with status {response.status}."
        try:
            answer = json.loads(data)
        except ValueError:
            return "down", f"Node {name} answered /healthz with something that is not JSON."
        who = answer.get("node") if isinstance(answer, dict) else None
        if who != name:
            return "down", f"The server at {self.config.nodes[name].url} says it is node {who!r}, not {name!r}."
        return "ok", ""
