"""Every Lua example in docs/lua-api.md runs (http.request examples get a canned answer)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sandbox.protocol import Job, Request
from sandbox.runtime import TenantRuntime

DOC = Path(__file__).resolve().parent.parent / "docs" / "lua-api.md"
EXAMPLES = re.findall(r"```lua\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def runtime():
    rt = TenantRuntime("docs.test")
    yield rt
    rt.close()


def test_the_page_has_examples():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_example_runs(runtime, number):
    def answer(call):
        if call[b"op"] == b"http":
            headers = runtime.table_from({b"content-type": b"text/plain"})
            return runtime.table_from(
                {b"statuscode": 200, b"content": b"canned", b"headers": headers}
            )
        return None  # require of a module: refused in-process

    job = Job(
        tenant="docs.test",
        key=f"docs.test/example{number}",
        version="1",
        request=Request(method="GET", path="/", headers=[(b"user-agent", b"docs")]),
        source=EXAMPLES[number].encode(),
    )
    reply = runtime.run(job, answer)
    assert reply.error is None, f"example {number}: {reply.message}"
