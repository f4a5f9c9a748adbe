"""require: platform names, the tenant's own modules, and modules by GitHub URL from a local
stand-in for the raw host (relative requires, module(), Lua 5.1 escapes, cycles, failures)."""

from __future__ import annotations

import hashlib
import json
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler

import pytest
import trio

from sngin.code.cache import CodeCache
from sngin.code.github import GitHubTokens, open_github_store
from sngin.config import CacheSettings
from tests.httpserver import LoopbackServer
from tests.support import TOKEN, running

REPO = "u/r/main/lib"
MODULES = {
    f"{REPO}/top.lua": "local helper = require('util.helper')\n"
    "return {go = function() return helper.twice(21) end}",
    f"{REPO}/util/helper.lua": "local M = {}\nfunction M.twice(x) return 2 * x end\nreturn M",
    f"{REPO}/old.lua": "module('old', package.seeall)\ncounter = 0\n"
    "function bump() counter = counter + 1 return counter end",
    f"{REPO}/escape.lua": 'return {strip = function(s) return (s:gsub("^\\&+", "")) end}',
    f"{REPO}/a.lua": "require('b') return {}",
    f"{REPO}/b.lua": "require('a') return {}",
    f"{REPO}/bad.lua": "error('module exploded')",
    f"{REPO}/globals.lua": "shared = 'from module'\nfunction get() return shared end",
    # a three-level tree whose modules require each other by their names from the tree's root
    "u/r/main/azure.lua": "local t = require('azure.table') return {go = t.go}",
    "u/r/main/azure/table.lua": "local util = require('azure.util')\n"
    "return {go = function() return util.sign('x') end}",
    "u/r/main/azure/util.lua": "local deep = require('azure.deep.base')\n"
    "return {sign = function(s) return deep.tag .. s end}",
    "u/r/main/azure/deep/base.lua": "return {tag = 'signed:'}",
    # a library that extends `string`, and one that relies on the extension
    "u/r/main/strext.lua": "function string.split(s, sep)\n  local out = {}\n"
    "  for part in s:gmatch('[^' .. sep .. ']+') do out[#out + 1] = part end\n"
    "  return out\nend\nreturn true",
    "u/r/main/uses_split.lua": "local split = string.split\n"
    "return {count = function(s) return #split(s, ',') end}",
    # the default module repository's stand-in
    # name/init.lua in a tree, and a first line a shell would run
    "u/r/main/lib2/top.lua": "return require('sub').v",
    "u/r/main/lib2/sub/init.lua": "return {v = 'tree init'}",
    "u/r/main/bang.lua": "#!/usr/bin/env luajit\nreturn {ok = 'bang'}",
    # a library that names its siblings from `...` (its dotted name below its package's folder)
    "u/r/main/vendor/pkg2/main.lua": "local here = (...):match('^(.-)[^%.]+$')\n"
    "return {v = require(here .. 'helper').v, name = ...}",
    "u/r/main/vendor/pkg2/helper.lua": "return {v = 'sibling'}",
    "u/r/main/vendor/pkg3/init.lua": "return {name = ..., v = require((...):gsub('init$', '') "
    ".. 'part').v}",
    "u/r/main/vendor/pkg3/part.lua": "return {v = 'part'}",
    "webscriptio/lib/master/underscore.lua": "return {origin = 'default repository'}",
    "webscriptio/lib/master/lustache.lua": "local scanner = require('lustache.scanner')\n"
    "return {render = function(t) return scanner.scan(t) end}",
    "webscriptio/lib/master/lustache/scanner.lua": "return {scan = function(t)"
    " return '<' .. t .. '>' end}",
}
GH = "github.com/u/r/blob/main/lib"
SCRIPTS = {
    "a.test/gh": f"return tostring(require('{GH}/top.lua').go())",
    "a.test/https": f"return tostring(require('https://{GH}/top.lua').go())",
    "a.test/old": f"local old = require('{GH}/old.lua') "
    "return tostring(old.bump()) .. tostring(old.bump()) .. tostring(old.counter)",
    "a.test/escape": f"return require('{GH}/escape.lua').strip('&&x')",
    "a.test/circular": f"local ok, err = pcall(require, '{GH}/a.lua') return err",
    "a.test/bad": f"local ok, err = pcall(require, '{GH}/bad.lua') return err",
    "a.test/globals": f"local m = require('{GH}/globals.lua') "
    "return m.get() .. '/' .. tostring(shared)",
    "a.test/tenant": "return require('lib.util').hello()",
    "a.test/platform": "return tostring(require('json') == json and require('http') == http)",
    "a.test/twice": f"local a = require('{GH}/top.lua') local b = require('{GH}/top.lua') "
    "return tostring(a == b)",
    "b.test/steal": "return require('lib.util').hello()",
    "a.test/webscript": "return tostring(require('u/r/lib/top').go())"
    " .. '/' .. tostring(require('u/r/lib/top.lua').go())",
    "a.test/tree": "return require('github.com/u/r/blob/main/azure.lua').go()",
    "a.test/split": "require('u/r/strext') local n = require('u/r/uses_split').count('a,b,c')\n"
    "return tostring(n) .. '/' .. #('x,y'):split(',') .. '/' .. #string.split('p;q', ';')",
    "a.test/nosplit": "return tostring(string.split) .. '/' .. tostring(('').split)",
    "a.test/bare": "return require('underscore').origin .. '/' .. require('lustache').render('t')",
    "b.test/bare": "return require('underscore').origin",
    "a.test/position": "local ok, err = pcall(function()\n"
    "  local m = require('../x') return m\nend)\nreturn err",
    "a.test/dots": "local m = require('github.com/u/r/blob/main/vendor/pkg2/main.lua')\n"
    "local p = require('u/r/vendor/pkg3/init')\n"
    "return m.name .. '/' .. m.v .. '/' .. p.name .. '/' .. p.v",
    "a.test/initmod": "return require('mypkg').name .. '/' .. require('mypkg.inner').name",
    "c.test/shadow": "local j = require('json') return tostring(j.mine) .. '/' .. "
    "tostring(json.mine) .. '/' .. tostring(type(json.encode)) .. '/' .. "
    "tostring(require('json') == j and package.loaded.json == j)",
    "b.test/noshadow": "return tostring(require('json') == json and package.loaded.json == json)",
    "a.test/treeinit": "return require('github.com/u/r/blob/main/lib2/top.lua') .. '/' .. "
    "require('github.com/u/r/blob/main/bang.lua').ok",
    "a.test/missing": "local ok, err = pcall(function()\n"
    "  local m = require('u/r/none') return m\nend)\nreturn err",
}


