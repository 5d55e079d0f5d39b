"""This node's files: status and headers decided from the request and a stat, then streamed."""

from __future__ import annotations

import io
import mimetypes
import os
import secrets
import stat as stat_mod
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator
from urllib.parse import quote

from werkzeug.datastructures import Headers
from werkzeug.http import http_date, parse_date, parse_etags, parse_if_range_header, parse_range_header

from .errors import NotFound, PreconditionFailed, RangeNotSatisfiable
from .paths import read_error, resolve

# mimetypes reports .tar.gz as (tar, gzip); a download is the compressed file itself.
_ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                   "xz": "application/x-xz", "br": "application/x-brotli",
                   "compress": "application/x-compress"}
# A Range header with more parts than this is served whole (RFC 9110 §14.2 allows ignoring it).
MAX_RANGES = 64
# Set in the environ by a server whose wsgi.file_wrapper sends from the file's position and only
# Content-Length bytes (wsgi_stream's waitress channel): single ranges then go through it too.
FILE_WRAPPER_RANGES = "wsgi_stream.file_wrapper_ranges"


def file_etag(st: os.stat_result) -> str:
    """A strong ETag from inode, mtime and size: it changes whenever the file is replaced or written."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def content_type(name: str) -> str:
    """The media type guessed from the file name, octet-stream when unknown."""
    mtype, encoding = mimetypes.guess_type(name, strict=False)
    if encoding:
        return _ENCODING_TYPES.get(encoding, "application/octet-stream")
    if not mtype:
        return "application/octet-stream"
    if mtype.startswith("text/") or mtype in ("application/json", "application/javascript"):
        return f"{mtype}; charset=utf-8"
    return mtype


def _ascii(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c if c.isprintable() and c not in '"\\' else "_" for c in text)


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266)."""
    stem, ext = os.path.splitext(name)
    fallback = _ascii(name).strip()
    if not _ascii(stem).strip(" ._"):  # nothing left of a non-Latin name but its extension
        fallback = "download" + _ascii(ext)
    elif fallback.startswith(".") and not name.startswith("."):  # 日本.tar.gz: not a dot-file
        fallback = "download" + fallback
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def file_headers(name: str, st: os.stat_result) -> list[tuple[str, str]]:
    """The representation headers every answer about a file carries."""
    return [("Content-Type", content_type(name)),
            ("Content-Disposition", content_disposition(name)),
            ("ETag", file_etag(st)),
            ("Last-Modified", http_date(int(st.st_mtime))),
            ("Accept-Ranges", "bytes"),
            # Files here are logs that keep growing: a cache may keep a copy but must revalidate it.
            ("Cache-Control", "no-cache")]


def _mtime_after(st: os.stat_result, header: str | None) -> bool | None:
    """Whether the file changed after the HTTP date in `header`; None if absent or invalid."""
    date = parse_date(header) if header else None
    if date is None:
        return None
    return int(st.st_mtime) > date.timestamp()


def check_preconditions(method: str, headers: Headers, st: os.stat_result) -> int | None:
    """RFC 9110 §13.2.2 in order: 412 or 304 when a precondition says so, else None."""
    etag = file_etag(st)[1:-1]
    if "If-Match" in headers:
        tags = parse_etags(headers["If-Match"])
        if not (tags.star_tag or tags.contains(etag)):
            return 412
    elif _mtime_after(st, headers.get("If-Unmodified-Since")):
        return 412
    safe = method in ("GET", "HEAD")
    if "If-None-Match" in headers:
        tags = parse_etags(headers["If-None-Match"])
        if tags.star_tag or tags.contains_weak(etag):
            return 304 if safe else 412
    elif safe and _mtime_after(st, headers.get("If-Modified-Since")) is False:
        return 304
    return None


def _if_range_matches(headers: Headers, st: os.stat_result) -> bool:
    value = headers.get("If-Range")
    if not value:
        return True
    cond = parse_if_range_header(value)
    if cond.etag is not None:
        # Only a strong validator may pass If-Range (RFC 9110 §13.1.5).
        return not value.strip().startswith("W/") and cond.etag == file_etag(st)[1:-1]
    if cond.date is not None:
        return int(cond.date.timestamp()) == int(st.st_mtime)
    return False


def requested_ranges(headers: Headers, st: os.stat_result) -> list[tuple[int, int]] | None:
    """The byte ranges to send as [(start, stop)] (stop exclusive), None for the whole file."""
    value = headers.get("Range")
    if not value or not _if_range_matches(headers, st):
        return None
    parsed = parse_range_header(value)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) > MAX_RANGES:
        return None
    size = st.st_size
    ranges = []
    for start, stop in parsed.ranges:
        if start < 0:  # suffix range: the last -start bytes
            start, stop = max(size + start, 0), size
        else:
            stop = size if stop is None else min(stop, size)
        if start < stop:
            ranges.append((start, stop))
    if not ranges:
        raise RangeNotSatisfiable(f"The range is outside the file's {size} bytes.",
                                  headers=[("Content-Range", f"bytes */{size}")])
    return ranges


