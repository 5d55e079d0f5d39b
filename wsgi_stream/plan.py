"""The plan of a cluster download: which files of which node, with their sizes, ETags and names.

Every selected node is asked concurrently (this node from disk, peers through their recursive
listings) within the planning budget. What each has is kept in columns (`PlannedFiles`): a plan of
100,000 files is a few lists and arrays, not 100,000 objects, and peers' listings are digested
entry by entry as they arrive, so a gateway's memory stays small however many files a download
covers.
"""

from __future__ import annotations

import logging
import math
import os
import stat as stat_mod
from array import array
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from werkzeug.http import parse_date

from . import listing, local
from .batch import Wanted
from .config import LocalNode
from .crc import CrcCache
from .errors import ApiError, BadGateway, NotFound
from .paths import read_error, resolve
from .peers import PeerClient, TooSlow, quote_path
from .portable import portable_path
from .selection import Selection, below
from .zipfmt import check_name

log = logging.getLogger("wsgi_stream.cluster")

EVERYTHING = Selection()


@dataclass(slots=True)
class FileItem:
    """One file of one node as planned: where it is, what it is, and its name in the archive."""

    node: str
    path: str
    size: int
    mtime: float | None
    etag: str
    crc: int | None = None  # CRC-32 when the node already knew it
    member: str = ""  # its name in the archive: the original, made portable (see portable.py)

    def __post_init__(self):
        if not self.member:
            self.member = portable_path(self.original)

    @property
    def original(self) -> str:
        """`{node}/{path}`: the name as the node has it."""
        return f"{self.node}/{self.path}"


class PlannedFiles(Sequence):
    """One node's planned files, sorted by path, kept in columns; item k is a FileItem made on demand."""

    def __init__(self, node: str):
        self.node = node
        self.paths: list[str] = []
        self.etags: list[str] = []
        self.sizes = array("q")
        self.mtimes = array("d")  # NaN: unknown
        self.crcs = array("q")  # -1: unknown
        self.renamed: dict[int, str] = {}  # member names that differ from `{node}/{path}`

    def append(self, path: str, size: int, mtime: float | None, etag: str, crc: int | None, member: str) -> None:
        """Add a file after the others (callers add them in path order)."""
        if member != f"{self.node}/{path}":
            self.renamed[len(self.paths)] = member
        self.paths.append(path)
        self.etags.append(etag)
        self.sizes.append(size)
        self.mtimes.append(math.nan if mtime is None else mtime)
        self.crcs.append(-1 if crc is None else crc)

    def extend_sorted(self, other: PlannedFiles) -> None:
        """Add `other`'s files, in path order (a permutation of indices, not rows, is sorted)."""
        order = sorted(range(len(other)), key=other.paths.__getitem__)
        for k in order:
            self.append(other.paths[k], other.sizes[k], other.mtime(k), other.etags[k],
                        None if other.crcs[k] < 0 else other.crcs[k], other.member(k))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return FileItem(self.node, self.paths[k], self.sizes[k], self.mtime(k), self.etags[k],
                        None if self.crcs[k] < 0 else self.crcs[k], self.member(k))

    def member(self, k: int) -> str:
        """File k's name in the archive."""
        return self.renamed.get(k) or f"{self.node}/{self.paths[k]}"

    def mtime(self, k: int) -> float | None:
        """File k's modification time, None when its node did not say."""
        value = self.mtimes[k]
        return None if math.isnan(value) else value

    def wanted(self) -> Sequence[Wanted]:
        """The files as a peer is asked for them (made on demand, like the items)."""
        return _WantedView(self)


