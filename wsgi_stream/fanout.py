"""Fan-out: one upload streamed once to every node, staged everywhere, then committed everywhere.

Theory of operation
-------------------
`PUT /cluster/files/{path}` may go to any node, the *gateway*. Its request thread reads the
client's body once and hands each block to one bounded Channel per target node::

    client --body--> request thread --+--> Channel a --> thread a: StageArea.stage (its own disk)
                     (reads, hashes,  +--> Channel b --> thread b: PUT /stages/{id} to node b
                      holds back the  +--> Channel c --> thread c: PUT /stages/{id} to node c
                      last block)

A channel holds at most QUEUE_BLOCKS blocks, and the blocks are shared, not copied: a target
that falls behind blocks the request thread, so the slowest target sets the pace for all and the
gateway holds a few blocks whatever the size. The request thread keeps the last block back until
the whole body has arrived and matched the client's Content-Digest: until then no target has a
complete body, so nothing is staged from a body that turns out cut short or wrong.

Every target's thread stages (stages.py: a hidden file beside the target, verified and fsynced),
then waits for the decision:

- `atomic` (the default): the first target that fails calls everything off. The others' channels
  raise Aborted into their stage (a peer sees its body break off and keeps nothing), the ones that
  had staged are aborted. Once every target has staged, all commit, each with the size and
  sha-256 the gateway computed; a node renames its stage into place only if they match.
- `best-effort`: a failed target is left behind; each one commits as soon as it has staged.

A commit is the only step that can still fail after other nodes changed: the outcome then says
so (502 partially_committed), naming the nodes that have the new version. A commit whose answer
was lost is asked again (commits are idempotent); if even that cannot tell, the node is
`unknown`. Every other node is `committed` (new version), `unchanged` or `failed` (old version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import urllib3

from .errors import ApiError, BadRequest, Conflict, IncompleteBody, NotFound
from .forward import peer_read_timeout
from .peers import PeerClient, never_sent, quote_path
from .replies import Reply
from .stages import StageArea, check_id, preconditions_of
from .uploads import (DIGESTS, SPOOLED_BODY, RequestBody, UploadLimits, check_size, closing,
                      declared_length, must_close, wanted_digests)

log = logging.getLogger("wsgi_stream.fanout")

MODES = ("atomic", "best-effort")
# Blocks a target may be behind the request thread: "a few chunks".
QUEUE_BLOCKS = 4
# A peer's body goes out in pieces this big: each socket send must finish within connect_timeout.
PIECE = 64 * 1024
# How long a finished fan-out's progress can still be asked for.
KEEP_FINISHED = 120.0
# Pauses before asking a node again for a commit whose answer was lost.
COMMIT_RETRY_PAUSES = (0.2, 1.0, 3.0)
# A peer's failure that leaves open whether a request took effect; stage_busy: a commit still runs.
UNSETTLED = ("peer_unreachable", "peer_broken", "peer_timeout", "peer_error", "stage_busy")


class Aborted(Exception):
    """Raised into a target's body when the fan-out is called off (not an OSError: urllib3 lets it through)."""


def mode_of(args) -> str:
    """`?mode=`: atomic (default) or best-effort; else 400."""
    value = args.get("mode", "").strip().lower() or "atomic"
    if value not in MODES:
        raise BadRequest(f"?mode= must be 'atomic' or 'best-effort', not {value!r}.")
    return value


def targets_of(peers: PeerClient, wanted: list[str] | None) -> list[str]:
    """The target nodes in config order: `wanted` (each must exist: 404 unknown_node) or all."""
    if wanted is None:
        return peers.names
    for name in wanted:
        peers.node(name)
    return [name for name in peers.names if name in wanted]


# -- the outcome: a pure function of the per-node lines -------------------------------------------

