"""A tenant's scheduled runs (`cron` in its _sngin.json): each entry checked, and when it fires.

Schedules are read by croniter (standard 5 fields, the `@hourly` … macros, or 6 fields with
seconds first), in the entry's IANA time zone (UTC unless given). An entry that cannot be used
is not fatal: it is reported with its reason and the others apply. Nothing here runs a script;
the scheduler that fires the ticks builds on it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import CroniterError, croniter

from sngin.errors import BadRequest
from sngin.names import script_path

# How many ticks of a schedule are looked at to find how often it fires (its shortest gap):
# enough to see the closest pair of any pattern within a day or two.
SAMPLED_TICKS: Final = 200
SAMPLE_FROM: Final = datetime(2026, 1, 1)  # a fixed start: the same verdict every time


class CronSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One entry as written: {"schedule": "*/5 * * * *", "path": "/tick", "timezone": "UTC"}."""

    schedule: str
    path: str
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class CronEntry:
    index: int  # its place in the list, as written
    schedule: str  # as written
    path: str
    timezone: str
    seconds: bool  # 6 fields, seconds first
    key: str  # what identifies the entry's ticks (schedule, path and zone), for claims

    def next_after(self, moment: float) -> float:
        """The first tick strictly after `moment` (unix time). A wall-clock time that a
        daylight-saving change repeats fires once, as cron does, unless the schedule names no
        hour (an every-n-minutes job fires through both)."""
        zone = ZoneInfo(self.timezone)
        ticks = croniter(
            self.schedule, datetime.fromtimestamp(moment, zone), second_at_beginning=self.seconds
        )
        while True:
            tick = float(ticks.get_next(float))
            if datetime.fromtimestamp(tick, zone).fold == 0 or not self._fixed_hours:
                return tick

    @property
    def _fixed_hours(self) -> bool:
        fields = self.schedule.split()
        if self.schedule.startswith("@"):
            return self.schedule not in ("@hourly",)
        hours = fields[2] if self.seconds else fields[1]
        return hours != "*" and not hours.startswith("*/")


@dataclass(frozen=True, slots=True)
class CronProblem:
    index: int
    schedule: str  # as written ("" when there was none)
    reason: str

    def __str__(self) -> str:
        return f'cron[{self.index}]: "{self.schedule}": {self.reason}'


def parse_entries(
    raw: list[Any], *, max_entries: int, min_interval_s: float
) -> tuple[tuple[CronEntry, ...], tuple[CronProblem, ...]]:
    """The usable entries and, for each other one, why not (SNGIN_CRON_MAX_PER_TENANT,
    SNGIN_CRON_MIN_INTERVAL_S, a bad schedule, path or time zone)."""
    entries: list[CronEntry] = []
    problems: list[CronProblem] = []
    for index, item in enumerate(raw):
        schedule = item.get("schedule", "") if isinstance(item, dict) else ""
        schedule = schedule if isinstance(schedule, str) else str(schedule)
        try:
            spec = msgspec.convert(item, CronSpec)
            if len(entries) >= max_entries:
                raise ValueError(f"more than {max_entries} entries (SNGIN_CRON_MAX_PER_TENANT)")
            entries.append(entry_of(index, spec, min_interval_s))
        except (msgspec.ValidationError, ValueError) as exc:
            problems.append(CronProblem(index, schedule[:200], str(exc)))
    return tuple(entries), tuple(problems)


def entry_of(index: int, spec: CronSpec, min_interval_s: float) -> CronEntry:
    schedule = " ".join(spec.schedule.split())
    seconds = len(schedule.split()) == 6
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {spec.timezone[:64]!r}") from None
    if not spec.path.startswith("/"):
        raise ValueError(f"not a script path (it starts with /): {spec.path[:200]!r}")
    try:
        script_path(spec.path)
    except BadRequest as exc:
        raise ValueError(f"not a script path: {exc.message}") from None
    problem = schedule_problem(schedule, spec.timezone, seconds, min_interval_s)
    if problem is not None:
        raise ValueError(problem)
    key = hashlib.sha256(f"{schedule}\n{spec.path}\n{spec.timezone}".encode()).hexdigest()[:16]
    return CronEntry(index, spec.schedule, spec.path, spec.timezone, seconds, key)


@functools.lru_cache(maxsize=4096)
def schedule_problem(
    schedule: str, timezone: str, seconds: bool, min_interval_s: float
) -> str | None:
    """Why a schedule cannot be used, or None; remembered, since many sites share a few
    schedules and a scan reads them all. A 5-field schedule fires at most once a minute: its
    interval needs looking at only when the operator's minimum is longer."""
    zone = ZoneInfo(timezone)
    try:
        ticks = croniter(schedule, SAMPLE_FROM.replace(tzinfo=zone), second_at_beginning=seconds)
        first = float(ticks.get_next(float))
        if not seconds and min_interval_s <= 60:
            return None
        times = [first] + [float(ticks.get_next(float)) for _ in range(SAMPLED_TICKS - 1)]
    except (CroniterError, ValueError, KeyError) as exc:
        return f"not a cron schedule: {exc}"
    shortest = min(b - a for a, b in itertools.pairwise(times))
    if shortest < min_interval_s:
        return (
            f"fires every {shortest:g} s, more often than SNGIN_CRON_MIN_INTERVAL_S "
            f"({min_interval_s:g} s)"
        )
    return None
