"""A hardened LuaJIT runtime per tenant: compiles scripts once, runs each request in a fresh env."""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import lupa.luajit21 as lupa
import msgspec

from sandbox import compat, host, oauth1, request
from sandbox.protocol import (
    BAD_SOURCE,
    ERROR_KINDS,
    INVALID_RESPONSE,
    LUA_ERROR,
    MEMORY_LIMIT,
    METHOD_NOT_ALLOWED,
    Job,
    Reply,
    WireLimits,
)
from sandbox.tape import RunTape

# The prelude's parts, by concern (sandbox/lua/prelude/NN-name.lua), joined in name order into
# the one chunk that prelude_bytecode() compiles once per process.
PRELUDE_PARTS: Final = tuple(
    sorted(
        (p for p in resources.files("sandbox").joinpath("lua/prelude").iterdir()
         if p.name.endswith(".lua")),
        key=lambda p: p.name,
    )
)  # fmt: skip
PRELUDE: Final = b"\n".join(part.read_bytes() for part in PRELUDE_PARTS)
MAX_COMPILED: Final = 256
MAX_CONFIG_TABLES: Final = 16  # a tenant's configurations seen lately (usually one)
UNLIMITED: Final = 0

# lupa's table of Python references: the prelude's harden() removes it from the registry and
# hands it to Python, which puts it back only to close the state.
REFERENCES: Final = b"LUPA_PYTHON_REFERENCES_TABLE"


# Guarded once per process: they hold no state of a runtime or tenant.
STATELESS_HOST_FUNCTIONS: Final = {
    b"hash": host.guard("crypto", host.hash_digest),
    b"hmac": host.guard("crypto.hmac", host.hmac_digest),
    b"b64encode": host.guard("base64.encode", host.b64encode),
    b"b64decode": host.guard("base64.decode", host.b64decode),
    b"oauth_sign": host.guard("http.request", oauth1.sign_request),
}


class RandomSeeds:
    """48-bit seeds for each request's math.random, from the OS's CSPRNG 256 at a time: one
    getrandom per 256 requests instead of one per request."""

    BATCH: Final = 256

    def __init__(self) -> None:
        self._bytes = b""
        self._at = 0

    def next(self) -> int:
        if self._at >= len(self._bytes):
            self._bytes, self._at = os.urandom(6 * self.BATCH), 0
        seed = int.from_bytes(self._bytes[self._at : self._at + 6], "big")
        self._at += 6
        return seed


random_seeds = RandomSeeds()


@functools.cache
def prelude_bytecode() -> bytes:
    """The prelude compiled once per process: loading bytecode is ~3x faster than parsing it.

    Only this trusted chunk is ever loaded as bytecode; tenant code is compiled as text.
    """
    compiler = lupa.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
    dump = compiler.eval(
        "function(src) return string.dump(assert(load(src, '=sngin', 't')), true) end"
    )
    return bytes(dump(PRELUDE))


def _refuse_attribute(obj: object, name: object, is_setting: bool) -> object:
    # Backstop: no Python object should ever reach Lua, but if one did, it exposes nothing.
    raise AttributeError("access denied")