class _WantedView(Sequence):
    def __init__(self, files: PlannedFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return Wanted(self.files.paths[k], self.files.etags[k], self.files.sizes[k])


@dataclass
class NodeResult:
    """What one node has under the path: status `ok`, `missing` or `error`, and its usable files."""

    node: str
    status: str
    message: str | None = None
    files: PlannedFiles | None = None
    errors: list[dict] = field(default_factory=list)  # entries left out: {"name", "message"}
    code: str | None = None  # why a `missing` node cannot have the path (name_too_long), if not plain 404

    def __post_init__(self):
        if self.files is None:
            self.files = PlannedFiles(self.node)

    @property
    def failed(self) -> bool:
        return self.status == "error" or bool(self.errors)


def select_nodes(known: list[str], wanted: Iterable[str] | None) -> list[str]:
    """The `wanted` nodes in config order (all when None); 404 for a name not in `known`."""
    if wanted is None:
        return list(known)
    wanted = set(wanted)
    for name in sorted(wanted - set(known)):
        raise NotFound(f"No node called {name!r} in this cluster.", code="unknown_node")
    return [name for name in known if name in wanted]


# -- one node's entries --------------------------------------------------------------------------

def printable(value) -> str:
    """`value` as text that encodes as UTF-8 (a peer's name may hold lone surrogates)."""
    text = value if isinstance(value, str) else repr(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _strong_etag(value) -> bool:
    return isinstance(value, str) and len(value) >= 2 and value.startswith('"') and value.endswith('"')


def _crc(value) -> int | None:
    try:
        return int(value, 16) if isinstance(value, str) and len(value) == 8 else None
    except ValueError:
        return None


def collect(result: NodeResult, entries: Iterable, prefix: str, selection: Selection = EVERYTHING) -> NodeResult:
    """Keep the entries that are usable files with safe names and `selection` picks; report bad ones.

    Only the kept files' columns grow per entry: a name is `{node}/{path}` unless it had to be
    made portable, so only those few are kept aside to tell two files that would share a name.
    """
    seen, renamed, originals = set(), {}, set()  # paths seen; names made portable -> path; those paths
    node_prefix = f"{result.node}/"
    kept = PlannedFiles(result.node)
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("type", "file") != "file":
            continue
        path, size, etag, mtime = entry.get("path"), entry.get("size"), entry.get("etag"), entry.get("mtime")
        try:
            if not isinstance(path, str) or not (path == prefix or path.startswith(prefix + "/") or not prefix):
                raise ValueError("not under the requested path")
            member = check_name(portable_path(f"{result.node}/{path}"))
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError("no valid size")
            if not _strong_etag(etag):
                raise ValueError("no strong ETag")
            if path in seen:
                raise ValueError("listed twice")
            same_name = _holder(member, path, node_prefix, seen, renamed, originals)
            if same_name is not None:
                raise ValueError(f"its portable name {member!r} is that of {same_name!r}")
        except ValueError as exc:
            result.errors.append({"name": printable(path), "message": f"left out: {exc}"})
            continue
        seen.add(path)
        if member != node_prefix + path:
            renamed[member] = path
            originals.add(path)
        mtime = float(mtime) if isinstance(mtime, (int, float)) and not isinstance(mtime, bool) else None
        if selection.picks(below(path, prefix), size, mtime):
            kept.append(path, size, mtime, etag, _crc(entry.get("crc32")), member)
    result.files.extend_sorted(kept)
    return result


def _holder(member: str, path: str, node_prefix: str, seen: set, renamed: dict, originals: set) -> str | None:
    """The path already kept whose name in the archive is `member` too, if any."""
    if member in renamed:
        return renamed[member]
    if member != node_prefix + path:  # made portable: is it the name of a file seen under its own path?
        plain = member[len(node_prefix):]
        if member.startswith(node_prefix) and plain in seen and plain not in originals:
            return plain
    return None


def refused(node: str, error: ApiError, own_words: bool = False) -> NodeResult:
    """A node's 4xx about the path: `missing` when the path cannot be there (404, 400), else `error`.

    `own_words`: a 404 keeps the node's message (a merged listing shows it) instead of the plain one.
    """
    if error.status == 404:
        return NodeResult(node, "missing", error.message if own_words else "No such file or directory.")
    if error.status == 400:
        return NodeResult(node, "missing", error.message, code=error.code)
    return NodeResult(node, "error", error.message)


def _skipped(result: NodeResult, skipped) -> NodeResult:
    """Report what a node's listing skipped (a FIFO, an unreadable file...) as left out."""
    for entry in skipped if isinstance(skipped, list) else []:
        if isinstance(entry, dict):
            result.errors.append({"name": printable(entry.get("path")),
                                  "message": f"left out: {printable(entry.get('reason'))}"})
    return result


# -- asking the nodes ----------------------------------------------------------------------------

def plan_local(here: LocalNode, rel: str, selection: Selection = EVERYTHING, crcs: CrcCache | None = None) -> NodeResult:
    """What this node has under `rel`, from its disk."""
    result = NodeResult(here.name, "ok")
    try:
        target = resolve(here.root, rel)
        try:
            st = os.stat(target)
        except OSError as exc:
            raise read_error(exc, "file") from None
        if stat_mod.S_ISDIR(st.st_mode):
            files, skipped = listing.walk(here.root, rel, crcs)
            return _skipped(collect(result, files, rel, selection), skipped)
    except ApiError as exc:
        return refused(here.name, exc)
    if not stat_mod.S_ISREG(st.st_mode):
        return _skipped(result, [{"path": rel, "reason": f"{listing.kind_of(st.st_mode)}: only regular "
                                                          "files are served"}])
    if not os.access(target, os.R_OK):
        return _skipped(result, [{"path": rel, "reason": "a file this node may not read"}])
    entry = {"path": rel, "size": st.st_size, "mtime": st.st_mtime, "etag": local.file_etag(st)}
    return collect(result, [entry], rel, selection)


def _peer_file(peers: PeerClient, node: str, rel: str, selection: Selection) -> NodeResult:
    with peers.open(node, "HEAD", "/files/" + quote_path(rel), timeout=peers.planning_timeout) as response:
        if response.status in (400, 404):
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
        return collect(NodeResult(node, "ok"), [entry], rel, selection)


def plan_peer(peers: PeerClient, node: str, rel: str, selection: Selection = EVERYTHING) -> NodeResult:
    """What peer `node` has under `rel`: its recursive listing, or else HEAD of the file."""
    try:
        with peers.open(node, "GET", "/list/" + quote_path(rel) + "?recursive=1" + selection.query(),
                        timeout=peers.planning_timeout) as response:
            listing = response.json_items("entries")  # digested as it arrives
            result = collect(NodeResult(node, "ok"), listing.items(), rel, selection)
            return _skipped(result, listing.rest.get("skipped"))
    except ApiError as exc:
        if exc.status != 404:
            return refused(node, exc)
    if not rel:
        return NodeResult(node, "missing", "No such directory.")
    try:
        return _peer_file(peers, node, rel, selection)
    except ApiError as exc:
        return NodeResult(node, "error", exc.message)


def _plan_node(here: LocalNode, peers: PeerClient, node: str, rel: str, selection: Selection,
               crcs: CrcCache | None) -> NodeResult:
    try:
        if node == here.name:
            return plan_local(here, rel, selection, crcs)
        return plan_peer(peers, node, rel, selection)
    except Exception as exc:  # one node's surprise must not sink the others
        log.exception("planning %r on node %s", rel, node)
        return NodeResult(node, "error", f"Unexpected error asking node {node}: {type(exc).__name__}.")


def plan_cluster(here: LocalNode, peers: PeerClient, rel: str, nodes: list[str],
                 selection: Selection = EVERYTHING, crcs: CrcCache | None = None) -> list[NodeResult]:
    """Ask every node in `nodes` concurrently what it has under `rel`; a node past the budget is an error."""
    answers = peers.each(lambda node: _plan_node(here, peers, node, rel, selection, crcs), nodes,
                         peers.config.plan_timeout)
    return [NodeResult(node, "error", str(a)) if isinstance(a, TooSlow) else a for node, a in zip(nodes, answers)]


def check_found(results: list[NodeResult], what: str) -> None:
    """404 if every node lacks `what` (400 if every one refused its name alike), 502 if none has it
    and some could not be asked."""
    if any(r.status == "ok" for r in results):
        return
    failed = [r for r in results if r.status == "error"]
    if failed:
        detail = "; ".join(f"{r.node}: {r.message}" for r in failed)
        raise BadGateway(f"No node that answered has {what}, and some could not be asked ({detail}).",
                         code="nodes_failed")
    codes = {r.code for r in results}
    if len(codes) == 1 and None not in codes:
        raise ApiError(f"No node can have {what}: {results[0].message}", status=400, code=codes.pop())
    raise NotFound(f"No node has {what}.")

