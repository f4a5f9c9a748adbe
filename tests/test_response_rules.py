"""The server's own check of a worker's response, before anything is sent."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sngin.edge.response_rules import SERVER_HEADERS, response_headers
from sngin.errors import ScriptError


def test_content_length_is_the_servers():
    headers = response_headers(200, [(b"Content-Length", b"3"), (b"X-A", b"b")], 5)
    assert headers == [(b"X-A", b"b"), (b"content-length", b"5")]


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses_get_no_content_length(status):
    assert response_headers(status, [], 0) == []


@pytest.mark.parametrize("status", [100, 101, 199, 600, 99, 200.0, True])
def test_statuses_outside_200_to_599_are_refused(status):
    with pytest.raises(ScriptError, match="from 200 to 599"):
        response_headers(status, [], 0)


@pytest.mark.parametrize(
    "name", [b"X-Request-Id", b"server-timing", b"Date", b"Transfer-Encoding", b"Upgrade"]
)
def test_headers_the_server_owns_are_dropped(name):
    assert response_headers(200, [(name, b"forged")], 0) == [(b"content-length", b"0")]


@given(st.binary(max_size=40))
def test_any_header_value_that_passes_is_sendable_by_h11(value):
    import h11

    try:
        headers = response_headers(200, [(b"X-V", value)], 0)
    except ScriptError:
        assert any((b < 0x20 and b != 0x09) or b == 0x7F for b in value)
        return
    # What Hypercorn does before h11 sees it: strip surrounding whitespace.
    headers = [(n, v.strip()) for n, v in headers]
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    connection.next_event()
    connection.send(h11.Response(status_code=200, headers=headers))


@given(st.binary(min_size=0, max_size=20))
def test_any_header_name_that_passes_is_a_token(name):
    allowed = (string.ascii_letters + string.digits + "-!#$%&'*+.^_`|~").encode()
    token = len(name) > 0 and all(b in allowed for b in name)
    if token:
        kept = response_headers(200, [(name, b"v")], 0)[:-1]
        assert kept == ([] if name.lower() in SERVER_HEADERS else [(name, b"v")])
    else:
        with pytest.raises(ScriptError, match="not a valid token"):
            response_headers(200, [(name, b"v")], 0)
