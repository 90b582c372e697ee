"""data/tar_members.py: the files of a shard, read as Python's tarfile reads them, and damage raised."""
import io
import tarfile

import pytest
import webdataset as wds

from clipscratch.data.make_shards import synthetic_samples, write_shards
from clipscratch.data.tar_members import DamagedTar, shard_files, tar_members

LONG_DIR = "a-directory-name-of-sixty-characters-to-need-the-ustar-prefix/" * 2  # 124 characters


def _archive(fmt: int, members) -> bytes:
    """A tar archive of (name, bytes | "dir" | "symlink" | "hardlink") written by tarfile in ``fmt``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data == "dir":
                info.type = tarfile.DIRTYPE
            elif data in ("symlink", "hardlink"):
                info.type, info.linkname = (tarfile.SYMTYPE if data == "symlink" else tarfile.LNKTYPE), "x/target.jpg"
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else None)
    return buf.getvalue()


def _tarfile_members(archive: bytes):
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


MEMBERS = [
    ("x", "dir"),
    ("x/000.jpg", b"\xff\xd8" + bytes(range(256)) * 3),
    ("x/000.TXT", b"a caption"),
    ("x/001.jpg", b""),  # empty file
    ("x/001.txt", b"b" * 512),  # exactly one block: no padding
    ("x/link.jpg", "symlink"),
    ("x/hard.jpg", "hardlink"),
    (LONG_DIR + "002.jpg", b"long path"),  # ustar prefix, GNU long name or PAX path
    ("x/café-☕.txt", "ünïcödé caption".encode()),  # PAX path (ustar/GNU: as UTF-8 bytes)
]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_members_equal_tarfile_on_ustar_gnu_and_pax_archives(fmt):
    archive = _archive(fmt, MEMBERS)
    expected = _tarfile_members(archive)
    assert [n for n, _ in expected] == ["x/000.jpg", "x/000.TXT", "x/001.jpg", "x/001.txt", LONG_DIR + "002.jpg", "x/café-☕.txt"]
    assert list(tar_members(io.BytesIO(archive))) == expected


def test_a_pax_size_record_overrides_the_header_size():
    """Sizes of 8 GiB and more travel only in the PAX record: blank the header's field to prove it is read."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("big.bin")
        info.size, info.pax_headers = 700, {"size": "700"}
        tar.addfile(info, io.BytesIO(b"z" * 700))
    archive = bytearray(buf.getvalue())
    header = archive[1024:1536]  # the member's own header, after the PAX header and its one data block
    assert header[:7] == b"big.bin"
    header[124:136] = b"00000000000\0"
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    archive[1024:1536] = header
    assert _tarfile_members(bytes(archive)) == [("big.bin", b"z" * 700)]
    assert list(tar_members(io.BytesIO(bytes(archive)))) == [("big.bin", b"z" * 700)]


def test_a_checksum_summed_over_signed_bytes_is_accepted_as_tarfile_accepts_it():
    archive = bytearray(_archive(tarfile.GNU_FORMAT, [("é.txt", b"old writer")]))
    header = archive[:512]
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(b - 256 if b > 127 else b for b in header)
    archive[:512] = header
    assert _tarfile_members(bytes(archive)) == [("é.txt", b"old writer")]
    assert list(tar_members(io.BytesIO(bytes(archive)))) == [("é.txt", b"old writer")]


def test_shards_written_by_make_shards_and_by_webdataset_read_as_tarfile_reads_them(tmp_path):
    write_shards(synthetic_samples(6, 0, False, 32), str(tmp_path), maxcount=6)
    with wds.TarWriter(str(tmp_path / "wds.tar")) as sink:
        for i in range(3):
            sink.write({"__key__": f"s{i:03d}", "jpg": b"\xff\xd8" + bytes([i]) * 1000, "txt": f"caption {i}"})
    for shard in (tmp_path / "shard-000000.tar", tmp_path / "wds.tar"):
        archive = shard.read_bytes()
        expected = _tarfile_members(archive)
        assert len(expected) >= 6
        assert list(tar_members(io.BytesIO(archive))) == expected


