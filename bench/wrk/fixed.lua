-- Cache-hit runs: the same POST (JSON body + X-API-Key) on every request.
-- Usage: wrk -s fixed.lua <url> -- <api-key> <json-body>
-- The request is built once per thread (no request() hook), so wrk's own cost stays minimal.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

function init(args)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   if args[1] and args[1] ~= "" then
      wrk.headers["X-API-Key"] = args[1]
   end
   wrk.body = args[2]
end
