"""What a code fetch and a pool run report back to the request that made them, passed
explicitly (not through context variables, where a later fetch in the same request, such as
the configuration's, would overwrite the script's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FetchNote:
    """How a store answered: hit, miss, revalidated, stale, or none (no fetch)."""

    outcome: str = "none"


@dataclass(slots=True)
class RunNote:
    """Which worker ran the request, and the limit it was killed for, if any."""

    worker: int | None = None
    kill: str | None = None
    # When a list: the request's first log lines as written (a scheduled run's record and a
    # replay bundle keep them); None keeps nothing.
    log_head: list[bytes] | None = None
