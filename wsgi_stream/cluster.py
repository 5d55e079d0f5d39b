"""Cluster downloads: one ZIP of a path from every node, planned before the first byte, then streamed.

A download has two halves. The plan asks every selected node, concurrently, what it has under the
path (this node from disk, peers through their listings) and fixes the members, their sizes and
ETags, hence the archive's exact length. The stream then copies each member from disk or from its
peer, resuming a broken peer stream with Range + If-Range; whatever cannot be made to match the
plan cuts the client's connection (StreamBroken) instead of sending a wrong archive.
"""

from __future__ import annotations

import json
import logging
import os
import stat as stat_mod
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from werkzeug.http import parse_date

from . import listing, local
from .config import LocalNode
from .errors import ApiError, BadGateway, NotFound, StreamBroken
from .paths import clean_relpath, resolve
from .batch import PeerFiles, Wanted
from .peers import PeerClient, TooSlow, quote_path
from .selection import Selection, below, pick_entries
from .zipfmt import StreamingZip, check_name

log = logging.getLogger("wsgi_stream.cluster")

REPORT_NAME = "_cluster.json"
EVERYTHING = Selection()


@dataclass(slots=True)
class FileItem:
    """One file of one node as planned: where it is, what it is, and its name in the archive."""

    node: str
    path: str
    size: int
    mtime: float | None
    etag: str

    @property
    def member(self) -> str:
        return f"{self.node}/{self.path}"


@dataclass
class NodeResult:
    """What one node has under the path: status `ok`, `missing` or `error`, and its usable files."""

    node: str
    status: str
    message: str | None = None
    files: list[FileItem] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)  # entries left out: {"name", "message"}

    @property
    def failed(self) -> bool:
        return self.status == "error" or bool(self.errors)


# -- the request's options -----------------------------------------------------------------------

def select_nodes(known: list[str], wanted: Iterable[str] | None) -> list[str]:
    """The `wanted` nodes in config order (all when None); 404 for a name not in `known`."""
    if wanted is None:
        return list(known)
    wanted = set(wanted)
    for name in sorted(wanted - set(known)):
        raise NotFound(f"No node called {name!r} in this cluster.", code="unknown_node")
    return [name for name in known if name in wanted]


# -- the plan ------------------------------------------------------------------------------------

