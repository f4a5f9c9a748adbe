"""sngin.backoff: the delays the supervisor, the node's parent and the cluster bus wait."""

from __future__ import annotations

from sngin.backoff import Backoff


def test_delays_double_from_the_first_up_to_the_cap_and_start_over_after_a_success():
    backoff = Backoff(0.5, 30.0)
    assert [backoff.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.failures == 8
    backoff.succeeded()
    assert (backoff.failures, backoff.next_delay()) == (0, 0.5)
