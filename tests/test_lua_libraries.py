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
