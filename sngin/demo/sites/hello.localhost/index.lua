-- The demo tenant: http://hello.localhost/ (send `Host: hello.localhost`).
local name = request.query.name or "world"
return "Hello, " .. name .. "!\n"
