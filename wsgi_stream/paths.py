"""Mapping a URL path onto a node's root, refusing anything that would leave it."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import NotFound

# Uploads are written under this prefix next to their target; nothing else may see them.
TEMP_PREFIX = ".wsgi_stream-upload-"


def is_temp_name(name: str) -> bool:
    """True for an upload's temporary file, which is never served, listed or zipped."""
    return name.startswith(TEMP_PREFIX)


def clean_relpath(rel: str) -> str:
    """`rel` checked to be a relative path with no `..`, NUL or temp part; 404 otherwise."""
    if "\x00" in rel or rel.startswith("/"):
        raise NotFound("No such file.")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." or is_temp_name(p) for p in parts):
        raise NotFound("No such file.")
    return "/".join(parts)


def resolve(root: Path, rel: str) -> Path:
    """The real path of `rel` under `root`, symlinks resolved; 404 if it would leave the root."""
    real_root = os.path.realpath(root)
    rel = clean_relpath(rel)
    real = os.path.realpath(os.path.join(real_root, rel))
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise NotFound("No such file.")
    return Path(real)
