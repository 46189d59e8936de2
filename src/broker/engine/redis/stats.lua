-- The counters and settings of some streams.
-- KEYS: per stream: events, meta.
-- Returns per stream 8 values: last id, trimmed through, sealed, max_len, max_age, length,
-- first id, first time ('' where there is none).

local out = {}
for i = 1, #KEYS, 2 do
  local m = redis.call('HMGET', KEYS[i + 1], 'last', 'trimmed', 'sealed', 'max_len', 'max_age')
  local length = redis.call('XLEN', KEYS[i])
  local first_id, first_time = '', ''
  if length > 0 then
    local first = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', 1)[1]
    first_id = string.match(first[1], '^(%d+)')
    first_time = field(first[2], 't')
  end
  for _, v in ipairs({m[1] or '', m[2] or '', m[3] or '', m[4] or '', m[5] or '',
                      tostring(length), first_id, first_time}) do
    out[#out + 1] = v
  end
end
return out
