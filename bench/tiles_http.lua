-- wrk script of bench/tiles_http.py: walks a list of URL paths (a file, one path a line, named
-- after `--` on wrk's command line, with the number of threads), each thread from its own
-- offset and round again, and counts the answers that are not 200. Ends with one line,
-- "tiles_http key=value ...", that the bench reads.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local paths = {}
  for line in io.lines(args[1]) do
    if line ~= "" then
      paths[#paths + 1] = wrk.format("GET", line)
    end
  end
  requests = paths
  position = math.floor(#paths * id / tonumber(args[2]))
  not_ok = 0
  first_not_ok = ""
end

function request()
  position = position % #requests + 1
  return requests[position]
end

function response(status, headers, body)
  if status ~= 200 then
    not_ok = not_ok + 1
    if first_not_ok == "" then
      first_not_ok = status .. " " .. string.sub(body or "", 1, 160):gsub("%s+", " ")
    end
  end
end

function done(summary, latency, requests)
  local not_ok, first = 0, ""
  for _, thread in ipairs(threads) do
    not_ok = not_ok + thread:get("not_ok")
    if first == "" then
      first = thread:get("first_not_ok")
    end
  end
  local errors = summary.errors
  io.write(string.format(
    "tiles_http requests=%d duration_us=%d bytes=%d not_ok=%d connect=%d read=%d write=%d " ..
    "timeout=%d p50_us=%d p95_us=%d first_not_ok=%s\n",
    summary.requests, summary.duration, summary.bytes, not_ok, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(95), first))
end
