"""The files of a tar shard, read straight from its stream: (name, bytes) of each regular file.

Python's ``tarfile`` builds a TarInfo and parses the PAX records in Python for every member; in
``data.gpu_decode`` mode that was about half of a data worker's time a sample
(``bench/worker_rate.py --profile``). This reader parses only what a shard needs:

    512-byte header: name[0:100] size[124:136] checksum[148:156] type[156] magic+version[257:265] prefix[345:500]
    PAX extended header (type "x"): "path" and "size" for the next member
    GNU long name (type "L"): the next member's name
    end: a zero block, or the end of the stream at a member boundary

Directories, links, devices and global PAX headers are skipped. Damage (a bad checksum, a
stream cut inside a header or a file, not a tar at all) raises ``DamagedTar`` after the files
read before it. ``tests/test_tar_members.py`` checks it against ``tarfile`` on ustar, GNU and
PAX archives and on each kind of damage.
"""
from __future__ import annotations

import re
from contextlib import closing
from typing import BinaryIO, Callable, Iterator, Optional, Tuple

from webdataset.gopen import gopen as wds_gopen

BLOCK = 512
REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file


class DamagedTar(Exception):
    """The stream is not a well-formed tar archive from this point on."""


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A header number: octal digits, or GNU's base-256 form for sizes of 8 GiB and more."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    digits = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise DamagedTar(f"bad number field {field!r} in a tar header") from None


def _checksum_ok(header: bytes) -> bool:
    """The header's byte sum with the checksum field counted as 8 spaces (some old writers sum signed bytes)."""
    stored = _number(header[148:156])
    rest = header[:148] + header[156:]
    return stored == sum(rest) + 8 * 32 or stored == sum(b - 256 if b > 127 else b for b in rest) + 8 * 32


def _read_exactly(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    while len(data) < n:  # a pipe or socket may return short reads
        more = stream.read(n - len(data))
        if not more:
            raise DamagedTar(f"the stream ends inside {what}")
        data += more
    return data


def _pax_records(data: bytes) -> dict:
    """``"%d key=value\\n"`` records of a PAX header -> {key: value}."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise DamagedTar("bad PAX record length") from None
        record = data[space + 1 : pos + length - 1]  # without the trailing newline
        key, sep, value = record.partition(b"=")
        if not sep or length <= 0:
            raise DamagedTar("bad PAX record")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _read_file(stream: BinaryIO, size: int, name: str) -> bytes:
    """The ``size`` bytes of one member and the padding to the next block."""
    padded = _read_exactly(stream, size + (-size) % BLOCK, f"the data of {name!r}") if size else b""
    return padded[:size] if len(padded) != size else padded


def tar_members(stream: BinaryIO) -> Iterator[Tuple[str, bytes]]:
    """(name, bytes) of each regular file of the tar archive read from ``stream``, in order."""
    long_name: Optional[str] = None  # set by a GNU "L" or PAX "path" for the next header
    long_size: Optional[int] = None  # set by PAX "size"
    first = True
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            header += _read_exactly(stream, BLOCK - len(header), "a tar header") if header else b""
        if not header:  # end of the stream at a member boundary (no end-of-archive blocks)
            if first:
                raise DamagedTar("empty file")
            return
        if header.count(0) == BLOCK:  # end-of-archive block
            if first:
                raise DamagedTar("not a tar archive (starts with a zero block)")
            return
        if not _checksum_ok(header):
            raise DamagedTar("not a tar archive" if first else "bad tar header checksum")
        first = False
        kind, size = header[156:157], _number(header[124:136])
        if kind == b"x":
            records = _pax_records(_read_file(stream, size, "a PAX header"))
            long_name = records.get("path", long_name)
            long_size = int(records["size"]) if "size" in records else long_size
            continue
        if kind == b"L":
            long_name = _text(_read_file(stream, size, "a GNU long name"))
            continue
        if kind in (b"K", b"g"):  # a link's long target, a global PAX header: nothing a shard uses
            _read_file(stream, size, "a tar header extension")
            continue
        name = long_name
        if name is None:
            name = _text(header[0:100])
            if header[257:265] == b"ustar\x0000" and header[345] != 0:  # POSIX ustar: path = prefix/name
                name = _text(header[345:500]) + "/" + name
        size = size if long_size is None else long_size
        long_name = long_size = None
        if kind in REGULAR and not (kind == b"\0" and name.endswith("/")):
            yield name, _read_file(stream, size, name)
        elif kind not in (b"1", b"2", b"3", b"4", b"5", b"6"):  # links and devices carry no data
            _read_file(stream, size, name)  # directories carry none either; skip whatever else does


_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips these members (e.g. "__index__", "__meta__/x"): not sample files


def shard_files(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """The files of one shard as webdataset's items ``{"fname", "data", "__url__"}``, ready for
    ``webdataset.tariterators.group_by_keys``; a shard that cannot be opened or read to its
    end goes to ``handler`` (after the files read before the damage)."""
    try:
        stream = wds_gopen(url)
    except Exception as exn:  # webdataset's own openers raise anything from OSError to ValueError
        handler(exn)
        return
    with closing(stream):
        try:
            for name, data in tar_members(stream):
                if not _META.match(name):
                    yield {"fname": name, "data": data, "__url__": url}
        except (DamagedTar, OSError) as exn:
            handler(exn)
