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

---------------------------------------------------------------------------------------------
-- JSON decoding: the host parses the text (Python's json) and hands it over as MessagePack,
-- which this reads into tables with string.byte/string.sub only (compiled by the JIT): ~4x
-- less CPU than building the tables from Python objects one by one. The bytes come from the
-- host's own encoder, never from tenant code; the tables are made under the request's memory
-- cap like any other. Nesting past MAX_DEPTH is refused as the host's own check was.

local ldexp = math.ldexp
local TOO_DEEP = -1  -- a position no read returns: the value nested past MAX_DEPTH
local read_packed

local function u16(s, i)
  local a, b = sbyte(s, i, i + 1)
  return a * 256 + b
end

local function u32(s, i)
  local a, b, c, d = sbyte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

local function f64(s, i)
  local b1, b2, b3, b4, b5, b6, b7, b8 = sbyte(s, i, i + 7)
  local sign = b1 >= 128 and -1 or 1
  local exponent = (b1 % 128) * 16 + floor(b2 / 16)
  local mantissa = (((((b2 % 16) * 256 + b3) * 256 + b4) * 256 + b5) * 256 + b6) * 65536
    + b7 * 256 + b8
  if exponent == 2047 then
    if mantissa == 0 then return sign * huge end
    return 0 / 0
  end
  if exponent == 0 then return sign * ldexp(mantissa, -1074) end
  return sign * ldexp(mantissa + 4503599627370496, exponent - 1075)
end

-- depth: of this container, the outermost's 0; as the host's check did, a container at
-- MAX_DEPTH may only be empty.
local function packed_array(s, i, n, depth)
  if depth > MAX_DEPTH or (depth == MAX_DEPTH and n > 0) then return nil, TOO_DEEP end
  local t = {}
  for k = 1, n do
    local v
    v, i = read_packed(s, i, depth)
    if i == TOO_DEEP then return nil, TOO_DEEP end
    t[k] = v
  end
  return t, i
end

local function packed_map(s, i, n, depth)
  if depth > MAX_DEPTH or (depth == MAX_DEPTH and n > 0) then return nil, TOO_DEEP end
  local t = {}
  for _ = 1, n do
    local k, v
    k, i = read_packed(s, i, depth)  -- keys are strings: JSON's are
    v, i = read_packed(s, i, depth)
    if i == TOO_DEEP then return nil, TOO_DEEP end
    t[k] = v
  end
  return t, i
end

-- One value at position i (inside a container at `depth`): the value and the position after it.
read_packed = function(s, i, depth)
  local c = sbyte(s, i)
  if c < 0x80 then return c, i + 1 end  -- positive fixint
  if c >= 0xa0 and c <= 0xbf then  -- fixstr
    local n = c - 0xa0
    return ssub(s, i + 1, i + n), i + 1 + n
  end
  if c >= 0xe0 then return c - 256, i + 1 end  -- negative fixint
  if c <= 0x8f then return packed_map(s, i + 1, c - 0x80, depth + 1) end
  if c <= 0x9f then return packed_array(s, i + 1, c - 0x90, depth + 1) end
  if c == 0xc0 then return json_null, i + 1 end
  if c == 0xc2 then return false, i + 1 end
  if c == 0xc3 then return true, i + 1 end
  if c == 0xcb then return f64(s, i + 1), i + 9 end
  if c == 0xd9 then
    local n = sbyte(s, i + 1)
    return ssub(s, i + 2, i + 1 + n), i + 2 + n
  end
  if c == 0xda then
    local n = u16(s, i + 1)
    return ssub(s, i + 3, i + 2 + n), i + 3 + n
  end
  if c == 0xdb then
    local n = u32(s, i + 1)
    return ssub(s, i + 5, i + 4 + n), i + 5 + n
  end
  if c == 0xcc then return sbyte(s, i + 1), i + 2 end
  if c == 0xcd then return u16(s, i + 1), i + 3 end
  if c == 0xce then return u32(s, i + 1), i + 5 end
  if c == 0xcf then return u32(s, i + 1) * 4294967296 + u32(s, i + 5), i + 9 end
  if c == 0xd0 then
    local v = sbyte(s, i + 1)
    return v >= 128 and v - 256 or v, i + 2
  end
  if c == 0xd1 then
    local v = u16(s, i + 1)
    return v >= 32768 and v - 65536 or v, i + 3
  end
  if c == 0xd2 then
    local v = u32(s, i + 1)
    return v >= 2147483648 and v - 4294967296 or v, i + 5
  end
  if c == 0xd3 then  -- int64: the sum rounds once, as the host's float() of it does
    local high, low = u32(s, i + 1), u32(s, i + 5)
    if high >= 2147483648 then high = high - 4294967296 end
    return high * 4294967296 + low, i + 9
  end
  if c == 0xdc then return packed_array(s, i + 3, u16(s, i + 1), depth + 1) end
  if c == 0xdd then return packed_array(s, i + 5, u32(s, i + 1), depth + 1) end
  if c == 0xde then return packed_map(s, i + 3, u16(s, i + 1), depth + 1) end
  if c == 0xdf then return packed_map(s, i + 5, u32(s, i + 1), depth + 1) end
  error("json.decode: internal error", 0)  -- the host encodes nothing else
end

-- json.decode's Lua side: `ok, value, packed` from the guarded host parser (see wrap_host).
local function json_decoded(ok, ...)
  if not ok then error((...), 2) end
  local value, packed = ...
  if packed ~= true then return ... end  -- a plain value, or nil and a message
  local decoded, position = read_packed(value, 1, -1)
  if position == TOO_DEEP then
    return nil, sformat("invalid JSON: nested more than %d levels", MAX_DEPTH)
  end
  return decoded
end
