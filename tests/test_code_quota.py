"""Code-store quotas per tenant (SNGIN_CODE_QUOTA_FILES, SNGIN_CODE_QUOTA_BYTES, history
included on the folder store), on the folder store and on S3; listings hash only what changed;
one tenant's file operations never wait on another's lock."""

from __future__ import annotations

import fcntl
import os

import trio

from sngin.code.files import FolderFiles
from sngin.code.quota import CodeQuota
from tests.support import AUTH
from tests.test_code_api import code_server, kind, put  # noqa: F401 (the fixture)

MIB = 1024 * 1024


async def delete(srv, path: str, text: str):
    from tests.test_code_api import FILE, quoted

    return await srv.client.delete(
        srv.url + FILE, params={"path": path}, headers=AUTH | {"If-Match": quoted(text)}
    )


async def test_a_tenant_token_cannot_write_past_the_file_quota(kind, tmp_path, request):  # noqa: F811
    # The attack: a tenant token wrote 200 files of 1 MiB in 8 s.
    async with code_server(kind, tmp_path, request, code_quota_files=3) as srv:
        made = await srv.client.post(srv.url + "/__sngin/tokens", json={"host": "code.test"},
                                     headers=AUTH)  # fmt: skip
        tenant = {"Authorization": f"Bearer {made.json()['token']}"}
        statuses = []
        for n in range(5):
            answer = await srv.client.put(
                srv.url + "/__sngin/code/code.test/file", params={"path": f"lib/m{n}.lua"},
                content=b"return 1", headers=tenant | {"If-None-Match": "*"},
            )  # fmt: skip
            statuses.append(answer.status_code)
        assert statuses == [201, 201, 201, 413, 413]
        assert "code quota of 3 files" in answer.json()["error"]
        # Deleting one makes room again (S3: the usage follows the API's own writes).
        assert (await delete(srv, "lib/m0.lua", "return 1")).status_code == 200
        assert (
            await put(srv, "lib/m9.lua", "return 9", **{"If-None-Match": "*"})
        ).status_code == 201


async def test_the_byte_quota_counts_files_and_history(kind, tmp_path, request):  # noqa: F811
    async with code_server(kind, tmp_path, request, code_quota_bytes=MIB) as srv:
        big = "-- " + "x" * (400 * 1024)
        assert (await put(srv, "a.lua", big, **{"If-None-Match": "*"})).status_code == 201
        assert (await put(srv, "b.lua", big, **{"If-None-Match": "*"})).status_code == 201
        refused = await put(srv, "c.lua", big, **{"If-None-Match": "*"})
        assert refused.status_code == 413
        assert "code quota of 1 MiB" in refused.json()["error"]


async def test_on_the_folder_store_old_versions_make_room_first(tmp_path):
    files = FolderFiles(tmp_path / "sites", tmp_path / "locks", tmp_path / "history",
                        CodeQuota(max_bytes=MIB, max_files=10))  # fmt: skip
    body = b"x" * (300 * 1024)
    etag = await files.write("a.test", "a.lua", body, if_match=None)
    for n in range(5):  # each write keeps the one it replaced while there is room
        etag = await files.write("a.test", "a.lua", body + bytes([n]), if_match=etag)
    kept = await files.history("a.test", "a.lua")
    # 1 MiB holds the file and two earlier versions; the oldest went first.
    assert len(kept) == 2
    assert (await files.read("a.test", "a.lua")).content == body + bytes([4])
    assert {v.size for v in kept} == {300 * 1024 + 1}


async def test_a_listing_hashes_only_what_changed(tmp_path):
    files = FolderFiles(tmp_path / "sites", tmp_path / "locks")
    (tmp_path / "sites" / "a.test").mkdir(parents=True)
    script = tmp_path / "sites" / "a.test" / "index.lua"
    script.write_text("return 1")
    first = {f.path: f.etag for f in await files.files("a.test")}
    # Same size and mtime: the listing trusts what it hashed before (it does not read it).
    stat = script.stat()
    script.write_text("return 2")
    os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert {f.path: f.etag for f in await files.files("a.test")} == first
    script.write_text("return 22")  # a new size: hashed again
    assert {f.path: f.etag for f in await files.files("a.test")} != first


async def test_one_tenants_lock_never_holds_another_tenant(tmp_path):
    files = FolderFiles(tmp_path / "sites", tmp_path / "locks")
    (tmp_path / "locks").mkdir()
    held = (tmp_path / "locks" / "a.test.lock").open("a")
    fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another process is busy with a.test's files
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                done: list[str] = []

                async def write(tenant: str) -> None:
                    await files.write(tenant, "index.lua", b"return 1", if_match=None)
                    done.append(tenant)

                nursery.start_soon(write, "a.test")
                await write("b.test")  # not held up by a.test's lock
                assert done == ["b.test"]
                fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        assert sorted(done) == ["a.test", "b.test"]
    finally:
        held.close()
