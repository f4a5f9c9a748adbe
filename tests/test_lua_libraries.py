"""What pure-Lua libraries need to run as under plain LuaJIT (issue 31): a `#!` first line,
`name/init.lua`, the tenant's file before a platform library of the same name, and inert
`package`, `io` and `debug` stand-ins."""

from __future__ import annotations

from sandbox.runtime import TenantRuntime
from tests.test_sandbox import ok, run


def test_a_first_line_starting_with_a_hash_is_skipped_and_line_numbers_hold():
    rt = TenantRuntime("a.test")
    try:
        assert ok(rt, "#!/usr/bin/env luajit\nreturn 'ran'").body == b"ran"
        failed = run(rt, "#!/usr/bin/env luajit\n\nerror('boom')")
        assert failed.error is not None
        assert ":3: boom" in failed.message  # the file's own line 3
        assert ok(rt, "#").body == b""  # a file that is only the line
    finally:
        rt.close()


def test_package_io_and_debug_are_inert_stand_ins():
    lines: list[bytes] = []
    rt = TenantRuntime("a.test", log_sink=lambda request_id, line: lines.append(line))
    try:
        body = ok(
            rt,
            """
            local out = {}
            out[#out + 1] = package.config:sub(1, 1) .. tostring(#package.path > 0)
            out[#out + 1] = tostring(package.loaded.string == string
              and require('string') == string)
            out[#out + 1] = tostring(require('debug') == debug and package.loaded._G == _G)
            out[#out + 1] = tostring(package.loadlib) .. '/' .. tostring(package.loaders)
            io.write('one ', 2, '\\n')
            assert(io.stdout:write('three'):write('four') == io.stdout)
            io.stderr:write('five')
            out[#out + 1] = io.type(io.stdout) .. '/' .. tostring(io.type(42))
            local refused = {'open', 'popen', 'lines', 'read', 'input', 'output', 'tmpfile'}
            local wanted = 'io%.%w+ is not available in sngin '
              .. '%(scripts have no files; use storage%)'
            for _, name in ipairs(refused) do
              local ok, err = pcall(io[name], '/etc/passwd')
              out[#out + 1] = err:match(wanted) or err
            end
            out[#out + 1] = tostring(debug.getinfo) .. '/' .. tostring(debug.sethook)
            return table.concat(out, '\\n')
            """,
        ).body.decode()
    finally:
        rt.close()
    parts = body.split("\n")
    assert parts[0] == "/true"
    assert parts[1] == "true"
    assert parts[2] == "true"
    assert parts[3] == "nil/nil"
    assert parts[4] == "file/nil"
    assert parts[5:12] == [
        f"io.{name} is not available in sngin (scripts have no files; use storage)"
        for name in ("open", "popen", "lines", "read", "input", "output", "tmpfile")
    ]
    assert parts[12] == "nil/nil"
    assert lines == [b"one 2", b"three", b"four", b"five"]


def test_io_writes_never_reach_the_workers_frame_pipe_and_keep_prints_bounds(tmp_path):
    """Bytes that look like a frame header go to the log as a line, not to stdout; and
    io.write counts against the same line budget as print."""
    from sandbox.protocol import WireLimits

    lines: list[bytes] = []
    rt = TenantRuntime("a.test", log_sink=lambda request_id, line: lines.append(line))
    try:
        limits = WireLimits(max_log_lines=3)
        reply = ok(
            rt,
            "io.write('\\0\\0\\0\\5hello') for i = 1, 10 do io.write('x', i) end "
            "print('after') return 'fine'",
            limits=limits,
        )
    finally:
        rt.close()
    assert reply.body == b"fine"
    assert lines == [b"\0\0\0\x05hello", b"x1", b"x2"]
    assert reply.logs_dropped == 9


def test_require_consults_package_loaded_and_preload_first():
    rt = TenantRuntime("a.test")
    try:
        body = ok(
            rt,
            """
            package.preload['made.here'] = function(name) return {name = name} end
            local m = require('made.here')
            package.loaded['planted'] = 'from loaded'
            return m.name .. '/' .. tostring(package.loaded['made.here'] == m) .. '/'
              .. require('planted')
            """,
        ).body
        # Nothing planted outlives the request.
        again = ok(
            rt,
            "return tostring(package.loaded['planted']) .. '/' .. "
            "tostring(package.preload['made.here'])",
        ).body
    finally:
        rt.close()
    assert body == b"made.here/true/from loaded"
    assert again == b"nil/nil"


def test_traceback_names_the_tenants_chunks_only():
    rt = TenantRuntime("a.test")
    try:
        body = ok(
            rt,
            "local function inner() local t = debug.traceback('here') return t end\n"
            "local function outer() local t = inner() return t end\n"
            "local t = outer() return t",
        ).body.decode()
    finally:
        rt.close()
    assert body.startswith("here\nstack traceback:\n")
    assert "a.test/x:1:" in body
    assert "sngin" not in body.replace("a.test", "")
    for host_detail in ("/work/", ".py", "[C]", "=sngin"):
        assert host_detail not in body


# --- load, loadstring, setfenv, getfenv (item 4): as an attacker would try them ---------------


def lua(source: str) -> str:
    rt = TenantRuntime("a.test")
    try:
        return ok(rt, source).body.decode()
    finally:
        rt.close()


