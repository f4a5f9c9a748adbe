"""Host header -> tenant id and request path -> script key; pure functions, no I/O."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Final

from sngin.errors import BadRequest

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_PATH_BYTES: Final = 2048
MAX_HOST_LENGTH: Final = 253
_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_BAD_PATH_CHARS: Final = re.compile(r"[\x00-\x1f\x7f\\]")


def tenant_of(raw_host: str) -> str:
    """The tenant id for a Host header: lower-cased, port stripped, one trailing dot removed.

    Only ASCII DNS names (LDH labels) name tenants; IDNs arrive as punycode. IP literals and
    anything else are a BadRequest, so a tenant id is always safe as a folder or key prefix.
    """
    host = raw_host.strip().lower()
    if not host:
        raise BadRequest("missing Host header")
    if host.startswith("["):
        raise BadRequest("an IP address is not a tenant host name")
    name, sep, port = host.rpartition(":")
    if sep:
        if not port.isdigit() or len(port) > 5:
            raise BadRequest("invalid Host header")
        host = name
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > MAX_HOST_LENGTH or not host.isascii():
        raise BadRequest("invalid Host header")
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise BadRequest("invalid Host header")
    if labels[-1].isdigit():
        raise BadRequest("an IP address is not a tenant host name")
    return host


def host_of(header: str) -> str:
    """A Host header's name: lower-cased, port and one trailing dot removed, IPv6 unbracketed
    (no validation: for comparing with the admin origin's names)."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host.removesuffix(".")


def names_admin_origin(host: str, admin_host: str | None) -> bool:
    """An IP literal, `localhost` or SNGIN_ADMIN_HOST: the Hosts the admin origin (the web UI,
    cookie sessions) answers to on the public listener, so never a tenant's."""
    host = host.removesuffix(".")
    if host == "localhost" or (admin_host is not None and host == admin_host):
        return True
    if not host[-1:].isdigit() and ":" not in host:
        return False  # (on every tenant request: no IP parse for a name that cannot be one)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def script_path(path: str) -> str:
    """The normalised script folder for a decoded URL path: 'a/b' for '/a//b/', '' for '/'.

    Rejects '..' segments, NUL and other control characters, backslashes and paths over
    2,048 bytes, so a script key never leaves its tenant's folder.
    """
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise BadRequest(f"path longer than {MAX_PATH_BYTES} bytes")
    if _BAD_PATH_CHARS.search(path):
        raise BadRequest("path contains a backslash or control character")
    segments = [s for s in path.split("/") if s and s != "."]
    if ".." in segments:
        raise BadRequest("path contains a '..' segment")
    return "/".join(segments)


def script_key(tenant: str, folder: str) -> str:
    """The key naming a script: 'host' or 'host/a/b' (its file is '<key>/index.lua')."""
    return f"{tenant}/{folder}" if folder else tenant


def file_key(tenant: str, path: str) -> str:
    """The key of a plain file of the tenant ('host//lib/util.lua', 'host//_sngin.json'): a
    module or the tenant's configuration. The double slash never occurs in a script key."""
    return f"{tenant}//{path}"


CONFIG_NAME: Final = "_sngin.json"


def is_config_key(key: str) -> bool:
    """True for the key of a tenant's configuration ('host//_sngin.json')."""
    return key.partition("//")[2] == CONFIG_NAME


def covering(tenant: str, folder: str, *, recursive: bool) -> Callable[[str], bool]:
    """Which keys a purge covers: the script and the file at that path, or everything under a
    folder at segment boundaries ('a' covers 'a' and 'a/x', not 'ab'; the empty folder covers
    the whole tenant, its modules and configuration included)."""
    script, file = script_key(tenant, folder), file_key(tenant, folder)
    if not recursive:
        return lambda key: key in (script, file)
    below, files_below = script + "/", file + "/"
    return lambda key: key in (script, file) or key.startswith(below) or key.startswith(files_below)
