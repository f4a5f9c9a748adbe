"""Every Lua example in docs/lua-api.md runs: http.request examples get a canned answer, email
and alert calls succeed, and `require` gets a small canned module (named after what was asked)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sandbox.protocol import Job, Request
from sandbox.runtime import TenantRuntime

DOC = Path(__file__).resolve().parent.parent / "docs" / "lua-api.md"
EXAMPLES = re.findall(r"```lua\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


# What a documented `require` gets: a module like webscript's small libraries.
MODULE = b"""
local M = {}
function M.render(template, view) return (template:gsub("{{(%w+)}}", view)) end
function M.hello() return "hello from a module" end
function string.split(s, sep)
  local out = {}
  for part in s:gmatch("[^" .. sep .. "]+") do out[#out + 1] = part end
  return out
end
return M
"""


@pytest.fixture(scope="module")
def runtime():
    rt = TenantRuntime("docs.test")
    yield rt
    rt.close()


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_example_runs(runtime, number):
    stored: dict[bytes, bytes] = {}

    def answer(call):
        if call[b"op"] == b"http":
            headers = runtime.table_from({b"content-type": b"text/plain"})
            return runtime.table_from(
                {b"statuscode": 200, b"content": b"canned", b"headers": headers}
            )
        if call[b"op"] in (b"email", b"alert"):
            return runtime.table_from({b"ok": True})
        if call[b"op"] == b"storage":  # a fresh store per example; leases always free
            kind, key, value = call[b"kind"], call[b"key"], call[b"value"]
            if kind in (b"set", b"cache_set"):
                stored[key] = value
            elif kind in (b"delete", b"cache_delete"):
                stored.pop(key, None)
            elif kind in (b"lease_acquire", b"lease_release"):
                return runtime.table_from({b"ok": True, b"value": b"1"})
            return runtime.table_from({b"ok": True, b"value": stored.get(key)})
        if call[b"op"] == b"module":
            search = call[b"name"].decode()
            if "|platform:" in search:  # as the server answers when the tenant has no such file
                return runtime.table_from({b"ok": True})
            location = "github:docs/" + search.split("|")[0].split(":", 1)[1]
            return runtime.table_from(
                {
                    b"source": MODULE,
                    b"version": b"1",
                    b"chunkname": location.encode(),
                    b"location": location.encode(),
                }
            )
        return None

    job = Job(
        tenant="docs.test",
        key=f"docs.test/example{number}",
        version="1",
        request=Request(method="GET", path="/", headers=[(b"user-agent", b"docs")]),
        source=EXAMPLES[number].encode(),
    )
    reply = runtime.run(job, answer)
    assert reply.error is None, f"example {number}: {reply.message}"
