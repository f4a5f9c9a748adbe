"""Property-based: every platform call, fed generated hostile arguments from a real worker,
is at most the calling script's error; the server keeps answering another tenant."""

from __future__ import annotations

import os

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sngin.calls.outbound import open_outbound
from sngin.tenants.egress import EgressPolicy
from tests.support import running


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def lua_values(url: str) -> st.SearchStrategy[str]:
    """Lua expressions for values of every type a script could pass."""
    scalars = st.one_of(
        st.binary(max_size=40).map(lua_string),
        st.sampled_from([url, url + "?q=1", "http://a..com/", "http://xn--zz.com/", "x:y"]).map(
            lambda s: lua_string(s.encode())
        ),
        st.integers(min_value=0, max_value=200_000).map(lambda n: f"string.rep('a', {n})"),
        st.sampled_from(["0/0", "math.huge", "-math.huge", "0", "-1", "1e308", "2^53 + 1"]),
        st.integers(min_value=-(2**60), max_value=2**60).map(str),
        st.sampled_from(["nil", "true", "false", "function() end", "coroutine.create(print)"]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda items: "{" + ", ".join(items) + "}"),
            st.dictionaries(inner, inner, max_size=4).map(
                lambda d: "{" + ", ".join(f"[{k}] = {v}" for k, v in d.items() if k != "nil") + "}"
            ),
        ),
        max_leaves=8,
    )


def lua_urls(url: str) -> st.SearchStrategy[str]:
    """URLs a client could hand a script: odd host names (empty or long labels, bad A-labels,
    non-ASCII), odd ports, huge lengths, any bytes, or a value of another type."""
    label = st.text(alphabet="ax-.\u00e9\u0000", max_size=70)
    hosts = st.one_of(label, st.sampled_from(["a..com", "xn--zz.com", "[::1", "1.2.3.4:99999"]))
    return st.one_of(
        hosts.map(lambda h: lua_string(f"http://{h}/".encode())),
        st.sampled_from([url, url + "?q=1", "gopher://x/", "http://x/%zz", ""]).map(
            lambda u: lua_string(u.encode())
        ),
        st.integers(min_value=0, max_value=100_000).map(lambda n: f"'http://x/' .. ('a'):rep({n})"),
        lua_values(url),
    )


CALLS = """
local U, A, B, C, D = {u}, {a}, {b}, {c}, {d}
local function try(f, ...) pcall(f, ...) end
try(http.request, U)
try(http.request, {{url = U, method = B, headers = C, body = D, data = B, params = C,
                    auth = D, timeout = B}})
try(http.request, {{url = U, method = A, headers = {{[B] = C}}, timeout = D}})
try(require, A)
try(require, U)
try(print, A, B, C)
try(log, D)
try(json.encode, A)
try(json.decode, B)
try(base64.encode, C)
try(base64.decode, D)
try(crypto.sha256, A)
try(crypto.hmac, A, B, C)
try(crypto.random, D)
try(http.qsencode, A)
try(http.qsparse, B)
return "survived"
"""


async def test_hostile_arguments_to_every_platform_call(tmp_path, upstream):
    folder = tmp_path / "fuzz.test"
    folder.mkdir(parents=True)
    target = folder / "index.lua"
    target.write_text("return 'not yet'")
    async with (
        open_outbound(EgressPolicy.parse(["127.0.0.1"])) as outbound,
        running(tmp_path, outbound=outbound, timeout_ms=3000) as srv,
    ):
        token = trio.lowlevel.current_trio_token()
        values = lua_values(upstream.url("/plain"))

        @settings(
            max_examples=100,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(lua_urls(upstream.url("/plain")), values, values, values, values)
        def one_example(u: str, a: str, b: str, c: str, d: str) -> None:
            source = CALLS.format(u=u, a=a, b=b, c=c, d=d)
            # A new file each time (rename): the folder store sees a new inode.
            staged = folder / "next.lua"
            staged.write_text(source)
            os.replace(staged, target)
            response = trio.from_thread.run(srv.get, "/", "fuzz.test", trio_token=token)
            # Every call is pcall'ed: the script survives them all; a 500 can only be the
            # script's own Lua error (building a table with a NaN key), never the server's.
            if response.status_code == 500:
                assert response.text.startswith("fuzz.test:"), response.text
            else:
                assert (response.status_code, response.text) == (200, "survived")
            other = trio.from_thread.run(srv.get, "/", "b.test", trio_token=token)
            assert (other.status_code, other.text) == (200, "root of b")

        await trio.to_thread.run_sync(one_example)
