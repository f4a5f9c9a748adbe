"""Turns a protocol Request into the plain values of the Lua `request` table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sandbox.protocol import Request

# Caps the fields parsed from a query string or form body; the rest are ignored.
MAX_FIELDS = 1000
FORM_TYPE = b"application/x-www-form-urlencoded"


def _group(pairs: Iterable[tuple[bytes, bytes]], table_from: Callable[[Any], Any]) -> Any:
    """Pairs -> Lua table; a repeated name becomes an array of its values (as ngx_lua does)."""
    grouped: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return table_from(
        {
            name: values[0] if len(values) == 1 else table_from(values)
            for name, values in grouped.items()
        }
    )


def _parse_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Binary-safe x-www-form-urlencoded parsing (`+` is a space; %XX decodes to any byte)."""
    pairs: list[tuple[bytes, bytes]] = []
    for part in data.split(b"&", MAX_FIELDS)[:MAX_FIELDS]:
        if part:
            name, _, value = part.partition(b"=")
            pairs.append((_unquote(name), _unquote(value)))
    return pairs


def _unquote(text: bytes) -> bytes:
    return unquote_to_bytes(text.replace(b"+", b" "))


def header_name(name: bytes) -> bytes:
    """The canonical Title-Case form (`x-github-event` -> `X-Github-Event`), the keys of the
    Lua header tables (the prelude's header_name makes the same form for lookups)."""
    titled = _TITLED.get(name)
    if titled is None:
        titled = b"-".join(part[:1].upper() + part[1:] for part in name.lower().split(b"-"))
        if len(_TITLED) >= MAX_TITLED:
            _TITLED.clear()  # names a client made up: start again rather than grow
        _TITLED[name] = titled
    return titled


# The same few header names come on every request: each is title-cased once per worker.
MAX_TITLED = 512
_TITLED: dict[bytes, bytes] = {}


def build(request: Request, table_from: Callable[[Any], Any]) -> Any:
    """Build the Lua `request` table (fresh per request, so scripts may modify it freely)."""
    headers = request.headers
    referer = None
    content_type = b""
    for name, value in headers:  # the last one of each wins, as in a dict of the headers
        if name == b"referer":
            referer = value
        elif name == b"content-type":
            content_type = value
    fields: dict[bytes, Any] = {
        b"method": request.method.encode(),
        b"path": request.path.encode(),
        b"querystring": request.querystring,
        b"query": _group(_parse_pairs(request.querystring), table_from),
        b"headers": _group(((header_name(n), v) for n, v in headers), table_from),
        b"body": request.body,
        b"host": request.host.encode(),
        b"scheme": request.scheme.encode(),
        b"port": request.port,
        b"remote_addr": request.remote_addr.encode(),
        b"id": request.id.encode(),
    }
    if referer is not None:
        fields[b"referer"] = referer
    cron = request.cron
    if cron is not None:
        fields[b"cron"] = table_from(
            {
                b"schedule": cron.schedule.encode(),
                b"scheduled": cron.scheduled,
                b"index": cron.index,
                b"manual": cron.manual,
            }
        )
    content_type = content_type.split(b";", 1)[0].strip().lower()
    if request.form is not None:  # multipart/form-data, parsed by the server
        fields[b"form"] = _group(request.form, table_from)
        fields[b"files"] = _group(
            (
                (
                    upload.field,
                    table_from(
                        {
                            b"type": upload.type,
                            b"filename": upload.filename,
                            b"content": upload.content,
                        }
                    ),
                )
                for upload in request.files or ()
            ),
            table_from,
        )
    elif content_type == FORM_TYPE:
        fields[b"form"] = _group(_parse_pairs(request.body), table_from)
    return table_from(fields)
