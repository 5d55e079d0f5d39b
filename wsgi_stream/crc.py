"""CRC-32s remembered: of this node's files by (dev, inode, size, mtime_ns), of peers' by ETag.

A cluster ZIP needs every member's CRC-32: for its headers, its central directory, and to serve
an archive from the middle (resume) without reading again what went out before. Whoever reads a
file whole computes its CRC on the way and remembers it here, keyed by what identifies the
file's content: a replaced or rewritten file gets a new key, so a stale CRC is never used.

The cache is bounded (least recently used out first). A node may keep its own cache in a hidden
file beside its root (never inside the served tree), so it survives restarts.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Hashable

try:
    # ISA-L's CRC-32 runs at tens of GB/s, zlib's at a few; same values.
    from isal.isal_zlib import crc32
except ImportError:  # optional: pip install 'wsgi_stream[fast]'
    crc32 = zlib.crc32

log = logging.getLogger("wsgi_stream.crc")

DEFAULT_LIMIT = 200_000
_RECORD = struct.Struct("<QQQqI")  # dev, inode, size, mtime_ns, crc: 36 bytes an entry on disk
_FILE_KEY = struct.Struct("<QQQq")


def file_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies a file's content: device, inode, size and modification time in ns."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _compact(key: Hashable) -> bytes:
    """`key` in few bytes: a file key packed whole (it can be saved), any other hashed to 16 bytes.

    A gateway remembers one CRC per planned file of every node; as tuples of strings 100,000 of
    them took 30 MiB, as 16-byte digests they take a third of that.
    """
    if isinstance(key, tuple) and len(key) == 4 and all(type(v) is int for v in key):
        return _FILE_KEY.pack(*key)
    return hashlib.blake2b(repr(key).encode("utf-8", "backslashreplace"), digest_size=16).digest()


def cache_path_for(root: Path) -> Path:
    """The hidden file beside `root` (not inside it) where its node keeps CRCs across restarts."""
    root = Path(os.path.realpath(root))
    return root.parent / f".{root.name or 'root'}.wsgi_stream-crc32"


class CrcCache:
    """A bounded, thread-safe map of keys to CRC-32 values, least recently used dropped first."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        self.limit = limit
        self._items: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        self.changed = False

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> int | None:
        """The CRC remembered for `key`, or None."""
        key = _compact(key)
        with self._lock:
            crc = self._items.get(key)
            if crc is not None:
                self._items.move_to_end(key)
            return crc

    def put(self, key: Hashable, crc: int) -> None:
        """Remember `crc` for `key`."""
        key = _compact(key)
        with self._lock:
            if self._items.get(key) != crc:
                self.changed = True
            self._items[key] = crc
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def load(self, path: Path) -> None:
        """Add the entries saved in `path` (a missing or damaged file adds nothing)."""
        try:
            data = Path(path).read_bytes()
        except OSError:
            return
        usable = len(data) - len(data) % _RECORD.size
        for dev, ino, size, mtime_ns, crc in _RECORD.iter_unpack(data[:usable]):
            self.put((dev, ino, size, mtime_ns), crc)
        self.changed = False

    def save(self, path: Path) -> None:
        """Write the file-keyed entries to `path` atomically (a failure is logged, not raised)."""
        with self._lock:
            items = [(_FILE_KEY.unpack(k), v) for k, v in self._items.items() if len(k) == _FILE_KEY.size]
            self.changed = False
        temp = Path(f"{path}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as f:
                f.write(b"".join(_RECORD.pack(*key, crc) for key, crc in items))
            os.replace(temp, path)
        except OSError as exc:
            log.warning("cannot keep CRC-32s in %s: %s", path, exc.strerror)
            temp.unlink(missing_ok=True)


def keep_in_file(cache: CrcCache, path: Path, every: float = 30.0) -> threading.Thread:
    """Load `cache` from `path`, then save it there every `every` seconds when it changed, and at exit."""
    cache.load(path)

    def save_when_changed():
        while True:
            time.sleep(every)
            if cache.changed:
                cache.save(path)

    atexit.register(lambda: cache.changed and cache.save(path))
    saver = threading.Thread(target=save_when_changed, name="crc-saver", daemon=True)
    saver.start()
    return saver


class RunningCrc:
    """The CRC-32 of bytes seen so far, with how many."""

    def __init__(self):
        self.value, self.length = 0, 0

    def update(self, data: bytes) -> None:
        self.value = crc32(data, self.value)
        self.length += len(data)
