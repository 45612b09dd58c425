-- wrk script: POST /api/checkout/create to rivetd, as the landing page does, with a distinct
-- e-mail address per request; counts answers by status for checkout.sh.
local counter = 0
local threads = {}

function setup(thread)
    thread:set("tid", #threads + 1)
    table.insert(threads, thread)
end

function init(args)
    ok = 0
    non2xx = 0
    counter = 0
    -- tid is set per thread by setup(); 0 if it was not.
    tid = tid or 0
end

function request()
    counter = counter + 1
    local body = string.format('{"email":"bench+%d.%d@example.com","tier":"pro"}', tid, counter)
    return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
    if status >= 200 and status < 300 then
        ok = ok + 1
    else
        non2xx = non2xx + 1
    end
end

function done(summary, latency, requests)
    local good, bad = 0, 0
    for _, t in ipairs(threads) do
        good = good + t:get("ok")
        bad = bad + t:get("non2xx")
    end
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d ok=%d non2xx=%d connect=%d read=%d write=%d timeout=%d " ..
        "rate=%.1f p50_ms=%.1f p99_ms=%.1f\n",
        summary.requests, good, bad, e.connect, e.read, e.write, e.timeout,
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
