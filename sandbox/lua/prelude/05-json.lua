-- prelude/05-json: JSON encoding for response bodies and json.encode (cycles, depth and NaN
-- are errors that name the problem).
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
