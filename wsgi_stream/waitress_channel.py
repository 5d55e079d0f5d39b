"""waitress's connection, taught to decide on the request head, spool on the node's disk, sendfile and splice.

Theory of operation. waitress reads a request on its I/O thread with one parser per request
(HTTPRequestParser), then hands the complete request, body included, to a worker thread
(WSGITask). Five things happen here, each in one small override:

- **The head decides** (HeadParser.received). When the head is complete and a body follows,
  `Settings.check_head(environ)` (the App's) answers from the head alone: token, route,
  method, uploads on, declared size. A refusal completes the request at once with an empty
  body; the app then answers it as usual (the same decision, so the same JSON and access-log
  line), and the connection closes without reading the body (NodeChannel: a lingering close
  that discards what was already in flight, so the client still gets its answer). Ambiguous
  framing (`framing_problem`) is refused before waitress even looks at the body.
- **Accepted bodies spool on the node's disk** (SpoolBuffer): an anonymous file in the root's
  hidden spool directory; the app gets it as `environ[uploads.SPOOLED_BODY]` and links it into
  place instead of copying it again.
- **A peer's long body is relayed with splice()** (NodeTask.relay, offered to the app as
  environ[forward.RELAY]): once the head and the body's first block are out, the worker thread
  moves the peer's bytes from its socket through a pipe to the client's socket, so no byte passes
  through Python. The I/O thread leaves the channel alone meanwhile: a running request makes it
  unreadable, an empty output buffer unwritable. Each splice() to the client is made holding
  the channel's outbuf_lock after checking it is still connected, the lock waitress's own
  handle_close takes before closing the socket.
- **Large body blocks are sent by the request's thread** (NodeTask.write): a block of at least
  DIRECT_WRITE bytes goes from the app's bytes straight to the socket (sendmsg(), with a
  chunked answer's framing around it), once what was queued before went out, waiting for the
  client as long as waitress's channel_timeout. waitress would copy it into the connection's
  buffer and out again, and hand it to the I/O thread; the request's thread waited for the
  client there too (outbuf_high_watermark). Same lock, same rule as the relay.
- **File bodies go out with sendfile()** (SendfileBuffer, NodeChannel._flush_some): the
  response's `wsgi.file_wrapper` is sent by the I/O thread from the file to the non-blocking
  socket, as much as the socket takes each time it is writable; partial sends, slow clients,
  timeouts and closing work as for waitress's own file buffers, and no byte passes through
  Python. Safe on the I/O thread because the socket is non-blocking: a call copies at most
  what the socket buffer takes. Like waitress's own file reads there, it may wait for the disk
  when the file is not in the page cache.

Every waitress error answer (bad framing, head too large, body over the limit) is JSON too
(JsonErrorTask). Written against waitress 3.0 (setup.py pins < 4): `_flush_some` is a copy of
waitress's with one branch added.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import io
import logging
import os
import secrets
import select
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import Error as WaitressError
from waitress.wasyncore import _DISCONNECTED

from .errors import ApiError, error_body, error_headers
from .forward import RELAY
from .local import FILE_WRAPPER_RANGES
from .replies import Reply, error_reply, status_line
from .uploads import SPOOLED_BODY

log = logging.getLogger("wsgi_stream")

# After a refused request's answer: how long, and how many bytes, the rest of its body may
# still arrive (and be thrown away) before the socket closes. Closing a socket with unread
# input makes the kernel send RST, which can destroy the answer before the client reads it.
LINGER_SECONDS = 2.0
LINGER_BYTES = 8 << 20
# Largest count handed to one sendfile() call (it returns early when the socket buffer fills).
SENDFILE_MAX = 8 << 20
# Body blocks at least this long are sent by the request's thread itself (NodeTask.write).
DIRECT_WRITE = 64 << 10
# The pipe a relay moves bytes through (Linux allows 1 MiB to anyone by default).
RELAY_PIPE = 1 << 20
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_POLL_TROUBLE = select.POLLERR | select.POLLHUP | select.POLLNVAL
# sendfile() refused for this file (its file system): copy instead.
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
# waitress's error classes -> our error codes.
_ERROR_CODES = {400: "bad_request", 413: "payload_too_large", 431: "headers_too_large",
                500: "internal_error", 501: "not_implemented", 507: "insufficient_storage"}


@dataclass(frozen=True)
class Settings:
    """What the channels of one node need: the head check, where to spool, the memory threshold."""

    check_head: Callable[[dict], Reply | None] | None = None
    spool_dir: Path | None = None
    memory_limit: int = 512 << 10


# -- framing: a pure function of the raw head -------------------------------------------------

def _fields(header_plus: bytes) -> tuple[bytes, list[bytes]]:
    first, _, rest = header_plus.partition(b"\r\n")
    return first, [line for line in rest.split(b"\r\n") if line]


def framing_problem(header_plus: bytes) -> str | None:
    """Why a request head's body framing is ambiguous (RFC 9112 §6.3, request smuggling); None if clear."""
    first, lines = _fields(header_plus)
    if any(line[:1] in (b" ", b"\t") for line in lines):
        return "A header line is folded over several lines (obs-fold); send each header on one line."
    names = [line.partition(b":")[0].strip().lower() for line in lines]
    lengths, codings = names.count(b"content-length"), names.count(b"transfer-encoding")
    if lengths > 1:
        return "The request has more than one Content-Length header."
    if lengths and codings:
        return "The request has both Content-Length and Transfer-Encoding; send one of them."
    if codings and not first.endswith(b"HTTP/1.1"):
        return "Transfer-Encoding needs HTTP/1.1."
    if codings > 1:
        return "The request has more than one Transfer-Encoding header."
    return None


