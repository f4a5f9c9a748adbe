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
  header_table(request.headers)
  env.request = request
  env.env = read_only(tenant_env or {})
  env._G = env
  env.require = make_require(nil, env)
  return env, collect, emit
end
