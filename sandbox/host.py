"""Python functions offered to Lua, guarded so no Python object or exception ever reaches Lua."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable
from typing import Any, Final

import msgspec

MAX_JSON_DEPTH = 512


class HostError(Exception):
    """An error whose message is safe to show the tenant."""


HostResult = tuple[Any, ...]
Guarded = Callable[..., HostResult]


def guard(name: str, fn: Callable[..., HostResult]) -> Guarded:
    """Wrap fn so it returns (True, *results) or (False, message) and never raises.

    lupa hands a raised exception to Lua as an object whose __traceback__ and frames reach the
    interpreter, so every exception, including BaseException, becomes a plain message here.
    """

    def call(*args: Any) -> HostResult:
        try:
            return (True, *fn(*args))
        except HostError as exc:
            return (False, f"{name}: {exc}".encode())
        except RecursionError:
            return (False, f"{name}: input nested too deeply".encode())
        except MemoryError:
            return (False, f"{name}: out of memory".encode())
        except BaseException:
            return (False, f"{name}: internal error".encode())

    return call


def expect_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    raise HostError(f"{what} must be a string")


class JsonDecoder:
    """json.decode: text -> Lua values, `nil, message` on bad input, JSON null -> json.null."""

    def __init__(self, table_from: Callable[..., Any], null: Any) -> None:
        self._table_from: Callable[..., Any] | None = table_from
        self._null = null
        self._pack = msgspec.msgpack.Encoder().encode
        self._parse = msgspec.json.Decoder().decode

    def forget_runtime(self) -> None:
        """Drop the references back to the Lua runtime: the runtime holds this decoder, so
        until then the two keep each other alive past close() (until a full collection)."""
        self._table_from = self._null = None

    def __call__(self, text: Any = None, *_: Any) -> HostResult:
        data = expect_bytes(text, "argument")
        try:
            # msgspec reads well-formed UTF-8 JSON in half json's time, to the same values;
            # anything else (NaN, a BOM, UTF-16, bad input, deep nesting) is json's to answer.
            value = self._parse(data)
        except (msgspec.DecodeError, RecursionError):
            try:
                value = json.loads(data)
            except RecursionError:
                return (None, f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels".encode())
            except ValueError as exc:
                return (None, f"invalid JSON: {_short(exc)}".encode())
        if type(value) is dict or type(value) is list:
            try:
                # Read into tables on the Lua side (prelude 05-json: json_decoded), ~4x
                # cheaper than converting here; what MessagePack cannot hold (integers past
                # 64 bits, lone surrogates) takes the path below, as before.
                return (self._pack(value), True)
            except (OverflowError, UnicodeEncodeError, RecursionError):
                pass
        try:
            plain = self._plain(value, 0)
            if isinstance(plain, dict | list):
                if self._table_from is None:
                    raise HostError("the runtime is closed")
                # lupa builds the nested tables in one call (C), not one call per table.
                return (self._table_from(plain, recursive=True),)
            return (plain,)
        except HostError as exc:
            return (None, f"invalid JSON: {exc}".encode())
        except RecursionError:
            return (None, f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels".encode())

    def _plain(self, value: Any, depth: int) -> Any:
        """The decoded value as lupa converts it: strings as bytes, null as json.null, integers
        beyond 2^53 as floats (Lua numbers are doubles). json.loads makes exact types, so
        `type(...) is` checks, most common first, suffice."""
        kind = type(value)
        if kind is str:
            return value.encode()
        if kind is int:
            return value if -(2**53) <= value <= 2**53 else float(value)
        if kind is dict or kind is list:
            if depth > MAX_JSON_DEPTH or (depth == MAX_JSON_DEPTH and value):
                raise HostError(f"JSON nested more than {MAX_JSON_DEPTH} levels")
            plain = self._plain
            if kind is list:
                return [plain(item, depth + 1) for item in value]
            return {key.encode(): plain(item, depth + 1) for key, item in value.items()}
        if value is None:
            return self._null
        return value  # float or bool


def _short(exc: ValueError) -> str:
    # json's messages name a line and column; the input is the tenant's own, so they are safe.
    text = str(exc)
    return text[:200]


HASHES: Final = {b"md5", b"sha1", b"sha256", b"sha512"}


def _algorithm(name: Any) -> str:
    if name not in HASHES:
        raise HostError("unknown hash")
    return str(name.decode())


def hash_digest(name: Any, data: Any) -> HostResult:
    raw = hashlib.new(_algorithm(name), expect_bytes(data, "argument")).digest()
    return (raw, raw.hex().encode())


def hmac_digest(name: Any, key: Any, message: Any) -> HostResult:
    mac = hmac.new(expect_bytes(key, "key"), expect_bytes(message, "message"), _algorithm(name))
    raw = mac.digest()
    return (raw, raw.hex().encode())


def random_bytes(count: Any) -> HostResult:
    return (secrets.token_bytes(int(count)),)


def new_uuid() -> HostResult:
    return (str(uuid.uuid4()).encode(),)


def b64encode(data: Any) -> HostResult:
    return (base64.b64encode(expect_bytes(data, "argument")),)


def b64decode(data: Any) -> HostResult:
    """Standard or URL-safe alphabet; whitespace and missing padding are tolerated."""
    text = b"".join(expect_bytes(data, "argument").split())
    text = text.replace(b"-", b"+").replace(b"_", b"/")
    text += b"=" * (-len(text) % 4)
    try:
        return (base64.b64decode(text, validate=True),)
    except (binascii.Error, ValueError):
        return (None, b"invalid base64")
