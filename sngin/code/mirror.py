"""DiskMirror: a local copy of every fetched S3 script, so a restart neither storms S3 nor fails
when S3 is down.

One file per key, named by a hash of the key (no key can escape the folder): a JSON header
line (key, ETag, Last-Modified, length) and the body. Writes go to a temporary file that is
renamed into place; a file whose length does not match its header is never served. Bounded by
bytes, least recently used out. Blocking file work runs in threads, one operation at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from sngin.code.atomic_file import write_atomically
from sngin.code.store import Source

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX: Final = ".lua"
TEMP_PREFIX: Final = ".tmp-"
MAX_HEADER_BYTES: Final = 16 * 1024


def file_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest() + SUFFIX


@dataclass(frozen=True, slots=True)
class Absent:
    """The store said there is no such object (kept for a tenant's configuration, so a node
    restarted during an outage knows a tenant has none)."""


ABSENT: Final = Absent()
Mirrored = Source | Absent


def encode(key: str, source: Mirrored) -> bytes:
    if isinstance(source, Absent):
        return json.dumps({"key": key, "absent": True, "length": 0}).encode() + b"\n"
    header = {
        "key": key,
        "etag": source.version,
        "last_modified": source.last_modified,
        "length": len(source.text),
    }
    return json.dumps(header).encode() + b"\n" + source.text


def decode(data: bytes) -> tuple[str, Mirrored] | None:
    """The key and source in a mirror file, or None if it is damaged or incomplete."""
    header_line, newline, body = data.partition(b"\n")
    if not newline or len(header_line) > MAX_HEADER_BYTES:
        return None
    try:
        header = json.loads(header_line)
        key, length = header["key"], header["length"]
        if header.get("absent") is True:
            return (key, ABSENT) if isinstance(key, str) and length == len(body) == 0 else None
        etag = header["etag"]
        last_modified = header.get("last_modified")
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(key, str) or not isinstance(etag, str) or length != len(body):
        return None
    return key, Source(text=body, version=etag, last_modified=last_modified)


class DiskMirror:
    """The mirror folder for one code location (endpoint, bucket and prefix)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> file size, LRU order
        self._absent: set[str] = set()  # keys whose file records an absence
        self._bytes = 0
        self._lock = trio.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._index)

    async def open(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._scan)

    def _scan(self) -> None:
        """Index what a previous run left; drop temporary and damaged files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        for path in self.folder.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                path.unlink(missing_ok=True)  # an interrupted write
                continue
            if not path.name.endswith(SUFFIX):
                continue
            decoded = decode(path.read_bytes())
            if decoded is None or file_name(decoded[0]) != path.name:
                log.warning("removing damaged mirror file %s", path.name)
                path.unlink(missing_ok=True)
                continue
            stat = path.stat()
            found.append((stat.st_mtime, decoded[0], stat.st_size))
            if isinstance(decoded[1], Absent):
                self._absent.add(decoded[0])
        for _, key, size in sorted(found):
            self._index[key] = size
            self._bytes += size
        self._unlink_all(self._over_budget())
        log.info("mirror: %d scripts, %d bytes in %s", len(self._index), self._bytes, self.folder)

    # The index is only changed on the event loop; threads do file work only.

    def records_absence(self, key: str) -> bool:
        return key in self._absent

    async def read(self, key: str) -> Mirrored | None:
        if key not in self._index:
            return None
        async with self._lock:
            source = await trio.to_thread.run_sync(self._read_file, key)
            if source is None:
                self._forget(key)
            elif key in self._index:
                self._index.move_to_end(key)
        return source

    def _read_file(self, key: str) -> Mirrored | None:
        path = self.folder / file_name(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        decoded = decode(data)
        if decoded is None or decoded[0] != key:
            log.warning("removing damaged mirror file %s", path.name)
            path.unlink(missing_ok=True)
            return None
        return decoded[1]

    async def write(self, key: str, source: Mirrored, still_wanted: Callable[[], bool]) -> None:
        """Store source (or an absence) for key unless still_wanted() says a purge has covered
        it meanwhile."""
        async with self._lock:
            if not still_wanted():
                return
            size = await trio.to_thread.run_sync(self._write_file, key, source)
            if size is None:
                return
            self._forget(key)
            self._index[key] = size
            self._bytes += size
            if isinstance(source, Absent):
                self._absent.add(key)
            victims = self._over_budget()
            await trio.to_thread.run_sync(self._unlink_all, victims)

    def _write_file(self, key: str, source: Mirrored) -> int | None:
        data = encode(key, source)
        if len(data) > self.max_bytes:
            return None
        try:
            write_atomically(self.folder / file_name(key), data, TEMP_PREFIX)
        except OSError as exc:
            log.warning("cannot write mirror file for %s: %s", key, exc)
            return None
        return len(data)

    def touch(self, key: str) -> None:
        if key in self._index:
            self._index.move_to_end(key)

    async def delete(self, key: str) -> bool:
        return await self.purge(lambda candidate: candidate == key) > 0

    async def purge(self, covers: Callable[[str], bool]) -> int:
        async with self._lock:
            keys = [key for key in self._index if covers(key)]
            for key in keys:
                self._forget(key)
            await trio.to_thread.run_sync(self._unlink_all, keys)
            return len(keys)

    def _unlink_all(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(OSError):
                (self.folder / file_name(key)).unlink(missing_ok=True)

    def _forget(self, key: str) -> None:
        self._absent.discard(key)
        size = self._index.pop(key, None)
        if size is not None:
            self._bytes -= size

    def _over_budget(self) -> list[str]:
        """Drop least recently used keys from the index until within budget; returns them."""
        victims = []
        while self._bytes > self.max_bytes and self._index:
            key = next(iter(self._index))
            self._forget(key)
            victims.append(key)
        return victims


def mirror_folder(app_path: Path, location: str) -> Path:
    """The folder for one code location, so a changed bucket or prefix never serves old code."""
    return app_path / "mirror" / hashlib.sha256(location.encode()).hexdigest()[:24]