def outcome(mode: str, lines: dict[str, dict], cause: str | None = None,
            client_error: ApiError | None = None) -> tuple[int, str, str | None, str | None]:
    """(HTTP status, outcome, error code, message) of a fan-out whose nodes ended as `lines`.

    outcome is `committed` (every node has the new version), `unchanged` (no node changed) or
    `partial`; `cause` is the node whose failure called an atomic fan-out off.
    """
    if client_error is not None:
        return client_error.status, "unchanged", client_error.code, f"{client_error.message} No node changed."
    committed = [n for n, line in lines.items() if line["status"] == "committed"]
    unknown = [n for n, line in lines.items() if line["status"] == "unknown"]
    failed = {n: line for n, line in lines.items() if line["status"] == "failed"}
    if len(committed) == len(lines):
        created = any(line.get("created") for line in lines.values())
        return (201 if created else 200), "committed", None, None
    if committed or unknown:
        message = (f"Only {_names(committed) or 'no node'} {'has' if len(committed) == 1 else 'have'} the new "
                   f"version" + (f"; {_names(unknown)} may have either" if unknown else "")
                   + (f"; failed: {_names(failed)}" if failed else "") + ".")
        if mode == "best-effort" and committed:
            return 207, "partial", None, message
        return 502, "partial", "partially_committed", message
    if mode == "atomic" and cause in failed:
        line = failed[cause]
        return line["http"], "unchanged", line["error"], f"Node {cause}: {line['message']} No node changed."
    statuses = {(line["http"], line["error"]) for line in failed.values()}
    if len(statuses) == 1:
        (status, code), = statuses
        return status, "unchanged", code, f"{'; '.join(line['message'] for line in failed.values())} No node changed."
    return 502, "unchanged", "nodes_failed", f"Failed: {_names(failed)}. No node changed."


def _names(names) -> str:
    return ", ".join(names)


def _unsettled(error: ApiError) -> bool:
    return error.code in UNSETTLED


def render(document: dict) -> bytes:
    """The JSON answer with each node's line on a line of its own (readable from curl)."""
    head = dict(document)
    nodes = head.pop("nodes")
    lines = ",\n".join(f" {json.dumps(name)}: {json.dumps(line, ensure_ascii=False)}" for name, line in nodes.items())
    return (json.dumps(head, ensure_ascii=False)[:-1] + ', "nodes": {\n' + lines + "}}\n").encode("utf-8")


# -- moving blocks -----------------------------------------------------------------------------------

class Channel:
    """Body blocks from the request thread to one target, at most `capacity` queued."""

    def __init__(self, capacity: int = QUEUE_BLOCKS):
        self.capacity = capacity
        self.taken = 0          # bytes the target has taken so far
        self._blocks: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._ended = self._aborted = self._stopped = False

    def put(self, block: bytes) -> bool:
        """Queue `block`, waiting while the queue is full; False once the target stopped or it was called off."""
        with self._cond:
            while len(self._blocks) >= self.capacity and not (self._stopped or self._aborted):
                self._cond.wait()
            if self._stopped or self._aborted:
                return False
            self._blocks.append(block)
            self._cond.notify_all()
            return True

    def end(self) -> None:
        """The body is complete: the target's reader ends after the queued blocks."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Called off: the target's reader raises Aborted instead of ending."""
        with self._cond:
            self._aborted = True
            self._blocks.clear()
            self._cond.notify_all()

    def stop(self) -> None:
        """The target reads no more (it is done or failed): put() stops waiting for it."""
        with self._cond:
            self._stopped = True
            self._blocks.clear()
            self._cond.notify_all()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                while not (self._blocks or self._ended or self._aborted):
                    self._cond.wait()
                if self._aborted:
                    raise Aborted("called off")
                if not self._blocks:
                    return
                block = self._blocks.popleft()
                self._cond.notify_all()
            self.taken += len(block)
            yield block


def _pieces(channel: Channel, sent: list[int]) -> Iterator[memoryview]:
    for block in channel:
        view = memoryview(block)
        for start in range(0, len(view), PIECE):
            sent[0] += 1
            yield view[start:start + PIECE]


# -- where a target's copy goes: this node's StageArea, or a peer's stage API ------------------------

class SpooledChannel:
    """The gateway's own copy of a body its server spooled whole on this disk.

    The stage links that file in (StageArea, as uploads.store does) rather than writing the blocks
    again; it still takes every block from the channel, to keep pace with the other nodes and to
    learn that the body is complete and matched its digest (or raise Aborted).
    """

    def __init__(self, channel: Channel, environ: dict):
        self.channel, self.environ = channel, environ

    def take(self, size: int) -> None:
        """Wait for the body's end through the channel; it must be the `size` bytes linked in."""
        taken = sum(len(block) for block in self.channel)
        if taken != size:
            raise IncompleteBody(f"The spooled body has {size} bytes, the request's {taken}.")

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.channel)


class LocalStages:
    """The gateway's own copy: the same stage/commit/abort as a peer's, without HTTP."""

    def __init__(self, area: StageArea, environ: dict):
        self.area = area
        self.spooled = environ if SPOOLED_BODY in environ else None

    def stage(self, stage_id: str, rel: str, headers, length: int | None, channel: Channel,
              sha256_of: Callable[[], str]) -> None:
        # The blocks are the very objects the request thread hashed: no second sha-256 of them here.
        blocks = SpooledChannel(channel, self.spooled) if self.spooled is not None else iter(channel)
        self.area.stage(stage_id, rel, headers, length, blocks, sha256_of=sha256_of)

    def commit(self, stage_id: str, size: int, sha256: str) -> dict:
        record = self.area.commit(stage_id, size, sha256)
        return {"created": record.created, "etag": record.etag}

    def abort(self, stage_id: str) -> None:
        self.area.abort(stage_id)


