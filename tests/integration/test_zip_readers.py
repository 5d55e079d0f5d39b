"""The reader matrix: every archive form zipfmt writes, opened by real, independent ZIP readers.

Readers: Python zipfile, `unzip -t`, `7z t`, `bsdtar` reading a pipe, stream-unzip, Java
ZipInputStream (from a pipe) and ZipFile, Apache Commons Compress ZipArchiveInputStream (from a
pipe, default settings). Each one checks every byte: either it reports (name, size, CRC-32 of the
bytes it read) for every member and we compare with the plan, or it verifies every CRC itself and we
check that it says so. A reader that is not installed is skipped with the reason (.ci/run installs
them from Debian: unzip p7zip-full libarchive-tools default-jdk-headless libcommons-compress-java).

Archives: UTF-8 names, 0-byte files and every size form (stored with CRC, stored deflate blocks at
block edges, some CRCs given and some not); the same with ?compress=deflate; members of unknown
size (the embedding API's generated members); more than 65,535 entries. The member over 4 GiB is
a separate, slower test (about 15 s): it streams 4.5 GB through the two streaming readers that
matter most for it, Java ZipInputStream and stream-unzip, with no file written.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pytest
from stream_unzip import stream_unzip

from wsgi_stream.zipfmt import BLOCK, ENTRY_LIMIT, SMALL, Member, ZipLayout, crc32

READERS_DIR = Path(__file__).resolve().parent.parent / "readers"
COMMONS_JAR = Path("/usr/share/java/commons-compress.jar")
MTIME = 1_700_000_000
CHUNK = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

Entry = tuple  # (name, size, crc32)


def _pattern(n: int, seed: int) -> bytes:
    block = hashlib.sha256(b"%d" % seed).digest() * 4096  # 128 KiB of poorly compressible bytes
    return (block * (n // len(block) + 1))[:n]


def _log_text(n: int) -> bytes:
    lines = (b"2024-05-0%d 12:%02d:%02d node-%d app[%d]: GET /files/logs/%d 200 %d bytes in %d ms\n"
             % (i % 9 + 1, i % 60, i * 7 % 60, i % 3, 1000 + i % 13, i, i * 37 % 100_000, i % 250)
             for i in range(n // 60 + 1))
    return b"".join(lines)[:n]


@dataclass
class Archive:
    """An archive written to `path`, with the (name, size, crc) every reader must find in it."""

    path: Path
    expected: list[Entry]
    digest: str  # sha256 of every member's bytes, concatenated in order

    def chunks(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


def _write(path: Path, layout: ZipLayout, contents: list[bytes]) -> Archive:
    def read_member(index, offset):
        data = contents[index]
        return (data[i:i + 300_000] for i in range(offset, len(data), 300_000))

    size = 0
    with open(path, "wb") as f:
        for chunk in layout.body(read_member, lambda i: pytest.fail("every CRC is given or computed")):
            f.write(chunk)
            size += len(chunk)
    if layout.length is not None:
        assert size == layout.length
    expected = [(m.name, len(d), zlib.crc32(d)) for m, d in zip(layout.members, contents)]
    digest = hashlib.sha256()
    for data in contents:
        digest.update(data)
    return Archive(path, expected, digest.hexdigest())


def _names_shape() -> list[tuple[str, bytes]]:
    sizes = {"s/one": 1, "s/small": SMALL, "s/small+1": SMALL + 1, "b/17 blocks": 17 * BLOCK,
             "b/17 blocks+1": 17 * BLOCK + 1, "b/3 MiB": 3 * SMALL + 12345}
    shape = [("a/rapport d'été.txt", "ünïcødé, 日本語\n".encode()), ("a/vide", b""), ("c/日本語/ファイル", b"x" * 10),
             ("c/空のファイル", b""), ("d/emoji-🙂.log", _log_text(200_000))]
    shape += [(name, _pattern(n, i)) for i, (name, n) in enumerate(sizes.items())]
    return shape + [("z/last-empty", b"")]


def _build_names(path: Path, deflate: bool = False) -> Archive:
    shape = _names_shape()
    # Every other member's CRC is "cached": the bytes must not depend on it.
    members = [Member(name, len(data), MTIME, zlib.crc32(data) if i % 2 else None)
               for i, (name, data) in enumerate(shape)]
    return _write(path, ZipLayout(members, deflate=deflate), [d for _, d in shape])


def _build_generated(path: Path) -> Archive:
    contents = [b"running\n", b"".join(b"process %d\n" % i for i in range(200_000)), b"", _pattern(SMALL + 3, 9)]
    members = [Member("status/service.txt", 8, MTIME), Member("status/ps.txt", None, MTIME),
               Member("status/nothing", None, MTIME), Member("status/core", None, MTIME)]
    return _write(path, ZipLayout(members), contents)


def _build_many(path: Path) -> Archive:
    count = ENTRY_LIMIT + 4465
    contents = [b"%d\n" % i if i % 5 == 0 else b"" for i in range(count)]
    members = [Member(f"n/{i // 1000:03d}/{i:06d}.txt", len(d), MTIME) for i, d in enumerate(contents)]
    return _write(path, ZipLayout(members), contents)


BUILDERS: dict[str, Callable[[Path], Archive]] = {
    "utf-8 names, empty files, every form": _build_names,
    "deflate": lambda path: _build_names(path, deflate=True),
    "generated members of unknown size": _build_generated,
    "more than 65,535 entries": _build_many,
}


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Archive]:
    base = tmp_path_factory.mktemp("archives")
    return {name: build(base / f"{i}.zip") for i, (name, build) in enumerate(BUILDERS.items())}


# -- running readers -----------------------------------------------------------------------------

def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def _pipe(cmd: list[str], chunks: Iterable[bytes], env=None) -> bytes:
    """Run `cmd` with `chunks` written to its stdin from a thread; its stdout, or a failure with its stderr."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        fcntl.fcntl(proc.stdin, _F_SETPIPE_SZ, CHUNK)  # fewer, larger writes for the 4.5 GB archive
    except OSError:
        pass
    err = []

    def feed():
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass

    def drain():
        err.append(proc.stderr.read())

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        out = proc.stdout.read()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for thread in threads:
        thread.join(timeout=60)
    stderr = b"".join(err).decode(errors="replace")
    assert proc.returncode == 0, f"{cmd[0]} failed ({proc.returncode}): {stderr[-3000:]}"
    return out


