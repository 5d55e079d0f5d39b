"""StreamingZip (the add-then-iterate interface over ZipLayout), checked against real archive readers.

Also home of the archive checkers test_cluster.py uses (`save_sparse`, `check_archive`).
"""

from __future__ import annotations

import io
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from wsgi_stream.zipfmt import SizeMismatch, StreamingZip

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

    zipfmt's rules: every name is flagged UTF-8; a stored member has its CRC and sizes in the local
    header and no data descriptor; a member with a descriptor is deflated (a streaming reader can find
    its end), and its descriptor is 24 bytes exactly when its header has the ZIP64 extra, which it has
    exactly when a size passes 0xFFFFFFFF. Records are back to back, with no gap before the directory.
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
            assert flags & 0x800, "UTF-8 flag"
            name = f.read(nlen).decode("utf-8")
            assert name == info.filename
            extra = f.read(xlen)
            zip64 = None
            while extra:
                tag, size = struct.unpack("<HH", extra[:4])
                if tag == 1:
                    zip64 = struct.unpack("<QQ", extra[4:20])
                    assert (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF), "ZIP64 header sizes must be 0xFFFFFFFF"
                extra = extra[4 + size:]
            big = max(info.compress_size, info.file_size) > 0xFFFFFFFF
            assert (zip64 is not None) == big, f"{name}: ZIP64 extra exactly when a size passes 4 GiB"
            f.seek(info.compress_size, io.SEEK_CUR)
            if flags & 0x08:
                assert method == zipfile.ZIP_DEFLATED, f"{name}: a stored member must not have a data descriptor"
                fmt = "<4sLQQ" if big else "<4sLLL"
                desc = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
                assert desc == (b"PK\x07\x08", info.CRC, info.compress_size, info.file_size), name
            else:
                assert method == zipfile.ZIP_STORED and zip64 is None, name
                assert (crc, csize, usize) == (info.CRC, info.compress_size, info.file_size), name
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


# -- tests: StreamingZip (the interface cluster.py uses) against check_archive --------------------
# The layout's own rules are tests/unit/test_zipfmt_layout.py; every reader is test_zip_readers.py.

SHAPES = {
    "nothing": [],
    "one empty file": [("a/empty", b"", 0)],
    "several": [("a/x.txt", b"hello\n", 6), ("a/sub/y.bin", bytes(range(256)) * 300, 76800),
                ("b/x.txt", b"", 0)],
    "utf-8 names": [("a/rapport d'été.txt", "ünïcødé\n".encode(), 12), ("c/日本語/ファイル", b"x" * 10, 10)],
    "stored blocks": [("a/big", bytes(range(256)) * 5000, 1_280_000), ("a/after", b"after", 5)],
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


@pytest.mark.parametrize("chunks", [[b"abc", b"d"], [b"ab"]])
def test_a_member_whose_bytes_differ_from_its_size_raises(chunks):
    z = StreamingZip()
    z.add("x", chunks, 3)
    with pytest.raises(SizeMismatch):
        b"".join(z)
