"""Per-tenant rate limits held for the whole cluster: one token bucket per tenant in Redis,
taken from by an atomic script with Redis's own clock, so every node draws on the same tokens.

Only tenants with an `rps` pay for it (one Redis round trip per request). If Redis does not
answer within SHARED_TIMEOUT_S, the node falls back to its own bucket at the tenant's rate
divided by the nodes it last saw (the node registry), logs it once, asks Redis again a second
later (so a hung Redis does not cost every request the timeout), and shares again once it
answers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import coredis.exceptions
import trio

from sngin.tenants.admission import RateLimiter

if TYPE_CHECKING:
    from collections.abc import Callable

    from sngin.storage.redis import RedisStorage

log = logging.getLogger(__name__)

SHARED_TIMEOUT_S = 0.25  # a round trip is well under 1 ms; past this, this node's share
LOCAL_FOR_S: Final = 1.0  # after a failure, Redis is tried again only after this long
KEY: Final = "sngin:rl:"
# tokens, refilled at rps up to the burst from the last call's time; one taken if there is one;
# answers the seconds to wait (0: admitted). Redis's TIME: the same clock for every node.
TAKE_TOKEN: Final = """
local rps, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rps)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rps end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rps * 1000) + 1000)
return tostring(wait)
"""


class SharedRateLimiter:
    def __init__(self, redis: RedisStorage, nodes: Callable[[], int]) -> None:
        self._redis = redis
        self._nodes = nodes  # how many nodes the registry saw last
        self._local = RateLimiter()
        self.fallback = False
        self._retry_at = 0.0  # while failing: no request waits on Redis before this time

    async def admit(self, tenant: str, rps: float) -> float | None:
        """None if the request may run; else the seconds to wait before retrying."""
        if self.fallback and trio.current_time() < self._retry_at:
            return self._local.admit(tenant, rps / max(1, self._nodes()))
        try:
            with trio.fail_after(SHARED_TIMEOUT_S):
                answer = await self._redis.script(TAKE_TOKEN, [KEY + tenant], [rps, 2 * rps])
        except (trio.TooSlowError, OSError, coredis.exceptions.RedisError) as exc:
            # Unavailable or slow: this node's share of the rate, locally.
            if not self.fallback:
                log.warning("rate limits held on this node only while Redis fails: %s", exc)
            self.fallback = True
            self._retry_at = trio.current_time() + LOCAL_FOR_S
            return self._local.admit(tenant, rps / max(1, self._nodes()))
        if self.fallback:
            log.warning("rate limits are shared through Redis again")
            self.fallback = False
        wait = float(answer.decode() if isinstance(answer, bytes) else answer)
        return wait if wait > 0 else None
