"""Text for log lines: whatever a client sent (a path with %0a, a bidi mark) stays on one line."""

from __future__ import annotations


def log_safe(text: str) -> str:
    """`text` fit for one log line: `\\` and `"` escaped, and every unprintable character
    (line breaks, controls, bidi marks) as `\\xNN`/`\\uNNNN`; a byte that was not UTF-8 as `\\xNN`."""
    if text.isprintable() and "\\" not in text and '"' not in text:
        return text
    out = []
    for c in text:
        if c in '\\"':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif "\udc80" <= c <= "\udcff":  # surrogateescape: a raw byte
            out.append(f"\\x{ord(c) - 0xdc00:02x}")
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return "".join(out)
