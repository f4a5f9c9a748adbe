"""Running a bundle again: its script (or a changed source) in a throwaway runtime, with every
platform call answered from the recording in order, time and randomness as recorded, and no
network. A call the code makes differently (another kind, other arguments, one more) is a
divergence: reported, and answered with an error the script sees."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final

import msgspec

from sandbox.protocol import (
    AlertCall,
    CallResult,
    EmailCall,
    HttpCall,
    Job,
    ModuleCall,
    ModuleSource,
    Request,
    StorageCall,
)
from sngin.replay.recorder import private_free

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.protocol import Call, CallRequest, Reply, WireLimits
    from sngin.replay.bundle import Bundle

REPLAY_SUFFIX: Final = "#replay"


def describe(asked: CallRequest) -> str:
    if isinstance(asked, HttpCall):
        return f"http.request {asked.method} {asked.url}"
    if isinstance(asked, ModuleCall):
        return f"require {asked.search.split('|', 1)[0]!r}"
    if isinstance(asked, StorageCall):
        return f"{asked.op} {asked.key.decode('utf-8', 'replace')!r}"
    if isinstance(asked, EmailCall):
        return f"email.send to {', '.join(asked.to)}"
    assert isinstance(asked, AlertCall)
    return f"alert.{asked.kind}"


def comparable(asked: CallRequest) -> Any:
    """What must be equal for a call to be the recorded one (a module's search, not what the
    worker already had)."""
    if isinstance(asked, ModuleCall):
        return ("module", asked.search)
    return msgspec.to_builtins(private_free(asked))


class ReplayCalls:
    def __init__(self, bundle: Bundle) -> None:
        self._calls = bundle.calls
        self._modules = {m.location: m for m in bundle.modules}
        self._cut = bundle.calls_cut
        self.at = 0
        self.divergences: list[str] = []

    def _diverged(self, call: Call, why: str) -> CallResult:
        self.divergences.append(why)
        return CallResult(id=call.id, call_id=call.call_id, error=f"replay: {why}")

    async def __call__(self, call: Call) -> CallResult:
        n = self.at + 1
        asked = call.request
        if self.at >= len(self._calls):
            more = " (the bundle did not keep all its calls)" if self._cut else ""
            return self._diverged(
                call, f"call {n} asked for {describe(asked)}; the recording has no call {n}{more}"
            )
        recorded = self._calls[self.at]
        if comparable(asked) != comparable(recorded.request):
            return self._diverged(
                call,
                f"call {n} asked for {describe(asked)}; the recording has "
                f"{describe(recorded.request)}",
            )
        self.at = n
        result = msgspec.structs.replace(recorded.result, id=call.id, call_id=call.call_id)
        module = result.module
        if module is not None and module.unchanged:  # the live worker had it: the text is here
            kept = self._modules.get(module.location)
            if kept is not None:
                result = msgspec.structs.replace(result, module=ModuleSource(
                    text=kept.text, version=kept.version, chunkname=module.chunkname,
                    location=module.location,
                ))  # fmt: skip
        return result

    def unused(self) -> int:
        return len(self._calls) - self.at


def replay_job(bundle: Bundle, source: bytes | None, limits: WireLimits) -> Job:
    text = bundle.source if source is None else source
    request = Request(
        method=bundle.method, path=bundle.path, querystring=bundle.query,
        headers=bundle.headers, body=bundle.body, host=bundle.tenant, id=bundle.id,
    )  # fmt: skip
    return Job(
        tenant=bundle.tenant + REPLAY_SUFFIX, key=bundle.script,
        version=hashlib.sha256(text).hexdigest(), request=request, limits=limits, source=text,
        env=bundle.env, throwaway=True, replay=bundle.tape,
    )  # fmt: skip


def whole_body(body: bytes) -> dict[str, Any]:
    return {"body": body.decode("utf-8", "replace")}


def verdict(bundle: Bundle, reply: Reply | None, failure: str | None, calls: ReplayCalls,
            echo: Callable[[bytes], dict[str, Any]] = whole_body) -> dict[str, Any]:  # fmt: skip
    """The replay's answer: what it returned (its body as `echo` shows it: the server cuts
    it as a preview's), and whether it matched the recording (on the whole body)."""
    divergences = list(calls.divergences)
    if calls.unused():
        divergences.append(f"the recording has {calls.unused()} call(s) the run did not make")
    if reply is None:
        status, body, error = 500, b"", failure
        headers: list[list[str]] = []
    else:
        error = reply.message if reply.error is not None else None
        status = reply.status if reply.error is None else 500
        body = reply.body if reply.error is None else reply.message.encode()
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in reply.headers]
    outcome = bundle.outcome
    if outcome.limit is not None:
        matched = failure is not None and failure == outcome.error
    else:
        matched = status == outcome.status and body[: len(outcome.body) or None] == outcome.body
        matched = matched and (not outcome.body_truncated or len(body) > len(outcome.body))
    return {
        "status": status, "headers": headers, **echo(body), "error": error, "matched": matched,
        "divergences": divergences,
        "beyond_tape": 0 if reply is None else reply.beyond_tape,
        "recorded": {"status": outcome.status, "error": outcome.error, "limit": outcome.limit},
    }  # fmt: skip
