"""python -m sandbox [--address-space-bytes N] [--kept-runtimes-bytes N] [--zygote-fd N]: one
worker, which exits when its stdin closes; or with --zygote-fd, the zygote that forks workers
(sandbox.zygote), which exits when that control socket closes."""

from __future__ import annotations

import sys

from sandbox import limits


def options(argv: list[str]) -> dict[str, int]:
    """`--name N` pairs (only the server starts workers, so anything else is a bug: exit)."""
    known = {"--address-space-bytes", "--kept-runtimes-bytes", "--zygote-fd"}
    if len(argv) % 2 or not set(argv[::2]) <= known:
        sys.exit(f"usage: python -m sandbox {' '.join(f'[{k} N]' for k in sorted(known))}")
    return {name: int(value) for name, value in zip(argv[::2], argv[1::2], strict=True)}


given = options(sys.argv[1:])
if "--zygote-fd" in given:
    from sandbox.zygote import main as zygote_main

    sys.exit(
        zygote_main(
            given["--zygote-fd"],
            given.get("--address-space-bytes"),
            given.get("--kept-runtimes-bytes"),
        )
    )

# Limits first, so everything after (lupa included) runs under them.
limits.apply_at_start(given.get("--address-space-bytes"))

from sandbox.worker import main  # noqa: E402

sys.exit(main(kept_runtimes_bytes=given.get("--kept-runtimes-bytes")))