# Private repositories: served only with their token (else 404, as GitHub answers).
PRIVATE = {
    "private/repo/main/secret.lua": ("T-tenant", "return {where = 'private repo'}"),
    "corp/tools/main/helper.lua": ("T-operator", "return {where = 'corp repo'}"),
}


class RawHost:
    """Serves MODULES with ETags and 304s, counting GETs per path; PRIVATE ones only with their
    token. Records the Authorization header of every request."""

    def __init__(self) -> None:
        self.gets: dict[str, int] = {}
        self.auth: list[tuple[str, str | None]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                host.gets[path] = host.gets.get(path, 0) + 1
                given = self.headers.get("Authorization")
                host.auth.append((path, given))
                body = MODULES.get(path)
                if path in PRIVATE:
                    token, source = PRIVATE[path]
                    body = source if given == f"token {token}" else None
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = body.encode()
                etag = '"' + hashlib.md5(data).hexdigest() + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = LoopbackServer(Handler)
        self.url = f"http://127.0.0.1:{self._http.port}"

    def close(self) -> None:
        self._http.stop()


@pytest.fixture
def raw_host():
    host = RawHost()
    yield host
    host.close()


@asynccontextmanager
async def serving(tmp_path, raw_host, tokens=None, **options):
    tokens = tokens or GitHubTokens()
    async with open_github_store(raw_host.url, tokens) as store, trio.open_nursery() as nursery:
        github = CodeCache(store, CacheSettings(), nursery)
        # write_sites() inside running() adds the shared demo sites; ours go in after it.
        async with running(tmp_path, github=github, github_tokens=tokens, **options) as srv:
            for key, source in SCRIPTS.items():
                folder = tmp_path / key
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "index.lua").write_text(source)
            (tmp_path / "a.test" / "lib").mkdir(exist_ok=True)
            (tmp_path / "a.test" / "lib" / "util.lua").write_text(
                "return {hello = function() return 'tenant util' end}"
            )
            (tmp_path / "a.test" / "underscore.lua").write_text("return {origin = 'a.test'}")
            (tmp_path / "a.test" / "mypkg").mkdir(exist_ok=True)
            (tmp_path / "a.test" / "mypkg" / "init.lua").write_text("return {name = 'init'}")
            (tmp_path / "a.test" / "mypkg" / "inner.lua").write_text("return {name = 'inner'}")
            (tmp_path / "c.test" / "json.lua").write_text("return {mine = 'tenant json'}")
            yield srv, github
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/gh", "42"),
        ("/https", "42"),
        ("/old", "122"),
        ("/escape", "x"),
        ("/tenant", "tenant util"),
        ("/platform", "true"),
        ("/initmod", "init/inner"),  # name/init.lua, as package.path's ?/init.lua
        ("/treeinit", "tree init/bang"),
        ("/dots", "pkg2.main/sibling/pkg3.init/part"),
        ("/twice", "true"),
        # Lua 5.1: a module's globals are the requiring request's globals
        ("/globals", "from module/from module"),
    ],
)
async def test_modules(tmp_path, raw_host, path, expected):
    async with serving(tmp_path, raw_host) as (srv, _):
        response = await srv.get(path)
    assert (response.status_code, response.text) == (200, expected)


