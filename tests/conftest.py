"""Shared test setup: tests only ever talk to loopback."""

from __future__ import annotations

import os

# botocore otherwise probes the cloud metadata address for credentials.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
