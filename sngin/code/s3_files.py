"""Tenants' code on S3 as files, for the management API (sngin.code.files has the contract).

Listing: ListObjectsV2 with the prefix (and `/` as delimiter for the tenants), every page.
A file's etag is the SHA-256 of its bytes: S3's ETag is not a content hash for every upload, so
an object is read once per S3 ETag and its hash remembered. Writes are S3 conditional writes:
`If-Match` with the S3 ETag of the version the caller's etag names (or `If-None-Match: *` to
create), so a change landing between the check and the write is refused by S3 itself, not
overwritten. Deletes check the version and then send DeleteObject with `If-Match`; a store that
ignores that header (older S3-compatible servers) leaves a short window between the check and
the delete (docs/admin.md says so).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, urlencode

from sngin.code.files import (
    MAX_FILE_BYTES,
    Conflict,
    FileInfo,
    FileTooLarge,
    FileVersion,
    VersionInfo,
    content_hash,
    file_path,
)
from sngin.code.quota import CodeQuota
from sngin.errors import BadRequest, CodeFetchError, StoreMisconfigured
from sngin.names import tenant_of

if TYPE_CHECKING:
    from sngin.code.s3_store import S3Store

NS: Final = "{http://s3.amazonaws.com/doc/2006-03-01/}"
LIST_CAP: Final = 16 * 1024 * 1024
MAX_PAGES: Final = 1000  # 1,000 keys a page: a million objects under one listing at most
HASHES_KEPT: Final = 100_000
MAX_VERSIONS: Final = 50  # earlier versions listed (each is read once for its hash)


USAGES_KEPT: Final = 10_000


class S3Files:
    def __init__(self, store: S3Store, quota: CodeQuota | None = None) -> None:
        self._store = store
        self._quota = quota or CodeQuota()
        self._hashes: OrderedDict[tuple[str, str], str] = OrderedDict()  # (key, S3 ETag) -> hash
        # A tenant's (files, bytes) under its prefix: from a listing, then kept up to date by
        # this API's own writes and deletes (what others write shows at the next listing).
        self._usages: OrderedDict[str, tuple[int, int]] = OrderedDict()

    async def _usage(self, tenant: str) -> tuple[int, int]:
        usage = self._usages.get(tenant)
        if usage is None:
            prefix = self._key(tenant, "")
            files = size = 0
            for item in (await self._list(prefix)).iter(f"{NS}Contents"):
                files += 1
                size += int(item.findtext(f"{NS}Size") or 0)
            usage = (files, size)
        self._set_usage(tenant, usage)
        return usage

    def _set_usage(self, tenant: str, usage: tuple[int, int]) -> None:
        self._usages[tenant] = usage
        self._usages.move_to_end(tenant)
        while len(self._usages) > USAGES_KEPT:
            self._usages.popitem(last=False)

    def _key(self, *parts: str) -> str:
        prefix = self._store.prefix
        return "/".join([prefix, *parts] if prefix else parts)

    async def _list(self, prefix: str, *, delimiter: str = "") -> ElementTree.Element:
        """Every page of ListObjectsV2 under `prefix`, as one element holding their children."""
        merged = ElementTree.Element("pages")
        token = None
        for _ in range(MAX_PAGES):
            query = {"list-type": "2", "prefix": prefix}
            if delimiter:
                query["delimiter"] = delimiter
            if token is not None:
                query["continuation-token"] = token
            encoded = urlencode(sorted(query.items()), quote_via=quote)
            url = self._store.url_of("", encoded).replace("/?", "?", 1)
            response, body = await self._store.send("GET", url, cap=LIST_CAP)
            if response.status_code != 200:
                raise failure("list", response.status_code, body)
            page = ElementTree.fromstring(body)
            merged.extend(list(page))
            if page.findtext(f"{NS}IsTruncated") != "true":
                return merged
            token = page.findtext(f"{NS}NextContinuationToken")
        raise CodeFetchError("the code store's listing did not end")

    async def tenants(self) -> list[str]:
        prefix = self._key("") if self._store.prefix else ""
        listing = await self._list(prefix, delimiter="/")
        found = []
        for common in listing.iter(f"{NS}CommonPrefixes"):
            name = (common.findtext(f"{NS}Prefix") or "").removeprefix(prefix).rstrip("/")
            try:
                if tenant_of(name) == name:
                    found.append(name)
            except BadRequest:
                continue
        return sorted(found)

    async def files(self, tenant: str) -> list[FileInfo]:
        prefix = self._key(tenant, "")
        listing = await self._list(prefix)
        found = []
        contents = list(listing.iter(f"{NS}Contents"))
        self._set_usage(
            tenant, (len(contents), sum(int(i.findtext(f"{NS}Size") or 0) for i in contents))
        )
        for item in contents:
            key = item.findtext(f"{NS}Key") or ""
            path = key.removeprefix(prefix)
            try:
                file_path(path)
            except BadRequest:
                continue  # not a tenant file
            s3_etag = item.findtext(f"{NS}ETag") or ""
            digest = self._hashes.get((key, s3_etag))
            if digest is None:
                current = await self._read(key)
                if current is None:
                    continue  # deleted meanwhile
                digest = current[0].etag
            found.append(
                FileInfo(
                    path,
                    int(item.findtext(f"{NS}Size") or 0),
                    digest,
                    (item.findtext(f"{NS}LastModified") or "")[:19] + "Z",
                )
            )
        return found

    async def read(self, tenant: str, path: str) -> FileVersion | None:
        current = await self._read(self._key(tenant, path))
        return None if current is None else current[0]

    async def _read(self, key: str) -> tuple[FileVersion, str] | None:
        """The object's version and its S3 ETag, or None if there is none."""
        response, body = await self._store.send("GET", self._store.url_of(key))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise failure("read", response.status_code, body)
        s3_etag = response.headers.get("etag", "")
        version = FileVersion(body, content_hash(body))
        self._remember(key, s3_etag, version.etag)
        return version, s3_etag

    def _remember(self, key: str, s3_etag: str, digest: str) -> None:
        self._hashes[(key, s3_etag)] = digest
        self._hashes.move_to_end((key, s3_etag))
        while len(self._hashes) > HASHES_KEPT:
            self._hashes.popitem(last=False)

    async def _expect(
        self, key: str, if_match: str | None
    ) -> tuple[dict[str, str], FileVersion | None]:
        """The condition for S3 that stands for the caller's (the S3 ETag of the version it
        named, or `If-None-Match: *`), and that version. Conflict if the file is not that
        version now."""
        current = await self._read(key)
        if if_match is None:
            if current is not None:
                raise Conflict(current[0])
            return {"If-None-Match": "*"}, None
        if current is None or current[0].etag != if_match:
            raise Conflict(None if current is None else current[0])
        return {"If-Match": current[1]}, current[0]

    async def write(self, tenant: str, path: str, data: bytes, *, if_match: str | None) -> str:
        if len(data) > MAX_FILE_BYTES:
            raise FileTooLarge(f"a file may hold at most {MAX_FILE_BYTES} bytes")
        key = self._key(tenant, path)
        condition, replaced = await self._expect(key, if_match)
        files, size = await self._usage(tenant)
        old = len(replaced.content) if replaced is not None else 0
        files, size = files + (replaced is None), size - old + len(data)
        self._quota.check(files, size)
        response, body = await self._store.send(
            "PUT", self._store.url_of(key), headers=condition, content=data
        )
        if response.status_code in (409, 412):  # changed between the check and the write
            current = await self._read(key)
            raise Conflict(None if current is None else current[0])
        if response.status_code != 200:
            raise failure("write", response.status_code, body)
        digest = content_hash(data)
        self._remember(key, response.headers.get("etag", ""), digest)
        self._set_usage(tenant, (files, size))
        return digest

    # --- history: S3's object versions, where the bucket keeps them ----------------------

    async def history(self, tenant: str, path: str) -> list[VersionInfo]:
        """The object's earlier versions (a bucket without versioning has none), newest first."""
        key = self._key(tenant, path)
        query = urlencode(sorted({"versions": "", "prefix": key}.items()), quote_via=quote)
        url = self._store.url_of("", query).replace("/?", "?", 1)
        response, body = await self._store.send("GET", url, cap=LIST_CAP)
        if response.status_code != 200:
            raise failure("list versions", response.status_code, body)
        found: list[VersionInfo] = []
        for entry in ElementTree.fromstring(body).iter(f"{NS}Version"):
            version_id = entry.findtext(f"{NS}VersionId") or ""
            if entry.findtext(f"{NS}Key") != key or entry.findtext(f"{NS}IsLatest") == "true":
                continue
            if version_id in ("", "null") or len(found) >= MAX_VERSIONS:
                continue
            version = await self.read_version(tenant, path, version_id)
            if version is None:
                continue
            saved = (entry.findtext(f"{NS}LastModified") or "")[:19] + "Z"
            found.append(VersionInfo(version_id, version.etag, len(version.content), saved))
        return sorted(found, key=lambda v: v.saved, reverse=True)

    async def read_version(self, tenant: str, path: str, version_id: str) -> FileVersion | None:
        key = self._key(tenant, path)
        url = self._store.url_of(key, version_query(version_id))
        response, body = await self._store.send("GET", url)
        if response.status_code in (400, 404):  # no such version (or a malformed id)
            return None
        if response.status_code != 200:
            raise failure("read a version", response.status_code, body)
        return FileVersion(body, content_hash(body))

    async def delete(self, tenant: str, path: str, *, if_match: str) -> None:
        key = self._key(tenant, path)
        condition, replaced = await self._expect(key, if_match)
        response, body = await self._store.send(
            "DELETE", self._store.url_of(key), headers=condition
        )
        if response.status_code in (409, 412):
            current = await self._read(key)
            raise Conflict(None if current is None else current[0])
        if response.status_code not in (200, 204):
            raise failure("delete", response.status_code, body)
        usage = self._usages.get(tenant)
        if usage is not None and replaced is not None:
            self._set_usage(tenant, (usage[0] - 1, usage[1] - len(replaced.content)))


def version_query(version_id: str) -> str:
    return urlencode({"versionId": version_id}, quote_via=quote)


def failure(action: str, status: int, body: bytes) -> CodeFetchError:
    if status == 403:
        return StoreMisconfigured(
            f"the code store refused to {action} (403): the credentials need s3:ListBucket,"
            " s3:GetObject, s3:PutObject and s3:DeleteObject on the code prefix",
            code="AccessDenied",
        )
    code = body.split(b"<Code>", 1)[-1].split(b"</Code>", 1)[0][:64].decode("ascii", "replace")
    return CodeFetchError(f"the code store could not {action} ({status} {code})")
