"""python -m sngin: the same as the `sngin` command."""

from __future__ import annotations

import sys

from sngin.cli import main

sys.exit(main())
