"""StreamingZip: exact lengths, ZIP64, names, times and sizes, checked against real archive readers.

Also home of the archive checkers test_cluster.py uses (`save_sparse`, `check_archive`).
"""

from __future__ import annotations

import io
import struct
import subprocess
import time
import zipfile
import zlib
from pathlib import Path

import pytest

from wsgi_stream.zipfmt import ENTRY_LIMIT, SizeMismatch, StreamingZip, _Info, check_name, dos_date_time

_ZEROS = bytes(16 << 20)


# -- checkers (shared with test_cluster.py) ----------------------------------------------------

def save_sparse(chunks, path: Path) -> int:
    """Write the archive's bytes to `path`, leaving holes for all-zero chunks; return the length."""
    total = 0
    with open(path, "wb") as f:
        for chunk in chunks:
            if len(chunk) <= len(_ZEROS) and _ZEROS.startswith(chunk):
                f.seek(len(chunk), io.SEEK_CUR)
            else:
                f.write(chunk)
            total += len(chunk)
        f.truncate(total)
    return total


def check_local_records(path: Path) -> list[zipfile.ZipInfo]:
    """Walk the archive front to back as a streaming reader would, holding it to its central directory.

    Each local header is followed by the data and a descriptor whose width follows the header's ZIP64
    extra; records are back to back, with no gap before the central directory.
    """
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        start_dir = zf.start_dir
    with open(path, "rb") as f:
        pos = 0
        for info in infos:
            assert info.header_offset == pos, info.filename
            f.seek(pos)
            head = f.read(30)
            sig, _, flags, method, _, _, crc, csize, usize, nlen, xlen = struct.unpack("<4sHHHHHLLLHH", head)
            assert sig == b"PK\x03\x04"
            assert flags & 0x808 == 0x808, "data descriptor and UTF-8 flags"
            name = f.read(nlen).decode("utf-8")
            assert name == info.filename
            extra = f.read(xlen)
            zip64 = False
            while extra:
                tag, size = struct.unpack("<HH", extra[:4])
                if tag == 1:
                    zip64 = True
                    assert (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF), "ZIP64 header sizes must be 0xFFFFFFFF"
                extra = extra[4 + size:]
            f.seek(info.compress_size, io.SEEK_CUR)
            fmt = "<4sLQQ" if zip64 else "<4sLLL"
            desc = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
            assert desc == (b"PK\x07\x08", info.CRC, info.compress_size, info.file_size), name
            pos = f.tell()
        assert pos == start_dir
    return infos


