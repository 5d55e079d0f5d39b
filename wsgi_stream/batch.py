"""Many files in one answer: `POST /batch` on a node, and a gateway reading a peer's files through it.

A cluster ZIP of thousands of small files would otherwise cost one round trip per file. The
gateway instead names every file it wants from a peer, in archive order, in one request; the
peer answers with their bytes back to back, and the gateway splits the stream by the sizes it
planned. Each file is named with its strong ETag (and where to start in it): the peer checks it
before the file's first byte and simply ends the answer early at a file that changed or went
away. The gateway, seeing a file end before its planned size (an early end, a cut, a stall),
asks again from that very byte — alone, with `If-Match`/`If-Range`, so a changed file is told
from a broken connection — and then carries on with a new batch from the next file.

A peer reads every file it sends whole through Python anyway, so it remembers their CRC-32s
(crc.py) and lists them next time (`?recursive=1` listings carry `crc32` when known).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Iterator, NamedTuple, Sequence

from . import local
from .config import LocalNode
from .crc import CrcCache, RunningCrc, file_key
from .errors import ApiError, BadRequest, StreamBroken
from .peers import PeerClient, PeerResponse, quote_path

log = logging.getLogger("wsgi_stream.batch")

MAX_FILES = 200_000
MAX_REQUEST_BYTES = 64 << 20
# Files up to this size come in batches; a bigger one is asked for alone, so that its node can send
# it with sendfile() instead of through Python (one round trip is nothing beside its transfer).
BATCHED_SIZE = 1 << 20
# Pauses before the 1st, 2nd and 3rd retry of a peer stream that made no progress.
RETRY_BACKOFF = (0.2, 0.5, 1.0)


class Wanted(NamedTuple):
    """One file asked of a peer: its path, its strong ETag, and its size as planned."""

    path: str
    etag: str
    size: int


# -- the node's side ---------------------------------------------------------------------------------

def parse_request(data: bytes) -> list[tuple[str, str, int]]:
    """[(path, etag, offset)] from a batch request body; 400 for anything else."""
    try:
        document = json.loads(data)
        files = document["files"]
        if not isinstance(files, list) or len(files) > MAX_FILES:
            raise ValueError
        wanted = []
        for entry in files:
            path, etag, offset = entry["path"], entry["etag"], entry.get("offset", 0)
            if not (isinstance(path, str) and isinstance(etag, str) and isinstance(offset, int)) \
                    or isinstance(offset, bool) or offset < 0:
                raise ValueError
            wanted.append((path, etag, offset))
    except (ValueError, KeyError, TypeError):
        raise BadRequest('A batch is {"files": [{"path", "etag", "offset"?}, ...]} '
                         f"(at most {MAX_FILES} files).") from None
    return wanted


def batch_body(here: LocalNode, crcs: CrcCache, wanted: list[tuple[str, str, int]]) -> Iterator[bytes]:
    """The bytes of each wanted file from its offset, back to back; ends early at a file that changed."""
    for path, etag, offset in wanted:
        try:
            f, st, _ = local.open_file(here.root, path)
        except ApiError:  # gone, or no longer readable: the gateway sees this file end early
            return
        try:
            if local.file_etag(st) != etag or offset > st.st_size:
                return
            running = RunningCrc() if offset == 0 and crcs.get(file_key(st)) is None else None
            try:
                for data in local.read_range(f, offset, st.st_size, here.chunk_size):
                    if running is not None:
                        running.update(data)
                    yield data
            except OSError as exc:  # shrank while being sent: the gateway must see a cut, not an end
                raise StreamBroken(f"{path}: {exc}") from exc
            if running is not None and file_key(os.fstat(f.fileno())) == file_key(st):
                crcs.put(file_key(st), running.value)
        finally:
            f.close()


# -- the gateway's side ------------------------------------------------------------------------------

class _Retry(Exception):
    """A peer stream failed in a way worth asking again."""


class PeerFiles:
    """Reads a peer's files in planned order through few `POST /batch` requests, resuming breaks."""

    def __init__(self, peers: PeerClient, node: str, files: Sequence[Wanted], chunk_size: int):
        self.peers, self.node, self.files, self.chunk_size = peers, node, files, chunk_size
        self.response: PeerResponse | None = None
        self.position: tuple[int, int] | None = None  # (file index, offset) the open stream is at
        self.refused = False  # the peer does not take batches (an older version): one file at a time

    def start(self, index: int = 0, offset: int = 0) -> None:
        """Send the request for the files from `index` (at `offset`) now, so its bytes are on the way."""
        if self.position == (index, offset) or index >= len(self.files) or self.refused \
                or self.files[index].size > BATCHED_SIZE:
            return
        self.close()
        body = _request_body(self.files, index, offset)
        try:
            self.response = self.peers.open(self.node, "POST", "/batch", {"Content-Type": "application/json"},
                                            body=body, replayable=lambda: True)
        except ApiError as exc:
            if exc.status in (502, 504):
                raise _Retry(exc.message) from exc
            raise
        if self.response.status != 200:
            status = self.response.status
            self.close()
            self.refused = 400 <= status < 500
            if self.refused:
                log.warning("node %s answered %d to a batch: asking it for one file at a time", self.node, status)
            raise _Retry(f"node {self.node} answered {status} to a batch")
        self.position = (index, offset)

    def read(self, index: int, offset: int = 0) -> Iterator[bytes]:
        """The bytes of file `index` from `offset` to its planned size; StreamBroken if impossible."""
        wanted = self.files[index]
        if offset >= wanted.size:
            if self.position == (index, offset):
                self.position = (index + 1, 0)
            return
        if wanted.size > BATCHED_SIZE:
            self._end_batch()
            self._start_quietly(index + 1)  # the next small files' bytes are on the way meanwhile
            yield from single_file(self.peers, self.node, wanted, offset, self.chunk_size)
            return
        try:
            if self.refused:
                raise _Retry("it takes no batches")
            if self.position != (index, offset):
                self.start(index, offset)
            for data in self._take(wanted.size - offset):
                offset += len(data)
                self.position = (index, offset)
                yield data
        except _Retry as exc:
            self.close()
            if not self.refused:
                log.warning("%s/%s: %s at byte %d; asking node %s for the rest of it alone", self.node,
                            wanted.path, exc, offset, self.node)
            # Alone, with validators: a changed file is StreamBroken, a broken link is retried.
            yield from single_file(self.peers, self.node, wanted, offset, self.chunk_size)
        if self.position == (index, wanted.size):
            self.position = (index + 1, 0)

    def _end_batch(self) -> None:
        """Finish a batch read to its end (its connection is then reused), or close it."""
        if self.response is not None:
            try:
                done = self.response.read(1) == b""
            except ApiError:
                done = False
            if done:
                self.response.close()
                self.response = None
        self.close()

    def _start_quietly(self, index: int) -> None:
        try:
            self.start(index)
        except (_Retry, ApiError) as exc:  # the file's own read asks again and reports
            log.info("could not start a batch from node %s early: %s", self.node, exc)
            self.close()

    def _take(self, remaining: int) -> Iterator[bytes]:
        while remaining > 0:
            try:
                data = self.response.read(min(self.chunk_size, remaining))
            except ApiError as exc:
                raise _Retry(f"stream broke off: {exc.message} ({exc.__cause__})") from exc
            if not data:
                raise _Retry("batch ended early")
            remaining -= len(data)
            yield data

    def close(self) -> None:
        """Close the open batch stream, if any."""
        if self.response is not None:
            self.response.discard()
            self.response = None
        self.position = None