class PeerStages:
    """A peer's copy through its node-to-node stage API (PUT/POST/DELETE /stages/{id})."""

    def __init__(self, peers: PeerClient, name: str, limits: UploadLimits):
        self.peers, self.name, self.limits = peers, name, limits

    def stage(self, stage_id: str, rel: str, headers, length: int | None, channel: Channel,
              sha256_of: Callable[[], str]) -> None:
        """Stream the channel to the peer's stage; it hashes what it receives itself (`sha256_of` unused)."""
        sent_headers = preconditions_of(headers)
        if length is not None:
            sent_headers["Content-Length"] = str(length)
        timeout = urllib3.Timeout(connect=self.limits.connect_timeout, read=peer_read_timeout(self.limits, length))
        sent = [0]
        try:
            response = self.peers.open(self.name, "PUT", f"/stages/{stage_id}?path={quote_path(rel)}",
                                       sent_headers, body=_pieces(channel, sent), timeout=timeout,
                                       replayable=lambda: not sent[0])
            response.json()
        except ApiError as error:
            if error.code in ("peer_unreachable", "peer_broken") and channel.taken:
                raise ApiError(f"Node {self.name} broke off after {channel.taken} bytes of the body.",
                               status=error.status, code="peer_broken") from error
            raise

    def commit(self, stage_id: str, size: int, sha256: str) -> dict:
        body = json.dumps({"size": size, "sha-256": sha256}).encode()
        # Not replayed inside open(): whether the request may have arrived matters (see _commit).
        document = self.peers.open(self.name, "POST", f"/stages/{stage_id}/commit",
                                   {"Content-Type": "application/json"}, body=body,
                                   timeout=self._short(), replayable=lambda: False).json()
        return {"created": document.get("created"), "etag": document.get("etag")}

    def abort(self, stage_id: str) -> None:
        with self.peers.open(self.name, "DELETE", f"/stages/{stage_id}", timeout=self._short(),
                             replayable=lambda: True) as response:
            data = response.read()
        if response.status not in (204, 404):  # 404: it dropped the stage itself already
            raise ApiError(f"Node {self.name} answered {response.status} to abort: {data[:200]!r}",
                           status=502, code="peer_error")

    def _short(self) -> urllib3.Timeout:
        return urllib3.Timeout(connect=self.limits.connect_timeout, read=self.limits.read_timeout)


# -- one fan-out ------------------------------------------------------------------------------------

@dataclass
class Target:
    """One node a fan-out writes to, its progress and, at the end, its line of the outcome."""

    name: str
    backend: LocalStages | PeerStages
    channel: Channel = field(default_factory=Channel)
    state: str = "waiting"   # staging, staged, committing, then committed | unchanged | failed | unknown
    line: dict | None = None
    staged: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def settle(self, status: str, **details) -> None:
        self.line = {"status": status, **details}
        self.state = status

    def fail(self, phase: str, error: ApiError) -> None:
        self.settle("failed", phase=phase, error=error.code, message=error.message, http=error.status)


