-- prelude/09-modules: require, as webscript and lua-sngin resolve it. A module runs in the
-- request that requires it, with that request's globals and library tables (Lua 5.1 code
-- expects one `string`); only its compiled chunk is kept by the runtime (invariant 1: nothing a
-- module does outlives the request).
---------------------------------------------------------------------------------------------
-- require: platform libraries, the tenant's own modules, modules on GitHub, and bare names
-- from the default module repository.
--
-- A require becomes a search: the places the name may be, in order, joined by "|", which the
-- server tries until one has the file (sngin/request_calls.py):
--   github:<user>/<repo>/<ref>/<path>.lua  a file on GitHub (github.com/.../blob/<ref>/... URLs)
--   ghpath:<user>/<repo>/<path>.lua        webscript's form: branch master, else main
--   tenant:<path>.lua                      the tenant's own module
--   default:<path>.lua                     the default module repository (SNGIN_DEFAULT_MODULES)
--   platform:<name>                        none found: the platform library of that name
-- A dotted or bare name resolves against the root of the module tree it is required from (the
-- tenant's code, or the folder of the module first required by URL: Lua's package.path
-- meaning), as name.lua then name/init.lua (package.path's ?.lua;?/init.lua), then falls back
-- to the default repository.
--
-- Before any search, as Lua's require: package.loaded[name] (the request's own table, which
-- holds the standard libraries, as in LuaJIT), then package.preload[name].

