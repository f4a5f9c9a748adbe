"""Small pure parts on their own: the byte-bounded LRU, the purge log, the runtime mirror, the
replay bundles' write rate."""

from __future__ import annotations

import zlib

import pytest

from sngin.bodies.http_body import BodyDecodeError, BoundedDecoder
from sngin.code.lru import ENTRY_OVERHEAD_BYTES, ByteBoundedLRU
from sngin.code.purge_log import PurgeLog
from sngin.code.store import Source
from sngin.replay.write_rate import (
    FREE_WRITES,
    MAX_TRACKED,
    TENANT_BURST,
    TENANT_REFILL_S,
    WINDOW_S,
    WriteRate,
)  # fmt: skip


def source(size: int) -> Source:
    return Source(text=b"x" * size, version="v")


def test_lru_evicts_the_least_recently_used_first():
    lru = ByteBoundedLRU(max_entries=2, max_bytes=10**6, tenant_share=1.0)
    lru.put("a.test/1", source(1), 0)
    lru.put("a.test/2", source(1), 0)
    lru.touch("a.test/1")
    lru.put("a.test/3", source(1), 0)
    assert lru.get("a.test/2") is None
    assert lru.get("a.test/1") is not None
    assert lru.evictions == 1


def test_one_tenant_cannot_take_more_than_its_share():
    per_entry = ENTRY_OVERHEAD_BYTES + len("a.test/0") + 1000
    lru = ByteBoundedLRU(max_entries=1000, max_bytes=4 * per_entry, tenant_share=0.5)
    lru.put("b.test/0", source(1000), 0)
    for index in range(10):
        lru.put(f"a.test/{index}", source(1000), 0)
    assert lru.get("b.test/0") is not None  # the other tenant's entry survived
    assert sum(lru.get(f"a.test/{i}") is not None for i in range(10)) == 2
    assert lru.bytes == 3 * per_entry


def test_an_entry_larger_than_a_share_is_not_kept():
    lru = ByteBoundedLRU(max_entries=10, max_bytes=2000, tenant_share=0.25)
    lru.put("a.test/big", source(1000), 0)
    assert (len(lru), lru.bytes) == (0, 0)


def test_drop_matching_counts_and_frees_bytes():
    lru = ByteBoundedLRU(max_entries=10, max_bytes=10**6, tenant_share=1.0)
    for key in ("a.test/x", "a.test/x/y", "b.test/x"):
        lru.put(key, source(10), 0)
    assert lru.drop_matching(lambda key: key.startswith("a.test/")) == 2
    assert len(lru) == 1
    assert lru.bytes == ENTRY_OVERHEAD_BYTES + len("b.test/x") + 10


def test_purge_log_answers_what_a_purge_covered_since_an_epoch():
    log = PurgeLog(size=3)
    before = log.epoch
    log.record(lambda key: key == "a.test/x")
    assert log.covered_since("a.test/x", before)
    assert not log.covered_since("a.test/y", before)
    assert not log.covered_since("a.test/x", log.epoch)  # nothing since now
    for _ in range(3):
        log.record(lambda key: False)
    # The log no longer reaches back to `before`: assume covered rather than cache stale code.
    assert log.covered_since("a.test/y", before)


def test_the_runtime_mirror_follows_switches_and_dormant_runtimes():
    from sngin.workers.runtime_mirror import RuntimeMirror

    mirror = RuntimeMirror()
    mirror.switch_to("a.test")
    mirror.compiled(("a.test", "v1"))
    mirror.switch_to("b.test")
    assert (mirror.tenant, mirror.switches) == ("b.test", 1)
    assert not mirror.has_compiled(("a.test", "v1"))  # another runtime is active
    assert "a.test" in mirror.dormant
    mirror.switch_to("a.test")  # back to the kept runtime: what it compiled is known
    assert mirror.has_compiled(("a.test", "v1"))
    for index in range(300):
        mirror.switch_to(f"t{index}.test")
    assert "a.test" in mirror.dormant  # no count bound: the child's reports decide
    mirror.forget(["a.test", "t0.test"])  # the child closed these
    assert "a.test" not in mirror.dormant
    assert "t0.test" not in mirror.dormant
    assert "t1.test" in mirror.dormant


def test_one_tenant_cannot_take_more_than_its_share_of_entries():
    """Negative entries too: 10,000 requests for missing paths of one host leave every other
    tenant's scripts cached."""
    lru = ByteBoundedLRU(max_entries=1000, max_bytes=10**9, tenant_share=0.25)
    for index in range(200):
        lru.put(f"b.test/{index}", source(10), 0)
    for index in range(10_000):
        lru.put(f"a.test/missing/{index}", None, 0)
    assert all(lru.get(f"b.test/{i}") is not None for i in range(200))
    assert sum(lru.get(f"a.test/missing/{i}") is not None for i in range(10_000)) == 250
    assert len(lru) == 450


