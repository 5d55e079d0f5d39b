"""Forwarding: a peer's answer streamed through this node, and an upload streamed on to a peer."""

from __future__ import annotations

import logging
import socket
from typing import Callable

import urllib3

from .errors import ApiError, StreamBroken
from .peers import PeerClient, PeerResponse, peer_error, status_failure
from .replies import Reply
from .uploads import RequestBody, UploadLimits, closing, check_size, declared_length, must_close

log = logging.getLogger("wsgi_stream.peers")

# The client's headers that decide which bytes the peer sends (RFC 9110 §13, §14).
FORWARDED_REQUEST_HEADERS = ("Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since",
                             "If-Unmodified-Since")
# The peer's headers that describe what it sends; nothing hop-by-hop, no Location, no auth challenge.
PASSED_RESPONSE_HEADERS = ("Content-Length", "Content-Type", "Content-Disposition", "ETag",
                           "Last-Modified", "Accept-Ranges", "Content-Range", "Cache-Control", "Allow")
# The client's headers a forwarded upload hands on to the peer.
FORWARDED_UPLOAD_HEADERS = ("If-Match", "If-None-Match", "If-Unmodified-Since", "Content-Digest", "Content-Type")
# The peer's answer headers to an upload that come back to the client (Location is rewritten).
PASSED_UPLOAD_HEADERS = ("Content-Type", "ETag", "Allow", "Want-Content-Digest", "Cache-Control")
# A peer answers a PUT only after writing and fsyncing it: allow it this many bytes per second.
PEER_WRITE_RATE = 8 << 20
# How long to wait for that answer when the body's length is unknown and unlimited.
UNKNOWN_LENGTH_WAIT = 600.0
# The environ key of a server that can relay bytes from a socket to the client itself, with no
# copy through Python: relay(socket, count, progress) -> (bytes relayed, why it stopped short or
# None), calling progress(n) as bytes go out (a client that leaves raises instead of returning).
# waitress_channel.NodeTask offers it (splice()); under other servers bodies are read and yielded.
RELAY = "wsgi_stream.relay"
# A body at least this long (after its first read) is relayed; a shorter one costs a new
# connection to the peer for little gain (a relayed connection cannot go back to the pool).
RELAY_AT_LEAST = 1 << 20


class PeerBody:
    """A peer's response body relayed in chunk_size blocks; a break after the headers cuts the client.

    With a server's `relay` (see RELAY), a long plain body goes socket to socket after its first
    block; `relayed` counts those bytes, which never pass through the iterator.
    """

    def __init__(self, response: PeerResponse, first: bytes, path: str, chunk_size: int,
                 relay: Callable | None = None):
        self.response, self.first, self.path, self.chunk_size = response, first, path, chunk_size
        remaining = response.length_remaining
        self.expected = None if remaining is None else remaining + len(first)
        self.sent = self.relayed = 0
        self.relay = relay

    def __iter__(self):
        chunk, self.first = self.first, b""
        try:
            while chunk:
                self.sent += len(chunk)
                yield chunk
                relay, self.relay = self.relay, None  # tried once, after the first block
                detached = relay is not None and self.response.detach_body(RELAY_AT_LEAST)
                if detached:
                    yield from self._relayed(relay, *detached)
                    break
                chunk = self.response.read(self.chunk_size)
        except ApiError as exc:
            # The peer closed before its Content-Length, or stalled: the client must not see an end.
            self._broken(exc.message)
        if self.expected is not None and self.sent != self.expected:
            self._broken("short body")
        self.response.close()

    def _relayed(self, relay: Callable, buffered: bytes, sock: socket.socket, count: int):
        """What the peer's socket buffer held, then `count` bytes relayed by the server."""
        if buffered:
            self.sent += len(buffered)
            yield buffered
        _, why = relay(sock, count, self._count_relayed)
        if why is not None:
            self._broken(why)

    def _count_relayed(self, count: int) -> None:
        self.sent += count
        self.relayed += count

    def _broken(self, why: str):
        log.warning("stream from node %s broke off: %s, %d of %s bytes sent (%s)", self.response.node,
                    self.path, self.sent, "?" if self.expected is None else self.expected, why)
        self.response.discard()
        raise StreamBroken(f"Node {self.response.node} broke off {self.path} after {self.sent} bytes.")

    def close(self) -> None:
        """Free the peer's connection (closed when the client left before the end)."""
        self.response.close()


