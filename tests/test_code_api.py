"""The management API for tenants' code (/__sngin/code), on the folder store and on S3 (moto):
listing, reading, conditional writes and deletes that purge what they changed, hostile paths,
and the read-only and off modes."""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sngin.code.files import file_path
from sngin.config import S3Settings
from sngin.errors import BadRequest
from tests.support import AUTH, TOKEN, code_cache, running

HOST = "code.test"
FILE = f"/__sngin/code/{HOST}/file"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def quoted(text: str) -> str:
    """The ETag header of a file holding text."""
    return '"' + sha(text) + '"'


@pytest.fixture(params=["folder", "s3"])
def kind(request):
    return request.param


@asynccontextmanager
async def code_server(kind: str, tmp_path: Path, request, **changes):
    settings_changes = dict(changes)
    if kind == "folder":
        async with running(tmp_path, admin_token=TOKEN, settings_changes=settings_changes) as srv:
            yield srv
        return
    proxy, bucket = request.getfixturevalue("proxy"), request.getfixturevalue("bucket")
    settings_changes["s3"] = S3Settings(bucket=bucket.name, prefix="code")
    async with (
        code_cache(proxy, bucket, prefix="code", ttl_s=3600) as cache,
        running(tmp_path, store=cache, admin_token=TOKEN, settings_changes=settings_changes) as srv,
    ):
        yield srv


async def put(srv, path: str, text: str, **headers):
    return await srv.client.put(
        srv.url + FILE, params={"path": path}, content=text.encode(), headers=AUTH | headers
    )


async def test_create_read_list_and_serve(kind, tmp_path, request):
    async with code_server(kind, tmp_path, request) as srv:
        created = await put(srv, "index.lua", "return 'one'", **{"If-None-Match": "*"})
        assert created.status_code == 201, created.text
        assert created.json()["etag"] == sha("return 'one'")
        assert created.headers["etag"] == quoted("return 'one'")
        await put(srv, "lib/util.lua", "return {}", **{"If-None-Match": "*"})
        read = await srv.client.get(srv.url + FILE, params={"path": "index.lua"}, headers=AUTH)
        assert (read.text, read.headers["etag"]) == ("return 'one'", quoted("return 'one'"))
        listed = (await srv.client.get(srv.url + f"/__sngin/code/{HOST}", headers=AUTH)).json()
        files = {f["path"]: f for f in listed["files"]}
        assert set(files) == {"index.lua", "lib/util.lua"}
        assert files["index.lua"]["etag"] == sha("return 'one'")
        assert files["index.lua"]["size"] == len("return 'one'")
        assert files["index.lua"]["modified"].endswith("Z")
        tenants = (await srv.client.get(srv.url + "/__sngin/code", headers=AUTH)).json()
        assert HOST in tenants["tenants"]
        assert (await srv.get("/", host=HOST)).text == "one"


async def test_an_update_needs_the_version_loaded_and_purges_what_it_changed(
    kind, tmp_path, request
):
    async with code_server(kind, tmp_path, request) as srv:
        await put(srv, "page/index.lua", "return 'v1'", **{"If-None-Match": "*"})
        assert (await srv.get("/page", host=HOST)).text == "v1"  # cached (S3: TTL 1 hour)
        loaded = sha("return 'v1'")
        updated = await put(srv, "page/index.lua", "return 'v2'", **{"If-Match": f'"{loaded}"'})
        assert updated.status_code == 200, updated.text
        assert (await srv.get("/page", host=HOST)).text == "v2"  # purged: served at once
        # A second editor saving the copy it loaded before: refused, with what is there now.
        stale = await put(srv, "page/index.lua", "return 'v3'", **{"If-Match": f'"{loaded}"'})
        assert stale.status_code == 412
        current = stale.json()["current"]
        assert (current["etag"], current["content"]) == (sha("return 'v2'"), "return 'v2'")
        assert (await srv.get("/page", host=HOST)).text == "v2"
        # Creating what exists, or writing with no condition at all, is refused too.
        again = await put(srv, "page/index.lua", "return 'v4'", **{"If-None-Match": "*"})
        assert again.status_code == 412
        blind = await put(srv, "page/index.lua", "return 'v5'")
        assert blind.status_code == 428
        assert (await srv.get("/page", host=HOST)).text == "v2"


async def test_two_saves_of_one_version_at_once_one_wins(kind, tmp_path, request):
    async with code_server(kind, tmp_path, request) as srv:
        await put(srv, "index.lua", "return 'base'", **{"If-None-Match": "*"})
        base = quoted("return 'base'")
        statuses = {}

        async def save(text: str) -> None:
            statuses[text] = (await put(srv, "index.lua", text, **{"If-Match": base})).status_code

        async with trio.open_nursery() as nursery:
            for text in ("return 'a'", "return 'b'"):
                nursery.start_soon(save, text)
        assert sorted(statuses.values()) == [200, 412]
        (winner,) = [text for text, status in statuses.items() if status == 200]
        read = await srv.client.get(srv.url + FILE, params={"path": "index.lua"}, headers=AUTH)
        assert read.text == winner


