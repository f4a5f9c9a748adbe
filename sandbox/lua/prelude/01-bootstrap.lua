-- prelude/01-bootstrap: the trusted sandbox prelude starts here. The files of this folder are
-- joined in name order into one chunk and compiled to bytecode once per process
-- (sandbox/runtime.py: prelude_bytecode), so the split costs nothing at run time; locals of
-- one part are visible to the parts after it.
--
-- Security invariants of the whole prelude (each is also noted where it is kept):
-- 1. Everything tenant code can reach is a per-request copy or a Lua closure: never the real
--    globals, the registry, a Python object, or a table another request also sees.
-- 2. The `python` bridge is gone before any tenant code exists (below), and harden()
--    (11-harden) strips the real state before the first request runs.
-- 3. Tenant source is compiled as text only, and whole on its own before it is wrapped
--    (08-requests: compile_text).
-- 4. Errors the rules raise carry a private key (07-response-rules), so tenant code cannot
--    forge one.
-- 5. No tenant code runs once a request's memory cap is lifted: an error object that is not a
--    string is described where it is raised, never converted (07-response-rules).
-- 6. load and loadstring compile text only (bytecode refused, also through a reader, and any
--    mode but "t"), into the running request's globals or the table given, never the real
--    ones; setfenv and getfenv reach only Lua functions tenant code compiled (its scripts,
--    modules and loaded chunks), by value or as level 1, never a platform function, a C
--    function, another level or a thread (06-environment: tenant_load, tenant_setfenv).
-- It runs once per runtime while the real globals are still intact and returns the
-- privileged helpers that only the Python side holds; tenant code never sees them.
local pairs, next, type, tostring, select, error, pcall = pairs, next, type, tostring, select, error, pcall
local rawget, rawset, setmetatable, getmetatable = rawget, rawset, setmetatable, getmetatable
local setfenv, getfenv, load, unpack = setfenv, getfenv, load, unpack
local concat, sfind, sformat, sbyte, sgsub, slower, supper, ssub = table.concat, string.find,
  string.format, string.byte, string.gsub, string.lower, string.upper, string.sub
local floor, huge = math.floor, math.huge
local schar, gmatch, smatch, tsort, tonumber = string.char, string.gmatch, string.match,
  table.sort, tonumber
local randomseed = math.randomseed
local collectgarbage, getregistry, real_globals = collectgarbage, debug.getregistry, _G
-- Only for locating a non-string error object (describe_error); `debug` itself is removed.
local getinfo, xpcall = debug.getinfo, xpcall

-- lupa's `python` bridge goes first, while the heap is still small: the full collection that
-- finalises its wrappers (their finalisers need lupa's references table) is cheap now, and
-- harden() can drop that table later without collecting again. The long pause set here puts
-- the next collection well past set-up and the first requests (harden() restores the default
-- for the cycles after); stopping the collector instead would start a cycle on the first
-- allocation after restarting it.
local DEFAULT_GC_PAUSE = 200
do
  local registry = getregistry()
  python = nil
  registry._LOADED.python = nil
  registry.Py_None = nil
  collectgarbage("setpause", 1000)
  collectgarbage()
end

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

local function pack(...)
  return { n = select("#", ...), ... }
end
