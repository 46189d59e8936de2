-- Appends one request's events: all or nothing, with consecutive ids above every id handed out.
-- KEYS: head, log, names, the idempotency key's answer, due, then per stream: events, meta.
-- ARGV: fence id, fence seq, log length, idempotency window ms (0: no key), default max_len,
--       default max_age ms, the number of streams, their names, then per event: the stream's
--       number, its type ('' none), its data.
-- Returns {'ok', first id, time ms} | {'sealed', stream number} | {'repeat', first answer}.

local window = tonumber(ARGV[4])
if window > 0 then
  local first = redis.call('GET', KEYS[4])
  if first then
    return {'repeat', first}
  end
end
local streams = tonumber(ARGV[7])
local was_empty = {}
for i = 1, streams do
  if redis.call('HGET', KEYS[5 + 2 * i], 'sealed') == '1' then
    return {'sealed', i}
  end
  was_empty[i] = redis.call('XLEN', KEYS[4 + 2 * i]) == 0
end

local now_us, now_ms = clock()
local time = fmt(now_ms)
local id, seq = load_head(tonumber(ARGV[1]), tonumber(ARGV[2]))
local prev = fmt(id) .. '-' .. fmt(seq)
-- The clock is a floor: after a failover that lost the end of the log (and nobody's fence
-- knew of it), new ids still start above every id handed out before.
id = math.max(id + 1, now_us)
local first = id
local answer = {fmt(first)}
local at = 8 + streams
while at <= #ARGV do
  local i = tonumber(ARGV[at])
  local kind, data = ARGV[at + 1], ARGV[at + 2]
  local name = ARGV[7 + i]
  local position = fmt(id) .. '-0'
  if kind == '' then
    redis.call('XADD', KEYS[4 + 2 * i], position, 'd', data, 't', time)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], position,
      'p', prev, 'k', 'e', 's', name, 'd', data, 't', time)
  else
    redis.call('XADD', KEYS[4 + 2 * i], position, 'e', kind, 'd', data, 't', time)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], position,
      'p', prev, 'k', 'e', 's', name, 'e', kind, 'd', data, 't', time)
  end
  redis.call('HSET', KEYS[5 + 2 * i], 'last', fmt(id))
  answer[#answer + 1] = name
  prev = position
  id = id + 1
  at = at + 3
end
redis.call('HSET', KEYS[1], 'id', fmt(id - 1), 'seq', '0')

-- Retention is the trimmer's (trim.lua); here each stream is only put on its schedule.
for i = 1, streams do
  local name = ARGV[7 + i]
  redis.call('ZADD', KEYS[3], 'NX', 0, name)
  local own = redis.call('HMGET', KEYS[5 + 2 * i], 'max_len', 'max_age')
  local max_len = limit(own[1], ARGV[5])
  if max_len and redis.call('XLEN', KEYS[4 + 2 * i]) > max_len then
    redis.call('ZADD', KEYS[5], 'LT', now_ms, name)
  end
  local max_age = limit(own[2], ARGV[6])
  if max_age and was_empty[i] then
    redis.call('ZADD', KEYS[5], 'LT', now_ms + max_age, name)
  end
end

if window > 0 then
  redis.call('SET', KEYS[4], table.concat(answer, '\n'), 'PX', window)
end
return {'ok', fmt(first), time}
