"""The sandbox worker program: runs tenant Lua in isolated LuaJIT runtimes.

It never imports sngin, trio, httpx or quart, so workers start small and fast.
"""
