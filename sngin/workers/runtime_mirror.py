"""The server's mirror of what one worker child holds: the tenant whose runtime is active, the
script versions that runtime has compiled (their source need not cross the pipe again), and the
runtimes the child keeps dormant for the tenants it served last (sandbox/worker.py)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

# Versions remembered per runtime; past this the set restarts (a miss only resends source).
MAX_KNOWN: Final = 1024
# The child bounds its dormant runtimes by memory and reports the ones it closes (forget());
# this only bounds the mirror itself, should reports ever be lost.
MAX_DORMANT: Final = 10_000

Version = tuple[str, str]  # (script key, version)


class RuntimeMirror:
    """Kept true by the child's reports (Reply.dropped_runtimes); where it is still wrong, a
    miss costs a new runtime, and the child asks for the source it lacks."""

    def __init__(self) -> None:
        self.tenant: str | None = None
        self.switches = 0
        self._known: set[Version] = set()
        self.dormant: OrderedDict[str, set[Version]] = OrderedDict()

    def switch_to(self, tenant: str) -> None:
        """The next job is `tenant`'s: the active runtime is set aside (kept dormant) and the
        tenant's own comes back, with what it compiled, if the child kept it."""
        if tenant == self.tenant:
            return
        if self.tenant is not None:
            self.switches += 1
            self.dormant[self.tenant] = self._known
            while len(self.dormant) > MAX_DORMANT:
                self.dormant.popitem(last=False)
        self._known = self.dormant.pop(tenant, set())
        self.tenant = tenant

    def switch_back(self, declined: str, active: str | None) -> None:
        """The child declined the last job sent, of `declined` (sandbox/worker.py: another
        tenant's requests were parked there): its runtime never became active, `active`'s
        still is. Without this the worker would pass for `declined`'s own, and its next
        request would be sent there again, to be declined again."""
        if self.tenant != declined or active is None or active == declined:
            return
        previous = active
        if self._known:  # it came back from dormant: the child still keeps it so
            self.dormant[declined] = self._known
        self._known = self.dormant.pop(previous, set())
        self.tenant = previous

    def forget(self, tenants: list[str]) -> None:
        """The child closed these tenants' kept runtimes (its memory bound, or one too big)."""
        for tenant in tenants:
            self.dormant.pop(tenant, None)

    def has_compiled(self, version: Version) -> bool:
        return version in self._known

    def compiled(self, version: Version) -> None:
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known.add(version)