-- sngin's own libraries: a tenant's file of the same name wins for require (the global stays
-- the platform's); the search ends with the platform library instead of the default repository.
local PLATFORM_MODULES = { json = true, crypto = true, base64 = true, utils = true, http = true }
local module_factories = {}  -- location .. "\0" .. version -> compiled factory (this runtime)
local known_versions = {}    -- search -> location .. "\0" .. version last compiled for it
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

-- The root a dotted name resolves against in a tree on GitHub: Lua finds `pl.utils` in the
-- folder holding the package `pl` (the folder on package.path), so a module at
-- lua/pl/List.lua asking for pl.utils gets lua/pl/utils.lua, not lua/pl/pl/utils.lua. When
-- the name's first part is a folder of the root (below <user>/<repo>/<ref>), the folder above
-- its last occurrence is the root; else the root as it is.
local function package_root(root, name)
  if not root or ssub(root, 1, 7) ~= "github:" then return root end
  local base, rest = smatch(root, "^(github:[^/]+/[^/]+/[^/]+/)(.*)$")
  if not base then return root end
  local first = smatch(name, "^[^%.]+")
  local needle, at, last = first .. "/", 1, nil
  while true do
    local found = sfind("/" .. rest, "/" .. needle, at, true)
    if not found then break end
    last, at = found, found + 1
  end
  if last then return base .. ssub(rest, 1, last - 1) end
  return root
end

-- The search for a name (see above), or nil and why the name is refused.
local function search_for(name, root)
  if #name > 1024 then return nil, "module name longer than 1024 bytes" end
  local url = smatch(name, "^https://(.+)$") or name
  local user, repo, ref, path = smatch(url, "^github%.com/([^/]+)/([^/]+)/blob/([^/]+)/(.+)$")
  if user then
    local full = user .. "/" .. repo .. "/" .. ref .. "/" .. path
    if not valid_path(full) or not sfind(path, "%.lua$") then
      return nil, "'" .. name .. "' is not a valid GitHub module URL"
    end
    return "github:" .. full
  end
  if url ~= name or sfind(url, "^github%.com/") then
    return nil, "'" .. name .. "' is not a GitHub file URL (github.com/<user>/<repo>/blob/<ref>/<path>.lua)"
  end
  if sfind(name, "/", 1, true) and not sfind(name, "[:\\]") then
    -- webscript's '<user>/<repo>/<path>', the .lua optional
    local full = sfind(name, "%.lua$") and name or name .. ".lua"
    if not smatch(full, "^[^/]+/[^/]+/.") or not valid_path(full) then
      return nil, "'" .. name .. "' is not a module name or a GitHub path (user/repo/path)"
    end
    return "ghpath:" .. full
  end
  if sfind(name, "[:/\\]") or not sfind(name, "^[%w_]+$") and not sfind(name, "^[%w_][%w_%.]*[%w_]$")
    or sfind(name, "..", 1, true) then
    return nil, "'" .. name .. "' is not a module name or a GitHub URL"
  end
  local relative = sgsub(name, "%.", "/")
  local here = package_root(root, name) or "tenant:"
  local own = here .. relative .. ".lua|" .. here .. relative .. "/init.lua"
  if PLATFORM_MODULES[name] then return own .. "|platform:" .. name end
  return own .. "|default:" .. relative .. ".lua|default:" .. relative .. "/init.lua"
end

-- The root a loaded module's own requires resolve against: the tree it was found in, or, for a
-- module found by URL or in the default repository, its own folder; nil for the tenant's code.
local function root_of(location, root)
  if ssub(location, 1, 7) ~= "github:" then return nil end
  if root and ssub(location, 1, #root) == root then return root end
  -- A package's init.lua: the folder holding the package is the tree's root (package.path's
  -- ?/init.lua), so `require "say"` from luassert/init.lua finds say/init.lua beside it.
  local above = smatch(location, "^(github:[^/]+/[^/]+/[^/]+/.-)[^/]+/init%.lua$")
  return above or smatch(location, "^(.*/)")
end

-- What `...` is inside a module required by URL or user/repo/path: its dotted name below the
-- folder holding its package ("pl.List" for .../pl/List.lua, "say.init" for say/init.lua), as
-- Lua passes it had that folder been on package.path, so a library that names its siblings
-- from `...` finds them. A module required by name gets that name, as in Lua.
local function dotted_name(location)
  local path = smatch(location, "^github:[^/]+/[^/]+/[^/]+/(.*)%.lua$")
  if not path then return nil end
  local folder, file = smatch(path, "^(.-)([^/]+)$")
  local package = smatch(folder, "([^/]+)/$")
  return package and package .. "." .. file or file
end

local function module_env(request_env, root, chunk)
  -- Reads and writes go to the request's own globals; only require (and Lua 5.1's module()
  -- helpers) are the module's, so its requires resolve within its tree.
  local menv = setmetatable({}, { __index = request_env, __newindex = request_env })
  rawset(menv, "require", make_require(root, request_env))
  -- Lua 5.1 style: module("name", package.seeall) makes a table the module's environment.
  -- The request's package (loaded, preload, path ...) with the module's own seeall.
  local request_package = rawget(request_env, "package")
  local package = { seeall = function(t) setmetatable(t, { __index = menv }) end }
  if type(request_package) == "table" then
    setmetatable(package, { __index = request_package, __newindex = request_package })
  end
  rawset(menv, "package", package)
  rawset(menv, "module", function(name, ...)
    local t = { _NAME = name }
    t._M = t
    for i = 1, select("#", ...) do
      local option = select(i, ...)
      if type(option) == "function" then option(t) end
    end
    module_tables[menv] = t
    if type(name) == "string" and rawget(request_env, name) == nil and sfind(name, "^[%w_]+$") then
      rawset(request_env, name, t)  -- as Lua 5.1's module() makes a global of it
    end
    -- Only ever the module's own chunk (never "the caller", which could be anything).
    setfenv(chunk, t)
    return t
  end)
  return menv
end

-- The request's package.loaded and package.preload, if the script has not replaced them by
-- something else.
local function package_table(env, field)
  local package = rawget(env, "package")
  local t = type(package) == "table" and rawget(package, field)
  return type(t) == "table" and t or nil
end

make_require = function(root, env)
  return function(name)
    if type(name) ~= "string" then error("require: expected a module name", 2) end
    local loaded = package_table(env, "loaded")
    local value = loaded and rawget(loaded, name)
    if value ~= nil then return value end
    local loader = package_table(env, "preload")
    loader = loader and rawget(loader, name)
    if loader ~= nil then
      if type(loader) ~= "function" then error("require: package.preload['" .. name .. "'] is not a function", 2) end
      value = loader(name)
      if loaded then
        if value ~= nil then rawset(loaded, name, value) end
        if rawget(loaded, name) == nil then rawset(loaded, name, true) end
        return rawget(loaded, name)
      end
      return value == nil and true or value
    end
    local search, refused = search_for(name, root)
    if not search then error("require: " .. refused, 2) end
    local found = current.required[search]
    if found ~= nil then return found end
    local have = known_versions[search]
    local answer = platform_call({ op = "module", name = search, have = have })
    local raised = rawget(answer, "raise")
    if raised then error("require: " .. raised, 2) end
    if rawget(answer, "ok") then  -- no file of that name: the platform library
      value = env[name]
      current.required[search] = value
      if loaded then rawset(loaded, name, value) end
      return value
    end
    local location = answer.location
    local instance = current.instances[location]
    if instance ~= nil then
      current.required[search] = instance
      return instance
    end
    if current.loading[location] then error("require: circular require of '" .. name .. "'", 2) end
    local key = location .. "\0" .. answer.version
    local factory = module_factories[key]
    if not factory then
      if answer.source == nil then error("require: the server sent no source", 2) end
      local err
      factory, err = compile_text(answer.source, "=" .. answer.chunkname)
      if not factory then error("require: " .. err, 2) end
      module_factories[key] = factory
    end
    known_versions[search] = key
    local fn = factory()
    local menv = module_env(env, root_of(location, root), fn)
    setfenv(fn, menv)
    current.loading[location] = true
    local passed = name
    if sfind(name, "/", 1, true) then passed = dotted_name(location) or name end
    local results = pack(pcall(fn, passed))
    current.loading[location] = nil
    if not results[1] then error(results[2], 0) end
    value = results[2]
    if value == nil and loaded then value = rawget(loaded, name) end  -- set by the module itself
    if value == nil then value = module_tables[menv] or menv end
    current.instances[location] = value
    current.required[search] = value
    if loaded then rawset(loaded, name, value) end
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