def forward(peers: PeerClient, name: str, method: str, url_path: str, headers, chunk_size: int,
            relay: Callable | None = None) -> Reply:
    """Relay `method url_path` to peer `name`: its status, representation headers and streamed body."""
    sent = {k: headers[k] for k in FORWARDED_REQUEST_HEADERS if k in headers}
    response = peers.open(name, method, url_path, sent)
    with_body = False
    try:
        failure = status_failure(response.status, name)
        if failure is not None:
            raise failure
        # Even an empty read matters: it ends a HEAD or 304 answer so the connection can be reused.
        first = response.read1(chunk_size)
        passed = [(k, response.headers[k]) for k in PASSED_RESPONSE_HEADERS if k in response.headers]
        with_body = True
        return Reply(response.status, passed, PeerBody(response, first, url_path, chunk_size, relay))
    finally:
        if not with_body:
            response.discard()


def peer_read_timeout(limits: UploadLimits, length: int | None) -> float:
    """Seconds to wait for a peer's answer to a forwarded PUT: it writes and fsyncs before answering."""
    size = length if length is not None else limits.max_size
    if length is None and not size:
        return max(limits.read_timeout, UNKNOWN_LENGTH_WAIT)
    return limits.read_timeout + size / PEER_WRITE_RATE


def forward_upload(peers: PeerClient, limits: UploadLimits, request, name: str, url_path: str,
                   client_path: str) -> Reply:
    """PUT the request's body on to peer `name`, streamed; its answer comes back (Location: `client_path`)."""
    body = None
    try:
        length = declared_length(request.environ)
        check_size(length, limits.max_size)
        headers = {k: request.headers[k] for k in FORWARDED_UPLOAD_HEADERS if k in request.headers}
        if length is not None:
            headers["Content-Length"] = str(length)
        body = RequestBody(request.environ, length, limits)
        _reach(peers, name, limits.connect_timeout)
        # urllib3 sends a request body under the *connect* timeout; the peer was just reached, so
        # that timeout is the stall limit for sending: read_timeout without progress.
        timeout = urllib3.Timeout(connect=limits.read_timeout, read=peer_read_timeout(limits, length))
        status, passed, data = _send_to_peer(peers, name, url_path, headers, body, timeout)
    except ApiError as error:
        log.warning("upload of %s to node %s refused: %d %s", url_path, name, error.status, error.message)
        raise closing(error, body, request.environ) from None
    if status == 201:
        passed.append(("Location", client_path))
    if data or status not in (204, 304):
        passed.append(("Content-Length", str(len(data))))
    if must_close(request.environ, body):
        passed.append(("Connection", "close"))
    return Reply(status, passed, [data] if data else [])


def _reach(peers: PeerClient, name: str, timeout: float) -> None:
    """Connect to peer `name` within `timeout` and hang up: 502/504 if it cannot be reached."""
    node = peers.node(name)
    try:
        socket.create_connection((node.host, node.port), timeout=timeout).close()
    except TimeoutError as exc:
        raise peer_error("peer_timeout", name) from exc
    except OSError as exc:
        raise peer_error("peer_unreachable", name) from exc


def _timed_out(error: BaseException | None) -> bool:
    """Whether a socket timeout is behind `error` (urllib3 reports a stalled send as 'aborted')."""
    while error is not None:
        if isinstance(error, TimeoutError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _send_to_peer(peers: PeerClient, name: str, url_path: str, headers: dict, body: RequestBody, timeout):
    """PUT `body` to the peer: (status, headers to pass, body bytes); 502/504 naming what the peer kept."""
    try:
        response = peers.open(name, "PUT", url_path, headers, body=iter(body), timeout=timeout,
                              replayable=lambda: not body.received)
        with response:
            data = response.read()
    except ApiError as error:
        if error.code not in ("peer_unreachable", "peer_broken"):
            raise
        if body.done:
            raise peer_error("peer_broken", name, f"Node {name} got the whole body but broke off before "
                             "answering; it may or may not have stored the file.") from error
        if body.received and _timed_out(error):
            raise peer_error("peer_timeout", name, f"Node {name} took nothing more of the upload after "
                             f"{body.received} bytes; it keeps nothing of it.") from error
        if body.received:
            raise peer_error("peer_broken", name, f"Node {name} broke off the upload after {body.received} "
                             "bytes; it keeps nothing of it.") from error
        raise
    failure = status_failure(response.status, name)
    if failure is not None:
        raise failure
    passed = [(k, response.headers[k]) for k in PASSED_UPLOAD_HEADERS if k in response.headers]
    return response.status, passed, data
