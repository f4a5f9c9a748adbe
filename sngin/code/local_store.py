"""The folder code store, sngin's embedded default: <code dir>/<host>/<path>/index.lua."""

from __future__ import annotations

import errno
import hashlib
import os
from typing import TYPE_CHECKING

import trio

from sngin.code.store import Source
from sngin.errors import CodeFetchError
from sngin.names import covering

if TYPE_CHECKING:
    from pathlib import Path

    from sngin.observe.notes import FetchNote

SCRIPT_NAME = "index.lua"
MAX_SCRIPT_BYTES = 4 * 1024 * 1024
MAX_CACHED = 10_000
NO_SUCH_FILE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})

# (device, inode, size, mtime_ns): a file whose signature is unchanged has unchanged bytes.
Signature = tuple[int, int, int, int]


def script_file(root: Path, key: str) -> Path | None:
    """The file for a key ('host/a/b' -> a script's index.lua; 'host//lib/x.lua' -> a module),
    or None if it would resolve outside the tenant's folder (symlinks included)."""
    tenant, sep, module = key.partition("//")
    if sep:
        candidate = (root / tenant / module).resolve()
    else:
        tenant = key.split("/", 1)[0]
        candidate = (root / key / SCRIPT_NAME).resolve()
    if not candidate.is_relative_to((root / tenant).resolve()):
        return None
    return candidate


def signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_script(root: Path, key: str) -> Source | None:
    """Blocking read of one script; the version is a hash of its bytes. A name no file can
    have (a path segment over the filesystem's 255 bytes) is simply no script."""
    path = script_file(root, key)
    try:
        if path is None or not path.is_file():
            return None
        with path.open("rb") as handle:
            text = handle.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        if exc.errno in NO_SUCH_FILE:
            return None
        raise CodeFetchError(f"cannot read the script: {exc.strerror}") from None
    if len(text) > MAX_SCRIPT_BYTES:
        text = b"error('script larger than 4 MiB', 0)"
    return Source(text=text, version=hashlib.blake2b(text, digest_size=12).hexdigest())


def _note(note: FetchNote | None, outcome: str) -> None:
    if note is not None:
        note.outcome = outcome


class LocalStore:
    """Reads scripts from a folder. An edit is visible on the next request: each fetch compares
    the file's stat signature with the cached copy's and re-reads (off the event loop) on change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[Path, Signature, Source]] = {}
        # Keys whose file was missing, with the path checked: most tenants have no
        # _sngin.json, and a stat of a missing file is far cheaper than a hop to a thread.
        self._missing: dict[str, Path] = {}

    async def fetch(
        self,
        key: str,
        *,
        revalidate: bool = False,
        note: FetchNote | None = None,
        owner: str | None = None,  # every key names its tenant here
    ) -> Source | None:
        # Every fetch checks the file, so `$cb` (revalidate) needs nothing more here.
        cached = self._cache.get(key)
        # One stat of a local file costs microseconds, less than a hop to a thread.
        if cached is not None and signature(cached[0]) == cached[1]:
            _note(note, "hit")
            return cached[2]
        missing = self._missing.get(key)
        if missing is not None and signature(missing) is None:
            _note(note, "hit")
            return None
        _note(note, "miss")
        path, source, stamp = await trio.to_thread.run_sync(self._load, key)
        self._remember(key, path, source, stamp)
        return source

    def _remember(
        self, key: str, path: Path | None, source: Source | None, stamp: Signature | None
    ) -> None:
        self._cache.pop(key, None)
        self._missing.pop(key, None)
        if path is None:
            return
        if source is None:
            store = self._missing
            if len(store) >= MAX_CACHED:
                store.pop(next(iter(store)))
            store[key] = path
        elif stamp is not None:
            if len(self._cache) >= MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (path, stamp, source)

    async def probe(self) -> None:
        if not await trio.to_thread.run_sync(self.root.is_dir):
            raise CodeFetchError(f"code folder {self.root.name!r} is missing")

    def statistics(self) -> None:
        return None  # a stat per fetch: nothing worth counting

    def forget_memory(self) -> int:
        """Drop every in-memory copy (each fetch checks its file anyway)."""
        count = len(self._cache)
        self._cache.clear()
        self._missing.clear()
        return count

    async def purge(self, tenant: str, folder: str, *, recursive: bool) -> int:
        """Drop in-memory copies; the next fetch re-reads the file."""
        covers = covering(tenant, folder, recursive=recursive)
        keys = [key for key in self._cache if covers(key)]
        for key in keys:
            del self._cache[key]
        for key in [key for key in self._missing if covers(key)]:
            del self._missing[key]
        return len(keys)

    def _load(self, key: str) -> tuple[Path | None, Source | None, Signature | None]:
        """Blocking: the file's path, its source (None if missing), and a stamp to trust it by
        (None if it changed while being read)."""
        path = script_file(self.root, key)
        if path is None:
            return None, None, None
        before = signature(path)
        source = read_script(self.root, key)
        if source is None or before is None or signature(path) != before:
            return path, source, None
        return path, source, before
