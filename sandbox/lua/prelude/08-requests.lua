-- prelude/08-requests: one request is one coroutine; begin/step drive it from Python, and
-- compile_text turns tenant source into a factory of per-request closures.
-- One request is one coroutine: the script, then the response rules (a method table's handler
-- may make platform calls too). Both run under pcall inside it, so errors come back as values.
local function request_body(fn, request, method, limits)
  local results = pack(xpcall(fn, describe_error))
  if not results[1] then
    return false, { [OURS] = true, kind = "lua_error", value = results[2] }
  end
  return pcall(respond, results, request, method, limits)
end

local requests = setmetatable({}, { __mode = "k" })

-- Returns a handle (a plain table) for the request: lupa hands a Lua thread to Python as a
-- different kind of object, so the thread itself never leaves Lua.
local function begin(factory, env, request, method, seed, limits, lift)
  randomseed(seed)
  local fn = factory()
  setfenv(fn, env)
  local co = co_create(request_body)
  request_threads[co] = true
  local handle = {}
  requests[handle] = {
    co = co, env = env, lift = lift, args = { fn, request, method, limits },
    -- this request's modules: loading (circular requires), instances by location, and the
    -- value each search answered (a repeated require makes no platform call)
    emit = env.print, loading = {}, instances = {}, required = {},
  }
  return handle
end

local function finish(ok, kind, status, body, headers)
  if ok then return kind, status, body, headers end
  if type(kind) == "table" and rawget(kind, OURS) then
    if kind.kind == "lua_error" then return lua_error(kind.value) end
    return kind.kind, kind.message
  end
  return lua_error(kind)
end

-- Resume a request until it makes a platform call ("call", call) or ends: "ok", status,
-- body, flat header list; or an error kind and message. lift() ends the memory cap as soon as
-- the request yields, so this bookkeeping never fails for want of memory.
local function step(handle, answer)
  local state = requests[handle]
  local co = state.co
  string_mt.__index = state.env.string
  current.emit, current.loading, current.env = state.emit, state.loading, state.env
  current.instances, current.required = state.instances, state.required
  local results
  if state.args then
    local args = state.args
    state.args = nil
    results = pack(co_resume(co, args[1], args[2], args[3], args[4]))
  else
    results = pack(co_resume(co, answer))
  end
  state.lift()
  string_mt.__index = safe_string
  if not results[1] then
    requests[handle] = nil
    return lua_error(results[2])
  end
  if co_status(co) == "suspended" then
    if results[2] == PLATFORM then return "call", results[3] end
    requests[handle] = nil
    return "lua_error", "attempt to yield from outside a coroutine"
  end
  requests[handle] = nil
  return finish(results[2], results[3], results[4], results[5], results[6])
end

-- Compile tenant source as text into a factory: each call makes a fresh closure, so each
-- request gets its own function object whose environment can be set without touching others.
-- Invariant 3: the source is first compiled on its own, unwrapped. A source that closes the
-- wrapper early (`end, (function() ... end)(), function()`) would otherwise put code at the
-- factory's level, where it runs when the factory is made, in the real globals; on its own
-- such a source does not compile. Mode "t" refuses precompiled bytecode.
local function compile_text(source, chunkname)
  if sbyte(source, 1) == 35 then
    -- A first line starting with '#' (`#!/usr/bin/env lua`) is skipped, as Lua's loadfile
    -- (and so require) does; its newline stays, so line numbers are the file's.
    local eol = sfind(source, "\n", 1, true)
    source = eol and ssub(source, eol) or ""
  end
  local fn, err = load(source, chunkname, "t")
  if not fn then return nil, err end
  local factory
  factory, err = load("return function(...) " .. source .. "\nend", chunkname, "t")
  if not factory then return nil, err end
  return factory, nil
end
