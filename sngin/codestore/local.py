"""The folder code store, sngin's embedded default: <code dir>/<host>/<path>/index.lua."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import trio

from sngin.codestore import Source

if TYPE_CHECKING:
    from pathlib import Path

SCRIPT_NAME = "index.lua"
MAX_SCRIPT_BYTES = 4 * 1024 * 1024


def script_file(root: Path, key: str) -> Path | None:
    """The file for a key, or None if it would resolve outside the tenant's folder (symlinks)."""
    tenant = key.split("/", 1)[0]
    candidate = (root / key / SCRIPT_NAME).resolve()
    if not candidate.is_relative_to((root / tenant).resolve()):
        return None
    return candidate


def read_script(root: Path, key: str) -> Source | None:
    """Blocking read of one script; the version is a hash of its bytes."""
    path = script_file(root, key)
    if path is None or not path.is_file():
        return None
    with path.open("rb") as handle:
        text = handle.read(MAX_SCRIPT_BYTES + 1)
    if len(text) > MAX_SCRIPT_BYTES:
        text = b"error('script larger than 4 MiB')"
    return Source(text=text, version=hashlib.blake2b(text, digest_size=12).hexdigest())


class LocalStore:
    """Reads scripts from a folder, off the event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def fetch(self, key: str) -> Source | None:
        return await trio.to_thread.run_sync(read_script, self.root, key)
