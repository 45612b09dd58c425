-- rivetd's one Redis script: apply what Stripe said to a customer's entitlement, and append the
-- stream entry that says so, atomically and at most once per Stripe event.
--
-- KEYS: 1 the event key (rivet:event:<id>; unused unless mode is "event"), 2 the stream,
--       3 the customer hash (rivet:customer:<id>; unused without a customer),
--       4 the checkout key (rivet:checkout:<session id>; unused without a session),
--       5 the key of a new Telegram start token (rivet:tg:start:<token>),
--       6 the customer's email index (rivet:email:<lower-case email>; unused without one),
--       7 the subscriptions in doubt (rivet:doubts, a sorted set: "<subscription id> <customer
--       id>" -> when first doubted).
-- ARGV: 1 seconds to keep event and checkout keys, 2 mode: "event" (a Stripe event, from a
--       webhook or from recovery), "fulfill" (a paid Checkout Session read by the success page),
--       "state" (a subscription read from Stripe), 3 entry type ("" for none), 4 Stripe event id,
--       5 the entry's data, a JSON object without its closing brace (the script adds the
--       entitlement and closes it), 6 the version of the information: the event's created, or
--       the time of the read, 7 customer id, 8 email, 9 subscription id, 10 the subscription's
--       whole state "tier|status|period_end|cancel_at_period_end" when the object is a
--       subscription, else "", 11 the plan of a checkout (its provisional state when the
--       subscription is not known yet), else "", 12 "1" when the object fulfills its Checkout
--       Session (paid, or free), 13 "1" when past_due counts as active, 14 the source
--       ("webhook", "recovery", "success_page", "stripe"), 15 a new start token (used only if
--       the customer needs one), 16 the deep link's prefix ("https://t.me/<bot>?start="),
--       17 seconds a start token lives, 18 now (Unix seconds).
-- Returns {code, entry id, ask, telegram}: code 1 an entry was appended, 2 the event was seen
-- before (nothing written), 3 recorded without an entry (a session already provisioned, an
-- unpaid one, or a read of Stripe that changed nothing); ask 1 when Stripe should be asked for
-- the subscription: it is not known yet, two different states carry the same second, or a read
-- of it was not newer than the events applied (asked again once Stripe's second has passed);
-- telegram, for a provisioned session: the deep link to give the customer, "linked" once a chat
-- is linked, else "".
--
-- The event key holds the source that first brought the event ("dead" for a dead letter).
--
-- A doubt (ask 1) is kept in KEYS[7] in the same step as the event that raised it, and dropped
-- when a read of Stripe settles it: a doubt rivetd could not settle at once (Stripe down, Redis
-- stalled, rivetd restarted) is asked again by the next recovery run, never lost.
--
-- Telegram: the first user.provision of a customer that has no linked chat issues the start
-- token (kept as rivet:tg:start:<token> -> customer for ARGV[17] seconds, and as tg_token and
-- tg_token_exp in the hash); a later provision, or the success page, gives the same token while
-- it lives and a fresh one once it expired or was used.
--
-- The customer hash keeps each subscription as a field "s:<id>" = "version|tier|status|
-- period_end|cancel_at_period_end", replaced only by a newer version; "subs" counts them and "pd"
-- is the past_due rule they were last derived under. From them comes the entitlement: an active
-- subscription before an inactive one, then the newest, kept as the fields subscription_id,
-- tier, status, active, current_period_end, cancel_at_period_end, and whole as the JSON "ent",
-- which entries carry and the bot's look-ups answer as it is. An entry carries the entitlement
-- as it stands after its event, so a consumer that applies entries in order, or only the last
-- one of a customer, ends in the right state.
--
-- Cost: what is written to Lua's heap is what the garbage collector pays for, so the common
-- case, an event of a customer with one subscription, reads seven fields, builds the entitlement
-- only when something in it may have changed, and builds the entry's data in one concatenation.

local mode = ARGV[2]
-- The event is marked first, in the script's first write: if Redis refuses writes (out of memory),
-- nothing is written. Should anything after it fail, the mark is taken back, so that Stripe's
-- next delivery is applied in full.
if mode == 'event' and not redis.call('SET', KEYS[1], ARGV[14], 'NX', 'EX', ARGV[1]) then
  return {2, '', 0, ''}
end

local function apply()
  local cust, sub = ARGV[7], ARGV[9]
  local ask, changed, entitlement, telegram = 0, false, false, ''
  if cust ~= '' then
    local version, state, past_due = tonumber(ARGV[6]), ARGV[10], ARGV[13]
    local field = sub ~= '' and 's:' .. sub or 'ent'
    local r = redis.call('HMGET', KEYS[3], 'ent', 'subs', 'pd', field, 'email', 'email_v',
      'telegram_user_id')
    local old_ent, subs, email = r[1], tonumber(r[2]), r[5]
    if old_ent == '' then old_ent = false end
    local args, n = {}, 0
    local fresh = not old_ent
    if fresh then args[1], args[2], n, subs = 'customer_id', cust, 2, 0 end
    -- A record kept before its subscriptions were counted, or derived under another past_due
    -- rule, is derived again from all of them.
    local whole = not fresh and (not subs or r[3] ~= past_due)

    local e = ARGV[8]
    local rebuild = fresh
    if e ~= '' and e ~= email and (not r[6] or tonumber(ARGV[6]) >= tonumber(r[6])) then
      args[n + 1], args[n + 2], args[n + 3], args[n + 4], n = 'email', e, 'email_v', ARGV[6], n + 4
      email, rebuild = e, true
      -- The bot may look a customer up by email: the newest customer of an address wins.
      redis.call('SET', KEYS[6], cust)
    end

    local nv, same = false, false
    if sub ~= '' then
      local cur = r[4]
      local cur_v, cur_state = -1, false
      if cur then
        local bar = cur:find('|', 1, true)
        cur_v = tonumber(cur:sub(1, bar - 1))
        cur_state = cur:sub(bar + 1)
      end
      if state ~= '' then
        if cur_v < version then
          nv, same = ARGV[6] .. '|' .. state, cur_state == state and not fresh
        elseif mode == 'state' or (cur_v == version and cur_state ~= state) then
          -- A read is applied only when it is newer than every event applied: in the same
          -- second it may have been answered before or after them, and when older, a doubt it
          -- was to settle may still stand. Either way Stripe is asked again, later.
          ask = 1
        end
      elseif ARGV[11] ~= '' and cur_v <= 0 then
        -- Known only from a checkout: provisional (version 0) until Stripe says more.
        local provisional = ARGV[11] .. (ARGV[12] == '1' and '|active||' or '|incomplete||')
        if cur_state ~= provisional then nv = '0|' .. provisional end
        ask = 1
      elseif not cur then
        ask = 1
      end
      if nv then
        args[n + 1], args[n + 2], n = field, nv, n + 2
        if not cur and subs then subs = subs + 1 end
      end
    end

    -- The entitlement: an active subscription before an inactive one, then the newest. With one
    -- subscription it is that one's state; with several, all of them are compared.
    local best = false
    if whole or (nv and subs > 1) then
      local flat = redis.call('HGETALL', KEYS[3])
      local best_k, best_v, best_active, seen = false, -1, false, false
      subs = 0
      local function consider(k, v)
        local sv, status = v:match('^([^|]*)|[^|]*|([^|]*)')
        sv = tonumber(sv)
        local active = status == 'active' or status == 'trialing' or
          (past_due == '1' and status == 'past_due')
        subs = subs + 1
        if not best_k or (active and not best_active) or
            (active == best_active and (sv > best_v or (sv == best_v and k > best_k))) then
          best_k, best_v, best_active, best = k, sv, active, v
        end
      end
      for i = 1, #flat, 2 do
        local k = flat[i]
        if k:byte(1) == 115 and k:byte(2) == 58 then -- "s:"
          if k == field and nv then
            consider(k, nv)
            seen = true
          else
            consider(k, flat[i + 1])
          end
        end
      end
      if nv and not seen then consider(field, nv) end
      if best then best = best_k:sub(3) .. best:match('^[^|]*(|.*)$') end
      args[n + 1], args[n + 2], args[n + 3], args[n + 4], n = 'subs', subs, 'pd', past_due, n + 4
    elseif nv then
      -- One subscription: its state is the entitlement, unchanged if only the version moved.
      if not same then best = sub .. nv:match('^[^|]*(|.*)$') end
      if subs ~= tonumber(r[2]) then args[n + 1], args[n + 2], n = 'subs', subs, n + 2 end
      if fresh then args[n + 1], args[n + 2], n = 'pd', past_due, n + 2 end
    elseif fresh then
      args[n + 1], args[n + 2], args[n + 3], args[n + 4], n = 'subs', 0, 'pd', past_due, n + 4
    end

    local tg_user = r[7]
    if best or rebuild then
      local s, tier, status, active, pe, cap
      if best then
        s, tier, status, pe, cap = best:match('^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
        active = status == 'active' or status == 'trialing' or
          (past_due == '1' and status == 'past_due')
      else
        local d = redis.call('HMGET', KEYS[3], 'subscription_id', 'tier', 'status', 'active',
          'current_period_end', 'cancel_at_period_end')
        s, tier, status, active, pe, cap = d[1], d[2], d[3], d[4] == 'true', d[5], d[6]
      end
      -- Ids, plan and status names and numbers were checked before they got here, so they need
      -- no escaping; an email may.
      local qe = 'null'
      if email then
        qe = email:find('[%c"\\/\128-\255]') and cjson.encode(email) or '"' .. email .. '"'
      end
      entitlement = '{"customer_id":"' .. cust .. '","email":' .. qe ..
        ',"tier":' .. (tier and tier ~= '' and '"' .. tier .. '"' or 'null') ..
        ',"status":' .. (status and status ~= '' and '"' .. status .. '"' or 'null') ..
        ',"active":' .. (active and 'true' or 'false') ..
        ',"subscription_id":' .. (s and s ~= '' and '"' .. s .. '"' or 'null') ..
        ',"current_period_end":' .. (pe and pe ~= '' and pe or 'null') ..
        ',"cancel_at_period_end":' .. (cap == '1' and 'true' or 'false') ..
        ',"telegram_user_id":' .. (tg_user or 'null') .. '}'
      if entitlement ~= old_ent then
        changed = true
        if best then
          args[n + 1], args[n + 2], args[n + 3], args[n + 4], args[n + 5], args[n + 6],
            args[n + 7], args[n + 8], args[n + 9], args[n + 10], args[n + 11], args[n + 12], n =
            'subscription_id', s, 'tier', tier, 'status', status, 'active',
            active and 'true' or 'false', 'current_period_end', pe, 'cancel_at_period_end', cap,
            n + 12
        end
        args[n + 1], args[n + 2], n = 'ent', entitlement, n + 2
      end
    else
      entitlement = old_ent
    end

    -- A provisioned session gives the customer a way into the bot, unless a chat is linked.
    if ARGV[3] == 'user.provision' and ARGV[12] == '1' and ARGV[16] ~= '' then
      if tg_user then
        telegram = 'linked'
      else
        local now = tonumber(ARGV[18])
        local t = redis.call('HMGET', KEYS[3], 'tg_token', 'tg_token_exp')
        local token = t[1]
        if not (token and tonumber(t[2] or '0') > now) then
          redis.call('SET', KEYS[5], cust, 'EX', ARGV[17])
          token = ARGV[15]
          args[n + 1], args[n + 2], args[n + 3], args[n + 4], n =
            'tg_token', token, 'tg_token_exp', now + tonumber(ARGV[17]), n + 4
        end
        telegram = ARGV[16] .. token
      end
    end
    if n > 0 then redis.call('HSET', KEYS[3], unpack(args)) end
    -- A doubt is "<subscription> <customer>": recovery asks again knowing whose it is.
    if ask == 1 then
      redis.call('ZADD', KEYS[7], 'NX', ARGV[18], sub .. ' ' .. cust)
    elseif mode == 'state' then
      redis.call('ZREM', KEYS[7], sub .. ' ' .. cust)
    end
  end

  local type = ARGV[3]
  local add = type ~= ''
  if mode == 'state' then add = add and changed end
  if type == 'user.provision' then
    -- One user.provision per Checkout Session, whichever path comes first.
    if ARGV[12] ~= '1' or redis.call('EXISTS', KEYS[4]) == 1 then add = false end
  end
  if not add then return {3, '', ask, telegram} end

  local link, ek = '', ''
  if telegram ~= '' and telegram ~= 'linked' then
    link = ',"telegram_link":' .. cjson.encode(telegram)
  end
  if entitlement then ek = ',"entitlement":' else entitlement = '' end
  local id = redis.call('XADD', KEYS[2], '*', 'type', type, 'stripe_event_id', ARGV[4], 'data',
    ARGV[5] .. link .. ek .. entitlement .. '}')
  if type == 'user.provision' then redis.call('SET', KEYS[4], id, 'EX', ARGV[1]) end
  return {1, id, ask, telegram}
end

local ok, res = pcall(apply)
if not ok then
  if mode == 'event' then redis.call('DEL', KEYS[1]) end
  error(res)
end
return res
