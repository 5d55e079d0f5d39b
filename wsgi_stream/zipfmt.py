"""Streamed ZIP archives whose every byte is fixed by the plan, so any byte range can be made again.

Theory of operation
===================

A cluster ZIP is promised before its first byte: the client gets a `Content-Length`, and an
`ETag` it may later send back with `Range` to resume a cut download. Two rules follow.

1. **The layout is a function of the plan only** -- member names, sizes, mtimes and the
   options -- never of which CRC-32s happen to be known when the request comes in. One ETag then
   maps to one byte sequence, and bytes [k, length) can be produced again tomorrow, by another
   gateway, with a different CRC cache.
2. **Every reader must accept it**, including the ones that walk local headers front to back
   without looking at the central directory: Java `ZipInputStream`, Apache Commons Compress
   `ZipArchiveInputStream`, `stream-unzip`, `bsdtar` reading a pipe. A streaming reader has to
   know where each member's data ends from what comes *before* it. A stored member with a data
   descriptor (flag bit 3, sizes 0 in its header) gives it no way to know; zipstream-new, which
   this module used to wrap, wrote exactly that, and those readers refused our archives.

So each member takes one of four forms, chosen from its planned size alone:

============  =====================================  ===================================
planned size  form                                   why
============  =====================================  ===================================
0             stored, CRC 0, sizes in the header,    nothing to compute; nothing to read
              no descriptor
1 .. SMALL    stored, CRC and sizes in the header,   mod_zip's way. The writer needs the
(1 MiB)       no descriptor                          CRC before the header: it is given
                                                     (a cache), or the member is read
                                                     whole into memory first (<= 1 MiB).
> SMALL,      method 8 (deflate) whose stream is     one pass: the CRC is computed on the
or unknown    only *stored* deflate blocks, flag     way and goes in the descriptor. A
              bit 3 + data descriptor                streaming reader inflates, so it
                                                     knows where the data ends; the
                                                     length stays exact (below).
?compress=    real deflate (ISA-L level 1 when the   no exact length, hence no resume
deflate       `isal` package is there, zlib level    either: `length` is None and
              1 otherwise), flag bit 3 + descriptor  `body()` only starts at 0.
============  =====================================  ===================================

Stored deflate blocks. A stored block is a 5-byte header -- one byte with BFINAL in bit 0 and
BTYPE 00 (the rest is padding to the byte boundary, which a stored block always starts on here),
then LEN and NLEN = ~LEN, little-endian -- followed by LEN <= 65,535 raw bytes. Member bytes
[65,535 k, 65,535 (k+1)) make block k, and the last block has BFINAL set, so n bytes take exactly
`n + 5 * max(1, ceil(n / 65535))` bytes (an empty stream is one empty final block). That frames
at memory-copy speed, and a byte offset inside the data maps back to a member offset by a
division, which is what resuming needs.

Where the CRC comes from. Because of rule 1, a known CRC changes no byte, only the work: with it a
small member streams straight through (and is checked against it on the way: a changed file
raises CrcMismatch rather than going out under a stale CRC); without it the member is read into
memory first. A large member never needs it up front. Resuming at byte k needs the CRCs of the
members before k for the central directory: given ones are used, a member straddling k with no
known CRC is read from its start (the prefix computed and dropped), and the others are asked of
the caller's `crc_of(index)` only when their central record is actually sent.

ZIP64. Streaming readers disagree on how to tell a 24-byte (ZIP64) data descriptor from a
16-byte one: libarchive follows the local header (ZIP64 extra present or not), Java 8-17
`ZipInputStream` follows the bytes it actually read (more than 0xFFFFFFFF or not), stream-unzip
and Commons Compress peek at what follows. The two first agree only if the local header carries
the ZIP64 extra exactly when the member's stored size exceeds 0xFFFFFFFF; a ZIP64 header on a
smaller member breaks Java (the well-known "invalid entry size (expected 0 ...)"). So:
- stored-blocks members of known size get the ZIP64 extra (32-bit sizes 0xFFFFFFFF, real sizes
  in the extra) and a 24-byte descriptor exactly when `blocks_length(n) > 0xFFFFFFFF`;
- deflated members of known size get them when `n > 0xFFFFFFFF`; a member so close to 4 GiB that
  its deflated form *might* pass 0xFFFFFFFF while n does not is written as stored blocks instead
  (exact size, no guess);
- members of unknown size get no ZIP64 extra and a 24-byte descriptor only if they turn out
  larger than 0xFFFFFFFF (Java's rule; libarchive would misread such a >4 GiB generated member);
- central records carry a ZIP64 extra with each field that is >= 0xFFFFFFFF (sizes, offset), in
  APPNOTE order; the ZIP64 end records appear when entries >= 65,535 or the directory's size or
  offset >= 0xFFFFFFFF.

The rest. Every name carries the UTF-8 flag (bit 11); `check_name` refuses names that could leave
the extraction directory. Files are regular, mode 0644, "made by" Unix. Times are local DOS times,
clamped to 1980..2107 (`dos_date_time`): the gateway's time zone is thus an input of the layout
too. A member that yields more or fewer bytes than planned raises SizeMismatch, one whose bytes
contradict a given CRC raises CrcMismatch (both MemberChanged), before a wrong archive can be
completed; even a 0-byte member is asked for its bytes, to notice one that grew.

SMALL (1 MiB) bounds the memory one member may take while its CRC is computed, and covers most
files of a log bundle, so most members are plain stored entries that any reader takes; a larger
file costs 5 bytes per 64 KiB for the blocks.

API. `ZipLayout(members, deflate)` knows `length`, `member_offsets` and `central_offset` at once;
`body(read_member, crc_of, start, on_crc)` yields bytes [start, length). The caller supplies
`read_member(index, offset)` (a member's bytes from an offset) and `crc_of(index)` (a CRC the
layout needs and cannot compute on the way; it may read the member); `crcs` and `on_crc` give
back every CRC learned, for the caller's caches. `StreamingZip` is the older add-then-iterate
interface, kept as a thin shim over it until cluster.py calls ZipLayout itself.
"""

