-- Shared by every herald script (prepended to each). All of herald's keys share one hash tag, so
-- one script may touch any of them. KEYS[1] is the head (hash: id, seq), KEYS[2] the global log.
--
-- Positions are '<id>-<seq>': an event's is '<id>-0'; a record that is not an event takes the
-- head's id and the next seq. Ids are integers below 2^53 (Lua numbers are doubles), written
-- with fmt, never tostring (which would print 1.7e+15).

local function fmt(n)
  return string.format('%.0f', n)
end

-- The server's clock: microseconds and milliseconds since the epoch.
local function clock()
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return us, math.floor(us / 1000)
end

-- The head, raised to the caller's fence (the highest position its node has seen), so that a
-- primary that lost the end of the log after a failover never hands out a position again.
local function load_head(fence_id, fence_seq)
  local h = redis.call('HMGET', KEYS[1], 'id', 'seq')
  local id, seq = tonumber(h[1] or '0'), tonumber(h[2] or '0')
  if fence_id > id or (fence_id == id and fence_seq > seq) then
    id, seq = fence_id, fence_seq
  end
  return id, seq
end

-- Appends one record that is not an event to the log, at the next position after the head.
-- fields: the record's own fields ('k' kind, 's' stream, ...).
local function record(fence_id, fence_seq, log_len, fields)
  local id, seq = load_head(fence_id, fence_seq)
  local prev = fmt(id) .. '-' .. fmt(seq)
  seq = seq + 1
  local at = fmt(id) .. '-' .. fmt(seq)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', log_len, at, 'p', prev, unpack(fields))
  redis.call('HSET', KEYS[1], 'id', fmt(id), 'seq', fmt(seq))
  return at
end

-- One field of a stream entry's flat field list.
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

-- A retention limit: the stream's own ('0' unlimited) or else the server's ('' none).
local function limit(own, default)
  local v = own
  if not v then
    v = default
  end
  if v == '' or v == '0' then
    return nil
  end
  return tonumber(v)
end
