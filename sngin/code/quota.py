"""A tenant's code quota: files and bytes its code may hold through the management API
(SNGIN_CODE_QUOTA_FILES, SNGIN_CODE_QUOTA_BYTES); the stores count, this decides."""

from __future__ import annotations

from dataclasses import dataclass

from sngin.errors import BadRequest


class CodeQuotaExceeded(BadRequest):
    """A write would take the tenant's code past its quota (SNGIN_CODE_QUOTA_*)."""

    status = 413


@dataclass(frozen=True, slots=True)
class CodeQuota:
    max_bytes: int = 64 * 1024 * 1024  # SNGIN_CODE_QUOTA_BYTES: files and their history
    max_files: int = 2000  # SNGIN_CODE_QUOTA_FILES

    def check(self, files: int, size: int) -> None:
        """CodeQuotaExceeded when `files` files holding `size` bytes would be past it."""
        if files > self.max_files:
            raise CodeQuotaExceeded(
                f"this site's code quota of {self.max_files} files is used"
                " (SNGIN_CODE_QUOTA_FILES): delete files first"
            )
        if size > self.max_bytes:
            raise CodeQuotaExceeded(
                f"this site's code quota of {self.max_bytes // (1024 * 1024)} MiB is used"
                " (SNGIN_CODE_QUOTA_BYTES, earlier versions included): delete files first"
            )
