"""JSON listings of a directory under this node's root."""

from __future__ import annotations

import os
import stat as stat_mod
from pathlib import Path

from .crc import CrcCache, file_key
from .errors import NotFound
from .local import file_etag
from .paths import clean_relpath, is_temp_name, resolve


def _usable(name: str) -> bool:
    # A name that is not valid UTF-8 cannot be put in JSON or a URL faithfully: leave it out.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not is_temp_name(name)


def _inside(real_root: str, path: str) -> str | None:
    real = os.path.realpath(path)
    if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
        return real
    return None


def _entry(name: str, rel: str, st: os.stat_result, crcs: CrcCache | None = None) -> dict | None:
    if stat_mod.S_ISDIR(st.st_mode):
        return {"name": name, "path": rel, "type": "dir"}
    if stat_mod.S_ISREG(st.st_mode):
        entry = {"name": name, "path": rel, "type": "file", "size": st.st_size,
                 "mtime": st.st_mtime, "etag": file_etag(st)}
        crc = crcs.get(file_key(st)) if crcs is not None else None
        if crc is not None:
            entry["crc32"] = f"{crc:08x}"
        return entry
    return None  # sockets, fifos, devices: never served


def list_entries(root: Path, rel: str) -> list[dict]:
    """The files and folders directly in `rel`, sorted by name; symlinks leaving the root are left out."""
    rel = clean_relpath(rel)
    directory = resolve(root, rel)
    real_root = os.path.realpath(root)
    try:
        scan = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        raise NotFound("No such directory.") from None
    entries = []
    for item in scan:
        real = _inside(real_root, item.path)
        if real is None or not _usable(item.name):
            continue
        try:
            st = os.stat(real)
        except OSError:
            continue
        entry = _entry(item.name, f"{rel}/{item.name}" if rel else item.name, st)
        if entry:
            entries.append(entry)
    return sorted(entries, key=lambda e: e["name"])


def walk_files(root: Path, rel: str, crcs: CrcCache | None = None) -> list[dict]:
    """Every file under `rel`, recursively, sorted by path (symlinked folders are not followed)."""
    rel = clean_relpath(rel)
    directory = resolve(root, rel)
    if not directory.is_dir():
        raise NotFound("No such directory.")
    real_root = os.path.realpath(root)
    files = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if _usable(d)]
        sub = os.path.relpath(dirpath, directory)
        for name in filenames:
            if not _usable(name):
                continue
            real = _inside(real_root, os.path.join(dirpath, name))
            try:
                st = os.stat(real) if real else None
            except OSError:
                continue
            if st is None:
                continue
            inner = name if sub == "." else f"{sub}/{name}"
            entry = _entry(name, f"{rel}/{inner}" if rel else inner, st, crcs)
            if entry and entry["type"] == "file":
                files.append(entry)
    return sorted(files, key=lambda e: e["path"])


def listing(node_name: str, root: Path, rel: str, recursive: bool = False, crcs: CrcCache | None = None) -> dict:
    """The §4.3 listing document of `rel` on this node (recursive: with the CRC-32s known in `crcs`)."""
    rel = clean_relpath(rel)
    entries = walk_files(root, rel, crcs) if recursive else list_entries(root, rel)
    return {"node": node_name, "path": rel, "entries": entries}
