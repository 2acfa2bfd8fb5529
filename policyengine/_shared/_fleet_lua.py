"""The script behind heartbeats and quorum votes (see `_fleet`). Each call touches one key:

- ``beat`` on ``{prefix}:fleet`` (a hash: process id -> ``expiry_ms<TAB>info json``): write this
  process's heartbeat (or remove it, with an empty info), drop the expired ones, return the live
  count.
- ``vote`` on the guard's breaker hash ``{prefix}:breaker:{name}`` (the key `policyengine force`
  writes): set or withdraw this process's vote (``v:<id>`` -> expiry), drop expired votes, and
  when the votes reach the quorum of the live count, mark the fleet trip (``qtrip``, until when)
  and publish it as ``name, open, 0, remaining_ms, 0, quorum, 0``. A forced state nobody renews
  lapses here too (``force_expired``, published like the breaker script does). Returns
  ``votes, needed, remaining_ms of the fleet trip, state, ms until a force lapses``.
"""

from __future__ import annotations

import hashlib

__all__ = ["FLEET_LUA", "FLEET_SHA"]

FLEET_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, op = KEYS[1], ARGV[1]
if op == 'beat' then
  local id, ttl, info = ARGV[2], tonumber(ARGV[3]), ARGV[4]
  if info ~= '' then redis.call('HSET', key, id, string.format('%d', now + ttl) .. '\t' .. info)
  else redis.call('HDEL', key, id) end
  local flat = redis.call('HGETALL', key)
  local live, gone = 0, {}
  for i = 1, #flat, 2 do
    local exp = tonumber(string.match(flat[i + 1], '^(%d+)'))
    if exp == nil or exp <= now then gone[#gone + 1] = flat[i] else live = live + 1 end
  end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  redis.call('PEXPIRE', key, ttl * 20)
  return {live}
end
local channel, name, id = ARGV[2], ARGV[3], ARGV[4]
local vote, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local kind, q, live, open_ms = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local field = 'v:' .. id
if vote == 1 then redis.call('HSET', key, field, now + ttl) else redis.call('HDEL', key, field) end
local flat = redis.call('HGETALL', key)
local h, votes, gone = {}, 0, {}
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  h[f] = v
  if string.sub(f, 1, 2) == 'v:' then
    if tonumber(v) <= now then gone[#gone + 1] = f else votes = votes + 1 end
  end
end
if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
local need = q
if kind == 's' then
  if live < 1 then need = 1000000000 else need = math.max(1, math.ceil(q * live - 1e-9)) end
end
local left = math.max(tonumber(h.qtrip or '0') - now, 0)
if vote == 1 and votes >= need and left == 0 then
  left = open_ms
  redis.call('HSET', key, 'qtrip', now + open_ms)
  redis.call('PUBLISH', channel, table.concat(
    {name, 'open', '0', string.format('%d', left), '0', 'quorum', '0'}, '\t'))
end
local st, fleft = h.st or 'closed', 0
if h.fexp ~= nil and (st == 'forced_open' or st == 'forced_closed') then
  fleft = tonumber(h.fexp) - now
  if fleft <= 0 then
    fleft = 0
    st = 'closed'
    local gen = tonumber(h.gen or '0') + 1
    redis.call('HSET', key, 'st', st, 'gen', gen, 'consec', 0, 'reopens', 0)
    redis.call('HDEL', key, 'fexp')
    redis.call('PUBLISH', channel, table.concat(
      {name, st, string.format('%d', gen), '0', '0', 'force_expired', h.ep or '0'}, '\t'))
  end
end
if redis.call('PTTL', key) < 86400000 then redis.call('PEXPIRE', key, 86400000) end
return {votes, need, left, st, fleft}
"""

FLEET_SHA = hashlib.sha1(FLEET_LUA.encode()).hexdigest()