@pytest.mark.parametrize(
    ("path", "host", "expected"),
    [
        # webscript's user/repo/path form, with or without .lua: master, else main
        ("/webscript", "a.test", "42/42"),
        # nested requires resolve from the root of the tree, at any depth
        ("/tree", "a.test", "signed:x"),
        # a library that extends string is seen by the script, other modules and s:method()
        ("/split", "a.test", "3/2/2"),
        # ... and is gone in the next request
        ("/nosplit", "a.test", "nil/nil"),
        # a tenant's own module wins over the default repository's; nested from there too
        ("/bare", "a.test", "a.test/<t>"),
        ("/bare", "b.test", "default repository"),
        # without a json.lua of its own, require('json') is the platform's; with one, the
        # tenant's file wins for require (the global stays the platform's)
        ("/noshadow", "b.test", "true"),
        ("/shadow", "c.test", "tenant json/nil/function/true"),
    ],
)
async def test_webscript_require_forms(tmp_path, raw_host, path, host, expected):
    async with serving(tmp_path, raw_host) as (srv, _):
        if path == "/nosplit":
            assert (await srv.get("/split")).text == "3/2/2"
        for _ in range(2):  # the second time from the runtime's compiled modules
            response = await srv.get(path, host=host)
            assert (response.status_code, response.text) == (200, expected)
    if path == "/webscript":  # master's 404 is remembered like any negative answer
        assert raw_host.gets["u/r/master/lib/top.lua"] == 1


async def test_a_refused_or_missing_require_names_the_requiring_line(tmp_path, raw_host):
    async with serving(tmp_path, raw_host) as (srv, _):
        refused = (await srv.get("/position")).text
        missing = (await srv.get("/missing")).text
    assert refused == (
        "a.test/position:2: require: '../x' is not a module name or a GitHub path (user/repo/path)"
    )
    assert missing == (
        "a.test/missing:2: require: module not found (looked for github.com/u/r/master/none.lua"
        " or github.com/u/r/main/none.lua)"
    )


