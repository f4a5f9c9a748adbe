"""Messages between the server and a sandbox worker, and their length-prefixed msgpack framing."""

from __future__ import annotations

import struct
from typing import Final

import msgspec

# Error kinds a worker may report; a closed set so the parent can map each to a status.
LUA_ERROR: Final = "lua_error"
INVALID_RESPONSE: Final = "invalid_response"
METHOD_NOT_ALLOWED: Final = "method_not_allowed"
MEMORY_LIMIT: Final = "memory_limit"
BAD_SOURCE: Final = "bad_source"
ERROR_KINDS: Final = frozenset(
    {LUA_ERROR, INVALID_RESPONSE, METHOD_NOT_ALLOWED, MEMORY_LIMIT, BAD_SOURCE}
)

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
# A worker keeps the runtimes of the tenants it served last (each still only ever that tenant's),
# so switching back to one costs nothing; the server routes tenants to the worker holding theirs.
# How many it keeps is bounded by their Lua heap together (a hello runtime holds ~100-200 KiB),
# not by a count: the server passes each worker its share of SNGIN_KEPT_RUNTIMES_MB (this is
# the share of a worker started without one). A runtime over the per-runtime cap is closed.
DORMANT_TOTAL_BYTES: Final = 32 * 1024 * 1024
DORMANT_MAX_BYTES: Final = 1024 * 1024


class FormFile(msgspec.Struct, frozen=True, kw_only=True):
    """A file of a multipart/form-data upload (parsed by the server: sngin.request_body)."""

    field: bytes
    filename: bytes
    type: bytes
    content: bytes


class CronRun(msgspec.Struct, frozen=True, kw_only=True):
    """request.cron of a scheduled run: the entry's schedule as written, the tick's unix time,
    the entry's index in the tenant's list, and whether an operator or tenant ran it by hand."""

    schedule: str
    scheduled: float
    index: int
    manual: bool = False


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """What a script sees as the global `request` (header names already lower-case). For a
    multipart/form-data body, `form` and `files` as the server parsed them (None otherwise)."""

    method: str
    path: str
    querystring: bytes = b""
    headers: list[tuple[bytes, bytes]] = []  # as the server received them: no re-encoding
    body: bytes = b""
    host: str = ""
    scheme: str = "http"
    port: int = 80
    remote_addr: str = ""
    id: str = ""
    form: list[tuple[bytes, bytes]] | None = None
    files: list[FormFile] | None = None
    cron: CronRun | None = None  # a scheduled run's (method "CRON")


# A request's time and randomness, per kind (random, time, clock, crypto_random, uuid), in the
# order it was given them (sandbox/tape.py): recorded for a replay bundle, given back replaying.
TapeValue = int | float | bytes
Tape = dict[str, list[TapeValue]]


class WireLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-request limits as the worker receives them (derived from sngin.limits.Limits):
    CPU and Lua memory, and the response's size."""

    cpu_ms: int = 2000
    memory_bytes: int = 128 * 1024 * 1024
    max_body_bytes: int = 10 * 1024 * 1024
    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    max_log_lines: int = 100
    max_log_bytes: int = 64 * 1024