def _printable(value) -> str:
    # A name from a peer may hold lone surrogates; the report must still encode as UTF-8.
    text = value if isinstance(value, str) else repr(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _strong_etag(value) -> bool:
    return isinstance(value, str) and len(value) >= 2 and value.startswith('"') and value.endswith('"')


def _collect(result: NodeResult, entries: Iterable, prefix: str, selection: Selection = EVERYTHING) -> NodeResult:
    """Keep the entries that are usable files with safe names and `selection` picks; report bad ones."""
    seen = set()
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("type", "file") != "file":
            continue
        path, size, etag, mtime = entry.get("path"), entry.get("size"), entry.get("etag"), entry.get("mtime")
        try:
            if not isinstance(path, str) or not (path == prefix or path.startswith(prefix + "/") or not prefix):
                raise ValueError("not under the requested path")
            check_name(f"{result.node}/{path}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError("no valid size")
            if not _strong_etag(etag):
                raise ValueError("no strong ETag")
            if path in seen:
                raise ValueError("listed twice")
        except ValueError as exc:
            result.errors.append({"name": _printable(path), "message": f"left out: {exc}"})
            continue
        seen.add(path)
        ok_mtime = isinstance(mtime, (int, float)) and not isinstance(mtime, bool)
        if not selection.picks(below(path, prefix), size, float(mtime) if ok_mtime else None):
            continue
        result.files.append(FileItem(result.node, path, size, float(mtime) if ok_mtime else None, etag))
    result.files.sort(key=lambda item: item.path)
    return result


def plan_local(here: LocalNode, rel: str, selection: Selection = EVERYTHING) -> NodeResult:
    """What this node has under `rel`, from its disk."""
    result = NodeResult(here.name, "ok")
    try:
        target = resolve(here.root, rel)
        st = os.stat(target)
    except (NotFound, FileNotFoundError, NotADirectoryError):
        return NodeResult(here.name, "missing", "No such file or directory.")
    if stat_mod.S_ISDIR(st.st_mode):
        return _collect(result, listing.walk_files(here.root, rel), rel, selection)
    if not stat_mod.S_ISREG(st.st_mode):
        return NodeResult(here.name, "missing", "No such file or directory.")
    entry = {"path": rel, "size": st.st_size, "mtime": st.st_mtime, "etag": local.file_etag(st)}
    return _collect(result, [entry], rel, selection)


def _peer_file(peers: PeerClient, node: str, rel: str, selection: Selection) -> NodeResult:
    with peers.open(node, "HEAD", "/files/" + quote_path(rel), timeout=peers.planning_timeout) as response:
        if response.status == 404:
            return NodeResult(node, "missing", "No such file or directory.")
        if response.status != 200:
            return NodeResult(node, "error", f"Node {node} answered {response.status} for the file.")
        headers = response.headers
        try:
            size = int(headers.get("Content-Length", ""))
        except ValueError:
            return NodeResult(node, "error", f"Node {node} sent no valid Content-Length.")
        modified = parse_date(headers.get("Last-Modified"))
        entry = {"path": rel, "size": size, "etag": headers.get("ETag"),
                 "mtime": modified.timestamp() if modified else None}
        return _collect(NodeResult(node, "ok"), [entry], rel, selection)


def plan_peer(peers: PeerClient, node: str, rel: str, selection: Selection = EVERYTHING) -> NodeResult:
    """What peer `node` has under `rel`: its recursive listing, or else HEAD of the file."""
    try:
        document = peers.get_json(node, "/list/" + quote_path(rel) + "?recursive=1" + selection.query(),
                                  timeout=peers.planning_timeout)
    except ApiError as exc:
        if exc.status != 404:
            return NodeResult(node, "error", exc.message)
    else:
        entries = document.get("entries") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            return NodeResult(node, "error", f"Node {node} sent a listing without entries.")
        return _collect(NodeResult(node, "ok"), entries, rel, selection)
    if not rel:
        return NodeResult(node, "missing", "No such directory.")
    try:
        return _peer_file(peers, node, rel, selection)
    except ApiError as exc:
        return NodeResult(node, "error", exc.message)


def _plan_node(here: LocalNode, peers: PeerClient, node: str, rel: str, selection: Selection) -> NodeResult:
    try:
        if node == here.name:
            return plan_local(here, rel, selection)
        return plan_peer(peers, node, rel, selection)
    except Exception as exc:  # one node's surprise must not sink the others
        log.exception("planning %r on node %s", rel, node)
        return NodeResult(node, "error", f"Unexpected error asking node {node}: {type(exc).__name__}.")


def plan_cluster(here: LocalNode, peers: PeerClient, rel: str, nodes: list[str],
                 selection: Selection = EVERYTHING) -> list[NodeResult]:
    """Ask every node in `nodes` concurrently what it has under `rel`; a node past the budget is an error."""
    answers = peers.each(lambda node: _plan_node(here, peers, node, rel, selection), nodes,
                         peers.config.plan_timeout)
    return [NodeResult(node, "error", str(a)) if isinstance(a, TooSlow) else a for node, a in zip(nodes, answers)]


def _check_found(results: list, what: str) -> None:
    """404 if every node lacks `what`, 502 if none has it and some could not be asked."""
    if any(r.status == "ok" for r in results):
        return
    failed = [r for r in results if r.status == "error"]
    if failed:
        detail = "; ".join(f"{r.node}: {r.message}" for r in failed)
        raise BadGateway(f"No node that answered has {what}, and some could not be asked ({detail}).",
                         code="nodes_failed")
    raise NotFound(f"No node has {what}.")


# -- the members' bytes --------------------------------------------------------------------------

def local_chunks(here: LocalNode, item: FileItem) -> Iterator[bytes]:
    """The bytes of this node's file `item`, provided it is still the file that was planned."""
    try:
        f, st, _ = local.open_file(here.root, item.path)
    except NotFound:
        raise StreamBroken(f"{item.member} disappeared after the plan") from None
    try:
        if local.file_etag(st) != item.etag:
            raise StreamBroken(f"{item.member} changed after the plan")
        try:
            yield from local.read_range(f, 0, item.size, here.chunk_size)
        except OSError as exc:
            raise StreamBroken(f"{item.member}: {exc}") from exc
        if local.file_etag(os.fstat(f.fileno())) != item.etag:
            raise StreamBroken(f"{item.member} changed while being sent")
    finally:
        f.close()


# -- _cluster.json -------------------------------------------------------------------------------

def _report_pieces(path: str | None, selection: Selection, results: list[NodeResult],
                   generated: list[tuple[str, int | None]], crc_hex, size_of) -> Iterator[bytes]:
    """The report, piece by piece; with CRCs as 8 hex digits its length does not depend on them."""
    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    yield f'{{"path": {dump(path)},\n "selection": {dump(selection.describe())},\n "nodes": {{'.encode()
    for i, r in enumerate(results):
        yield (f'{"," if i else ""}\n  {dump(r.node)}: {{"status": {dump(r.status)}, '
               f'"message": {dump(r.message)}, "files": [').encode()
        for j, item in enumerate(r.files):
            line = (f'{"," if j else ""}\n    {{"name": {dump(item.member)}, "size": {item.size}, '
                    f'"crc32": "{crc_hex(item.member)}"}}')
            yield line.encode()
        yield f'], "errors": {dump(r.errors)}}}'.encode()
    yield b'},\n "generated": ['
    for j, (name, size) in enumerate(generated):
        line = (f'{"," if j else ""}\n  {{"name": {dump(name)}, "size": {size_of(name, size)}, '
                f'"crc32": "{crc_hex(name)}"}}')
        yield line.encode()
    yield b"]}\n"


# -- the archive ---------------------------------------------------------------------------------

class ClusterArchive:
    """A cluster ZIP: each selected node's files under `path`, added members, then `_cluster.json`.

    Planning happens in the constructor (ApiError: 404 nobody has it, 502 strict and a node failed),
    so an embedding application can still answer with an error before the first byte. `path=None`
    asks no node: the archive holds only the added members and the report.
    """

    def __init__(self, here: LocalNode, peers: PeerClient, path: str | None = "",
                 nodes: Iterable[str] | None = None, *, deflate: bool = False, strict: bool = False,
                 selection: Selection = EVERYTHING):
        self.here, self.peers, self.selection = here, peers, selection
        self.path = None if path is None else clean_relpath(path)
        self.created = time.time()
        names = select_nodes(peers.names, nodes)
        self.results = [] if self.path is None else plan_cluster(here, peers, self.path, names, selection)
        if self.path is not None:
            _check_found(self.results, repr(self.path) if self.path else "the root folder")
            if selection.active and not any(r.files for r in self.results):
                raise NotFound("No file matches the selection.", code="nothing_selected")
        if strict and any(r.failed for r in self.results):
            detail = "; ".join(f"{r.node}: {r.message or 'entries left out'}" for r in self.results if r.failed)
            raise BadGateway(f"Not every node could deliver ({detail}).", code="nodes_failed")
        self._zip = StreamingZip(deflate=deflate)
        self._generated: list[tuple[str, int | None]] = []
        # One reader per peer: its files come through few batch requests, in archive order.
        self._readers = {r.node: PeerFiles(peers, r.node, [Wanted(f.path, f.etag, f.size) for f in r.files],
                                           here.chunk_size)
                         for r in self.results if r.node != here.name and r.files}
        self._finished = False
        with_files = [r.node for r in self.results if r.files]
        for result in self.results:
            after = with_files[with_files.index(result.node) + 1:] if result.files else []
            for index, item in enumerate(result.files):
                chunks = self._member_chunks(item, index, after[0] if index == 0 and after else None)
                self._zip.add(item.member, chunks, item.size, item.mtime)

    def _member_chunks(self, item: FileItem, index: int, next_node: str | None) -> Iterator[bytes]:
        if next_node in self._readers:
            # The next node's first bytes start on their way while this node's stream.
            self._start_early(next_node)
        if item.node == self.here.name:
            yield from local_chunks(self.here, item)
        else:
            yield from self._readers[item.node].read(index)

    def _start_early(self, node: str) -> None:
        try:
            self._readers[node].start()
        except Exception as exc:  # its own read will ask again and report
            log.info("could not start reading node %s early: %s", node, exc)

    def add(self, name: str, chunks: Iterable[bytes], size: int | None = None, mtime: float | None = None) -> None:
        """Add a generated member `name` (e.g. "status/service.txt"); without `size`, no Content-Length."""
        if self._finished:
            raise RuntimeError("the archive is already complete")
        if name == REPORT_NAME:
            raise ValueError(f"{REPORT_NAME} is written by the archive itself")
        self._zip.add(name, chunks, size, mtime)
        self._generated.append((name, size))

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        pieces = _report_pieces(self.path, self.selection, self.results, self._generated, lambda name: "00000000",
                                lambda name, size: size)
        size = None if any(s is None for _, s in self._generated) else sum(map(len, pieces))
        self._zip.add(REPORT_NAME, self._report(), size, self.created)

    def _report(self) -> Iterator[bytes]:
        def crc_hex(name):
            return f"{self._zip.crc32(name):08x}"

        def size_of(name, size):
            return size if size is not None else self._zip.written_size(name)

        yield from _report_pieces(self.path, self.selection, self.results, self._generated, crc_hex, size_of)

    @property
    def length(self) -> int | None:
        """The archive's exact length, None when deflated or a member's size is unknown."""
        self._finish()
        return self._zip.length

    def headers(self, filename: str | None = None) -> list[tuple[str, str]]:
        """The response headers: type, attachment name (`<last segment>-cluster.zip`), length if known."""
        if filename is None:
            filename = f"{(self.path or 'root').rsplit('/', 1)[-1]}-cluster.zip"
        headers = [("Content-Type", "application/zip"),
                   ("Content-Disposition", local.content_disposition(filename)),
                   ("Cache-Control", "no-store"), ("Accept-Ranges", "none")]
        if self.length is not None:
            headers.append(("Content-Length", str(self.length)))
        return headers

    def body(self) -> Iterator[bytes]:
        """The archive's bytes; anything that would make them differ from the plan raises StreamBroken."""
        self._finish()
        return self._body(self.length)

    def _body(self, length: int | None) -> Iterator[bytes]:
        sent, held = 0, None
        try:
            # One block is held back so that a wrong total is caught before the last byte goes out.
            for chunk in self._zip:
                if held is not None:
                    yield held
                held = chunk
                sent += len(chunk)
            if length is not None and sent != length:
                raise StreamBroken(f"archive came out at {sent} bytes instead of {length}")
            if held is not None:
                yield held
        except StreamBroken:
            raise
        except Exception as exc:  # SizeMismatch, a zipstream RuntimeError, ...: the plan no longer holds
            raise StreamBroken(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.close()

    def close(self) -> None:
        """Close every peer response still open (the client went away, or a member failed)."""
        for reader in self._readers.values():
            reader.close()
        self._zip.close()

    def __call__(self, environ, start_response):
        """Answer a WSGI request with the archive (HEAD: the headers only)."""
        start_response("200 OK", self.headers())
        if environ.get("REQUEST_METHOD") == "HEAD":
            self.close()
            return []
        return self.body()


# -- merged listings ------------------------------------------------------------------------------

def _list_node(here: LocalNode, peers: PeerClient, node: str, rel: str,
               selection: Selection) -> tuple[str, dict | list]:
    """(status, entries) of directory `rel` on `node`, or (status, {"message": ...})."""
    try:
        if node == here.name:
            return "ok", pick_entries(listing.list_entries(here.root, rel), rel, selection)
        query = selection.query()
        document = peers.get_json(node, "/list/" + quote_path(rel) + (f"?{query[1:]}" if query else ""),
                                  timeout=peers.planning_timeout)
    except ApiError as exc:
        return ("missing" if exc.status == 404 else "error"), {"message": exc.message}
    except Exception as exc:
        log.exception("listing %r on node %s", rel, node)
        return "error", {"message": f"Unexpected error asking node {node}: {type(exc).__name__}."}
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return "error", {"message": f"Node {node} sent a listing without entries."}
    return "ok", pick_entries(entries, rel, selection)


def _usable_entry(entry, rel: str) -> bool:
    if not isinstance(entry, dict) or entry.get("type") not in ("file", "dir"):
        return False
    name = entry.get("name")
    try:
        check_name(name)
    except ValueError:
        return False
    return "/" not in name and entry.get("path") == (f"{rel}/{name}" if rel else name)


def merge_listings(rel: str, answers: list[tuple[str, str, object]]) -> dict:
    """The merged listing document from each node's (name, status, entries or message)."""
    nodes, merged = {}, {}
    for node, status, value in answers:
        nodes[node] = {"status": status} if status == "ok" else {"status": status, **value}
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
    answers = [("error", {"message": str(a)}) if isinstance(a, TooSlow) else a
               for a in peers.each(lambda node: _list_node(here, peers, node, rel, selection), names, peers.config.plan_timeout)]
    results = [NodeResult(node, status, value.get("message") if status != "ok" else None)
               for node, (status, value) in zip(names, answers)]
    _check_found(results, f"the folder {rel or '/'!r}")
    return merge_listings(rel, [(node, s, v) for node, (s, v) in zip(names, answers)])