# -- the request body: kept in memory while small, else an anonymous file on the node's disk ----

def _open_spool_file(directory: Path | None):
    """An anonymous file in `directory` (gone when closed); a named one where O_TMPFILE is missing."""
    if directory is None:  # no spool directory (root not writable): $TMPDIR as waitress does
        return tempfile.TemporaryFile("w+b", buffering=0), None
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o666)
        return open(fd, "r+b", buffering=0), None
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    path = directory / f"body-{secrets.token_hex(8)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    return open(fd, "r+b", buffering=0), path


class SpoolBuffer:
    """A request body (waitress's buffer interface): bytes in memory up to a limit, then a file."""

    def __init__(self, settings: Settings, expected: int | None):
        self.settings, self.memory, self.file, self.path, self.length = settings, bytearray(), None, None, 0
        # A body declared too big for memory goes to the file from its first byte.
        self.direct = expected is not None and expected > settings.memory_limit

    def _to_file(self) -> None:
        self.file, self.path = _open_spool_file(self.settings.spool_dir)
        if self.memory:
            self._write(bytes(self.memory), 0)
            self.memory = bytearray()

    def _write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.file.fileno(), view, offset)
            view, offset = view[written:], offset + written

    def append(self, data: bytes) -> None:
        if self.file is None and (self.direct or len(self.memory) + len(data) > self.settings.memory_limit):
            self._to_file()
        if self.file is None:
            self.memory += data
        else:
            self._write(data, self.length)
        self.length += len(data)

    def __len__(self) -> int:
        return self.length

    def getfile(self):
        """The body to read from its start (wsgi.input)."""
        if self.file is None:
            return io.BytesIO(bytes(self.memory))
        self.file.seek(0)
        return self.file

    def spooled(self):
        """The file holding the body, when it is on disk (for the app to link into place)."""
        return self.file

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.memory, self.length = bytearray(), 0


# -- the parser: framing, the head's verdict, the spool ---------------------------------------

class SpoolFailed(WaitressError):
    code, reason = 507, "Insufficient Storage"


class HeadParser(HTTPRequestParser):
    """waitress's request parser, deciding on the head before the body (see the module docstring)."""

    refusal: Reply | None = None

    def __init__(self, adj, channel: "NodeChannel | None" = None):
        super().__init__(adj)
        self.channel = channel
        self.started = time.time()  # waitress's clock (last_activity, maintenance)
        self.decided = False

    def parse_header(self, header_plus: bytes) -> None:
        problem = framing_problem(header_plus)
        if problem:
            raise ParsingError(problem)
        super().parse_header(header_plus)
        if self.body_rcv is not None and self.channel is not None:
            expected = None if self.chunked else self.content_length
            self.body_rcv.buf = SpoolBuffer(self.channel.settings, expected)

    def received(self, data: bytes) -> int:
        try:
            consumed = super().received(data)
        except OSError as exc:  # the spool: disk full, or not writable any more
            log.warning("cannot spool a request body: %s", exc)
            self.error = SpoolFailed("No room to receive the body on this node; nothing was stored.")
            self.completed = True
            return len(data)
        if self.headers_finished and not self.decided and not self.completed and self.channel is not None:
            self.decided = True
            refusal = self.channel.check_head(self)
            if refusal is not None:
                self.refuse(refusal)
                return len(data)  # the rest of this read is body: never parsed as a request
        return consumed

    def refuse(self, reply: Reply) -> None:
        """Complete the request now, with no body; the app answers it and the connection closes."""
        self.refusal = reply
        self.body_rcv.getbuf().close()
        self.body_rcv = None
        self.completed = True
        self.expect_continue = False  # waitress would send 100 Continue and reopen the request
        self.connection_close = True
        if self.chunked:  # waitress removed it; the app must see the head it decided on
            self.headers["TRANSFER_ENCODING"] = "chunked"

    def spooled(self):
        """The file holding the complete body, if it was spooled to disk."""
        return self.body_rcv.getbuf().spooled() if self.body_rcv is not None and self.completed else None


