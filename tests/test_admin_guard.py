"""The one admin guard, tried as its attackers would on every admin route the app has (read from
its URL map, so a new route is covered the day it lands): no credentials, a tenant's token on
another tenant, a cookie session without its CSRF token, a cookie session on a tenant's Host;
the UI and its login only on the admin origin; hosts of the admin origin never tenants."""

from __future__ import annotations

import json

import pytest

from sngin.admin.guard import Access
from sngin.admin.routes import create_admin
from sngin.admin.session import COOKIE, new_session, sign
from sngin.config import S3Settings, Settings
from sngin.names import host_of, names_admin_origin
from tests.support import AUTH, TOKEN, running

VICTIM, ATTACKER = "victim.test", "attacker.test"
SAFE = {"GET", "HEAD", "OPTIONS"}
FILLERS = {"host": VICTIM, "path": "x", "name": "app.js", "token_id": "abc", "bundle_id": "b1"}


def routes(deps) -> list[tuple[str, str, Access]]:
    """(method, URL path, access) for every route of the admin app, placeholders filled."""
    admin = create_admin(deps)
    guard = admin.extensions["sngin.guard"]
    table = []
    for rule in admin.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", FILLERS[name]).replace(f"<path:{name}>", FILLERS[name])
        if rule.endpoint == "logs":
            path += f"?host={VICTIM}"
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            table.append((method, path, guard.access_of(rule.endpoint)))
    return table


def operator_cookie(host: str | None = None) -> str:
    return sign(new_session(host), TOKEN)


async def test_every_admin_route_refuses_its_attackers(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        made = await srv.client.post(srv.url + "/__sngin/tokens", json={"host": ATTACKER},
                                     headers=AUTH)  # fmt: skip
        attacker = {"Authorization": f"Bearer {made.json()['token']}"}
        table = routes(srv.deps)
        assert len(table) >= 30
        kinds = {access for _, _, access in table}
        assert kinds == {Access.PUBLIC, Access.UI, Access.OPERATOR, Access.TENANT}
        checked = 0
        for method, path, access in table:
            url = srv.url + path

            async def call(headers=None, cookies=None, method=method, url=url):
                srv.client.cookies.clear()
                sent = dict(headers or {})
                if cookies:
                    sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
                return await srv.client.request(method, url, headers=sent, content=b"{}")

            where = f"{method} {path}"
            if access is Access.UI:
                # Not on a tenant's Host, whatever it carries.
                tenant_host = await call({"Host": VICTIM}, {COOKIE: operator_cookie()})
                assert tenant_host.status_code == 404, where
                continue
            if access is Access.PUBLIC:
                continue
            checked += 1
            assert (await call()).status_code == 401, where
            other = await call(attacker)
            if access is Access.OPERATOR:
                assert other.status_code == 401, (where, other.text)
            elif VICTIM in path:
                assert other.status_code == 403, (where, other.text)
            else:  # a listing: the caller's own tenants only
                assert other.status_code == 200, (where, other.text)
                assert VICTIM not in other.text, where
            # A valid operator session, but on a tenant's Host: the cookie is ignored.
            on_tenant = await call({"Host": VICTIM}, {COOKIE: operator_cookie()})
            assert on_tenant.status_code == 401, where
            if method not in SAFE:
                no_csrf = await call({}, {COOKIE: operator_cookie()})
                assert no_csrf.status_code == 403, where
                assert no_csrf.json() == {"error": "missing or wrong CSRF token"}, where
        assert checked >= 25


def test_the_admin_origins_names():
    settings = Settings(admin_host="admin.example.com")
    for host in ["127.0.0.1", "::1", "localhost", "admin.example.com", "10.0.0.1"]:
        assert names_admin_origin(host, settings.admin_host), host
    for host in ["a.test", "hello.localhost", "admin.example.com.evil", "example.com"]:
        assert not names_admin_origin(host, settings.admin_host), host
    assert host_of("[::1]:8080") == "::1"
    assert host_of("LocalHost:8080") == "localhost"
    assert host_of("admin.example.com.") == "admin.example.com"


async def test_the_admin_origins_hosts_are_never_tenants(tmp_path):
    (tmp_path / "localhost").mkdir()
    (tmp_path / "localhost" / "index.lua").write_text("return 'tenant code ran'")
    changes = {"admin_host": "admin.example.com"}
    async with running(tmp_path, admin_token=TOKEN, settings_changes=changes) as srv:
        for host in ["localhost", "localhost:8080", "admin.example.com", "127.0.0.1", "[::1]:80"]:
            answer = await srv.get("/", host=host)
            assert answer.status_code == 404, host
            assert "tenant code ran" not in answer.text
        tokens = srv.url + "/__sngin/tokens"
        for host in ["localhost", "admin.example.com"]:
            refused = await srv.client.post(tokens, json={"host": host}, headers=AUTH)
            assert refused.status_code == 400
            assert refused.json()["error"] == f"{host} is the admin origin, not a site"
            code = await srv.client.get(srv.url + f"/__sngin/code/{host}", headers=AUTH)
            assert code.status_code == 400
        # The UI answers on the admin host name, as on an IP literal.
        page = await srv.client.get(srv.url + "/__sngin/ui/", headers={"Host": "admin.example.com"})
        assert page.status_code == 200


async def test_the_admin_listener_is_the_admin_origin_whatever_the_host(tmp_path):
    from sngin.config import Bind

    changes = {"admin_bind": Bind(host="127.0.0.1", port=0)}
    async with running(tmp_path, admin_token=TOKEN, settings_changes=changes) as srv:
        admin_url = srv.binds[1]
        page = await srv.client.get(admin_url + "/__sngin/ui/", headers={"Host": VICTIM})
        assert page.status_code == 200
        srv.client.cookies.set(COOKIE, operator_cookie())
        stats = await srv.client.get(admin_url + "/__sngin/stats", headers={"Host": VICTIM})
        assert stats.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": "http://attacker.test"}, 403),
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({}, 200),
    ],
)
async def test_login_refuses_cross_site_and_non_json_requests(tmp_path, headers, status):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        answer = await srv.client.post(
            srv.url + "/__sngin/ui/login", content=json.dumps({"token": TOKEN}),
            headers={"Content-Type": "application/json"} | headers,
        )  # fmt: skip
        assert answer.status_code == status, answer.text
        assert ("set-cookie" in answer.headers) == (status == 200)