class Fanout:
    """One PUT /cluster/files: its targets, the decision to commit or abort, its outcome."""

    def __init__(self, stage_id: str, rel: str, mode: str, targets: list[Target], headers,
                 length: int | None, expiry: float):
        self.id, self.rel, self.mode, self.targets = stage_id, rel, mode, targets
        self.headers, self.length, self.expiry = headers, length, expiry
        self.received = 0
        self.size: int | None = None
        self.sha256: str | None = None
        self.state = "receiving"          # receiving, committing, done
        self.cause: str | None = None     # the node whose failure called it off
        self.client_error: ApiError | None = None
        self.decision: str | None = None  # commit | abort
        self.decided = threading.Event()
        self.result: dict | None = None
        self.finished: float | None = None
        self._lock = threading.Lock()

    # -- the request thread --------------------------------------------------------------------------

    def run(self, body: Iterable[bytes], digests: dict[str, bytes]) -> tuple[int, dict]:
        """Feed `body` to every target, decide, wait for every target: the HTTP status and outcome."""
        for target in self.targets:
            target.thread = threading.Thread(target=self._serve, args=(target,), daemon=True,
                                             name=f"fanout-{target.name}")
            target.thread.start()
        try:
            self._feed(body, digests)
        except ApiError as error:  # the client's body: cut short, over the limit, not its digest
            self.client_error = error
            self._decide("abort")
        finally:
            if not self.decided.is_set() and self.size is None:
                self._decide("abort")
            for target in self.targets:
                target.staged.wait()
            self.state = "committing"
            self._decide("commit")  # a no-op once called off (or, best-effort, once decided)
            for target in self.targets:
                target.thread.join()
            self.finished = time.monotonic()
        status, self.result = self.report()
        self.state = "done"
        return status, self.result

    def _feed(self, body: Iterable[bytes], digests: dict[str, bytes]) -> None:
        hashes = {"sha-256": hashlib.sha256()}
        hashes.update((name, DIGESTS[name]()) for name in digests if name not in hashes)
        held = None
        for block in body:
            for h in hashes.values():
                h.update(block)
            self.received += len(block)
            if held is not None and not self._push(held):
                return
            held = block
        for name, wanted in digests.items():
            if hashes[name].digest() != wanted:
                raise BadRequest(f"The body does not match its Content-Digest ({name}).", code="digest_mismatch")
        self.size, self.sha256 = self.received, hashes["sha-256"].hexdigest()
        if held is not None and not self._push(held):
            return
        for target in self.targets:
            target.channel.end()
        if self.mode == "best-effort":
            self._decide("commit")

    def _push(self, block: bytes) -> bool:
        """Give `block` to every target still taking; False when there is no point going on."""
        taken = [target.channel.put(block) for target in self.targets]
        return any(taken) and self.decision != "abort"

    def _decide(self, decision: str) -> None:
        with self._lock:
            if self.decided.is_set():
                return
            self.decision = decision
            self.decided.set()
        if decision == "abort":
            for target in self.targets:
                target.channel.abort()

    # -- a target's thread ---------------------------------------------------------------------------

    def _serve(self, target: Target) -> None:
        try:
            target.state = "staging"
            target.backend.stage(self.id, self.rel, self.headers, self.length, target.channel, lambda: self.sha256)
            target.state = "staged"
        except Aborted:
            target.settle("unchanged", message=self._why())
        except ApiError as error:
            target.fail("stage", error)
        except Exception as exc:  # not a mapped failure: still one honest line, and the traceback logged
            log.exception("fan-out %s: staging on node %s failed", self.id, target.name)
            target.fail("stage", ApiError(f"Node {target.name} failed: {exc}", code="internal_error"))
        finally:
            target.channel.stop()
            if target.line is not None and target.line["status"] == "failed":
                self._failed(target)
            target.staged.set()
        if target.line is not None:
            return
        self.decided.wait()
        if self.decision == "commit":
            self._commit(target)
        else:
            self._abort(target)

    def _failed(self, target: Target) -> None:
        if self.mode == "atomic":
            with self._lock:
                self.cause = self.cause or target.name
            self._decide("abort")

    def _commit(self, target: Target) -> None:
        target.state = "committing"
        started = time.monotonic()
        try:
            result = target.backend.commit(self.id, self.size, self.sha256)
        except ApiError as error:
            if not _unsettled(error) or never_sent(error):
                target.fail("commit", error)
                return
            result = self._ask_again(target, error, started)
            if result is None:
                return
        target.settle("committed", created=bool(result.get("created")), etag=result.get("etag"))
        try:  # the answer is in: the node may forget the stage's record now
            target.backend.abort(self.id)
        except ApiError as error:
            log.info("fan-out %s: node %s keeps its committed record until it expires: %s", self.id,
                     target.name, error.message)

    def _ask_again(self, target: Target, first: ApiError, started: float) -> dict | None:
        """A commit whose answer was lost, not necessarily the commit: ask again (commits are idempotent).

        The commit's answer, or None once `target` is settled as failed (it surely did not commit)
        or unknown (it may have).
        """
        for pause in COMMIT_RETRY_PAUSES:
            time.sleep(pause)
            try:
                return target.backend.commit(self.id, self.size, self.sha256)
            except ApiError as again:
                if _unsettled(again):
                    continue
                if again.code == "no_such_stage" and time.monotonic() - started >= self.expiry:
                    break  # committed and forgotten since, or dropped: cannot tell
                target.fail("commit", again)  # a plain answer: the stage is gone uncommitted, or now refused
                return None
        target.settle("unknown", error=first.code,
                      message=f"{first.message} It did not confirm its commit: it has the old or the new version.")
        return None

    def _abort(self, target: Target) -> None:
        try:
            target.backend.abort(self.id)
        except ApiError as error:  # its stage is invisible, and expires by itself
            log.warning("fan-out %s: abort on node %s failed: %s", self.id, target.name, error.message)
        target.settle("unchanged", message=self._why())

    def _why(self) -> str:
        if self.client_error is not None:
            return "Called off: the body was not complete or not right."
        if self.cause is not None:
            return f"Called off: node {self.cause} failed."
        return "Called off."

    # -- what it says -----------------------------------------------------------------------------

    def report(self) -> tuple[int, dict]:
        """The HTTP status and the outcome document (see docs/http-api.md, PUT /cluster/files)."""
        lines = {t.name: t.line or {"status": "unknown", "message": "No outcome (a bug)."} for t in self.targets}
        status, result, code, message = outcome(self.mode, lines, self.cause, self.client_error)
        document = {"path": self.rel, "mode": self.mode, "id": self.id, "outcome": result,
                    "size": self.size, "sha-256": self.sha256,
                    "committed": [name for name, line in lines.items() if line["status"] == "committed"]}
        if code is not None:
            document["error"] = code
        if message is not None:
            document["message"] = message
        document["nodes"] = lines
        return status, document

    def progress(self) -> dict:
        """What the web page polls while the fan-out runs (GET /cluster/uploads/{id})."""
        nodes = {}
        for t in self.targets:
            nodes[t.name] = {"state": t.state, "bytes": t.channel.taken}
            if t.line is not None and "message" in t.line:
                nodes[t.name]["message"] = t.line["message"]
        return {"id": self.id, "path": self.rel, "mode": self.mode, "state": self.state, "length": self.length,
                "received": self.received, "nodes": nodes, "result": self.result}


