-- Trusted sandbox prelude. Runs once per runtime while the real globals are still intact and
-- returns the privileged helpers that only the Python side holds; tenant code never sees them.
local pairs, next, type, tostring, select, error, pcall = pairs, next, type, tostring, select, error, pcall
local rawget, rawset, setmetatable, getmetatable = rawget, rawset, setmetatable, getmetatable
local setfenv, load, unpack = setfenv, load, unpack
local concat, sfind, sformat, sbyte, sgsub, slower, supper, ssub = table.concat, string.find,
  string.format, string.byte, string.gsub, string.lower, string.upper, string.sub
local floor, huge = math.floor, math.huge
local schar, gmatch, smatch, tsort, tonumber = string.char, string.gmatch, string.match,
  table.sort, tonumber
local randomseed = math.randomseed
local collectgarbage, getregistry, real_globals = collectgarbage, debug.getregistry, _G

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

-- Platform calls (http.request, ...) yield the request's coroutine with this marker. The
-- tenant's coroutine library relays such yields up to the platform and hands the answers back,
-- as OpenResty does, so a tenant's own coroutine.wrap/resume never catches them.
local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_status, co_running = coroutine.status, coroutine.running
local PLATFORM = {}
local request_threads = setmetatable({}, { __mode = "k" })

local function relay(co, ok, ...)
  if ok and (...) == PLATFORM and co_status(co) == "suspended" then
    return relay(co, co_resume(co, co_yield(PLATFORM, (select(2, ...)))))
  end
  return ok, ...
end

local function tenant_resume(co, ...)
  return relay(co, co_resume(co, ...))
end

local function wrapped_result(ok, ...)
  if ok then return ... end
  error((...), 0)
end

local function tenant_wrap(f)
  local co = co_create(f)
  return function(...)
    return wrapped_result(relay(co, co_resume(co, ...)))
  end
end

local function tenant_yield(...)
  if request_threads[co_running()] then
    error("attempt to yield from outside a coroutine", 2)
  end
  return co_yield(...)
end

local function platform_call(call)
  return co_yield(PLATFORM, call)
end

local tenant_coroutine = copy(coroutine)
tenant_coroutine.resume = tenant_resume
tenant_coroutine.wrap = tenant_wrap
tenant_coroutine.yield = tenant_yield

---------------------------------------------------------------------------------------------
-- http: the request is made by the server (the worker has no sockets), through platform_call.

local function url_escape(value)
  return (sgsub(tostring(value), "[^%w%-%._~]", function(c) return sformat("%%%02X", sbyte(c)) end))
end

local function url_unescape(value)
  value = sgsub(value, "+", " ")
  return (sgsub(value, "%%(%x%x)", function(h) return schar(tonumber(h, 16)) end))
end

