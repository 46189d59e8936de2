-- Presence of one stream, shared by every node. KEYS: members (sorted set: client by the time
-- its membership runs out, ms), since (hash: client → joined at, ms), connections (hash: client
-- → open connections on every node). A client is a member while its time has not run out: the
-- nodes holding its connections push it forward every refresh; when its last connection goes,
-- it is set to run out after the grace period. Joins and leaves are published on a channel
-- (live only, like every join and leave).
-- ARGV: operation, channel, stream, then the operation's own.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, channel, stream = ARGV[1], ARGV[2], ARGV[3]
local members, since, connections = KEYS[1], KEYS[2], KEYS[3]

local function fmt(n)
  return string.format('%.0f', n)
end

local function count()
  return redis.call('ZCOUNT', members, '(' .. fmt(now), '+inf')
end

local function tell(kind, client, n)
  redis.call('PUBLISH', channel, cjson.encode({k = kind, s = stream, c = client, n = n}))
end

-- Makes `client` a member until now + ttl (or later); tells a join if it was not one.
local function hold(client, ttl)
  local score = redis.call('ZSCORE', members, client)
  local joined = (not score) or tonumber(score) <= now
  if joined then
    redis.call('HSET', since, client, fmt(now))
  end
  redis.call('ZADD', members, 'GT', fmt(now + ttl), client)
  if joined then
    tell('join', client, count())
  end
  return joined
end

if op == 'join' then
  -- ARGV: client, ttl ms. One more connection.
  hold(ARGV[4], tonumber(ARGV[5]))
  return redis.call('HINCRBY', connections, ARGV[4], 1)
elseif op == 'release' then
  -- ARGV: client, grace ms. One connection fewer; the last one starts the grace period.
  local left = redis.call('HINCRBY', connections, ARGV[4], -1)
  if left <= 0 then
    redis.call('HDEL', connections, ARGV[4])
    if redis.call('ZSCORE', members, ARGV[4]) then
      redis.call('ZADD', members, 'XX', fmt(now + tonumber(ARGV[5])), ARGV[4])
    end
  end
  return left
elseif op == 'refresh' then
  -- ARGV: ttl ms, then the clients this node holds connections of.
  local ttl = tonumber(ARGV[4])
  for i = 5, #ARGV do
    hold(ARGV[i], ttl)
  end
  return 0
elseif op == 'sweep' then
  -- Members whose time ran out leave.
  local gone = redis.call('ZRANGEBYSCORE', members, '-inf', fmt(now))
  for _, client in ipairs(gone) do
    redis.call('ZREM', members, client)
    redis.call('HDEL', since, client)
    redis.call('HDEL', connections, client)
  end
  local left = redis.call('ZCARD', members) + #gone
  for _, client in ipairs(gone) do
    left = left - 1
    tell('leave', client, left)
  end
  return #gone
elseif op == 'members' then
  -- Returns client, joined at, connections, for each member.
  local out = {}
  for _, client in ipairs(redis.call('ZRANGEBYSCORE', members, '(' .. fmt(now), '+inf')) do
    out[#out + 1] = client
    out[#out + 1] = redis.call('HGET', since, client) or fmt(now)
    out[#out + 1] = redis.call('HGET', connections, client) or '0'
  end
  return out
elseif op == 'count' then
  return count()
end
return redis.error_reply('herald: unknown presence operation ' .. op)