from __future__ import annotations

import stat
import struct
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass

try:
    # ISA-L's CRC-32 runs at ~60 GB/s where zlib's runs at ~6.6 (measured here), and its level-1
    # deflate at ~370 MB/s on log text where zlib's level 1 does ~100. Same CRC values; a valid
    # (if different) deflate stream.
    from isal import isal_zlib as _isal
except ImportError:  # optional: pip install 'wsgi_stream[fast]'
    _isal = None

crc32 = _isal.crc32 if _isal is not None else zlib.crc32

SMALL = 1 << 20  # the largest member stored with its CRC in the local header (read whole if need be)
BLOCK = 65535  # the most raw bytes one stored deflate block holds
ENTRY_LIMIT = 0xFFFF  # entry count from which the ZIP64 end records are needed
ZIP64_LIMIT = 0xFFFFFFFF  # a 32-bit size or offset field from which ZIP64 is needed
DEFLATE_LEVEL = 1

_UTF8_FLAG = 0x800
_DESCRIPTOR_FLAG = 0x08
_MADE_BY_UNIX = 3 << 8
_MODE = (stat.S_IFREG | 0o644) << 16
_DOS_MIN = (1980, 1, 1, 0, 0, 0)
_DOS_MAX = (2107, 12, 31, 23, 59, 58)
_LOCAL = struct.Struct("<4sHHHHHLLLHH")
_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
_END = struct.Struct("<4sHHHHLLH")
_END64 = struct.Struct("<4sQHHLLQQQQ")
_LOCATOR64 = struct.Struct("<4sLQL")
_FULL_BLOCK = struct.pack("<BHH", 0, BLOCK, 0)
_COALESCE = 64 * 1024

EMPTY, STORED, BLOCKS, DEFLATED = "empty", "stored", "blocks", "deflated"


class MemberChanged(Exception):
    """A member's bytes no longer match the plan (the archive must not be completed)."""


class SizeMismatch(MemberChanged):
    """A member yielded more or fewer bytes than its announced size."""