# -- the tasks: the app's environ, JSON errors ------------------------------------------------

class NodeTask(WSGITask):
    """waitress's WSGI task with our file_wrapper and the spooled body in the environ."""

    def get_environment(self) -> dict:
        fresh = self.environ is None
        environ = super().get_environment()
        if fresh:
            environ["wsgi.file_wrapper"] = SendfileBuffer
            environ[FILE_WRAPPER_RANGES] = True
            if hasattr(os, "splice"):
                environ[RELAY] = self.relay
            spooled = self.request.spooled() if isinstance(self.request, HeadParser) else None
            if spooled is not None:
                environ[SPOOLED_BODY] = spooled
        return environ

    def execute(self) -> None:
        if getattr(self.request, "refusal", None) is not None:
            self.set_close_on_finish()
            self.channel.linger_on_close = True
        super().execute()

    # -- large blocks sent by this thread --

    def write(self, data) -> None:
        if len(data) < DIRECT_WRITE or not self.complete:
            return super().write(data)
        super().write(b"")  # the head, if it is not out yet: it decides chunked_response
        if not self.has_body or (self.content_length is not None
                                 and self.content_bytes_written + len(data) > self.content_length):
            return super().write(data)  # bodiless or excess: waitress's rules and warnings
        self.content_bytes_written += len(data)
        if self.chunked_response:
            self._send_all([b"%X\r\n" % len(data), memoryview(data), b"\r\n"])
        else:
            self._send_all([memoryview(data)])

    def _send_all(self, pieces: list) -> None:
        """Send `pieces` (bytes-like) in order with sendmsg(), after what was queued before."""
        channel = self.channel
        target = self._flushed()
        pieces = [piece for piece in pieces if len(piece)]
        while pieces:
            sent = self._to_client(functools.partial(channel.socket.sendmsg, pieces))
            while sent and sent >= len(pieces[0]):
                sent -= len(pieces.pop(0))
            if sent:
                pieces[0] = memoryview(pieces[0])[sent:]
            if pieces:
                self._wait_for_client(target)

    def _wait_for_client(self, target: int) -> None:
        """Wait until the client's socket takes bytes; ClientDisconnected if it left or took nothing for too long."""
        timeout = self.channel.adj.channel_timeout
        events = select.poll()
        events.register(target, select.POLLOUT)
        ready = events.poll(timeout * 1000)
        if not ready:
            raise self._stalled(timeout)
        if ready[0][1] & _POLL_TROUBLE:
            raise ClientDisconnected

    def _stalled(self, timeout: float) -> ClientDisconnected:
        log.warning("closing a connection that read nothing for %gs mid-response (%s)", timeout,
                    self.channel.addr[0])
        return ClientDisconnected(f"the client took nothing for {timeout:g} s")

    def _to_client(self, send: Callable[[], int]) -> int:
        """`send()` bytes to the client now: what it took, 0 when its socket is full."""
        channel = self.channel
        with channel.outbuf_lock:  # handle_close (I/O thread) closes the socket holding it
            if not channel.connected:
                raise ClientDisconnected
            try:
                sent = send()
            except BlockingIOError:
                return 0
            except OSError as exc:
                if exc.errno in _DISCONNECTED:
                    raise ClientDisconnected from exc
                raise
            if sent:
                channel.last_activity = time.time()
            return sent

    # -- relaying a socket's bytes to the client with splice() --

    def relay(self, source: socket.socket, count: int, progress: Callable[[int], None]) -> tuple[int, str | None]:
        """Send `count` bytes from `source` to the client by splice(): (bytes sent, why short or None).

        Short when the source ends or sends nothing for its own timeout; the caller then cuts the
        client. The client leaving, or taking nothing for waitress's channel_timeout, raises
        ClientDisconnected, which waitress handles by closing the connection. `progress(n)` hears
        of every n bytes sent, so the count is right whichever way it ends.
        """
        self.write(b"")  # the head, if it is not out yet
        target = self._flushed()
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return self._splice(source, target, count, read_end, write_end, _pipe_room(write_end), progress)
        finally:
            os.close(read_end)
            os.close(write_end)

    def _splice(self, source, target: int, count: int, read_end: int, write_end: int,
                room: int, progress: Callable[[int], None]) -> tuple[int, str | None]:
        src, client_wait = source.fileno(), self.channel.adj.channel_timeout
        source_wait = source.gettimeout() or client_wait
        sent = in_pipe = 0
        why = None
        moved = time.monotonic()  # the last time a byte moved either way
        while sent < count:
            reading = why is None and in_pipe < room and sent + in_pipe < count
            if reading:
                try:
                    got = os.splice(src, write_end, min(room - in_pipe, count - sent - in_pipe),
                                    flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    got = None
                except OSError as exc:
                    got, why = None, f"connection lost ({exc.strerror})"
                if got == 0:
                    why = "closed early"
                elif got:
                    in_pipe += got
                    moved = time.monotonic()
                    continue
            if in_pipe:
                out = self._to_client(functools.partial(os.splice, read_end, target, in_pipe, flags=_SPLICE_FLAGS))
                if out:
                    in_pipe, sent = in_pipe - out, sent + out
                    self.content_bytes_written += out
                    progress(out)
                    moved = time.monotonic()
                    continue
            elif why is not None:
                return sent, why
            waits = {src: source_wait} if reading else {}
            if in_pipe:
                waits[target] = client_wait
            if not self._wait(waits, target, moved):
                if in_pipe and time.monotonic() - moved >= client_wait:
                    raise self._stalled(client_wait)
                why = f"sent nothing for {source_wait:g} s"
        return sent, None

    def _wait(self, waits: dict[int, float], target: int, moved: float) -> bool:
        """Wait until one of `waits` (fd: seconds since `moved`) is ready; False when the nearest ran out."""
        left = moved + min(waits.values()) - time.monotonic()
        if left <= 0:
            return False
        poller = select.poll()
        for fd in waits:
            poller.register(fd, select.POLLOUT if fd == target else select.POLLIN)
        for fd, event in poller.poll(left * 1000):
            if fd == target and event & _POLL_TROUBLE:
                raise ClientDisconnected
        return True

    def _flushed(self) -> int:
        """Wait until everything written before went out; the client socket's descriptor."""
        channel = self.channel
        while True:
            with channel.outbuf_lock:
                if not channel.connected:
                    raise ClientDisconnected
                if channel.total_outbufs_len:
                    channel._flush_some(do_close=False)
                if not channel.total_outbufs_len:
                    return channel.socket.fileno()
                target = channel.socket.fileno()
            self._wait_for_client(target)


def _pipe_room(write_end: int) -> int:
    """Make the pipe RELAY_PIPE long if allowed; its length in bytes."""
    try:
        return fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, RELAY_PIPE)
    except OSError:
        return fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)


