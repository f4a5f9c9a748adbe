"""python -m sandbox [--address-space-bytes N]: one worker; exits when its stdin closes."""

from __future__ import annotations

import sys

from sandbox import limits


def address_space(argv: list[str]) -> int | None:
    if len(argv) == 2 and argv[0] == "--address-space-bytes":
        return int(argv[1])
    return None


# Limits first, so everything after (lupa included) runs under them.
limits.apply_at_start(address_space(sys.argv[1:]))

from sandbox.worker import main  # noqa: E402

sys.exit(main())
