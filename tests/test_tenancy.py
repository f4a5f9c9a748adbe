"""Host -> tenant and path -> script key rules."""

from __future__ import annotations

import pytest

from sngin.errors import BadRequest
from sngin.names import script_key, script_path, tenant_of


@pytest.mark.parametrize(
    ("raw", "tenant"),
    [
        ("hello.localhost", "hello.localhost"),
        ("Hello.LocalHost:8080", "hello.localhost"),
        ("a.test.", "a.test"),
        ("a.test.:80", "a.test"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
        ("a-b.c1.test", "a-b.c1.test"),
    ],
)
def test_valid_hosts(raw, tenant):
    assert tenant_of(raw) == tenant


@pytest.mark.parametrize(
    "raw",
    [
        "", " ", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:80", "bücher.example", "a/b",
        "a\\b", "a..b", "..", "a b", "a\x00b", "-a.test", "a-.test", "a_b.test", "a.test..",
        "a.test:port", "a." + "b" * 64 + ".test", ".".join(["a"] * 200), "a.test:123456", "1",
    ],
)  # fmt: skip
def test_invalid_hosts(raw):
    with pytest.raises(BadRequest):
        tenant_of(raw)


@pytest.mark.parametrize(
    ("path", "folder"),
    [("/", ""), ("", ""), ("/a/b", "a/b"), ("/a/b/", "a/b"), ("//a///b//", "a/b"), ("/./a/.", "a")],
)
def test_path_normalisation(path, folder):
    assert script_path(path) == folder


@pytest.mark.parametrize(
    "path", ["/../x", "/a/../../x", "/a/..", "/a\\b", "/a\x00b", "/a\nb", "/" + "a" * 2048]
)
def test_invalid_paths(path):
    with pytest.raises(BadRequest):
        script_path(path)


def test_script_key():
    assert script_key("a.test", "") == "a.test"
    assert script_key("a.test", "x/y") == "a.test/x/y"


def test_purge_covers_scripts_and_files_at_segment_boundaries():
    from sngin.names import covering

    keys = ["a.test", "a.test/lib", "a.test/lib/x", "a.test/libx", "a.test//lib/util.lua",
            "a.test//_sngin.json", "a.test//libx.lua", "b.test/lib"]  # fmt: skip
    assert [k for k in keys if covering("a.test", "lib/util.lua", recursive=False)(k)] == [
        "a.test//lib/util.lua"
    ]
    assert [k for k in keys if covering("a.test", "_sngin.json", recursive=False)(k)] == [
        "a.test//_sngin.json"
    ]
    assert [k for k in keys if covering("a.test", "lib", recursive=True)(k)] == [
        "a.test/lib", "a.test/lib/x", "a.test//lib/util.lua"
    ]  # fmt: skip
    assert [k for k in keys if covering("a.test", "", recursive=True)(k)] == keys[:-1]


async def test_a_requests_call_state_is_made_at_its_first_call_and_only_once():
    """Most scripts make no platform call: the pipeline makes the calls' state (budgets,
    storage key space) only when the worker sends a first one."""
    from sandbox.protocol import Call, CallResult, ModuleCall
    from sngin.edge.pipeline import CallsOnDemand

    made = []

    class Calls:
        async def __call__(self, call: Call) -> CallResult:
            return CallResult(id=call.id, call_id=call.call_id)

    def make() -> Calls:
        made.append(1)
        return Calls()

    calls = CallsOnDemand(make)  # type: ignore[arg-type]
    assert (calls.made, made) == (None, [])
    for call_id in (1, 2):
        answer = await calls(Call(id=7, call_id=call_id, request=ModuleCall(search="tenant:x")))
        assert answer.call_id == call_id
    assert made == [1]
    assert calls.made is not None
