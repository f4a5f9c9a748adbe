"""The script library: json, base64, crypto, utils, unsupported names, Lua 5.1 escapes."""

from __future__ import annotations

import base64
import hmac
import itertools
import json
import sys

import pytest

from sandbox.compat import rewrite_escapes
from sandbox.protocol import Job, Request
from sandbox.runtime import TenantRuntime
from tests.support import serving
from tests.upstream import VERIFY_KEY, Upstream

_versions = itertools.count()


@pytest.fixture(scope="module")
def runtime():
    rt = TenantRuntime("lib.test")
    yield rt
    rt.close()


def run(rt: TenantRuntime, source: str | bytes) -> bytes:
    text = source.encode() if isinstance(source, str) else source
    job = Job(tenant="lib.test", key="lib.test/x", version=str(next(_versions)),
              request=Request(method="GET", path="/"), source=text)  # fmt: skip
    reply = rt.run(job)
    assert reply.error is None, reply.message
    return reply.body


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b}" for b in data) + '"'


# --- crypto against published vectors ----------------------------------------------------------

MD5_RFC1321 = {
    b"": "d41d8cd98f00b204e9800998ecf8427e",
    b"a": "0cc175b9c0f1b6a831c399e269772661",
    b"abc": "900150983cd24fb0d6963f7d28e17f72",
    b"message digest": "f96b697d7cb7938d525a2f31aaf161d0",
    b"abcdefghijklmnopqrstuvwxyz": "c3fcd3d76192e4007dfb496cca67e13b",
}
SHA_FIPS180 = {  # the one-block message "abc"
    "sha1": "a9993e364706816aba3e25717850c26c9cd0d89d",
    "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "sha512": "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
}
HMAC_RFC4231 = [  # (key, data, HMAC-SHA-256)
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
]  # fmt: skip


@pytest.mark.parametrize(("message", "digest"), list(MD5_RFC1321.items()))
def test_md5(runtime, message, digest):
    assert run(runtime, f"return crypto.md5({lua_string(message)}).hex()") == digest.encode()


@pytest.mark.parametrize(("name", "digest"), list(SHA_FIPS180.items()))
def test_sha(runtime, name, digest):
    assert run(runtime, f"return crypto.{name}('abc').hex()") == digest.encode()
    raw = run(runtime, f"return crypto.{name}('abc').digest()")
    assert raw == bytes.fromhex(digest)


@pytest.mark.parametrize(("key", "data", "mac"), HMAC_RFC4231)
def test_hmac_sha256(runtime, key, data, mac):
    source = f"return crypto.hmac({lua_string(key)}, {lua_string(data)}, crypto.sha256).hex()"
    assert run(runtime, source) == mac.encode()


def test_hmac_with_other_hashes(runtime):
    body = run(
        runtime,
        """return json.encode({
        md5 = crypto.hmac('k', 'm', crypto.md5).hex(),
        sha1 = crypto.hmac('k', 'm', crypto.sha1).hex(),
        sha512 = #crypto.hmac('k', 'm', crypto.sha512).digest()})""",
    )
    expected = {name: hmac.new(b"k", b"m", name).hexdigest() for name in ("md5", "sha1")}
    assert json.loads(body) == {**expected, "sha512": 64}


def test_hmac_needs_a_platform_hash(runtime):
    body = run(runtime, "return select(2, pcall(crypto.hmac, 'k', 'm', function() end))")
    assert b"third argument must be crypto.md5" in body


def test_random_and_uuid(runtime):
    body = json.loads(
        run(
            runtime,
            """
        local a, b = crypto.random(32), crypto.random(32)
        return {len = #a, differ = a ~= b, uuid = crypto.uuid()}""",
        )
    )
    assert body["len"] == 32
    assert body["differ"] is True
    assert len(body["uuid"]) == 36
    assert body["uuid"][14] == "4"


# --- base64, json, utils -----------------------------------------------------------------------


def test_base64_is_binary_safe(runtime):
    data = bytes(range(256))
    assert run(runtime, f"return base64.encode({lua_string(data)})") == base64.b64encode(data)
    assert run(runtime, f"return base64.decode('{base64.b64encode(data).decode()}')") == data
    assert run(runtime, "return base64.decode('aGk')") == b"hi"  # missing padding
    assert run(runtime, "return tostring(select(2, base64.decode('!!!')))") == b"invalid base64"


def test_json_contract(runtime):
    body = json.loads(
        run(
            runtime,
            """return {
        empty = json.encode({}), array = json.encode({1, 2, 3}),
        null = json.encode({a = json.null}),
        alias = json.stringify({x = true}), parsed = json.parse('[1, "two", null]')[2],
        bad = select(2, json.decode('{')), cycle = select(2, pcall(function()
          local t = {} t.t = t return json.encode(t) end)),
    }""",
        )
    )
    assert body["empty"] == "{}"
    assert body["array"] == "[1,2,3]"
    assert body["null"] == '{"a":null}'
    assert body["alias"] == '{"x":true}'
    assert body["parsed"] == "two"
    assert body["bad"].startswith("invalid JSON")
    assert "contains itself" in body["cycle"]


