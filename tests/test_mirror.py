"""DiskMirror on its own: round trips, hashed names, LRU by size, damaged and partial files."""

from __future__ import annotations

from sngin.code.mirror import TEMP_PREFIX, DiskMirror, file_name
from sngin.code.store import Source


def always() -> bool:
    return True


async def open_mirror(folder, max_bytes=1024 * 1024) -> DiskMirror:
    mirror = DiskMirror(folder, max_bytes)
    await mirror.open()
    return mirror


async def test_round_trip_survives_a_restart(tmp_path):
    mirror = await open_mirror(tmp_path)
    source = Source(b"return '\x00\xff'", '"etag-1"', "Wed, 21 Oct 2026 07:28:00 GMT")
    await mirror.write("a.test/x", source, always)
    assert await mirror.read("a.test/x") == source
    again = await open_mirror(tmp_path)
    assert await again.read("a.test/x") == source
    assert len(again) == 1


async def test_keys_cannot_escape_the_folder(tmp_path):
    folder = tmp_path / "mirror"
    mirror = await open_mirror(folder)
    await mirror.write("../../etc/passwd", Source(b"x", '"e"'), always)
    assert [p.name for p in folder.iterdir()] == [file_name("../../etc/passwd")]
    assert not (tmp_path / "etc").exists()


async def test_write_is_skipped_when_no_longer_wanted(tmp_path):
    mirror = await open_mirror(tmp_path)
    await mirror.write("a.test", Source(b"x", '"e"'), lambda: False)
    assert await mirror.read("a.test") is None


async def test_least_recently_used_is_evicted_by_size(tmp_path):
    body = b"x" * 300
    mirror = await open_mirror(tmp_path, max_bytes=1200)  # room for three files
    for name in "abc":
        await mirror.write(f"{name}.test", Source(body, '"e"'), always)
    await mirror.read("a.test")  # a is now more recent than b
    await mirror.write("d.test", Source(body, '"e"'), always)
    assert mirror.size_bytes <= 1200
    assert await mirror.read("b.test") is None
    assert await mirror.read("a.test") is not None
    assert await mirror.read("d.test") is not None
    assert not (tmp_path / file_name("b.test")).exists()


async def test_interrupted_write_leaves_nothing_that_is_served(tmp_path):
    mirror = await open_mirror(tmp_path)
    await mirror.write("a.test", Source(b"return 'whole'", '"e"'), always)
    # A crash mid-write leaves a temporary file; a crash after a torn rename a short file.
    (tmp_path / f"{TEMP_PREFIX}deadbeef").write_bytes(b'{"key": "b.test", "etag"')
    path = tmp_path / file_name("a.test")
    path.write_bytes(path.read_bytes()[:-3])
    again = await open_mirror(tmp_path)
    assert await again.read("a.test") is None
    assert list(tmp_path.iterdir()) == []


async def test_damaged_file_found_on_read_is_dropped(tmp_path):
    mirror = await open_mirror(tmp_path)
    await mirror.write("a.test", Source(b"return 1", '"e"'), always)
    (tmp_path / file_name("a.test")).write_bytes(b"garbage")
    assert await mirror.read("a.test") is None
    assert len(mirror) == 0


async def test_purge_by_predicate(tmp_path):
    mirror = await open_mirror(tmp_path)
    for key in ("a.test", "a.test/x", "a.test/xy", "b.test"):
        await mirror.write(key, Source(b"1", '"e"'), always)
    assert await mirror.purge(lambda key: key.startswith("a.test")) == 3
    assert len(mirror) == 1
    assert await mirror.read("b.test") is not None
