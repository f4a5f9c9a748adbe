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