class _TrickleStream(io.RawIOBase):
    """A pipe-like stream that returns at most 100 bytes a read."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def readable(self):
        return True

    def read(self, n=-1):
        chunk = self.data[self.pos : self.pos + min(n if n >= 0 else len(self.data), 100)]
        self.pos += len(chunk)
        return chunk


def test_short_reads_of_a_pipe_are_completed():
    archive = _archive(tarfile.PAX_FORMAT, MEMBERS)
    assert list(tar_members(_TrickleStream(archive))) == _tarfile_members(archive)


def _read_until_damage(data: bytes):
    read = []
    with pytest.raises(DamagedTar) as err:
        for member in tar_members(io.BytesIO(data)):
            read.append(member)
    return read, str(err.value)


def test_damage_raises_after_the_files_read_before_it():
    archive = _archive(tarfile.PAX_FORMAT, [("a.jpg", b"A" * 600), ("a.txt", b"first"), ("b.jpg", b"B" * 600)])
    whole = _tarfile_members(archive)
    b_header = archive.index(b"b.jpg\0")  # header, 2 data blocks for a.jpg; header, 1 block for a.txt
    assert b_header == 512 * 5
    cases = {
        "cut inside a file's data": (archive[: b_header + 512 + 100], "the data of 'b.jpg'"),
        "cut inside a header": (archive[: b_header + 200], "inside a tar header"),
        "a flipped byte in a header": (archive[:b_header] + b"Z" + archive[b_header + 1 :], "checksum"),
    }
    for what, (data, message) in cases.items():
        read, error = _read_until_damage(data)
        assert read == whole[:2], what
        assert message in error, what
    for garbage in (b"", b"this is not a tar file at all" * 50, bytes(1024)):
        read, error = _read_until_damage(garbage)
        assert read == []
    # the end-of-archive blocks are optional when the stream ends at a member boundary
    assert list(tar_members(io.BytesIO(archive[: b_header + 512 * 3]))) == whole
    assert list(tar_members(io.BytesIO(archive[: 512 * 3]))) == whole[:1]


def test_shard_files_skips_metadata_members_and_reports_unreadable_shards(tmp_path):
    shard = tmp_path / "s.tar"
    shard.write_bytes(_archive(tarfile.PAX_FORMAT, [("__index__", b"{}"), ("__meta__/k.json", b"{}"), ("k.jpg", b"J"), ("k.txt", b"T")]))
    errors = []
    items = list(shard_files(str(shard), errors.append))
    assert items == [{"fname": "k.jpg", "data": b"J", "__url__": str(shard)}, {"fname": "k.txt", "data": b"T", "__url__": str(shard)}]
    assert errors == []
    cut = tmp_path / "cut.tar"
    archive = shard.read_bytes()
    cut.write_bytes(archive[: archive.index(b"k.txt\0") + 512 + 10])  # inside k.txt's data block
    assert [i["fname"] for i in shard_files(str(cut), errors.append)] == ["k.jpg"]
    assert len(errors) == 1 and isinstance(errors[0], DamagedTar)
    assert list(shard_files(str(tmp_path / "missing.tar"), errors.append)) == []
    assert len(errors) == 2 and isinstance(errors[1], OSError)


def test_pipeline_samples_equal_webdatasets_on_shards_and_on_a_damaged_one(tmp_path):
    """read_shards' grouping of shard_files gives webdataset's tarfile_to_samples' samples, key for key."""
    from webdataset.tariterators import group_by_keys

    write_shards(synthetic_samples(12, 0, False, 32), str(tmp_path), maxcount=6)
    cut = tmp_path / "shard-000001.tar"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2 + 7])  # a few samples in, inside a header or a file
    for url in (str(tmp_path / "shard-000000.tar"), str(cut)):
        ours = list(group_by_keys(shard_files(url, lambda exn: True), handler=lambda exn: True))
        theirs = list(wds.tarfile_to_samples(handler=wds.ignore_and_continue)(iter([{"url": url}])))
        assert len(ours) >= 2 and ours == theirs
