"""Lua 5.1 source compatibility: rewrite string escapes PUC Lua 5.1 accepts and LuaJIT rejects.

PUC Lua 5.1 reads an unknown escape `\\X` as `X` (scripts written for webscript.io use e.g.
"^\\&+"); LuaJIT refuses them. A small tokenizer walks the source (comments, long brackets and
quoted strings) and drops the backslash of such escapes inside quoted strings only.
"""

from __future__ import annotations

from typing import Final

# Escapes LuaJIT 2.1 understands after a backslash (digits, x, z, u and newlines handled below).
SIMPLE_ESCAPES: Final = frozenset(b"abfnrtv\\\"'")
HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def _long_bracket(source: bytes, i: int) -> int | None:
    """If source[i:] opens a long bracket `[==[`, its level; else None."""
    if source[i : i + 1] != b"[":
        return None
    j = i + 1
    while source[j : j + 1] == b"=":
        j += 1
    return j - i - 1 if source[j : j + 1] == b"[" else None


def _skip_long(source: bytes, i: int, level: int) -> int:
    """Index just past the long bracket opened at i (or the end of the source)."""
    close = b"]" + b"=" * level + b"]"
    end = source.find(close, i + level + 2)
    return len(source) if end < 0 else end + len(close)


def _valid_escape(source: bytes, i: int) -> bool:
    """Whether the escape whose backslash is at i is one LuaJIT accepts."""
    if i + 1 >= len(source):
        return True  # an unfinished string: let the compiler report it
    c = source[i + 1]
    if c in SIMPLE_ESCAPES or c in b"\r\n" or c in b"0123456789" or c == ord("z"):
        return True
    if c == ord("x"):
        return all(source[k] in HEX for k in range(i + 2, i + 4) if k < len(source)) and (
            i + 3 < len(source)
        )
    if c == ord("u"):
        return source[i + 2 : i + 3] == b"{"
    return False


def rewrite_escapes(source: bytes) -> bytes:
    """The source with LuaJIT-invalid escapes in quoted strings replaced by the bare character."""
    if b"\\" not in source:
        return source
    out = bytearray()
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == ord("-") and source[i : i + 2] == b"--":
            level = _long_bracket(source, i + 2)
            if level is not None:
                end = _skip_long(source, i + 2, level)
            else:
                newline = source.find(b"\n", i)
                end = n if newline < 0 else newline
            out += source[i:end]
            i = end
        elif c == ord("["):
            level = _long_bracket(source, i)
            end = _skip_long(source, i, level) if level is not None else i + 1
            out += source[i:end]
            i = end
        elif c in b"\"'":
            out.append(c)
            i += 1
            while i < n and source[i] != c and source[i] != ord("\n"):
                if source[i] == ord("\\"):
                    if _valid_escape(source, i):
                        out += source[i : i + 2]
                    else:
                        out.append(source[i + 1])  # PUC 5.1: `\X` is `X`
                    i += 2
                else:
                    out.append(source[i])
                    i += 1
            if i < n:
                out.append(source[i])
                i += 1
        else:
            out.append(c)
            i += 1
    return bytes(out)
