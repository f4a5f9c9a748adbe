"""Converters for SNGIN_* values: each takes the variable's text and returns the value, or raises
ValueError with what is wrong (sngin.config names the variable)."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
MIN_TOKEN_LENGTH: Final = 16


def int_range(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            raise ValueError("not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return convert


def float_range(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("not a number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return convert


def parse_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ValueError("not a directory")
    return path.resolve()


def parse_app_path(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    if path.exists() and not path.is_dir():
        raise ValueError("exists and is not a directory")
    return path


def parse_token(text: str) -> str:
    token = text.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("must be printable ASCII without spaces")
    return token


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"\.?{_LABEL}(?:\.{_LABEL})*\Z")


def parse_egress(text: str) -> tuple[str, ...]:
    """CIDRs or host names (a leading dot also allows subdomains), comma or space separated."""
    entries = []
    for part in text.replace(",", " ").split():
        try:
            entries.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            name = part.lower().rstrip(".")
            if not _HOST_NAME.match(name):
                raise ValueError(f"{part!r} is neither a CIDR nor a host name") from None
            entries.append(name)
    return tuple(entries)


def parse_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError("not a readable file")
    return path.resolve()


def parse_regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None


def parse_base_url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not re.match(r"https?://[^/\s]+(/\S*)?\Z", url):
        raise ValueError("expected an http:// or https:// URL")
    return url


def parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


def parse_log_format(text: str) -> str:
    chosen = text.strip().lower()
    if chosen not in ("json", "text"):
        raise ValueError("must be json or text")
    return chosen


REPO_PART: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}\Z")


def parse_module_repo(text: str) -> str | None:
    """'owner/repo' (branch master) or 'owner/repo@ref' -> 'owner/repo/ref'; empty: off."""
    text = text.strip()
    if not text:
        return None
    repository, at, ref = text.partition("@")
    if at and not ref:
        raise ValueError("nothing after @: name a branch, tag or commit")
    parts = repository.split("/")
    if len(parts) != 2 or not all(REPO_PART.match(p) and p not in (".", "..") for p in parts):
        raise ValueError("must be owner/repo or owner/repo@ref (empty turns it off)")
    ref = ref or "master"
    if not REPO_PART.match(ref) or ref in (".", ".."):
        raise ValueError(f"{ref!r} is not a branch, tag or commit")
    return f"{parts[0]}/{parts[1]}/{ref}"


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR") from None
    return tuple(networks)


def parse_on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off"):
        raise ValueError("must be on or off")
    return value == "on"


def parse_http_url(text: str) -> str:
    """An absolute http(s) URL with a host (a webhook)."""
    url = text.strip()
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError("must be an http:// or https:// URL")
    return url


def parse_secret(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be one word")
    return value


def parse_host_patterns(text: str) -> tuple[str, ...]:
    """Host names or shell-style patterns (`sns.*.amazonaws.com`), comma- or space-separated."""
    patterns = tuple(p.lower() for p in re.split(r"[,\s]+", text.strip()) if p)
    if not patterns:
        raise ValueError("expected at least one host name or pattern")
    for pattern in patterns:
        if not re.fullmatch(r"[a-z0-9*?.\-\[\]]+", pattern):
            raise ValueError(f"{pattern!r} is not a host name or pattern")
    return patterns


def parse_owners(text: str) -> frozenset[str]:
    """GitHub users or organisations, comma- or space-separated."""
    owners = frozenset(part for part in text.replace(",", " ").split())
    bad = sorted(o for o in owners if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", o))
    if bad:
        raise ValueError(f"{bad[0]!r} is not a GitHub user or organisation")
    return owners


def parse_redis_url(text: str) -> str:
    url = text.strip()
    if not re.match(r"(rediss?|unix)://\S+\Z", url):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return url


MAX_PROCESSES = 256


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's cpuset included)."""
    return len(os.sched_getaffinity(0)) or 1


def parse_processes(text: str) -> int:
    """SNGIN_PROCESSES: a count, or `auto` for one per usable core."""
    if text.strip().lower() == "auto":
        return min(MAX_PROCESSES, usable_cores())
    try:
        return int_range(1, MAX_PROCESSES)(text)
    except ValueError:
        raise ValueError(f"must be a number from 1 to {MAX_PROCESSES}, or auto") from None


def parse_admin_host(text: str) -> str:
    """SNGIN_ADMIN_HOST: the host name the admin origin answers to on the public listener."""
    host = text.strip().lower().removesuffix(".")
    if host.startswith(".") or not _HOST_NAME.match(host) or host.replace(".", "").isdigit():
        raise ValueError("must be a host name such as admin.example.com (no port, no IP address)")
    return host


UI_MODES = ("on", "readonly", "off")


def parse_ui(text: str) -> str:
    """SNGIN_UI: the management API (and its UI) writes, only reads, or is off."""
    value = text.strip().lower()
    if value not in UI_MODES:
        raise ValueError("must be on, readonly or off")
    return value
