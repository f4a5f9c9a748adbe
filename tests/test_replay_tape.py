"""The tape (sandbox/tape.py, prelude 06-environment): a request's time and randomness are
kept for its replay bundle and given back, in order, when the bundle is replayed; requests
interleaved in one worker each keep their own."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from sandbox.protocol import Job, Request, Tape
from sandbox.runtime import TenantRuntime

_versions = itertools.count()

DRAWS = """
local parts = {math.random(), math.random(1, 1000000), os.time(), os.date("!%Y-%m-%d %H:%M:%S"),
               os.clock(), crypto.uuid(), crypto.random(8):byte(1, 8)}
for i, v in ipairs(parts) do parts[i] = tostring(v) end
local said = table.concat(parts, " ")
if request.query.fail then error("failed after " .. said) end
return said
"""


@pytest.fixture
def runtime():
    rt = TenantRuntime("a.test")
    yield rt
    rt.close()


def job(source: str, *, query: bytes = b"", record: bool = False,
        replay: Tape | None = None) -> Job:  # fmt: skip
    return Job(
        tenant="a.test", key="a.test/x", version=str(next(_versions)), source=source.encode(),
        request=Request(method="GET", path="/x", querystring=query), record=record,
        replay=replay,
    )  # fmt: skip


def test_a_failed_run_carries_its_tape_and_a_replay_gives_the_same_values(runtime):
    failed = runtime.run(job(DRAWS, query=b"fail=1"))
    assert failed.error == "lua_error"
    tape = failed.tape
    assert tape is not None
    assert sorted(tape) == ["clock", "crypto_random", "random", "time", "uuid"]
    assert len(tape["random"]) == 2  # both draws, in order
    assert len(tape["time"]) == 2  # os.time(), and os.date's "now"
    # Through the wire as the server stores it (JSON: crypto's bytes as base64).
    tape = msgspec.json.decode(msgspec.json.encode(tape), type=Tape)
    again = runtime.run(job(DRAWS, query=b"fail=1", replay=tape))
    assert again.message == failed.message  # the same numbers, time, clock and bytes
    assert again.beyond_tape == 0
    fresh = runtime.run(job(DRAWS, query=b"fail=1"))
    assert fresh.message != failed.message  # (without the tape: other draws)


def test_a_successful_run_carries_no_tape_unless_recorded(runtime):
    plain = runtime.run(job(DRAWS))
    assert plain.error is None
    assert plain.tape is None
    recorded = runtime.run(job(DRAWS, record=True))
    assert recorded.tape is not None
    assert len(recorded.tape["uuid"]) == 1


def test_a_replay_past_the_recording_gives_live_values_and_counts_them(runtime):
    two = runtime.run(job("math.random() math.random() return 'x'", record=True))
    assert two.tape is not None
    three = runtime.run(job(
        "return string.format('%.17g %.17g %.17g', math.random(), math.random(), math.random())",
        replay=two.tape,
    ))  # fmt: skip
    assert three.beyond_tape == 1
    drawn = [float(v) for v in three.body.split()]
    assert drawn[:2] == two.tape["random"]  # the recorded two, then a live one
    assert 0 <= drawn[2] < 1


def test_a_loop_of_draws_keeps_a_bounded_tape(runtime):
    loop = runtime.run(job("for i = 1, 50000 do math.random() end error('x')"))
    assert loop.tape is not None
    assert len(loop.tape["random"]) == 10_000
    assert loop.tape_cut


def test_the_wrappers_keep_the_library_functions_errors(runtime):
    bad = runtime.run(job("return math.random('x')"))
    assert bad.message == "bad argument #1 to '?' (number expected, got string)"  # as LuaJIT's
    date = runtime.run(job("return os.time({})"))
    assert date.message == "field 'day' missing in date table"
    given = runtime.run(job("return tostring(os.time{year=2020, month=1, day=1, hour=0})",
                            record=True))  # fmt: skip
    assert given.tape == {} or given.tape is None  # a given date is not "now": nothing kept


INTERLEAVED = b"""
local first = math.random(1, 1000000000)
local r = http.request("http://up.test/")
local second = math.random(1, 1000000000)
error("draws " .. first .. " " .. second)
"""


def test_interleaved_requests_each_keep_their_own_draws_and_replay_them():
    """Two requests of one tenant in one worker, each waiting on a call while the other draws
    from the same generator: a seed would not give either its numbers back; its tape does."""
    from sandbox.protocol import Call, CallResult, HttpResult, Reply
    from sandbox.worker import Worker

    sent: list[object] = []
    worker = Worker(sent.append)

    def start(job_id: int, tape: Tape | None = None) -> Call:
        worker.handle(msgspec.structs.replace(
            job(INTERLEAVED.decode(), replay=tape), id=job_id, version="interleaved"
        ))  # fmt: skip
        call = sent[-1]
        assert isinstance(call, Call)
        return call

    def answer(call: Call) -> Reply:
        worker.handle(CallResult(id=call.id, call_id=call.call_id, http=HttpResult(status=200)))
        reply = sent[-1]
        assert isinstance(reply, Reply)
        return reply

    one, two = start(1), start(2)  # both drew their first number, in turn
    assert one.tape is not None  # (each came with its call)
    assert two.tape is not None
    first_one, first_two = answer(one), answer(two)
    assert first_one.error == first_two.error == "lua_error"
    for reply, call in ((first_one, one), (first_two, two)):
        assert reply.tape is not None
        recorded = {"random": call.tape["random"] + reply.tape["random"]}
        assert len(recorded["random"]) == 2  # its own two draws, not the other's
        assert reply.message.endswith(" ".join(str(int(v)) for v in recorded["random"]))
        # Replayed alone, interleaved with nothing, it draws the same two numbers.
        again = answer(start(10 + reply.id, recorded))
        assert again.message == reply.message
        assert again.beyond_tape == 0
    assert first_one.message != first_two.message