class CrcMismatch(MemberChanged):
    """A member's bytes do not have the CRC-32 the plan was given for it."""


def dos_date_time(mtime: float | None) -> tuple[int, int, int, int, int, int]:
    """A file time as the local (year, month, day, hour, minute, second) a ZIP can hold."""
    if mtime is None:
        mtime = time.time()
    try:
        fields = tuple(time.localtime(mtime)[:6])
    except (OverflowError, OSError, ValueError):
        fields = _DOS_MIN if mtime < 0 else _DOS_MAX
    return max(_DOS_MIN, min(fields, _DOS_MAX))


def check_name(name: str) -> str:
    """`name` if it is a safe relative member name (no `..`, absolute path or backslash); else ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError("empty name")
    if "\\" in name or "\x00" in name:
        raise ValueError("backslash or NUL in name")
    if name.startswith("/"):
        raise ValueError("absolute name")
    wrapped = f"/{name}/"
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        raise ValueError("empty, '.' or '..' path segment")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("name is not valid UTF-8") from None
    if len(encoded) > 0xFFFF:
        raise ValueError("name longer than 65,535 bytes")
    return name


def blocks_length(n: int) -> int:
    """The length of `n` bytes as a deflate stream of stored blocks."""
    return n + 5 * max(1, -(-n // BLOCK))


def _deflate_bound(n: int) -> int:
    # zlib's compressBound (raw deflate needs no more); ISA-L stays within it too.
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def _compressor():
    if _isal is not None:
        return _isal.compressobj(DEFLATE_LEVEL, _isal.DEFLATED, -15)
    return zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)


# -- the plan ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Member:
    """One planned member: its name, size (None: unknown, generated), mtime and CRC-32 if known."""

    name: str
    size: int | None
    mtime: float | None = None
    crc: int | None = None


@dataclass(slots=True)
class _Record:
    """Where and how one member is written, derived from its Member alone (see `_record`)."""

    name: bytes
    kind: str
    size: int | None  # None: unknown until written
    zip64: bool  # ZIP64 extra in the local header (and a 24-byte descriptor)
    dos_time: int
    dos_date: int
    header_length: int
    data_length: int | None  # between header and descriptor; None: known once written
    descriptor_length: int | None  # None: 16 or 24 by the size it turns out to have

    @property
    def descriptor(self) -> bool:
        return self.kind in (BLOCKS, DEFLATED)

    @property
    def method(self) -> int:
        return 8 if self.descriptor else 0

    def local_header(self, crc: int) -> bytes:
        """The local file header; `crc` matters only for the stored forms."""
        flags = _UTF8_FLAG | (_DESCRIPTOR_FLAG if self.descriptor else 0)
        extra = b""
        if self.zip64:
            known = self.kind == BLOCKS  # a deflated member's compressed size is not known yet
            extra = struct.pack("<HHQQ", 1, 16, self.size if known else 0, self.data_length if known else 0)
            crc, csize, usize = 0, ZIP64_LIMIT, ZIP64_LIMIT
        elif self.descriptor:
            crc = csize = usize = 0
        else:
            csize = usize = self.size
        version = 45 if self.zip64 else 20
        head = _LOCAL.pack(b"PK\x03\x04", version, flags, self.method, self.dos_time, self.dos_date,
                           crc, csize, usize, len(self.name), len(extra))
        return head + self.name + extra

    def data_descriptor(self, crc: int, csize: int, usize: int) -> bytes:
        if self.zip64 or csize > ZIP64_LIMIT or usize > ZIP64_LIMIT:
            return struct.pack("<4sLQQ", b"PK\x07\x08", crc, csize, usize)
        return struct.pack("<4sLLL", b"PK\x07\x08", crc, csize, usize)

    def central_record(self, crc: int, csize: int, usize: int, offset: int) -> bytes:
        values = [v for v in (usize, csize, offset) if v >= ZIP64_LIMIT]
        extra = struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) if values else b""
        version = 45 if extra or self.zip64 else 20
        flags = _UTF8_FLAG | (_DESCRIPTOR_FLAG if self.descriptor else 0)
        head = _CENTRAL.pack(b"PK\x01\x02", _MADE_BY_UNIX | version, version, flags, self.method,
                             self.dos_time, self.dos_date, crc, min(csize, ZIP64_LIMIT), min(usize, ZIP64_LIMIT),
                             len(self.name), len(extra), 0, 0, 0, _MODE, min(offset, ZIP64_LIMIT))
        return head + self.name + extra


def central_length(name_length: int, csize: int, usize: int, offset: int) -> int:
    """The length of a central directory record."""
    fields = (usize >= ZIP64_LIMIT) + (csize >= ZIP64_LIMIT) + (offset >= ZIP64_LIMIT)
    return _CENTRAL.size + name_length + (4 + 8 * fields if fields else 0)


def _form(size: int | None, deflate: bool) -> tuple[str, bool]:
    """A member's form and whether its local header has the ZIP64 extra, from its planned size (see the docstring)."""
    if size == 0:
        return EMPTY, False
    if size is None:
        return (DEFLATED if deflate else BLOCKS), False
    if deflate and not (size <= ZIP64_LIMIT < _deflate_bound(size)):
        return DEFLATED, size > ZIP64_LIMIT
    if size <= SMALL and not deflate:
        return STORED, False
    return BLOCKS, blocks_length(size) > ZIP64_LIMIT