def test_json_depth_limits(runtime):
    deep = "[" * 600 + "]" * 600
    body = json.loads(
        run(
            runtime,
            f"""
        local t = {{}} local cur = t
        for i = 1, 600 do cur.x = {{}} cur = cur.x end
        local ok, err = pcall(json.encode, t)
        local v, derr = json.decode('{deep}')
        return {{encode = err, decode = derr}}""",
        )
    )
    assert "512" in body["encode"]
    assert "512" in body["decode"]


def test_json_decode_accepts_values_512_levels_deep_and_refuses_513(runtime):
    script = """
        local ok_value = json.decode(string.rep("[", 512) .. "7" .. string.rep("]", 512))
        local inner = ok_value
        for i = 1, 511 do inner = inner[1] end
        local too_deep, err = json.decode(string.rep("[", 513) .. "7" .. string.rep("]", 513))
        return {inner = inner[1], refused = too_deep == nil, err = err}"""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # as a worker runs (sandbox/worker.py)
    try:
        body = json.loads(run(runtime, script))
    finally:
        sys.setrecursionlimit(limit)
    assert body["inner"] == 7
    assert body["refused"] is True
    assert "nested more than 512 levels" in body["err"]


def test_utils(runtime):
    body = json.loads(
        run(
            runtime,
            """return {
        trim = utils.trim('  a b \\t\\n'), split = utils.split('a,b,,c'),
        split_sep = utils.split('a::b', '::'), slug = utils.slugify('  Hello, Wörld! 2026 ')}""",
        )
    )
    assert body == {"trim": "a b", "split": ["a", "b", "", "c"], "split_sep": ["a", "b"],
                    "slug": "hello-w-rld-2026"}  # fmt: skip


def test_storage_without_a_server_is_a_clear_error(runtime):
    body = run(runtime, "return select(2, pcall(function() return storage.x end))")
    assert body.endswith(b"storage: not available in this context")
    body = run(runtime, "return select(2, pcall(function() storage.x = {} end))")
    assert b"use json.stringify for a table" in body


# --- Lua 5.1 source compatibility ----------------------------------------------------------------


def test_lua51_escapes_run_unmodified(runtime):
    assert run(runtime, 'return ("a&&b"):gsub("^\\&+", "") .. "\\q"') == b"a&&bq"
    assert run(runtime, 'return (("&&b"):gsub("^\\&+", ""))') == b"b"


def test_scripts_that_compile_as_they_are_skip_the_rewrite(runtime, monkeypatch):
    from sandbox import compat

    def refuse(source: bytes) -> bytes:
        raise AssertionError("rewrote a script LuaJIT accepts")

    monkeypatch.setattr(compat, "rewrite_escapes", refuse)
    assert run(runtime, 'return "tab\\there"') == b"tab\there"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (b'x = "\\&"', b'x = "&"'),
        (b"x = '\\d\\.'", b"x = 'd.'"),
        (b'x = "\\n\\t\\\\\\"\\065\\x41\\z \\u{48}"', b'x = "\\n\\t\\\\\\"\\065\\x41\\z \\u{48}"'),
        (b'x = [[\\q]] -- "\\q"\n', b'x = [[\\q]] -- "\\q"\n'),
        (b'--[==[ "\\q" ]==] y = "\\q"', b'--[==[ "\\q" ]==] y = "q"'),
        (b"x = [=[ ]] \\q ]=] .. '\\q'", b"x = [=[ ]] \\q ]=] .. 'q'"),
    ],
)
def test_escape_rewriting_respects_comments_and_long_strings(source, expected):
    assert rewrite_escapes(source) == expected


# --- a signed request end to end -----------------------------------------------------------------


async def test_script_signs_a_request_the_upstream_verifies(tmp_path):
    upstream = Upstream()
    key = base64.b64encode(VERIFY_KEY).decode()
    script = f"""
        local body = '{{"amount": 5}}'
        local signature = base64.encode(
          crypto.hmac(base64.decode('{key}'), 'POST' .. '/verify' .. body, crypto.sha256).digest())
        local r = http.request{{url = '{upstream.url("/verify")}', method = 'POST', body = body,
                               headers = {{['X-Signature'] = signature}}}}
        return r.statuscode, r.content
    """
    try:
        async with serving(tmp_path, {"a.test/sign": script}) as srv:
            response = await srv.get("/sign")
    finally:
        upstream.close()
    assert (response.status_code, response.text) == (200, "verified")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("email.send('x')", "email.send: expected a table of options"),
        ("email.send{from = 'a@b', to = 'c@d', text = 'x'}", "email.send: server is required"),
        ("email.send{server = 's', to = 'c@d', text = 'x'}", "email.send: from is required"),
        ("email.send{server = 's', from = 'a@b', to = {}, text = 'x'}", "email.send: to must be"),
        ("email.send{server = 's', from = 'a@b', to = 'c@d'}", "email.send: text or html"),
        ("email.send{server = 's', from = 'a@b', to = 'c@d', text = 'x', port = 0}",
         "email.send: port must be"),
        ("alert.email(42)", "alert.email: expected a string"),
    ],
)  # fmt: skip
def test_email_and_alert_arguments_are_checked_in_the_script(runtime, call, message):
    body = run(runtime, f"return select(2, pcall(function() {call} end))")
    assert message.encode() in body, body
