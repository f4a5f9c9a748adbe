"""The server log's formats and scrubbing, without a server."""

from __future__ import annotations

import io
import json
import logging

import pytest

from sngin.observe.logsetup import configure, scrub


@pytest.fixture(autouse=True)
def root_logger_restored():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_queries_are_scrubbed_from_server_lines_and_tracebacks():
    assert scrub("GET https://api.x/v1?key=abc&b=2 failed") == (
        "GET https://api.x/v1?[query removed] failed"
    )
    stream = io.StringIO()
    configure("info", "json", stream)
    try:
        raise ValueError("bad http://h.test/p?token=s3cr3t")
    except ValueError:
        logging.getLogger("sngin.test").exception("call to http://h.test/p?token=s3cr3t failed")
    record = json.loads(stream.getvalue())
    assert "s3cr3t" not in stream.getvalue()
    assert record["message"] == "call to http://h.test/p?[query removed] failed"
    assert "ValueError" in record["exception"]


def test_script_lines_keep_their_fields_and_text():
    stream = io.StringIO()
    configure("info", "json", stream)
    line = {"tenant": "a.test", "request": "r1", "path": "/", "line": "see http://x/?q=mine"}
    logging.getLogger("sngin.script").info("%s", json.dumps(line))
    record = json.loads(stream.getvalue())
    assert {k: record[k] for k in line} == line  # a tenant's own output is not rewritten
    assert record["logger"] == "sngin.script"


def test_text_lines_start_with_the_time_and_level():
    stream = io.StringIO()
    assert configure("info", "text", stream) == "text"
    logging.getLogger("sngin.test").warning("hello")
    assert stream.getvalue().split(" ", 1)[1] == "WARNING sngin.test: hello\n"


def test_the_default_is_json_unless_stderr_is_a_terminal():
    assert configure("info", None, io.StringIO()) == "json"


def test_the_stderr_writer_queues_past_a_full_pipe_and_counts_what_it_drops():
    import os
    import threading

    from sngin.observe.stderr_writer import StderrWriter

    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "wb")
    writer = StderrWriter(stream, max_pending_bytes=200_000)
    line = b"x" * 999 + b"\n"
    results = [writer.write(line) for _ in range(400)]  # 400 kB: far past the pipe's 64 kB
    assert all(results[:64])  # the pipe took the first ones at once, and nothing blocked
    assert results.count(False) == writer.lost > 0  # past 200 kB queued: dropped, counted
    received = bytearray()
    kept = results.count(True) * len(line)
    done = threading.Event()

    def read() -> None:  # the reader catches up
        while len(received) < kept:
            received.extend(os.read(read_end, 65536))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert writer.flush(timeout_s=10)  # the queue empties
    assert done.wait(10)
    assert bytes(received) == line * results.count(True)
    stream.close()
    os.close(read_end)
