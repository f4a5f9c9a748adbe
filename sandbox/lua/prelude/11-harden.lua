-- prelude/11-harden: strip the real state once, then hand Python the API table. Order matters:
-- the host libraries are wrapped and saved (module_libraries) before harden() runs, since
-- after it nothing can reach the registry or the real globals; harden() takes the registry
-- and drops `getregistry` first, so no later step can hand it out; the references table lupa
-- needs to close the state goes to Python, not back into reach.
---------------------------------------------------------------------------------------------
-- Hardening the real state, once, in one call from Python.

-- Names left in the real globals table and in package.loaded; everything else lupa or LuaJIT
-- put there is removed. os keeps only its clock and date functions.
local REAL_GLOBALS_KEPT = {}
for _, name in next, {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "xpcall", "rawequal", "rawget",
  "rawset", "select", "setmetatable", "getmetatable", "tonumber", "tostring", "type", "unpack",
  "_VERSION", "string", "table", "math", "coroutine", "bit",
} do REAL_GLOBALS_KEPT[name] = true end
local LOADED_KEPT = { string = true, table = true, math = true, coroutine = true, bit = true }
local OS_KEPT = { "time", "date", "clock", "difftime" }
local REFERENCES = "LUPA_PYTHON_REFERENCES_TABLE"

-- Strips lupa's `python` bridge and every unsafe library from the real state. Returns the
-- registry and lupa's references table, which Python restores only to close the state.
-- POBJECT stays (lupa dispatches calls to the guarded host functions through it) but its
-- metatable is locked; the registry itself is unreachable once `debug` is gone.
local function harden()
  local registry = getregistry()
  getregistry = nil
  local references = registry[REFERENCES]
  local pobject = registry.POBJECT
  if pobject ~= nil then pobject.__metatable = false end
  local loaded, preload = registry._LOADED, registry._PRELOAD
  for name in next, copy(loaded) do
    if not LOADED_KEPT[name] then loaded[name] = nil end
  end
  for name in next, copy(preload) do preload[name] = nil end
  local real, safe_os = real_globals, {}
  real_globals = nil
  for _, name in next, OS_KEPT do safe_os[name] = real.os[name] end
  for name in next, copy(real) do
    if not REAL_GLOBALS_KEPT[name] then real[name] = nil end
  end
  real.os = safe_os
  -- The `python.*` wrappers were finalised at the top, while lupa's references table was
  -- registered (their finalisers look it up); since then only the host functions became
  -- Python references, and they stay reachable until the state closes.
  registry[REFERENCES] = nil
  collectgarbage("setpause", DEFAULT_GC_PAUSE)
  return registry, references
end

return {
  harden = harden,
  new_env = new_env,
  begin = begin,
  step = step,
  compile = compile_text,
  module_libraries = module_libraries,
  host_libraries = host_libraries,
  json_null = json_null,
  wrap_host = wrap_host,
}