async def test_without_a_default_repository_bare_names_are_the_tenants_only(tmp_path, raw_host):
    async with serving(tmp_path, raw_host, settings_changes={"default_modules": None}) as (srv, _):
        text = (await srv.get("/bare", host="b.test")).text
    assert (
        "require: module not found (looked for b.test/underscore.lua or "
        "b.test/underscore/init.lua)" in text
    )
    assert "webscriptio" not in text


async def test_private_modules_with_the_tenants_own_token_stay_the_tenants(tmp_path, raw_host):
    """a.test's token (a secret in its _sngin.json) opens its private repository for a.test
    only: b.test, asking for the same module after a.test fetched it, gets nothing from the
    cache, and its own fetch carries no token. The token goes to the raw host only."""
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"a.test": {"GH": "T-tenant"}}))
    (tmp_path / "a.test").mkdir(exist_ok=True)
    (tmp_path / "a.test" / "_sngin.json").write_text('{"github_token": "${secret:GH}"}')
    script = "local ok, m = pcall(require, 'private/repo/secret') return ok and m.where or m"
    options = {"tenant_configs": True, "settings_changes": {"secrets_file": secrets}}
    async with serving(tmp_path, raw_host, **options) as (srv, _):
        for host in ("a.test", "b.test"):
            (tmp_path / host / "priv").mkdir(parents=True, exist_ok=True)
            (tmp_path / host / "priv" / "index.lua").write_text(script)
        mine = (await srv.get("/priv")).text
        theirs = (await srv.get("/priv", host="b.test")).text
        again = (await srv.get("/priv")).text
    assert mine == again == "private repo"
    assert "require: module not found" in theirs
    tokens = {auth for path, auth in raw_host.auth if path.startswith("private/")}
    assert tokens == {"token T-tenant", None}  # a.test's fetch had it; b.test's did not
    assert ("private/repo/master/secret.lua", "token T-tenant") in raw_host.auth


async def test_the_operators_token_opens_only_the_listed_owners(tmp_path, raw_host):
    tokens = GitHubTokens("T-operator", frozenset({"corp"}))
    scripts = {
        "corp": "return require('corp/tools/helper').where",
        "public": f"return tostring(require('{GH}/top.lua').go())",
    }
    async with serving(tmp_path, raw_host, tokens=tokens) as (srv, _):
        for name, source in scripts.items():
            (tmp_path / "b.test" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "b.test" / name / "index.lua").write_text(source)
        corp = (await srv.get("/corp", host="b.test")).text
        public = (await srv.get("/public", host="b.test")).text
    assert (corp, public) == ("corp repo", "42")
    sent = {path.split("/")[0]: auth for path, auth in raw_host.auth}
    assert sent["corp"] == "token T-operator"
    assert sent["u"] is None  # never to another owner's repository


async def test_circular_requires_are_a_clear_error(tmp_path, raw_host):
    async with serving(tmp_path, raw_host) as (srv, _):
        text = (await srv.get("/circular")).text
    assert "circular require of 'a'" in text


async def test_a_failing_module_is_an_ordinary_error(tmp_path, raw_host):
    async with serving(tmp_path, raw_host) as (srv, _):
        text = (await srv.get("/bad")).text
    assert text == "github.com/u/r/main/lib/bad.lua:1: module exploded"


async def test_a_tenant_cannot_load_another_tenants_modules(tmp_path, raw_host):
    async with serving(tmp_path, raw_host) as (srv, _):
        response = await srv.get("/steal", host="b.test")
    assert response.status_code == 500
    assert "require: module not found (looked for b.test/lib/util.lua" in response.text


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "a..b", "file:///etc/passwd", "a/b", ".a", "a.",
     "github.com/u/r/blob/main/../x.lua", "github.com/u/r/blob/main/x.txt",
     "http://github.com/u/r/blob/main/x.lua", "github.com/u/r/tree/main/x.lua"],
)  # fmt: skip
async def test_bad_module_names_are_refused(tmp_path, raw_host, name):
    async with serving(tmp_path, raw_host) as (srv, _):
        (tmp_path / "a.test" / "name").mkdir(exist_ok=True)
        (tmp_path / "a.test" / "name" / "index.lua").write_text(
            f"local ok, err = pcall(require, {name!r}) return tostring(ok) .. ' ' .. err"
        )
        text = (await srv.get("/name")).text
    assert text.startswith("false ")
    assert "require: " in text
    assert raw_host.gets == {}


