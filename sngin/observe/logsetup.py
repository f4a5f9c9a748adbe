"""The server's log: one format for every line on stderr (`SNGIN_LOG_FORMAT`), a time on each,
library loggers that would print tenants' URLs kept quiet, and URL queries scrubbed."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Final, TextIO

from sngin.observe.stderr_writer import stderr_writer

FORMATS: Final = ("json", "text")
SCRIPT_LOGGER: Final = "sngin.script"
# httpx logs every request's URL at INFO (a tenant's query string may hold its API key); S3
# fetches and the readiness probe would add a line every 10 s. Warnings still get through.
# Libraries that log each request or retry at INFO: their warnings and errors still show.
QUIET_LOGGERS: Final = ("httpx", "httpcore", "botocore", "hpack", "h2", "coredis")
# A query string in a URL anywhere in a server line (a traceback, an error message).
URL_QUERY: Final = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*")


def default_format(stream: TextIO) -> str:
    """json for log collectors, text for a person at a terminal."""
    return "text" if stream.isatty() else "json"


def timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(created))


def scrub(text: str) -> str:
    return URL_QUERY.sub(r"\1?[query removed]", text)


class JsonLines(logging.Formatter):
    """{"time", "level", "logger", "message"} (+ "exception"); a script line's own JSON fields
    (tenant, request, path, line) are merged in rather than nested as a string. With several
    server processes, "process" says which one wrote the line."""

    def __init__(self, process: int | None = None) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields: dict[str, object] = {
            "time": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.process is not None:
            fields["process"] = self.process
        carried = getattr(record, "fields", None)
        if isinstance(carried, dict):
            fields.update(carried)
        elif record.name == SCRIPT_LOGGER and message.startswith("{"):
            try:
                fields.update(json.loads(message))
            except ValueError:
                fields["message"] = message
        else:
            fields["message"] = scrub(message)
        if record.exc_info:
            fields["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(fields, ensure_ascii=False)


class TextLines(logging.Formatter):
    """time level logger[process]: message, then the traceback if any."""

    def __init__(self, process: int | None = None) -> None:
        super().__init__()
        self.process = "" if process is None else f"[{process}]"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name != SCRIPT_LOGGER:
            message = scrub(message)
        name = record.name + self.process
        line = f"{timestamp(record.created)} {record.levelname} {name}: {message}"
        if record.exc_info:
            line += "\n" + scrub(self.formatException(record.exc_info))
        return line


def quiet_libraries() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class QueuedStderrHandler(logging.Handler):
    """Formats a record and hands the line to the stderr writer thread
    (sngin.observe.stderr_writer): logging never blocks the event loop on a stalled reader."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        stderr_writer().write(line.encode("utf-8", "replace"))


def configure(
    level: str, log_format: str | None, stream: TextIO | None = None, process: int | None = None
) -> str:
    """Route every logger through one stderr handler in the chosen format; returns the
    format used (None: json unless stderr is a terminal). `process`: this is that one of the
    node's several server processes."""
    chosen = log_format or default_format(stream or sys.stderr)
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else QueuedStderrHandler()
    )
    handler.setFormatter(JsonLines(process) if chosen == "json" else TextLines(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet_libraries()
    return chosen
