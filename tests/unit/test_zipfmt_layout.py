"""ZipLayout without sockets or external programs: forms, exact lengths, resumed suffixes, ZIP64, errors.

The readers' side (unzip, 7z, Java, ...) is tests/integration/test_zip_readers.py.
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
import zlib

import pytest

from wsgi_stream import zipfmt
from wsgi_stream.zipfmt import (BLOCK, ENTRY_LIMIT, SMALL, ZIP64_LIMIT, CrcMismatch, Member, SizeMismatch,
                                StreamingZip, ZipLayout, _frame, _Framer, blocks_length, check_name, dos_date_time)

MTIME = 1_700_000_000


def pattern(n: int, seed: int = 0) -> bytes:
    """`n` deterministic, poorly compressible bytes."""
    block = bytes((i * 131 + seed * 7 + (i >> 8) * 17) & 0xFF for i in range(4099))
    return (block * (n // len(block) + 1))[:n]


def reader(contents: list[bytes], chunk: int = 100_000):
    """A read_member over in-memory contents, in `chunk`-byte pieces, recording each call."""
    calls = []

    def read_member(index, offset):
        calls.append((index, offset))
        data = contents[index]
        return [data[i:i + chunk] for i in range(offset, len(data), chunk)]
    read_member.calls = calls
    return read_member


def layout_of(shape, known_crcs=False, deflate=False):
    members = [Member(name, len(data), MTIME, zlib.crc32(data) if known_crcs else None) for name, data in shape]
    return ZipLayout(members, deflate=deflate)


def build(shape, known_crcs=False, deflate=False, start=0):
    contents = [data for _, data in shape]
    layout = layout_of(shape, known_crcs, deflate)
    body = b"".join(layout.body(reader(contents), lambda i: zlib.crc32(contents[i]), start=start))
    return layout, body


SHAPES = {
    "nothing": [],
    "one empty file": [("a/empty", b"")],
    "utf-8 names and empty files": [("a/rapport d'été.txt", "ünïcødé\n".encode()), ("a/vide", b""),
                                    ("c/日本語/ファイル", b"x" * 10), ("c/空", b"")],
    "small and SMALL": [("s/one", b"1"), ("s/small", pattern(SMALL))],
    "SMALL+1": [("s/over", pattern(SMALL + 1))],
    "block multiples": [(f"b/{n}", pattern(n, n)) for n in
                        (17 * BLOCK - 1, 17 * BLOCK, 17 * BLOCK + 1, 18 * 65536, 32 * BLOCK, SMALL + 5)],
    "mixed": [("m/a", b""), ("m/b", pattern(3 * SMALL + 7)), ("m/c", b"c"), ("m/d", pattern(SMALL + 1, 3)),
              ("m/e", b"")],
    "long name": [("n/" + "/".join(["x" * 250] * 12), b"abc")],
}


# -- forms ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 2 * BLOCK + 1, 65536, SMALL, SMALL + 1])
def test_stored_blocks_take_n_plus_5_per_65535_and_inflate_back(n):
    data = pattern(n)
    layout, body = build([("x", data)]) if n > SMALL else (None, None)
    whole = _frame(data, 0, n) if n else bytes([1, 0, 0, 0xFF, 0xFF])
    assert len(whole) == blocks_length(n) == n + 5 * max(1, -(-n // BLOCK))
    assert zlib.decompress(whole, -15) == data
    framer = _Framer()
    pieces = [framer.feed(data[i:i + 40_000]) for i in range(0, n, 40_000)] + [framer.finish()]
    assert b"".join(pieces) == whole, "the unknown-size framer gives the same stream"
    if layout is not None:
        assert layout.kind(0) == "blocks" and layout.length == len(body)


FORMS = [  # (planned size, deflate, form)
    (0, False, "empty"), (1, False, "stored"), (SMALL, False, "stored"), (SMALL + 1, False, "blocks"),
    (5 << 30, False, "blocks"), (None, False, "blocks"),
    (0, True, "empty"), (1, True, "deflated"), (5 << 30, True, "deflated"), (None, True, "deflated"),
    (ZIP64_LIMIT - 100, True, "blocks"),  # deflated could pass 4 GiB while the size does not: exact instead
]


@pytest.mark.parametrize("size, deflate, form", FORMS)
def test_form_follows_planned_size_only(size, deflate, form):
    assert ZipLayout([Member("x", size, MTIME)], deflate=deflate).kind(0) == form
    assert ZipLayout([Member("x", size, MTIME, crc=123)], deflate=deflate).kind(0) == form


# -- exact length, and the same bytes whatever CRCs are known ------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_length_is_exact_and_known_crcs_change_no_byte(shape):
    layout, body = build(SHAPES[shape])
    assert layout.length == len(body)
    _, body_known = build(SHAPES[shape], known_crcs=True)
    assert body_known == body
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        assert [(i.filename, i.file_size, i.header_offset) for i in infos] == \
               [(n, len(d), o) for (n, d), o in zip(SHAPES[shape], layout.member_offsets)]
        for name, data in SHAPES[shape]:
            assert zf.read(name) == data
    assert layout.crcs == {i: zlib.crc32(d) for i, (_, d) in enumerate(SHAPES[shape]) if d}


def test_member_offsets_and_central_offset_are_the_records():
    shape = SHAPES["mixed"]
    layout, body = build(shape)
    for offset, (name, _) in zip(layout.member_offsets, shape):
        assert body[offset:offset + 4] == b"PK\x03\x04"
        assert body[offset + 30:offset + 30 + len(name.encode())] == name.encode()
    assert body[layout.central_offset:layout.central_offset + 4] == b"PK\x01\x02"


def _interesting_offsets(layout, body):
    """Offsets inside every kind of record: headers, data (block edges), descriptors, directory, end."""
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        infos = zf.infolist()
    ks = {0, 1, len(body) - 1, len(body), layout.central_offset, layout.central_offset + 1,
          len(body) - 22, len(body) - 21, len(body) - 1}
    for info, offset in zip(infos, layout.member_offsets):
        header = 30 + len(info.filename.encode())
        data = offset + header
        ks |= {offset, offset + 1, offset + 29, data - 1, data, data + 1, data + 4, data + 5, data + 6,
               data + info.compress_size // 2, data + BLOCK + 5, data + BLOCK + 4, data + BLOCK + 6,
               data + info.compress_size - 1, data + info.compress_size, data + info.compress_size + 3}
        if info.flag_bits & 0x08:
            ks |= {data + info.compress_size + 15, data + info.compress_size + 16}
    ks |= set(range(layout.central_offset, len(body), 37))
    return sorted(k for k in ks if 0 <= k <= len(body))


@pytest.mark.parametrize("known_crcs", [False, True], ids=["crcs unknown", "crcs known"])
@pytest.mark.parametrize("shape", ["utf-8 names and empty files", "mixed", "block multiples"])
def test_body_from_any_offset_is_the_suffix_of_the_whole(shape, known_crcs):
    layout, body = build(SHAPES[shape])
    for k in _interesting_offsets(layout, body):
        _, suffix = build(SHAPES[shape], known_crcs=known_crcs, start=k)
        assert suffix == body[k:], k


def test_resume_reads_only_what_it_needs():
    shape = SHAPES["mixed"]
    contents = [d for _, d in shape]
    layout, body = build(shape)
    big = layout.member_offsets[1]
    # Inside member 1's data with its CRC known: read from the block holding the offset, no crc_of.
    fresh = layout_of(shape, known_crcs=True)
    read = reader(contents)
    k = big + 30 + 3 + 2 * (BLOCK + 5) + 100
    assert b"".join(fresh.body(read, lambda i: pytest.fail("no CRC needed"), start=k)) == body[k:]
    assert read.calls[0] == (1, 2 * BLOCK)
    # Inside member 3's data with no CRC: it is read from its start; the members before it (but the
    # empty one) are asked of crc_of when their central records go out.
    fresh, asked = layout_of(shape), []
    read = reader(contents)
    k = layout.member_offsets[3] + 30 + 3 + BLOCK + 1000
    out = b"".join(fresh.body(read, lambda i: asked.append(i) or zlib.crc32(contents[i]), start=k))
    assert out == body[k:] and read.calls[0] == (3, 0) and asked == [1, 2]
    # Inside the central directory: only the records sent need a CRC, and no member is read.
    fresh, asked = layout_of(shape), []
    read = reader(contents)
    k = len(body) - 22 - 46 - len("m/e") - 2
    out = b"".join(fresh.body(read, lambda i: asked.append(i) or zlib.crc32(contents[i]), start=k))
    assert out == body[k:] and read.calls == [] and asked == [3]  # the tail of m/d's record; m/e is empty


def test_crcs_learned_are_reported_and_reused():
    shape = SHAPES["mixed"]
    contents = [d for _, d in shape]
    layout = layout_of(shape)
    heard = {}
    b"".join(layout.body(reader(contents), lambda i: pytest.fail("all computed"), on_crc=heard.__setitem__))
    assert heard == {i: zlib.crc32(d) for i, d in enumerate(contents) if d}
    k = layout.central_offset + 10
    assert len(b"".join(layout.body(reader(contents), lambda i: pytest.fail("remembered"), start=k))) \
        == layout.length - k


def test_start_outside_the_archive_is_refused():
    layout = layout_of(SHAPES["mixed"])
    for k in (-1, layout.length + 1):
        with pytest.raises(ValueError):
            layout.body(reader([]), zlib.crc32, start=k)


# -- ZIP64 ---------------------------------------------------------------------------------------

class Sparse(io.RawIOBase):
    """A read-only file of `length` bytes: zeros except the (offset, bytes) pieces given."""

    def __init__(self, length, pieces):
        self.length, self.pieces, self.pos = length, pieces, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        self.pos = {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence]
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self.length - self.pos))
        out = bytearray(n)
        for at, data in self.pieces:
            lo, hi = max(at, self.pos), min(at + len(data), self.pos + n)
            if lo < hi:
                out[lo - self.pos:hi - self.pos] = data[lo - at:hi - at]
        buffer[:n] = out
        self.pos += n
        return n


def zeros_reader(sizes):
    def read_member(index, offset):
        left = sizes[index] - offset
        while left:
            n = min(left, 1 << 20)
            yield bytes(n)
            left -= n
    return read_member


def first_piece(layout, sizes, start):
    body = layout.body(zeros_reader(sizes), lambda i: 0, start=start)
    piece = next(body)
    body.close()
    return piece


def test_zip64_past_4_gib_without_writing_it():
    big, mid = (4 << 30) + 12345, 2_100_000_000
    sizes = [6, big, mid, 6, 0]
    six = zlib.crc32(bytes(6))
    # The big members' CRCs are made up: they are given, and their bytes are never read.
    members = [Member("a/first", 6, MTIME, six), Member("a/huge", big, MTIME, 0x12345678),
               Member("a/mid", mid, MTIME, 0x9ABCDEF0), Member("a/after", 6, MTIME, six),
               Member("a/empty", 0, MTIME)]
    layout = ZipLayout(members)
    assert [layout.kind(i) for i in range(5)] == ["stored", "blocks", "blocks", "stored", "empty"]
    assert layout.member_offsets[3] > 1 << 32 and layout.central_offset > 1 << 32
    # The huge member's local header has the ZIP64 extra (real sizes) and 0xFFFFFFFF sizes; the mid one not.
    head = first_piece(layout, sizes, layout.member_offsets[1])
    version, flags, method, _, _, crc, csize, usize, nlen, xlen = struct.unpack("<HHHHHLLLHH", head[4:30])
    assert (version, flags, method, crc, csize, usize, xlen) == (45, 0x808, 8, 0, ZIP64_LIMIT, ZIP64_LIMIT, 20)
    assert struct.unpack("<HHQQ", head[30 + nlen:50 + nlen]) == (1, 16, big, blocks_length(big))
    head = first_piece(layout, sizes, layout.member_offsets[2])
    assert struct.unpack("<HHHHHLLLHH", head[4:30]) == (20, 0x808, 8) + struct.unpack("<HH", head[10:14]) \
        + (0, 0, 0, len("a/mid"), 0)
    # Descriptors: 24 bytes after the huge member, 16 after the mid one.
    desc_huge = layout.member_offsets[2] - 24
    assert first_piece(layout, sizes, desc_huge)[:24] == struct.pack("<4sLQQ", b"PK\x07\x08", 0x12345678,
                                                                blocks_length(big), big)
    desc_mid = layout.member_offsets[3] - 16
    tail_from = desc_mid
    tail = b"".join(layout.body(zeros_reader(sizes), lambda i: pytest.fail("CRCs given"), start=tail_from))
    assert len(tail) == layout.length - tail_from
    assert tail[:16] == struct.pack("<4sLLL", b"PK\x07\x08", 0x9ABCDEF0, blocks_length(mid), mid)
    # The central directory and ZIP64 end records, read by zipfile from a sparse image of the archive.
    with zipfile.ZipFile(Sparse(layout.length, [(tail_from, tail)])) as zf:
        infos = zf.infolist()
        assert [(i.filename, i.file_size, i.compress_size, i.header_offset, i.CRC) for i in infos] == [
            ("a/first", 6, 6, 0, six), ("a/huge", big, blocks_length(big), layout.member_offsets[1], 0x12345678),
            ("a/mid", mid, blocks_length(mid), layout.member_offsets[2], 0x9ABCDEF0),
            ("a/after", 6, 6, layout.member_offsets[3], six), ("a/empty", 0, 0, layout.member_offsets[4], 0)]
        assert zf.read("a/after") == bytes(6)
    assert tail[-22 - 20 - 56:-22 - 20][:4] == b"PK\x06\x06"


def test_more_than_65535_entries_have_zip64_end_records():
    count = ENTRY_LIMIT + 4465
    shape = [(f"n/{i:06d}", b"%d" % i if i % 7 == 0 else b"") for i in range(count)]
    layout, body = build(shape)
    assert layout.length == len(body)
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert len(zf.infolist()) == count and zf.read("n/000700") == b"700"
    assert body[-22 - 20 - 56:-22 - 20][:4] == b"PK\x06\x06"
    assert struct.unpack("<H", body[-12:-10])[0] == 0xFFFF
    contents = [d for _, d in shape]
    for k in (layout.member_offsets[-3] + 10, layout.central_offset + 1000, len(body) - 90, len(body) - 30):
        assert b"".join(layout.body(reader(contents), lambda i: pytest.fail("learned"), start=k)) == body[k:]


# -- members of unknown size, and deflate ---------------------------------------------------------

def test_unknown_size_gives_no_length_and_a_good_archive():
    generated = b"".join(b"line %d\n" % i for i in range(100_000))
    layout = ZipLayout([Member("known", 3, MTIME), Member("generated", None, MTIME), Member("after", 1, MTIME)])
    assert layout.length is None and layout.member_offsets == [0, 38, None]
    body = b"".join(layout.body(reader([b"abc", generated, b"z"], chunk=7000), zlib.crc32))
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None and zf.read("generated") == generated
        assert zf.getinfo("generated").compress_size == blocks_length(len(generated))
    assert layout.written_sizes == {1: len(generated)}
    with pytest.raises(ValueError):
        layout.body(reader([]), zlib.crc32, start=1)


@pytest.mark.parametrize("engine", ["isal", "zlib"])
def test_deflate_has_no_length_and_round_trips(engine, monkeypatch):
    if engine == "zlib":
        monkeypatch.setattr(zipfmt, "_isal", None)  # what runs without the `fast` extra
    elif zipfmt._isal is None:
        pytest.skip("isal is not installed (pip install 'wsgi_stream[fast]')")
    text = b"".join(b"2024-01-01T00:00:%02d host app[%d]: request %d served in %d ms\n" % (i % 60, i % 7, i, i % 97)
                    for i in range(50_000))
    shape = [("a/log", text), ("b/empty", b""), ("c/one", b"1")]
    layout, body = build(shape, deflate=True)
    assert layout.length is None
    assert len(body) < len(text) // 4
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        assert zf.getinfo("a/log").compress_type == zipfile.ZIP_DEFLATED
        assert zf.getinfo("b/empty").compress_type == zipfile.ZIP_STORED
        assert [zf.read(n) for n, _ in shape] == [d for _, d in shape]


# -- faults --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, actual", [(0, 1), (5, 4), (5, 6), (SMALL + 10, SMALL + 9), (SMALL + 10, SMALL + 11)])
def test_a_member_whose_bytes_differ_from_its_size_raises(size, actual):
    data = pattern(actual)
    layout = ZipLayout([Member("x", size, MTIME)])
    with pytest.raises(SizeMismatch):
        b"".join(layout.body(reader([data]), zlib.crc32))


@pytest.mark.parametrize("size", [5, SMALL + 10])
def test_a_member_whose_bytes_differ_from_its_given_crc_raises(size):
    data = pattern(size)
    layout = ZipLayout([Member("x", size, MTIME, crc=zlib.crc32(data) ^ 1)])
    with pytest.raises(CrcMismatch):
        b"".join(layout.body(reader([data]), zlib.crc32))


def test_member_sources_are_closed_when_the_body_is():
    closed = []

    def read_member(index, offset):
        try:
            while True:
                yield bytes(1 << 20)
        finally:
            closed.append(index)
    layout = ZipLayout([Member("x", 10 << 20, MTIME)])
    body = layout.body(read_member, zlib.crc32)
    next(body), next(body)
    body.close()
    assert closed == [0]


# -- names, times, modes -------------------------------------------------------------------------

def test_every_name_is_flagged_utf8_and_files_are_0644():
    _, body = build([("plain.txt", b"x"), ("été.txt", b"y"), ("big", pattern(SMALL + 1)), ("e", b"")])
    for info in zipfile.ZipFile(io.BytesIO(body)).infolist():
        assert info.flag_bits & 0x800
        assert info.external_attr >> 16 == 0o100644 and info.create_system == 3


def test_times_are_local_dos_times_clamped_to_what_zip_holds():
    assert dos_date_time(0) == (1980, 1, 1, 0, 0, 0)
    assert dos_date_time(-5e9) == (1980, 1, 1, 0, 0, 0)
    assert dos_date_time(1e13) == (2107, 12, 31, 23, 59, 58)
    assert dos_date_time(1_700_000_000.7) == time.localtime(1_700_000_000)[:6]
    layout = ZipLayout([Member("old", 1, 0), Member("future", 1, 2e10), Member("now", 1, 1_700_000_000)])
    infos = zipfile.ZipFile(io.BytesIO(b"".join(layout.body(reader([b"x", b"y", b"z"]), zlib.crc32)))).infolist()
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
        ZipLayout([Member(name, 0)])
    with pytest.raises(ValueError):
        StreamingZip().add(name, [b""], 0)


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError):
        ZipLayout([Member("a/x", 0), Member("a/x", 1)])
    z = StreamingZip()
    z.add("a/x", [b""], 0)
    with pytest.raises(ValueError):
        z.add("a/x", [b""], 0)


# -- the older interface -------------------------------------------------------------------------

def test_streaming_zip_is_the_same_archive():
    shape = SHAPES["mixed"]
    z = StreamingZip()
    for name, data in shape:
        z.add(name, [data[i:i + 7000] for i in range(0, len(data), 7000)], len(data), mtime=MTIME)
    assert z.length == layout_of(shape).length
    assert b"".join(z) == build(shape)[1]
    assert [z.crc32(n) for n, _ in shape] == [zlib.crc32(d) for _, d in shape]


def test_streaming_zip_generated_member_and_report_reading_crcs():
    z = StreamingZip()
    z.add("known", [b"abc"], 3)
    z.add("generated", (b"line %d\n" % i for i in range(1000)))
    z.add("report", (f"{z.crc32(n):08x} {z.written_size(n)}\n".encode() for n in ("known", "generated")))
    assert z.length is None
    with zipfile.ZipFile(io.BytesIO(b"".join(z))) as zf:
        generated = zf.read("generated")
        assert zf.read("report").decode() == f"{zlib.crc32(b'abc'):08x} 3\n{zlib.crc32(generated):08x} {len(generated)}\n"
    assert z.written_size("generated") == len(generated)
