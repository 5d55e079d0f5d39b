"""Uploads: a PUT body streamed into a temporary file beside its target, checked, then renamed into place."""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import stat as stat_mod
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import urllib3
from urllib3.exceptions import HTTPError, ProtocolError
from werkzeug.http import parse_dict_header

from .errors import (ApiError, BadGateway, BadRequest, Conflict, Forbidden, IncompleteBody,
                     InsufficientStorage, LengthRequired, MethodNotAllowed, PayloadTooLarge,
                     PreconditionFailed)
from .local import check_preconditions, file_etag
from .paths import TEMP_PREFIX, clean_relpath, resolve
from . import peers
from .peers import quote_path

log = logging.getLogger("wsgi_stream.uploads")

# Content-Digest algorithms checked (RFC 9530, both "Active" in the IANA registry).
DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
WANT_DIGEST = "sha-256=10, sha-512=5"
# The client's headers a forwarded upload hands on to the peer.
FORWARDED_HEADERS = ("If-Match", "If-None-Match", "If-Unmodified-Since", "Content-Digest", "Content-Type")
# The peer's answer headers that come back to the client (Location is rewritten).
PASSED_HEADERS = ("Content-Type", "ETag", "Allow", "Want-Content-Digest", "Cache-Control")
# A peer answers a PUT only after writing and fsyncing it: allow it this many bytes per second.
PEER_WRITE_RATE = 8 << 20
# How long to wait for that answer when the body's length is unknown and unlimited.
UNKNOWN_LENGTH_WAIT = 600.0
# Used only where the file system refuses flock() on a directory.
_FALLBACK_LOCK = threading.Lock()


def uploads_off() -> MethodNotAllowed:
    """The 405 answered for every PUT while `uploads` is false."""
    return MethodNotAllowed("Uploads are turned off on this cluster.", headers=[("Allow", "GET, HEAD")])


def server_body_limit(config) -> int:
    """The request-body limit to give the WSGI server (waitress refuses 1 GiB and more by default).

    Slightly above max_upload_size, so the server itself refuses a body far too large before
    buffering it, while the app answers a JSON 413 near the limit (chunked framing counts too).
    """
    limit = config.max_upload_size
    return limit + limit // 16 + (1 << 20) if limit else 1 << 62


# -- deciding: pure functions of the request and a stat -------------------------------------------

def declared_length(environ: dict) -> int | None:
    """The body's Content-Length; None for a chunked body the server can decode; else 411/400."""
    value = environ.get("CONTENT_LENGTH", "").strip()
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if value and not chunked:
        if not (value.isascii() and value.isdigit()):
            raise BadRequest("Content-Length is not a number of bytes.")
        return int(value)
    if chunked and (environ.get("wsgi.input_terminated") or "uwsgi.version" in environ):
        return None
    if chunked:
        raise LengthRequired("This server cannot read a chunked body; send Content-Length.")
    raise LengthRequired("A PUT needs Content-Length or Transfer-Encoding: chunked.")


def check_size(length: int | None, limit: int) -> None:
    """413 when a declared length is over `limit` bytes (0: no limit)."""
    if limit and length is not None and length > limit:
        raise PayloadTooLarge(f"The body of {length} bytes is over this cluster's limit of {limit} bytes.")


def wanted_digests(header: str | None) -> dict[str, bytes]:
    """The digests to check from a Content-Digest header (RFC 9530): {algorithm: raw digest}."""
    if header is None:
        return {}
    wanted, offered = {}, []
    for key, value in parse_dict_header(header).items():
        algorithm = key.strip().lower()
        offered.append(algorithm)
        if algorithm not in DIGESTS:
            continue
        raw = (value or "").split(";", 1)[0].strip()
        try:
            if len(raw) < 2 or raw[0] != ":" or raw[-1] != ":":
                raise ValueError
            digest = base64.b64decode(raw[1:-1], validate=True)
        except (ValueError, binascii.Error):
            raise BadRequest(f"Content-Digest {algorithm} is not :base64:.", code="bad_digest") from None
        if len(digest) != DIGESTS[algorithm]().digest_size:
            raise BadRequest(f"Content-Digest {algorithm} has the wrong length.", code="bad_digest")
        wanted[algorithm] = digest
    if not wanted:
        # The client asked for a check we cannot make: refusing beats storing an unchecked file.
        raise BadRequest(f"Content-Digest has no supported algorithm ({', '.join(offered) or 'none'}); "
                         "use sha-256 or sha-512.", code="unsupported_digest",
                         headers=[("Want-Content-Digest", WANT_DIGEST)])
    return wanted


