"""Pure-Lua libraries tenants vendor or require from GitHub run as under plain LuaJIT (issue 31).

Each library is Debian's packaged copy (/usr/share/lua/5.1, installed by .ci/run with `luajit`),
exercised as its README shows. The same code runs three ways and must give the same text:
under plain LuaJIT with the libraries on package.path; through a real sngin server with the
library files copied into the tenant's folder (vendored); and with the files served by a
loopback stand-in for the GitHub raw host, the script requiring the library by URL.
"""

from __future__ import annotations

import shutil
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import trio

from sngin.code.cache import CodeCache
from sngin.code.github import open_github_store
from sngin.config import CacheSettings
from tests.httpserver import LoopbackServer
from tests.support import running

LUA_LIB = Path("/usr/share/lua/5.1")
PACKAGES = (
    "luajit lua-penlight lua-dkjson lua-inspect lua-ansicolors lua-argparse lua-basexx "
    "lua-binaryheap lua-cliargs lua-fifo lua-markdown lua-mediator lua-messagepack lua-moses "
    "lua-say lua-uri lua-luassert lua-coxpcall"
)
GITHUB_TREE = "debian/lua/5.1"  # where the stand-in serves LUA_LIB: github.com/debian/lua/blob/5.1

# library -> (its files under LUA_LIB, code using it as its README shows, returning text)
LIBRARIES: dict[str, tuple[tuple[str, ...], str]] = {
    "inspect": (("inspect.lua",), "local inspect = require 'inspect'\n"
                "return inspect({1, 2, a = {b = 'c'}})"),
    "dkjson": (("dkjson.lua",), "local json = require 'dkjson'\n"
               "local t = json.decode('[1,{\"a\":null},\"x\"]')\n"
               "return json.encode({1, 2, 'three'}) .. tostring(t[2].a) .. t[3]"),
    "penlight": (("pl",), "local List = require 'pl.List'\nlocal l = List({3, 1, 2}) l:sort()\n"
                 "local stringx, tablex = require 'pl.stringx', require 'pl.tablex'\n"
                 "return tostring(l) .. '|' .. stringx.strip('  x  ') .. '|' .. "
                 "tablex.size({a = 1, b = 2})"),
    "pl.template": (("pl",), "local template = require 'pl.template'\n"
                    "return (template.substitute('$(x) and $(y)', {x = 1, y = 2}))"),
    "pl.pretty": (("pl",), "local pretty = require 'pl.pretty'\n"
                  "return pretty.write({1, 2, {3}}, '')"),
    "pl.class": (("pl",), "local class = require 'pl.class'\nlocal Animal = class()\n"
                 "function Animal:_init(name) self.name = name end\n"
                 "function Animal:speak() return self.name .. ' speaks' end\n"
                 "local Dog = class(Animal)\n"
                 "function Dog:speak() return self.name .. ' barks' end\n"
                 "return Dog('rex'):speak() .. '/' .. Animal('cat'):speak()"),
    "ansicolors": (("ansicolors.lua",), "local colors = require 'ansicolors'\n"
                   "return colors('%{red}hello%{reset}')"),
    "argparse": (("argparse.lua",), "local argparse = require 'argparse'\n"
                 "local p = argparse('script', 'A script.')\n"
                 "p:argument('input', 'Input file.')\n"
                 "p:option('-o --output', 'Output file.', 'a.out')\n"
                 "local args = p:parse({'foo.txt', '-o', 'bar'})\n"
                 "return args.input .. '>' .. args.output"),
    "basexx": (("basexx.lua",), "local basexx = require 'basexx'\n"
               "return basexx.to_base64('hello') .. '|' .. basexx.to_hex('hi') .. '|' .. "
               "basexx.from_base32(basexx.to_base32('ok'))"),
    "binaryheap": (("binaryheap.lua",), "local bh = require 'binaryheap'\n"
                   "local h = bh.minUnique()\n"
                   "h:insert(5, 'five') h:insert(1, 'one') h:insert(3, 'three')\n"
                   "local p, v = h:pop()\n"
                   "return tostring(p) .. '/' .. tostring(v) .. '/' .. #h.values"),
    "cliargs": (("cliargs.lua", "cliargs"), "local cli = require 'cliargs'\n"
                "cli:set_name('app') cli:argument('INPUT', 'the input')\n"
                "cli:option('-o, --output=FILE', 'output', 'out.txt')\n"
                "local args = cli:parse({'in.txt'})\nreturn args.INPUT .. '>' .. args.output"),
    "fifo": (("fifo.lua",), "local new_fifo = require 'fifo'\nlocal q = new_fifo()\n"
             "q:push(1) q:push(2) q:push(3)\nreturn tostring(q:pop()) .. '/' .. q:length()"),
    "markdown": (("markdown.lua",), "local md = require 'markdown'\n"
                 "return md('# Title\\n\\nSome *emphasis*.')"),
    "mediator": (("mediator.lua",), "local Mediator = require 'mediator'\n"
                 "local m, got = Mediator()\n"
                 "m:subscribe({'news'}, function(x) got = x end)\n"
                 "m:publish({'news'}, 'extra')\nreturn got"),
    "MessagePack": (("MessagePack.lua",), "local mp = require 'MessagePack'\n"
                    "local s = mp.pack({1, 2, 'x'})\nlocal t = mp.unpack(s)\n"
                    "return #s .. '/' .. t[3]"),
    "moses": (("moses.lua",), "local M = require 'moses'\n"
              "return table.concat(M.map({1, 2, 3}, function(v) return v * 2 end), ',') "
              ".. '/' .. M.sum({1, 2, 3})"),
    "say": (("say",), "local say = require 'say'\nsay:set('greet', 'Hello %s')\n"
            "return say('greet', {'you'})"),
    "uri": (("uri.lua", "uri"), "local URI = require 'uri'\n"
            "local u = URI:new('http://EXAMPLE.com/a/../b?x=1')\n"
            "return tostring(u) .. '|' .. u:host() .. '|' .. u:path()"),
    "luassert": (("luassert", "say"), "local assert = require 'luassert'\n"
                 "assert.are.same({1, {2}}, {1, {2}})\n"
                 "local ok = pcall(assert.are.equal, 1, 2)\nreturn tostring(ok)"),
    "coxpcall": (("coxpcall.lua",), "require 'coxpcall'\nlocal co = coroutine.wrap(function()\n"
                 "  local ok, v = copcall(function() coroutine.yield(1) return 5 end)\n"
                 "  return tostring(ok) .. v\nend)\nco()\nreturn co()"),
}  # fmt: skip

