"""sngin.workers.kill_policy: what ends when one request runs out of wall time or loses its
caller. The integration tests (test_pool_*, test_wall_*) prove the channel carries it out."""

from sngin.workers.failures import NEVER_STARTED, WALL_KILL
from sngin.workers.kill_policy import Action, Standing, caller_left, out_of_wall_time


def standing(**changes) -> Standing:
    fields = {"waiting_call": False, "waiting_on_backend": False, "queued": False, "alone": True}
    return Standing(**(fields | changes))


def test_a_request_running_lua_takes_its_worker_with_it_when_its_time_runs_out():
    verdict = out_of_wall_time(standing(alone=False))
    assert verdict.action is Action.KILL
    assert verdict.failure is not None
    assert verdict.failure.reason == WALL_KILL
    assert not verdict.failure.platform


def test_a_parked_request_is_dropped_alone_and_a_storage_stall_is_the_platforms():
    own = out_of_wall_time(standing(waiting_call=True, alone=False))
    assert own.action is Action.CANCEL
    assert own.failure is not None
    assert own.failure.reason == WALL_KILL
    assert not own.failure.platform
    storage = out_of_wall_time(standing(waiting_call=True, waiting_on_backend=True))
    assert storage.action is Action.CANCEL
    assert storage.failure is not None
    assert storage.failure.platform
    assert "waiting on storage" in storage.failure.detail


def test_a_queued_request_that_never_ran_kills_nothing():
    verdict = out_of_wall_time(standing(queued=True, alone=False))
    assert verdict.action is Action.NOTHING
    assert verdict.failure is not None
    assert verdict.failure.reason == NEVER_STARTED
    assert verdict.failure.sibling


def test_a_caller_that_leaves_kills_only_a_worker_running_lua_for_nobody_else():
    assert caller_left(standing(waiting_call=True)) is Action.CANCEL
    assert caller_left(standing(alone=True)) is Action.KILL
    assert caller_left(standing(alone=False)) is Action.NOTHING
