"""Query parameters shared by several endpoints, each parsed one way everywhere."""

from __future__ import annotations

from .errors import BadRequest

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def flag(args, name: str) -> bool:
    """The boolean query parameter `name` (1/true/yes/on or 0/false/no/off, absent: false); else 400."""
    value = args.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"?{name}= must be 1 or 0 (true/false, yes/no, on/off), not {value!r}.")


def nodes(args) -> list[str] | None:
    """The node names `?nodes=a,b` asks for; None when absent (every node)."""
    value = args.get("nodes")
    if value is None:
        return None
    wanted = [name.strip() for name in value.split(",") if name.strip()]
    if not wanted:
        raise BadRequest("?nodes= names no node.")
    return wanted


def compress(args) -> bool:
    """Whether `?compress=deflate` asks for a compressed archive (stored by default)."""
    value = args.get("compress", "").lower()
    if value not in ("", "none", "stored", "deflate"):
        raise BadRequest(f"?compress= must be 'deflate' or 'stored', not {value!r}.")
    return value == "deflate"
