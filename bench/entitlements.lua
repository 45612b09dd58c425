-- wrk script: GET /api/entitlements?telegram_user_id=<id> with the bearer token, as the bot asks
-- on every message, rotating over the seeded Telegram users. With "health" as the fourth
-- argument it asks GET /health instead, through the same code and with the same header, so that
-- both rates cost the load generator the same and their ratio is the daemon's.
-- Arguments (after --): the API token, the first Telegram user id, how many ids[, "health"].
local reqs = {}
local n = 0
local i = 0

function init(args)
    local token = args[1]
    local first = tonumber(args[2])
    n = tonumber(args[3])
    local health = args[4] == "health"
    local headers = {["Authorization"] = "Bearer " .. token}
    -- Every request is formatted once here: the load generator should spend its time on the
    -- network, not on building strings.
    for k = 0, n - 1 do
        local path = health and "/health" or "/api/entitlements?telegram_user_id=" .. (first + k)
        reqs[k + 1] = wrk.format("GET", path, headers)
    end
end

function request()
    i = i % n + 1
    return reqs[i]
end
