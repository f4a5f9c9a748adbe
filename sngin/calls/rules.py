"""The rules a script's platform-call arguments must follow before the server acts on them.

The worker is tenant-controlled, so whatever the prelude already checked is checked again
here, where a bad value would otherwise surface as an exception deep in httpx, idna or the
filesystem. A broken rule is an ordinary Lua error for the script that made the call.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from sandbox.protocol import EmailCall, HttpCall

MAX_URL_BYTES: Final = 8192
MAX_METHOD_BYTES: Final = 32
MAX_HEADER_NAME_BYTES: Final = 256
MAX_MODULE_NAME_BYTES: Final = 1024
MAX_MODULE_SEGMENT_BYTES: Final = 200  # filesystems refuse names over 255 bytes

TOKEN: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+\Z")
# Field values: no control characters but horizontal tab (RFC 9110).
CONTROL_BYTE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
URL_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def http_call_problem(call: HttpCall) -> str | None:
    """What is wrong with an http.request call, or None."""
    if len(call.method) > MAX_METHOD_BYTES or not TOKEN.match(call.method):
        return "method must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
    if len(call.url) > MAX_URL_BYTES:
        return f"url longer than {MAX_URL_BYTES} bytes"
    if URL_CONTROL.search(call.url):
        return "url contains a control character"
    for name, value in call.headers:
        if len(name) > MAX_HEADER_NAME_BYTES or not TOKEN.match(name):
            return f"header name {name[:64]!r} is not an HTTP token"
        if CONTROL_BYTE.search(value):
            return f"header {name} contains a control character"
    timeout = call.timeout_s
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        return "timeout must be a positive number of seconds"
    return None


MAX_EMAIL_BODY_CHARS: Final = 4 * 1024 * 1024
MAX_ADDRESS_CHARS: Final = 320
HEADER_BREAK: Final = re.compile(r"[\r\n\x00]")


def email_call_problem(call: EmailCall) -> str | None:
    """What is wrong with an email.send call, or None (the worker is tenant-controlled)."""
    one_line = [("server", call.server), ("from", call.from_), ("subject", call.subject)]
    one_line += [("replyto", call.replyto or ""), ("username", call.username or "")]
    one_line += [("to", address) for address in call.to]
    for name, value in one_line:
        if HEADER_BREAK.search(value):
            return f"{name} must be one line"
    if not call.to or len(call.to) > 100:
        return "to must hold 1 to 100 addresses"
    if any(len(a) > MAX_ADDRESS_CHARS for a in [call.from_, *call.to, call.replyto or ""]):
        return f"an address longer than {MAX_ADDRESS_CHARS} characters"
    if len(call.subject) > 1000:
        return "subject longer than 1000 characters"
    if len(call.text or "") + len(call.html or "") > MAX_EMAIL_BODY_CHARS:
        return f"text and html longer than {MAX_EMAIL_BODY_CHARS} characters"
    return None


def module_name_problem(path: str) -> str | None:
    """What is wrong with the length of a module path (its shape is checked by the caller)."""
    if len(path.encode()) > MAX_MODULE_NAME_BYTES:
        return f"module name longer than {MAX_MODULE_NAME_BYTES} bytes"
    if any(len(part.encode()) > MAX_MODULE_SEGMENT_BYTES for part in path.split("/")):
        return f"module name has a part longer than {MAX_MODULE_SEGMENT_BYTES} bytes"
    return None
