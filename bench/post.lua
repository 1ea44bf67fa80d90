-- wrk script: POST a JSON body with a Bearer key, count non-2xx answers, print one JSON summary line.
--   wrk -t1 -c16 -d5s -s bench/post.lua http://127.0.0.1:PORT/v1/chat/completions -- BODY_FILE [KEY]
-- The summary line starts with "BENCH_JSON " (latencies in microseconds); bench/run.py parses it.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   local body = f:read("*a")
   f:close()
   local headers = { ["Content-Type"] = "application/json" }
   if args[2] and args[2] ~= "" then
      headers["Authorization"] = "Bearer " .. args[2]
   end
   non2xx = 0
   first_bad = ""
   req = wrk.format("POST", nil, headers, body)
end

function request()
   return req
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_bad == "" then
         first_bad = tostring(status) .. " " .. string.sub(tostring(body), 1, 300)
      end
   end
end

function done(summary, latency, requests)
   local bad, sample = 0, ""
   for _, t in ipairs(threads) do
      bad = bad + t:get("non2xx")
      local s = t:get("first_bad")
      if sample == "" and s and s ~= "" then sample = s end
   end
   sample = string.gsub(sample, '[%c"\\]', " ")
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "non2xx": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"mean": %.1f, "stdev": %.1f, "min": %d, "max": %d, ' ..
      '"p50": %d, "p90": %d, "p99": %d, "p999": %d}, "first_bad": "%s"}\n',
      summary.requests, summary.duration, summary.bytes, bad,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.stdev, latency.min, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      sample))
end
