-- prelude/09-modules: require for platform libraries, the tenant's own modules and modules by
-- GitHub URL; each module gets an environment of its own copies (invariant 1).
---------------------------------------------------------------------------------------------
-- require: platform libraries, the tenant's own modules, and modules by GitHub URL.

local PLATFORM_MODULES = {
  json = true, crypto = true, base64 = true, utils = true, http = true, string = true,
  table = true, math = true, os = true, coroutine = true, bit = true,
}
local loaded = {}            -- canonical name -> { version =, value = } (this tenant's runtime)
local module_factories = {}  -- canonical name .. version -> compiled factory
local module_tables = setmetatable({}, { __mode = "k" })  -- module env -> module() table
local saved_host_libraries   -- set by module_libraries()

local SEGMENT = "^[%w_%-%.]+$"

local function valid_path(path)
  for segment in gmatch(path, "[^/]*") do
    if segment ~= "" and (not sfind(segment, SEGMENT) or segment == "." or segment == "..") then
      return false
    end
  end
  return not sfind(path, "//", 1, true) and ssub(path, 1, 1) ~= "/" and ssub(path, -1) ~= "/"
end

local function fail_require(message)
  error("require: " .. message, 3)
end

-- The canonical name of a module: "github:<user>/<repo>/<ref>/<path>.lua" or "tenant:<path>.lua".
local function resolve(name, base)
  if #name > 1024 then fail_require("module name longer than 1024 bytes") end
  local url = smatch(name, "^https://(.+)$") or name
  local user, repo, ref, path = smatch(url, "^github%.com/([^/]+)/([^/]+)/blob/([^/]+)/(.+)$")
  if user then
    local full = user .. "/" .. repo .. "/" .. ref .. "/" .. path
    if not valid_path(full) or not sfind(path, "%.lua$") then
      fail_require("'" .. name .. "' is not a valid GitHub module URL")
    end
    return "github:" .. full
  end
  if sfind(name, "[:/\\]") or not sfind(name, "^[%w_]+$") and not sfind(name, "^[%w_][%w_%.]*[%w_]$")
    or sfind(name, "..", 1, true) then
    fail_require("'" .. name .. "' is not a module name or a GitHub URL")
  end
  local relative = sgsub(name, "%.", "/") .. ".lua"
  return (base or "tenant:") .. relative
end

local function module_base(canonical)
  if ssub(canonical, 1, 7) == "github:" then return smatch(canonical, "^(.*/)") end
  return nil  -- the tenant's modules resolve from the tenant's root
end

local function module_env(canonical, chunk)
  local env = {}
  for name, fn in next, BASE do env[name] = fn end
  for name, lib in next, LIBRARIES do env[name] = copy(lib) end
  for name, lib in next, saved_host_libraries do
    if name ~= "_emit" then env[name] = getmetatable(lib) == nil and copy(lib) or lib end
  end
  env.print = function(...) return current.emit(...) end
  env.log = env.print
  env._G = env
  env.require = make_require(module_base(canonical), env)
  -- Lua 5.1 style: module("name", package.seeall) makes a table the module's environment.
  env.package = { seeall = function(t) setmetatable(t, { __index = env }) end }
  env.module = function(name, ...)
    local t = { _NAME = name }
    t._M = t
    for i = 1, select("#", ...) do
      local option = select(i, ...)
      if type(option) == "function" then option(t) end
    end
    module_tables[env] = t
    -- Only ever the module's own chunk (never "the caller", which could be anything).
    setfenv(chunk, t)
    return t
  end
  return env
end

make_require = function(base, env)
  return function(name)
    if type(name) ~= "string" then fail_require("expected a module name") end
    if PLATFORM_MODULES[name] then return env[name] end
    local canonical = resolve(name, base)
    local loading = current.loading
    if loading[canonical] then fail_require("circular require of '" .. name .. "'") end
    local answer = platform_call({ op = "module", name = canonical })
    local raised = rawget(answer, "raise")
    if raised then fail_require(raised) end
    local version = answer.version
    local cached = loaded[canonical]
    if cached and cached.version == version then return cached.value end
    local key = canonical .. "\0" .. version
    local factory = module_factories[key]
    if not factory then
      local err
      factory, err = compile_text(answer.source, "=" .. answer.chunkname)
      if not factory then fail_require(err) end
      module_factories[key] = factory
    end
    local fn = factory()
    local menv = module_env(canonical, fn)
    setfenv(fn, menv)
    loading[canonical] = true
    local results = pack(pcall(fn, name))
    loading[canonical] = nil
    if not results[1] then error(results[2], 0) end
    local value = results[2]
    if value == nil then value = module_tables[menv] or menv end
    loaded[canonical] = { version = version, value = value }
    return value
  end
end

local function module_libraries(libraries)
  saved_host_libraries = libraries
end

-- A Lua closure around a guarded Python callable: the callable returns (true, results...) or
-- (false, message), and the Python object itself stays an upvalue tenants cannot reach.
local function unwrap(ok, ...)
  if ok then return ... end
  error((...), 2)
end

local function wrap_host(pyfn)
  return function(...) return unwrap(pyfn(...)) end
end

local function json_library()
  return {
    encode = function(v) return json_encode(v, 64 * 1024 * 1024) end,
    null = json_null,
  }
end