def _entries(out: bytes) -> list[Entry]:
    """Lines of "name<TAB>size<TAB>crc32 in hex", as the Java readers print them."""
    rows = []
    for line in out.decode("utf-8").splitlines():
        name, size, crc = line.rsplit("\t", 2)
        rows.append((name, int(size), int(crc, 16)))
    return rows


@pytest.fixture(scope="session")
def java_classes(tmp_path_factory) -> Path:
    """tests/readers/*.java compiled once (each also runs alone as `java File.java`)."""
    _need("java")
    javac = _need("javac")
    out = tmp_path_factory.mktemp("java")
    subprocess.run([javac, "-d", str(out), str(READERS_DIR / "ZipCheck.java")], check=True)
    if COMMONS_JAR.exists():
        subprocess.run([javac, "-cp", str(COMMONS_JAR), "-d", str(out), str(READERS_DIR / "CommonsZipCheck.java")],
                       check=True)
    return out


def read_zipfile(archive: Archive, classes) -> list[Entry]:
    rows = []
    with zipfile.ZipFile(archive.path) as zf:
        for info in zf.infolist():
            crc, size = 0, 0
            with zf.open(info) as member:  # zipfile checks each CRC at the member's end
                while chunk := member.read(CHUNK):
                    crc, size = zlib.crc32(chunk, crc), size + len(chunk)
            rows.append((info.filename, size, crc))
    return rows


def read_stream_unzip(archive: Archive, classes, chunks: Iterable[bytes] | None = None) -> list[Entry]:
    rows = []
    for name, _, member in stream_unzip(archive.chunks() if chunks is None else chunks, chunk_size=CHUNK):
        crc, size = 0, 0
        for chunk in member:  # stream-unzip checks each CRC and size itself
            crc, size = crc32(chunk, crc), size + len(chunk)
        rows.append((name.decode("utf-8"), size, crc))
    return rows


def read_java_stream(archive: Archive, classes, chunks: Iterable[bytes] | None = None) -> list[Entry]:
    out = _pipe(["java", "-cp", str(classes), "ZipCheck", "stream", "-"],
                archive.chunks() if chunks is None else chunks)
    return _entries(out)


def read_java_file(archive: Archive, classes) -> list[Entry]:
    return _entries(_pipe(["java", "-cp", str(classes), "ZipCheck", "file", str(archive.path)], []))


def read_commons(archive: Archive, classes) -> list[Entry]:
    if not (classes / "CommonsZipCheck.class").exists():
        pytest.skip(f"no {COMMONS_JAR} (Debian libcommons-compress-java)")
    out = _pipe(["java", "-cp", f"{classes}{os.pathsep}{COMMONS_JAR}", "CommonsZipCheck", "-"], archive.chunks())
    return _entries(out)


def read_unzip(archive: Archive, classes) -> list[Entry]:
    _need("unzip")
    out = _pipe(["unzip", "-t", str(archive.path)], [])  # tests every CRC; exit status 0 only if all good
    assert f"No errors detected in compressed data of {archive.path}." in out.decode(errors="replace")
    assert out.count(b"  testing: ") == len(archive.expected)
    return archive.expected


