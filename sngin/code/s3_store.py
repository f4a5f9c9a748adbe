"""The S3 code store: SigV4-signed conditional GETs over httpx, retried with tenacity."""

from __future__ import annotations

import logging
import os
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, urlsplit

import botocore.session
import httpx
import tenacity
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from sngin.bodies.http_body import ACCEPT_ENCODING, read_capped
from sngin.code.store import Missing, Modified, NotModified, Source, StoreResult
from sngin.errors import CodeFetchError, StoreMisconfigured

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from botocore.credentials import Credentials

    from sngin.config import S3Settings

log = logging.getLogger(__name__)

SCRIPT_NAME: Final = "index.lua"
MAX_SCRIPT_BYTES: Final = 4 * 1024 * 1024
DENIED_LOG_INTERVAL_S: Final = 60.0
MAX_KEY_BYTES: Final = 1024  # S3's limit for an object key


class TransientError(Exception):
    """A failure worth retrying: 5xx, 429/503 SlowDown, timeouts, refused connections."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to reach the bucket, resolved once by botocore."""

    base_url: str  # e.g. http://127.0.0.1:5000/bucket or https://bucket.s3.eu-west-1.amazonaws.com
    region: str


def resolve_endpoint(bucket: str) -> tuple[Endpoint, Credentials | None]:
    """Blocking: botocore's own resolution of region, endpoint and the credential chain, with
    the region the AWS SDKs read first: AWS_REGION, then botocore's (AWS_DEFAULT_REGION, then
    the profile's region), then us-east-1."""
    session = botocore.session.get_session()
    client = session.create_client("s3", region_name=os.environ.get("AWS_REGION") or None)
    region = client.meta.region_name or "us-east-1"
    endpoint = client.meta.endpoint_url.rstrip("/")
    host = urlsplit(endpoint).hostname or ""
    if host.endswith(".amazonaws.com") and "." not in bucket:
        # Virtual-hosted style on AWS itself.
        scheme = urlsplit(endpoint).scheme
        base_url = f"{scheme}://{bucket}.s3.{region}.amazonaws.com"
    else:
        # Path style: S3-compatible stores (MinIO, Ceph, moto) and bucket names with dots.
        base_url = f"{endpoint}/{bucket}"
    return Endpoint(base_url=base_url, region=region), session.get_credentials()