@dataclass
class FilePlan:
    """What to answer about a file: status, headers and which bytes go in the body."""

    status: int
    headers: list[tuple[str, str]]
    ranges: list[tuple[int, int]] = field(default_factory=list)
    boundary: str | None = None
    part_heads: list[bytes] = field(default_factory=list)


def plan_file_response(method: str, headers: Headers, name: str, st: os.stat_result) -> FilePlan:
    """Decide status, headers and byte ranges for GET/HEAD of a file, without any I/O."""
    base = file_headers(name, st)
    verdict = check_preconditions(method, headers, st)
    if verdict == 412:
        raise PreconditionFailed("The file does not match the request's preconditions.")
    if verdict == 304:
        keep = ("ETag", "Last-Modified", "Accept-Ranges", "Cache-Control")
        return FilePlan(304, [(k, v) for k, v in base if k in keep])
    ranges = requested_ranges(headers, st)
    size = st.st_size
    if ranges is None:
        return FilePlan(200, base + [("Content-Length", str(size))], [(0, size)])
    if len(ranges) == 1:
        (start, stop), = ranges
        return FilePlan(206, base + [("Content-Range", f"bytes {start}-{stop - 1}/{size}"),
                                     ("Content-Length", str(stop - start))], ranges)
    boundary = secrets.token_hex(16)
    ctype = content_type(name)
    heads = [(f"--{boundary}\r\nContent-Type: {ctype}\r\n"
              f"Content-Range: bytes {a}-{b - 1}/{size}\r\n\r\n").encode() for a, b in ranges]
    heads = [heads[0]] + [b"\r\n" + h for h in heads[1:]]
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = sum(len(h) + b - a for h, (a, b) in zip(heads, ranges)) + len(tail)
    multi = [(k, v) for k, v in base if k != "Content-Type"]
    multi += [("Content-Type", f"multipart/byteranges; boundary={boundary}"),
              ("Content-Length", str(length))]
    return FilePlan(206, multi, ranges, boundary, heads)


class TrackedFile(io.FileIO):
    """A file that reports how far it was read when the server closes it (for the access log)."""

    on_close: Callable[[int], None] | None = None
    origin = 0  # where the response's bytes start (a range)

    def close(self):
        if not self.closed and self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(self.tell() - self.origin)
        super().close()


def read_range(f, start: int, stop: int, chunk_size: int) -> Iterator[bytes]:
    """Yield the bytes [start, stop) of an open file in `chunk_size` blocks."""
    pos = start
    while pos < stop:
        data = os.pread(f.fileno(), min(chunk_size, stop - pos), pos)
        if not data:  # the file shrank under us: never pad, cut the response short
            raise OSError(f"file shrank while being sent ({pos} of {stop} bytes)")
        pos += len(data)
        yield data


def _plan_body(f, plan: FilePlan, chunk_size: int) -> Iterator[bytes]:
    try:
        if plan.boundary is None:
            (start, stop), = plan.ranges
            yield from read_range(f, start, stop, chunk_size)
            return
        for head, (start, stop) in zip(plan.part_heads, plan.ranges):
            yield head
            yield from read_range(f, start, stop, chunk_size)
        yield f"\r\n--{plan.boundary}--\r\n".encode()
    finally:
        f.close()


def open_file(root, rel: str):
    """Open the regular file `rel` under `root` for reading, with its stat; a JSON 4xx otherwise.

    Only regular files are ever opened: opening a FIFO blocks until a writer comes, opening a
    device talks to its driver. The stat before the open keeps those out; the open itself is
    non-blocking and does not follow a symlink swapped in meanwhile, and the descriptor's own
    fstat decides.
    """
    path = resolve(root, rel)
    try:
        if not stat_mod.S_ISREG(os.stat(path).st_mode):
            raise NotFound("No such file.")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise read_error(exc, "file") from None
    f = TrackedFile(fd, "r")
    st = os.fstat(fd)
    if not stat_mod.S_ISREG(st.st_mode):
        f.close()
        raise NotFound("No such file.")
    return f, st, path.name


def file_body(environ: dict, f: TrackedFile, plan: FilePlan, chunk_size: int) -> tuple[Iterable[bytes], bool]:
    """The body for `plan`, and whether it is the server's file_wrapper (whole files; single ranges where the server allows)."""
    if environ["REQUEST_METHOD"] == "HEAD" or plan.status == 304:
        f.close()
        return [], False
    wrapper = environ.get("wsgi.file_wrapper")
    if plan.status == 200 and wrapper is not None:
        return wrapper(f, chunk_size), True
    if plan.boundary is None and wrapper is not None and environ.get(FILE_WRAPPER_RANGES):
        (f.origin, _), = plan.ranges
        f.seek(f.origin)
        return wrapper(f, chunk_size), True
    return _plan_body(f, plan, chunk_size), False