class Job(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Run one request. `source` may be omitted when the worker already holds (key, version)."""

    id: int = 0
    tenant: str
    key: str
    version: str
    request: Request
    limits: WireLimits = WireLimits()
    source: bytes | None = None
    env: dict[str, str] = {}  # the tenant's `env` (from its _sngin.json), read-only in Lua
    tail: int = 0  # request.body's bytes follow this frame on the pipe (see encode_to_worker)
    # Compile the source (with the Lua 5.1 pre-pass) and answer without running it: the
    # management API's syntax check. A compile error is the usual BAD_SOURCE reply.
    check_only: bool = False
    # A preview (the management API): its runtime is closed once the job is over, not kept.
    throwaway: bool = False
    # Recorded (X-Sngin-Record): the Reply carries the tape even when the run succeeds (a
    # failed run's always does).
    record: bool = False
    # Replaying a bundle: time and randomness given back from this tape, in order.
    replay: Tape | None = None


class Reply(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The outcome of a Job: a response, or an error kind from ERROR_KINDS with a message."""

    id: int = 0
    status: int = 200
    headers: list[tuple[bytes, bytes]] = []
    body: bytes = b""
    error: str | None = None
    message: str = ""
    allow: list[str] = []
    logs_dropped: int = 0
    need_source: bool = False
    cpu_ms: float = 0.0
    fresh_runtime: bool = False  # the job needed a new runtime (none active or kept for it)
    dropped_runtimes: list[str] = []  # tenants whose kept runtimes were closed meanwhile
    # Not started: another tenant's requests wait on platform calls in this worker, and tenants
    # never share a worker's time while one of them is parked; the server runs it elsewhere.
    declined: bool = False
    tape: Tape | None = None  # the rest of the run's tape (recorded or failed runs only)
    tape_cut: bool = False  # more values were given than a tape keeps
    beyond_tape: int = 0  # replaying: values asked for past the recording (live ones given)


class Hello(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A worker's first frame: it has applied its limits and is ready for jobs."""

    pid: int
    lua: str


class HttpCall(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """http.request as a script asked for it (already form-encoded, params merged into url;
    with auth.oauth, the URL in canonical form and signed by the worker)."""

    method: str = "GET"
    url: str
    headers: list[tuple[str, bytes]] = []
    body: bytes | None = None
    timeout_s: float | None = None
    auth: tuple[bytes, bytes] | None = None


class EmailCall(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """email.send as a script asked for it (webscript's fields; checked by the prelude)."""

    server: str
    port: int | None = None
    username: str | None = None
    password: str | None = None
    from_: str
    to: list[str]
    subject: str = ""
    text: str | None = None
    html: str | None = None
    replyto: str | None = None
    secure: bool = False


class StorageCall(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """storage / lease / cache: `op` is get, set, delete, lease_acquire, lease_release,
    cache_get, cache_set or cache_delete (checked again by the server)."""

    op: str
    key: bytes = b""
    value: bytes | None = None
    timeout_s: float | None = None  # lease_acquire
    ttl_s: float | None = None  # cache_set


class AlertCall(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """alert.email(text) / alert.sms(text): a notice for the tenant's owner."""

    kind: str
    text: str


class HttpResult(msgspec.Struct, frozen=True, kw_only=True):
    """status 0 with `error` set: the request failed or the egress guard refused it."""

    status: int = 0
    headers: list[tuple[str, bytes]] = []
    body: bytes = b""
    error: str | None = None


class ModuleSource(msgspec.Struct, frozen=True, kw_only=True):
    """A module's text for `require`, with the version it is cached under and where it was
    found ("github:<user>/<repo>/<ref>/<path>.lua" or "tenant:<path>.lua"). `unchanged`: the
    worker already has this location and version compiled (its `have`), so no text is sent."""

    text: bytes
    version: str
    chunkname: str
    location: str = ""
    unchanged: bool = False


class ModuleCall(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A module for `require`: a search, the places to look in order joined by "|"
    (sandbox/lua/prelude/09-modules.lua), with the location and version it last compiled for
    that search (`have`, "<location>\0<version>")."""

    search: str
    have: str | None = None


# What a platform call asks for: one tagged type each, so both sides dispatch by type.
CallRequest = HttpCall | ModuleCall | EmailCall | AlertCall | StorageCall


class Call(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A running script asks the server to do something for it (a platform call)."""

    id: int
    call_id: int
    request: CallRequest
    tape: Tape | None = None  # the time and randomness given since the last frame


class CallResult(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The answer to a Call; `error` raises a Lua error in the script (e.g. a spent budget)."""

    id: int
    call_id: int
    http: HttpResult | None = None
    module: ModuleSource | None = None
    error: str | None = None
    done: bool = False  # a call that returns at most `value` succeeded (email, alert, storage)
    value: bytes | None = None
    tail: int = 0  # http.body's bytes follow this frame on the pipe (see encode_to_worker)


class Cancel(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Drop a request that is waiting on a call (its wall time ran out); no Reply follows."""

    id: int


class Running(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Sent before resuming a request when several share the worker, so a CPU kill is blamed
    on the request that was running."""

    id: int


class Log(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One print/log line, sent as the script writes it."""

    id: int
    line: bytes


ToWorker = Job | CallResult | Cancel
FromWorker = Hello | Reply | Call | Running | Log

_encoder = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_from_worker = msgspec.msgpack.Decoder(FromWorker)

# Exit status of a worker that hit its address-space backstop (a Python MemoryError).
EXIT_MEMORY = 3


def encode_frame(message: ToWorker | FromWorker) -> bytearray:
    """One frame: a 4-byte big-endian length, then the msgpack body, encoded in place after
    the header (a large body is not copied again to prepend it)."""
    frame = bytearray(HEADER.size)
    _encoder.encode_into(message, frame, HEADER.size)
    HEADER.pack_into(frame, 0, len(frame) - HEADER.size)
    return frame


# A body this large is written beside its frame (a second buffer, after it on the pipe) rather
# than copied into it: the server then holds one copy of a body it sends a worker, not two.
TAIL_MIN_BYTES: Final = 64 * 1024

BodyBytes = bytes | bytearray | memoryview


def encode_to_worker(message: ToWorker) -> tuple[bytearray, BodyBytes | None]:
    """A frame for the worker, and the body to write right after it (None: all in the frame).
    The body is the caller's own buffer: nothing is copied."""
    if isinstance(message, Job) and len(message.request.body) >= TAIL_MIN_BYTES:
        body: BodyBytes = message.request.body
        request = msgspec.structs.replace(message.request, body=b"")
        message = msgspec.structs.replace(message, request=request, tail=len(body))
    elif (
        isinstance(message, CallResult)
        and message.http is not None
        and len(message.http.body) >= TAIL_MIN_BYTES
    ):
        body = message.http.body
        http = msgspec.structs.replace(message.http, body=b"")
        message = msgspec.structs.replace(message, http=http, tail=len(body))
    else:
        return encode_frame(message), None
    return encode_frame(message), body


def with_tail(message: ToWorker, tail: bytes) -> ToWorker:
    """A Job or CallResult with the body that followed its frame put back in its place."""
    if isinstance(message, Job):
        request = msgspec.structs.replace(message.request, body=tail)
        return msgspec.structs.replace(message, request=request, tail=0)
    if isinstance(message, CallResult) and message.http is not None:
        http = msgspec.structs.replace(message.http, body=tail)
        return msgspec.structs.replace(message, http=http, tail=0)
    raise ValueError("a tail after a frame that has no body")


def frame_length(header: bytes | bytearray) -> int:
    """The body length announced by a frame header; rejects absurd sizes."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    return int(length)


def take_prefix(buffer: bytearray, size: int) -> bytes:
    """The first size bytes of a read buffer, removed from it: one copy (a slice of the
    bytearray itself would be a second). Both ends of the pipe read frames with it."""
    with memoryview(buffer) as view:
        data = bytes(view[:size])
    del buffer[:size]
    return data


def decode_to_worker(body: bytes | bytearray) -> ToWorker:
    message: ToWorker = _to_worker.decode(body)
    return message


def decode_from_worker(body: bytes | bytearray) -> FromWorker:
    message: FromWorker = _from_worker.decode(body)
    return message
