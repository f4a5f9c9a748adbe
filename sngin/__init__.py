"""sngin: a multi-tenant Lua scripting server."""

__version__ = "0.1.0"
