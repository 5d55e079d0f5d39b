"""Streamed ZIP archives on top of zipstream-new, with their exact length known in advance.

zipstream-new writes each member as: local header (CRC and sizes zero, flag bit 3), the data,
a data descriptor; then the central directory and the end records. It has no way to tell the
archive's length before writing it, and a few gaps, filled here and nowhere else:

- Length: `StreamingZip.length` replays zipstream's own layout rules (header, optional ZIP64
  extra, descriptor width, central records with ZIP64 extras past 2 GiB offsets/sizes, ZIP64
  end records past 65,535 entries); `tests/test_zipfmt.py` holds it to the bytes actually written.
- ZIP64 local headers: zipstream adds the ZIP64 extra but leaves the sizes at 0 instead of
  0xFFFFFFFF and "version needed" at 2.0, and picks the descriptor width from the final size, not
  from the header; streaming readers that trust the header then misparse. `_Info` uses CPython's
  own FileHeader and makes the descriptor 8-byte-sized exactly when the header has the extra.
- Times: zipfile refuses dates before 1980 and DOS dates overflow after 2107: `dos_date_time` clamps.
- Names: zipstream normalises (`os.path.normpath`) rather than refusing; `check_name` refuses any
  name that could leave the extraction directory, and every name carries the UTF-8 flag.
- Sizes: zipstream writes whatever the iterable yields; a member whose bytes differ from its
  announced size raises `SizeMismatch`, so no archive with a wrong length goes out.
- Mode bits: members are regular files with mode 0644 (zipstream says 0600).
- Speed: with the optional `isal` package, zipstream's CRC-32 is ISA-L's (about 9x faster).

The hook into zipstream is `ZipFile._writecheck`, which it calls with each new ZipInfo before
writing that member's header (zipstream-new 1.1.x).
"""

from __future__ import annotations

import stat
import struct
import time
import zipfile
from dataclasses import dataclass
from typing import Iterable, Iterator

import zipstream

try:
    # ISA-L's CRC-32 runs at ~60 GB/s where zlib's runs at ~6.6 (measured here); the CRC of every
    # byte is most of what a stored cluster ZIP costs beyond plain forwarding. Same values.
    from isal.isal_zlib import crc32 as _fast_crc32
except ImportError:  # optional: pip install 'wsgi_stream[fast]'
    _fast_crc32 = None
if _fast_crc32 is not None:
    zipstream.crc32 = _fast_crc32  # zipstream computes each member's CRC with this module global

ZIP64_LIMIT = zipfile.ZIP64_LIMIT  # 2 GiB - 1: where zipstream (like zipfile) switches to ZIP64
ENTRY_LIMIT = zipfile.ZIP_FILECOUNT_LIMIT  # 65,535
_UTF8_FLAG = 0x800
_MODE = (stat.S_IFREG | 0o644) << 16
_DOS_MIN = (1980, 1, 1, 0, 0, 0)
_DOS_MAX = (2107, 12, 31, 23, 59, 58)
# Size given to zipstream for a member of unknown size, so that it gets a ZIP64 header and
# descriptor and may grow past 4 GiB.
_UNKNOWN = ZIP64_LIMIT + 1
_COALESCE = 64 * 1024


class SizeMismatch(Exception):
    """A member yielded more or fewer bytes than its announced size."""


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
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError("empty, '.' or '..' path segment")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("name is not valid UTF-8") from None
    if len(encoded) > 0xFFFF:
        raise ValueError("name longer than 65,535 bytes")
    return name


class _Info(zipstream.ZipInfo):
    """A member whose local header and data descriptor agree on ZIP64, with a UTF-8 name."""

    def FileHeader(self, zip64=None):
        self._zip64 = bool(zip64)
        return zipfile.ZipInfo.FileHeader(self, zip64)

    def DataDescriptor(self):
        fmt = "<4sLQQ" if getattr(self, "_zip64", False) else "<4sLLL"
        return struct.pack(fmt, zipstream.stringDataDescriptor, self.CRC, self.compress_size, self.file_size)

    def _encodeFilenameFlags(self):
        return self.filename.encode("utf-8"), self.flag_bits | _UTF8_FLAG