def read_7z(archive: Archive, classes) -> list[Entry]:
    _need("7z")
    out = _pipe(["7z", "t", str(archive.path)], []).decode(errors="replace")  # tests every CRC
    assert "Everything is Ok" in out and "Errors" not in out, out
    files = sum(1 for _, size, _ in archive.expected)
    assert f"Files: {files}" in out or (files == 1 and "Size:" in out), out
    listing = _pipe(["7z", "l", "-slt", "-sccUTF-8", str(archive.path)], []).decode("utf-8")
    rows, current = [], {}
    for line in listing.splitlines():
        key, _, value = line.partition(" = ")
        if key in ("Path", "Size", "CRC"):
            current[key] = value
        if key == "CRC":
            rows.append((current["Path"], int(current["Size"]), int(value or "0", 16)))
    return rows


def read_bsdtar(archive: Archive, classes) -> list[Entry]:
    _need("bsdtar")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    # Extracting every member to stdout from a pipe: libarchive's streaming reader checks each CRC.
    content = _pipe(["bsdtar", "-xOf", "-"], archive.chunks(), env=env)
    assert hashlib.sha256(content).hexdigest() == archive.digest
    names = _pipe(["bsdtar", "-tf", "-"], archive.chunks(), env=env).decode("utf-8").splitlines()
    assert names == [name for name, _, _ in archive.expected]
    return archive.expected


READERS = {
    "zipfile": read_zipfile,
    "unzip -t": read_unzip,
    "7z t": read_7z,
    "bsdtar from a pipe": read_bsdtar,
    "stream-unzip": read_stream_unzip,
    "Java ZipInputStream": read_java_stream,
    "Java ZipFile": read_java_file,
    "Commons Compress ZipArchiveInputStream": read_commons,
}
JAVA_READERS = {"Java ZipInputStream", "Java ZipFile", "Commons Compress ZipArchiveInputStream"}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("archive", BUILDERS)
def test_every_reader_reads_every_archive_byte_for_byte(archive, reader, archives, request):
    classes = request.getfixturevalue("java_classes") if reader in JAVA_READERS else None
    got = READERS[reader](archives[archive], classes)
    assert got == archives[archive].expected


# -- over 4 GiB ----------------------------------------------------------------------------------

BIG = 4_500_000_000


def _file_reader(paths: list[Path]):
    """A read_member over files: member `index` is paths[index], read from `offset` in 1 MiB chunks."""
    def read_member(index, offset):
        with open(paths[index], "rb") as f:
            f.seek(offset)
            while chunk := f.read(CHUNK):
                yield chunk
    return read_member


@pytest.fixture(scope="module")
def big_members(tmp_path_factory):
    """A sparse 4.5 GB file between two small ones, and what readers must find."""
    base = tmp_path_factory.mktemp("big")
    head, tail = b"BEGIN of the big one", b"END of the big one"
    (base / "before").write_bytes(b"before\n")
    with open(base / "big", "wb") as f:
        f.write(head)
        f.truncate(BIG)
        f.seek(BIG - len(tail))
        f.write(tail)
    (base / "after").write_bytes(b"after\n")
    crc, zeros, left = crc32(head), bytes(CHUNK), BIG - len(head) - len(tail)
    while left:
        crc, left = crc32(zeros[:min(left, CHUNK)], crc), left - min(left, CHUNK)
    crc = crc32(tail, crc)
    expected = [("x/before", 7, zlib.crc32(b"before\n")), ("x/big.bin", BIG, crc), ("x/after", 6, zlib.crc32(b"after\n"))]
    return [base / "before", base / "big", base / "after"], expected


@pytest.mark.parametrize("reader", ["Java ZipInputStream", "stream-unzip"])
def test_member_over_4_gib_streaming_readers(reader, big_members, request):
    """SLOW (about 7 s each): 4.5 GB of stored deflate blocks with ZIP64 extra and descriptor, no file written."""
    paths, expected = big_members
    layout = ZipLayout([Member(name, size, MTIME) for name, size, _ in expected])
    assert layout.kind(1) == "blocks" and layout.length > 1 << 32
    sent = [0]

    def body():
        for chunk in layout.body(_file_reader(paths), lambda i: pytest.fail("computed while streaming")):
            sent[0] += len(chunk)
            yield chunk
    classes = request.getfixturevalue("java_classes") if reader in JAVA_READERS else None
    archive = Archive(Path(os.devnull), expected, "")
    got = READERS[reader](archive, classes, chunks=body())
    assert got == expected
    assert sent[0] == layout.length
