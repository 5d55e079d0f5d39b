"""Test files: random bytes and log text, written once per work dir and reused; page cache warming."""

from __future__ import annotations

import os
import random
import shutil

BLOCK = 4 << 20


def _write_once(path: str, size: int, blocks) -> str:
    if os.path.exists(path) and os.path.getsize(path) == size:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        left = size
        for block in blocks():
            f.write(block[:left])
            left -= min(left, len(block))
            if not left:
                break
    os.replace(tmp, path)
    return path


def random_file(path: str, size: int) -> str:
    """`size` random bytes (incompressible) at path."""
    def blocks():
        while True:
            yield os.urandom(BLOCK)
    return _write_once(path, size, blocks)


_LEVELS = ["INFO"] * 12 + ["DEBUG"] * 6 + ["WARNING"] * 2 + ["ERROR"]
_PATHS = ["/files/logs/app.log", "/nodes/b/files/data/run-%d.csv", "/cluster/files/logs/%d.log",
          "/list/data/", "/healthz", "/files/images/scan-%05d.tif"]
_USERS = ["alice", "bob", "carol", "dave", "erin", "svc-backup", "svc-sync"]


def log_text_file(path: str, size: int) -> str:
    """`size` bytes of access-log-like text (seeded, so every run gets the same file).

    Deflate compresses it to about a third, like real service logs."""
    rng = random.Random(16)

    def blocks():
        t = 1_795_000_000.0
        while True:
            lines = []
            for _ in range(20000):
                t += rng.expovariate(40)
                p = rng.choice(_PATHS)
                if "%" in p:
                    p = p % rng.randrange(100000)
                status = rng.choice((200, 200, 200, 200, 206, 304, 404, 502))
                lines.append(
                    f"{t:.3f} {rng.choice(_LEVELS)} wsgi_stream.access node={rng.choice('abc')} "
                    f"client=10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)} "
                    f"user={rng.choice(_USERS)} \"GET {p} HTTP/1.1\" {status} {rng.randrange(10 ** rng.randrange(2, 10))} "
                    f"{rng.random() * 900:.1f}ms req={rng.getrandbits(64):016x}\n")
            yield "".join(lines).encode()
    return _write_once(path, size, blocks)


def place(src: str, dst: str) -> str:
    """dst becomes a hard link to src (a copy across file systems)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        if os.path.samefile(src, dst):
            return dst
        os.unlink(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def warm(path: str) -> str:
    """Read the file once so that every system is served from the page cache."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        while f.readinto(buf):
            pass
    return path
