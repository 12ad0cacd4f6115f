-- Cache-miss runs: every request carries a new instance (random feature values).
-- Usage: wrk -s random.lua <url> -- <api-key> <body-template> <lo:hi> [<lo:hi> ...]
-- The template is the JSON body with the markers @0@, @1@, ... where feature values go; the
-- i-th lo:hi range after it bounds the value written at @i@. Six decimals make repeats (and so
-- accidental cache hits) vanishingly rare.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local next_thread_id = 1  -- lives in the setup environment only

function setup(thread)
   thread:set("thread_id", next_thread_id)  -- becomes a global in that thread's environment
   next_thread_id = next_thread_id + 1
end

local pieces, slots, ranges, headers

function init(args)
   math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
   headers = { ["Content-Type"] = "application/json" }
   if args[1] and args[1] ~= "" then
      headers["X-API-Key"] = args[1]
   end
   -- Split the template once: literal pieces between the @i@ markers, and the marker order.
   pieces, slots = {}, {}
   local template, pos = args[2], 1
   while true do
      local s, e, idx = template:find("@(%d+)@", pos)
      if not s then break end
      pieces[#pieces + 1] = template:sub(pos, s - 1)
      slots[#slots + 1] = tonumber(idx)
      pos = e + 1
   end
   pieces[#pieces + 1] = template:sub(pos)
   ranges = {}
   for i = 3, #args do
      local lo, hi = args[i]:match("^([^:]+):([^:]+)$")
      ranges[i - 3] = { tonumber(lo), tonumber(hi) - tonumber(lo) }
   end
end

function request()
   local out = {}
   for i, slot in ipairs(slots) do
      local r = ranges[slot] or { 0, 10 }
      out[#out + 1] = pieces[i]
      out[#out + 1] = string.format("%.6f", r[1] + r[2] * math.random())
   end
   out[#out + 1] = pieces[#pieces]
   return wrk.format("POST", nil, headers, table.concat(out))
end
