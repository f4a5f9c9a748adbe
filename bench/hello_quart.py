"""The Quart-trio floor: Hypercorn + a Quart-trio hello."""

from __future__ import annotations

from quart_trio import QuartTrio

app = QuartTrio(__name__)


@app.get("/")
async def hello() -> tuple[str, int, dict[str, str]]:
    return "Hello, world!\n", 200, {"Content-Type": "text/plain; charset=utf-8"}
