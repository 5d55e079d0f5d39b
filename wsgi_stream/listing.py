"""JSON listings of a directory under this node's root.

Nothing is ever opened but folders: files are only stat'ed. What a listing cannot offer for
download (a FIFO, a socket, a device, a symlink leading out of the root or to nothing, a name that
is not UTF-8, and in recursive listings a file or folder the node may not read) is left out of
`entries` and reported in `skipped` with its reason.
"""

from __future__ import annotations

import os
import stat as stat_mod
from pathlib import Path

from .crc import CrcCache, file_key
from .errors import NotFound
from .local import file_etag
from .paths import clean_relpath, is_temp_name, read_error, resolve

_KINDS = ((stat_mod.S_ISFIFO, "a FIFO (named pipe)"), (stat_mod.S_ISSOCK, "a socket"),
          (stat_mod.S_ISCHR, "a character device"), (stat_mod.S_ISBLK, "a block device"))


def kind_of(mode: int) -> str:
    """What a non-regular, non-folder file is, in words."""
    return next((text for test, text in _KINDS if test(mode)), "not a regular file")


def shown(name: str) -> str:
    """A name as JSON can carry it: bytes that are not UTF-8 written as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inside(real_root: str, path: str) -> str | None:
    real = os.path.realpath(path)
    if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
        return real
    return None


def _entry(name: str, rel: str, st: os.stat_result, crcs: CrcCache | None) -> dict:
    if stat_mod.S_ISDIR(st.st_mode):
        return {"name": name, "path": rel, "type": "dir"}
    entry = {"name": name, "path": rel, "type": "file", "size": st.st_size,
             "mtime": st.st_mtime, "etag": file_etag(st)}
    crc = crcs.get(file_key(st)) if crcs is not None else None
    if crc is not None:
        entry["crc32"] = f"{crc:08x}"
    return entry


def _skip(name: str, rel: str, reason: str) -> dict:
    return {"name": shown(name), "path": shown(rel), "reason": reason}


def examine(real_root: str, path: str, name: str, rel: str,
            crcs: CrcCache | None = None, in_real_folder: bool = False) -> tuple[dict | None, str | None]:
    """(entry, None) for a file or folder that can be offered, (None, reason) otherwise.

    (None, None) for what is not worth a word: an upload's temporary file, an entry that vanished.
    `in_real_folder`: `path`'s folder is a real path inside the root (a walk that follows no
    symlinked folder), so only a symlink itself needs resolving.
    """
    if is_temp_name(name):
        return None, None
    if not _utf8(name):
        return None, "name is not valid UTF-8"
    if in_real_folder:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"cannot be examined: {exc.strerror}"
        if not stat_mod.S_ISLNK(st.st_mode):  # its real path is `path` itself: no realpath() needed
            if not (stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode)):
                return None, f"{kind_of(st.st_mode)}: only regular files are served"
            return _entry(name, rel, st, crcs), None
    real = _inside(real_root, path)
    if real is None:
        return None, "a symbolic link leading outside the root"
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return (None, "a symbolic link to nothing") if os.path.islink(path) else (None, None)
    except OSError as exc:
        return None, f"cannot be examined: {exc.strerror}"
    if not (stat_mod.S_ISDIR(st.st_mode) or stat_mod.S_ISREG(st.st_mode)):
        return None, f"{kind_of(st.st_mode)}: only regular files are served"
    return _entry(name, rel, st, crcs), None


def _folder(root: Path, rel: str) -> Path:
    directory = resolve(root, rel)
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise read_error(exc, "directory") from None
    if not stat_mod.S_ISDIR(st.st_mode):
        raise NotFound("No such directory.")
    return directory


def scan(root: Path, rel: str) -> tuple[list[dict], list[dict]]:
    """(entries, skipped) directly in folder `rel`: entries sorted by name; 403/404/400 as JSON."""
    rel = clean_relpath(rel)
    directory = _folder(root, rel)
    real_root = os.path.realpath(root)
    try:
        items = list(os.scandir(directory))
    except OSError as exc:
        raise read_error(exc, "directory") from None
    entries, skipped = [], []
    for item in items:
        path = f"{rel}/{item.name}" if rel else item.name
        entry, reason = examine(real_root, item.path, item.name, path)
        if entry is not None:
            entries.append(entry)
        elif reason is not None:
            skipped.append(_skip(item.name, path, reason))
    return sorted(entries, key=lambda e: e["name"]), sorted(skipped, key=lambda e: e["path"])


def list_entries(root: Path, rel: str) -> list[dict]:
    """The files and folders directly in `rel`, sorted by name (what `scan` can offer)."""
    return scan(root, rel)[0]


def walk(root: Path, rel: str, crcs: CrcCache | None = None) -> tuple[list[dict], list[dict]]:
    """(files, skipped) under `rel` at any depth, by path, with the CRC-32s known in `crcs`;
    symlinked folders are not followed.

    Files and folders the node may not read are skipped here (with their reason), so that a plan
    made from this walk never counts on a file that cannot be opened.
    """
    rel = clean_relpath(rel)
    directory = _folder(root, rel)
    real_root = os.path.realpath(root)
    files, skipped = [], []

    top = os.fspath(directory)

    def inner(dirpath: str, name: str) -> str:
        # os.walk's dirpaths all start with `top`: the path below it, without relpath()'s cost.
        sub = f"{dirpath[len(top) + 1:]}/{name}" if dirpath != top else name
        return f"{rel}/{sub}" if rel else sub

    def unreadable(exc: OSError) -> None:
        if exc.filename == os.fspath(directory):
            raise read_error(exc, "directory")
        name = os.path.basename(exc.filename)
        skipped.append(_skip(name, inner(os.path.dirname(exc.filename), name),
                             f"a folder this node cannot read: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(directory, onerror=unreadable):
        kept = []
        for name in dirnames:
            if not _utf8(name):
                skipped.append(_skip(name, inner(dirpath, name), "name is not valid UTF-8"))
            elif os.path.islink(os.path.join(dirpath, name)):
                skipped.append(_skip(name, inner(dirpath, name), "a symbolic link to a folder: not followed"))
            elif not is_temp_name(name):
                kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            path = os.path.join(dirpath, name)
            entry, reason = examine(real_root, path, name, inner(dirpath, name), crcs, in_real_folder=True)
            if entry is not None and entry["type"] == "file" and not os.access(path, os.R_OK):
                entry, reason = None, "a file this node may not read"
            if entry is not None and entry["type"] == "file":
                files.append(entry)
            elif reason is not None:
                skipped.append(_skip(name, inner(dirpath, name), reason))
    return sorted(files, key=lambda e: e["path"]), sorted(skipped, key=lambda e: e["path"])


def walk_files(root: Path, rel: str, crcs: CrcCache | None = None) -> list[dict]:
    """Every file under `rel`, recursively, sorted by path (what `walk` can offer)."""
    return walk(root, rel, crcs)[0]


def listing(node_name: str, root: Path, rel: str, recursive: bool = False, crcs: CrcCache | None = None) -> dict:
    """The listing document of `rel` on this node: entries (recursive: with the CRC-32s known in
    `crcs`), and what was skipped and why."""
    rel = clean_relpath(rel)
    entries, skipped = walk(root, rel, crcs) if recursive else scan(root, rel)
    return {"node": node_name, "path": rel, "entries": entries, "skipped": skipped}