async def test_module_fetches_are_cached_and_purgeable(tmp_path, raw_host):
    async with serving(tmp_path, raw_host, admin_token=TOKEN) as (srv, _):
        for _ in range(3):
            assert (await srv.get("/gh")).text == "42"
        assert raw_host.gets[f"{REPO}/top.lua"] == 1
        assert raw_host.gets[f"{REPO}/util/helper.lua"] == 1
        response = await srv.client.post(
            srv.url + "/__sngin/purge",
            json={"url_prefix": "github.com/u/r/"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 200
        assert response.json()["purged"] == 2
        assert (await srv.get("/gh")).text == "42"
        assert raw_host.gets[f"{REPO}/top.lua"] == 2


async def test_module_fetches_do_not_spend_the_subrequest_budget(tmp_path, raw_host):
    async with serving(tmp_path, raw_host, max_subrequests=0) as (srv, _):
        assert (await srv.get("/gh")).text == "42"


async def test_module_fetches_have_a_budget_of_their_own(tmp_path, raw_host):
    async with serving(tmp_path, raw_host, max_modules=2) as (srv, _):
        for name in ("m1", "m2", "m3"):
            (tmp_path / "a.test" / "lib" / f"{name}.lua").write_text(f"return '{name}'")
        script = tmp_path / "a.test" / "many"
        script.mkdir()
        (script / "index.lua").write_text(
            "local a, b = require('lib.m1'), require('lib.m2') "
            "local ok, err = pcall(require, 'lib.m3') return a .. b .. ' ' .. tostring(err)"
        )
        response = await srv.get("/many")
    assert response.status_code == 200
    assert response.text.startswith("m1m2 ")
    assert "more than 2 module fetches in one request" in response.text


async def test_one_tenants_many_module_urls_do_not_flush_another_tenants_modules(raw_host):
    """The module cache is shared by every tenant; each tenant's fetches count against its
    own share of it (entries and bytes, misses included)."""
    import math

    from sandbox.protocol import Call, ModuleCall
    from sngin.calls.request_calls import PlatformServices, RequestCalls

    settings = CacheSettings(max_entries=40, tenant_share=0.25)
    async with open_github_store(raw_host.url) as store, trio.open_nursery() as nursery:
        cache = CodeCache(store, settings, nursery)

        def calls(tenant: str) -> RequestCalls:
            return RequestCalls(PlatformServices(github=cache), tenant=tenant,
                                deadline=math.inf, request_id="r", max_subrequests=0,
                                max_modules=1000)  # fmt: skip

        kept = Call(id=1, call_id=1, request=ModuleCall(search=f"github:{REPO}/top.lua"))
        assert (await calls("b.test")(kept)).module is not None
        flood = calls("a.test")
        for index in range(60):
            junk = ModuleCall(search=f"github:u/r/main/junk{index}.lua")
            missing = Call(id=1, call_id=1, request=junk)
            assert (await flood(missing)).error is not None
        assert (await calls("b.test")(kept)).module is not None
        nursery.cancel_scope.cancel()
    assert raw_host.gets[f"{REPO}/top.lua"] == 1  # still cached: no second fetch


async def test_a_default_repository_that_cannot_be_reached_is_named_with_the_way_out(tmp_path):
    closed = RawHost()
    closed.close()  # nothing listens there now
    async with serving(tmp_path, closed) as (srv, _):
        text = (await srv.get("/bare", host="b.test")).text
    assert "require: module host unavailable: ConnectError while looking for" in text
    assert "github.com/webscriptio/lib/master/underscore.lua" in text
    assert "(not found in b.test/underscore.lua or b.test/underscore/init.lua)" in text
    assert "default module repository (webscriptio/lib/master: SNGIN_DEFAULT_MODULES" in text
