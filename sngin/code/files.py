"""Tenants' code as files, for the management API: list, read, and conditional writes and
deletes, the same on every store. A file's `etag` is the SHA-256 of its bytes (hex), defined by
sngin for every store: S3's ETag is an MD5 only for some uploads, and a folder has none.

`FolderFiles` is the folder store's: writes go to a temporary file renamed into place, the check
and the rename under a lock shared by every process of the node (an flock), so a stale write can
never replace a newer file. The S3 store's is `sngin.code.s3_files`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import trio

from sngin.code.atomic_file import write_atomically
from sngin.code.quota import CodeQuota
from sngin.errors import BadRequest
from sngin.names import CONFIG_NAME, tenant_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

T = TypeVar("T")

MAX_FILE_BYTES: Final = 1024 * 1024  # a script, module or configuration file
MAX_FILE_PATH_BYTES: Final = 512
MAX_DEPTH: Final = 16
_SEGMENT: Final = re.compile(r"[A-Za-z0-9_~+@-][A-Za-z0-9._~+@-]{0,127}\Z")
TEMP_PREFIX: Final = ".sngin-tmp-"
KEPT_VERSIONS: Final = 10  # earlier versions of a file the folder store keeps
VERSION_ID: Final = re.compile(r"[0-9]{20}-[0-9a-f]{16}")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_path(path: str) -> str:
    """A tenant file's path as the API accepts it: `index.lua`, `a/b/index.lua`, a module
    `lib/x.lua`, or `_sngin.json`; plain segments only (no `.`, `..`, empty or hidden segment,
    no control character), so a path never leaves its tenant's folder or prefix."""
    if len(path.encode("utf-8", "surrogateescape")) > MAX_FILE_PATH_BYTES:
        raise BadRequest(f"path longer than {MAX_FILE_PATH_BYTES} bytes")
    segments = path.split("/")
    if len(segments) > MAX_DEPTH:
        raise BadRequest(f"path deeper than {MAX_DEPTH} folders")
    if not all(_SEGMENT.match(segment) for segment in segments):
        raise BadRequest(
            "path segments may hold letters, digits and . _ ~ + @ - (not first: .), nothing else"
        )
    if path == CONFIG_NAME or path.endswith(".lua"):
        return path
    raise BadRequest(f"a tenant's files are .lua scripts and modules, and {CONFIG_NAME}")


