-- prelude/06-environment: the per-request environment, built from fresh copies of the library
-- templates (invariant 1), with the tenant's read-only `env`.
---------------------------------------------------------------------------------------------
-- Per-request environment

-- print/log lines are streamed to the host as they happen (so a script killed later still
-- leaves its lines behind), within the request's line and byte budget; only the count of the
-- lines past it is kept.
local function new_output(limits, request_id, emit_host)
  local count, bytes, dropped = 0, 0, 0
  local max_lines, max_bytes = limits.max_log_lines, limits.max_log_bytes
  local function emit(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    local line = concat(parts, "\t")
    if count >= max_lines or bytes + #line > max_bytes then
      dropped = dropped + 1
      return
    end
    count = count + 1
    bytes = bytes + #line
    if emit_host then emit_host(request_id, line) end
  end
  local function collect()
    return dropped
  end
  return emit, collect
end

local make_require  -- defined with the module system below

-- The time and randomness a request is given (math.random, os.time, os.clock, and os.date's
-- "now"), kept in order per kind for its replay bundle (sngin.replay), and given back in that
-- order when a bundle is replayed (`replay`: the kinds' recorded values). crypto.random and
-- crypto.uuid are kept on the Python side (sandbox/tape.py). At most MAX_TAPE values are kept
-- per request (a loop of draws must not grow the request's memory): past that, `cut`.
local MAX_TAPE = 10000
local random, time, clock, date = math.random, os.time, os.clock, os.date

-- Every request has one, and most are given nothing: the per-kind tables (`random`, `time`,
-- `clock`, and `at` replaying) are made at their first value.
local function new_tape(replay)
  return { n = 0, cut = false, replay = replay, beyond = 0 }
end

local function replayed(tape, kind)
  local queue = tape.replay[kind]
  local at = tape.at
  if at == nil then
    at = {}
    tape.at = at
  end
  local i = (at[kind] or 0) + 1
  local value = queue and queue[i]
  if value == nil then
    tape.beyond = tape.beyond + 1  -- asked past the recording: a live value
    return nil
  end
  at[kind] = i
  return value
end

local function keep(tape, kind, value)
  local n = tape.n + 1
  if n > MAX_TAPE then
    tape.cut = true
    return value
  end
  tape.n = n
  local kept = tape[kind]
  if kept == nil then
    kept = {}
    tape[kind] = kept
  end
  kept[#kept + 1] = value
  return value
end

-- A bad argument raises the library's own message, as if the script had called it directly
-- (not one placed in the prelude's chunk).
local function draw(...)
  if select("#", ...) == 0 then return random() end
  local ok, value = pcall(random, ...)
  if not ok then error(value, 0) end
  return value
end

-- What `make` gives, kept on the tape; replaying, the recorded value in its place.
local function taped(tape, kind, make)
  return function(...)
    if tape.replay then
      local value = replayed(tape, kind)
      if value ~= nil then return value end
    end
    return keep(tape, kind, make(...))
  end
end

-- os.time: now from the tape; a given date is a plain function of it, nothing to keep.
local function taped_time(now)
  return function(t)
    if t == nil then return now() end
    local ok, value = pcall(time, t)
    if not ok then error(value, 0) end
    return value
  end
end

local function taped_date(now)
  return function(format, t)
    return date(format, t == nil and now() or t)
  end
end

local function read_only(values)
  return setmetatable({}, {
    __index = values,
    __newindex = function() error("env is read-only", 2) end,
    __metatable = false,
  })
end

-- Inert stand-ins for names pure-Lua libraries probe while loading (Penlight reads
-- package.config, io.stdout, require 'debug'). Per request, like every library table:
-- - package: the request's loaded modules (standard libraries included, as in LuaJIT), preload,
--   path/cpath strings and config; no loadlib, no loaders that touch files;
-- - io: write, stdout:write and stderr:write go to the request's log within print's bounds
--   (never to the worker's stdout, which carries its frames); what opens files raises;
-- - debug: traceback only, naming tenant chunks, never the prelude or a host path;
-- - jit: LuaJIT's version, os and arch (strings and a number), none of its functions.
local NO_FILES = " is not available in sngin (scripts have no files; use storage)"
local IO_REFUSED = { "open", "popen", "lines", "read", "input", "output", "tmpfile", "close" }
local PACKAGE_CONFIG = "/\n;\n?\n!\n-\n"

-- The request being resumed (set by step in 08-requests): whose log io.write and a module's
-- print write to, and which modules that request is loading (circular requires are per
-- request).
local current = { emit = function() end, loading = {}, instances = {}, required = {}, env = nil }

-- The functions are made once and shared (a function has nothing a request could change);
-- the tables holding them are each request's own. Writes go to the running request's log.
local io_files = setmetatable({}, { __mode = "k" })  -- each request's stdout and stderr

local function write_line(...)
  local parts = {}
  for i = 1, select("#", ...) do
    local value = select(i, ...)
    local kind = type(value)
    if kind ~= "string" and kind ~= "number" then
      error("bad argument #" .. i .. " to 'write' (string expected, got " .. kind .. ")", 3)
    end
    parts[i] = value
  end
  local line = concat(parts)
  if ssub(line, -1) == "\n" then line = ssub(line, 1, -2) end
  current.emit(line)
end

local function refuse(name)
  return function() error(name .. NO_FILES, 2) end
end

local FILE_TEMPLATE = {
  flush = function(self) return self end,
  setvbuf = function() return true end,
}
local IO_TEMPLATE = {
  flush = function() return true end,
  type = function(f) return io_files[f] and "file" or nil end,
}
for _, name in next, IO_REFUSED do IO_TEMPLATE[name] = refuse("io." .. name) end
for _, name in next, { "close", "read", "lines", "seek" } do
  FILE_TEMPLATE[name] = refuse("file:" .. name)
end
FILE_TEMPLATE.write = function(self, ...)
  if not io_files[self] then error("bad argument #1 to 'write' (use file:write)", 2) end
  write_line(...)
  return self
end

-- Table constructors, not copy(): each table is sized once instead of growing as it fills
-- (this runs for every request).
local function new_file()
  local f = FILE_TEMPLATE
  local file = {
    write = f.write, flush = f.flush, setvbuf = f.setvbuf,
    close = f.close, read = f.read, lines = f.lines, seek = f.seek,
  }
  io_files[file] = true
  return file
end

local function new_io()
  local t = IO_TEMPLATE
  local stdout = new_file()
  local io = {
    stdout = stdout, stderr = new_file(), flush = t.flush, type = t.type,
    open = t.open, popen = t.popen, lines = t.lines, read = t.read, input = t.input,
    output = t.output, tmpfile = t.tmpfile, close = t.close,
    write = function(...)
      write_line(...)
      return stdout
    end,
  }
  return io
end

-- debug.traceback([thread,] [message [, level]]): the tenant's own frames only.
local function traceback(...)
  local first, thread = 1, nil
  if type((...)) == "thread" then first, thread = 2, (...) end
  local message, level = select(first, ...)
  if message ~= nil and type(message) ~= "string" and type(message) ~= "number" then
    return message  -- as Lua: anything else is handed back untouched
  end
  level = tonumber(level) or (thread and 0 or 1)
  local lines = { message ~= nil and tostring(message) .. "\n" or "", "stack traceback:" }
  -- getinfo's level 1 is this function; the caller's level 1 is our 2.
  local at = thread and level or level + 1
  for _ = 1, 64 do
    local info
    if thread then info = getinfo(thread, at, "Sln") else info = getinfo(at, "Sln") end
    if not info then break end
    local source = info.source
    -- Tenant chunks are named "=host/path" (or, loaded from text, by the text itself);
    -- the prelude is "=sngin"; an "@file" name would be a host path.
    if info.what ~= "C" and source ~= "=sngin" and ssub(source, 1, 1) ~= "@" then
      local where = info.short_src .. ":" .. tostring(info.currentline) .. ":"
      if info.what == "main" then
        lines[#lines + 1] = "\t" .. where .. " in main chunk"
      elseif info.name then
        lines[#lines + 1] = "\t" .. where .. " in function '" .. info.name .. "'"
      else
        lines[#lines + 1] = "\t" .. where .. " in function <" .. info.short_src .. ":"
          .. tostring(info.linedefined) .. ">"
      end
    end
    at = at + 1
  end
  return lines[1] .. concat(lines, "\n", 2)
end

-- load, loadstring, setfenv and getfenv for tenant code (invariant 6). Template engines and
-- serialisers compile Lua text at run time and bind environments; offered safely here.
local TEXT_ONLY = "only Lua text can be loaded in sngin (precompiled bytecode is refused)"

-- A function tenant code compiled: a Lua function that is not the prelude's. Everything a
-- tenant compiles gets a chunk name of its own; the prelude's is "=sngin". C functions and
-- the prelude's closures (print, require, json ...) are never one.
local function tenant_function(f)
  if type(f) ~= "function" then return false end
  local info = getinfo(f, "S")
  return info ~= nil and info.what ~= "C" and info.source ~= "=sngin"
end

local function tenant_load(chunk, chunkname, mode, env)
  if mode ~= nil and mode ~= "t" then return nil, "load: " .. TEXT_ONLY end
  if env ~= nil and type(env) ~= "table" then
    error("bad argument #4 to 'load' (table expected, got " .. type(env) .. ")", 2)
  end
  local text = chunk
  if type(chunk) == "function" then  -- a reader: its pieces, joined (within the memory cap)
    local parts = {}
    while true do
      local piece = chunk()
      if piece == nil or piece == "" then break end
      if type(piece) ~= "string" then return nil, "load: reader function must return a string" end
      parts[#parts + 1] = piece
    end
    text = concat(parts)
  elseif type(chunk) ~= "string" then
    error("bad argument #1 to 'load' (string expected, got " .. type(chunk) .. ")", 2)
  end
  if sbyte(text, 1) == 27 then return nil, "load: " .. TEXT_ONLY end
  if chunkname ~= nil and type(chunkname) ~= "string" then
    error("bad argument #2 to 'load' (string expected, got " .. type(chunkname) .. ")", 2)
  end
  local fn, err = load(text, chunkname or text, "t")
  if not fn then return nil, err end
  setfenv(fn, env or current.env)  -- never the real globals a plain load would give it
  return fn
end

local function tenant_loadstring(text, chunkname)
  if type(text) ~= "string" then
    error("bad argument #1 to 'loadstring' (string expected, got " .. type(text) .. ")", 2)
  end
  return tenant_load(text, chunkname, "t")
end

-- The function setfenv/getfenv act on: a tenant function given by value, or level 1 (the
-- caller, itself tenant code); anything else is refused with a clear error.
local function fenv_target(name, f)
  if f == nil then f = 1 end
  if type(f) == "number" then
    if f ~= 1 then
      error(name .. ": only level 1 (the calling function) is available in sngin", 3)
    end
    local info = getinfo(3, "Sf")  -- 1: fenv_target, 2: setfenv/getfenv, 3: their caller
    f = info and info.func
  end
  if not tenant_function(f) then
    error(name .. ": only functions of this site's own code can be used in sngin", 3)
  end
  return f
end

local function tenant_setfenv(f, t)
  if type(t) ~= "table" then
    error("bad argument #2 to 'setfenv' (table expected, got " .. type(t) .. ")", 2)
  end
  return setfenv(fenv_target("setfenv", f), t)
end

local function tenant_getfenv(f)
  return getfenv(fenv_target("getfenv", f))
end

-- jit: what LuaJIT reports about itself, for libraries that check `if jit then` to pick their
-- LuaJIT path (MessagePack, for one). No function of the real `jit` (on/off/flush, opt, util:
-- they reach the compiler's state and the bytecode of other functions).
local JIT_INFO = {}
for _, name in next, { "version", "version_num", "os", "arch" } do
  JIT_INFO[name] = real_globals.jit and real_globals.jit[name]
end

local function new_package(env)
  local loaded = {
    string = env.string, table = env.table, math = env.math, os = env.os,
    coroutine = env.coroutine, bit = env.bit, io = env.io, debug = env.debug, jit = env.jit,
    _G = env,
  }
  local package = {
    loaded = loaded, preload = {}, config = PACKAGE_CONFIG,
    path = "./?.lua;./?/init.lua", cpath = "",
  }
  loaded.package = package
  return package
end

local function new_env(request, host_libraries, limits, request_id, tenant_env, replay)
  local env = {}
  for name, fn in next, BASE do env[name] = fn end
  for name, lib in next, LIBRARIES do env[name] = copy(lib) end
  for name, lib in next, host_libraries do
    -- Locked proxies (unsupported names) are shared as they are; the rest are copied.
    if name ~= "_emit" then env[name] = getmetatable(lib) == nil and copy(lib) or lib end
  end
  local emit, collect = new_output(limits, request_id, rawget(host_libraries, "_emit"))
  env.print = emit
  env.log = emit
  env.io = new_io()
  env.debug = { traceback = traceback }
  header_table(request.headers)
  env.request = request
  env.env = read_only(tenant_env or {})
  env._G = env
  env.jit = {
    version = JIT_INFO.version, version_num = JIT_INFO.version_num,
    os = JIT_INFO.os, arch = JIT_INFO.arch,
  }
  env.load, env.loadstring = tenant_load, tenant_loadstring
  env.setfenv, env.getfenv = tenant_setfenv, tenant_getfenv
  env.package = new_package(env)
  env.require = make_require(nil, env)
  local tape = new_tape(replay)
  env.math.random = taped(tape, "random", draw)
  local now = taped(tape, "time", time)
  env.os.time, env.os.clock, env.os.date = taped_time(now), taped(tape, "clock", clock),
    taped_date(now)
  return env, collect, tape
end