class S3Store:
    """Fetches `<prefix>/<key>/index.lua` objects with If-None-Match / If-Modified-Since."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: S3Settings,
        endpoint: Endpoint,
        credentials: Credentials | None,
    ) -> None:
        self._http = http
        self._settings = settings
        self._endpoint = endpoint
        self._credentials = credentials
        self._denied_logged_at: float | None = None

    @property
    def location(self) -> str:
        """Names the code location (endpoint, bucket, prefix): one disk mirror per location."""
        return f"{self._endpoint.base_url}|{self._settings.prefix}"

    def object_key(self, key: str) -> str:
        """'host/a/b' -> prefix/host/a/b/index.lua; a module key 'host//lib/x.lua' ->
        prefix/host/lib/x.lua."""
        tenant, sep, module = key.partition("//")
        path = f"{tenant}/{module}" if sep else f"{key}/{SCRIPT_NAME}"
        prefix = self._settings.prefix
        return f"{prefix}/{path}" if prefix else path

    def url_for(self, key: str) -> str:
        # Quoted exactly once; the same string is signed and sent.
        return f"{self._endpoint.base_url}/{quote(self.object_key(key), safe='/~')}"

    async def get(self, key: str, *, etag: str | None, last_modified: str | None) -> StoreResult:
        settings = self._settings
        if len(self.object_key(key).encode()) > MAX_KEY_BYTES:
            return Missing()  # no object can have this key: S3 would answer 400, not 404
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(settings.max_attempts),
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=2.0),
            retry=tenacity.retry_if_exception_type(TransientError),
            sleep=trio.sleep,
            reraise=True,
        )
        # The overall deadline is a cancel scope: tenacity's stop_after_delay reads the wall clock.
        with trio.move_on_after(settings.deadline_s):
            try:
                async for attempt in retrying:
                    with attempt:
                        return await self._get_once(key, etag, last_modified)
            except TransientError as exc:
                raise CodeFetchError(f"code store unavailable: {exc}") from exc
        raise CodeFetchError(f"code store did not answer within {settings.deadline_s:g} s")

    async def _get_once(self, key: str, etag: str | None, last_modified: str | None) -> StoreResult:
        headers = {}
        if etag is not None:
            headers["If-None-Match"] = etag
        elif last_modified is not None:
            headers["If-Modified-Since"] = last_modified
        url = self.url_for(key)
        signed = await self._sign(url, headers)
        try:
            with trio.fail_after(self._settings.attempt_timeout_s):
                async with self._http.stream("GET", url, headers=signed) as response:
                    return await self._result(key, response)
        except trio.TooSlowError:
            raise TransientError("timed out") from None
        except httpx.TransportError as exc:
            raise TransientError(type(exc).__name__) from None

    async def _result(self, key: str, response: httpx.Response) -> StoreResult:
        status = response.status_code
        if status == 304:
            return NotModified()
        if status == 404:
            code = await error_code(response)
            if code == "NoSuchBucket":
                self._log_misconfigured(
                    "S3 bucket %s does not exist (NoSuchBucket): no script can be served",
                    self._settings.bucket,
                )
                raise StoreMisconfigured(
                    f"S3 bucket {self._settings.bucket} does not exist", code=code
                )
            return Missing()
        if status == 200:
            body = await read_capped(response, MAX_SCRIPT_BYTES)
            if body is None:
                raise CodeFetchError(f"{key}: script larger than {MAX_SCRIPT_BYTES} bytes")
            version = response.headers.get("etag") or response.headers.get("last-modified") or ""
            source = Source(
                text=bytes(body),
                version=version,
                last_modified=response.headers.get("last-modified"),
            )
            return Modified(source)
        if status in (429, 500, 502, 503, 504):
            raise TransientError(f"S3 answered {status}")
        if status == 403:
            code = await error_code(response) or "AccessDenied"
            self._log_misconfigured(
                "S3 denied access to bucket %s (403 %s): check the credentials and their policy",
                self._settings.bucket,
                code,
            )
            raise StoreMisconfigured("code store denied access", code=code)
        raise CodeFetchError(f"code store answered {status}")

    def _log_misconfigured(self, message: str, *args: object) -> None:
        """Loudly, but once a minute: every request would say the same."""
        now = trio.current_time()
        if self._denied_logged_at is None or now - self._denied_logged_at >= DENIED_LOG_INTERVAL_S:
            self._denied_logged_at = now
            log.error(message, *args)

    async def _sign(
        self, url: str, headers: dict[str, str], *, method: str = "GET", content: bytes = b""
    ) -> dict[str, str]:
        if self._credentials is None:
            return headers  # anonymous: a public bucket
        # Refreshing role or SSO credentials blocks (it may call STS or the metadata service).
        frozen = await trio.to_thread.run_sync(self._credentials.get_frozen_credentials)
        request = AWSRequest(method=method, url=url, headers=headers, data=content)
        S3SigV4Auth(frozen, "s3", self._endpoint.region).add_auth(request)
        return dict(request.headers.items())

    # --- for the management API (sngin.code.s3_files) --------------------------------

    def url_of(self, object_key: str, query: str = "") -> str:
        url = f"{self._endpoint.base_url}/{quote(object_key, safe='/~')}"
        return f"{url}?{query}" if query else url

    @property
    def prefix(self) -> str:
        return self._settings.prefix

    async def send(
        self, method: str, url: str, *, headers: dict[str, str] | None = None,
        content: bytes = b"", cap: int = MAX_SCRIPT_BYTES,
    ) -> tuple[httpx.Response, bytes]:  # fmt: skip
        """One signed request and its body (at most `cap` bytes, else CodeFetchError); a
        transport failure or timeout is a CodeFetchError too."""
        signed = await self._sign(url, dict(headers or {}), method=method, content=content)
        try:
            with trio.fail_after(self._settings.deadline_s):
                async with self._http.stream(
                    method, url, headers=signed, content=content
                ) as response:
                    body = await read_capped(response, cap)
        except trio.TooSlowError:
            raise CodeFetchError(
                f"the code store did not answer within {self._settings.deadline_s:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise CodeFetchError(f"code store unavailable: {type(exc).__name__}") from None
        if body is None:
            raise CodeFetchError(f"the code store's answer is larger than {cap} bytes")
        return response, bytes(body)


ERROR_CODE: Final = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
MAX_ERROR_BYTES: Final = 16 * 1024


async def error_code(response: httpx.Response) -> str | None:
    """S3's error code (`NoSuchKey`, `NoSuchBucket`, `AccessDenied`...) from an error body."""
    body = await read_capped(response, MAX_ERROR_BYTES)
    match = ERROR_CODE.search(body or b"")
    return match.group(1).decode() if match else None


@asynccontextmanager
async def open_s3_store(settings: S3Settings) -> AsyncIterator[S3Store]:
    endpoint, credentials = await trio.to_thread.run_sync(resolve_endpoint, settings.bucket)
    if credentials is None:
        log.warning("no AWS credentials found: fetching code from S3 anonymously")
    log.info(
        "code store: s3://%s/%s at %s (region %s)",
        settings.bucket,
        settings.prefix,
        endpoint.base_url,
        endpoint.region,
    )
    async with httpx.AsyncClient(
        timeout=settings.attempt_timeout_s, headers={"Accept-Encoding": ACCEPT_ENCODING}
    ) as http:
        yield S3Store(http, settings, endpoint, credentials)