class _ZipFile(zipstream.ZipFile):
    def _writecheck(self, zinfo):
        super()._writecheck(zinfo)
        zinfo.__class__ = _Info
        zinfo.external_attr = _MODE


@dataclass
class _Planned:
    name_len: int
    size: int | None
    zip64_local: bool


def _local_length(m: _Planned) -> int:
    return 30 + m.name_len + (20 if m.zip64_local else 0) + m.size + (24 if m.zip64_local else 16)


def _central_length(m: _Planned, offset: int) -> int:
    extras = 2 * (m.size > ZIP64_LIMIT) + (offset > ZIP64_LIMIT)
    return 46 + m.name_len + (4 + 8 * extras if extras else 0)


def _checked(chunks: Iterable[bytes], size: int | None, name: str) -> Iterator[bytes]:
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        if size is not None and sent > size:
            raise SizeMismatch(f"{name}: more than the announced {size} bytes")
        if chunk:
            yield chunk
    if size is not None and sent != size:
        raise SizeMismatch(f"{name}: {sent} bytes instead of the announced {size}")


class StreamingZip:
    """A ZIP archive built as it is iterated; its length is known when every size is (stored)."""

    def __init__(self, deflate: bool = False):
        self.deflate = deflate
        self._zip = _ZipFile(mode="w", compression=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED,
                             allowZip64=True)
        self._planned: list[_Planned] = []
        self._names: set[str] = set()

    def __len__(self) -> int:
        return len(self._planned)

    def add(self, name: str, chunks: Iterable[bytes], size: int | None = None, mtime: float | None = None) -> None:
        """Queue member `name` with the bytes of `chunks` (exactly `size` of them when given)."""
        check_name(name)
        if name in self._names:
            raise ValueError(f"duplicate member name {name!r}")
        if size is not None and size < 0:
            raise ValueError("negative size")
        self._names.add(name)
        buffer_size = _UNKNOWN if size is None else size
        self._planned.append(_Planned(len(name.encode("utf-8")), size, buffer_size * 1.05 > ZIP64_LIMIT))
        self._zip.write_iter(name, _checked(chunks, size, name), buffer_size=buffer_size,
                             date_time=dos_date_time(mtime))

    @property
    def length(self) -> int | None:
        """The archive's exact length in bytes, or None (deflated, or a member of unknown size)."""
        if self.deflate or any(m.size is None for m in self._planned):
            return None
        offset = central = 0
        for m in self._planned:
            central += _central_length(m, offset)
            offset += _local_length(m)
        end = 22
        if len(self._planned) >= ENTRY_LIMIT or offset > ZIP64_LIMIT or central > ZIP64_LIMIT:
            end += 56 + 20
        return offset + central + end

    def crc32(self, name: str) -> int | None:
        """The CRC-32 of member `name` as written, once it has been written."""
        info = self._zip.NameToInfo.get(name)
        return None if info is None else info.CRC

    def written_size(self, name: str) -> int | None:
        """The uncompressed size of member `name` as written, once it has been written."""
        info = self._zip.NameToInfo.get(name)
        return None if info is None else info.file_size

    def __iter__(self) -> Iterator[bytes]:
        """The archive's bytes, small pieces gathered into blocks of at least 64 KiB."""
        pending: list[bytes] = []
        pending_len = 0
        for piece in self._zip:
            if len(piece) >= _COALESCE and not pending:
                yield piece
                continue
            pending.append(piece)
            pending_len += len(piece)
            if pending_len >= _COALESCE:
                yield b"".join(pending)
                pending, pending_len = [], 0
        if pending:
            yield b"".join(pending)

    def close(self) -> None:
        """Forget the archive; zipfile would otherwise build the central directory again when collected."""
        self._zip.fp = None
