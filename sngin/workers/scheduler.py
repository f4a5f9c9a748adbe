"""Which worker runs a tenant's next request, and who waits: the pool's scheduling, as pure
logic over workers it only reads (no processes, no I/O), so it can be tested with stand-ins.

Requests of one tenant share a worker while they wait on platform calls (up to
`worker_concurrency`); a tenant has at most `cap` requests in flight; requests that find no
capacity queue first come, first served, and are handed a reserved worker as capacity frees.

When no worker is idle, a request may be stacked on a busy worker of another tenant (up to
STACK_DEPTH in flight, and never past `worker_concurrency`) whose requests are all computing,
none parked on a platform call. The worker starts jobs in the order sent and runs one tenant
at a time, so the stacked request starts when those before it end; if one of them is killed,
the stacked one never started and runs elsewhere (FrameChannel._fail_all). Tenant switches
then cost no round trip through the server, which writes and reads several frames per turn
again (bench/zipf_bench.py). A worker that finds a request parked when a stacked job's turn
comes declines it (Reply.declined), and the pool runs it elsewhere.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

from sngin.errors import Unavailable

# Jobs in flight on a worker before another tenant's job may no longer be stacked behind them:
# deep enough that the server writes several jobs per turn (bench/zipf_bench.py: 2 measured no
# better than none, 8 about 4% better than 4), short enough that a stacked request waits behind
# few others' CPU.
STACK_DEPTH = 8

if TYPE_CHECKING:
    from collections.abc import Callable, Collection


class Schedulable(Protocol):
    """What the scheduler reads of a worker (and what it writes: `reserved`, `reserved_for`)."""

    @property
    def alive(self) -> bool: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def computing(self) -> bool: ...
    @property
    def parked(self) -> bool: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def mixed(self) -> bool: ...  # its requests are not all of the tenant of its last job

    reserved: int
    reserved_for: str | None  # the tenant of its latest reservation

    @property
    def dormant(self) -> Collection[str]: ...


@dataclass(eq=False, slots=True)
class Waiter:
    """A request waiting for a worker; the scheduler hands it one (reserved) and sets `ready`."""

    tenant: str
    cap: int
    ready: trio.Event = field(default_factory=trio.Event)
    worker: Schedulable | None = None
    behind_others: bool = True  # may be stacked behind another tenant's requests (rule 6)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A worker reserved for one request, and how long the request queued for it (None: it
    never queued)."""

    worker: Schedulable
    queued_s: float | None


class QueueTimeout(Unavailable):
    """No capacity came free within the queue timeout; `queued_s` is how long it waited."""

    def __init__(self, message: str, *, queued_s: float) -> None:
        super().__init__(message, headers={"Retry-After": "1"})
        self.queued_s = queued_s


