"""What a tenant response must be before a byte of it is sent: the app's own check of a worker's
Reply (the worker checks the same rules first; a worker is tenant-controlled, so the server
does not rely on it).

h11 and Hypercorn refuse some statuses and header bytes only while sending, after the response
has begun, which leaves the connection in an error state; so everything they would refuse is
refused here, as a 500 that names the rule.
"""

from __future__ import annotations

import re
from typing import Final

from sngin.errors import ScriptError

Headers = list[tuple[bytes, bytes]]

TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]{1,256}\Z")
# RFC 9110 field values: no control characters but horizontal tab.
CONTROL_BYTE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Framing and hop-by-hop headers belong to the connection; the others are written by the server
# on every response and a script's copy would only contradict them.
SERVER_HEADERS: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"x-request-id",
        b"server-timing",
        b"date",
    }
)
NO_BODY_STATUSES: Final = frozenset({204, 304})


def response_headers(status: int, headers: Headers, body_length: int) -> Headers:
    """The headers to send for a script's response, with the server's Content-Length; raises
    ScriptError for a status or header that cannot be sent as valid HTTP."""
    if type(status) is not int or not 200 <= status <= 599:
        raise ScriptError(f"invalid response: status {status!r} is not an integer from 200 to 599")
    sent: Headers = []
    for name, value in headers:
        if name.lower() in SERVER_HEADERS:
            continue
        if not TOKEN.match(name):
            shown = name[:64].decode("latin-1")
            raise ScriptError(f"invalid response: header name {shown!r} is not a valid token")
        if CONTROL_BYTE.search(value):
            shown = name.decode("latin-1")
            raise ScriptError(f"invalid response: header {shown} contains a control character")
        sent.append((name, value))
    if status not in NO_BODY_STATUSES:
        sent.append((b"content-length", str(body_length).encode()))
    return sent
