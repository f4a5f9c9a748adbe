"""The web UI's session, without a browser: login with the admin token or a tenant's token,
the cookie's flags, CSRF on every change made with the cookie, forged and expired cookies
refused, logout, the page's Content-Security-Policy, and SNGIN_UI=off."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from sngin.admin.session import COOKIE, Session, sign
from tests.support import AUTH, TOKEN, running

HOST = "ses.test"


async def login(srv, token: str = TOKEN, **headers):
    return await srv.client.post(
        srv.url + "/__sngin/ui/login", json={"token": token}, headers=headers
    )


async def test_login_sets_a_strict_http_only_cookie_and_changes_need_the_csrf_token(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        answer = await login(srv)
        assert answer.status_code == 200
        cookie = answer.headers["set-cookie"]
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/__sngin/"):
            assert flag in cookie
        assert "Secure" not in cookie  # plain HTTP here
        csrf = answer.json()["csrf"]
        # The cookie alone reads...
        assert (await srv.client.get(srv.url + "/__sngin/stats")).status_code == 200
        session = await srv.client.get(srv.url + "/__sngin/ui/session")
        assert session.json()["csrf"] == csrf
        assert session.json()["public"] is None  # the page's own address is the public one
        # ...but changes nothing without the session's CSRF token.
        url = srv.url + f"/__sngin/code/{HOST}/file?path=index.lua"
        body, create = b"return 1", {"If-None-Match": "*"}
        refused = await srv.client.put(url, content=body, headers=create)
        assert (refused.status_code, refused.json()["error"]) == (
            403,
            "missing or wrong CSRF token",
        )
        wrong = await srv.client.put(url, content=body, headers=create | {"X-CSRF-Token": "x"})
        assert wrong.status_code == 403
        purge = await srv.client.post(srv.url + "/__sngin/purge", json={"host": HOST})
        assert purge.status_code == 403
        made = await srv.client.put(url, content=body, headers=create | {"X-CSRF-Token": csrf})
        assert made.status_code == 201
        # Logout needs the session's CSRF token too; then the cookie is gone and the API closed.
        forced = await srv.client.post(srv.url + "/__sngin/ui/logout")
        assert forced.status_code == 403
        assert (await srv.client.get(srv.url + "/__sngin/stats")).status_code == 200
        out = await srv.client.post(srv.url + "/__sngin/ui/logout", headers={"X-CSRF-Token": csrf})
        assert "Max-Age=0" in out.headers["set-cookie"] or "expires=" in out.headers["set-cookie"]
        assert (await srv.client.get(srv.url + "/__sngin/stats")).status_code == 401


async def test_behind_tls_the_cookie_is_secure(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        answer = await login(srv, **{"X-Forwarded-Proto": "https"})
        assert "Secure" in answer.headers["set-cookie"]


async def test_a_tenant_session_is_that_tenant_s_only(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        made = await srv.client.post(srv.url + "/__sngin/tokens", json={"host": HOST},
                                     headers=AUTH)  # fmt: skip
        answer = await login(srv, made.json()["token"])
        assert answer.json()["host"] == HOST
        assert (await srv.client.get(srv.url + "/__sngin/code")).json() == {"tenants": []}
        assert (await srv.client.get(srv.url + "/__sngin/code/a.test")).status_code == 403
        assert (await srv.client.get(srv.url + "/__sngin/stats")).status_code == 401
        assert (await login(srv, "sngt_" + "x" * 40)).status_code == 401
        assert (await login(srv, "not-the-token-at-all")).status_code == 401
        # Revoking the token ends the sessions made with it.
        assert (await srv.client.get(srv.url + f"/__sngin/code/{HOST}")).status_code == 200
        revoked = await srv.client.delete(
            srv.url + f"/__sngin/tokens/{made.json()['id']}", headers=AUTH
        )
        assert revoked.status_code == 200
        assert (await srv.client.get(srv.url + f"/__sngin/code/{HOST}")).status_code == 401
        session = await srv.client.get(srv.url + "/__sngin/ui/session")
        assert session.json() == {"logged_in": False}


async def test_forged_altered_and_expired_cookies_are_refused(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        stats = srv.url + "/__sngin/stats"
        forged = sign(Session(host=None, expires=time.time() + 60, csrf="c"), "another-token")
        expired = sign(Session(host=None, expires=time.time() - 1, csrf="c"), TOKEN)
        good = sign(Session(host=None, expires=time.time() + 60, csrf="c"), TOKEN)
        payload, _, mac = good.partition(".")
        altered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + mac
        # Signed as before itsdangerous signed the cookie: refused (the upgrade ends sessions).
        key = hashlib.sha256(b"sngin ui session\0" + TOKEN.encode()).digest()
        before = b'{"host":null,"expires":%d,"csrf":"c"}' % (time.time() + 60)
        old = base64.urlsafe_b64encode(before)
        old_payload = old.decode().rstrip("=")
        older = old_payload + "." + hmac.new(key, old_payload.encode(), hashlib.sha256).hexdigest()
        for cookie in (forged, expired, altered, older, "garbage", "x" * 5000):
            srv.client.cookies.set(COOKIE, cookie, path="/__sngin/")
            assert (await srv.client.get(stats)).status_code == 401, cookie[:40]
            srv.client.cookies.clear()
        srv.client.cookies.set(COOKIE, good, path="/__sngin/")
        assert (await srv.client.get(stats)).status_code == 200


async def test_the_page_has_a_strict_policy_and_its_own_nonce(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        first = await srv.client.get(srv.url + "/__sngin/ui/")
        second = await srv.client.get(srv.url + "/__sngin/ui/")
        policy = first.headers["content-security-policy"]
        assert "script-src 'self';" in policy
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        nonce = policy.split("'nonce-")[1].split("'")[0]
        assert f'content="{nonce}"' in first.text
        assert nonce not in second.headers["content-security-policy"]
        assert "<script>" not in first.text  # no inline script
        script = await srv.client.get(srv.url + "/__sngin/ui/assets/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        missing = await srv.client.get(srv.url + "/__sngin/ui/assets/../admin.py")
        assert missing.status_code == 404


async def test_the_ui_can_be_turned_off(tmp_path):
    async with running(tmp_path, admin_token=TOKEN, settings_changes={"ui": "off"}) as srv:
        assert (await srv.client.get(srv.url + "/__sngin/ui/")).status_code == 404
        assert (await login(srv)).status_code == 404


async def test_a_site_s_last_minutes_are_kept_in_ten_second_points(tmp_path):
    from sngin.observe.series import BUCKETS, TenantSeries

    series = TenantSeries()
    series.record(HOST, 1_000_000.0 - 600, 200, 1.0, 0.0)  # ten minutes ago: its slot reused
    for wall_ms, status in ((3.0, 200), (5.0, 200), (700.0, 500)):
        series.record(HOST, 1_000_005.0, status, wall_ms, 1.5)
    points = series.series(HOST, 1_000_009.0)
    assert len(points) == BUCKETS
    latest = points[-1]
    assert latest["time"] == 1_000_000
    assert (latest["rps"], latest["errors"], latest["cpu_ms"]) == (0.3, 1, 4.5)
    assert (latest["p50_ms"], latest["p99_ms"]) == (8.0, 1024.0)
    assert all(p["rps"] == 0 for p in points[:-1])
    # Through the API, for the site's own session too.
    async with running(tmp_path, admin_token=TOKEN) as srv:
        (tmp_path / HOST).mkdir()
        (tmp_path / HOST / "index.lua").write_text("return 'x'")
        for _ in range(3):
            await srv.get("/", host=HOST)
        answer = await srv.client.get(srv.url + f"/__sngin/code/{HOST}/series", headers=AUTH)
        assert sum(p["rps"] for p in answer.json()["points"]) * 10 == 3
