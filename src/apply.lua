-- rivetd's one Redis script: apply what Stripe said to a customer's entitlement, and append the
-- stream entry that says so, atomically and at most once per Stripe event.
--
-- KEYS: 1 the event key (rivet:event:<id>; unused unless mode is "event"), 2 the stream,
--       3 the customer hash (rivet:customer:<id>; unused without a customer),
--       4 the checkout key (rivet:checkout:<session id>; unused without a session),
--       5 the key of a new Telegram start token (rivet:tg:start:<token>),
--       6 the customer's email index (rivet:email:<lower-case email>; unused without one).
-- ARGV: 1 seconds to keep event and checkout keys, 2 mode: "event" (a Stripe event, from a
--       webhook or from recovery), "fulfill" (a paid Checkout Session read by the success page),
--       "state" (a subscription read from Stripe), 3 entry type ("" for none), 4 Stripe event id,
--       5 the entry's data (a JSON object), 6 the version of the information: the event's
--       created, or the time of the read, 7 customer id, 8 email, 9 subscription id,
--       10 the subscription's whole state "tier|status|period_end|cancel_at_period_end" when the
--       object is a subscription, else "", 11 the plan of a checkout (its provisional state when
--       the subscription is not known yet), else "", 12 "1" when the object fulfills its
--       Checkout Session (paid, or free), 13 "1" when past_due counts as active, 14 the source
--       ("webhook", "recovery", "success_page", "stripe"), 15 a new start token (used only if
--       the customer needs one), 16 the deep link's prefix ("https://t.me/<bot>?start="),
--       17 seconds a start token lives, 18 now (Unix seconds).
-- Returns {code, entry id, ask, telegram}: code 1 an entry was appended, 2 the event was seen
-- before (nothing written), 3 recorded without an entry (a session already provisioned, an
-- unpaid one, or a read of Stripe that changed nothing); ask 1 when Stripe should be asked for
-- the subscription: it is not known yet, or two different states carry the same second;
-- telegram, for a provisioned session: the deep link to give the customer, "linked" once a chat
-- is linked, else "".
--
-- Telegram: the first user.provision of a customer that has no linked chat issues the start
-- token (kept as rivet:tg:start:<token> -> customer for ARGV[17] seconds, and as tg_token and
-- tg_token_exp in the hash); a later provision, or the success page, gives the same token while
-- it lives and a fresh one once it expired or was used. The entitlement is also kept whole as
-- JSON in the hash field "ent", which the bot's look-ups answer as it is.
--
-- The customer hash keeps each subscription as a field "s:<id>" = "version|tier|status|
-- period_end|cancel_at_period_end", replaced only by a newer version, and the entitlement derived
-- from them: an active subscription before an inactive one, then the newest. Entries carry that
-- entitlement as it stands after the event, so a consumer that applies them in order, or only
-- the last one of a customer, ends in the right state.

local mode = ARGV[2]
if mode == 'event' and redis.call('EXISTS', KEYS[1]) == 1 then return {2, '', 0, ''} end
local ttl = tonumber(ARGV[1])
local version = tonumber(ARGV[6])
local cust, sub, state = ARGV[7], ARGV[9], ARGV[10]
local ask = 0
local changed = false
local entitlement = nil
local telegram = ''

-- A JSON string: most values need no escaping, and quoting them is far cheaper than encoding.
local function jstr(s)
  if s == nil or s == '' then return 'null' end
  if not s:find('[%c"\\/\128-\255]') then return '"' .. s .. '"' end
  return cjson.encode(s)
end

