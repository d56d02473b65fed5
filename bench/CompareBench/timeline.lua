-- wrk script of `make bench`: a time line of answers, failures and latencies, per 100 ms.
--
-- Run it with as many threads as connections (wrk -t N -c N). Each wrk thread then holds one connection,
-- so on a thread requests and responses strictly alternate: the script times every request itself, and a
-- request that never got a response is seen for sure. wrk calls request() before each attempt to send,
-- also on the fresh connection it opens after a failure (a refused connect shows up as a failed write),
-- so a request() while the previous request is still unanswered means that request failed: its
-- connection was refused, reset or closed before the answer came.
--
-- After a failed request the thread (so: that one connection) pauses 10 ms before its next request, as a
-- client backs off. Without the pause wrk retries a refused connection at once, tens of thousands of times
-- a second per connection, and that busy loop starves the very server that is starting on the same cores
-- (measured here: a restart's new process took 8 s instead of 0.3 s to answer).
--
-- Each thread writes one line per 100 ms bucket of CLOCK_MONOTONIC (the clock .NET's Stopwatch reads on
-- Linux, so the bench can place its reload moments on the same axis) to $WRK_TIMELINE.<thread>:
--     b BUCKET OK OTHER FAILED MAX_US BIN:COUNT ...
-- OK = 2xx answers, OTHER = other answers, FAILED = unanswered requests, MAX_US = the slowest answer, and a
-- latency histogram with bins 1 % wide (bin = floor(ln(latency in us) * 100)). done() writes wrk's own
-- totals and each thread's totals to $WRK_TIMELINE:
--     wrk DURATION_US REQUESTS CONNECT READ WRITE STATUS TIMEOUT THREADS
--     thread ID SENT OK OTHER FAILED UNANSWERED_AT_END
-- The format is read by bench/CompareBench/Timeline.cs. (Tables are not fetched with thread:get: wrk
-- 4.1.0 corrupts the Lua stack copying them, so threads write their own files.)

local ffi = require("ffi")
ffi.cdef [[
struct bench_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clock, struct bench_timespec *ts);
int usleep(unsigned int usec);
]]
local CLOCK_MONOTONIC = 1
local BUCKET_US = 100000
local BACKOFF_US = 10000
local BINS_PER_E = 100
local ts = ffi.new("struct bench_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

-- This thread's totals: globals, so that done() in wrk's main Lua state can read them with thread:get.
sent, answered_ok, answered_other, failed = 0, 0, 0, 0
pending_us = false -- when the unanswered request was sent, or false
thread_id = 0      -- set by setup()

local req, out
local verifying -- wrk calls the first thread's request() once before the run to check the request
local bucket, b_ok, b_other, b_failed, b_max, b_hist

local function flush()
  if bucket then
    local parts = {}
    for bin, n in pairs(b_hist) do parts[#parts + 1] = bin .. ":" .. n end
    out:write(string.format("b %d %d %d %d %d %s\n", bucket, b_ok, b_other, b_failed, b_max, table.concat(parts, " ")))
    out:flush()
  end
end

local function at(t)
  local b = math.floor(t / BUCKET_US)
  if b ~= bucket then
    flush()
    bucket, b_ok, b_other, b_failed, b_max, b_hist = b, 0, 0, 0, 0, {}
  end
end

function init(args)
  req = wrk.format()
  verifying = thread_id == 1
  out = assert(io.open(assert(os.getenv("WRK_TIMELINE"), "WRK_TIMELINE is not set") .. "." .. thread_id, "w"))
end

function request()
  if verifying then
    verifying = false
    return req
  end
  local t = now_us()
  if pending_us then
    at(t)
    failed = failed + 1
    b_failed = b_failed + 1
    ffi.C.usleep(BACKOFF_US)
    t = now_us()
  end
  at(t)
  pending_us = t
  sent = sent + 1
  return req
end

function response(status, headers, body)
  local t = now_us()
  at(t)
  if status >= 200 and status < 300 then
    answered_ok = answered_ok + 1
    b_ok = b_ok + 1
  else
    answered_other = answered_other + 1
    b_other = b_other + 1
  end
  if pending_us then
    local latency = t - pending_us
    local bin = math.floor(math.log(latency < 1 and 1 or latency) * BINS_PER_E)
    b_hist[bin] = (b_hist[bin] or 0) + 1
    if b_max < latency then b_max = latency end
  end
  pending_us = false
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

function done(summary, latency, requests)
  local f = assert(io.open(assert(os.getenv("WRK_TIMELINE"), "WRK_TIMELINE is not set"), "w"))
  local e = summary.errors
  f:write(string.format("wrk %d %d %d %d %d %d %d %d\n", summary.duration, summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout, #threads))
  for i, thread in ipairs(threads) do
    f:write(string.format("thread %d %d %d %d %d %d\n", i, thread:get("sent"), thread:get("answered_ok"),
      thread:get("answered_other"), thread:get("failed"), thread:get("pending_us") and 1 or 0))
  end
  f:close()
end
