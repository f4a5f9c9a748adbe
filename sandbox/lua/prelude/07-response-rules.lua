-- prelude/07-response-rules: what a script's return values mean, and what makes a response
-- invalid (status 200-599, header tokens and values, sizes). The server checks status and
-- headers again before sending (sngin/response_rules.py).
---------------------------------------------------------------------------------------------
-- Response rules

local HTTP_METHODS = { "get", "head", "post", "put", "patch", "delete", "options", "trace", "connect" }
-- A method table may also answer scheduled runs (request.method "CRON") with a `cron` function.
local TABLE_METHODS = { "cron" }
for _, name in next, HTTP_METHODS do TABLE_METHODS[#TABLE_METHODS + 1] = name end
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
  for _, name in next, TABLE_METHODS do
    if type(rawget(t, name)) == "function" then found = true break end
  end
  if not found then return nil end
  local fn = rawget(t, method)
  if type(fn) ~= "function" and method == "head" then fn = rawget(t, "get") end
  if type(fn) == "function" then return fn end
  local allow = {}
  for _, name in next, method == "cron" and TABLE_METHODS or HTTP_METHODS do
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

-- A non-string error object is described, never converted: its __tostring is tenant code, and
-- by the time the reply is built the request's memory cap no longer applies. describe_error
-- runs as the error is raised (xpcall), under the cap, and says where it was raised.
local function error_text(err)
  if type(err) == "string" then return err end
  return "(error object is a " .. type(err) .. " value)"
end

local function describe_error(err)
  if type(err) == "string" then return err end
  for level = 2, 32 do
    local info = getinfo(level, "Sl")
    if info == nil then break end
    if info.what ~= "C" and info.currentline and info.currentline > 0 then
      return info.short_src .. ":" .. info.currentline .. ": " .. error_text(err)
    end
  end
  return error_text(err)
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
        local results = pack(xpcall(handler, describe_error, state.request))
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

local function lua_error(value)
  if value == "not enough memory" then return "memory_limit", value end
  return "lua_error", error_text(value)
end
