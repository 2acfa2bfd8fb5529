"""The Lua script behind a fleet-wide rate limit, and the keys it touches.

One atomic call reserves up to ``n`` start times ("slots") for one budget, with the very rules of
the per-process limiter (`_patterns.ratelimit`): the first rate's steady flow with its burst (GCRA),
each windowed rate's log of recent starts (a Redis list, newest first, trimmed to N), FIFO, and a
pause. Slots lie between the server's ``TIME`` and ``now + horizon``; the process that asked
uses them at those times (so the rates hold across the fleet, not just per process). ``horizon
= -1`` charges ``n`` slots whatever their time (attempts admitted while no slot was leased).
The reply: ``{granted, server_now, next, slot...}``, ``next`` the time of the first slot not
granted because it lay beyond the horizon (-1: every slot asked for was granted).

Keys: every key of one budget shares the hash tag ``{prefix:rl:policy[:key]}``, so a Redis
Cluster keeps them in one slot (no CROSSSLOT error): ``...}:s`` (hash: tat, last, pause),
``...}:l:50/1s``... (one list per windowed rate) and ``...}:procs`` (a sorted set of the
live processes: member, last seen in ms). Times are microseconds of the server's clock.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

__all__ = ["LIMITER_LUA", "LIMITER_SHA", "budget_keys", "procs_key"]

LIMITER_LUA = r"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if op == 'live' then
  local ms = math.floor(now / 1000)
  redis.call('ZADD', KEYS[1], ms, ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return redis.call('ZCARD', KEYS[1])
end
local key, ttl = KEYS[1], tonumber(ARGV[6])
local f = redis.call('HMGET', key, 'tat', 'last', 'pause')
local tat = tonumber(f[1] or '-1e18')
local last = tonumber(f[2] or '-1e18')
local paused = tonumber(f[3] or '-1e18')
local n, horizon = tonumber(ARGV[2]), tonumber(ARGV[3])
local interval, tau = tonumber(ARGV[4]), tonumber(ARGV[5])
if op == 'pause' then
  local untl = now + n
  if untl > paused then
    redis.call('HSET', key, 'pause', string.format('%.3f', untl))
    if tat < untl + tau then redis.call('HSET', key, 'tat', string.format('%.3f', untl + tau)) end
  end
  redis.call('PEXPIRE', key, ttl)
  return {0, string.format('%.0f', now), '0'}
end
local logs = {}
for i = 1, #KEYS - 1 do
  local count, period = tonumber(ARGV[5 + 2 * i]), tonumber(ARGV[6 + 2 * i])
  local lo = math.max(count - n, 0)
  local tail = redis.call('LRANGE', KEYS[i + 1], lo, count - 1)
  logs[i] = {count, period, tail, lo}
end
local slots, nxt = {}, -1
for j = 1, n do
  local s = math.max(tat - tau, now, last, paused)
  for i = 1, #logs do
    local count, period, tail, lo = logs[i][1], logs[i][2], logs[i][3], logs[i][4]
    local e
    if count - j >= 0 then e = tail[count - j - lo + 1] else e = slots[j - count] end
    if e then s = math.max(s, tonumber(e) + period) end
  end
  if horizon >= 0 and s > now + horizon then nxt = s; break end
  slots[j] = s
  tat = math.max(tat, s) + interval
  last = s
end
if #slots > 0 then
  redis.call('HSET', key, 'tat', string.format('%.3f', tat), 'last', string.format('%.3f', last))
  redis.call('PEXPIRE', key, ttl)
  local strs = {}
  for j = 1, #slots do strs[j] = string.format('%.3f', slots[j]) end
  for i = 1, #logs do
    local k = KEYS[i + 1]
    for j = 1, #strs, 1000 do redis.call('LPUSH', k, unpack(strs, j, math.min(j + 999, #strs))) end
    redis.call('LTRIM', k, 0, logs[i][1] - 1)
    redis.call('PEXPIRE', k, ttl)
  end
end
local out = {#slots, string.format('%.0f', now), string.format('%.3f', nxt)}
if horizon >= 0 then for j = 1, #slots do out[#out + 1] = string.format('%.3f', slots[j]) end end
return out
"""

LIMITER_SHA = hashlib.sha1(LIMITER_LUA.encode()).hexdigest()


def _tag(prefix: str, policy: str, key: str | None) -> str:
    base = f"{prefix}:rl:{quote(policy, safe='')}"
    return base if key is None else f"{base}:{quote(key, safe='')}"


def budget_keys(prefix: str, policy: str, key: str | None, logs: list[str]) -> list[str]:
    """The state hash and the lists of one budget, all in one hash slot. `logs` names each
    windowed rate (``"3000/1m"``): a reload that changes a rate starts its log afresh instead of
    reading another rate's."""
    tag = "{" + _tag(prefix, policy, key) + "}"
    return [f"{tag}:s", *(f"{tag}:l:{name}" for name in logs)]


def procs_key(prefix: str, policy: str) -> str:
    """The live-process registry of one policy (in the hash slot of its unkeyed budget)."""
    return "{" + _tag(prefix, policy, None) + "}:procs"
