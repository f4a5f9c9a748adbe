-- prelude/04-libraries: the library templates each request gets copies of, and the shared
-- string metatable (invariant 1: it is locked, and points at the running request's copy).
-- Library templates: copied per request so a change made by one request never reaches another.
local safe_string = copy(string)
safe_string.dump = nil
string.dump = nil
local LIBRARIES = {
  string = safe_string,
  table = copy(table),
  math = copy(math),
  os = { time = os.time, date = os.date, clock = os.clock, difftime = os.difftime },
  coroutine = tenant_coroutine,
  http = http_library,
  bit = copy(bit),
}
local BASE = {}
for _, name in next, {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "rawequal", "rawget", "rawset",
  "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "unpack", "_VERSION",
} do
  BASE[name] = _G[name]
end

-- The one metatable every string shares: tenants may not read or replace it, and its __index
-- points at the running request's own copy of `string` (so `s:upper()` sees that request's
-- string table, as in stock Lua) and at a dump-free copy between requests.
local string_mt = getmetatable("")
string_mt.__metatable = false
string_mt.__index = safe_string
