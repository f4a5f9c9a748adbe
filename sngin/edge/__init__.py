"""The tenants' edge: the ASGI dispatcher (no framework on the hot path), the tenant pipeline,
connection and descriptor bounds, forwarding headers, response rules, the site gate, and the
Deps every request reads."""
