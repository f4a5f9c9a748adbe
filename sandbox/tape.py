"""A request's tape: the time and randomness it was given, for its replay bundle.

The Lua side (prelude 06-environment: new_tape) keeps math.random, os.time and os.clock values
in a table per request; crypto.random and crypto.uuid come from Python and are kept here. The
server gets the values the request was given since the last frame on each Call (so a run
killed by a limit leaves what it had already shown), and the rest on the Reply when it is
recorded. Replaying, the recorded values are given back in order, per kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from sandbox.protocol import Tape, TapeValue

LUA_KINDS: Final = (b"random", b"time", b"clock")
MAX_PYTHON_VALUES: Final = 10_000  # as the Lua side's MAX_TAPE


class RunTape:
    """One request's tape, on both sides of the bridge."""

    __slots__ = ("at", "beyond", "cut", "kept", "lua", "replay", "sent", "sent_kept", "sent_lua")

    def __init__(self, lua: Any, replay: Tape | None) -> None:
        self.lua = lua  # the Lua tape table (per kind, with the count `n`)
        self.kept: dict[str, list[TapeValue]] = {}
        # Made at the first value sent: most requests are given none (every request has a tape).
        self.sent_lua: dict[bytes, int] | None = None
        self.sent_kept: dict[str, int] = {}
        self.sent = 0  # the Lua side's values sent so far
        self.replay = replay
        self.at: dict[str, int] = {}
        self.beyond = 0
        self.cut = False

    def given(self, kind: str, make: Any, *args: Any) -> TapeValue:
        """A Python-made value (crypto.random, crypto.uuid): the recorded one when replaying."""
        if self.replay is not None:
            queue = self.replay.get(kind, [])
            i = self.at.get(kind, 0)
            if i < len(queue):
                self.at[kind] = i + 1
                return queue[i]
            self.beyond += 1
        value: TapeValue = make(*args)
        kept = self.kept.setdefault(kind, [])
        if len(kept) < MAX_PYTHON_VALUES:
            kept.append(value)
        else:
            self.cut = True
        return value

    def since_last(self) -> Tape | None:
        """The values given since the last call of this (None: none)."""
        out: Tape = {}
        lua = self.lua
        n = lua[b"n"]
        if n > self.sent:
            self.sent = n
            if self.sent_lua is None:
                self.sent_lua = dict.fromkeys(LUA_KINDS, 0)
            for kind in LUA_KINDS:
                values = lua[kind]
                if values is None:  # (made at its kind's first value)
                    continue
                start, end = self.sent_lua[kind], len(values)
                if end > start:
                    out[kind.decode()] = [values[i] for i in range(start + 1, end + 1)]
                    self.sent_lua[kind] = end
        for name, values in self.kept.items():
            start = self.sent_kept.get(name, 0)
            if len(values) > start:
                out[name] = values[start:]
                self.sent_kept[name] = len(values)
        return out or None

    def beyond_recording(self) -> int:
        return self.beyond + (int(self.lua[b"beyond"]) if self.replay is not None else 0)

    def was_cut(self) -> bool:
        return self.cut or bool(self.lua[b"cut"])
