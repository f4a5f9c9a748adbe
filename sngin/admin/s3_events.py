"""S3 event notifications, read into the code objects they name (pure: no I/O).

The shapes accepted: S3's own `{"Records": [...]}` as AWS, MinIO (webhook target) and Ceph RGW
send it (event versions 2.0 to 2.3; the object key URL-encoded, `+` for a space), the same
wrapped in an SNS message (`Message` holds it as a JSON string; a `SubscriptionConfirmation`
carries the URL to confirm), and EventBridge's `{"source": "aws.s3", "detail": {...}}` (whose
key is not encoded). S3's `s3:TestEvent` names nothing. Every event only ever causes a purge,
never new content, so duplicates and reordering are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_plus

import msgspec

MAX_RECORDS: Final = 10_000  # a notification carries one record in practice; bound a hostile one


class EventError(ValueError):
    """The body is not an S3 event notification this server understands (answered 400)."""


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    bucket: str
    key: str  # decoded


@dataclass(frozen=True, slots=True)
class Notification:
    objects: tuple[ObjectEvent, ...] = ()
    subscribe_url: str | None = None  # an SNS subscription to confirm
    unknown: int = 0  # records of a shape or version not understood, skipped


def parse_notification(body: bytes) -> Notification:
    try:
        document = msgspec.json.decode(body)
    except RecursionError:
        raise EventError("the body is nested too deeply") from None
    except msgspec.DecodeError:
        raise EventError("the body is not JSON") from None
    return _read(document, sns_allowed=True)


def _read(document: Any, *, sns_allowed: bool) -> Notification:
    if not isinstance(document, dict):
        raise EventError("expected a JSON object")
    if "Type" in document and sns_allowed:
        return _read_sns(document)
    if document.get("source") == "aws.s3" and isinstance(document.get("detail"), dict):
        return _read_eventbridge(document["detail"])
    if "Records" in document:
        return _read_records(document["Records"])
    if document.get("Event") == "s3:TestEvent":
        return Notification()
    raise EventError("not an S3 event notification (no Records, detail or SNS Type)")


def _read_sns(document: dict[str, Any]) -> Notification:
    kind = document.get("Type")
    if kind == "SubscriptionConfirmation":
        url = document.get("SubscribeURL")
        if not isinstance(url, str):
            raise EventError("SubscriptionConfirmation without a SubscribeURL")
        return Notification(subscribe_url=url)
    if kind == "UnsubscribeConfirmation":
        return Notification()
    if kind == "Notification":
        message = document.get("Message")
        if not isinstance(message, str):
            raise EventError("SNS Notification without a Message")
        try:
            inner = msgspec.json.decode(message)
        except RecursionError:
            raise EventError("the SNS Message is nested too deeply") from None
        except msgspec.DecodeError:
            raise EventError("the SNS Message is not JSON") from None
        return _read(inner, sns_allowed=False)
    raise EventError(f"unknown SNS message type {kind!r}")


def _read_records(records: Any) -> Notification:
    if not isinstance(records, list):
        raise EventError("Records must be a list")
    if len(records) > MAX_RECORDS:
        raise EventError(f"more than {MAX_RECORDS} records")
    objects, unknown = [], 0
    for record in records:
        found = _record_object(record)
        if found is None:
            unknown += 1
        else:
            objects.append(found)
    return Notification(objects=tuple(objects), unknown=unknown)


def _record_object(record: Any) -> ObjectEvent | None:
    """The bucket and decoded key of one record; None for one not understood."""
    if not isinstance(record, dict):
        return None
    version = record.get("eventVersion", "2.0")
    if not isinstance(version, str) or not version.startswith("2."):
        return None
    s3 = record.get("s3")
    bucket = _path(s3, "bucket", "name")
    key = _path(s3, "object", "key")
    if bucket is None or key is None:
        return None
    try:
        return ObjectEvent(bucket=bucket, key=unquote_plus(key, errors="strict"))
    except UnicodeDecodeError:  # percent-escapes that are not UTF-8: names no key of ours
        return None


def _read_eventbridge(detail: dict[str, Any]) -> Notification:
    bucket = _path(detail, "bucket", "name")
    key = _path(detail, "object", "key")
    if bucket is None or key is None:
        return Notification(unknown=1)
    return Notification(objects=(ObjectEvent(bucket=bucket, key=key),))


def _path(document: Any, outer: str, inner: str) -> str | None:
    value = document.get(outer) if isinstance(document, dict) else None
    value = value.get(inner) if isinstance(value, dict) else None
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class CodeTarget:
    """What an object key names in the code root: a tenant and a path to purge as a file
    (`<host>/<path>/index.lua` -> the script at `<path>`; any other file -> itself)."""

    tenant: str
    path: str


def code_target(key: str, prefix: str) -> CodeTarget | None:
    """The tenant and path an object key names under the code root's prefix, or None for a key
    outside it (or one that names no file of a tenant)."""
    if prefix:
        if not key.startswith(prefix + "/"):
            return None
        key = key[len(prefix) + 1 :]
    host, _, path = key.partition("/")
    if not host or not path or path.endswith("/"):
        return None
    if path == "index.lua":
        return CodeTarget(tenant=host, path="/")
    if path.endswith("/index.lua"):
        return CodeTarget(tenant=host, path="/" + path.removesuffix("/index.lua"))
    return CodeTarget(tenant=host, path="/" + path)
