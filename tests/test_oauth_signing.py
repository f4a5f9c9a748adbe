"""OAuth 1.0a signing in the worker: RFC 5849's examples, the URL exactly as httpx sends it, a
provider's check end to end, and the signing charged to the tenant's own CPU limit."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.host import HostError
from sandbox.oauth1 import (
    OAuth1Credentials,
    authorization_header,
    canonical_url,
    percent_encode,
    sign,
    sign_request,
    signature_base_string,
)
from tests.support import serving
from tests.upstream import oauth_valid


def test_base_string_matches_rfc_5849_section_3_4_1_1():
    parameters = [
        ("b5", "=%3D"), ("a3", "a"), ("c@", ""), ("a2", "r b"),
        ("oauth_consumer_key", "9djdj82h48djs9d2"), ("oauth_token", "kkk9d7dh3k39sjv7"),
        ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", "137131201"),
        ("oauth_nonce", "7d8f3e4a"), ("c2", ""), ("a3", "2 q"),
    ]  # fmt: skip
    url = canonical_url("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b")
    base = signature_base_string("POST", url.base_uri, parameters)
    assert base == (
        "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D"
        "%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce"
        "%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26"
        "oauth_token%3Dkkk9d7dh3k39sjv7"
    )


def test_signature_matches_rfc_5849_section_1_2():
    url = canonical_url("http://photos.example.net/photos?file=vacation.jpg&size=original")
    parameters = [
        ("file", "vacation.jpg"), ("size", "original"),
        ("oauth_consumer_key", "dpf43f3p2l4k3l03"), ("oauth_token", "nnch734d00sl2jdk"),
        ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", "137131202"),
        ("oauth_nonce", "chapoH"),
    ]  # fmt: skip
    base = signature_base_string("GET", url.base_uri, parameters)
    assert sign(base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00") == "MdpQcU8iPSUjWoN/UDMsK2sui9I="


def test_header_signs_form_body_parameters_and_omits_an_absent_token():
    header = authorization_header(
        OAuth1Credentials("key", "secret"), method="POST",
        url=canonical_url("https://API.example.com:443/x?q=1"), body=b"a=b+c",
        content_type="application/x-www-form-urlencoded; charset=utf-8", nonce="n", timestamp=1,
    )  # fmt: skip
    assert header.startswith('OAuth oauth_consumer_key="key", oauth_nonce="n", ')
    assert "oauth_token" not in header
    base = signature_base_string(
        "POST", "https://api.example.com/x",
        [("a", "b c"), ("q", "1"), ("oauth_consumer_key", "key"), ("oauth_nonce", "n"),
         ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", "1"),
         ("oauth_version", "1.0")],
    )  # fmt: skip
    assert f'oauth_signature="{percent_encode(sign(base, "secret", None))}"' in header


# --- the URL as httpx sends it ---------------------------------------------------------------

URL_TEXT = st.lists(
    st.sampled_from([*"aZ09-._~!$&'()*+,;=:@/?#[]% \"<>`{}|\\^éü中🙂", "%41", "%zz", ".."]),
    max_size=30,
).map("".join)


@given(
    scheme=st.sampled_from(["http", "HTTP", "https"]),
    host=st.sampled_from(["Example.COM", "bücher.test", "127.0.0.1", "[::1]", "a-b.c"]),
    port=st.sampled_from(["", ":80", ":443", ":8080", ":"]),
    rest=URL_TEXT,
)
def test_canonical_url_is_what_httpx_sends_and_httpx_keeps_it(scheme, host, port, rest):
    url = f"{scheme}://{host}{port}/{rest}"
    try:
        expected = httpx.URL(url)
    except httpx.InvalidURL:
        with pytest.raises(HostError):
            canonical_url(url)
        return
    canonical = canonical_url(url)
    assert canonical.text == str(expected.copy_with(fragment=None))
    again = httpx.URL(canonical.text)
    assert str(again) == canonical.text  # httpx sends the signed form unchanged
    request = httpx.Request("GET", canonical.text)
    path = request.url.raw_path.decode().partition("?")[0]
    assert canonical.base_uri == f"{request.url.scheme}://{request.headers['Host']}{path}"


@pytest.mark.parametrize(
    ("url", "base_uri"),
    [
        ("http://Example.com:80/a/./b/../c", "http://example.com/a/c"),
        ("https://example.com:443", "https://example.com/"),
        ("https://example.com:8443/x?y", "https://example.com:8443/x"),
        ("http://bücher.test/ü b", "http://xn--bcher-kva.test/%C3%BC%20b"),
    ],
)
def test_default_ports_dot_segments_and_idna_in_the_base_string_uri(url, base_uri):
    assert canonical_url(url).base_uri == base_uri


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://example.com:80/a b/ü?x=1 2&y=é", "/a%20b/%C3%BC?x=1%202&y=%C3%A9"),
        ('http://bücher.test/oauth?q="#frag', "/oauth?q=%22"),
        ("http://example.com", "/"),
    ],
)
def test_a_signature_made_in_the_worker_passes_a_providers_check(url, target):
    body = b'status=hello world&tag=~*&quote="&hash=#&name=J\xc3\xb6'
    signed_url, header = sign_request(
        b"POST", url.encode(), body, b"application/x-www-form-urlencoded", b"ck", b"cs",
        b"at", b"ts",
    )  # fmt: skip
    request = httpx.Request(
        "POST", signed_url.decode(), content=body,
        headers={"Authorization": header.decode(),
                 "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert request.url.raw_path.decode() == target
    assert oauth_valid("POST", target, request.headers, body)


def test_bad_urls_are_refused_by_the_signer():
    for url, message in [
        ("ftp://example.com/", "only http and https"),
        ("http://example.com:99999/", "invalid port"),
        ("http:///x", "no host"),
        ("http://256.1.1.1/", "invalid IPv4"),
    ]:
        with pytest.raises(HostError, match=message):
            canonical_url(url)


# --- end to end ------------------------------------------------------------------------------


async def idna_resolver(host: str, port: int) -> list[str]:
    assert host in ("xn--bcher-kva.test", "127.0.0.1")
    return ["127.0.0.1"]


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ("accesstoken = 'at', tokensecret = 'ts'", "200 signed"),
        ("", "200 signed"),  # the request-token step: no access token yet
        ("accesstoken = 'at', tokensecret = 'wrong'", "401 bad"),
    ],
)
async def test_signed_requests_pass_a_providers_check(tmp_path, upstream, tokens, expected):
    script = f"""
        local r = http.request{{
            url = '{upstream.url("/oauth?count=2&q=a b")}', method = 'POST',
            data = {{status = 'hello world', tag = '~*'}},
            auth = {{oauth = {{consumertoken = 'ck', consumersecret = 'cs', {tokens}}}}},
        }}
        return tostring(r.statuscode) .. ' ' .. r.content
    """
    async with serving(tmp_path, {"a.test/oauth": script}) as srv:
        assert (await srv.get("/oauth")).text == expected


async def test_spaces_non_ascii_idna_hosts_params_and_raw_form_bodies_are_signed(
    tmp_path, upstream
):
    host = upstream.url("/", host="bücher.test").rstrip("/")
    script = f"""
        local answers = {{}}
        for _, url in ipairs{{'{host}/oauth/a b/ü?q=x y&z=é', '{host}/oauth/./x/../y'}} do
            local r = http.request{{
                url = url, method = 'POST', params = {{p = 'one two', u = 'ü'}},
                headers = {{['Content-Type'] = 'application/x-www-form-urlencoded'}},
                body = 'raw=a b&quote="&hash=#&name=Jö&plus=1+2',
                auth = {{oauth = {{consumertoken = 'ck', consumersecret = 'cs',
                                 accesstoken = 'at', tokensecret = 'ts'}}}},
            }}
            answers[#answers + 1] = r.statuscode .. ' ' .. r.content
        end
        return table.concat(answers, ', ')
    """
    async with serving(tmp_path, {"a.test/oauth": script}, resolver=idna_resolver) as srv:
        assert (await srv.get("/oauth")).text == "200 signed, 200 signed"
    paths = [r["path"] for r in upstream.requests]
    assert paths == ["/oauth/a%20b/%C3%BC", "/oauth/y"]
    assert upstream.requests[0]["headers"]["host"].startswith("xn--bcher-kva.test:")


async def test_a_signers_bad_url_is_an_ordinary_lua_error(tmp_path):
    script = """
        local ok, err = pcall(http.request, {url = 'http://256.0.0.1/x',
            auth = {oauth = {consumertoken = 'ck', consumersecret = 'cs'}}})
        return tostring(ok) .. ' ' .. err
    """
    async with serving(tmp_path, {"a.test/badurl": script}) as srv:
        response = await srv.get("/badurl")
    assert response.status_code == 200
    assert response.text == "false http.request: invalid IPv4 address '256.0.0.1'"


async def test_signing_a_huge_body_is_charged_to_the_tenants_cpu_limit(tmp_path, upstream):
    # Signing costs ~0.5 s of CPU per MiB of form body: in the worker, the tenant's CPU limit
    # stops it; the server's event loop never does this work.
    script = f"""
        local body = string.rep('a=&', 3 * 1024 * 1024)
        for i = 1, 3 do
            http.request{{url = '{upstream.url("/oauth")}', method = 'POST', body = body,
                headers = {{['Content-Type'] = 'application/x-www-form-urlencoded'}},
                auth = {{oauth = {{consumertoken = 'ck', consumersecret = 'cs'}}}}}}
        end
        return 'signed three'
    """
    async with serving(tmp_path, {"a.test/sign": script}, cpu_ms=300, timeout_ms=20_000) as srv:
        response = await srv.get("/sign")
        assert response.status_code == 504
        assert response.text == "the script exceeded its CPU-time limit of 300 ms\n"
        assert srv.pool.statistics().tenants["a.test"].cpu_kills == 1
    assert upstream.requests == []  # killed while signing the first, before any was sent
