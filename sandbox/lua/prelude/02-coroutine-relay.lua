-- prelude/02-coroutine-relay: platform calls are yields with a private marker; the tenant's
-- own coroutine functions relay them upward instead of catching them.
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