local function sorted_keys(t)
  local keys = {}
  for k in next, t do
    if type(k) == "string" or type(k) == "number" then keys[#keys + 1] = k end
  end
  tsort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function qsencode(t)
  if type(t) ~= "table" then error("http.qsencode: expected a table", 2) end
  local parts = {}
  for _, k in next, sorted_keys(t) do
    local v = rawget(t, k)
    if type(v) == "table" then
      for i = 1, #v do parts[#parts + 1] = url_escape(k) .. "=" .. url_escape(rawget(v, i)) end
    else
      parts[#parts + 1] = url_escape(k) .. "=" .. url_escape(v)
    end
  end
  return concat(parts, "&")
end

local function qsparse(s)
  if type(s) ~= "string" then error("http.qsparse: expected a string", 2) end
  local result = {}
  for pair in gmatch(s, "[^&]+") do
    local k, v = smatch(pair, "^([^=]*)=?(.*)$")
    k, v = url_unescape(k), url_unescape(v)
    local old = rawget(result, k)
    if old == nil then
      result[k] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      result[k] = { old, v }
    end
  end
  return result
end

local function fail_http(message)
  error("http.request: " .. message, 3)
end

local function http_request(arg)
  local spec = arg
  if type(arg) == "string" then
    spec = { url = arg }
  elseif type(arg) ~= "table" then
    fail_http("expected a URL or a table of options")
  end
  local url = rawget(spec, "url")
  if type(url) ~= "string" then fail_http("url must be a string") end
  local method = rawget(spec, "method") or "GET"
  if type(method) ~= "string" then fail_http("method must be a string") end
  local flat, has_type = {}, false
  local headers = rawget(spec, "headers")
  if headers ~= nil then
    if type(headers) ~= "table" then fail_http("headers must be a table") end
    for name, value in next, headers do
      if type(name) ~= "string" then fail_http("header names must be strings") end
      if slower(name) == "content-type" then has_type = true end
      local values = type(value) == "table" and value or { value }
      for i = 1, #values do
        flat[#flat + 1] = name
        flat[#flat + 1] = tostring(rawget(values, i))
      end
    end
  end
  local body = rawget(spec, "body")
  local data = rawget(spec, "data")
  if data ~= nil then
    if type(data) == "table" then
      body = qsencode(data)
      if not has_type then
        flat[#flat + 1] = "Content-Type"
        flat[#flat + 1] = "application/x-www-form-urlencoded"
      end
    elseif type(data) == "string" then
      body = data
    else
      fail_http("data must be a table or a string")
    end
  end
  if body ~= nil and type(body) ~= "string" then fail_http("body must be a string") end
  local params = rawget(spec, "params")
  if params ~= nil then
    if type(params) ~= "table" then fail_http("params must be a table") end
    local query = qsencode(params)
    if query ~= "" then url = url .. (sfind(url, "?", 1, true) and "&" or "?") .. query end
  end
  local user, password
  local auth = rawget(spec, "auth")
  if auth ~= nil then
    if type(auth) ~= "table" then fail_http("auth must be {user, password}") end
    user = rawget(auth, "username") or rawget(auth, "user") or rawget(auth, 1)
    password = rawget(auth, "password") or rawget(auth, 2)
    if type(user) ~= "string" or type(password) ~= "string" then
      fail_http("auth must be {user, password}")
    end
  end
  local timeout = rawget(spec, "timeout")
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0) or timeout == huge) then
    fail_http("timeout must be a positive number of seconds")
  end
  local answer = platform_call({
    op = "http", url = url, method = supper(method), headers = flat, body = body,
    timeout = timeout, user = user, password = password,
  })
  local raised = rawget(answer, "raise")
  if raised then fail_http(raised) end
  return answer
end

local http_library = { request = http_request, qsencode = qsencode, qsparse = qsparse }

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

---------------------------------------------------------------------------------------------
-- JSON encoding (response bodies and json.encode)

local json_null = setmetatable({}, {
  __metatable = false,
  __tostring = function() return "null" end,
  __newindex = function() error("json.null is read-only", 2) end,
})

local ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}
local function escape_char(c)
  return ESCAPES[c] or sformat("\\u%04x", sbyte(c))
end

local MAX_DEPTH = 512

local function json_encode(value, max_bytes)
  local buf, n, size, seen = {}, 0, 0, {}
  local function put(s)
    n = n + 1
    buf[n] = s
    size = size + #s
    if size > max_bytes then
      error(sformat("JSON output exceeds %d bytes", max_bytes), 0)
    end
  end
  local encode
  local function encode_string(s)
    put('"' .. sgsub(s, '[%c"\\]', escape_char) .. '"')
  end
  local function encode_table(t, depth)
    if t == json_null then return put("null") end
    if depth > MAX_DEPTH then
      error(sformat("cannot encode JSON nested more than %d levels", MAX_DEPTH), 0)
    end
    if seen[t] then error("cannot encode a table that contains itself as JSON", 0) end
    seen[t] = true
    local len, is_array = #t, #t > 0
    for k in next, t do
      if type(k) ~= "number" or k < 1 or k > len or k ~= floor(k) then
        is_array = false
        break
      end
    end
    if is_array then
      put("[")
      for i = 1, len do
        if i > 1 then put(",") end
        encode(rawget(t, i), depth + 1)
      end
      put("]")
    else
      put("{")
      local first = true
      for k, v in next, t do
        local kt = type(k)
        if kt == "number" then
          k = tostring(k)
        elseif kt ~= "string" then
          error("cannot encode a table key of type " .. kt .. " as JSON", 0)
        end
        if not first then put(",") end
        first = false
        encode_string(k)
        put(":")
        encode(v, depth + 1)
      end
      put("}")
    end
    seen[t] = nil
  end
  encode = function(v, depth)
    local t = type(v)
    if t == "string" then
      encode_string(v)
    elseif t == "number" then
      if v ~= v or v == huge or v == -huge then
        error("cannot encode NaN or infinity as JSON", 0)
      elseif v == floor(v) and v > -1e15 and v < 1e15 then
        put(sformat("%d", v))
      else
        put(sformat("%.17g", v))
      end
    elseif t == "boolean" then
      put(v and "true" or "false")
    elseif t == "nil" then
      put("null")
    elseif t == "table" then
      encode_table(v, depth)
    else
      error("cannot encode a " .. t .. " value as JSON", 0)
    end
  end
  encode(value, 1)
  return concat(buf)
end

---------------------------------------------------------------------------------------------
-- Per-request environment

local function new_output(limits, request_id, emit_host)
  local lines, count, bytes, dropped = {}, 0, 0, 0
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
    lines[count] = line
    -- Streamed as it happens, so a script killed later still leaves its lines behind.
    if emit_host then emit_host(request_id, line) end
  end
  local function collect()
    return lines, dropped
  end
  return emit, collect
end

local make_require  -- defined with the module system below

local function read_only(values)
  return setmetatable({}, {
    __index = values,
    __newindex = function() error("env is read-only", 2) end,
    __metatable = false,
  })
end

local function new_env(request, host_libraries, limits, request_id, tenant_env)
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
  env.request = request
  env.env = read_only(tenant_env or {})
  env._G = env
  env.require = make_require(nil, env)
  return env, collect, emit
end

---------------------------------------------------------------------------------------------
-- Response rules

local HTTP_METHODS = { "get", "head", "post", "put", "patch", "delete", "options", "trace", "connect" }
local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"

-- Errors raised by the rules carry this private key, so tenant code cannot forge them.
local OURS = {}

local function fail(kind, message, value)
  error({ [OURS] = true, kind = kind, message = message, value = value }, 0)
end

local function invalid(message)
  fail("invalid_response", message)
end

local function to_json(v, limits)
  local ok, text = pcall(json_encode, v, limits.max_body_bytes)
  if not ok then invalid(text) end
  return text
end

local function is_status(v)
  return type(v) == "number" and v == floor(v) and v >= 100 and v <= 599
end

-- A final response: 1xx are interim answers the server never sends on a script's behalf (h11
-- refuses them, or a 101 switches protocols).
local function is_final_status(v)
  return is_status(v) and v >= 200
end

-- RFC 9110 field values: no control characters but horizontal tab.
local CONTROL_BYTES = "[%z\1-\8\10-\31\127]"

local function is_response_table(t)
  local status = rawget(t, "status") or rawget(t, "statuscode") or rawget(t, "code")
  local body = rawget(t, "body") or rawget(t, "content")
  return type(status) == "number" or type(body) == "string"
end

local function method_handler(t, method)
  local found = false
  for _, name in next, HTTP_METHODS do
    if type(rawget(t, name)) == "function" then found = true break end
  end
  if not found then return nil end
  local fn = rawget(t, method)
  if type(fn) ~= "function" and method == "head" then fn = rawget(t, "get") end
  if type(fn) == "function" then return fn end
  local allow = {}
  for _, name in next, HTTP_METHODS do
    if type(rawget(t, name)) == "function"
      or (name == "head" and type(rawget(t, "get")) == "function") then
      allow[#allow + 1] = supper(name)
    end
  end
  fail("method_not_allowed", concat(allow, ", "))
end

local function collect_headers(state, headers, limits)
  if type(headers) ~= "table" then
    invalid("headers must be a table, got a " .. type(headers))
  end
  local flat, count, bytes = state.headers, state.header_count, state.header_bytes
  local function add(name, value)
    count = count + 1
    if count > limits.max_headers then
      invalid(sformat("more than %d response headers", limits.max_headers))
    end
    local vt = type(value)
    if vt == "number" then
      value = tostring(value)
    elseif vt ~= "string" then
      invalid("header " .. name .. " has a " .. vt .. " value")
    end
    bytes = bytes + #name + #value + 4
    if bytes > limits.max_header_bytes then
      invalid(sformat("response headers exceed %d bytes", limits.max_header_bytes))
    end
    if sfind(value, CONTROL_BYTES) then
      invalid("header " .. name .. " contains a control character (bytes 0-31 but tab, or 127)")
    end
    flat[#flat + 1] = name
    flat[#flat + 1] = value
  end
  for name, value in next, headers do
    if type(name) ~= "string" or #name > 256 or not sfind(name, TOKEN) then
      local shown = type(name) == "string" and ssub(name, 1, 64) or "of type " .. type(name)
      invalid("header name " .. sformat("%q", shown) .. " is not a valid token")
    end
    if type(value) == "table" then
      local len = #value
      for i = 1, len do
        add(name, rawget(value, i))
      end
    else
      add(name, value)
    end
  end
  state.header_count, state.header_bytes = count, bytes
end

local read_values

local function read_value(state, v, limits, depth)
  local t = type(v)
  if t == "number" then
    state.status = v
  elseif t == "string" then
    state.body, state.json = v, false
  elseif t == "table" then
    if is_response_table(v) then
      local status = rawget(v, "status") or rawget(v, "statuscode") or rawget(v, "code")
      if status ~= nil then state.status = status end
      local body = rawget(v, "body")
      if body == nil then body = rawget(v, "content") end
      if type(body) == "table" then
        state.body, state.json = to_json(body, limits), true
      elseif body ~= nil then
        if type(body) ~= "string" then invalid("body must be a string, got a " .. type(body)) end
        state.body, state.json = body, false
      end
      local headers = rawget(v, "headers")
      if headers ~= nil then collect_headers(state, headers, limits) end
    elseif state.body ~= nil then
      collect_headers(state, v, limits)
    else
      local handler = depth == 0 and method_handler(v, state.method)
      if handler then
        local results = pack(pcall(handler, state.request))
        if not results[1] then fail("lua_error", nil, results[2]) end
        read_values(state, results, 2, limits, depth + 1)
      else
        state.body, state.json = to_json(v, limits), true
      end
    end
  elseif t ~= "nil" then
    invalid("a script cannot return a " .. t .. " value")
  end
end

read_values = function(state, values, first, limits, depth)
  for i = first, values.n do
    read_value(state, values[i], limits, depth)
  end
end

-- Headers the server owns: the framing (sngin sets Content-Length itself), hop-by-hop headers,
-- and the ones it writes on every response (a script's copy would only contradict them).
local SERVER_HEADERS = {
  ["content-length"] = true, ["transfer-encoding"] = true, ["connection"] = true,
  ["keep-alive"] = true, ["proxy-connection"] = true, ["te"] = true, ["trailer"] = true,
  ["upgrade"] = true, ["x-request-id"] = true, ["server-timing"] = true, ["date"] = true,
}

local function respond(values, request, method, limits)
  local state = {
    status = 200, headers = {}, header_count = 0, header_bytes = 0,
    request = request, method = method,
  }
  read_values(state, values, 2, limits, 0)
  if not is_final_status(state.status) then
    invalid("status " .. tostring(state.status) .. " is not an integer from 200 to 599")
  end
  local body = state.body or ""
  if #body > limits.max_body_bytes then
    invalid(sformat("body of %d bytes exceeds the %d byte limit", #body, limits.max_body_bytes))
  end
  -- The server owns the message framing: a script's Content-Length or Transfer-Encoding could
  -- only contradict the body, and hop-by-hop headers are the connection's, not the script's.
  local has_type, flat, given = false, {}, state.headers
  for i = 1, #given, 2 do
    local name = slower(given[i])
    if name == "content-type" then has_type = true end
    if not SERVER_HEADERS[name] then
      flat[#flat + 1] = given[i]
      flat[#flat + 1] = given[i + 1]
    end
  end
  if not has_type then
    flat[#flat + 1] = "Content-Type"
    flat[#flat + 1] = state.json and "application/json" or "text/plain; charset=utf-8"
  end
  return "ok", state.status, body, flat
end

local function error_text(err)
  if type(err) == "string" then return err end
  if type(err) == "table" or type(err) == "userdata" then
    local ok, text = pcall(tostring, err)
    if ok and type(text) == "string" and not sfind(text, "^table: ") then return text end
  end
  return "(error object is a " .. type(err) .. " value)"
end

local function lua_error(value)
  if value == "not enough memory" then return "memory_limit", value end
  return "lua_error", error_text(value)
end

-- One request is one coroutine: the script, then the response rules (a method table's handler
-- may make platform calls too). Both run under pcall inside it, so errors come back as values.
local function request_body(fn, request, method, limits)
  local results = pack(pcall(fn))
  if not results[1] then
    return false, { [OURS] = true, kind = "lua_error", value = results[2] }
  end
  return pcall(respond, results, request, method, limits)
end

local requests = setmetatable({}, { __mode = "k" })
-- The request being resumed (set by step): whose print a module's print writes to, and which
-- modules that request is loading (circular requires are per request).
local current = { emit = function() end, loading = {} }

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
    emit = env.print, loading = {},
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
  current.emit, current.loading = state.emit, state.loading
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
local function compile_text(source, chunkname)
  local fn, err = load(source, chunkname, "t")
  if not fn then return nil, err end
  local factory
  factory, err = load("return function(...) " .. source .. "\nend", chunkname, "t")
  if not factory then return nil, err end
  return factory, nil
end

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
-- The request being resumed (set by step): whose print a module's print writes to, and which
-- modules that request is loading (circular requires are per request).

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

---------------------------------------------------------------------------------------------
-- crypto, base64, utils, and the webscript names this server does not provide

local function check_string(value, what)
  if type(value) ~= "string" then error(what .. " must be a string", 3) end
end

local function digest_object(raw, hex)
  return { digest = function() return raw end, hex = function() return hex end }
end

local function host_libraries(python_functions)
  -- Each guarded Python callable stays an upvalue of its Lua wrapper: tenants never see it.
  local host = {}
  for name, fn in next, python_functions do host[name] = wrap_host(fn) end
  local json = json_library()
  json.decode, json.parse, json.stringify = host.json_decode, host.json_decode, json.encode
  local crypto = {}
  local names = {}
  for _, algo in next, { "md5", "sha1", "sha256", "sha512" } do
    local fn = function(s)
      check_string(s, "crypto." .. algo .. ": the argument")
      return digest_object(host.hash(algo, s))
    end
    crypto[algo] = fn
    names[fn] = algo
  end
  crypto.hmac = function(key, message, hash)
    check_string(key, "crypto.hmac: the key")
    check_string(message, "crypto.hmac: the message")
    local algo = names[hash]
    if not algo then
      error("crypto.hmac: the third argument must be crypto.md5, crypto.sha1, crypto.sha256 "
        .. "or crypto.sha512", 2)
    end
    return digest_object(host.hmac(algo, key, message))
  end
  crypto.random = function(n)
    if type(n) ~= "number" or n < 0 or n > 1048576 or n ~= floor(n) then
      error("crypto.random: expected a whole number of bytes up to 1048576", 2)
    end
    return host.random(n)
  end
  crypto.uuid = function() return host.uuid() end

  local base64 = {
    encode = function(s)
      check_string(s, "base64.encode: the argument")
      return host.b64encode(s)
    end,
    decode = function(s)
      check_string(s, "base64.decode: the argument")
      return host.b64decode(s)
    end,
  }

  local utils = {
    trim = function(s)
      check_string(s, "utils.trim: the argument")
      return (sgsub(sgsub(s, "^%s+", ""), "%s+$", ""))
    end,
    split = function(s, separator)
      check_string(s, "utils.split: the string")
      separator = separator or ","
      check_string(separator, "utils.split: the separator")
      if separator == "" then error("utils.split: the separator must not be empty", 2) end
      local parts, start = {}, 1
      while true do
        local at, stop = sfind(s, separator, start, true)
        if not at then break end
        parts[#parts + 1] = ssub(s, start, at - 1)
        start = stop + 1
      end
      parts[#parts + 1] = ssub(s, start)
      return parts
    end,
    slugify = function(s)
      check_string(s, "utils.slugify: the argument")
      local slug = sgsub(slower(s), "[^%w]+", "-")
      return (sgsub(sgsub(slug, "^%-+", ""), "%-+$", ""))
    end,
  }

  local libraries = {
    crypto = crypto, base64 = base64, utils = utils, json = json, _emit = host.emit,
  }
  -- webscript.io names this server does not provide: a clear error on any use.
  for _, name in next, { "storage", "lease", "email", "alert" } do
    local function refuse() error(name .. " is not supported by this server", 2) end
    libraries[name] = setmetatable({}, {
      __index = refuse, __newindex = refuse, __call = refuse, __metatable = false,
    })
  end
  return libraries
end

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
