"""alert.email(text) / alert.sms(text): a notice for the tenant's owner.

Every alert is written to the server log as a script line (so the tenant's live tail shows it)
and counted in the metrics. It is delivered as a JSON POST {tenant, kind, text, time, request_id}
to the tenant's `alerts.webhook` (_sngin.json) or else the operator's SNGIN_ALERT_WEBHOOK,
through the egress guard, at most `per_minute` a minute per tenant. With no target, logging it
is all there is to do, and the call returns normally.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import trio

from sandbox.protocol import AlertCall, HttpCall
from sngin.errors import CallError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sngin.calls.outbound import Outbound
    from sngin.tenants.egress import TenantEgress

script_log = logging.getLogger("sngin.script")

MAX_ALERT_CHARS: Final = 4096
MAX_TENANTS_TRACKED: Final = 10_000  # rate windows kept; the oldest go first
WINDOW_S: Final = 60.0
KINDS: Final = frozenset({"email", "sms"})


class AlertFailed(CallError):
    """The alert could not be delivered: the text says why (for the script's error)."""


class Alerts:
    def __init__(
        self,
        outbound: Outbound | None,
        *,
        webhook: str | None = None,
        per_minute: int = 10,
        count: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._outbound = outbound
        self._webhook = webhook  # the operator's SNGIN_ALERT_WEBHOOK
        self._per_minute = per_minute
        self._count_outcome = count  # (tenant, kind, outcome): sngin_alerts_total
        self._sent: OrderedDict[str, deque[float]] = OrderedDict()

    async def raise_alert(
        self,
        alert: AlertCall,
        *,
        tenant: str,
        request_id: str,
        webhook: str | None,
        timeout_s: float,
        egress: TenantEgress | None = None,
    ) -> str:
        """Log, count and deliver one alert; returns the outcome (delivered, logged,
        rate_limited); AlertFailed if the webhook could not take it."""
        if alert.kind not in KINDS:
            raise AlertFailed(f"unknown alert kind {alert.kind!r}")
        text = alert.text[:MAX_ALERT_CHARS]
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        record = {"tenant": tenant, "kind": alert.kind, "text": text, "time": now,
                  "request_id": request_id}  # fmt: skip
        encoded = json.dumps(record, ensure_ascii=False)
        line = {"tenant": tenant, "request": request_id, "alert": alert.kind, "line": text}
        script_log.warning("%s", json.dumps(line, ensure_ascii=False),
                           extra={"tenant": tenant, "fields": line})  # fmt: skip
        target = webhook or self._webhook
        if target is None or self._outbound is None:
            return self._count(tenant, alert.kind, "logged")
        if not self._admit(tenant):
            return self._count(tenant, alert.kind, "rate_limited")
        call = HttpCall(
            method="POST",
            url=target,
            headers=[("Content-Type", b"application/json")],
            body=encoded.encode(),
        )
        result = await self._outbound.fetch(
            call, timeout_s=timeout_s, request_id=request_id, tenant=tenant, egress=egress
        )
        if result.error is not None or not 200 <= result.status < 300:
            self._count(tenant, alert.kind, "failed")
            reason = result.error or f"the webhook answered {result.status}"
            raise AlertFailed(f"not delivered: {reason}")
        return self._count(tenant, alert.kind, "delivered")

    def _admit(self, tenant: str) -> bool:
        """At most per_minute deliveries in any 60 s window, per tenant."""
        now = trio.current_time()
        window = self._sent.get(tenant)
        if window is None:
            window = self._sent[tenant] = deque()
            if len(self._sent) > MAX_TENANTS_TRACKED:
                self._sent.popitem(last=False)
        self._sent.move_to_end(tenant)
        while window and now - window[0] >= WINDOW_S:
            window.popleft()
        if len(window) >= self._per_minute:
            return False
        window.append(now)
        return True

    def _count(self, tenant: str, kind: str, outcome: str) -> str:
        if self._count_outcome is not None:
            self._count_outcome(tenant, kind, outcome)
        return outcome
