-- prelude/10-host-libraries: crypto, base64, utils, and clear errors for the webscript names
-- this server does not provide. Host functions are Lua closures around guarded Python
-- callables (wrap_host in 09-modules): the Python object stays an unreachable upvalue.
---------------------------------------------------------------------------------------------
-- crypto, base64, utils, and the webscript names this server does not provide

local function check_string(value, what)
  if type(value) ~= "string" then error(what .. " must be a string", 3) end
end

local function digest_object(raw, hex)
  return { digest = function() return raw end, hex = function() return hex end }
end

-- email.send and alert: platform calls, made by the server (the worker has no sockets).
local EMAIL_STRINGS = { "server", "username", "password", "from", "subject", "text", "html", "replyto" }

local function send_email(spec)
  if type(spec) ~= "table" then error("email.send: expected a table of options", 2) end
  local call = { op = "email" }
  for _, field in next, EMAIL_STRINGS do
    local value = rawget(spec, field)
    if value ~= nil and type(value) ~= "string" then
      error("email.send: " .. field .. " must be a string", 2)
    end
    call[field] = value
  end
  if not call.server then error("email.send: server is required", 2) end
  if not call.from then error("email.send: from is required", 2) end
  if not call.text and not call.html then error("email.send: text or html is required", 2) end
  local to = rawget(spec, "to")
  if type(to) == "string" then to = { to } end
  if type(to) ~= "table" or #to == 0 or #to > 100 then
    error("email.send: to must be an address or a list of 1 to 100 addresses", 2)
  end
  local recipients = {}
  for i = 1, #to do
    if type(to[i]) ~= "string" then error("email.send: to must hold strings", 2) end
    recipients[i] = to[i]
  end
  call.to = recipients
  local port = rawget(spec, "port")
  if port ~= nil and (type(port) ~= "number" or port ~= floor(port) or port < 1 or port > 65535) then
    error("email.send: port must be a whole number from 1 to 65535", 2)
  end
  call.port = port
  call.secure = rawget(spec, "secure") and true or false
  local answer = platform_call(call)
  local raised = rawget(answer, "raise")
  if raised then error("email.send: " .. raised, 2) end
  return true
end

local function send_alert(kind)
  return function(text)
    if type(text) ~= "string" then error("alert." .. kind .. ": expected a string", 2) end
    local answer = platform_call({ op = "alert", kind = kind, text = text })
    local raised = rawget(answer, "raise")
    if raised then error("alert." .. kind .. ": " .. raised, 2) end
    return true
  end
end

-- storage, lease and cache: platform calls answered by the server from the tenant's own store.
local function storage_key(what, key)
  if type(key) == "number" then key = tostring(key) end
  if type(key) ~= "string" then error(what .. ": keys must be strings", 3) end
  return key
end

local function storage_value(what, value)
  local kind = type(value)
  if kind == "string" then return value end
  if kind == "number" or kind == "boolean" then return tostring(value) end
  error(what .. ": values must be strings, numbers or booleans (use json.stringify for a "
    .. kind .. ")", 3)
end

local function storage_call(what, call)
  call.op = "storage"
  local answer = platform_call(call)
  local raised = rawget(answer, "raise")
  if raised then error(what .. ": " .. raised, 3) end
  return rawget(answer, "value")
end

local function refuse_storage() error("storage cannot be iterated or replaced", 2) end
local storage_library = setmetatable({}, {
  __index = function(_, key)
    return storage_call("storage", { kind = "get", key = storage_key("storage", key) })
  end,
  __newindex = function(_, key, value)
    key = storage_key("storage", key)
    if value == nil then
      storage_call("storage", { kind = "delete", key = key })
    else
      storage_call("storage", { kind = "set", key = key, value = storage_value("storage", value) })
    end
  end,
  __call = refuse_storage,
  __metatable = false,
})

local lease_library = {
  acquire = function(name, timeout)
    name = storage_key("lease.acquire", name)
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0 or timeout ~= timeout) then
      error("lease.acquire: the timeout must be a number of seconds", 2)
    end
    return storage_call("lease.acquire", { kind = "lease_acquire", key = name, timeout = timeout })
      ~= nil
  end,
  release = function(name)
    name = storage_key("lease.release", name)
    return storage_call("lease.release", { kind = "lease_release", key = name }) ~= nil
  end,
}

local cache_library = {
  get = function(key)
    return storage_call("cache.get", { kind = "cache_get", key = storage_key("cache.get", key) })
  end,
  set = function(key, value, ttl)
    key = storage_key("cache.set", key)
    value = storage_value("cache.set", value)
    if ttl ~= nil and (type(ttl) ~= "number" or not (ttl > 0) or ttl == huge) then
      error("cache.set: the ttl must be a positive number of seconds", 2)
    end
    storage_call("cache.set", { kind = "cache_set", key = key, value = value, ttl = ttl })
    return true
  end,
  delete = function(key)
    storage_call("cache.delete", { kind = "cache_delete", key = storage_key("cache.delete", key) })
    return true
  end,
}

local email_library = { send = send_email }
local alert_library = { email = send_alert("email"), sms = send_alert("sms") }

local function host_libraries(python_functions)
  -- Each guarded Python callable stays an upvalue of its Lua wrapper: tenants never see it.
  local host = {}
  for name, fn in next, python_functions do host[name] = wrap_host(fn) end
  oauth_sign = host.oauth_sign
  local json = json_library()
  -- As wrap_host, with the packed answer read into tables (05-json: json_decoded).
  local parse = python_functions.json_decode
  local function decode(...) return json_decoded(parse(...)) end
  json.decode, json.parse, json.stringify = decode, decode, json.encode
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
    email = email_library, alert = alert_library, storage = storage_library,
    lease = lease_library, cache = cache_library,
  }
  return libraries
end