def check_replace(headers, st: os.stat_result | None) -> None:
    """409 or 412 unless the request may put a file where `st` (None: nothing) is now."""
    if st is not None and stat_mod.S_ISDIR(st.st_mode):
        raise Conflict("That path is a directory.", code="is_directory")
    if st is None:
        if "If-Match" in headers:
            raise PreconditionFailed("If-Match: there is no file to match.")
        return
    if not stat_mod.S_ISREG(st.st_mode):
        raise Conflict("That path is not a regular file.", code="not_a_file")
    if check_preconditions("PUT", headers, st) == 412:
        raise PreconditionFailed("The file does not match the request's preconditions.")


def peer_read_timeout(config, length: int | None) -> float:
    """Seconds to wait for a peer's answer to a forwarded PUT: it writes and fsyncs before answering."""
    size = length if length is not None else config.max_upload_size
    if length is None and not size:
        return max(config.read_timeout, UNKNOWN_LENGTH_WAIT)
    return config.read_timeout + size / PEER_WRITE_RATE


# -- the body, whatever the server makes of it ----------------------------------------------------

class RequestBody:
    """The request body as blocks of at most `block` bytes; raises IncompleteBody or 413 on the way."""

    def __init__(self, environ: dict, length: int | None, block: int, limit: int, timeout: float):
        self.environ, self.length, self.block, self.limit = environ, length, block, limit
        self.timeout = timeout
        self.received = 0
        self.done = length == 0

    def _reader(self):
        environ = self.environ
        if self.length is None and not environ.get("wsgi.input_terminated"):
            # uwsgi leaves a chunked body undecoded in wsgi.input; its own API decodes it.
            import uwsgi
            return lambda size: uwsgi.chunked_read(int(self.timeout))
        return environ["wsgi.input"].read

    def __iter__(self) -> Iterator[bytes]:
        read = self._reader()
        while not self.done:
            size = self.block if self.length is None else min(self.block, self.length - self.received)
            try:
                data = read(size) if size else b""
            except Exception as exc:  # each server has its own: OSError, gunicorn's NoMoreData...
                hint = "" if self.length is not None else " (or a chunk was over the server's chunk limit)"
                raise IncompleteBody(f"The body broke off after {self.received} bytes{hint}.") from exc
            if not data:
                if self.length is not None and self.received < self.length:
                    raise IncompleteBody(f"The body ended after {self.received} of {self.length} bytes.")
                self.done = True
                return
            self.received += len(data)
            if self.limit and self.received > self.limit:
                raise PayloadTooLarge(f"The body is over this cluster's limit of {self.limit} bytes.")
            yield data


# -- storing: the only part that touches the disk -------------------------------------------------

@dataclass
class Stored:
    """A file put in place: its final stat, whether it replaced one, and the digests computed."""

    st: os.stat_result
    replaced: bool
    digests: dict[str, str] = field(default_factory=dict)


def _storage_error(exc: OSError, where: str) -> ApiError | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientStorage(f"No space left to store {where}; nothing was stored.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Forbidden(f"This node may not write {where}.")
    return None


@contextmanager
def _storage_errors(where: str):
    try:
        yield
    except OSError as exc:
        error = _storage_error(exc, where)
        if error is None:
            raise
        raise error from exc


def _file_in_the_way() -> Conflict:
    return Conflict("A parent of that path is a file.", code="parent_not_directory")


def make_parents(directory: Path) -> list[Path]:
    """Create the missing folders down to `directory`; the ones made, outermost first."""
    missing, probe = [], directory
    while not probe.is_dir():
        if probe.exists() or probe.is_symlink():
            raise _file_in_the_way()
        missing.append(probe)
        probe = probe.parent
    made = []
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path)
                made.append(path)
            except FileExistsError:
                if not path.is_dir():  # another upload made it first is fine; a file is not
                    raise
    except (FileExistsError, NotADirectoryError):
        remove_dirs(made)
        raise _file_in_the_way() from None
    return made


