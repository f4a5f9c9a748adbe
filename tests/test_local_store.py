"""The folder store: edits show on the next fetch, escapes through symlinks are refused."""

from __future__ import annotations

import os

from sngin.code.local_store import LocalStore
from sngin.observe.notes import FetchNote


async def test_fetch_reads_and_sees_edits(tmp_path):
    folder = tmp_path / "a.test" / "x"
    folder.mkdir(parents=True)
    script = folder / "index.lua"
    script.write_text("return 1")
    store = LocalStore(tmp_path)
    first = await store.fetch("a.test/x")
    assert first is not None
    assert first.text == b"return 1"
    assert await store.fetch("a.test/x") == first
    script.write_text("return 22")
    second = await store.fetch("a.test/x")
    assert second is not None
    assert second.text == b"return 22"
    assert second.version != first.version


async def test_missing_script_is_none(tmp_path):
    assert await LocalStore(tmp_path).fetch("a.test/none") is None


async def test_symlink_out_of_the_tenant_folder_is_refused(tmp_path):
    (tmp_path / "b.test").mkdir()
    (tmp_path / "b.test" / "index.lua").write_text("return 'b secret'")
    (tmp_path / "a.test").mkdir()
    os.symlink(tmp_path / "b.test", tmp_path / "a.test" / "steal")
    assert await LocalStore(tmp_path).fetch("a.test/steal") is None
    assert await LocalStore(tmp_path).fetch("b.test") is not None


async def test_a_missing_script_appears_as_soon_as_it_is_written(tmp_path):
    store = LocalStore(tmp_path)
    note = FetchNote()
    assert await store.fetch("a.test/new", note=note) is None
    assert note.outcome == "miss"  # read off the event loop
    assert await store.fetch("a.test/new", note=note) is None
    assert note.outcome == "hit"  # answered from the remembered miss: one stat
    (tmp_path / "a.test" / "new").mkdir(parents=True)
    (tmp_path / "a.test" / "new" / "index.lua").write_text("return 'now'")
    source = await store.fetch("a.test/new")
    assert source is not None
    assert source.text == b"return 'now'"


async def test_a_purge_drops_and_counts_the_in_memory_copies(tmp_path):
    """As the README says: nothing needs purging, and `purged` counts the copies dropped."""
    for path in ("a.test", "a.test/x", "b.test"):
        (tmp_path / path).mkdir(parents=True, exist_ok=True)
        (tmp_path / path / "index.lua").write_text("return 1")
    store = LocalStore(tmp_path)
    for key in ("a.test", "a.test/x", "b.test", "a.test/missing"):
        await store.fetch(key)
    assert await store.purge("a.test", "", recursive=True) == 2  # a.test and a.test/x
    note = FetchNote()
    await store.fetch("a.test/x", note=note)
    assert note.outcome == "miss"  # read again
    await store.fetch("b.test", note=note)
    assert note.outcome == "hit"  # another tenant's copy stays
