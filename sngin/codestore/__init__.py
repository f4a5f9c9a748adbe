"""Where tenants' scripts live: the CodeStore seam and the Source it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Source:
    text: bytes
    version: str


class CodeStore(Protocol):
    async def fetch(self, key: str) -> Source | None:
        """The script for key ('host/a/b' -> host/a/b/index.lua), or None if there is none."""
        ...
