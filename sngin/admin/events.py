"""POST /__sngin/events/s3: purge what S3 event notifications name (sngin.admin.s3_events reads
them).

Behind its own token, SNGIN_EVENTS_TOKEN, accepted as `Authorization: Bearer <token>`, as the
raw header value (MinIO sends its `auth_token` so) or as Basic credentials with the token as
the password (SNS can only put credentials in the endpoint URL). An SNS subscription is
confirmed only when its URL is https on a host SNGIN_SNS_CONFIRM_HOSTS allows.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import httpx
from quart import request

from sngin.admin.guard import Access, Route
from sngin.admin.s3_events import EventError, code_target, parse_notification
from sngin.errors import BadRequest
from sngin.names import script_path, tenant_of

if TYPE_CHECKING:
    import ssl

    from sngin.admin.access import Answer
    from sngin.edge.deps import Deps

log = logging.getLogger(__name__)

MAX_EVENT_BYTES: Final = 1024 * 1024
CONFIRM_TIMEOUT_S: Final = 10.0


def offered_token(authorization: str) -> str:
    """The token in an Authorization header: Bearer, Basic (the password), or the raw value."""
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return credential.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credential.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return authorization.strip()


def confirm_allowed(url: str, patterns: tuple[str, ...]) -> bool:
    """An https URL on port 443, without credentials, whose host matches one of the patterns
    exactly, label by label (`*` is one whole label: `sns.*.amazonaws.com`)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or port not in (None, 443) or "@" in parts.netloc:
        return False
    host = (parts.hostname or "").lower()
    return any(host_matches(host, pattern) for pattern in patterns)


def host_matches(host: str, pattern: str) -> bool:
    labels, wanted = host.split("."), pattern.lower().split(".")
    return len(labels) == len(wanted) and all(
        (want == "*" and label != "") or want == label
        for label, want in zip(labels, wanted, strict=True)
    )


class EventRoutes:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def s3_events(self) -> Answer:
        token = self.deps.settings.events_token
        if token is None:
            return {"error": "S3 events are off: set SNGIN_EVENTS_TOKEN"}, 403
        offered = offered_token(request.headers.get("Authorization", ""))
        if not hmac.compare_digest(offered.encode(), token.encode()):
            return {"error": "missing or wrong events token"}, 401, {"WWW-Authenticate": "Bearer"}
        s3 = self.deps.settings.s3
        if s3 is None:
            return {"error": "this server's code is not in S3 (AWS_S3_CODE_PATH is unset)"}, 409
        if (request.content_length or 0) > MAX_EVENT_BYTES:
            return {"error": f"an event notification is at most {MAX_EVENT_BYTES} bytes"}, 413
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        if len(body) > MAX_EVENT_BYTES:
            return {"error": f"an event notification is at most {MAX_EVENT_BYTES} bytes"}, 413
        try:
            notification = parse_notification(body)
        except EventError as exc:
            return {"error": str(exc)}, 400
        if notification.subscribe_url is not None:
            return await confirm_subscription(self.deps, notification.subscribe_url)
        purged = ignored = 0
        for event in notification.objects:
            target = code_target(event.key, s3.prefix) if event.bucket == s3.bucket else None
            try:
                if target is None:
                    raise BadRequest("outside the code root")
                tenant, folder = tenant_of(target.tenant), script_path(target.path)
            except BadRequest:
                ignored += 1
                continue
            purged += 1
            await self.deps.purger.purge(tenant, folder, recursive=False)
        ignored += notification.unknown
        self.deps.observer.metrics.s3_events.labels("purged").inc(purged)
        self.deps.observer.metrics.s3_events.labels("ignored").inc(ignored)
        return {"purged": purged, "ignored": ignored}, 200

    def routes(self) -> list[Route]:
        return [
            Route(
                ("POST",), "/__sngin/events/s3", self.s3_events, Access.PUBLIC
            ),  # to the admin guard: it checks SNGIN_EVENTS_TOKEN itself
        ]


async def confirm_subscription(deps: Deps, url: str) -> Answer:
    """GET the SubscribeURL of an SNS subscription, if its host is one the operator allows."""
    if not confirm_allowed(url, deps.settings.sns_confirm_hosts):
        log.warning("SNS subscription not confirmed: %s is not an allowed https host", url)
        return {"error": "the SubscribeURL is not an https URL on SNGIN_SNS_CONFIRM_HOSTS"}, 403
    verify: ssl.SSLContext | bool = deps.events_tls if deps.events_tls is not None else True
    try:
        async with httpx.AsyncClient(
            trust_env=False, verify=verify, timeout=CONFIRM_TIMEOUT_S
        ) as client:
            target = httpx.URL(url)
            if deps.events_confirm_port != 443:  # (a test's own https server)
                target = target.copy_with(port=deps.events_confirm_port)
            answer = await client.get(target)
    except httpx.HTTPError as exc:
        return {"error": f"the SNS confirmation failed: {exc}"}, 502
    if answer.status_code != 200:
        return {"error": f"the SNS confirmation answered {answer.status_code}"}, 502
    log.info("SNS subscription confirmed: %s", urlsplit(url).hostname)
    deps.observer.metrics.s3_events.labels("confirmed").inc()
    return {"confirmed": True}, 200