def _lengths(kind: str, zip64: bool, size: int | None, name_length: int) -> tuple[int, int | None, int | None]:
    """The lengths of a member's local header, data and descriptor (None: known once written)."""
    if size is None or kind == DEFLATED:
        data = None
    else:
        data = blocks_length(size) if kind == BLOCKS else size
    if kind in (EMPTY, STORED):
        descriptor = 0
    else:
        descriptor = 24 if zip64 else (16 if data is not None else None)
    return _LOCAL.size + name_length + (20 if zip64 else 0), data, descriptor


def _record(member: Member, deflate: bool) -> _Record:
    """Everything needed to write one member."""
    kind, zip64 = _form(member.size, deflate)
    year, month, day, hour, minute, second = dos_date_time(member.mtime)
    name = member.name.encode("utf-8")
    return _Record(name, kind, member.size, zip64, hour << 11 | minute << 5 | second // 2,
                   (year - 1980) << 9 | month << 5 | day, *_lengths(kind, zip64, member.size, len(name)))


def _end_records(count: int, cd_offset: int, cd_size: int) -> bytes:
    out = b""
    if count >= ENTRY_LIMIT or cd_offset >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
        end64 = cd_offset + cd_size
        out = (_END64.pack(b"PK\x06\x06", _END64.size - 12, _MADE_BY_UNIX | 45, 45, 0, 0, count, count,
                           cd_size, cd_offset)
               + _LOCATOR64.pack(b"PK\x06\x07", 0, end64, 1))
    return out + _END.pack(b"PK\x05\x06", 0, 0, min(count, ENTRY_LIMIT), min(count, ENTRY_LIMIT),
                           min(cd_size, ZIP64_LIMIT), min(cd_offset, ZIP64_LIMIT), 0)


def _end_length(count: int, cd_offset: int, cd_size: int) -> int:
    return len(_end_records(count, cd_offset, cd_size))


# -- streaming helpers ---------------------------------------------------------------------------

def _exact(chunks: Iterable[bytes], size: int | None, name: str) -> Iterator[bytes]:
    """The non-empty chunks, raising SizeMismatch before more than `size` bytes or at fewer."""
    sent = 0
    iterator = iter(chunks)
    try:
        for chunk in iterator:
            if not chunk:
                continue
            sent += len(chunk)
            if size is not None and sent > size:
                raise SizeMismatch(f"{name}: more than the announced {size} bytes")
            yield chunk
        if size is not None and sent != size:
            raise SizeMismatch(f"{name}: {sent} bytes instead of the announced {size}")
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _drop(pieces: Iterable[bytes], count: int) -> Iterator[bytes]:
    """`pieces` without their first `count` bytes."""
    for piece in pieces:
        if count >= len(piece):
            count -= len(piece)
            continue
        yield piece[count:] if count else piece
        count = 0


