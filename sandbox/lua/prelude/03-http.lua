-- prelude/03-http: http.request and the query-string helpers. The request itself is made by
-- the server (the worker has no sockets); the server checks every argument again
-- (sngin/call_rules.py), since a worker is tenant-controlled.
---------------------------------------------------------------------------------------------
-- http: the request is made by the server (the worker has no sockets), through platform_call.

-- Header tables (request.headers, an http.request answer's headers) hold canonical Title-Case
-- names, which is what iterating them yields (as webscript exposed them); a lookup in any case
-- finds the same entry. Locked, so no request can change how another's headers look up.
local function header_name(name)
  return (sgsub(sgsub(slower(name), "^%l", supper), "%-%l", supper))
end

local HEADERS_MT = {
  __index = function(t, name)
    if type(name) == "string" then return rawget(t, header_name(name)) end
    return nil
  end,
  __metatable = false,
}

local function header_table(t)
  if type(t) == "table" then setmetatable(t, HEADERS_MT) end
  return t
end

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

-- The OAuth 1.0a signer (sandbox/oauth1.py), set by host_libraries: it runs in the worker under
-- the tenant's limits, and answers the URL in the form the server's client sends, with the
-- Authorization value that signs it.
local oauth_sign

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
  local flat, content_type = {}, nil
  local headers = rawget(spec, "headers")
  if headers ~= nil then
    if type(headers) ~= "table" then fail_http("headers must be a table") end
    for name, value in next, headers do
      if type(name) ~= "string" then fail_http("header names must be strings") end
      local values = type(value) == "table" and value or { value }
      if content_type == nil and slower(name) == "content-type" and rawget(values, 1) ~= nil then
        content_type = tostring(rawget(values, 1))
      end
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
      if content_type == nil then
        content_type = "application/x-www-form-urlencoded"
        flat[#flat + 1] = "Content-Type"
        flat[#flat + 1] = content_type
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
  local user, password, oauth
  local auth = rawget(spec, "auth")
  if auth ~= nil then
    if type(auth) ~= "table" then fail_http("auth must be {user, password} or {oauth = {...}}") end
    local o = rawget(auth, "oauth")
    if o ~= nil then
      -- OAuth 1.0a (HMAC-SHA1), signed here in the worker; the access token and its secret
      -- are optional (the request-token step has none).
      if type(o) ~= "table" then fail_http("auth.oauth must be a table") end
      oauth = {}
      for _, field in next, { "consumertoken", "consumersecret", "accesstoken", "tokensecret" } do
        local value = rawget(o, field)
        if value ~= nil and type(value) ~= "string" then
          fail_http("auth.oauth." .. field .. " must be a string")
        end
        oauth[field] = value
      end
      if not oauth.consumertoken or not oauth.consumersecret then
        fail_http("auth.oauth needs consumertoken and consumersecret")
      end
    else
      user = rawget(auth, "username") or rawget(auth, "user") or rawget(auth, 1)
      password = rawget(auth, "password") or rawget(auth, 2)
      if type(user) ~= "string" or type(password) ~= "string" then
        fail_http("auth must be {user, password}")
      end
    end
  end
  local timeout = rawget(spec, "timeout")
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0) or timeout == huge) then
    fail_http("timeout must be a positive number of seconds")
  end
  method = supper(method)
  if oauth then
    local ok, signed_url, authorization = pcall(oauth_sign, method, url, body, content_type,
      oauth.consumertoken, oauth.consumersecret, oauth.accesstoken, oauth.tokensecret)
    if not ok then fail_http(sgsub(tostring(signed_url), "^http%.request: ", "")) end
    url = signed_url
    flat[#flat + 1] = "Authorization"
    flat[#flat + 1] = authorization
  end
  local answer = platform_call({
    op = "http", url = url, method = method, headers = flat, body = body,
    timeout = timeout, user = user, password = password,
  })
  local raised = rawget(answer, "raise")
  if raised then fail_http(raised) end
  header_table(rawget(answer, "headers"))
  return answer
end

local http_library = { request = http_request, qsencode = qsencode, qsparse = qsparse }
