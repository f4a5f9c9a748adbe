"""A file replaced whole: written beside its target, synced, then renamed over it, so a reader
sees the old file or the new one, never part of one (the disk mirror, the folder store's
management writes)."""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def write_atomically(target: Path, data: bytes, temp_prefix: str) -> None:
    """OSError if it cannot be done; the temporary file is gone either way."""
    temporary = target.parent / f"{temp_prefix}{secrets.token_hex(8)}"
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)  # (renamed away when it worked)