def test_the_bounded_decoder_never_inflates_past_its_limit():
    """64 KiB of a gzip bomb is ~64 MB inflated in one call; the decoder stops at the limit."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    bomb = packer.compress(bytes(256 << 20)) + packer.flush()
    chunk = bomb[:65536]
    assert len(zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(chunk)) > 60 << 20
    decoder = BoundedDecoder("gzip")
    assert len(decoder.decode(chunk, 1000)) == 1000
    assert decoder.cpu_s >= 0


def test_the_bounded_decoder_undoes_codings_in_reverse_and_passes_unknown_ones():
    data = b"hello " * 100
    gz = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    gzipped = gz.compress(data) + gz.flush()
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    both = raw.compress(gzipped) + raw.flush()  # gzip first, then (raw) deflate
    assert BoundedDecoder("gzip, deflate").decode(both, 10_000) == data
    assert BoundedDecoder("x-gzip").decode(gzipped, 10_000) == data
    assert BoundedDecoder("br").decode(b"as sent", 10_000) == b"as sent"
    assert BoundedDecoder("").decode(b"plain", 10_000) == b"plain"
    with pytest.raises(BodyDecodeError, match="not valid gzip data"):
        BoundedDecoder("gzip").decode(b"not gzip at all", 10_000)


def test_the_request_head_is_read_in_one_pass_as_each_step_read_it_before():
    from sngin.edge.request_head import RequestHead

    head = RequestHead(
        [
            (b"x-request-id", b"bad id!"),
            (b"host", b"a.test"),
            (b"content-length", b"5"),
            (b"content-type", b"application/json"),
            (b"host", b"b.test"),
            (b"content-encoding", b"gzip"),
            (b"content-length", b"6"),
            (b"transfer-encoding", b"chunked"),
            (b"content-type", b"text/plain"),
            (b"content-encoding", b"deflate"),
            (b"x-request-id", b"good-id"),
        ]
    )
    assert head.host == b"a.test"  # the first of each, as the lookups were
    assert head.content_type == b"application/json"
    assert head.content_encoding == b"gzip"
    assert head.lengths == (b"5", b"6")  # every one, in order: each is checked
    assert head.chunked
    assert head.request_ids == (b"bad id!", b"good-id")
    bare = RequestHead([])
    assert (bare.host, bare.content_type, bare.content_encoding) == (b"", b"", None)
    assert (bare.lengths, bare.chunked, bare.request_ids) == ((), False, ())


def test_the_first_well_formed_request_id_is_kept():
    from sngin.observe.tracing import RequestIds

    ids = RequestIds()
    assert ids.of((b"bad id!", b"good-id", b"later")) == "good-id"
    assert len(ids.of((b"x" * 65,))) == 32  # too long: a new one


def test_a_script_failing_on_every_request_writes_a_few_bundles_then_one_per_window():
    rate = WriteRate()
    written = [rate.allows("a.test", "a.test/x", 100.0 + i * 0.1) for i in range(10)]
    assert written == [True] * FREE_WRITES + [False] * (10 - FREE_WRITES)
    assert rate.allows("a.test", "a.test/x", 100.0 + 0.2 + WINDOW_S)  # a window after the last
    assert rate.allows("a.test", "a.test/y", 101.0)  # another script: its own allowance


def test_a_site_with_many_failing_scripts_is_bounded_by_its_tenant_bucket():
    rate = WriteRate()
    now = 500.0
    written = sum(rate.allows("a.test", f"a.test/s{n}", now) for n in range(100))
    assert written == TENANT_BURST  # each script would have been allowed on its own
    assert rate.allows("b.test", "b.test/s0", now)  # another site is not held back
    assert not rate.allows("a.test", "a.test/new", now + TENANT_REFILL_S / 2)
    assert rate.allows("a.test", "a.test/new", now + TENANT_REFILL_S)  # one token back
    # Refused for the site's rate, a run takes nothing from its script's own allowance.
    for _ in range(FREE_WRITES + 2):
        assert not rate.allows("a.test", "a.test/late", now + TENANT_REFILL_S)
    assert 2 * TENANT_REFILL_S < WINDOW_S
    assert rate.allows("a.test", "a.test/late", now + 2 * TENANT_REFILL_S)


def test_the_write_rate_forgets_the_least_recently_seen_beyond_its_bound():
    rate = WriteRate()
    for n in range(MAX_TRACKED + 50):
        rate.allows(f"t{n}.test", f"t{n}.test/x", float(n))
    assert len(rate._scripts) == MAX_TRACKED
    assert len(rate._tenants) == MAX_TRACKED


@pytest.mark.parametrize(
    ("reason", "sibling", "limit"),
    [
        ("cpu", False, "cpu"),
        ("wall", False, "wall"),
        ("memory", False, "memory"),
        ("crash", False, "crash"),
        ("protocol", False, "crash"),
        ("never_started", False, None),  # it never ran: nothing of its own to replay
        ("cpu", True, None),  # another request's kill ended it
        ("crash", True, None),
    ],
)
def test_a_failure_names_what_ended_its_own_run_and_nothing_else(reason, sibling, limit):
    from sngin.limits import Limits
    from sngin.workers.failures import WorkerFailed
    from sngin.workers.pool import failure_error

    error = failure_error(WorkerFailed(reason, "test", sibling=sibling), Limits())
    assert error.limit == limit  # the replay recorder keeps a bundle only when it is set
