"""Portable member names: a name any common OS can store when it extracts a cluster ZIP.

A Linux disk holds names that Windows (and often macOS) cannot: control characters (a newline,
a CR, a tab), `\\ : * ? " < > |`, trailing dots and spaces, device names such as `CON` or
`nul.txt`. Such a path segment is percent-escaped as a whole: every unsafe character, every `%`
(so the escape can be undone exactly), a trailing run of dots and spaces, and the first letter of
a device name. A segment that needs none of it stays as it is. The archive's `_cluster.json`
records the original name of every member that was renamed.
"""

from __future__ import annotations

import re

# Characters Windows refuses in a name, and every control character (also refused by macOS
# Finder and most tools as well).
_UNSAFE = frozenset([chr(c) for c in range(0x20)] + ["\x7f", '"', "*", ":", "<", ">", "?", "\\", "|"])
# Names Windows reserves for devices, with any extension ("nul.txt"), in any case.
# The same characters as one search: most names have none, and a plan may hold 100,000 of them.
_UNSAFE_RE = re.compile("[" + re.escape("".join(sorted(_UNSAFE))) + "]")
_DEVICES = frozenset(["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
                     + [f"{p}{n}" for p in ("COM", "LPT") for n in "123456789\u00b9\u00b2\u00b3"])


def _escape(c: str) -> str:
    return "".join(f"%{b:02X}" for b in c.encode("utf-8"))


def _is_device(segment: str) -> bool:
    return segment.split(".", 1)[0].rstrip(" ").upper() in _DEVICES


def needs_escape(segment: str) -> bool:
    """Whether a common OS could not store `segment` as a file or folder name."""
    return bool(_UNSAFE_RE.search(segment)) or segment[-1:] in (".", " ") or _is_device(segment)


def portable_segment(segment: str) -> str:
    """`segment` as it goes in an archive: unchanged when portable, percent-escaped otherwise."""
    if not needs_escape(segment):
        return segment
    body = segment.rstrip(". ")
    tail = segment[len(body):]
    out = "".join(_escape(c) if c in _UNSAFE or c == "%" else c for c in body) + "".join(map(_escape, tail))
    if _is_device(segment) and body:
        out = _escape(out[0]) + out[1:]
    return out


def check_segments(path: str) -> list[str]:
    """The segments of relative `path`; ValueError for what no disk holds (empty, `.`, `..`, NUL, not UTF-8)."""
    if not isinstance(path, str) or not path:
        raise ValueError("empty name")
    if path.startswith("/"):
        raise ValueError("absolute name")
    if "\x00" in path:
        raise ValueError("NUL in name")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("name is not valid UTF-8") from None
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError("empty, '.' or '..' path segment")
    return segments


def portable_path(path: str) -> str:
    """Relative `path` with each segment made portable; ValueError for a path no disk holds."""
    return "/".join(portable_segment(s) for s in check_segments(path))
