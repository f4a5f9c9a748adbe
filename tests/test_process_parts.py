"""The parts of `--processes N` that need no real process: the split of the node's settings,
stats added up, and the parent's hub with process links over in-memory streams."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from sngin.admin.stats import added_up
from sngin.config import Settings
from sngin.node.cluster_bus import Purge
from sngin.node.hub import GATHER_TIMEOUT_S, Hub
from sngin.node.link import TAKE_TIMEOUT_S, ProcessLink, ProcessRole
from sngin.node.protocol import Event, FrameReader, Hello, encode_message
from sngin.node.share import process_settings, share
from sngin.observe.live_tails import LogHub


@given(st.integers(0, 10**12), st.integers(1, 256))
def test_shares_add_up_to_the_total_and_differ_by_one_at_most(total, count):
    parts = [share(total, index, count, floor=0) for index in range(count)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1


def test_a_process_gets_its_share_of_every_node_total_and_the_same_per_request_limits():
    node = Settings.from_env({"SNGIN_WORKERS": "5", "SNGIN_KEPT_RUNTIMES_MB": "100",
                              "SNGIN_MAX_CONNECTIONS": "1001", "SNGIN_PROCESSES": "2"})  # fmt: skip
    first, second = (process_settings(node, index, 2) for index in range(2))
    assert (first.pool.size, second.pool.size) == (3, 2)
    assert first.pool.kept_runtimes_mb + second.pool.kept_runtimes_mb == 100
    assert first.http.max_connections + second.http.max_connections == 1001
    totals = [("cache", "max_bytes"), ("storage", "cache_bytes"), ("outbound", "connections"),
              ("outbound", "bodies_bytes"), ("http", "request_bodies_bytes"),
              ("http", "responses_bytes")]  # fmt: skip
    for name, section in totals:
        total = getattr(getattr(node, name), section)
        parts = getattr(getattr(first, name), section) + getattr(getattr(second, name), section)
        assert parts == total, (name, section)
    assert first.mirror_bytes + second.mirror_bytes == node.mirror_bytes
    assert first.limits == second.limits == node.limits
    assert first.pool.tenant_concurrency == node.pool.tenant_concurrency
    assert process_settings(node, 0, 1) is node


def test_reports_add_up_numbers_join_lists_and_keep_the_first_of_the_rest():
    reports = [
        {"pool": {"live": 2, "workers": [1, 2], "tenants": {"a": {"requests": 3}}},
         "cluster_bus": {"node": "p0", "connected": True}, "process": 0},
        {"pool": {"live": 2, "workers": [3],
                  "tenants": {"a": {"requests": 1}, "b": {"requests": 5}}},
         "cluster_bus": {"node": "p1", "connected": False}, "process": 1},
    ]  # fmt: skip
    total = added_up(reports, skip={"process"})
    assert total == {
        "pool": {"live": 4, "workers": [1, 2, 3],
                 "tenants": {"a": {"requests": 4}, "b": {"requests": 5}}},
        "cluster_bus": {"node": "p0", "connected": True},
    }  # fmt: skip


async def test_a_frame_past_the_bound_is_refused():
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"\xff\xff\xff\xff")
    with pytest.raises(ValueError, match="frame of"):
        await FrameReader(receive).receive()


class Applied:
    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []
        self.changed = trio.Event()

    async def __call__(self, fields: dict[str, str]) -> None:
        self.events.append(fields)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.events) < count:
            await self.changed.wait()


async def connect(hub: Hub, index: int, nursery: trio.Nursery) -> tuple[ProcessLink, Applied]:
    parent_end, child_end = trio.testing.memory_stream_pair()
    nursery.start_soon(hub.serve, hub.slots[index], parent_end)
    link = ProcessLink(ProcessRole(index, len(hub.slots), -1, -1), child_end)
    applied = Applied()
    link.on_event = applied
    nursery.start_soon(link.run)
    link.ready([])
    await hub.slots[index].ready.wait()
    return link, applied


async def test_events_reach_the_other_processes_and_a_late_one_learns_the_quarantines(
    autojump_clock,
):
    hub = Hub(3)
    async with trio.open_nursery() as nursery:
        first, _ = await connect(hub, 0, nursery)
        second, second_applied = await connect(hub, 1, nursery)
        first.publish(Purge(tenant="a.test", folder="page"))
        first.send_soon({"origin": first.node, "kind": "quarantine", "tenant": "b.test",
                         "seconds": "60"})  # fmt: skip
        await second_applied.wait_for(2)
        assert second_applied.events[0]["kind"] == "path"
        assert second_applied.events[1]["tenant"] == "b.test"
        await trio.sleep(20)
        _, late_applied = await connect(hub, 2, nursery)
        await late_applied.wait_for(1)
        quarantine = late_applied.events[0]
        assert (quarantine["kind"], quarantine["tenant"]) == ("quarantine", "b.test")
        assert float(quarantine["seconds"]) == pytest.approx(40, abs=0.5)
        second.send_soon({"origin": second.node, "kind": "lift", "tenant": "b.test"})
        await late_applied.wait_for(2)
        assert hub._quarantines == {}
        nursery.cancel_scope.cancel()


async def test_a_rate_limit_bucket_is_one_for_every_process(autojump_clock):
    hub = Hub(2)
    async with trio.open_nursery() as nursery:
        first, _ = await connect(hub, 0, nursery)
        second, _ = await connect(hub, 1, nursery)
        # rps 1: a burst of 2 for the node, whichever process asks.
        assert await first.admit("a.test", 1.0) is None
        assert await second.admit("a.test", 1.0) is None
        wait = await first.admit("a.test", 1.0)
        assert wait is not None
        assert wait > 0
        nursery.cancel_scope.cancel()


async def test_a_silent_process_is_reported_as_such_after_the_timeout(autojump_clock):
    hub = Hub(2)
    async with trio.open_nursery() as nursery:
        first, _ = await connect(hub, 0, nursery)
        second, _ = await connect(hub, 1, nursery)

        async def answer(what: str) -> bytes:
            return msgspec.json.encode({"what": what})

        async def silent(what: str) -> bytes:
            await trio.sleep_forever()
            raise AssertionError

        first.on_report = answer
        second.on_report = silent
        started = trio.current_time()
        rows = await first.gather("stats")
        assert trio.current_time() - started == pytest.approx(GATHER_TIMEOUT_S)
        assert [row.index for row in rows] == [0, 1]
        assert msgspec.json.decode(rows[0].body) == {"what": "stats"}
        assert rows[1].body is None
        assert rows[1].error == f"no answer within {GATHER_TIMEOUT_S:g} s"
        nursery.cancel_scope.cancel()


async def test_tail_lines_go_only_where_a_tail_is_open():
    hub = Hub(2)
    async with trio.open_nursery() as nursery:
        first, _ = await connect(hub, 0, nursery)
        second, _ = await connect(hub, 1, nursery)
        first_hub, second_hub = LogHub(), LogHub()
        first.attach_tails(first_hub)
        second.attach_tails(second_hub)
        subscriber, lines = first_hub.subscribe("t.test")
        await trio.testing.wait_all_tasks_blocked()
        assert second_hub.remote == {"t.test"}
        second_hub.publish("other.test", "not tailed anywhere")
        second_hub.publish("t.test", "line one")
        with trio.fail_after(5):
            assert await lines.receive() == "line one"
        first_hub.unsubscribe("t.test", subscriber)
        await trio.testing.wait_all_tasks_blocked()
        assert second_hub.remote == set()
        assert second_hub.watched == set()
        nursery.cancel_scope.cancel()


async def test_a_process_whose_parent_is_gone_stops_and_limits_rates_to_its_share(autojump_clock):
    parent_end, child_end = trio.testing.memory_stream_pair()
    link = ProcessLink(ProcessRole(0, 2, -1, -1), child_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        reader = FrameReader(parent_end)
        assert isinstance(await reader.receive(), Hello)
        # A parent that does not answer: this process's share of the rate (rps 2 over two
        # processes: a burst of 2 here).
        started = trio.current_time()
        assert await link.admit("a.test", 2.0) is None
        assert trio.current_time() - started == pytest.approx(TAKE_TIMEOUT_S)
        await parent_end.aclose()
        await link.lost.wait()
        assert not link.connected
        assert [await link.admit("a.test", 2.0) for _ in range(2)][1] is not None
        nursery.cancel_scope.cancel()


async def test_frames_round_trip_whole_and_split_at_any_byte():
    frame = encode_message(Hello(3, 1234))
    assert frame[:4] == len(frame[4:]).to_bytes(4, "big")
    assert dataclasses.is_dataclass(Settings)
    send, receive = trio.testing.memory_stream_one_way_pair()
    reader = FrameReader(receive)
    got: list[object] = []

    async def read_all() -> None:
        while (message := await reader.receive()) is not None:
            got.append(message)
        got.append(None)

    two = frame + encode_message(Event({"kind": "lift", "tenant": "a.test"}))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        for byte in two:  # one byte at a time, each read on its own: frames come out whole
            await send.send_all(bytes([byte]))
            await trio.testing.wait_all_tasks_blocked()
        await send.aclose()
    assert got == [Hello(3, 1234), Event({"kind": "lift", "tenant": "a.test"}), None]
