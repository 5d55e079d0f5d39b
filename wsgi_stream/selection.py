"""Picking what goes in: `?glob=`, `?since=`, `?until=` and `?max_size=` on listings and cluster ZIPs.

A selection is decided once, at the node the client asked, and then handed on to every peer in
absolute terms (times as Unix seconds), so "the last hour" means the same hour on every node.
Patterns are shell patterns matched against the path below the requested folder: one without a
`/` matches a file's name in any sub-folder (`*.log`), one with a `/` matches the whole path below
the folder (`app/*.log`, where `*` may cross folders). A file is picked when it matches any
pattern (or there is none), is not older than `since`, not newer than `until`, and not larger
than `max_size` bytes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from urllib.parse import urlencode

from .errors import BadRequest

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^(\d+)([kmgt]?)(?:i?b)?$", re.IGNORECASE)
MAX_PATTERNS = 32


@dataclass(frozen=True)
class Selection:
    """Which files a request picks; the empty selection picks every file."""

    globs: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    max_size: int | None = None
    # The values as the client wrote them (`since=1h`): what `_cluster.json` records, so that the
    # same files picked a minute later make the same archive, byte for byte.
    given: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def active(self) -> bool:
        return bool(self.globs) or self.since is not None or self.until is not None or self.max_size is not None

    def picks(self, below: str, size: int, mtime: float | None) -> bool:
        """Whether the file `below` the requested folder, of `size` bytes changed at `mtime`, is picked."""
        if self.max_size is not None and size > self.max_size:
            return False
        if (self.since is not None or self.until is not None) and mtime is None:
            return False
        if self.since is not None and mtime < self.since:
            return False
        if self.until is not None and mtime > self.until:
            return False
        return not self.globs or any(_matches(pattern, below) for pattern in self.globs)

    def query(self) -> str:
        """The selection as query parameters for a peer (`&`-prefixed; empty when inactive)."""
        pairs = [("glob", g) for g in self.globs]
        pairs += [(k, repr(v)) for k, v in (("since", self.since), ("until", self.until)) if v is not None]
        if self.max_size is not None:
            pairs.append(("max_size", str(self.max_size)))
        return "&" + urlencode(pairs) if pairs else ""

    def describe(self) -> dict | None:
        """The selection as recorded in `_cluster.json`: the values the client gave; None when inactive."""
        if not self.active:
            return None
        given = dict(self.given)
        return {"glob": list(self.globs), "since": given.get("since"), "until": given.get("until"),
                "max_size": given.get("max_size")}


def _matches(pattern: str, below: str) -> bool:
    if "/" in pattern:
        return fnmatchcase(below, pattern.strip("/"))
    return fnmatchcase(below.rsplit("/", 1)[-1], pattern)


def parse_time(value: str, now: float, name: str) -> float:
    """Unix seconds from RFC 3339 (`2026-11-26T08:00:00Z`), Unix seconds, or a time ago (`90m`, `1h`, `2d`)."""
    text = value.strip()
    relative = _RELATIVE.match(text.lower())
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise BadRequest(f"?{name}= must be an RFC 3339 time (2026-11-26T08:00:00Z) or a time ago "
                         f"(30m, 1h, 2d), not {value!r}.", code="bad_selection") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # a time without offset is the node's local time
    return parsed.timestamp()


def parse_size(value: str) -> int:
    """Bytes from `1048576`, `512k`, `10M`, `2GiB`."""
    match = _SIZE.match(value.strip())
    if not match:
        raise BadRequest(f"?max_size= must be a number of bytes (or 512k, 10M, 2G), not {value!r}.",
                         code="bad_selection")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_selection(args, now: float | None = None) -> Selection:
    """The selection a request's query asks for; 400 bad_selection for a value that makes no sense."""
    now = time.time() if now is None else now
    globs = tuple(g for g in args.getlist("glob") if g.strip())
    if len(globs) > MAX_PATTERNS:
        raise BadRequest(f"At most {MAX_PATTERNS} ?glob= patterns.", code="bad_selection")
    since = parse_time(args["since"], now, "since") if args.get("since") else None
    until = parse_time(args["until"], now, "until") if args.get("until") else None
    if since is not None and until is not None and since > until:
        raise BadRequest("?since= is after ?until=: that selects nothing.", code="bad_selection")
    max_size = parse_size(args["max_size"]) if args.get("max_size") else None
    given = tuple((key, args[key]) for key in ("since", "until", "max_size") if args.get(key))
    return Selection(globs, since, until, max_size, given)


def below(path: str, folder: str) -> str:
    """`path` relative to `folder` (its name when `path` is the folder itself, a single file)."""
    if folder and path.startswith(folder + "/"):
        return path[len(folder) + 1:]
    if path == folder:
        return path.rsplit("/", 1)[-1]
    return path


def pick_entries(entries: list[dict], folder: str, selection: Selection) -> list[dict]:
    """The listing entries `selection` picks: files by the rules, folders kept (for browsing)."""
    if not selection.active:
        return entries
    return [e for e in entries if e.get("type") == "dir"
            or selection.picks(below(e.get("path", ""), folder), e.get("size", 0), e.get("mtime"))]
