"""A replay bundle: what one run saw (the request, the code, every platform call with its
answer, its time and randomness, its logs) and how it ended. Stored as JSON in the tenant
storage backend (sngin.replay.store); secrets replaced by their placeholders before that."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final

import msgspec

# (At run time: msgspec reads the structs' annotations when it decodes a bundle.)
from sandbox.protocol import CallRequest, CallResult, Tape  # noqa: TC001

if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_BODY_BYTES: Final = 1024 * 1024  # the request's body kept
MAX_OUTCOME_BODY_BYTES: Final = 64 * 1024  # the response's body kept
MAX_LOG_LINES: Final = 100
# What a bundle may hold of calls and their answers: past it, the later calls are not kept
# (the bundle says so), and a replay answers them with an error.
MAX_CALLS_BYTES: Final = 4 * 1024 * 1024
REDACTED: Final = b"<redacted>"
PRIVATE_HEADERS: Final = frozenset({b"authorization", b"cookie", b"proxy-authorization"})
OUTBOUND_PRIVATE: Final = frozenset({"authorization", "cookie", "proxy-authorization"})


class RecordedCall(msgspec.Struct, frozen=True, kw_only=True):
    """One platform call as the script asked for it, and what the server answered."""

    request: CallRequest
    result: CallResult


class Module(msgspec.Struct, frozen=True, kw_only=True):
    location: str
    version: str
    text: bytes = b""
    sha256: str = ""  # its text's, under which the store keeps it once (encode)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    body: bytes = b""
    body_truncated: bool = False
    error: str | None = None  # the error's text (a script error, or the limit's message)
    kind: str | None = None  # the worker's error kind (lua_error, memory_limit, ...)
    limit: str | None = None  # cpu, wall or memory: which limit ended the run


class Bundle(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    time: float  # unix time the run started
    script: str  # its key (HOST/path)
    version: str
    source: bytes = b""
    source_sha256: str = ""
    method: str
    path: str
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = []
    body: bytes = b""
    body_truncated: bool = False
    env: dict[str, str] = {}
    modules: list[Module] = []
    calls: list[RecordedCall] = []
    calls_cut: bool = False  # more calls than a bundle keeps were made
    tape: Tape = {}
    tape_cut: bool = False
    logs: list[str] = []
    outcome: Outcome
    partial: bool = False  # killed by a limit: only what the server held is here
    recorded: bool = False  # asked for with X-Sngin-Record (not a failure)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "time": self.time, "path": self.path, "method": self.method,
            "status": self.outcome.status, "outcome": outcome_name(self),
            "partial": self.partial,
        }  # fmt: skip


def outcome_name(bundle: Bundle) -> str:
    if bundle.outcome.limit is not None:  # (a memory limit the worker caught is not partial)
        return f"killed ({bundle.outcome.limit})"
    if bundle.outcome.kind is not None or bundle.outcome.error is not None:
        return "error"
    return "recorded"


def kept_headers(headers: list[tuple[bytes, bytes]], keep_all: bool) -> list[tuple[bytes, bytes]]:
    """Authorization, Cookie and Proxy-Authorization as `<redacted>`, unless the tenant keeps
    them (`"replay": {"keep_headers": true}`)."""
    if keep_all:
        return list(headers)
    return [(n, REDACTED if n.lower() in PRIVATE_HEADERS else v) for n, v in headers]


def without_secrets(value: Any, placeholders: tuple[tuple[str, str], ...]) -> Any:
    """Every exact secret value in a bundle's text and bytes replaced by its placeholder
    (`${secret:NAME}`), longest first: best effort, as log redaction is."""
    if not placeholders:
        return value
    if isinstance(value, str):
        for secret, placeholder in placeholders:
            value = value.replace(secret, placeholder)
        return value
    if isinstance(value, bytes | bytearray | memoryview):  # (an answer's body may be either)
        data = bytes(value)
        for secret, placeholder in placeholders:
            data = data.replace(secret.encode(), placeholder.encode())
        return data
    if isinstance(value, dict):
        return {k: without_secrets(v, placeholders) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_secrets(v, placeholders) for v in value]
    return value


def encode(
    bundle: Bundle, placeholders: tuple[tuple[str, str], ...]
) -> tuple[bytes, dict[str, bytes]]:
    """The bundle's JSON without its script's and modules' texts, and those texts by their
    SHA-256: the store keeps each text once, however many bundles share it. A `require`'s
    recorded answer points at its module in `modules` (`unchanged`) instead of a copy."""
    plain = msgspec.to_builtins(bundle, builtin_types=(bytes, bytearray, memoryview))
    plain = without_secrets(plain, placeholders)
    texts: dict[str, bytes] = {}

    def set_aside(text: bytes) -> str:
        digest = hashlib.sha256(text).hexdigest()
        texts[digest] = text
        return digest

    plain["source_sha256"], plain["source"] = set_aside(plain["source"]), b""
    for module in plain["modules"]:
        module["sha256"], module["text"] = set_aside(module["text"]), b""
    kept = {module["location"] for module in plain["modules"]}
    for call in plain["calls"]:
        answer = call["result"].get("module")
        if answer is not None and answer.get("location") in kept:
            answer["text"], answer["unchanged"] = b"", True
    return msgspec.json.encode(plain), texts


def decode(data: bytes) -> Bundle:
    return msgspec.json.decode(data, type=Bundle)


def with_texts(bundle: Bundle, texts: Mapping[str, bytes]) -> Bundle:
    """The bundle with the texts encode set aside back in it (a bundle written before texts
    were kept apart has them in place)."""
    source = texts[bundle.source_sha256] if bundle.source_sha256 else bundle.source
    modules = [
        msgspec.structs.replace(m, text=texts[m.sha256]) if m.sha256 else m for m in bundle.modules
    ]
    return msgspec.structs.replace(bundle, source=source, modules=modules)


def text_digests(bundle: Bundle) -> set[str]:
    return {d for d in (bundle.source_sha256, *(m.sha256 for m in bundle.modules)) if d}