if cust ~= '' then
  local flat = redis.call('HGETALL', KEYS[3])
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  local set = {}
  if rec.customer_id == nil then set.customer_id = cust end

  local email = ARGV[8]
  if email ~= '' and email ~= rec.email and
      (rec.email_v == nil or version >= tonumber(rec.email_v)) then
    set.email = email
    set.email_v = ARGV[6]
    -- The bot may look a customer up by email: the newest customer of an address wins.
    redis.call('SET', KEYS[6], cust)
  end

  if sub ~= '' then
    local field = 's:' .. sub
    local cur = rec[field]
    local cur_v, cur_state = -1, nil
    if cur then
      local bar = cur:find('|', 1, true)
      cur_v = tonumber(cur:sub(1, bar - 1))
      cur_state = cur:sub(bar + 1)
    end
    if state ~= '' then
      if cur_v < version or (mode == 'state' and cur_v == version and cur_state ~= state) then
        set[field] = ARGV[6] .. '|' .. state
      elseif cur_v == version and cur_state ~= state then
        ask = 1
      end
    elseif ARGV[11] ~= '' and cur_v <= 0 then
      -- Known only from a checkout: provisional (version 0) until Stripe says more.
      local status = ARGV[12] == '1' and 'active' or 'incomplete'
      local provisional = ARGV[11] .. '|' .. status .. '||'
      if cur_state ~= provisional then set[field] = '0|' .. provisional end
      ask = 1
    elseif cur == nil then
      ask = 1
    end
  end

  for k, v in pairs(set) do rec[k] = v end

  local past_due = ARGV[13] == '1'
  local best, best_v, best_active = nil, -1, false
  for k, v in pairs(rec) do
    if k:sub(1, 2) == 's:' then
      local sv, tier, status, pe, cap = v:match('^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
      sv = tonumber(sv)
      local active = status == 'active' or status == 'trialing' or
          (past_due and status == 'past_due')
      if best == nil or (active and not best_active) or
          (active == best_active and (sv > best_v or (sv == best_v and k > best.field))) then
        best = {field = k, tier = tier, status = status, pe = pe, cap = cap}
        best_v, best_active = sv, active
      end
    end
  end
  if best then
    local derived = {
      subscription_id = best.field:sub(3), tier = best.tier, status = best.status,
      active = best_active and 'true' or 'false', current_period_end = best.pe,
      cancel_at_period_end = best.cap,
    }
    for k, v in pairs(derived) do
      if rec[k] ~= v then
        set[k] = v
        rec[k] = v
        changed = true
      end
    end
  end

  -- A provisioned session gives the customer a way into the bot, unless a chat is linked.
  if ARGV[3] == 'user.provision' and ARGV[12] == '1' and ARGV[16] ~= '' then
    if rec.telegram_user_id then
      telegram = 'linked'
    else
      local now = tonumber(ARGV[18])
      if not (rec.tg_token and tonumber(rec.tg_token_exp or '0') > now) then
        redis.call('SET', KEYS[5], cust, 'EX', ARGV[17])
        set.tg_token = ARGV[15]
        set.tg_token_exp = tostring(now + tonumber(ARGV[17]))
        rec.tg_token = ARGV[15]
      end
      telegram = ARGV[16] .. rec.tg_token
    end
  end

  local pe = rec.current_period_end
  if pe == nil or pe == '' then pe = 'null' end
  entitlement = '{"customer_id":"' .. cust .. '","email":' .. jstr(rec.email) ..
      ',"tier":' .. jstr(rec.tier) .. ',"status":' .. jstr(rec.status) ..
      ',"active":' .. (rec.active == 'true' and 'true' or 'false') ..
      ',"subscription_id":' .. jstr(rec.subscription_id) .. ',"current_period_end":' .. pe ..
      ',"cancel_at_period_end":' .. (rec.cancel_at_period_end == '1' and 'true' or 'false') ..
      ',"telegram_user_id":' .. (rec.telegram_user_id or 'null') .. '}'
  if rec.ent ~= entitlement then set.ent = entitlement end

  local args = {}
  for k, v in pairs(set) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  if #args > 0 then redis.call('HSET', KEYS[3], unpack(args)) end
end

local type = ARGV[3]
local add = type ~= ''
if mode == 'state' then add = add and changed end
if type == 'user.provision' then
  -- One user.provision per Checkout Session, whichever path comes first.
  if ARGV[12] ~= '1' or redis.call('EXISTS', KEYS[4]) == 1 then add = false end
end

local id = ''
if add then
  local data = ARGV[5]:sub(1, -2) .. ',"source":"' .. ARGV[14] .. '"'
  if telegram ~= '' and telegram ~= 'linked' then
    data = data .. ',"telegram_link":' .. cjson.encode(telegram)
  end
  if entitlement then data = data .. ',"entitlement":' .. entitlement end
  data = data .. '}'
  id = redis.call('XADD', KEYS[2], '*', 'type', type, 'stripe_event_id', ARGV[4], 'data', data)
  if type == 'user.provision' then redis.call('SET', KEYS[4], id, 'EX', ttl) end
end
if mode == 'event' then redis.call('SET', KEYS[1], add and id or 'recorded', 'EX', ttl) end
return {add and 1 or 3, id, ask, telegram}
