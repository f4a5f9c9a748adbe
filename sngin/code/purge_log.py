"""The purge log: which keys a purge covered since a given moment (an epoch), so a fetch that
was in flight when the purge arrived is not cached when it lands."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_PURGE_LOG: Final = 1000


class PurgeLog:
    def __init__(self, size: int = MAX_PURGE_LOG) -> None:
        self.epoch = 0  # read it before a fetch; ask covered_since() after
        self.count = 0
        self._purges: deque[tuple[int, Callable[[str], bool]]] = deque(maxlen=size)

    def record(self, covers: Callable[[str], bool]) -> None:
        self.epoch += 1
        self.count += 1
        self._purges.append((self.epoch, covers))

    def covered_since(self, key: str, epoch: int) -> bool:
        if epoch == self.epoch:
            return False
        if not self._purges or self._purges[0][0] > epoch + 1:
            return True  # the log no longer reaches back that far: assume covered
        return any(covers(key) for e, covers in self._purges if e > epoch)
