-- wrk script: the same load straight at the fake Stripe: POST /v1/checkout/sessions with the
-- form body, headers and fresh Idempotency-Key rivetd sends for one checkout. Set the secret
-- key with the environment variable BENCH_STRIPE_KEY. Counts answers by status for checkout.sh.
local counter = 0
local threads = {}
local key = os.getenv("BENCH_STRIPE_KEY") or "sk_test_bench_key_0000"
local price = os.getenv("BENCH_PRICE") or "price_pro_bench"
local app = os.getenv("BENCH_APP_URL") or "https://rivet.io"

local function escape(s)
    return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

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
    fixed = table.concat({
        "mode=subscription",
        "payment_method_types%5B0%5D=card",
        "line_items%5B0%5D%5Bprice%5D=" .. escape(price),
        "line_items%5B0%5D%5Bquantity%5D=1",
    }, "&")
    tail = table.concat({
        "success_url=" .. escape(app .. "/success?session_id={CHECKOUT_SESSION_ID}"),
        "cancel_url=" .. escape(app .. "/pricing"),
        "metadata%5Btier%5D=pro",
        "metadata%5Bsource%5D=rivet_landing",
        "subscription_data%5Bmetadata%5D%5Btier%5D=pro",
        "allow_promotion_codes=true",
    }, "&")
end

function request()
    counter = counter + 1
    local email = string.format("bench+%d.%d@example.com", tid, counter)
    local body = fixed .. "&customer_email=" .. escape(email) .. "&" .. tail
    return wrk.format("POST", nil, {
        ["Authorization"] = "Bearer " .. key,
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["Accept"] = "application/json",
        ["User-Agent"] = "rivetd-bench",
        ["Idempotency-Key"] = string.format("bench-%d-%d-%d", os.time(), tid, counter),
    }, body)
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
