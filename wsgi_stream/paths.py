"""Mapping a URL path onto a node's root, refusing anything that would leave it.

Also the one table that turns an OSError about a path into the client's answer: whatever a
strange name or a strange disk raises (a name too long, a symlink loop, a folder the node may
not read), the client gets a JSON 4xx naming the problem, never a 500.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import ApiError, BadRequest, Conflict, Forbidden, NotFound

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


# -- what an OSError about a path means to the client ---------------------------------------------

class NameTooLong(BadRequest):
    code = "name_too_long"


class NotReadable(Forbidden):
    code = "not_readable"


class BadName(BadRequest):
    code = "bad_name"


# errno -> (error class, message) when reading; {what} is "file" or "directory".
_READ_ERRORS = {
    errno.ENOENT: (NotFound, "No such {what}."),
    errno.ENOTDIR: (NotFound, "No such {what}."),
    errno.EISDIR: (NotFound, "No such {what}."),
    errno.ELOOP: (NotFound, "No such {what} (a symbolic link loop)."),
    errno.ENAMETOOLONG: (NameTooLong, "A name in the path is longer than this node's file system allows."),
    errno.EACCES: (NotReadable, "This node may not read that {what}."),
    errno.EPERM: (NotReadable, "This node may not read that {what}."),
    # A name the file system cannot hold (vfat and ':', a utf8only ZFS) cannot exist there either.
    errno.EINVAL: (NotFound, "No such {what}."),
    errno.EILSEQ: (NotFound, "No such {what}."),
}


def read_error(exc: OSError, what: str = "file") -> ApiError:
    """The answer to an OSError met while opening or listing a path (`what`: "file" or "directory")."""
    known = _READ_ERRORS.get(exc.errno)
    if known is None:  # EIO and the like: the disk, not the name; still JSON, still no traceback
        return ApiError(f"This node could not read that {what}: {exc.strerror or exc}.", code="io_error")
    cls, message = known
    return cls(message.format(what=what))


# errno -> error when writing (creating folders, the temporary file, the rename).
_WRITE_ERRORS = {
    errno.ENAMETOOLONG: lambda: NameTooLong("A name in the path is longer than this node's file system allows."),
    errno.EINVAL: lambda: BadName("This node's file system cannot hold that name."),
    errno.EILSEQ: lambda: BadName("This node's file system cannot hold that name."),
    errno.ENOTDIR: lambda: Conflict("A parent of that path is a file.", code="parent_not_directory"),
    errno.EISDIR: lambda: Conflict("That path is a directory.", code="is_directory"),
    errno.ELOOP: lambda: Conflict("That path goes through a symbolic link; uploads never write through links.",
                                  code="symlink"),
    errno.ENOENT: lambda: Conflict("The path changed while the upload was being stored."),
}


def write_error(exc: OSError) -> ApiError | None:
    """The answer to an OSError about the path while writing, None if it is not about the path."""
    known = _WRITE_ERRORS.get(exc.errno)
    return known() if known else None


# -- a path to write to -------------------------------------------------------------------------------

def upload_relpath(raw: str) -> str:
    """The clean path a PUT names; 400 when it names a folder (ends in `/` or `.`), 404 if refused."""
    if raw.rsplit("/", 1)[-1] in ("", "."):
        raise BadRequest("A PUT names a file; this path ends in '/'.", code="trailing_slash")
    return clean_relpath(raw)


def write_target(root: Path, rel: str) -> Path:
    """Where an upload of clean `rel` goes: exactly `root/rel`; 409 if any part of it is a symlink."""
    target = resolve(root, rel)
    if target != Path(os.path.realpath(root), rel):
        raise Conflict("That path goes through a symbolic link; uploads never write through links.",
                       code="symlink")
    return target
