"""What the server makes of a request body before the script runs: a compressed body inflated
(Content-Encoding gzip or deflate, bounded by the body limit), and a multipart/form-data body
parsed into text fields and files (python-multipart), so a malformed one is a 400 naming the
problem, not a script's puzzle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from sandbox.protocol import FormFile
from sngin.bodies.budgets import bodies_budget_full
from sngin.bodies.http_body import BodyDecodeError, BoundedDecoder
from sngin.errors import BadRequest, RequestTooLarge

if TYPE_CHECKING:
    from sngin.bodies.budgets import Lease

MAX_PARTS: Final = 1000  # fields and files in one form; the rest is a 400
MULTIPART: Final = b"multipart/form-data"


def inflate_body(
    coding: bytes | None, body: bytes, limit: int, lease: Lease | None = None
) -> bytes:
    """The body as its Content-Encoding (`coding`) says (gzip, x-gzip, deflate; identity or
    none as it is), at most `limit` bytes inflated (RequestTooLarge past it: a compressed bomb
    is a 413), each inflated byte held against the request-bodies budget when a lease is
    given."""
    if coding is None or not body:
        return body
    decoder = BoundedDecoder(coding.decode("latin-1"))
    try:
        inflated = decoder.decode(body, limit + 1)
    except BodyDecodeError as exc:
        raise BadRequest(f"the request body is not valid for its Content-Encoding: {exc}") from None
    if len(inflated) > limit:
        raise RequestTooLarge(f"request body larger than {limit} bytes once inflated")
    if inflated is not body and lease is not None and not lease.take(len(inflated)):
        raise bodies_budget_full()
    return inflated


def parse_form_data(
    content_type: bytes, body: bytes
) -> tuple[list[tuple[bytes, bytes]], list[FormFile]]:
    """A multipart/form-data body's text fields and files; BadRequest naming what is wrong."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary")
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    name = bytearray()
    value = bytearray()

    def begin() -> None:
        parts.append(({}, bytearray()))
        if len(parts) > MAX_PARTS:
            raise BadRequest(f"a form with more than {MAX_PARTS} parts")

    def end_header() -> None:
        parts[-1][0][bytes(name).lower()] = bytes(value)
        name.clear()
        value.clear()

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": lambda data, start, end: name.extend(data[start:end]),
        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
        "on_header_end": end_header,
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart/form-data body: {exc}") from None
    if parser.state != MultipartState.END:
        raise BadRequest("malformed multipart/form-data body: it ends before its last boundary")
    fields: list[tuple[bytes, bytes]] = []
    files: list[FormFile] = []
    for part_headers, content in parts:
        disposition, params = parse_options_header(part_headers.get(b"content-disposition", b""))
        field = params.get(b"name")
        if disposition != b"form-data" or field is None:
            continue  # not a form field: nothing a script could name
        filename = params.get(b"filename")
        if filename is None:
            fields.append((field, bytes(content)))
        else:
            kind = part_headers.get(b"content-type", b"application/octet-stream")
            files.append(
                FormFile(field=field, filename=filename, type=kind, content=bytes(content))
            )
    return fields, files