class Scheduler:
    def __init__(
        self,
        *,
        worker_concurrency: int,
        tenant_concurrency: int,
        check_in: Callable[[Schedulable], None],
        on_starved: Callable[[], None] = lambda: None,
    ) -> None:
        # check_in: the pool's hook for a worker whose reservation came back unused (it decides
        # whether the worker takes requests again, and calls hand_out).
        self._check_in = check_in
        # The pool's hook for a request that waits: it may start another worker.
        self._on_starved = on_starved
        self.worker_concurrency = worker_concurrency
        self.tenant_concurrency = tenant_concurrency
        # Workers that take requests, least recently used first.
        self.ready: list[Schedulable] = []
        self.tenant_in_flight: Counter[str] = Counter()
        self.waiters: deque[Waiter] = deque()
        self.closing = False

    # --- the ready list ------------------------------------------------------------------------

    def offer(self, worker: Schedulable) -> None:
        """A worker may take requests (new, or back from one)."""
        if worker not in self.ready:
            self.ready.append(worker)

    def withdraw(self, worker: Schedulable) -> None:
        """A worker takes no more requests (recycling, ended)."""
        if worker in self.ready:
            self.ready.remove(worker)

    def pick(
        self, tenant: str, *, stack: bool = True, behind_others: bool = True
    ) -> Schedulable | None:
        """Where a request of `tenant` runs next, or None to wait. With stack=False only an
        idle worker will do (rules 1, 3, 4): another tenant's older request is waiting for a
        worker to come free, and stacking more of this tenant's requests would keep it busy.

        1. an idle worker that already holds the tenant's runtime;
        2. a worker of the tenant whose requests all wait on platform calls (it is free to
           run Lua), below the per-worker concurrency;
        3. an idle worker keeping the tenant's runtime dormant (a switch back: no new runtime);
        4. the least recently used idle worker (a tenant switch);
        5. any worker of the tenant below the per-worker concurrency;
        6. stacked on the least loaded worker whose requests all compute (module docstring),
           one holding the tenant's runtime first. Open to waiters with stack=False too: it
           takes nothing from another tenant, unlike rules 2 and 5. Not with
           behind_others=False: a request a worker declined (or that never started behind
           another tenant's) waits for an idle worker or one running only its own tenant's
           requests (rules 2 and 5 too: a worker it was stacked on is its tenant's by its last
           job), so it cannot be declined again (no stack-and-decline spin).
        """
        limit = self.worker_concurrency
        idle_mine = waiting_mine = open_mine = idle_any = idle_dormant = None
        for w in self.ready:  # one pass: least recently used first
            if not w.alive:
                continue
            in_flight = w.in_flight
            # A reservation not started yet makes the worker that tenant's already: the job it
            # was reserved for runs next, so another tenant joining it would go first, and a
            # park of that other tenant's would get the reserved job declined.
            owner = w.reserved_for if w.reserved else w.tenant
            if owner == tenant:
                if not in_flight:
                    idle_mine = w  # the last one seen is the most recently used
                elif in_flight < limit and (behind_others or not w.mixed):
                    if not w.computing:
                        waiting_mine = w
                    if open_mine is None or in_flight < open_mine.in_flight:
                        open_mine = w
            elif not in_flight:
                if idle_any is None:
                    idle_any = w
                if tenant in w.dormant:
                    idle_dormant = w
        if not stack:
            waiting_mine = open_mine = None
        # An idle worker before a busy one, even one holding the tenant's runtime: a stacked
        # request waits for the CPU of those ahead of it, a fresh runtime costs ~1 ms.
        worker = idle_mine or waiting_mine or idle_dormant or idle_any or open_mine
        if worker is None and behind_others:
            worker = self._stackable(tenant)
        if worker is not None:
            self.ready.remove(worker)
            self.ready.append(worker)  # most recently used last
        return worker

    def _stackable(self, tenant: str) -> Schedulable | None:
        """Rule 6, a second pass taken only when no worker is idle: the least loaded worker
        open to stacking (module docstring), one holding the tenant's runtime (its last job
        was the tenant's, or it keeps the runtime dormant) first."""
        depth = min(STACK_DEPTH, self.worker_concurrency)
        best, best_key = None, (depth, True)
        for w in self.ready:
            if w.reserved and w.reserved_for != tenant:
                continue  # its next job is not sent yet: ours might go ahead of it
            if w.alive and 0 < w.in_flight < depth and not w.parked:
                held = w.tenant == tenant or tenant in w.dormant
                key = (w.in_flight, not held)
                if key < best_key:
                    best, best_key = w, key
        return best

    # --- reservations --------------------------------------------------------------------------

    def take(
        self, tenant: str, cap: int, *, stack: bool = True, behind_others: bool = True
    ) -> Schedulable | None:
        """Reserve a worker for one request of `tenant` now, or None."""
        if self.tenant_in_flight[tenant] >= cap:
            return None
        worker = self.pick(tenant, stack=stack, behind_others=behind_others)
        if worker is None:
            return None
        worker.reserved += 1
        worker.reserved_for = tenant
        self.tenant_in_flight[tenant] += 1
        return worker

    def release(self, worker: Schedulable, tenant: str) -> None:
        """Give back a reservation that will not be used."""
        worker.reserved -= 1
        self.finished(tenant)
        self._check_in(worker)

    def finished(self, tenant: str) -> None:
        """One request of `tenant` is over (its worker is checked in separately)."""
        self.tenant_in_flight[tenant] -= 1
        if not self.tenant_in_flight[tenant]:
            del self.tenant_in_flight[tenant]

    async def admit(
        self, tenant: str, cap: int | None, timeout_s: float, *, behind_others: bool = True
    ) -> Admitted:
        """A worker reserved for one request of `tenant`, counted against the tenant's
        concurrency; waits its turn (first come, first served) up to timeout_s. With
        behind_others=False, never a worker busy with another tenant's requests."""
        cap = cap or self.tenant_concurrency
        if not self.waiters:
            worker = self.take(tenant, cap, behind_others=behind_others)
            if worker is not None:
                return Admitted(worker, None)  # the usual case: no queue, no cancel scope
        queued_at = trio.current_time()
        with trio.move_on_after(timeout_s):
            while True:
                waiter = Waiter(tenant, cap, behind_others=behind_others)
                self.waiters.append(waiter)
                self._on_starved()
                try:
                    await waiter.ready.wait()
                except BaseException:  # timed out or cancelled: a worker handed meanwhile goes back
                    handed = self._leave(waiter)
                    if handed is not None:
                        self.release(handed, tenant)
                    raise
                worker = self._leave(waiter)
                if worker is not None:
                    return Admitted(worker, trio.current_time() - queued_at)
                if self.closing:
                    raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        if self.tenant_in_flight[tenant] >= cap:
            cause = f"this site already has {cap} requests in flight, its concurrency limit"
        else:
            cause = f"no worker came free within {timeout_s:g} s: the server is busy"
        raise QueueTimeout(f"{cause}; try again shortly", queued_s=trio.current_time() - queued_at)

    def _leave(self, waiter: Waiter) -> Schedulable | None:
        """The waiter stops waiting: its worker if it was handed a live one (else None, and a
        dead one's reservation is given back)."""
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        worker = waiter.worker
        if worker is not None and not worker.alive:
            self.release(worker, waiter.tenant)
            return None
        return worker

    def hand_out(self) -> None:
        """Hand free capacity to waiting requests in arrival order: each woken request holds
        its worker already, so a freed worker wakes one request, not every waiting one."""
        if not self.waiters or self.closing:
            return
        capacity = self._capacity()
        # Fairness: once a waiter (within its own cap) finds no worker, later waiters get idle
        # workers only. A busy tenant cannot keep stacking requests onto its workers while
        # another tenant's older request waits for one of them to come free.
        starving = False
        for waiter in list(self.waiters):
            if self.tenant_in_flight[waiter.tenant] >= waiter.cap:
                continue  # held back by its own tenant's cap, not by the others
            if not capacity.could_take(waiter, stack=not starving):
                starving = True
                continue  # nothing it could take: skip it without a full pick (O(workers))
            worker = self.take(
                waiter.tenant, waiter.cap, stack=not starving, behind_others=waiter.behind_others
            )
            if worker is None:
                starving = True
            else:
                self.waiters.remove(waiter)
                waiter.worker = worker
                waiter.ready.set()
                self._taken(capacity, worker)
                if capacity.empty:
                    return

    def close(self) -> None:
        """No worker is coming: waiting requests answer 503 now, not at their timeout."""
        self.closing = True
        for waiter in self.waiters:
            waiter.ready.set()

    def _taken(self, capacity: Capacity, worker: Schedulable) -> None:
        """Update capacity for the one worker a reservation just changed (a pass over every
        worker per handed request was a tenth of the server's CPU at 1,000 waiters). What
        it could take before comes off; what it can take now is added. The sets may keep
        an entry that no longer holds: that costs one pick that finds nothing, never a
        skipped waiter."""
        depth = min(STACK_DEPTH, self.worker_concurrency)
        before, reserved_before = worker.in_flight - 1, worker.reserved - 1
        if not before:
            capacity.idle -= 1
        elif not reserved_before and before < depth and not worker.parked:
            capacity.stack_any -= 1
        if worker.in_flight < self.worker_concurrency:
            capacity.open_tenants.add(worker.reserved_for)
        if worker.in_flight < depth and not worker.parked:
            capacity.stack_for.add(worker.reserved_for)

    def _capacity(self) -> Capacity:
        """What the ready workers can take now, by the rules `pick` applies."""
        limit = self.worker_concurrency
        depth = min(STACK_DEPTH, limit)
        capacity = Capacity()
        for w in self.ready:
            if not w.alive:
                continue
            in_flight = w.in_flight
            if not in_flight:
                capacity.idle += 1
                continue
            if in_flight < limit:  # rules 2 and 5 (the same owner as in pick)
                capacity.open_tenants.add(w.reserved_for if w.reserved else w.tenant)
            if in_flight < depth and not w.parked:  # rule 6 (as in _stackable)
                if w.reserved:
                    capacity.stack_for.add(w.reserved_for)
                else:
                    capacity.stack_any += 1
        return capacity


@dataclass(slots=True)
class Capacity:
    """The ready workers by what they can take: idle ones (anyone's request), ones open to
    stacking by any tenant or only by the tenant of their pending reservation, and the tenants
    whose own busy workers take one more of theirs. hand_out skips, without a pick, a waiter
    none of them would take: a pick is a pass over every worker, and with a thousand waiters
    and a grown pool, picks that found nothing were most of the server's CPU."""

    idle: int = 0
    stack_any: int = 0
    stack_for: set[str | None] = field(default_factory=set)
    open_tenants: set[str | None] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.idle or self.stack_any or self.stack_for or self.open_tenants)

    def could_take(self, waiter: Waiter, *, stack: bool) -> bool:
        if self.idle:
            return True
        if stack and waiter.tenant in self.open_tenants:
            return True
        return waiter.behind_others and (bool(self.stack_any) or waiter.tenant in self.stack_for)
