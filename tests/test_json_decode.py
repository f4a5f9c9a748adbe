"""json.decode: the host parses (Python's json) and the prelude reads the result into tables from
MessagePack (05-json: read_packed). Checked against what the conversion must give, for any JSON
value: strings as Lua strings, integers past 2^53 rounded as doubles, null as json.null, the
512-level limit where it was, and the values MessagePack cannot carry (integers past 64 bits,
lone surrogates) taken by the slow path with the same result as before."""

from __future__ import annotations

import json
import math
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lupa.luajit21 import LuaError

from sandbox.runtime import TenantRuntime

NULL = object()


@pytest.fixture(scope="module")
def runtime():
    rt = TenantRuntime("json.test")
    yield rt
    rt.close()


def lua_decode(rt: TenantRuntime, text: bytes):
    decode = rt._host_libraries[b"json"][b"decode"]
    null = rt._host_libraries[b"json"][b"null"]
    result = decode(text)
    assert not isinstance(result, tuple), result  # one value, or nil and a message
    rawequal = rt._lua.eval("rawequal")
    return from_lua(result, lambda v: rawequal(v, null))


def from_lua(value, is_null):
    """Lua tables as Python: 1..n as a list (an empty table as []), else a dict."""
    if value is None:
        return None
    if is_null(value):
        return NULL
    if hasattr(value, "items") and not isinstance(value, (bytes, str)):
        items = dict(value.items())
        if all(isinstance(k, int) for k in items) and sorted(items) == list(
            range(1, len(items) + 1)
        ):
            return [from_lua(items[k], is_null) for k in sorted(items)]
        return {k: from_lua(v, is_null) for k, v in items.items()}
    return value


def expected(value):
    """What a script must see for a decoded JSON value."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**53) <= value <= 2**53 else float(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [expected(v) for v in value]
    if isinstance(value, dict):
        if not value:
            return []  # an empty table either way
        return {k.encode(): expected(v) for k, v in value.items()}
    return value


def same(got, want) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same(got[k], want[k]) for k in want)
        )
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        return not isinstance(got, bool) and got == want
    return got is want if want is NULL else got == want


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_any_json_value_decodes_to_what_the_script_must_see(runtime, value):
    text = json.dumps(value).encode()  # NaN and Infinity as Python's json writes and reads them
    got = lua_decode(runtime, text)
    want = expected(json.loads(text))
    assert same(got, want), (text, got, want)


def test_values_messagepack_cannot_carry_take_the_slow_path_alike(runtime):
    big = 2**70
    got = lua_decode(runtime, f'{{"big": [{big}, -{big}, 1]}}'.encode())
    assert got == {b"big": [float(big), -float(big), 1]}
    decode = runtime._host_libraries[b"json"][b"decode"]
    with pytest.raises(LuaError, match=r"json\.decode: internal error"):
        decode(b'["\\ud800"]')  # a lone surrogate cannot be a Lua (UTF-8) string: as before


def test_numbers_at_the_edges_of_each_messagepack_width(runtime):
    edges = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53, 2**53 + 1,
             2**63 - 1, 2**63, 2**64 - 1, -1, -32, -33, -128, -129, -32768, -32769, -(2**31),
             -(2**31) - 1, -(2**63), 0.5, -0.0, 5e-324, 2.2250738585072014e-308,
             1.7976931348623157e308]  # fmt: skip
    got = lua_decode(runtime, json.dumps(edges).encode())
    assert same(got, expected(edges))


def test_an_empty_container_may_sit_513_levels_deep_but_no_value_may(runtime):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # as a worker runs (sandbox/worker.py)
    try:
        empty = lua_decode(runtime, b"[" * 513 + b"]" * 513)
        decode = runtime._host_libraries[b"json"][b"decode"]
        refused, message = decode(b'{"a":' * 512 + b"[1]" + b"}" * 512)
    finally:
        sys.setrecursionlimit(limit)
    depth = 0
    while empty:
        empty, depth = empty[0], depth + 1
    assert depth == 512
    assert refused is None
    assert message == b"invalid JSON: nested more than 512 levels"
