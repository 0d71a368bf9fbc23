-- wrk script for bench/hostile.py: POSTs one JSON body (env BODY_FILE, PATH_ (default /score)) and
-- counts responses by status; done() prints one JSON line prefixed with "STATUS_COUNTS ".
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
  local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.path = os.getenv("PATH_") or "/score"
  wrk.headers["Content-Type"] = "application/json"
  local key = os.getenv("API_KEY")
  if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  io.write("STATUS_COUNTS {" .. table.concat(parts, ", ") .. "}\n")
  io.write(string.format('LATENCY_US {"p50": %d, "p90": %d, "p99": %d, "max": %d}\n',
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
