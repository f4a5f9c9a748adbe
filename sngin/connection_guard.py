"""Keeps an unexpected error inside the connection that raised it.

Hypercorn runs every connection's task in the listener's nursery, and lets an exception from
one connection (an h11 LocalProtocolError raised while a response is sent, say) leave it: that
ends the listener and `serve`. sngin validates responses before sending them
(sngin.response_rules), so this is the backstop: Hypercorn's per-connection server class is
replaced, once, by one that logs such an error and closes only that connection.
"""

from __future__ import annotations

import logging

import hypercorn.trio.run
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)


class ContainedTCPServer(TCPServer):
    """Hypercorn's connection handler; an Exception ends this connection only (cancellation
    still propagates)."""

    async def run(self) -> None:
        try:
            await super().run()
        except* Exception as group:
            log.error("a connection ended with an unexpected error", exc_info=group)


def contain_connection_errors() -> None:
    """Install ContainedTCPServer where hypercorn.trio's serve loop looks its handler up."""
    current = getattr(hypercorn.trio.run, "TCPServer", None)
    if current is ContainedTCPServer:
        return
    if current is not TCPServer:  # a Hypercorn that moved things: fail loudly, in the tests
        raise RuntimeError("hypercorn.trio.run.TCPServer is not Hypercorn's TCPServer")
    setattr(hypercorn.trio.run, "TCPServer", ContainedTCPServer)  # noqa: B010