def test_load_and_loadstring_compile_text_into_the_scripts_own_globals():
    assert lua("x = 5 return tostring(loadstring('return x + 1')())") == "6"
    assert lua("return tostring(load('return y', 'tpl', 't', {y = 7})())") == "7"
    # a reader function, as serialisers and template engines use
    assert (
        lua(
            "local parts, i = {'return ', '4', '2'}, 0\n"
            "return tostring(load(function() i = i + 1 return parts[i] end)())"
        )
        == "42"
    )
    # a loaded chunk's globals are the script's: it cannot see more than the script
    assert lua("return tostring(load('return _G')() == _G)") == "true"
    reached = lua(
        "local names = {'python', 'collectgarbage', 'getregistry', 'newproxy', 'dofile',\n"
        "  'debug.getinfo', 'jit.util', 'jit.off', 'string.dump'}\n"
        "local seen = {}\n"
        "for _, name in ipairs(names) do\n"
        "  seen[#seen + 1] = tostring(load('return ' .. name)())\n"
        "end\n"
        "return table.concat(seen, ',')"
    )
    assert reached == ",".join(["nil"] * 9)
    # a syntax error is returned, as Lua does, with the chunk's name
    assert lua("return select(2, loadstring('return +', '=tpl'))").startswith("tpl:1:")


def test_bytecode_is_refused_by_string_by_reader_and_by_mode():
    refused = "load: only Lua text can be loaded in sngin (precompiled bytecode is refused)"
    for attempt in (
        "load(string.char(27) .. 'LJ\\2\\0')",
        "loadstring(string.char(27) .. 'LJ\\2\\0')",
        "load('return 1', 'x', 'b')",
        "load('return 1', 'x', 'bt')",
        "load((function() local n = 0 return function() n = n + 1 "
        "return ({string.char(27), 'LJ'})[n] end end)())",
    ):
        assert lua(f"return select(2, {attempt})") == refused, attempt


def test_setfenv_and_getfenv_work_on_the_sites_own_functions_and_level_one():
    assert lua("local function f() return z end setfenv(f, {z = 'zz'}) return f()") == "zz"
    assert lua("z = 'g' local function f() return z end return getfenv(f).z") == "g"
    assert lua("setfenv(1, {tostring = tostring, q = 3}) return tostring(q)") == "3"
    assert lua("return getfenv() == _G and 'same' or 'other'") == "same"
    # a loaded chunk is the site's own code too (etlua-style templates)
    assert lua("local f = loadstring('return v') setfenv(f, {v = 'set'}) return f()") == "set"


def test_setfenv_and_getfenv_refuse_platform_and_c_functions_levels_and_threads():
    source = """
    local out = {}
    local function try(f, ...)
      local ok, err = pcall(f, ...)
      out[#out + 1] = ok and 'ALLOWED' or err:gsub('^.-: ', '', 1)
    end
    try(setfenv, print, {})
    try(setfenv, require, {})
    try(setfenv, json.decode, {})
    try(getfenv, http.request)
    try(setfenv, string.format, {})
    try(getfenv, pcall)
    try(getfenv, 0)
    try(getfenv, 2)
    try(setfenv, 0, {})
    try(setfenv, 3, {})
    try(getfenv, coroutine.create(function() end))
    try(setfenv, 1, {})   -- through pcall: level 1 is pcall, a C function
    return table.concat(out, '\\n')
    """
    lines = lua(source).split("\n")
    assert "ALLOWED" not in lines
    assert lines.count("only functions of this site's own code can be used in sngin") == 8
    assert lines.count("only level 1 (the calling function) is available in sngin") == 4


def test_nothing_set_with_setfenv_outlives_the_request():
    rt = TenantRuntime("a.test")
    try:
        ok(rt, "setfenv(1, {}) return 'x'")
        ok(rt, "local upper = string.upper string.upper = nil setfenv(1, {}) return 'y'")
        assert ok(rt, "return tostring(getfenv() == _G) .. string.upper('ok')").body == b"trueOK"
    finally:
        rt.close()


def test_a_plant_in_package_loaded_never_reaches_another_tenant():
    a, b = TenantRuntime("a.test"), TenantRuntime("b.test")
    try:
        ok(a, "package.loaded.json = {planted = true} package.preload.x = print return ''")
        seen = ok(b, "return tostring(package.loaded.json) .. '/' .. tostring(package.preload.x)")
    finally:
        a.close()
        b.close()
    assert seen.body == b"nil/nil"


async def test_io_writes_leave_a_real_workers_frame_pipe_intact(tmp_path):
    """Through a real worker process: bytes shaped like a frame header, written with every io
    write, end up in the log; the worker's frames to the server stay whole."""
    from tests.support import running

    script = (
        "io.write(string.char(0, 0, 0, 5) .. 'hello')\n"
        "io.stdout:write(string.char(0, 0, 16, 0)):write('x')\n"
        "io.stderr:write(string.rep(string.char(255), 64))\n"
        "return 'intact'"
    )
    (tmp_path / "io.test").mkdir(parents=True)
    (tmp_path / "io.test" / "index.lua").write_text(script)
    async with running(tmp_path, workers=1) as srv:
        for _ in range(3):  # the same worker serves on
            response = await srv.get("/", host="io.test")
            assert response.status_code == 200
            assert response.text == "intact"