async def test_a_delete_needs_the_current_version(kind, tmp_path, request):
    async with code_server(kind, tmp_path, request) as srv:
        await put(srv, "gone/index.lua", "return 'here'", **{"If-None-Match": "*"})
        assert (await srv.get("/gone", host=HOST)).text == "here"
        params = {"path": "gone/index.lua"}
        stale = await srv.client.delete(
            srv.url + FILE, params=params, headers=AUTH | {"If-Match": '"0123"'}
        )
        assert stale.status_code == 412
        assert stale.json()["current"]["content"] == "return 'here'"
        deleted = await srv.client.delete(
            srv.url + FILE, params=params, headers=AUTH | {"If-Match": sha("return 'here'")}
        )
        assert deleted.json()["deleted"] is True
        assert (
            await srv.client.get(srv.url + FILE, params=params, headers=AUTH)
        ).status_code == 404
        assert (await srv.get("/gone", host=HOST)).status_code == 404  # purged


HOSTILE_PATHS = [
    "../escape.lua", "a/../../escape.lua", "/etc/x.lua", ".hidden.lua", "a//b.lua", "a/./b.lua",
    "x.txt", "a\\b.lua", "a\x00.lua", "", "index.lua/", "ä.lua", "a/" * 20 + "x.lua",
]  # fmt: skip


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_hostile_paths_are_refused_and_write_nothing(tmp_path, path):
    async with running(tmp_path / "sites", admin_token=TOKEN) as srv:
        before = sorted(p for p in tmp_path.rglob("*") if ".sngin-data" not in p.parts)
        # Sent as raw bytes, the path percent-encoded (all of it reaches the API's own check).
        answer = await srv.raw(
            f"PUT {FILE}?path={quote(path, safe='')} HTTP/1.1\r\nHost: admin\r\n"
            f"Authorization: Bearer {TOKEN}\r\nIf-None-Match: *\r\nContent-Length: 8\r\n"
            "Connection: close\r\n\r\nreturn 1".encode()
        )
        assert answer.startswith(b"HTTP/1.1 400"), answer
        after = sorted(p for p in tmp_path.rglob("*") if ".sngin-data" not in p.parts)
        assert after == before


@given(st.text(max_size=80))
def test_an_accepted_path_stays_inside_its_tenant(text):
    try:
        path = file_path(text)
    except BadRequest:
        return
    root = Path("/srv/sites/code.test")
    assert (root / path).resolve().is_relative_to(root)
    assert ".." not in path.split("/")


async def test_a_symbolic_link_out_of_the_tenant_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.lua").write_text("return 'secret'")
    async with running(tmp_path / "sites", admin_token=TOKEN) as srv:
        tenant = tmp_path / "sites" / HOST
        tenant.mkdir()
        (tenant / "lib").symlink_to(outside)
        read = await srv.client.get(srv.url + FILE, params={"path": "lib/secret.lua"}, headers=AUTH)
        assert read.status_code == 400
        written = await put(srv, "lib/new.lua", "return 1", **{"If-None-Match": "*"})
        assert written.status_code == 400
        assert not (outside / "new.lua").exists()
        listed = (await srv.client.get(srv.url + f"/__sngin/code/{HOST}", headers=AUTH)).json()
        assert listed["files"] == []


@pytest.mark.parametrize(("mode", "read_status", "write_status"),
                         [("readonly", 200, 403), ("off", 404, 404)])  # fmt: skip
async def test_read_only_and_off(tmp_path, request, mode, read_status, write_status):
    async with code_server("folder", tmp_path, request, ui=mode) as srv:
        (tmp_path / HOST).mkdir()
        (tmp_path / HOST / "index.lua").write_text("return 'x'")
        read = await srv.client.get(srv.url + FILE, params={"path": "index.lua"}, headers=AUTH)
        assert read.status_code == read_status
        written = await put(srv, "index.lua", "return 'y'", **{"If-Match": sha("return 'x'")})
        assert written.status_code == write_status
        assert (tmp_path / HOST / "index.lua").read_text() == "return 'x'"


