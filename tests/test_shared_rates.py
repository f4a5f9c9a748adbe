"""The shared rate limiter when Redis hangs: one request pays the timeout, then the node's own
share is used for a second without asking Redis (a real socket that accepts and never answers)."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from sngin.storage.redis import open_redis_storage
from sngin.tenants import shared_rates
from sngin.tenants.shared_rates import SharedRateLimiter


async def test_a_hung_redis_costs_one_request_the_timeout_then_the_nodes_share(autojump_clock):
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # accepts, reads nothing, answers nothing

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with open_redis_storage(f"redis://127.0.0.1:{port}/0") as redis:
            limiter = SharedRateLimiter(redis, nodes=lambda: 2)
            started = trio.current_time()
            assert await limiter.admit("t.test", 10) is None  # Redis timed out: local
            assert trio.current_time() - started == pytest.approx(shared_rates.SHARED_TIMEOUT_S)
            assert limiter.fallback
            after = trio.current_time()
            # The node's share of rps 10 over the 2 nodes it saw: a burst of 10 (one taken).
            answers = [await limiter.admit("t.test", 10) for _ in range(10)]
            assert answers[:9] == [None] * 9
            assert answers[9] is not None  # the 11th waits
            assert trio.current_time() == after  # none of them waited on Redis
        nursery.cancel_scope.cancel()
