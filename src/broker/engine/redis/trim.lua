-- Applies retention to one stream that is due: removes its oldest events beyond its length
-- limit and older than its age limit (at most a budget of them per call), records how far,
-- and puts the stream back on the schedule for when it is due next.
-- KEYS: head, log, events, meta, due.
-- ARGV: fence id, fence seq, log length, the stream's name, default max_len ('' none),
--       default max_age ms ('' none), budget.
-- Returns the number of events removed.

local name, budget = ARGV[4], tonumber(ARGV[7])
local own = redis.call('HMGET', KEYS[4], 'max_len', 'max_age')
local max_len, max_age = limit(own[1], ARGV[5]), limit(own[2], ARGV[6])
local _, now_ms = clock()
local through = nil
local removed = 0

local length = redis.call('XLEN', KEYS[3])
if max_len and length > max_len then
  local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', math.min(length - max_len, budget))
  through = oldest[#oldest][1]
  removed = #oldest
end
if max_age then
  local cutoff = now_ms - max_age
  local from = '-'
  if through then
    from = '(' .. through
  end
  local done = false
  while not done and removed < budget do
    local batch = redis.call('XRANGE', KEYS[3], from, '+', 'COUNT', math.min(256, budget - removed))
    if #batch == 0 then
      break
    end
    for _, entry in ipairs(batch) do
      if tonumber(field(entry[2], 't')) >= cutoff then
        done = true
        break
      end
      through = entry[1]
      removed = removed + 1
    end
    from = '(' .. through
  end
end

if through then
  local id = string.match(through, '^(%d+)')
  -- Every entry below '<id>-1' is '<id>-0' or older.
  redis.call('XTRIM', KEYS[3], 'MINID', id .. '-1')
  redis.call('HSET', KEYS[4], 'trimmed', id)
  record(tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], {'k', 't', 's', name, 'u', id})
end

local left = redis.call('XLEN', KEYS[3])
if max_len and left > max_len then
  redis.call('ZADD', KEYS[5], now_ms, name)
elseif max_age and left > 0 then
  local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1]
  redis.call('ZADD', KEYS[5], tonumber(field(first[2], 't')) + max_age, name)
else
  redis.call('ZREM', KEYS[5], name)
end
return removed