class FanoutRegistry:
    """The fan-outs this process runs, or finished in the last KEEP_FINISHED seconds, by id."""

    def __init__(self):
        self._items: dict[str, Fanout] = {}
        self._lock = threading.Lock()

    def add(self, fanout: Fanout) -> None:
        """Register `fanout` (409 if its id is in use)."""
        now = time.monotonic()
        with self._lock:
            for key, item in list(self._items.items()):
                if item.finished is not None and now - item.finished > KEEP_FINISHED:
                    del self._items[key]
            if fanout.id in self._items:
                raise Conflict(f"An upload with id {fanout.id} exists already.", code="upload_exists")
            self._items[fanout.id] = fanout

    def get(self, upload_id: str) -> Fanout:
        """The fan-out `upload_id`; 404 if this process has none by that id."""
        with self._lock:
            fanout = self._items.get(upload_id)
        if fanout is None:
            raise NotFound(f"No upload {upload_id} on this node (finished long ago, never started, or "
                           "in another worker process).", code="no_such_upload")
        return fanout


# -- the endpoint's work ------------------------------------------------------------------------------

def put_cluster_file(area: StageArea, peers: PeerClient, limits: UploadLimits, registry: FanoutRegistry,
                     request, rel: str, wanted: list[str] | None, mode: str, expiry: float) -> Reply:
    """PUT /cluster/files/{rel}: the body to every target node, staged then committed; the outcome as JSON."""
    environ, body = request.environ, None
    try:
        if not rel:
            raise Conflict("That path is a directory.", code="is_directory")
        names = targets_of(peers, wanted)
        stage_id = check_id(request.args["id"]) if "id" in request.args else secrets.token_hex(16)
        length = declared_length(environ)
        check_size(length, limits.max_size)
        digests = wanted_digests(request.headers.get("Content-Digest"))
        targets = [Target(name, LocalStages(area, environ) if name == area.local.name
                          else PeerStages(peers, name, limits)) for name in names]
        fanout = Fanout(stage_id, rel, mode, targets, request.headers, length, expiry)
        registry.add(fanout)
        body = RequestBody(environ, length, limits)
    except ApiError as error:
        raise closing(error, body, environ) from None
    status, document = fanout.run(body, digests)
    log.log(logging.INFO if document["outcome"] == "committed" else logging.WARNING,
            "fan-out %s of %s (%s): %s %s", stage_id, rel, mode, document["outcome"],
            ", ".join(f"{name} {line['status']}" for name, line in document["nodes"].items()))
    data = render(document)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
               ("Cache-Control", "no-store")]
    if status in (200, 201):
        headers.append(("Location", "/cluster/files/" + quote_path(rel)))
    if must_close(environ, body):
        headers.append(("Connection", "close"))
    return Reply(status, headers, [data])
