"""ZIP length prediction for small shapes: StreamingZip.length == the bytes it writes.

Kept few and simple on purpose (zipfmt's API is being reworked): each shape is a list of
(name, chunks) members. The large ZIP64 shapes are in tests/integration/test_zipfmt.py.
"""

from __future__ import annotations

import io
import zipfile

import pytest

from wsgi_stream.zipfmt import StreamingZip

SHAPES = {
    "empty-archive": [],
    "one-empty-member": [("empty.txt", [])],
    "one-small-member": [("a.txt", [b"hello"])],
    "member-in-pieces": [("logs/app.log", [b"a" * 10, b"", b"b" * 1000, b"c"])],
    "utf8-names-counted-in-bytes": [("été/日本.txt", [b"x"]), ("ß", [b"yy"])],
    "several-members-past-the-coalescing-block": [(f"n{i}/f{i}.bin", [bytes([i]) * (40_000 + i)]) for i in range(3)],
}


@pytest.mark.parametrize("members", SHAPES.values(), ids=SHAPES.keys())
def test_length_is_the_bytes_written(members):
    archive = StreamingZip()
    for name, chunks in members:
        archive.add(name, iter(chunks), sum(map(len, chunks)), 1_700_000_000)
    predicted = archive.length
    data = b"".join(archive)
    assert predicted == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:  # and it is the archive announced
        assert z.testzip() is None
        assert [(i.filename, z.read(i)) for i in z.infolist()] == [(n, b"".join(c)) for n, c in members]


@pytest.mark.parametrize("deflate, size", [
    pytest.param(True, 5, id="deflated-no-length"),
    pytest.param(False, None, id="member-of-unknown-size-no-length"),
])
def test_no_length_when_it_cannot_be_known(deflate, size):
    archive = StreamingZip(deflate=deflate)
    archive.add("a.txt", iter([b"hello"]), size)
    assert archive.length is None
    assert len(b"".join(archive)) > 0
