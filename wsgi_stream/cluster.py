"""Cluster downloads: one ZIP of a path from every node, planned before the first byte, then streamed.

A download has two halves. The plan asks every selected node, concurrently, what it has under the
path (this node from disk, peers through their listings) and fixes the members, their sizes and
ETags, hence the archive's exact length. The stream then copies each member from disk or from its
peer, resuming a broken peer stream with Range + If-Range; whatever cannot be made to match the
plan cuts the client's connection (StreamBroken) instead of sending a wrong archive.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from bisect import bisect_right
from json.encoder import encode_basestring
from typing import Iterable, Iterator, Sequence

from werkzeug.datastructures import EnvironHeaders
from werkzeug.http import http_date, parse_range_header

from . import listing, local
from .batch import BATCHED_SIZE, PeerFiles, Wanted, single_file
from .config import LocalNode
from .crc import CrcCache, RunningCrc, file_key
from .errors import ApiError, BadGateway, NotFound, RangeNotSatisfiable, StreamBroken
from .memory import release_memory
from .paths import clean_relpath
from .peers import PeerClient, TooSlow, quote_path
from .plan import (
    EVERYTHING,
    FileItem,
    NodeResult,
    check_found,
    plan_cluster,
    refused,
    select_nodes,
)
from .portable import check_segments
from .replies import status_line, wsgi_error
from .selection import Selection, pick_entries
from .zipfmt import Member, ZipLayout, check_name

log = logging.getLogger("wsgi_stream.cluster")

REPORT_NAME = "_cluster.json"
REPORT_BLOCK = 64 * 1024
BIG_PLAN = 10_000  # members; after an archive this big, freed memory is handed back to the system

# -- the members' bytes --------------------------------------------------------------------------

def local_chunks(here: LocalNode, item: FileItem, offset: int = 0, keys: dict | None = None) -> Iterator[bytes]:
    """The bytes of this node's file `item` from `offset`, provided it is still the file that was planned.

    `keys`: where to note the file's content key (crc.file_key) once all went well, by its path.
    """
    try:
        f, st, _ = local.open_file(here.root, item.path)
    except ApiError as exc:  # gone, or no longer readable
        raise StreamBroken(f"{item.member} disappeared after the plan ({exc.message})") from None
    try:
        if local.file_etag(st) != item.etag:
            raise StreamBroken(f"{item.member} changed after the plan")
        try:
            yield from local.read_range(f, offset, item.size, here.chunk_size)
        except OSError as exc:
            raise StreamBroken(f"{item.member}: {exc}") from exc
        st = os.fstat(f.fileno())
        if local.file_etag(st) != item.etag:
            raise StreamBroken(f"{item.member} changed while being sent")
        if keys is not None:
            keys[item.path] = file_key(st)
    finally:
        f.close()


# -- _cluster.json -------------------------------------------------------------------------------

# What json.dumps(text, ensure_ascii=False) gives for a str, without making an encoder per call.
_json_text = encode_basestring


def _report_pieces(path: str | None, selection: Selection, results: list[NodeResult],
                   generated: list[tuple[str, int | None]], crc_of, size_of) -> Iterator[bytes]:
    """The report, piece by piece; `crc_of(i)`/`size_of(i, size)` by member index.

    CRCs are written as 8 hex digits, so the report's length does not depend on them.
    """
    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    index = 0
    yield f'{{"path": {dump(path)},\n "selection": {dump(selection.describe())},\n "nodes": {{'.encode()
    for i, r in enumerate(results):
        yield (f'{"," if i else ""}\n  {dump(r.node)}: {{"status": {dump(r.status)}, '
               f'"message": {dump(r.message)}, "files": [').encode()
        files, renamed = r.files, r.files.renamed
        for j, (path, size) in enumerate(zip(files.paths, files.sizes)):
            original = f"{r.node}/{path}"
            member = renamed.get(j) or original
            original = f', "original_name": {_json_text(original)}' if member != original else ""
            line = (f'{"," if j else ""}\n    {{"name": {_json_text(member)}{original}, "size": {size}, '
                    f'"crc32": "{crc_of(index):08x}"}}')
            index += 1
            yield line.encode()
        yield f'], "errors": {dump(r.errors)}}}'.encode()
    yield b'},\n "generated": ['
    for j, (name, size) in enumerate(generated):
        line = (f'{"," if j else ""}\n  {{"name": {dump(name)}, "size": {size_of(index, size)}, '
                f'"crc32": "{crc_of(index):08x}"}}')
        index += 1
        yield line.encode()
    yield b"]}\n"


# -- the archive ---------------------------------------------------------------------------------

# Bumped whenever the bytes an unchanged plan gives would change (the archive's ETag covers it).
LAYOUT_VERSION = "wsgi_stream-zip-3"  # 3: portable member names, original_name in the report


def archive_range(headers, length: int | None, etag: str | None) -> tuple[int, int] | None:
    """The single byte range [start, stop) to send of an archive, None for all of it; 416 if unsatisfiable.

    Only a strong ETag in If-Range lets a range through: an archive's Last-Modified (its newest
    member's time) would not change if an older file replaced one, so a date could splice two
    different archives.
    """
    value = headers.get("Range")
    if not value or length is None or etag is None:
        return None
    if_range = headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return None
    parsed = parse_range_header(value)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        return None  # RFC 9110 §14.2: a server may ignore a Range; several ranges of a ZIP make no sense
    (start, stop), = parsed.ranges
    if start < 0:
        start, stop = max(length + start, 0), length
    else:
        stop = length if stop is None else min(stop, length)
    if start >= stop:
        raise RangeNotSatisfiable(f"The range is outside the archive's {length} bytes.",
                                  headers=[("Content-Range", f"bytes */{length}")])
    return start, stop


class ClusterArchive:
    """A cluster ZIP: each selected node's files under `path`, added members, then `_cluster.json`.

    Planning happens in the constructor (ApiError: 404 nobody has it, 502 strict and a node failed),
    so an embedding application can still answer with an error before the first byte. `path=None`
    asks no node: the archive holds only the added members and the report.

    Every byte of a stored archive is fixed by the plan (zipfmt.py), so it has a strong ETag and
    any byte range of it can be made again later: `body(start, stop)`. CRC-32s the archive learns
    go into `crcs`, keyed by (node, path, ETag), so a resumed download need not read again what
    went out before.
    """

    def __init__(self, here: LocalNode, peers: PeerClient, path: str | None = "",
                 nodes: Iterable[str] | None = None, *, deflate: bool = False, strict: bool = False,
                 selection: Selection = EVERYTHING, crcs: CrcCache | None = None):
        self.here, self.peers, self.selection, self.deflate = here, peers, selection, deflate
        self.crcs = CrcCache() if crcs is None else crcs
        self.path = None if path is None else clean_relpath(path)
        names = select_nodes(peers.names, nodes)
        self.results = [] if self.path is None else plan_cluster(here, peers, self.path, names, selection,
                                                                 self.crcs)
        if self.path is not None:
            check_found(self.results, repr(self.path) if self.path else "the root folder")
            if selection.active and not any(r.files for r in self.results):
                raise NotFound("No file matches the selection.", code="nothing_selected")
        if strict and any(r.failed for r in self.results):
            detail = "; ".join(f"{r.node}: {r.message or 'entries left out'}" for r in self.results if r.failed)
            raise BadGateway(f"Not every node could deliver ({detail}).", code="nodes_failed")
        # Member i is file i - starts[n] of the n-th node with files; `following` is the next such node.
        self._holders = [r for r in self.results if r.files]
        self._starts, count = [], 0
        for r in self._holders:
            self._starts.append(count)
            count += len(r.files)
        self._count = count
        if count >= BIG_PLAN:
            release_memory()  # the listings' transient objects, before the stream's own begin
        self._following = {a.node: b.node for a, b in zip(self._holders, self._holders[1:])}
        # One reader per peer: its files come through few batch requests, in archive order.
        self._readers = {r.node: PeerFiles(peers, r.node, r.files.wanted(), here.chunk_size)
                         for r in self._holders if r.node != here.name}
        self._generated: list[tuple[str, Iterable[bytes], int | None, float | None]] = []
        self._layout: ZipLayout | None = None
        self._etag: str | None = None
        self._local_keys: dict[str, tuple] = {}
        # The report's own time is the newest member's: fixed by the plan, like its content.
        self.modified = max((m for r in self._holders for m in r.files.mtimes if not math.isnan(m)), default=0.0)

    def _item(self, index: int) -> tuple[NodeResult, int]:
        """(its node's result, its place in that node's files) of planned file `index`."""
        return _locate(self._holders, self._starts, index)

    def _is_member(self, name: str) -> bool:
        node, _, path = name.partition("/")
        for r in self._holders:
            files = r.files
            if r.node == node:
                k = bisect_right(files.paths, path) - 1
                if k >= 0 and files.paths[k] == path and files.member(k) == name:
                    return True
            if name in files.renamed.values():
                return True
        return False

    # -- building ------------------------------------------------------------------------------------

    def add(self, name: str, chunks: Iterable[bytes], size: int | None = None, mtime: float | None = None) -> None:
        """Add a generated member `name` (e.g. "status/service.txt"); without `size`, no Content-Length."""
        if self._layout is not None:
            raise RuntimeError("the archive is already complete")
        if name == REPORT_NAME:
            raise ValueError(f"{REPORT_NAME} is written by the archive itself")
        check_name(name)
        if self._is_member(name) or any(name == other for other, _, _, _ in self._generated):
            raise ValueError(f"duplicate member name {name!r}")
        if size is not None and size < 0:
            raise ValueError("negative size")
        self._generated.append((name, chunks, size, mtime))

    @property
    def layout(self) -> ZipLayout:
        """The archive's layout; fixed (no more `add`) once asked for."""
        if self._layout is None:
            report_size = None if any(size is None for _, _, size, _ in self._generated) \
                else sum(map(len, self._report_pieces(lambda i: 0, lambda i, size: size)))
            members = _Members(self._holders, self._starts, self._count, self.crcs, self._generated,
                               Member(REPORT_NAME, report_size, self.modified))
            self._layout = ZipLayout(members, self.deflate, unique=True)
        return self._layout

    @property
    def length(self) -> int | None:
        """The archive's exact length, None when deflated or a member's size is unknown."""
        return self.layout.length

    @property
    def etag(self) -> str | None:
        """A strong ETag fixed by the plan; None when the bytes are not (deflated, or generated members)."""
        if self.deflate or self._generated or self.length is None:
            return None
        if self._etag is None:
            self._etag = f'"zip-{self._plan_digest()[:40]}"'
        return self._etag

    def _plan_digest(self) -> str:
        digest = hashlib.sha256()

        def feed(value) -> None:
            digest.update(json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n")

        feed([LAYOUT_VERSION, time.tzname, time.timezone, time.altzone, self.path, self.selection.describe()])
        for r in self.results:
            feed([r.node, r.status, r.message, r.errors, len(r.files)])
            files = r.files  # a column at a time: one C call each, not one per file
            feed(files.paths)
            feed(files.etags)
            digest.update(files.sizes.tobytes() + files.mtimes.tobytes())
        return digest.hexdigest()

    # -- answering -----------------------------------------------------------------------------------

    def headers(self, filename: str | None = None, byte_range: tuple[int, int] | None = None) -> list[tuple[str, str]]:
        """The response headers (of the part `byte_range` when given): type, name, validators, length."""
        if filename is None:
            filename = f"{(self.path or 'root').rsplit('/', 1)[-1]}-cluster.zip"
        etag, length = self.etag, self.length
        headers = [("Content-Type", "application/zip"),
                   ("Content-Disposition", local.content_disposition(filename)),
                   ("Cache-Control", "no-store"), ("Accept-Ranges", "bytes" if etag else "none")]
        if etag:
            headers += [("ETag", etag), ("Last-Modified", http_date(int(self.modified)))]
        if byte_range is not None:
            start, stop = byte_range
            headers += [("Content-Range", f"bytes {start}-{stop - 1}/{length}"), ("Content-Length", str(stop - start))]
        elif length is not None:
            headers.append(("Content-Length", str(length)))
        return headers

    def answer(self, method: str, request_headers) -> tuple[int, list[tuple[str, str]], Iterable[bytes]]:
        """(status, headers, body) for a GET or HEAD with `request_headers` (Range, If-Range honoured)."""
        try:
            byte_range = archive_range(request_headers, self.length, self.etag)
        except RangeNotSatisfiable:
            self.close()
            raise
        status = 200 if byte_range is None else 206
        headers = self.headers(byte_range=byte_range)
        if method == "HEAD":
            self.close()
            return status, headers, []
        start, stop = byte_range or (0, self.length)
        return status, headers, _started(self.body(start, stop))

    def __call__(self, environ, start_response):
        """Answer a WSGI request with the archive (HEAD: the headers only; Range and If-Range honoured)."""
        try:
            status, headers, body = self.answer(environ.get("REQUEST_METHOD", "GET"), EnvironHeaders(environ))
        except ApiError as error:
            return wsgi_error(error, start_response)
        start_response(status_line(status), headers)
        return body

    def body(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The archive's bytes [start, stop); anything that would make them differ from the plan: StreamBroken."""
        layout = self.layout
        stop = layout.length if stop is None else stop
        if start and self.etag is None:
            raise ValueError("only an archive with an ETag can be sent from the middle")
        return self._body(start, stop)

    def _body(self, start: int, stop: int | None) -> Iterator[bytes]:
        expected = None if stop is None else stop - start
        sent, held = 0, None
        try:
            # One block is held back so that a wrong total is caught before the last byte goes out.
            for chunk in self.layout.body(self._read_member, self._crc_of, start, self._learn):
                if expected is not None and sent + len(chunk) >= expected:
                    chunk = chunk[:expected - sent]
                if held is not None:
                    yield held
                held = chunk
                sent += len(chunk)
                if expected is not None and sent >= expected:
                    break
            if expected is not None and sent != expected:
                raise StreamBroken(f"archive came out at {sent} bytes instead of {expected}")
            if held is not None:
                yield held
        except StreamBroken:
            raise
        except Exception as exc:  # MemberChanged and the like: the plan no longer holds
            raise StreamBroken(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.close()

    def close(self) -> None:
        """Close every peer response still open (the client went away, or a member failed)."""
        for reader in self._readers.values():
            reader.close()
        if self._count >= BIG_PLAN:
            release_memory()

    # -- the members' bytes, for the layout ----------------------------------------------------------

    def _read_member(self, index: int, offset: int) -> Iterable[bytes]:
        items, generated = self._count, len(self._generated)
        if index < items:
            return self._item_bytes(index, offset)
        if index < items + generated:
            if offset:
                raise RuntimeError("a generated member is read once, from its start")
            return self._generated[index - items][1]
        return self._report(offset)

    def _item_bytes(self, index: int, offset: int) -> Iterator[bytes]:
        r, k = self._item(index)
        next_node = self._following.get(r.node)
        if next_node in self._readers:
            # The next node's first bytes start on their way while this node's stream.
            self._start_early(next_node)
        if r.node == self.here.name:
            yield from local_chunks(self.here, r.files[k], offset, self._local_keys)
        else:
            yield from self._readers[r.node].read(k, offset)

    def _start_early(self, node: str) -> None:
        reader = self._readers[node]
        if reader.position is not None:
            return
        try:
            reader.start()
        except Exception as exc:  # its own read will ask again and report
            log.info("could not start reading node %s early: %s", node, exc)

    def _crc_of(self, index: int) -> int:
        """The CRC-32 of a member a resumed download skipped: remembered, or read again."""
        if index == self._count + len(self._generated):
            running = RunningCrc()
            for block in self._report():
                running.update(block)
            return running.value
        if index >= self._count:
            raise RuntimeError("a generated member is read once, from its start")
        r, k = self._item(index)
        item = r.files[k]
        running = RunningCrc()
        if item.node == self.here.name:
            chunks = local_chunks(self.here, item, 0, self._local_keys)
        else:
            chunks = single_file(self.peers, item.node, Wanted(item.path, item.etag, item.size), 0,
                                 self.here.chunk_size)
        for data in chunks:
            running.update(data)
        self._learn(index, running.value)
        return running.value

    def _learn(self, index: int, crc: int) -> None:
        """Remember a CRC no node will list next time: of this node's files, and of big files of peers.

        This node's files are remembered by their content's key, which its listings and walks look
        up. A peer remembers the small files it sends in batches and lists their CRCs itself; a
        big one it sent with sendfile(), unread, so the gateway keeps that one by (node, path, ETag).
        """
        if index >= self._count:
            return
        r, k = self._item(index)
        path, etag = r.files.paths[k], r.files.etags[k]
        if r.node == self.here.name:
            key = self._local_keys.pop(path, None)  # noted by local_chunks as the file was read
            if key is not None:
                self.crcs.put(key, crc)
        elif r.files.sizes[k] > BATCHED_SIZE:
            self.crcs.put((r.node, path, etag), crc)

    # -- _cluster.json -------------------------------------------------------------------------------

    def _report(self, skip: int = 0) -> Iterator[bytes]:
        """The report from byte `skip`, made as it goes in blocks of about 64 KiB (100,000 files: 10 MB)."""
        layout = self.layout

        def crc_of(index):
            return layout.crc(index, self._crc_of) if index < self._count else layout.crcs.get(index, 0)

        def size_of(index, size):
            return size if size is not None else layout.written_sizes.get(index, 0)

        pending, length = [], 0
        for piece in self._report_pieces(crc_of, size_of):
            if skip >= len(piece):
                skip -= len(piece)
                continue
            pending.append(piece[skip:])
            length += len(piece) - skip
            skip = 0
            if length >= REPORT_BLOCK:
                yield b"".join(pending)
                pending, length = [], 0
        if pending:
            yield b"".join(pending)

    def _report_pieces(self, crc_of, size_of) -> Iterator[bytes]:
        return _report_pieces(self.path, self.selection, self.results,
                              [(name, size) for name, _, size, _ in self._generated], crc_of, size_of)


class _Started:
    """A body whose first block is already made, so that failing to start is still an HTTP error."""

    def __init__(self, first: bytes, rest: Iterator[bytes]):
        self.first, self.rest = first, rest

    def __iter__(self) -> Iterator[bytes]:
        if self.first:
            yield self.first
        yield from self.rest

    def close(self) -> None:
        self.rest.close()


def _locate(holders: list[NodeResult], starts: list[int], index: int) -> tuple[NodeResult, int]:
    n = bisect_right(starts, index) - 1
    return holders[n], index - starts[n]


class _Members(Sequence):
    """An archive's members made on demand from its plan: a 100,000-file plan holds no Member objects.

    It refers to the plan, not to the archive: a cycle would keep a finished archive's plan in
    memory until the garbage collector's rare full pass.
    """

    def __init__(self, holders: list[NodeResult], starts: list[int], planned: int, crcs: CrcCache,
                 generated: list, report: Member):
        self.holders, self.starts, self.planned, self.crcs = holders, starts, planned, crcs
        self.generated, self.report = generated, report
        self.count = planned + len(generated)
        self.last: tuple[int, Member | None] = (-1, None)

    def __len__(self) -> int:
        return self.count + 1

    def member(self, index: int) -> Member:
        if index >= self.planned:
            name, _, size, mtime = self.generated[index - self.planned]
            return Member(name, size, mtime)
        r, k = _locate(self.holders, self.starts, index)
        files = r.files
        crc = files.crcs[k] if files.crcs[k] >= 0 else None
        if crc is None and files.sizes[k] > BATCHED_SIZE:  # the only ones kept by (node, path, ETag)
            crc = self.crcs.get((r.node, files.paths[k], files.etags[k]))
        return Member(files.member(k), files.sizes[k], files.mtime(k), crc)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index <= self.count:
            raise IndexError(index)
        if index == self.count:
            return self.report
        if self.last[0] != index:  # the stream asks for the member it is writing several times
            self.last = (index, self.member(index))
        return self.last[1]


def _started(body: Iterator[bytes]) -> _Started:
    """`body` with its first block made now: a failure there is a 503 JSON answer, not a cut."""
    try:
        first = next(body, b"")
    except StreamBroken as exc:
        raise ApiError(f"The archive could not be started: {exc}. Try again.", status=503,
                       code="archive_not_started", headers=[("Retry-After", "1")]) from exc
    return _Started(first, body)


# -- merged listings ------------------------------------------------------------------------------

def _list_node(here: LocalNode, peers: PeerClient, node: str, rel: str,
               selection: Selection) -> tuple[NodeResult, list, list]:
    """(result, entries, skipped) of directory `rel` on `node`; a result not ok says why."""
    try:
        if node == here.name:
            entries, skipped = listing.scan(here.root, rel)
            return NodeResult(node, "ok"), pick_entries(entries, rel, selection), skipped
        query = selection.query()
        document = peers.get_json(node, "/list/" + quote_path(rel) + (f"?{query[1:]}" if query else ""),
                                  timeout=peers.planning_timeout)
    except ApiError as exc:
        return refused(node, exc, own_words=True), [], []
    except Exception as exc:
        log.exception("listing %r on node %s", rel, node)
        return NodeResult(node, "error", f"Unexpected error asking node {node}: {type(exc).__name__}."), [], []
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return NodeResult(node, "error", f"Node {node} sent a listing without entries."), [], []
    skipped = document.get("skipped")
    return NodeResult(node, "ok"), pick_entries(entries, rel, selection), skipped if isinstance(skipped, list) else []


def _usable_entry(entry, rel: str) -> bool:
    if not isinstance(entry, dict) or entry.get("type") not in ("file", "dir"):
        return False
    name = entry.get("name")
    try:
        check_segments(name)
    except ValueError:
        return False
    return "/" not in name and entry.get("path") == (f"{rel}/{name}" if rel else name)


def merge_listings(rel: str, answers: list[tuple[str, str, object]], skipped: dict | None = None) -> dict:
    """The merged listing document from each node's (name, status, entries or message).

    `skipped`: {node: what its listing skipped}, shown under that node when not empty.
    """
    nodes, merged = {}, {}
    for node, status, value in answers:
        nodes[node] = {"status": status} if status == "ok" else {"status": status, **value}
        if (skipped or {}).get(node):
            nodes[node]["skipped"] = skipped[node]
        if status != "ok":
            continue
        for entry in value:
            if not _usable_entry(entry, rel):
                log.warning("node %s listed an unusable entry under %r; left out", node, rel)
                continue
            key = (entry["name"], entry["type"])
            row = merged.setdefault(key, {"name": entry["name"], "path": entry["path"],
                                          "type": entry["type"], "nodes": {}})
            row["nodes"][node] = {k: entry[k] for k in ("size", "mtime", "etag") if k in entry} \
                if entry["type"] == "file" else {}
    return {"path": rel, "nodes": nodes, "entries": [merged[k] for k in sorted(merged)]}


def cluster_listing(here: LocalNode, peers: PeerClient, path: str, nodes: Iterable[str] | None = None,
                    selection: Selection = EVERYTHING) -> dict:
    """The listings of folder `path` on every selected node, merged by name; 404/502 if none has it."""
    rel = clean_relpath(path)
    names = select_nodes(peers.names, nodes)
    asked = peers.each(lambda node: _list_node(here, peers, node, rel, selection), names, peers.config.plan_timeout)
    answers = [(NodeResult(node, "error", str(a)), [], []) if isinstance(a, TooSlow) else a
               for node, a in zip(names, asked)]
    check_found([result for result, _, _ in answers], f"the folder {rel or '/'!r}")
    return merge_listings(rel, [(r.node, r.status, entries if r.status == "ok" else {"message": r.message})
                                for r, entries, _ in answers],
                          {r.node: skipped for r, _, skipped in answers})
