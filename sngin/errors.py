"""The sngin error tree and the HTTP status each error maps to.

SnginError ─ ConfigError (start-up, one line naming the variable)
           ─ BadRequest 400 (Host, path) · TenantNotFound/CodeNotFound 404
           ─ MethodNotAllowed 405 (+Allow)
           ─ RequestTimeout 408 · RequestTooLarge 413 · RateLimited 429 (+Retry-After)
           ─ ScriptError 500 (Lua error, invalid response, memory limit, invalid tenant config)
           ─ WorkerCrashed 502 · ProtocolError 502 (that worker is killed)
           ─ CodeFetchError 502 (no copy) ─ StoreMisconfigured (bucket missing, access denied)
           ─ Unavailable 503 (+Retry-After: quarantine, queue full, tenant disabled, shutting down)
           ─ LimitExceeded 504 (wall time or CPU time; the body names which)
           By domain, for what fails inside the server (each with the status it would answer):
           ─ WorkerError 502 ─ WorkerFailed (a request's worker ended), WorkerBootFailed
                               (a worker, or at start-up the pool, would not start), ZygoteGone
           ─ StorageError 503 ─ StorageUnavailable, QuotaExceeded, StorageRefused
           ─ CallError 500 ─ MailRefused, AlertFailed, BodyBudgetExceeded (a platform call's
                             refusal: the script's Lua error)

Messages are short plain text for people: what failed and which limit, never a server path or
a traceback. Foreign errors are wrapped on entry (`raise CodeFetchError(key) from exc`).
"""

from __future__ import annotations


class SnginError(Exception):
    """Base of every error sngin raises on purpose; `status` is its HTTP status (the one table:
    each class below sets its own, and the error handler reads it)."""

    status: int = 500
    # What ended a script's run under it: cpu, wall or memory (a limit), or crash (its worker
    # died); None for what never ran or was ended by another request (no replay bundle).
    limit: str | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class ConfigError(SnginError):
    """Bad configuration at start-up; the message names the variable."""


class BadRequest(SnginError):
    status = 400


class TenantNotFound(SnginError):
    status = 404


class CodeNotFound(SnginError):
    status = 404


class MethodNotAllowed(SnginError):
    status = 405


class RequestTimeout(SnginError):
    """The body did not arrive in time: the connection closes (as for RequestTooLarge)."""

    status = 408

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={"Connection": "close", **(headers or {})})


class RequestTooLarge(SnginError):
    """Answered before the body was read to its end: the connection cannot carry another
    request, so the client is told it closes (else it may reuse it and lose the race)."""

    status = 413

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={"Connection": "close", **(headers or {})})


class RateLimited(SnginError):
    status = 429


class ScriptError(SnginError):
    status = 500


class WorkerCrashed(SnginError):
    status = 502


class ProtocolError(SnginError):
    status = 502


class CodeFetchError(SnginError):
    status = 502


class StoreMisconfigured(CodeFetchError):
    """The store answered, but not as a working store would: the bucket does not exist or the
    credentials are refused. Never read as "no such script"; `code` is S3's error code."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class Unavailable(SnginError):
    status = 503


class LimitExceeded(SnginError):
    status = 504


class WorkerError(SnginError):
    """A worker failed, or would not start (sngin.workers)."""

    status = 502


class StorageError(SnginError):
    """Tenant storage could not, or would not, do an operation (sngin.storage)."""

    status = 503


class CallError(SnginError):
    """A script's platform call was refused or failed (sngin.calls): the script sees it as a
    Lua error; it is never an HTTP answer by itself."""
