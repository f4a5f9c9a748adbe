"""Tokens scoped to one tenant: minted, listed and revoked by the operator, stored hashed; a
tenant's token reaches that tenant's code, log and storage and nothing else."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from tests.support import AUTH, TOKEN, running

HOST = "mine.test"


async def mint(srv, host: str = HOST) -> dict:
    made = await srv.client.post(srv.url + "/__sngin/tokens", json={"host": host}, headers=AUTH)
    assert made.status_code == 201, made.text
    return made.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_token_is_shown_once_and_stored_hashed(tmp_path, request, backend):
    changes = {}
    if backend == "redis":
        changes["redis_url"] = request.getfixturevalue("redis_url")
    async with running(tmp_path, admin_token=TOKEN, settings_changes=changes) as srv:
        made = await mint(srv)
        assert made["token"].startswith("sngt_")
        assert made["host"] == HOST
        listed = (await srv.client.get(srv.url + "/__sngin/tokens", headers=AUTH)).json()
        assert listed["tokens"] == [{"id": made["id"], "host": HOST, "created": made["created"]}]
        # Not a tenant's storage: never listed as one.
        tenants = (await srv.client.get(srv.url + "/__sngin/storage", headers=AUTH)).json()
        assert tenants["tenants"] == []
        if backend == "sqlite":
            database = tmp_path / ".sngin-data" / "storage.db"
            rows = sqlite3.connect(database).execute("SELECT key, value FROM storage").fetchall()
            assert [bytes(key) for key, _ in rows] == [
                hashlib.sha256(made["token"].encode()).hexdigest().encode()
            ]
            assert made["token"].encode() not in b"".join(bytes(value) for _, value in rows)


async def test_a_tenant_token_reaches_its_own_code_log_and_storage_only(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        token = (await mint(srv))["token"]
        mine = bearer(token)
        code = srv.url + f"/__sngin/code/{HOST}/file"
        created = await srv.client.put(
            code, params={"path": "index.lua"}, content=b"return 'mine'",
            headers=mine | {"If-None-Match": "*"},
        )  # fmt: skip
        assert created.status_code == 201
        assert (await srv.get("/", host=HOST)).text == "mine"
        listing = await srv.client.get(srv.url + "/__sngin/code", headers=mine)
        assert listing.json()["tenants"] == [HOST]  # a.test and the others are not shown
        stored = await srv.client.put(
            srv.url + f"/__sngin/storage/{HOST}/value", params={"key": "k"}, content=b"v",
            headers=mine,
        )  # fmt: skip
        assert stored.status_code == 200
        # Another tenant's code, storage or log; the operator's endpoints: refused.
        for method, path in [
            ("GET", "/__sngin/code/a.test"),
            ("GET", "/__sngin/code/a.test/file?path=index.lua"),
            ("PUT", "/__sngin/code/a.test/file?path=index.lua"),
            ("GET", "/__sngin/storage/a.test"),
            ("GET", "/__sngin/logs?host=a.test"),
        ]:
            answer = await srv.client.request(method, srv.url + path, headers=mine)
            assert answer.status_code == 403, (method, path, answer.text)
        for method, path in [
            ("GET", "/__sngin/stats"), ("GET", "/__sngin/tokens"), ("POST", "/__sngin/purge"),
            ("GET", "/__sngin/storage"), ("DELETE", f"/__sngin/storage/{HOST}"),
            ("POST", "/__sngin/tokens"),
        ]:  # fmt: skip
            answer = await srv.client.request(method, srv.url + path, headers=mine)
            assert answer.status_code == 401, (method, path)


async def test_a_revoked_or_made_up_token_is_refused(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        made = await mint(srv)
        listing = srv.url + "/__sngin/code"
        assert (await srv.client.get(listing, headers=bearer(made["token"]))).status_code == 200
        revoked = await srv.client.delete(srv.url + f"/__sngin/tokens/{made['id']}", headers=AUTH)
        assert revoked.json()["revoked"] is True
        assert (await srv.client.get(listing, headers=bearer(made["token"]))).status_code == 401
        for fake in ("sngt_" + "x" * 43, made["token"] + "x", "sngt_"):
            assert (await srv.client.get(listing, headers=bearer(fake))).status_code == 401
        again = await srv.client.delete(srv.url + f"/__sngin/tokens/{made['id']}", headers=AUTH)
        assert again.status_code == 404
        bad = await srv.client.post(srv.url + "/__sngin/tokens", json={"host": "../x"},
                                    headers=AUTH)  # fmt: skip
        assert bad.status_code == 400