class JsonErrorTask(ErrorTask):
    """waitress's own refusals (bad framing, head or body too large) as our JSON errors."""

    def execute(self) -> None:
        error = self.request.error
        api = ApiError(str(error.body), status=error.code, code=_ERROR_CODES.get(error.code, "error"))
        body = error_body(api)
        log.warning("%s: %d %s (refused by the server before the app)", self.channel.addr[0], error.code,
                    error.body)
        self.status = status_line(error.code)
        self.response_headers.extend(h for h in error_headers(api, body) if h[0] != "Content-Length")
        self.set_close_on_finish()
        self.channel.linger_on_close = True
        self.content_length = len(body)
        self.write(body)


# -- file bodies by sendfile() ----------------------------------------------------------------

class SendfileBuffer(ReadOnlyFileBasedBuffer):
    """wsgi.file_wrapper: the file's bytes from its position, Content-Length of them, by sendfile().

    The file's own offset advances with each call (sendfile with offset None), so a
    local.TrackedFile reports how far it got when it is closed, sent to the end or cut.
    """

    use_sendfile = True

    def prepare(self, size=None):
        remain = super().prepare(size)
        if size is not None and remain < size:
            # The file is shorter than the headers promised: promise stands, the connection
            # will be cut when the file ends, so the client sees a short body, never a shorter "whole".
            self.remain = size
        return self.remain

    def send_to(self, channel: "NodeChannel", count: int, do_close: bool) -> int:
        """Send up to `count` bytes to the channel's socket; 0 when it takes none now."""
        try:
            sent = os.sendfile(channel.socket.fileno(), self.file.fileno(), None, min(count, SENDFILE_MAX))
        except BlockingIOError:
            return 0
        except OSError as why:
            if why.errno in _DISCONNECTED:
                if do_close:
                    channel.handle_close()
                return 0
            if why.errno in _NO_SENDFILE:
                self.use_sendfile = False  # this file system: the next flush copies, as waitress does
                return 0
            raise
        if sent == 0:
            log.warning("%s: file shrank while being sent (%d bytes short): closing the connection",
                        channel.addr[0], self.remain)
            channel.total_outbufs_len -= self.remain
            self.remain = 0
            channel.will_close = True
            return 0
        self.remain -= sent
        return sent