async def test_login_answers_a_fresh_session_whatever_cookie_came_with_it(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        planted = operator_cookie()
        srv.client.cookies.set(COOKIE, planted)
        answer = await srv.client.post(srv.url + "/__sngin/ui/login", json={"token": TOKEN})
        fresh = answer.cookies[COOKIE]
        assert fresh != planted
        assert answer.json()["csrf"] not in planted


@pytest.mark.parametrize("depth", [100, 100_000])
async def test_deeply_nested_json_is_a_400_on_every_json_route(tmp_path, depth):
    nested = b"[" * depth + b"]" * depth
    wrapped = b'{"token": ' + nested + b"}"
    changes = {"events_token": "events-token-0123456789", "s3": S3Settings(bucket="b", prefix="")}
    async with running(tmp_path, admin_token=TOKEN, settings_changes=changes) as srv:
        for path, headers, body in [
            ("/__sngin/ui/login", {"Content-Type": "application/json"}, wrapped),
            ("/__sngin/tokens", AUTH, nested),
            ("/__sngin/purge", AUTH, nested),
            (f"/__sngin/storage/{VICTIM}/import", AUTH, nested),
            ("/__sngin/storage-import", AUTH, nested),
            ("/__sngin/events/s3", {"Authorization": "Bearer events-token-0123456789"}, nested),
        ]:
            answer = await srv.client.post(srv.url + path, content=body, headers=headers)
            assert answer.status_code == 400, (path, answer.text)
            if depth > 100 or "events" not in path:  # (events: a list is no notification)
                assert "nested" in answer.json()["error"], (path, answer.text)
        assert (await srv.get("/")).status_code == 200  # the server is fine
