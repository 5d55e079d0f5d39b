"""Stages: a body received into a hidden file beside its target, put in place only when committed.

Theory of operation
-------------------
A fan-out (fanout.py) has every node *stage* the same body, and commits only once every node
staged it. A stage lives on the node's disk, so any worker process can commit it and a node that
restarts still knows it:

    {dir}/.wsgi_stream-upload-stage-{id}     the staged bytes, beside the target {dir}/{name}
    .wsgi_stream-upload-stages/{id}.json     its record: path, state, size, sha-256, folders made

Both names start with paths.TEMP_PREFIX, so nothing is ever served, listed or zipped from them.

A record goes `receiving` -> `staged` -> `committed`, or is dropped (the stage file and the
folders it made removed, then the record). Whoever works on a record holds its flock: the
receiving request a shared one for as long as the body arrives, commit/abort/the sweeper an
exclusive one taken without waiting (busy: 409). The kernel drops a lock with its process, so a
stage whose receiver died is free for the sweeper at once.

The record's mtime is its expiry time, set on every write. The sweeper (on every stage request,
at most once a second, and from a timer thread while stages exist) drops what expired and is
not locked: a gateway that died between stage and commit leaves nothing behind for long. A
committed record is kept until it expires too, so that a commit whose answer was lost can be
asked again and give the same answer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
import stat as stat_mod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .config import LocalNode
from .errors import ApiError, BadRequest, Conflict, NotFound
from .local import file_etag
from .paths import TEMP_PREFIX, clean_relpath, write_target
from .uploads import (DIGESTS, RequestBody, UploadLimits, adopt_spooled, check_free_space, fsync_dirs,
                      locked, stat_at, stat_or_none, storage_errors, check_replace, check_size,
                      closing, declared_length, make_parents, remove_dirs, wanted_digests)

log = logging.getLogger("wsgi_stream.stages")

STAGE_DIR = TEMP_PREFIX + "stages"
STAGE_FILE = TEMP_PREFIX + "stage-"
# The preconditions a stage keeps to check again at commit.
PRECONDITIONS = ("If-Match", "If-None-Match", "If-Unmodified-Since")
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# The largest commit body read: {"size": n, "sha-256": "..."} is about 100 bytes.
COMMIT_BODY_MAX = 4096
# At most one sweep per this many seconds on the request path.
SWEEP_EVERY = 1.0
# Seconds past its expiry before the sweeper removes a record a crash left unnamed.
UNNAMED_GRACE = 60.0


class StageBusy(Conflict):
    code = "stage_busy"


def no_such_stage(stage_id: str) -> NotFound:
    """The 404 for a stage this node does not hold (never staged, dropped, or expired)."""
    return NotFound(f"No stage {stage_id} here: never staged, aborted, or expired.", code="no_such_stage")


def check_id(stage_id: str) -> str:
    """`stage_id` if it is 8 to 64 letters, digits, '-' or '_'; else 400."""
    if not _ID.fullmatch(stage_id or ""):
        raise BadRequest("A stage id is 8 to 64 letters, digits, '-' or '_'.", code="bad_stage_id")
    return stage_id


def preconditions_of(headers) -> dict[str, str]:
    """The request's precondition headers, kept with the stage to check again at commit."""
    return {name: headers[name] for name in PRECONDITIONS if name in headers}


def check_commit(record: "Record", size: int, sha256: str) -> None:
    """400 unless the staged copy is the `size` bytes with sha-256 `sha256` (hex) the gateway sent."""
    if record.size != size:
        raise BadRequest(f"The staged copy has {record.size} bytes, not {size}; it was dropped.",
                         code="size_mismatch")
    if record.sha256 != sha256.lower():
        raise BadRequest("The staged copy does not match the sha-256 sent; it was dropped.",
                         code="digest_mismatch")


@dataclass
class Record:
    """What a node knows of one stage; stored as JSON in the stage folder."""

    id: str
    path: str                       # the target, relative to the root
    temp: str                       # the stage file, relative to the root
    directory: str                  # the target's real folder when staged: the commit renames there
    made: list[str] = field(default_factory=list)   # folders the stage created, relative to the root
    preconditions: dict[str, str] = field(default_factory=dict)
    state: str = "receiving"        # receiving | staged | committed
    size: int | None = None
    sha256: str | None = None
    created: bool | None = None     # after commit: whether the file is new
    etag: str | None = None         # after commit: the new file's ETag
    expires: float = 0.0

    def public(self, node: str) -> dict:
        """The JSON a node answers about this stage."""
        document = {"node": node, "stage": self.id, "path": self.path, "state": self.state,
                    "size": self.size, "sha-256": self.sha256, "expires": round(self.expires, 3)}
        if self.state == "committed":
            document.update(created=self.created, etag=self.etag)
        return document