async def test_the_code_api_needs_the_admin_token_and_bounds_a_file(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        for method, path in (("GET", "/__sngin/code"), ("GET", f"/__sngin/code/{HOST}"),
                             ("PUT", FILE), ("DELETE", FILE)):  # fmt: skip
            answer = await srv.client.request(method, srv.url + path, params={"path": "a.lua"})
            assert answer.status_code == 401
        # Refused on its declared length, before a byte of it is read.
        answer = await srv.raw(
            f"PUT {FILE}?path=big.lua HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}"
            f"\r\nIf-None-Match: *\r\nContent-Length: {1024 * 1024 + 1}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 413")
        assert not (tmp_path / HOST / "big.lua").exists()


async def test_check_compiles_in_a_worker_and_marks_the_error_line(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        check = srv.url + f"/__sngin/code/{HOST}/check"
        good = await srv.client.post(
            check, params={"path": "index.lua"}, content=b"return 'fine'", headers=AUTH
        )
        assert good.json() == {"path": "index.lua", "ok": True, "errors": []}
        broken = b"local a = 1\nlocal b = = 2\nreturn a\n"
        bad = await srv.client.post(
            check, params={"path": "lib/m.lua"}, content=broken, headers=AUTH
        )
        (error,) = bad.json()["errors"]
        assert bad.json()["ok"] is False
        assert error["line"] == 2
        assert error["message"] == "unexpected symbol near '='"
        # Lua 5.1's escapes pass (the same pre-pass as serving), and nothing ran.
        escaped = await srv.client.post(
            check,
            params={"path": "index.lua"},
            content=b"error('ran') return '\\%d'",
            headers=AUTH,
        )
        assert escaped.json()["ok"] is True
        # Checked in a worker: the pool counted it, the server process compiled nothing.
        assert srv.deps.pool.statistics().tenants[HOST].requests == 3


@pytest.mark.parametrize("kind", ["folder", "s3-versioned", "s3"])
async def test_history_lists_earlier_versions_and_restores_one(kind, tmp_path, request):
    store = "folder" if kind == "folder" else "s3"
    if kind == "s3-versioned":
        bucket = request.getfixturevalue("bucket")
        bucket.client.put_bucket_versioning(
            Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"}
        )
    async with code_server(store, tmp_path, request) as srv:
        etag = None
        for n in (1, 2, 3):
            condition = {"If-Match": etag} if etag else {"If-None-Match": "*"}
            etag = (await put(srv, "h/index.lua", f"return 'v{n}'", **condition)).json()["etag"]
        history = srv.url + f"/__sngin/code/{HOST}/history"
        listed = await srv.client.get(history, params={"path": "h/index.lua"}, headers=AUTH)
        versions = listed.json()["versions"]
        if kind == "s3":  # a bucket without versioning keeps none
            assert versions == []
            return
        assert [v["etag"] for v in versions] == [sha("return 'v2'"), sha("return 'v1'")]
        oldest = versions[-1]["id"]
        file_url = srv.url + f"/__sngin/code/{HOST}/file"
        read = await srv.client.get(
            file_url, params={"path": "h/index.lua", "version": oldest}, headers=AUTH
        )
        assert read.text == "return 'v1'"
        assert read.headers["ETag"] == '"' + sha("return 'v1'") + '"'
        unknown = await srv.client.get(
            file_url, params={"path": "h/index.lua", "version": "nope"}, headers=AUTH
        )
        assert unknown.status_code == 404
        assert "version 'nope'" in unknown.json()["error"]
        restore = srv.url + f"/__sngin/code/{HOST}/restore"
        params = {"path": "h/index.lua", "version": oldest}
        stale = await srv.client.post(
            restore, params=params, headers=AUTH | {"If-Match": sha("return 'v2'")}
        )
        assert stale.status_code == 412
        restored = await srv.client.post(restore, params=params, headers=AUTH | {"If-Match": etag})
        assert restored.json()["etag"] == sha("return 'v1'")
        assert (await srv.get("/h", host=HOST)).text == "v1"
        missing = await srv.client.post(
            restore, params={"path": "h/index.lua", "version": "0" * 20 + "-" + "0" * 16},
            headers=AUTH | {"If-Match": sha("return 'v1'")},
        )  # fmt: skip
        assert missing.status_code == 404


async def test_the_folder_store_keeps_the_last_ten_versions(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        etag = None
        for n in range(13):
            condition = {"If-Match": etag} if etag else {"If-None-Match": "*"}
            etag = (await put(srv, "index.lua", f"return {n}", **condition)).json()["etag"]
        listed = await srv.client.get(
            srv.url + f"/__sngin/code/{HOST}/history", params={"path": "index.lua"}, headers=AUTH
        )
        assert [v["etag"] for v in listed.json()["versions"]] == [
            sha(f"return {n}") for n in range(11, 1, -1)
        ]


async def test_a_rename_is_one_conditional_move_that_purges_both_paths(kind, tmp_path, request):
    rename = f"/__sngin/code/{HOST}/rename"
    async with code_server(kind, tmp_path, request) as srv:
        await put(srv, "old/index.lua", "return 'moved'", **{"If-None-Match": "*"})
        await put(srv, "taken/index.lua", "return 'taken'", **{"If-None-Match": "*"})
        assert (await srv.get("/old", host=HOST)).text == "moved"
        etag = sha("return 'moved'")
        move = {"path": "old/index.lua", "to": "new/index.lua"}
        unconditional = await srv.client.post(srv.url + rename, params=move, headers=AUTH)
        stale = await srv.client.post(srv.url + rename, params=move,
                                      headers=AUTH | {"If-Match": '"0123"'})  # fmt: skip
        onto = {"path": "old/index.lua", "to": "taken/index.lua"}
        taken = await srv.client.post(srv.url + rename, params=onto,
                                      headers=AUTH | {"If-Match": etag})  # fmt: skip
        moved = await srv.client.post(srv.url + rename, params=move,
                                      headers=AUTH | {"If-Match": etag})  # fmt: skip
        assert unconditional.status_code == 428
        assert stale.status_code == 412
        assert taken.status_code == 412  # the destination exists: nothing moved
        assert moved.status_code == 200, moved.text
        assert moved.json()["renamed"] is True
        assert (await srv.get("/new", host=HOST)).text == "moved"
        assert (await srv.get("/old", host=HOST)).status_code == 404  # purged, both paths
        assert (await srv.get("/taken", host=HOST)).text == "taken"
        if kind == "folder":
            assert not (srv.deps.files.root / HOST / "old").exists()  # no empty folder left
    async with code_server(kind, tmp_path, request, ui="readonly") as srv:
        refused = await srv.client.post(srv.url + rename, params=move,
                                        headers=AUTH | {"If-Match": etag})  # fmt: skip
    assert refused.status_code == 403


async def test_the_check_validates_a_sngin_json_against_its_schema(tmp_path):
    check = f"/__sngin/code/{HOST}/check"
    params = {"path": "_sngin.json"}
    async with running(tmp_path, admin_token=TOKEN, tenant_configs=True) as srv:
        bad = await srv.client.post(srv.url + check, params=params, headers=AUTH,
                                    content=b'{"limits": {"timeout_ms": "soon"}}')  # fmt: skip
        broken = await srv.client.post(srv.url + check, params=params, headers=AUTH,
                                       content=b'{"enabled": tru')  # fmt: skip
        valid = b'{"env": {"A": "b"}, "cron": [{"schedule": "61 * * * *", "path": "/x"}]}'
        good = await srv.client.post(srv.url + check, params=params, headers=AUTH, content=valid)
        other = await srv.client.post(srv.url + check, params={"path": "notes.txt"},
                                      headers=AUTH, content=b"x")  # fmt: skip
    assert bad.json() == {"path": "_sngin.json", "ok": False, "errors": [
        {"line": None, "message": "limits.timeout_ms: expected int, got str"}]}  # fmt: skip
    assert broken.json()["ok"] is False
    assert broken.json()["errors"][0]["message"].startswith("invalid JSON")
    assert good.json()["ok"] is True
    assert good.json()["warnings"][0].startswith('cron[0]: "61 * * * *": not a cron schedule')
    assert other.status_code == 400


async def test_the_sites_list_summary_gives_each_sites_last_ten_minutes_in_one_call(tmp_path):
    (tmp_path / "busy.test").mkdir()
    (tmp_path / "busy.test" / "index.lua").write_text("return 'ok'")
    (tmp_path / "busy.test" / "fail").mkdir()
    (tmp_path / "busy.test" / "fail" / "index.lua").write_text("error('boom')")
    (tmp_path / "idle.test").mkdir()
    (tmp_path / "idle.test" / "index.lua").write_text("return 'ok'")
    async with running(tmp_path, admin_token=TOKEN) as srv:
        for path in ("/", "/", "/", "/fail"):
            await srv.get(path, host="busy.test")
        srv.deps.pool.quarantine.impose("idle.test", 600)
        listed = await srv.client.get(srv.url + "/__sngin/code", params={"summary": "1"},
                                      headers=AUTH)  # fmt: skip
        plain = await srv.client.get(srv.url + "/__sngin/code", headers=AUTH)
    sites = {site["host"]: site for site in listed.json()["sites"]}
    assert sites["busy.test"]["requests"] == 4
    assert sites["busy.test"]["errors"] == 1
    assert sites["busy.test"]["rps"] == round(4 / 600, 3)
    assert sites["busy.test"]["quarantined_s"] is None
    assert sites["idle.test"]["requests"] == 0
    assert 590 < sites["idle.test"]["quarantined_s"] <= 600
    assert "sites" not in plain.json()
