"""`sngin replay HOST ID [--source FILE] [--json]`: fetch a replay bundle through the admin API
and run it again here, in a local worker with no network: every platform call answered from
the bundle in order, time and randomness as recorded. It prints the answer as `sngin run`
does, then whether the run matched the recording or where it diverged."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import trio

from sngin.client.oneshot import print_reply
from sngin.client.output import show
from sngin.client.remote import admin_client
from sngin.errors import BadRequest, SnginError
from sngin.replay.bundle import decode
from sngin.replay.player import ReplayCalls, replay_job, verdict
from sngin.server import default_limits, pool_config
from sngin.workers.pool import open_pool

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

    from sandbox.protocol import Reply
    from sngin.config import Settings
    from sngin.replay.bundle import Bundle


def run_replay(settings: Settings, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    source = None
    if args.source is not None:
        try:
            source = args.source.read_bytes()
        except OSError as exc:
            raise BadRequest(f"cannot read {args.source}: {exc.strerror}") from None
    with admin_client(args, env) as client:
        answer = client.get(f"/__sngin/code/{args.host}/replays/{args.id}")
    if answer.status_code != 200:  # (the one convention: a line on stderr, or the JSON)
        return show(answer, as_json=args.json)
    bundle = decode(answer.content)
    # The script's lines: on stderr as `sngin run` shows them, or in --json's "logs".
    lines: logging.Handler = logging.StreamHandler(sys.stderr)
    lines.setFormatter(logging.Formatter("%(message)s"))
    kept = KeptLines()
    script_log = logging.getLogger("sngin.script")
    script_log.addHandler(kept if args.json else lines)
    script_log.setLevel(logging.INFO)
    try:
        result, outcome = trio.run(replay_locally, settings, bundle, source)
    finally:
        script_log.removeHandler(kept if args.json else lines)
    if args.json:
        print(json.dumps(outcome | {"logs": kept.lines}))
        return 0 if outcome["matched"] or source is not None else 1
    code = print_reply(result)
    if outcome["matched"]:
        print("replay: matched the recording (same status and body)")
    else:
        recorded = outcome["recorded"]
        print(f"replay: differs from the recording ({recorded['status']}"
              f"{': ' + recorded['error'] if recorded['error'] else ''})")  # fmt: skip
    for divergence in outcome["divergences"]:
        print(f"replay: diverged: {divergence}")
    return code


class KeptLines(logging.Handler):
    """Each script line's text (its record's fields, as the server's tails read them)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            self.lines.append(str(fields.get("line", fields.get("error", ""))))


async def replay_locally(
    settings: Settings, bundle: Bundle, source: bytes | None
) -> tuple[Reply | SnginError, dict[str, Any]]:
    config = dataclasses.replace(pool_config(settings), size=1)
    limits_for = default_limits(settings)
    limits = limits_for(bundle.tenant)
    job = replay_job(bundle, source, limits.wire)
    calls = ReplayCalls(bundle)
    async with open_pool(config, limits_for) as pool:
        try:
            reply = await pool.run(job, calls, limits=limits)
        except SnginError as exc:
            return exc, verdict(bundle, None, exc.message, calls)
    return reply, verdict(bundle, reply, None, calls)