def _coalesce(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Small pieces (headers, small members) gathered into blocks of at least 64 KiB; large ones as they are."""
    pending: list[bytes] = []
    pending_len = 0
    for piece in pieces:
        if not piece:
            continue
        if len(piece) >= _COALESCE:
            if pending:
                yield b"".join(pending)
                pending, pending_len = [], 0
            yield piece
            continue
        pending.append(piece)
        pending_len += len(piece)
        if pending_len >= _COALESCE:
            yield b"".join(pending)
            pending, pending_len = [], 0
    if pending:
        yield b"".join(pending)


def _block_header(length: int, final: bool) -> bytes:
    return struct.pack("<BHH", final, length, length ^ 0xFFFF)


def _frame(chunk: bytes, pos: int, size: int) -> bytes:
    """`chunk`, which holds member bytes from `pos`, cut into stored deflate blocks of a `size`-byte member."""
    view = memoryview(chunk)
    out = []
    i, end = 0, len(chunk)
    while i < end:
        inner = pos % BLOCK
        if inner == 0:
            length = min(BLOCK, size - pos)
            final = pos + length == size
            out.append(_FULL_BLOCK if length == BLOCK and not final else _block_header(length, final))
        take = min(BLOCK - inner, end - i)
        out.append(view[i:i + take])
        i += take
        pos += take
    return b"".join(out)


class _Framer:
    """Stored deflate blocks for a member of unknown size: the last block is held until the end."""

    def __init__(self):
        self.pending = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self.pending += chunk
        full = (len(self.pending) - 1) // BLOCK  # keep at least one byte: it may be the final block's
        if full <= 0:
            return b""
        view = memoryview(self.pending)
        out = b"".join(piece for k in range(full) for piece in (_FULL_BLOCK, view[k * BLOCK:(k + 1) * BLOCK]))
        view.release()
        del self.pending[:full * BLOCK]
        return out

    def finish(self) -> bytes:
        return _block_header(len(self.pending), True) + bytes(self.pending)


# -- the archive ---------------------------------------------------------------------------------

class _Offsets(Sequence):
    """Local header offsets, 8 bytes each; None where not known before writing."""

    def __init__(self):
        self._values = array("q")

    def append(self, offset: int | None) -> None:
        self._values.append(-1 if offset is None else offset)

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [None if v < 0 else v for v in self._values[index]]
        value = self._values[index]
        return None if value < 0 else value

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


class _Crcs(MutableMapping):
    """CRC-32s by member index, 8 bytes a member (-1: not known)."""

    def __init__(self, count: int):
        self._values = array("q", [-1]) * count

    def __getitem__(self, index: int) -> int:
        value = self._values[index] if 0 <= index < len(self._values) else -1
        if value < 0:
            raise KeyError(index)
        return value

    def __setitem__(self, index: int, crc: int) -> None:
        self._values[index] = crc

    def __delitem__(self, index: int) -> None:
        self[index]  # KeyError when absent
        self._values[index] = -1

    def __iter__(self) -> Iterator[int]:
        return (i for i, value in enumerate(self._values) if value >= 0)

    def __len__(self) -> int:
        return sum(1 for value in self._values if value >= 0)


ReadMember = Callable[[int, int], Iterable[bytes]]
CrcOf = Callable[[int], int]


class ZipLayout:
    """The byte layout of one archive, from its members and options alone; `body` produces any suffix of it.

    `length` (None when deflated or a size is unknown), `member_offsets` (each local header's
    offset, None past an unknown length) and `central_offset` are known at once. `crcs` holds
    every CRC-32 given, learned while streaming or obtained from `crc_of`, by member index.
    """

    def __init__(self, members: Iterable[Member], deflate: bool = False, unique: bool = False):
        # A Sequence is used as it is: a caller may make its Members on demand (`unique`: and vouch
        # that their names differ, so that no set of 100,000 names is built here).
        self.members = members if isinstance(members, Sequence) else list(members)
        self.deflate = deflate
        self.crcs = _Crcs(len(self.members))
        self.written_sizes: dict[int, int] = {}  # members of unknown size, once written
        # Records are derived again when needed rather than kept: a plan of 100,000 members stays small.
        self.member_offsets = _Offsets()
        offset: int | None = 0
        cd_size = 0
        names = None if unique else set()
        for i, m in enumerate(self.members):
            check_name(m.name)
            if names is not None:
                if m.name in names:
                    raise ValueError(f"duplicate member name {m.name!r}")
                names.add(m.name)
            if m.crc is not None and m.size:
                self.crcs[i] = m.crc
            if m.size is not None and (not isinstance(m.size, int) or m.size < 0):
                raise ValueError(f"{m.name}: bad size {m.size!r}")
            self.member_offsets.append(offset)
            if offset is not None:
                name_length = len(m.name.encode("utf-8"))
                header, data, descriptor = _lengths(*_form(m.size, deflate), m.size, name_length)
                if data is None or descriptor is None:
                    offset = None
                else:
                    cd_size += central_length(name_length, data, m.size, offset)
                    offset += header + data + descriptor
        self.central_offset = offset
        self.length = None if offset is None else offset + cd_size + _end_length(len(self.members), offset, cd_size)

    def _record(self, index: int) -> _Record:
        return _record(self.members[index], self.deflate)

    def _known_crc(self, index: int) -> int | None:
        return 0 if self.members[index].size == 0 else self.crcs.get(index)

    def __len__(self) -> int:
        return len(self.members)

    def kind(self, index: int) -> str:
        """How member `index` is written: "empty", "stored", "blocks" or "deflated"."""
        return self._record(index).kind

    def crc(self, index: int, crc_of: CrcOf) -> int:
        """The CRC-32 of member `index`: known already, or asked of `crc_of` (and remembered)."""
        known = self._known_crc(index)
        if known is None:
            known = self.crcs[index] = crc_of(index)
        return known

    def body(self, read_member: ReadMember, crc_of: CrcOf, start: int = 0,
             on_crc: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
        """The archive's bytes [start, length), in blocks of at least 64 KiB where possible.

        `read_member(index, offset)` yields member `index`'s bytes from `offset`; `crc_of(index)`
        gives a CRC-32 the layout needs but neither was given nor computed (resuming past the
        member); `on_crc(index, crc)` hears every CRC the layout computes from bytes it read.
        Raises MemberChanged (SizeMismatch, CrcMismatch) when a member no longer matches the plan.
        """
        if start and self.length is None:
            raise ValueError("an archive without a fixed length can only be produced from its start")
        if not 0 <= start <= (self.length or 0):
            raise ValueError(f"start {start} outside the archive")
        return _coalesce(_Body(self, read_member, crc_of, on_crc).pieces(start))


class _Body:
    """One pass over a ZipLayout from a start offset; holds what this pass learns."""

    def __init__(self, layout: ZipLayout, read_member: ReadMember, crc_of: CrcOf, on_crc):
        self.layout = layout
        self.read_member = read_member
        self.crc_of = crc_of
        self.on_crc = on_crc
        self.csizes: dict[int, int] = {}
        self.offsets: dict[int, int] = {}  # members written after one of unpredictable length

    def learn(self, index: int, crc: int) -> None:
        self.layout.crcs[index] = crc
        if self.on_crc is not None:
            self.on_crc(index, crc)

    def read(self, index: int, offset: int, size: int | None) -> Iterator[bytes]:
        return _exact(self.read_member(index, offset), None if size is None else size - offset,
                      self.layout.members[index].name)

    def pieces(self, start: int) -> Iterator[bytes]:
        layout = self.layout
        pos = 0
        for i in range(len(layout)):
            planned = layout.member_offsets[i]
            if planned is not None:
                pos = planned
                following = layout.member_offsets[i + 1] if i + 1 < len(layout) else layout.central_offset
                if following is not None and following <= start:
                    continue
            else:
                self.offsets[i] = pos
            for piece in self.member(i, layout._record(i), max(0, start - pos)):
                pos += len(piece)
                yield piece
        if layout.central_offset is not None:
            pos = layout.central_offset
        yield from self.central(pos, start)

    def member(self, i: int, rec: _Record, skip: int) -> Iterator[bytes]:
        if rec.kind == EMPTY:
            for _ in self.read(i, 0, 0):
                pass  # raises if the member is no longer empty
            return _drop([rec.local_header(0)], skip)
        if rec.kind == STORED:
            return self.stored(i, rec, skip)
        if rec.kind == DEFLATED:
            return self.deflated(i, rec)
        if rec.size is None:
            return self.unknown_blocks(i, rec)
        return self.blocks(i, rec, skip)

    def stored(self, i: int, rec: _Record, skip: int) -> Iterator[bytes]:
        crc = self.layout.crcs.get(i)
        header_length = rec.header_length
        if crc is None:
            data = b"".join(self.read(i, 0, rec.size))
            crc = crc32(data)
            self.learn(i, crc)
            yield from _drop([rec.local_header(crc), data], skip)
        elif skip <= header_length:
            yield rec.local_header(crc)[skip:]
            computed = 0
            for chunk in self.read(i, 0, rec.size):
                computed = crc32(chunk, computed)
                yield chunk
            self.check(i, crc, computed)
        else:
            yield from self.read(i, skip - header_length, rec.size)

    def check(self, i: int, expected: int, computed: int) -> None:
        if computed != expected:
            raise CrcMismatch(f"{self.layout.members[i].name}: CRC-32 {computed:08x}, planned {expected:08x}")

    def blocks(self, i: int, rec: _Record, skip: int) -> Iterator[bytes]:
        size, header_length, data_length = rec.size, rec.header_length, rec.data_length
        crc = self.layout.crcs.get(i)
        if skip >= header_length + data_length:  # inside the descriptor
            crc = self.layout.crc(i, self.crc_of)
            yield rec.data_descriptor(crc, data_length, size)[skip - header_length - data_length:]
            return
        if crc is not None and skip > header_length:  # inside the data, CRC known: from that block on
            block, inner = divmod(skip - header_length, BLOCK + 5)
            pos = block * BLOCK
            yield from _drop((_frame(chunk, p, size) for p, chunk in _positions(self.read(i, pos, size), pos)), inner)
            yield rec.data_descriptor(crc, data_length, size)
            return
        # From the header or the data with the CRC unknown: read it all, dropping what precedes `skip`.
        computed = 0

        def framed():
            nonlocal computed
            yield rec.local_header(0)
            pos = 0
            for chunk in self.read(i, 0, size):
                computed = crc32(chunk, computed)
                yield _frame(chunk, pos, size)
                pos += len(chunk)

        yield from _drop(framed(), skip)
        if crc is None:
            self.learn(i, computed)
        else:
            self.check(i, crc, computed)
        yield rec.data_descriptor(computed, data_length, size)

    def unknown_blocks(self, i: int, rec: _Record) -> Iterator[bytes]:
        yield rec.local_header(0)
        framer, computed, size, csize = _Framer(), 0, 0, 0
        for chunk in self.read(i, 0, None):
            computed = crc32(chunk, computed)
            size += len(chunk)
            out = framer.feed(chunk)
            csize += len(out)
            yield out
        out = framer.finish()
        yield out
        csize += len(out)
        self.finish(i, rec, computed, csize, size)
        yield rec.data_descriptor(computed, csize, size)

    def deflated(self, i: int, rec: _Record) -> Iterator[bytes]:
        yield rec.local_header(0)
        compressor, computed, size, csize = _compressor(), 0, 0, 0
        for chunk in self.read(i, 0, rec.size):
            computed = crc32(chunk, computed)
            size += len(chunk)
            out = compressor.compress(chunk)
            if out:
                csize += len(out)
                yield out
        out = compressor.flush()
        csize += len(out)
        yield out
        self.finish(i, rec, computed, csize, size)
        yield rec.data_descriptor(computed, csize, size)

    def finish(self, i: int, rec: _Record, crc: int, csize: int, size: int) -> None:
        """Record what a member of unpredictable length came out as."""
        known = self.layout.crcs.get(i)
        if known is None:
            self.learn(i, crc)
        else:
            self.check(i, known, crc)
        self.csizes[i] = csize
        if rec.size is None:
            self.layout.written_sizes[i] = size

    def central(self, cd_offset: int, start: int) -> Iterator[bytes]:
        """The central directory and end records from `start`, asking `crc_of` only for records sent."""
        layout = self.layout
        skip = max(0, start - cd_offset)
        at = 0
        for i in range(len(layout)):
            rec = layout._record(i)
            usize = rec.size if rec.size is not None else layout.written_sizes[i]
            csize = rec.data_length if rec.data_length is not None else self.csizes[i]
            offset = layout.member_offsets[i]
            offset = offset if offset is not None else self.offsets[i]
            length = central_length(len(rec.name), csize, usize, offset)
            if at + length > skip:
                piece = rec.central_record(layout.crc(i, self.crc_of), csize, usize, offset)
                yield piece[skip - at:] if skip > at else piece
            at += length
        yield _end_records(len(layout), cd_offset, at)[max(0, skip - at):]


def _positions(chunks: Iterable[bytes], pos: int) -> Iterator[tuple[int, bytes]]:
    """Each chunk with the member offset of its first byte."""
    for chunk in chunks:
        yield pos, chunk
        pos += len(chunk)


# -- the older interface -------------------------------------------------------------------------

class StreamingZip:
    """A ZIP archive built as it is iterated (members added first), on top of ZipLayout.

    Kept for cluster.py until it calls ZipLayout directly. Every member's chunks are read once, from
    the start; its length is known when every size is (and it is stored).
    """

    def __init__(self, deflate: bool = False):
        self.deflate = deflate
        self._members: list[Member] = []
        self._chunks: list[Iterable[bytes]] = []
        self._index: dict[str, int] = {}
        self._layout: ZipLayout | None = None

    def __len__(self) -> int:
        return len(self._members)

    def add(self, name: str, chunks: Iterable[bytes], size: int | None = None, mtime: float | None = None) -> None:
        """Queue member `name` with the bytes of `chunks` (exactly `size` of them when given)."""
        check_name(name)
        if name in self._index:
            raise ValueError(f"duplicate member name {name!r}")
        if size is not None and size < 0:
            raise ValueError("negative size")
        self._index[name] = len(self._members)
        self._members.append(Member(name, size, mtime))
        self._chunks.append(chunks)
        self._layout = None

    def layout(self) -> ZipLayout:
        """The ZipLayout of the members added so far."""
        if self._layout is None:
            self._layout = ZipLayout(self._members, self.deflate)
        return self._layout

    @property
    def length(self) -> int | None:
        """The archive's exact length in bytes, or None (deflated, or a member of unknown size)."""
        return self.layout().length

    def crc32(self, name: str) -> int | None:
        """The CRC-32 of member `name` as written, once it has been written."""
        return self.layout()._known_crc(self._index[name]) if name in self._index else None

    def written_size(self, name: str) -> int | None:
        """The uncompressed size of member `name` as written, once it has been written."""
        index = self._index.get(name)
        if index is None:
            return None
        return self._members[index].size if self._members[index].size is not None \
            else self.layout().written_sizes.get(index)

    def _read(self, index: int, offset: int) -> Iterable[bytes]:
        if offset:
            raise RuntimeError("StreamingZip reads each member once, from its start")
        return self._chunks[index]

    def _no_crc(self, index: int) -> int:
        raise RuntimeError(f"CRC of {self._members[index].name} unknown")

    def __iter__(self) -> Iterator[bytes]:
        """The archive's bytes, small pieces gathered into blocks of at least 64 KiB."""
        return self.layout().body(self._read, self._no_crc)

    def close(self) -> None:
        """Forget the members' chunk sources."""
        self._chunks = [()] * len(self._chunks)
