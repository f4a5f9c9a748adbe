"""python -m sandbox: one worker process; exits when its stdin closes."""

from __future__ import annotations

import signal
import sys

# The server decides when a worker stops (it closes stdin, or kills it); SIGINT is not ours.
signal.signal(signal.SIGINT, signal.SIG_IGN)

from sandbox.worker import main  # noqa: E402

sys.exit(main())