def text_or_none(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    etag: str
    modified: str  # ISO 8601, UTC


@dataclass(frozen=True, slots=True)
class FileVersion:
    content: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class VersionInfo:
    id: str
    etag: str
    size: int
    saved: str  # ISO 8601, UTC: when it stopped being the current version (S3: was written)


class Conflict(Exception):
    """The file is not the version the write expected; `current` is what it is (None: none)."""

    def __init__(self, current: FileVersion | None) -> None:
        super().__init__("the file changed")
        self.current = current


class FileTooLarge(BadRequest):
    pass


class HashCache:
    """A file's etag by its (tenant, path), valid while its mtime and size are the same: a
    listing hashes only the files that changed. Bounded: the least recently used go first."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[int, int, str]] = OrderedDict()
        self._max = max_entries

    def get(self, key: tuple[str, str], mtime_ns: int, size: int) -> str | None:
        entry = self._entries.get(key)
        if entry is None or entry[:2] != (mtime_ns, size):
            return None
        self._entries.move_to_end(key)
        return entry[2]

    def put(self, key: tuple[str, str], mtime_ns: int, size: int, etag: str) -> None:
        self._entries[key] = (mtime_ns, size, etag)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class TenantLimiters:
    """One file operation at a time per tenant (a tenant's big listing never holds another
    tenant's calls); a tenant's limiter exists only while it is in use."""

    def __init__(self) -> None:
        self._limiters: dict[str, trio.CapacityLimiter] = {}

    async def run(self, tenant: str, function: Callable[..., T], *args: object) -> T:
        limiter = self._limiters.get(tenant)
        if limiter is None:
            limiter = self._limiters[tenant] = trio.CapacityLimiter(1)
        try:
            return await trio.to_thread.run_sync(function, *args, limiter=limiter)
        finally:
            if not limiter.borrowed_tokens and not limiter.statistics().tasks_waiting:
                self._limiters.pop(tenant, None)


class CodeFiles(Protocol):
    async def tenants(self) -> list[str]: ...

    async def files(self, tenant: str) -> list[FileInfo]: ...

    async def read(self, tenant: str, path: str) -> FileVersion | None: ...

    async def write(self, tenant: str, path: str, data: bytes, *, if_match: str | None) -> str:
        """Store data if the file is at version `if_match` (None: only if there is no file);
        the new etag. Conflict otherwise."""
        ...

    async def delete(self, tenant: str, path: str, *, if_match: str) -> None: ...

    async def history(self, tenant: str, path: str) -> list[VersionInfo]:
        """Earlier versions of the file, newest first (not the current one)."""
        ...

    async def read_version(self, tenant: str, path: str, version_id: str) -> FileVersion | None: ...


def iso_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class FolderFiles:
    def __init__(
        self,
        root: Path,
        locks: Path,
        history: Path | None = None,
        quota: CodeQuota | None = None,
    ) -> None:
        self.root = root
        self._locks = locks  # a lock file per tenant: `<tenant>.lock`
        self._history = history  # where replaced and deleted versions are kept (10 a file)
        self._quota = quota or CodeQuota()
        self._limiters = TenantLimiters()
        self._hashes = HashCache()

    async def _run(self, tenant: str, function: Callable[..., T], *args: object) -> T:
        return await self._limiters.run(tenant, function, *args)

    def _tenant_dir(self, tenant: str) -> Path:
        return self.root / tenant

    def _file(self, tenant: str, path: str) -> Path:
        """The file's location, refused if a symbolic link would take it out of the tenant's
        folder."""
        folder = self._tenant_dir(tenant)
        target = folder / path
        resolved_folder = folder.resolve()
        if not target.resolve().is_relative_to(resolved_folder):
            raise BadRequest("the path leads out of the tenant's folder")
        return target

    async def tenants(self) -> list[str]:
        return await self._run("", self._tenants)

    def _tenants(self) -> list[str]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in self.root.iterdir():
                with contextlib.suppress(BadRequest):
                    if entry.is_dir() and tenant_of(entry.name) == entry.name:
                        found.append(entry.name)
        return sorted(found)

    async def files(self, tenant: str) -> list[FileInfo]:
        return await self._run(tenant, self._files, tenant)

    def _files(self, tenant: str) -> list[FileInfo]:
        folder = self._tenant_dir(tenant)
        found = []
        for directory, subdirectories, names in os.walk(folder):  # symbolic links not followed
            subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
            for name in sorted(names):
                full = Path(directory) / name
                path = full.relative_to(folder).as_posix()
                try:
                    file_path(path)
                    if full.is_symlink():
                        continue
                    stat = full.stat()
                    etag = self._hashes.get((tenant, path), stat.st_mtime_ns, stat.st_size)
                    if etag is None:
                        etag = content_hash(full.read_bytes())
                        self._hashes.put((tenant, path), stat.st_mtime_ns, stat.st_size, etag)
                except (BadRequest, OSError):
                    continue  # not a tenant file (or gone meanwhile)
                found.append(FileInfo(path, stat.st_size, etag, iso_time(stat.st_mtime)))
        return found

    async def read(self, tenant: str, path: str) -> FileVersion | None:
        return await self._run(tenant, self._read, tenant, path)

    def _read(self, tenant: str, path: str) -> FileVersion | None:
        target = self._file(tenant, path)
        try:
            data = target.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return FileVersion(data, content_hash(data))

    async def write(self, tenant: str, path: str, data: bytes, *, if_match: str | None) -> str:
        if len(data) > MAX_FILE_BYTES:
            raise FileTooLarge(f"a file may hold at most {MAX_FILE_BYTES} bytes")
        return await self._run(tenant, self._write, tenant, path, data, if_match)

    def _write(self, tenant: str, path: str, data: bytes, if_match: str | None) -> str:
        target = self._file(tenant, path)
        with self._locked(tenant):
            replaced = self._expect(tenant, path, if_match)
            if self._make_room(tenant, len(data), replaced):
                self._keep(tenant, path, replaced)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, data, TEMP_PREFIX)
        return content_hash(data)

    async def delete(self, tenant: str, path: str, *, if_match: str) -> None:
        await self._run(tenant, self._delete, tenant, path, if_match)

    def _delete(self, tenant: str, path: str, if_match: str) -> None:
        target = self._file(tenant, path)
        with self._locked(tenant):
            self._keep(tenant, path, self._expect(tenant, path, if_match))
            target.unlink()
            # Folders the delete left empty go too, up to the site's own (never it).
            site, folder = self._tenant_dir(tenant), target.parent
            while folder != site and folder.is_relative_to(site):
                try:
                    folder.rmdir()
                except OSError:
                    break  # not empty (or gone): the folders above are not empty either
                folder = folder.parent

    def _expect(self, tenant: str, path: str, if_match: str | None) -> FileVersion | None:
        current = self._read(tenant, path)
        if (current is None) != (if_match is None) or (
            current is not None and current.etag != if_match
        ):
            raise Conflict(current)
        return current

    # --- history: the versions a write or delete replaced, the last KEPT_VERSIONS a file ---

    def _versions_dir(self, tenant: str, path: str) -> Path | None:
        if self._history is None:
            return None
        return self._history / tenant / hashlib.sha256(path.encode()).hexdigest()[:32]

    def _keep(self, tenant: str, path: str, replaced: FileVersion | None) -> None:
        folder = self._versions_dir(tenant, path)
        if folder is None or replaced is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{replaced.etag[:16]}"
        (folder / name).write_bytes(replaced.content)
        for old in sorted(folder.iterdir())[:-KEPT_VERSIONS]:
            old.unlink(missing_ok=True)

    async def history(self, tenant: str, path: str) -> list[VersionInfo]:
        return await self._run(tenant, self._list_versions, tenant, path)

    def _list_versions(self, tenant: str, path: str) -> list[VersionInfo]:
        folder = self._versions_dir(tenant, path)
        if folder is None or not folder.is_dir():
            return []
        found = []
        for entry in sorted(folder.iterdir(), reverse=True):
            if VERSION_ID.fullmatch(entry.name):
                data = entry.read_bytes()
                saved = iso_time(int(entry.name.split("-")[0]) / 1e9)
                found.append(VersionInfo(entry.name, content_hash(data), len(data), saved))
        return found

    async def read_version(self, tenant: str, path: str, version_id: str) -> FileVersion | None:
        return await self._run(tenant, self._read_version, tenant, path, version_id)

    def _read_version(self, tenant: str, path: str, version_id: str) -> FileVersion | None:
        folder = self._versions_dir(tenant, path)
        if folder is None or not VERSION_ID.fullmatch(version_id):
            return None
        try:
            data = (folder / version_id).read_bytes()
        except FileNotFoundError:
            return None
        return FileVersion(data, content_hash(data))

    # --- the quota: files and bytes, earlier versions included ---------------------------

    def _usage(self, tenant: str) -> tuple[int, int, list[tuple[int, Path]]]:
        """The tenant's files, their bytes with the history's, and the history's versions
        (oldest first, with their sizes): sizes from stat, no file is read."""
        files = size = 0
        for directory, subdirectories, names in os.walk(self._tenant_dir(tenant)):
            subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
            for name in names:
                with contextlib.suppress(OSError):
                    size += (Path(directory) / name).lstat().st_size
                    files += 1
        versions: list[tuple[str, int, Path]] = []
        if self._history is not None:
            for folder in (self._history / tenant).glob("*"):
                for entry in folder.glob("*"):
                    with contextlib.suppress(OSError):
                        versions.append((entry.name, entry.stat().st_size, entry))
        versions.sort()
        size += sum(length for _, length, _ in versions)
        return files, size, [(length, entry) for _, length, entry in versions]

    def _make_room(self, tenant: str, adding: int, replaced: FileVersion | None) -> bool:
        """Refuse a write past the quota. The oldest earlier versions go first to make room,
        then the one this write replaces (what a site serves counts more than its history);
        whether that one is kept."""
        files, size, versions = self._usage(tenant)
        quota = self._quota
        new_files = files + (replaced is None)
        quota.check(new_files, 0)
        projected = size + adding
        while projected > quota.max_bytes and versions:
            length, oldest = versions.pop(0)
            oldest.unlink(missing_ok=True)
            projected -= length
        keep = replaced is not None and self._history is not None
        if projected > quota.max_bytes and keep and replaced is not None:
            projected -= len(replaced.content)
            keep = False
        quota.check(new_files, projected)
        return keep

    @contextlib.contextmanager
    def _locked(self, tenant: str) -> Iterator[None]:
        """Every process of the node (and any other sngin on this folder) takes turns with
        the tenant's files; other tenants' are not held up."""
        self._locks.mkdir(parents=True, exist_ok=True)
        with (self._locks / f"{tenant}.lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