def check_archive(path: Path, tools: bool = True, unzip: bool = True, testzip: bool = True) -> list[zipfile.ZipInfo]:
    """zipfile's CRC check, the streaming walk above, and `unzip -t` and `7z t` when `tools`.

    unzip tests at about 5 s per GiB and zipfile at 1.5: archives of many GiB may leave them out
    (`unzip=False`, `testzip=False`); 7z checks every CRC in a fraction of that.
    """
    with zipfile.ZipFile(path) as zf:
        assert not testzip or zf.testzip() is None
    infos = check_local_records(path)
    if tools and unzip:
        result = subprocess.run(["unzip", "-tqq", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    if tools:
        seven = subprocess.run(["7z", "t", str(path)], capture_output=True, text=True)
        assert seven.returncode == 0 and "Everything is Ok" in seven.stdout, seven.stdout + seven.stderr
    return infos


def build(members, deflate=False) -> tuple[StreamingZip, bytes]:
    z = StreamingZip(deflate=deflate)
    for name, data, size in members:
        z.add(name, [data[i:i + 7000] for i in range(0, len(data), 7000)], size, mtime=1_700_000_000)
    return z, b"".join(z)


# -- tests ---------------------------------------------------------------------------------------

SHAPES = {
    "nothing": [],
    "one empty file": [("a/empty", b"", 0)],
    "several": [("a/x.txt", b"hello\n", 6), ("a/sub/y.bin", bytes(range(256)) * 300, 76800),
                ("b/x.txt", b"", 0)],
    "utf-8 names": [("a/rapport d'été.txt", "ünïcødé\n".encode(), 12), ("c/日本語/ファイル", b"x" * 10, 10)],
    "long name": [("n/" + "/".join(["x" * 250] * 12), b"abc", 3)],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_length_is_exact_and_readers_agree(shape, tmp_path):
    z, data = build(SHAPES[shape])
    assert z.length == len(data)
    (tmp_path / "t.zip").write_bytes(data)
    infos = check_archive(tmp_path / "t.zip", tools=bool(SHAPES[shape]))  # unzip calls empty a failure
    assert [(i.filename, i.file_size) for i in infos] == [(n, s) for n, _, s in SHAPES[shape]]
    with zipfile.ZipFile(tmp_path / "t.zip") as zf:
        for name, content, _ in SHAPES[shape]:
            assert zf.read(name) == content
            assert z.crc32(name) == zlib.crc32(content)


def test_every_name_is_flagged_utf8_and_files_are_0644():
    _, data = build([("plain.txt", b"x", 1), ("été.txt", b"y", 1)])
    for info in zipfile.ZipFile(io.BytesIO(data)).infolist():
        assert info.flag_bits & 0x800
        assert info.external_attr >> 16 == 0o100644


def test_times_are_local_dos_times_clamped_to_what_zip_holds():
    assert dos_date_time(0) == (1980, 1, 1, 0, 0, 0)
    assert dos_date_time(-5e9) == (1980, 1, 1, 0, 0, 0)
    assert dos_date_time(1e13) == (2107, 12, 31, 23, 59, 58)
    assert dos_date_time(1_700_000_000.7) == time.localtime(1_700_000_000)[:6]
    z = StreamingZip()
    z.add("old", [b"x"], 1, mtime=0)
    z.add("future", [b"y"], 1, mtime=2e10)
    z.add("now", [b"z"], 1, mtime=1_700_000_000)
    infos = zipfile.ZipFile(io.BytesIO(b"".join(z))).infolist()
    assert infos[0].date_time == (1980, 1, 1, 0, 0, 0)
    assert infos[1].date_time == (2107, 12, 31, 23, 59, 58)
    expected = time.localtime(1_700_000_000)[:6]
    assert infos[2].date_time == expected[:5] + (expected[5] // 2 * 2,)


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../up", "a/../../up", "a/./b", "a//b", "a\\b",
                                  "a/", "nul\x00", "\udcff", ".", "x/.."])
def test_names_that_could_leave_the_top_are_refused(name):
    with pytest.raises(ValueError):
        check_name(name)
    with pytest.raises(ValueError):
        StreamingZip().add(name, [b""], 0)


def test_duplicate_names_are_refused():
    z = StreamingZip()
    z.add("a/x", [b""], 0)
    with pytest.raises(ValueError):
        z.add("a/x", [b""], 0)


@pytest.mark.parametrize("chunks", [[b"abc", b"d"], [b"ab"]])
def test_a_member_whose_bytes_differ_from_its_size_raises(chunks):
    z = StreamingZip()
    z.add("x", chunks, 3)
    with pytest.raises(SizeMismatch):
        b"".join(z)


def test_unknown_size_gives_no_length_but_a_good_archive(tmp_path):
    z = StreamingZip()
    z.add("known", [b"abc"], 3)
    z.add("generated", (b"line %d\n" % i for i in range(1000)))
    assert z.length is None
    (tmp_path / "g.zip").write_bytes(b"".join(z))
    infos = check_archive(tmp_path / "g.zip")
    assert infos[1].file_size == sum(len(b"line %d\n" % i) for i in range(1000))
    assert z.written_size("generated") == infos[1].file_size


def test_deflate_has_no_length_and_round_trips(tmp_path):
    content = b"the same line again\n" * 50000
    z, data = build([("a/log", content, len(content)), ("b/empty", b"", 0)], deflate=True)
    assert z.length is None
    assert len(data) < len(content) // 10
    (tmp_path / "d.zip").write_bytes(data)
    check_archive(tmp_path / "d.zip")
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        assert zf.getinfo("a/log").compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("a/log") == content


def test_zip64_header_and_descriptor_agree_between_2_and_4_gib():
    # zipstream alone: sizes 0 and version 2.0 in a ZIP64 header, and a 12-byte-size descriptor.
    info = _Info("x", (2020, 1, 1, 0, 0, 0))
    info.flag_bits = 0x08
    info.file_size = info.compress_size = 2_100_000_000
    info.CRC = small_crc = 0
    header = info.FileHeader(True)
    version, = struct.unpack("<H", header[4:6])
    csize, usize = struct.unpack("<LL", header[18:26])
    assert version >= 45 and (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert len(info.DataDescriptor()) == 24
    small = _Info("y", (2020, 1, 1, 0, 0, 0))
    small.flag_bits = 0x08
    small.CRC = small.file_size = small.compress_size = small_crc
    small.FileHeader(False)
    assert len(small.DataDescriptor()) == 16


def test_more_than_65535_entries(tmp_path):
    count = ENTRY_LIMIT + 4465
    z = StreamingZip()
    for i in range(count):
        z.add(f"n/{i:06d}", [b"%d" % i] if i % 7 == 0 else [], len(b"%d" % i) if i % 7 == 0 else 0)
    path = tmp_path / "many.zip"
    assert save_sparse(z, path) == z.length
    infos = check_archive(path)
    assert len(infos) == count
    with open(path, "rb") as f:
        f.seek(-22, io.SEEK_END)
        end = f.read(22)
        f.seek(-22 - 20 - 56, io.SEEK_END)
        assert f.read(4) == b"PK\x06\x06", "ZIP64 end of central directory record"
    assert struct.unpack("<H", end[10:12])[0] == 0xFFFF


def _zeros(size: int, head: bytes = b"", tail: bytes = b""):
    """`size` bytes: `head`, zeros, `tail`, in 8 MiB chunks."""
    yield head
    left = size - len(head) - len(tail)
    block = _ZEROS[:8 << 20]
    while left:
        n = min(left, len(block))
        yield block if n == len(block) else block[:n]
        left -= n
    yield tail


def test_member_and_archive_past_4_gib(tmp_path):
    big = (4 << 30) + 12345
    mid = 2_100_000_000  # ZIP64 local header, no ZIP64 extra needed in the central directory
    head, tail = b"BEGIN-of-big", b"END-of-big"
    z = StreamingZip()
    z.add("a/first.txt", [b"first\n"], 6)
    z.add("a/huge.bin", _zeros(big, head, tail), big)
    z.add("a/mid.bin", _zeros(mid), mid)
    z.add("a/after.txt", [b"after\n"], 6)
    path = tmp_path / "big.zip"
    assert save_sparse(z, path) == z.length
    infos = check_archive(path, unzip=False)
    assert [i.file_size for i in infos] == [6, big, mid, 6]
    assert infos[3].header_offset > 1 << 32
    crc = zlib.crc32(tail, zlib.crc32(bytes(big - len(head) - len(tail)), zlib.crc32(head)))
    assert infos[1].CRC == crc
    with zipfile.ZipFile(path) as zf:
        assert zf.read("a/after.txt") == b"after\n"
        with zf.open("a/huge.bin") as member:
            assert member.read(len(head)) == head
