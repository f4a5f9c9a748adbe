"""The one limits type: everything one request runs under. The operator's defaults come from
SNGIN_* (Settings.limits); a tenant's _sngin.json may narrow them (sngin.tenants.config). The
wall time is enforced by the pool, the rest by the worker, which receives `wire`: derived
here, once per Limits value, and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from sandbox.protocol import WireLimits

MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    timeout_ms: int = 5000  # SNGIN_TIMEOUT_MS: wall time per request
    cpu_ms: int = 2000  # SNGIN_CPU_MS: CPU time per request
    memory_mb: int = 128  # SNGIN_MEMORY_MB: Lua memory per request (a tenant's, per worker)
    max_body_bytes: int = 10 * MIB  # SNGIN_MAX_BODY_BYTES: response body
    max_subrequests: int = 50  # SNGIN_MAX_SUBREQUESTS: http.request calls per request
    max_modules: int = 100  # SNGIN_MAX_MODULES: module fetches for `require` per request
    # What the worker enforces, in its own terms.
    wire: WireLimits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        wire = WireLimits(
            cpu_ms=self.cpu_ms,
            memory_bytes=self.memory_mb * MIB,
            max_body_bytes=self.max_body_bytes,
        )
        object.__setattr__(self, "wire", wire)