class TenantRuntime:
    """One LuaJIT state owned by one tenant; never reused for another tenant."""

    def __init__(self, tenant: str, log_sink: Callable[[int, bytes], None] | None = None) -> None:
        self.tenant = tenant
        self.log_sink = log_sink  # print/log lines as they happen (request id, line)
        self._lua = lupa.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            attribute_filter=_refuse_attribute,
            unpack_returned_tuples=True,
            max_memory=UNLIMITED,  # a counting allocator; each request sets its own cap
        )
        self._api = self._lua.execute(prelude_bytecode(), name=b"=sngin", mode=b"b")
        self._host_libraries = self._make_host_libraries()
        self._api[b"module_libraries"](self._host_libraries)
        self._lift = self._api[b"wrap_host"](host.guard("lift", self._lift_memory_limit))
        self._registry, self._saved_references = self._harden()
        # Looked up once: indexing the API table from Python crosses into Lua each time.
        self._new_env, self._begin = self._api[b"new_env"], self._api[b"begin"]
        self._step, self._compile = self._api[b"step"], self._api[b"compile"]
        self._compiled: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._limits_tables: dict[WireLimits, Any] = {}
        self._env_tables: dict[tuple[tuple[str, str], ...], Any] = {}
        self._active = 0
        self._memory_base = 0
        self._running: RequestRun | None = None  # the request a step is running

    def _make_host_libraries(self) -> Any:
        lua, api = self._lua, self._api
        self._json_decoder = host.JsonDecoder(lua.table_from, api[b"json_null"])
        functions = {
            **STATELESS_HOST_FUNCTIONS,
            b"random": host.guard("crypto.random", self._random_bytes),
            b"uuid": host.guard("crypto.uuid", self._new_uuid),
            b"emit": host.guard("log", self._emit_log),
            b"json_decode": host.guard("json.decode", self._json_decoder),
        }
        # One call: Lua wraps each guarded callable and builds the libraries around them.
        return api[b"host_libraries"](lua.table_from(functions))

    def _harden(self) -> tuple[Any, Any]:
        """Strip lupa's `python` bridge and every unsafe library from the real Lua state (in
        Lua, one call: done from Python it cost ~100 crossings per runtime)."""
        registry, saved_references = self._api[b"harden"]()
        return registry, saved_references

    # crypto.random and crypto.uuid: kept on the running request's tape (given back replaying).

    def _random_bytes(self, count: Any) -> host.HostResult:
        run = self._running
        if run is None:
            return host.random_bytes(count)
        return (run.tape.given("crypto_random", lambda: host.random_bytes(count)[0]),)

    def _new_uuid(self) -> host.HostResult:
        run = self._running
        if run is None:
            return host.new_uuid()
        return (run.tape.given("uuid", lambda: host.new_uuid()[0]),)

    def _emit_log(self, request_id: Any, line: Any) -> tuple[()]:
        if self.log_sink is not None and isinstance(line, bytes):
            self.log_sink(int(request_id), line)
        return ()

    def _lift_memory_limit(self) -> tuple[()]:
        self._lua.set_max_memory(UNLIMITED)
        return ()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Release the Lua state. lupa's finalisers need their references table back first."""
        if getattr(self, "_lua", None) is None:
            return
        # lupa's finaliser for each wrapped host function unrefs it from this table; without it
        # the finaliser would index nil and crash the process when the state is closed.
        self._registry[REFERENCES] = self._saved_references
        decoder = getattr(self, "_json_decoder", None)
        if decoder is not None:
            decoder.forget_runtime()  # else the state outlives close() in a reference cycle
        self._compiled.clear()
        # Lua objects held on the Python side keep the state alive through a reference cycle
        # (each holds its runtime): drop them all, so the state is freed now, not at the next
        # cyclic collection.
        self._limits_tables.clear()
        self._env_tables.clear()
        self._api = self._host_libraries = self._registry = self._saved_references = None
        self._lift = self._new_env = self._begin = self._step = self._compile = None
        self._lua = None

    def compiled_count(self) -> int:
        return len(self._compiled)

    def memory_used(self) -> int:
        return int(self._lua.get_memory_used())

    def _factory(self, job: Job) -> tuple[Any, Reply | None]:
        cache_key = (job.key, job.version)
        factory = self._compiled.get(cache_key)
        if factory is not None:
            self._compiled.move_to_end(cache_key)
            return factory, None
        if job.source is None:
            return None, Reply(need_source=True)
        if job.source.startswith(b"\x1b"):
            message = f"{job.key}: precompiled bytecode is not accepted; store Lua source text"
            return None, Reply(error=BAD_SOURCE, message=message)
        chunkname = b"=" + job.key.encode()
        factory, err = self._compile(job.source, chunkname)
        if factory is None and "invalid escape sequence" in _text(err):
            # A Lua 5.1 escape LuaJIT rejects: rewritten only when there is one (the rewrite
            # walks the source in Python; most scripts never need it).
            factory, err = self._compile(compat.rewrite_escapes(job.source), chunkname)
        if factory is None:
            return None, Reply(error=BAD_SOURCE, message=_text(err))
        self._compiled[cache_key] = factory
        if len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return factory, None

    # --- running requests ----------------------------------------------------------------------

    def begin(self, job: Job) -> RequestRun | Reply:
        """Prepare a request's coroutine; a Reply instead when it cannot start (bad source...)."""
        factory, failure = self._factory(job)
        if failure is not None:
            return msgspec.structs.replace(failure, id=job.id)
        if job.check_only:
            return Reply(id=job.id, status=204)
        lua = self._lua
        try:
            req = request.build(job.request, lua.table_from)
            limits = self._limits_table(job.limits)
            tenant_env = self._env_table(job.env)
            replay = None if job.replay is None else self._replay_table(job.replay)
            env, collect, lua_tape = self._new_env(
                req, self._host_libraries, limits, job.id, tenant_env, replay
            )
            method = job.request.method.lower().encode()
            thread = self._begin(factory, env, req, method, random_seeds.next(), limits, self._lift)
        except lupa.LuaMemoryError:
            return Reply(id=job.id, error=MEMORY_LIMIT, message=memory_message(job))
        if not self._active:
            # All of a tenant's requests in flight in this worker share one memory budget,
            # counted from what the runtime held when the first of them began.
            self._memory_base = lua.get_memory_used()
        self._active += 1
        return RequestRun(
            job=job, thread=thread, collect=collect, tape=RunTape(lua_tape, job.replay)
        )

    def _replay_table(self, tape: Any) -> Any:
        """The Lua side's recorded values, per kind (crypto's stay in Python)."""
        table_from = self._lua.table_from
        return table_from(
            {k.encode(): table_from(v) for k, v in tape.items() if k in ("random", "time", "clock")}
        )

    # The per-configuration tables, built once per value rather than per request. Sharing them
    # is safe: the prelude only reads `limits`, and tenant code sees `env` only through a
    # fresh read-only proxy whose metatable is locked (06-environment: read_only).

    def _limits_table(self, limits: WireLimits) -> Any:
        table = self._limits_tables.get(limits)
        if table is None:
            if len(self._limits_tables) >= MAX_CONFIG_TABLES:
                self._limits_tables.clear()
            table = self._limits_tables[limits] = self._lua.table_from(
                {
                    b"max_body_bytes": limits.max_body_bytes,
                    b"max_headers": limits.max_headers,
                    b"max_header_bytes": limits.max_header_bytes,
                    b"max_log_lines": limits.max_log_lines,
                    b"max_log_bytes": limits.max_log_bytes,
                }
            )
        return table

    def _env_table(self, env: dict[str, str]) -> Any:
        key = tuple(env.items())
        table = self._env_tables.get(key)
        if table is None:
            if len(self._env_tables) >= MAX_CONFIG_TABLES:
                self._env_tables.clear()
            table = self._env_tables[key] = self._lua.table_from(
                {k.encode(): v.encode() for k, v in env.items()}
            )
        return table

    def step(self, run: RequestRun, answer: Any = None) -> Any:
        """Resume a request: its next platform call (a Lua table), or its final Reply."""
        lua = self._lua
        lua.set_max_memory(self._memory_base + run.job.limits.memory_bytes)
        self._running = run
        try:
            outcome = self._step(run.thread, answer)
        except lupa.LuaMemoryError:
            outcome = (b"memory_limit", b"")
        finally:
            self._running = None
            lua.set_max_memory(UNLIMITED)
        if outcome[0] == b"call":
            return outcome[1]
        self._active -= 1
        return self._reply(run, outcome)

    def abandon(self, run: RequestRun) -> None:
        """Forget a request that will never be resumed (its wall time ran out)."""
        self._active -= 1

    def run(self, job: Job, answer_call: CallAnswerer | None = None) -> Reply:
        """Run one request to its end, answering platform calls with answer_call."""
        started = self.begin(job)
        if isinstance(started, Reply):
            return started
        outcome = self.step(started)
        while not isinstance(outcome, Reply):
            answer = answer_call(outcome) if answer_call is not None else None
            outcome = self.step(started, answer if answer is not None else self.refuse_call())
        return outcome

    def refuse_call(self) -> Any:
        return self._lua.table_from({b"raise": b"not available in this context"})

    def _reply(self, run: RequestRun, outcome: Any) -> Reply:
        job = run.job
        dropped = run.collect()
        kind = outcome[0].decode()
        if kind == "ok":
            _, status, body, flat = outcome
            headers = [(flat[i], flat[i + 1]) for i in range(1, len(flat) + 1, 2)]
            reply = Reply(status=int(status), headers=headers, body=body)
        else:
            reply = self._error_reply(job, kind, _text(outcome[1]))
        reply = msgspec.structs.replace(reply, id=job.id, logs_dropped=int(dropped))
        if job.record or job.replay is not None or reply.error is not None:
            tape = run.tape
            reply = msgspec.structs.replace(
                reply, tape=tape.since_last(), tape_cut=tape.was_cut(),
                beyond_tape=tape.beyond_recording(),
            )  # fmt: skip
        return reply

    @staticmethod
    def _error_reply(job: Job, kind: str, message: str) -> Reply:
        if kind not in ERROR_KINDS:
            kind, message = LUA_ERROR, "script failed"
        if kind == METHOD_NOT_ALLOWED:
            return Reply(
                error=kind,
                message=f"method {job.request.method} not allowed",
                allow=message.split(", "),
            )
        if kind == INVALID_RESPONSE:
            message = f"invalid response: {message}"
        if kind == MEMORY_LIMIT:
            message = memory_message(job)
        return Reply(error=kind, message=message)

    def table_from(self, value: Any) -> Any:
        return self._lua.table_from(value)


@dataclass(slots=True)
class RequestRun:
    """A request in progress in this runtime: its job, its Lua thread and its output."""

    job: Job
    thread: Any
    collect: Any
    tape: RunTape


CallAnswerer = Callable[[Any], Any]


def memory_message(job: Job) -> str:
    # lupa's memory error carries no text of its own.
    mib = job.limits.memory_bytes / (1024 * 1024)
    return f"the script exceeded its memory limit of {mib:g} MB"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