def _request_body(files, index: int, offset: int) -> bytes:
    """The batch request for `files` from `index` (at `offset`) up to the first big one."""
    pieces = []
    for k in range(index, len(files)):
        wanted = files[k]
        if wanted.size > BATCHED_SIZE:
            break
        entry = {"path": wanted.path, "etag": wanted.etag}
        if k == index:
            entry["offset"] = offset
        pieces.append(json.dumps(entry))
    return f'{{"files": [{", ".join(pieces)}]}}'.encode()


def single_file(peers: PeerClient, node: str, wanted: Wanted, offset: int, chunk_size: int) -> Iterator[bytes]:
    """File `wanted` of `node` from `offset` by itself; StreamBroken if it changed or keeps failing."""
    failures = 0
    while offset < wanted.size:
        try:
            with _open_single(peers, node, wanted, offset) as response:
                remaining = wanted.size - offset
                while remaining > 0:
                    try:
                        data = response.read(min(chunk_size, remaining))
                    except ApiError as exc:
                        raise _Retry(f"stream broke off: {exc.message} ({exc.__cause__})") from exc
                    if not data:
                        raise _Retry("stream ended early")
                    remaining -= len(data)
                    offset += len(data)
                    failures = 0
                    yield data
        except _Retry as exc:
            if failures >= len(RETRY_BACKOFF):
                raise StreamBroken(f"{node}/{wanted.path}: {exc}; gave up at byte {offset}") from exc
            log.warning("%s/%s: %s at byte %d; asking node %s again", node, wanted.path, exc, offset, node)
            time.sleep(RETRY_BACKOFF[failures])
            failures += 1


def _open_single(peers: PeerClient, node: str, wanted: Wanted, offset: int) -> PeerResponse:
    if offset:
        headers = {"Range": f"bytes={offset}-", "If-Range": wanted.etag}
        expect = (206, f"bytes {offset}-{wanted.size - 1}/{wanted.size}")
    else:
        headers = {"If-Match": wanted.etag}
        expect = (200, None)
    try:
        response = peers.open(node, "GET", "/files/" + quote_path(wanted.path), headers)
    except ApiError as exc:
        if exc.status not in (502, 504):
            raise
        raise _Retry(exc.message) from exc
    status, ranged = response.status, response.headers.get("Content-Range")
    if (status, ranged) == expect and response.headers.get("ETag") == wanted.etag \
            and response.headers.get("Content-Length") == str(wanted.size - offset):
        return response
    response.discard()
    if status >= 500:
        raise _Retry(f"node {node} answered {status}")
    answer = f"{status}, {ranged}" if ranged else str(status)
    raise StreamBroken(f"{node}/{wanted.path} changed on node {node} (it answered {answer})")