def remove_dirs(made: list[Path]) -> None:
    """Remove folders an upload made, innermost first, unless something else is in them now."""
    for path in reversed(made):
        try:
            os.rmdir(path)
        except OSError:
            return


@contextmanager
def _locked(dir_fd: int):
    """Hold the directory's lock (threads and processes alike) for a check-then-rename."""
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
    except OSError:
        with _FALLBACK_LOCK:
            yield
        return
    try:
        yield
    finally:
        fcntl.flock(dir_fd, fcntl.LOCK_UN)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None  # a file as parent is refused by make_parents with its own message


def _stat_at(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _write(fd: int, blocks, digests: dict[str, bytes]) -> dict[str, str]:
    """Write `blocks` to `fd` and check them against `digests`: the hex digests, or 400."""
    hashes = {name: DIGESTS[name]() for name in digests}
    for data in blocks:
        for h in hashes.values():
            h.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    for name, h in hashes.items():
        if h.digest() != digests[name]:
            raise BadRequest(f"The body does not match its Content-Digest ({name}); nothing was stored.",
                             code="digest_mismatch")
    return {name: h.hexdigest() for name, h in hashes.items()}


def store(target: Path, blocks, digests: dict[str, bytes], headers) -> Stored:
    """Write `blocks` to a temporary file beside `target`, verify, fsync and rename it into place."""
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    temp = TEMP_PREFIX + secrets.token_hex(8)
    try:
        old = _stat_at(target.name, dir_fd)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
        try:
            if old is not None and stat_mod.S_ISREG(old.st_mode):
                os.fchmod(fd, stat_mod.S_IMODE(old.st_mode))  # a replaced file keeps its mode
            sums = _write(fd, blocks, digests)
            os.fsync(fd)
            with _locked(dir_fd):
                old = _stat_at(target.name, dir_fd)
                check_replace(headers, old)  # again: another upload may have won meanwhile
                os.replace(temp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                temp = None
            os.fsync(dir_fd)
            return Stored(os.fstat(fd), old is not None, sums)
        finally:
            os.close(fd)
    finally:
        if temp is not None:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
        os.close(dir_fd)


def _fsync_dirs(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_free_space(directory: Path, length: int | None) -> None:
    if not length:
        return
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < length:
        raise InsufficientStorage(f"Only {free} bytes are free here, the body has {length}; nothing was stored.")


# -- the endpoints --------------------------------------------------------------------------------

def _must_close(environ: dict, body: RequestBody | None) -> bool:
    """Whether the unread rest of a body could be parsed as the next request on this connection.

    waitress reads the whole body before calling the app (and refuses hop-by-hop headers);
    gunicorn drops the header and drains the body itself; uwsgi and others need the header.
    """
    unread = body is None or not body.done
    return unread and "waitress.client_disconnected" not in environ


def _closing(error: ApiError, body: RequestBody | None, environ: dict) -> ApiError:
    if _must_close(environ, body):
        error.headers = [*error.headers, ("Connection", "close")]
    return error


def _check_put(app, request, rel: str) -> tuple[Path, int | None, dict[str, bytes]]:
    """What is decided before the body is read: target, length, digests to check; else 4xx."""
    if not rel:
        raise Conflict("That path is a directory.", code="is_directory")
    target = resolve(app.root, rel)
    length = declared_length(request.environ)
    check_size(length, app.config.max_upload_size)
    digests = wanted_digests(request.headers.get("Content-Digest"))
    check_replace(request.headers, _stat_or_none(target))
    return target, length, digests


def put_file(app, request, path: str):
    """PUT /files/{path}: store the body atomically; 201 (new) or 204 (replaced) with the new ETag."""
    from .app import Reply, json_reply  # app imports this module

    if not app.config.uploads:
        raise _closing(uploads_off(), None, request.environ)
    rel, body, made = clean_relpath(path), None, []
    try:
        target, length, digests = _check_put(app, request, rel)
        with _storage_errors(rel):
            made = make_parents(target.parent)
            if resolve(app.root, rel) != target:  # a symlink appeared in what we just walked
                raise Conflict("The path changed while it was being created.")
            _check_free_space(target.parent, length)
            body = RequestBody(request.environ, length, app.chunk_size, app.config.max_upload_size,
                               app.config.read_timeout)
            stored = store(target, body, digests, request.headers)
            _fsync_dirs([p.parent for p in made])  # the new folders' own entries
    except BaseException as error:
        remove_dirs(made)
        if not isinstance(error, ApiError):
            raise
        log.warning("upload of %s refused: %d %s", rel or "/", error.status, error.message)
        raise _closing(error, body, request.environ) from None
    etag = file_etag(stored.st)
    sums = "".join(f", {name} {value}" for name, value in stored.digests.items())
    log.info("stored %s (%d bytes%s)", rel, stored.st.st_size, sums)
    if stored.replaced:
        return Reply(204, [("ETag", etag)])
    return json_reply({"node": app.name, "path": rel, "size": stored.st.st_size, "etag": etag}, 201,
                      [("ETag", etag), ("Location", "/files/" + quote_path(rel))])


def forward_upload(app, request, node: str, path: str):
    """PUT /nodes/{node}/files/{path}: stream the body on to the peer; its answer comes back."""
    from .app import Reply

    if not app.config.uploads:
        raise _closing(uploads_off(), None, request.environ)
    if node == app.name:
        return put_file(app, request, path)
    app.peers.node(node)
    rel, body = clean_relpath(path), None
    try:
        length = declared_length(request.environ)
        check_size(length, app.config.max_upload_size)
        headers = {k: request.headers[k] for k in FORWARDED_HEADERS if k in request.headers}
        if length is not None:
            headers["Content-Length"] = str(length)
        body = RequestBody(request.environ, length, app.chunk_size, app.config.max_upload_size,
                           app.config.read_timeout)
        timeout = urllib3.Timeout(connect=app.config.connect_timeout,
                                  read=peer_read_timeout(app.config, length))
        status, passed, data = _send_to_peer(app, node, "/files/" + quote_path(rel), headers, body, timeout)
    except ApiError as error:
        log.warning("upload of %s to node %s refused: %d %s", rel, node, error.status, error.message)
        raise _closing(error, body, request.environ) from None
    if status == 201:
        passed.append(("Location", f"/nodes/{quote_path(node)}/files/{quote_path(rel)}"))
    if data or status not in (204, 304):
        passed.append(("Content-Length", str(len(data))))
    if _must_close(request.environ, body):
        passed.append(("Connection", "close"))
    return Reply(status, passed, [data] if data else [])


def _request_peer(app, node: str, url_path: str, headers: dict, body: RequestBody, timeout):
    """The peer's response to the PUT, headers read; 502/504 (naming what the peer kept) if it fails."""
    for attempt in (1, 2):
        try:
            return app.peers.request(node, "PUT", url_path, headers, body=iter(body), timeout=timeout)
        except BadGateway as error:
            # A pooled connection the peer closed fails before any body byte: safe to ask once more.
            if attempt == 1 and not body.received and isinstance(error.__cause__, ProtocolError):
                continue
            if body.done:
                raise BadGateway(f"Node {node} got the whole body but broke off before answering; "
                                 "it may or may not have stored the file.", code="peer_broken") from error
            if body.received:
                raise BadGateway(f"Node {node} broke off the upload after {body.received} bytes; "
                                 "it keeps nothing of it.", code="peer_broken") from error
            raise


def _send_to_peer(app, node: str, url_path: str, headers: dict, body: RequestBody, timeout):
    """PUT `body` to the peer: (status, headers to pass, body bytes); 502/504 when the peer fails."""
    response = _request_peer(app, node, url_path, headers, body, timeout)
    try:
        data = response.read()
    except (HTTPError, OSError) as exc:
        raise BadGateway(f"Node {node} broke off its answer to the upload.", code="peer_broken") from exc
    finally:
        response.release_conn()
    failure = peers.peer_failure(response, node)
    if failure is not None:
        raise failure
    passed = [(k, response.headers[k]) for k in PASSED_HEADERS if k in response.headers]
    return response.status, passed, data