# Libraries that need what the sandbox must refuse, with the error sngin gives instead:
# luassert finds its callers' files with debug.getinfo, which would reach other functions'
# frames (only debug.traceback is offered).
REFUSED = {"luassert": "luassert/util.lua:295: attempt to call field 'getinfo' (a nil value)"}

# Under GitHub: the script's top-level `require 'x'` becomes the library's URL (x.lua, else
# x/init.lua); what the library requires inside resolves as Lua would (its tree's root).
BY_URL = f"""
local real_require = require
local function require(name)
  local path = 'github.com/{GITHUB_TREE.replace("/5.1", "/blob/5.1")}/' .. name:gsub('%.', '/')
  local ok, value = pcall(real_require, path .. '.lua')
  if ok then return value end
  return real_require(path .. '/init.lua')
end
"""


def need_packages() -> None:
    if shutil.which("luajit") is None or not (LUA_LIB / "pl").is_dir():
        pytest.fail(
            f"the Lua compatibility suite needs Debian's packages: apt-get install {PACKAGES}"
        )


def under_luajit(code: str) -> str:
    """The code's text under plain LuaJIT, the libraries on package.path (as LuaRocks lays
    them out); `arg` cleared, as a library loaded by a script (not run as a command) sees it."""
    setup = f"package.path = '{LUA_LIB}/?.lua;{LUA_LIB}/?/init.lua' arg = nil"
    run = "local f = assert(loadstring(io.read('*a'))) io.write((f()))"
    result = subprocess.run(["luajit", "-e", setup, "-e", run], input=code.encode(),
                            capture_output=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def copy_into(folder: Path, files: tuple[str, ...]) -> None:
    for name in files:
        source = LUA_LIB / name
        if source.is_dir():
            shutil.copytree(source, folder / name, dirs_exist_ok=True)
        else:
            shutil.copy(source, folder / name)


def site(name: str) -> str:
    return name.lower().replace(".", "-")


class DebianTree:
    """A stand-in for the GitHub raw host serving LUA_LIB as github.com/debian/lua/5.1."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                prefix = GITHUB_TREE + "/"
                target = LUA_LIB / path[len(prefix) :] if path.startswith(prefix) else None
                ok = target is not None and ".." not in path and target.is_file()
                data = target.read_bytes() if ok and target is not None else b""
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = LoopbackServer(Handler)
        self.url = f"http://127.0.0.1:{self._http.port}"

    def close(self) -> None:
        self._http.stop()


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    need_packages()
    return {name: under_luajit(code) for name, (_, code) in LIBRARIES.items()}


async def answers(srv) -> dict[str, str]:
    """Each library's site's answer: its text, or the status and the error."""
    got = {}
    for name in LIBRARIES:
        response = await srv.get("/", host=f"{site(name)}.test")
        ok = response.status_code == 200
        got[name] = response.text if ok else f"{response.status_code}: {response.text}"
    return got


def compare(got: dict[str, str], expected: dict[str, str]) -> None:
    for name, reason in REFUSED.items():
        assert reason in got.pop(name), name
    assert got == {name: text for name, text in expected.items() if name not in REFUSED}


async def test_libraries_vendored_into_the_site_run_as_under_luajit(tmp_path, expected):
    async with running(tmp_path) as srv:
        for name, (files, code) in LIBRARIES.items():
            folder = tmp_path / f"{site(name)}.test"
            folder.mkdir(parents=True, exist_ok=True)
            copy_into(folder, files)
            (folder / "index.lua").write_text(code)
        got = await answers(srv)
    compare(got, expected)


async def test_libraries_required_from_github_run_as_under_luajit(tmp_path, expected):
    tree = DebianTree()
    try:
        async with (
            open_github_store(tree.url) as store,
            trio.open_nursery() as nursery,
        ):
            github = CodeCache(store, CacheSettings(), nursery)
            async with running(tmp_path, github=github) as srv:
                for name, (_, code) in LIBRARIES.items():
                    folder = tmp_path / f"{site(name)}.test"
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / "index.lua").write_text(BY_URL + code)
                got = await answers(srv)
            nursery.cancel_scope.cancel()
    finally:
        tree.close()
    compare(got, expected)
