"""The limits one tenant's requests run under (the operator's defaults, narrowed by its
_sngin.json); enforced by the pool (wall time) and the worker (CPU, memory)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TenantLimits:
    timeout_ms: int = 5000
    cpu_ms: int = 2000
    memory_mb: int = 128