class StageArea:
    """This node's stages: receive, commit, abort, and drop the expired ones."""

    def __init__(self, local: LocalNode, expiry: float):
        self.local, self.expiry = local, expiry
        self.folder = Path(local.root) / STAGE_DIR
        self._last_sweep = 0.0
        self._timer_pid: int | None = None
        self._lock = threading.Lock()
        if self._pending():
            self.sweep()
            self._ensure_timer()
        after_fork = weakref.WeakMethod(self._after_fork)  # an App that is gone keeps no area alive
        os.register_at_fork(after_in_child=lambda: (method := after_fork()) and method())

    # -- the four operations -----------------------------------------------------------------------

    def stage(self, stage_id: str, rel: str, headers, length: int | None, blocks: Iterable[bytes],
              digests: dict[str, bytes] | None = None, sha256_of: Callable[[], str] | None = None) -> Record:
        """Receive `blocks` as stage `stage_id` of `rel`: checked, fsynced, hidden, not yet in place.

        `sha256_of`: the caller hashes these very blocks itself (the gateway's own copy) and gives
        the hex digest once they are over; the stage does not hash them a second time.
        """
        check_id(stage_id)
        self.sweep_now_and_then()
        if not rel:
            raise Conflict("That path is a directory.", code="is_directory")
        target = write_target(self.local.root, rel)  # a PUT never writes through a symlink: 409
        check_replace(headers, stat_or_none(target))          # first check: before the body
        record = Record(stage_id, rel, "", str(target.parent), preconditions=preconditions_of(headers))
        fd = self._create(record)
        try:
            self._receive(fd, record, target, length, blocks, digests or {}, sha256_of)
        except BaseException:
            self._drop(record, fd)
            raise
        finally:
            os.close(fd)
        log.info("staged %s as %s (%d bytes, sha-256 %s)", rel, stage_id, record.size, record.sha256)
        return record

    def status(self, stage_id: str) -> Record:
        """The record of stage `stage_id` (404 if there is none)."""
        check_id(stage_id)
        self.sweep_now_and_then()
        for attempt in range(3):
            try:
                with open(self._record_path(stage_id), "rb") as f:
                    return self._load(f.read(), stage_id)
            except FileNotFoundError:
                raise no_such_stage(stage_id) from None
            except NotFound:  # read while its holder rewrote it: read again
                time.sleep(0.01)
        raise no_such_stage(stage_id)

    def commit(self, stage_id: str, size: int, sha256: str) -> Record:
        """Put stage `stage_id` in place if it is the `size` bytes with sha-256 `sha256`; again: same answer."""
        check_id(stage_id)
        self.sweep_now_and_then()
        with self._claimed(stage_id) as (fd, record):
            if record.state == "committed":
                check_commit(record, size, sha256)
                return record
            try:
                if record.state != "staged":  # its receiver died mid-body
                    raise no_such_stage(stage_id)
                check_commit(record, size, sha256)
                self._rename(record)
            except BaseException:
                self._drop(record, fd)
                raise
            record.state = "committed"
            try:
                self._save(fd, record)
            except OSError as exc:  # the file is in place: that is the answer, whatever the record says
                log.warning("stage %s committed but its record could not be updated: %s", stage_id, exc)
        log.info("committed stage %s: %s (%d bytes)", stage_id, record.path, record.size)
        return record

    def abort(self, stage_id: str) -> None:
        """Drop stage `stage_id`; once committed, only forget its record (the file stays)."""
        check_id(stage_id)
        self.sweep_now_and_then()
        with self._claimed(stage_id) as (fd, record):
            self._drop(record, fd)
        if record.state != "committed":
            log.info("aborted stage %s of %s", stage_id, record.path)

    # -- expiry ------------------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Drop every expired stage nobody holds; the number dropped."""
        now = time.time() if now is None else now
        dropped = 0
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if not entry.name.endswith(".json"):
                    # A record a crash left unnamed; one being named now has a fresh or future mtime.
                    if ".new-" in entry.name and entry.stat().st_mtime <= now - UNNAMED_GRACE:
                        os.unlink(entry.path)
                    continue
                if entry.stat().st_mtime > now:
                    continue
                with self._claimed(entry.name[:-5], missing_ok=True) as (fd, record):
                    if fd is None or record.expires > now:
                        continue
                    if record.state != "committed":
                        log.warning("stage %s of %s expired (%s): dropped", record.id, record.path, record.state)
                    self._drop(record, fd)
                    dropped += 1
            except (StageBusy, OSError) as exc:
                if not isinstance(exc, StageBusy):
                    log.warning("could not sweep stage %s: %s", entry.name, exc)
        if not entries:
            try:
                os.rmdir(self.folder)
            except OSError:
                pass
        return dropped

    def sweep_now_and_then(self) -> None:
        """Sweep unless this process swept less than SWEEP_EVERY seconds ago."""
        now = time.monotonic()
        if now - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now
            self.sweep()

    def _pending(self) -> bool:
        try:
            return any(name.endswith(".json") for name in os.listdir(self.folder))
        except OSError:
            return False

    def _ensure_timer(self) -> None:
        """Run the sweeper thread in this process while stages exist (a fork loses threads)."""
        with self._lock:
            if self._timer_pid == os.getpid():
                return
            self._timer_pid = os.getpid()
        threading.Thread(target=self._timer, name="stage-sweeper", daemon=True).start()

    def _after_fork(self) -> None:
        self._timer_pid = None
        self._lock = threading.Lock()
        if self._pending():
            self._ensure_timer()

    def _timer(self) -> None:
        interval = max(0.5, min(60.0, self.expiry / 4))
        while True:
            time.sleep(interval)
            try:
                self.sweep()
                with self._lock:
                    if not self._pending():
                        self._timer_pid = None
                        return
            except Exception:
                log.exception("stage sweeper failed")

    # -- inside --------------------------------------------------------------------------------------

    def _record_path(self, stage_id: str) -> Path:
        return self.folder / f"{stage_id}.json"

    def _create(self, record: Record) -> int:
        """The new record, written, locked shared (held while the body arrives) and only then named.

        Written under a temporary name first, so the sweeper never meets a record nobody holds
        that has no expiry yet; os.link() fails if the id is taken.
        """
        fresh = self.folder / f"{record.id}.new-{secrets.token_hex(4)}"
        with storage_errors(record.path):
            for attempt in range(3):
                self.folder.mkdir(exist_ok=True)
                try:
                    fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    break
                except FileNotFoundError:  # a sweeper removed the empty folder just now
                    if attempt == 2:
                        raise
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                self._save(fd, record)
                try:
                    os.link(fresh, self._record_path(record.id))
                except FileExistsError:
                    raise Conflict(f"Stage {record.id} exists already.", code="stage_exists") from None
                finally:
                    os.unlink(fresh)
            except BaseException:
                os.close(fd)
                raise
        self._ensure_timer()
        return fd

    def _receive(self, fd: int, record: Record, target: Path, length: int | None, blocks, digests,
                 sha256_of) -> None:
        root = self.local.root
        with storage_errors(record.path):
            record.made = [os.path.relpath(p, os.path.realpath(root)) for p in make_parents(target.parent)]
            record.temp = os.path.relpath(target.parent / (STAGE_FILE + record.id), os.path.realpath(root))
            self._save(fd, record, durable=True)  # before the stage file exists: the sweeper can find it
            if write_target(root, record.path) != target:  # the root itself was moved meanwhile
                raise Conflict("The path changed while it was being created.")
            check_free_space(target.parent, length)
            record.size, record.sha256 = self._write(target, record.id, blocks, digests, sha256_of)
        if os.fstat(fd).st_nlink == 0:  # dropped while the body arrived
            raise no_such_stage(record.id)
        record.state = "staged"
        self._save(fd, record)

    def _write(self, target: Path, stage_id: str, blocks, digests: dict[str, bytes], sha256_of) -> tuple[int, str]:
        """Write the stage file: (size, sha-256 hex); 400 if a Content-Digest does not match.

        A body the server spooled whole on this file system is linked in instead of copied (as
        uploads.store does), then read once for its digests.
        """
        hashes = {name: DIGESTS[name]() for name in digests}
        if sha256_of is None:
            hashes.setdefault("sha-256", hashlib.sha256())
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            old = stat_at(target.name, dir_fd)
            fd = adopt_spooled(blocks, STAGE_FILE + stage_id, dir_fd)
            adopted = fd is not None
            if not adopted:
                fd = os.open(STAGE_FILE + stage_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666,
                             dir_fd=dir_fd)
            try:
                if old is not None and stat_mod.S_ISREG(old.st_mode):
                    os.fchmod(fd, stat_mod.S_IMODE(old.st_mode))  # a replaced file keeps its mode
                if adopted:
                    size = os.fstat(fd).st_size
                    blocks.take(size)
                    _hash_file(fd, hashes.values(), self.local.chunk_size)
                else:
                    size = _write_blocks(fd, blocks, hashes.values())
                for name, wanted in digests.items():
                    if hashes[name].digest() != wanted:
                        raise BadRequest(f"The body does not match its Content-Digest ({name}); nothing was "
                                         "staged.", code="digest_mismatch")
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
        return size, (hashes["sha-256"].hexdigest() if sha256_of is None else sha256_of())

    def _rename(self, record: Record) -> None:
        """Rename the stage file over its target, the preconditions checked again under the folder's lock."""
        root = self.local.root
        with storage_errors(record.path):
            target = write_target(root, record.path)
            if str(target.parent) != record.directory:
                raise Conflict("The path's folder changed since it was staged.")
            dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                temp = os.path.basename(record.temp)
                with locked(dir_fd):
                    old = stat_at(target.name, dir_fd)
                    check_replace(record.preconditions, old)  # again: another upload may have won meanwhile
                    try:
                        os.replace(temp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    except FileNotFoundError:
                        raise Conflict("The staged file is gone.", code="stage_lost") from None
                    st = os.stat(target.name, dir_fd=dir_fd)
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            fsync_dirs(Path(root, made).parent for made in record.made)
        record.created, record.etag = old is None, file_etag(st)

    def _drop(self, record: Record, fd: int | None) -> None:
        """Remove the stage file, the folders it made, then the record (in that order: a crash leaves a record)."""
        root = self.local.root
        if record.state != "committed":
            if record.temp:
                try:
                    os.unlink(Path(root, record.temp))
                except (FileNotFoundError, NotADirectoryError):
                    pass
            remove_dirs([Path(root, made) for made in record.made])
        if fd is None or os.fstat(fd).st_nlink:
            try:
                os.unlink(self._record_path(record.id))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.folder)  # only when empty: a root without stages shows no trace of them
        except OSError:
            pass

    @contextmanager
    def _claimed(self, stage_id: str, missing_ok: bool = False):
        """Hold stage `stage_id`'s record exclusively: (fd, Record); 404 if none, 409 if busy."""
        try:
            fd = os.open(self._record_path(stage_id), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if missing_ok:
                yield None, None
                return
            raise no_such_stage(stage_id) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StageBusy(f"Stage {stage_id} is still receiving its body or being committed.") from None
            if os.fstat(fd).st_nlink == 0:  # dropped by whoever held it before us
                if missing_ok:
                    yield None, None
                    return
                raise no_such_stage(stage_id)
            data = os.pread(fd, 1 << 20, 0)
            try:
                record = self._load(data, stage_id)
            except ApiError:
                # A record cut short by a crash before its first write: nothing was staged yet.
                record = Record(stage_id, "", "", "", expires=0.0)
            yield fd, record
        finally:
            os.close(fd)  # releases the flock

    def _load(self, data: bytes, stage_id: str) -> Record:
        try:
            fields = json.loads(data)
            return Record(**fields)
        except (ValueError, TypeError):
            raise no_such_stage(stage_id) from None

    def _save(self, fd: int, record: Record, durable: bool = False) -> None:
        """Rewrite the record in place (its lock stays on the inode); its mtime becomes the expiry time."""
        record.expires = time.time() + self.expiry
        data = json.dumps(asdict(record)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.utime(fd, (record.expires, record.expires))
        if durable:
            os.fsync(fd)
            fsync_dirs([self.folder])



def _write_blocks(fd: int, blocks, hashes) -> int:
    """Write `blocks` to `fd`, feeding `hashes`: the number of bytes."""
    size = 0
    for data in blocks:
        for h in hashes:
            h.update(data)
        size += len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return size


def _hash_file(fd: int, hashes, block: int) -> None:
    """Feed the whole file `fd` to `hashes` (read only if there is one)."""
    offset = 0
    while hashes and (data := os.pread(fd, block, offset)):
        for h in hashes:
            h.update(data)
        offset += len(data)


# -- the node-to-node endpoints' work -----------------------------------------------------------------

def put_stage(area: StageArea, limits: UploadLimits, request, stage_id: str) -> Record:
    """PUT /stages/{id}?path=...: receive the request's body as stage `stage_id`; 4xx on the way."""
    environ, body = request.environ, None
    try:
        check_id(stage_id)
        if "path" not in request.args:
            raise BadRequest("A stage needs ?path=, the file it is for.")
        rel = clean_relpath(request.args["path"])
        length = declared_length(environ)
        check_size(length, limits.max_size)
        digests = wanted_digests(request.headers.get("Content-Digest"))
        body = RequestBody(environ, length, limits)
        return area.stage(stage_id, rel, request.headers, length, body, digests)
    except ApiError as error:
        log.warning("stage %s refused: %d %s", stage_id, error.status, error.message)
        raise closing(error, body, environ) from None


def commit_request(data: bytes) -> tuple[int, str]:
    """(size, sha-256 hex) from a commit's JSON body `{"size": n, "sha-256": "hex"}`; else 400."""
    try:
        document = json.loads(data)
        size, sha256 = document["size"], document["sha-256"]
    except (ValueError, TypeError, KeyError):
        raise BadRequest('A commit body is {"size": bytes, "sha-256": "hex digest"}.') from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0 \
            or not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise BadRequest('A commit body is {"size": bytes, "sha-256": "hex digest"}.')
    return size, sha256.lower()
