-- How many members each stream has now (see presence.lua). KEYS: each stream's members.
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
end
return out
