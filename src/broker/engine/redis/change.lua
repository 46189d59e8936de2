-- Seals, deletes or sets the retention of one stream, as one record of the log.
-- KEYS: head, log, names, events, meta, due.
-- ARGV: fence id, fence seq, log length, 'seal' | 'delete' | 'retention', the stream's name,
--       max_len ('' the server's), max_age ms ('' the server's).
-- Returns the stream's settings after the change: {sealed '0'|'1', max_len, max_age}.

local function settings()
  local m = redis.call('HMGET', KEYS[5], 'sealed', 'max_len', 'max_age')
  return {m[1] or '0', m[2] or '', m[3] or ''}
end

local fence_id, fence_seq, log_len = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local op, name = ARGV[4], ARGV[5]
if op == 'seal' then
  if redis.call('HGET', KEYS[5], 'sealed') ~= '1' then
    redis.call('HSET', KEYS[5], 'sealed', '1')
    redis.call('ZADD', KEYS[3], 'NX', 0, name)
    record(fence_id, fence_seq, log_len, {'k', 'x', 's', name})
  end
elseif op == 'delete' then
  redis.call('DEL', KEYS[4], KEYS[5])
  redis.call('ZREM', KEYS[3], name)
  redis.call('ZREM', KEYS[6], name)
  record(fence_id, fence_seq, log_len, {'k', 'D', 's', name})
elseif op == 'retention' then
  for _, f in ipairs({{'max_len', ARGV[6]}, {'max_age', ARGV[7]}}) do
    if f[2] == '' then
      redis.call('HDEL', KEYS[5], f[1])
    else
      redis.call('HSET', KEYS[5], f[1], f[2])
    end
  end
  redis.call('ZADD', KEYS[3], 'NX', 0, name)
  local _, now_ms = clock()
  redis.call('ZADD', KEYS[6], now_ms, name)
  local sealed = redis.call('HGET', KEYS[5], 'sealed') or '0'
  record(fence_id, fence_seq, log_len,
    {'k', 'r', 's', name, 'l', ARGV[6], 'a', ARGV[7], 'z', sealed})
else
  return redis.error_reply('herald: unknown change ' .. op)
end
return settings()
