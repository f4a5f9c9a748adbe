"""The README's quick start, run as written, so it cannot drift from the code: its install line
is the one CI runs (with the test extras), `sngin serve` from a fresh folder in the background,
every line of its curl block against it with the answer its comment promises, then a stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.support import free_port, wait_until_serving

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start_blocks() -> list[list[str]]:
    """The shell blocks of the README's Quick start section, as lists of lines."""
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_the_install_line_is_the_one_ci_runs():
    install, _, tests = quick_start_blocks()
    assert install == [
        "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e ."
        " && .venv/bin/sngin serve"
    ]
    # CI runs the test command (.ci/run), which installs the same way with the test extras.
    assert tests == [install[0].replace("-e .", "-e '.[test]'").replace(
        ".venv/bin/sngin serve", ".venv/bin/python -m pytest")]  # fmt: skip
    ci = (README.parent / ".ci" / "run").read_text()
    assert tests[0] in ci


async def test_the_quick_start_serves_what_it_says(tmp_path):
    install, curls, _ = quick_start_blocks()
    serve = install[0].rsplit(" && ", 1)[1]
    assert serve == ".venv/bin/sngin serve"
    sngin = Path(sys.executable).parent / "sngin"  # this test's .venv/bin/sngin
    port = free_port()
    env = {
        **os.environ,
        "SNGIN_BIND": f"127.0.0.1:{port}",
        "SNGIN_DATA_PATH": str(tmp_path / "data"),
        "SNGIN_APP_PATH": str(tmp_path / "app"),
    }
    fresh = tmp_path / "clone"  # no ./sites: the bundled demo sites, as from a fresh clone
    fresh.mkdir()
    process = await trio.lowlevel.open_process(
        [str(sngin), *serve.split()[1:]], cwd=fresh, env=env, stderr=subprocess.PIPE
    )
    try:
        with trio.fail_after(60):
            await wait_until_serving(process)
            for line in curls:
                command, _, promise = line.partition("#")
                command = command.strip().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                answer = await trio.run_process(
                    ["bash", "-c", command.replace("curl ", "curl -sS ", 1)],
                    capture_stdout=True, check=True,
                )  # fmt: skip
                said, promise = answer.stdout.decode().strip(), promise.strip()
                if promise.startswith("a JSON"):
                    assert isinstance(json.loads(said), dict), line
                else:
                    assert said == promise, line
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C in the first terminal
        with trio.fail_after(60):
            code = await process.wait()
    assert code == 0


def documented_commands() -> list[str]:
    """Every `sngin ...` line of the shell blocks in the README and docs/."""
    found = []
    for page in [README, *sorted((README.parent / "docs").glob("*.md"))]:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                for part in re.split(r"&&|\|", line.split(" #", 1)[0]):
                    words = part.strip()
                    if re.match(r"(\.venv/bin/)?sngin ", words):
                        found.append(words.split(">", 1)[0].strip())
    return found


def test_every_documented_command_is_one_sngin_takes():
    import shlex

    from sngin.cli import build_parser

    commands = documented_commands()
    assert len(commands) >= 15
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            raise AssertionError(f"the docs show a command sngin refuses: {command}") from None