def _sendable(outbuf) -> bool:
    if not isinstance(outbuf, SendfileBuffer) or not outbuf.use_sendfile:
        return False
    try:
        outbuf.file.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    return True


# -- the connection ---------------------------------------------------------------------------

class NodeChannel(HTTPChannel):
    """waitress's connection with HeadParser, NodeTask, JSON errors, sendfile and a lingering close."""

    task_class = NodeTask
    error_task_class = JsonErrorTask
    settings = Settings()
    linger_on_close = False
    lingering_since: float | None = None
    discarded = 0
    fresh = True  # no request served yet

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        self.parser_class = functools.partial(HeadParser, channel=self)
        self.opened = time.time()

    def check_head(self, parser: HeadParser) -> Reply | None:
        """The app's verdict on a complete head with a body to come; refuses (500) if the check fails."""
        if self.settings.check_head is None:
            return None
        environ = NodeTask(self, parser).get_environment()
        if parser.chunked:
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        try:
            return self.settings.check_head(environ)
        except Exception:
            log.exception("checking the head of %s %s", parser.command, parser.path)
            return error_reply(ApiError("The server hit an unexpected error; see its log.", code="internal_error"))

    def service(self):
        self.fresh = False
        super().service()

    # -- what the server's maintenance looks at (times are time.time(), as waitress's) --

    def busy(self) -> bool:
        """Whether a request is being answered, a body is arriving or an answer is being sent."""
        request = self.request
        return bool(self.requests or self.total_outbufs_len or self.lingering_since is not None
                    or (request is not None and request.headers_finished))

    def waiting_for_head(self) -> float | None:
        """Since when this connection waits for its first or a partial request head; None if not."""
        if self.busy():
            return None
        if self.request is not None:
            return self.request.started
        return self.opened if self.fresh else None

    def idle_since(self) -> float | None:
        """Since when this connection does nothing for a client (idle, or waiting for a head); None if busy."""
        if self.busy():
            return None
        waiting = self.waiting_for_head()
        return waiting if waiting is not None else self.last_activity

    # -- lingering close after a refusal --

    def handle_close(self):
        if self.linger_on_close and self.lingering_since is None and self.connected:
            self.linger_on_close = False
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.lingering_since = time.time()
                self.will_close = self.close_when_flushed = False
                return
        super().handle_close()

    def close_now(self) -> None:
        """Close without lingering (deadlines, pressure, shutdown)."""
        self.linger_on_close = False
        self.lingering_since = self.lingering_since or time.time()
        super().handle_close()

    def readable(self):
        if self.lingering_since is not None:
            return self.connected
        return super().readable()

    def writable(self):
        if self.lingering_since is not None:
            return False
        return super().writable()

    def handle_read(self):
        if self.lingering_since is None:
            return super().handle_read()
        try:
            data = self.socket.recv(256 << 10)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.discarded += len(data)
        if not data or self.discarded > LINGER_BYTES:
            super().handle_close()

    # -- sending: waitress's _flush_some with a sendfile() branch --

    def _flush_some(self, do_close=True):
        sent = 0
        dobreak = False
        while True:
            outbuf = self.outbufs[0]
            outbuflen = outbuf.__len__()
            sendfile = _sendable(outbuf)
            while outbuflen > 0:
                if sendfile:
                    num_sent = outbuf.send_to(self, outbuflen, do_close)
                else:
                    chunk = outbuf.get(self.sendbuf_len)
                    num_sent = self.send(chunk, do_close=do_close)
                    if num_sent:
                        outbuf.skip(num_sent, True)
                if num_sent:
                    outbuflen -= num_sent
                    sent += num_sent
                    self.total_outbufs_len -= num_sent
                else:
                    dobreak = True
                    break
            else:
                if len(self.outbufs) > 1:
                    toclose = self.outbufs.pop(0)
                    try:
                        toclose.close()
                    except Exception:
                        self.logger.exception("Unexpected error when closing an outbuf")
                else:
                    dobreak = True
            if dobreak:
                break
        if sent:
            self.last_activity = time.time()
            return True
        return False


def channel_class(settings: Settings) -> type[NodeChannel]:
    """A NodeChannel class bound to one node's settings (waitress instantiates it per connection)."""
    return type("NodeChannel", (NodeChannel,), {"settings": settings})
