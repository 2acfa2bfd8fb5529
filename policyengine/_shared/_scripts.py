"""The one Lua script behind every shared breaker operation, and the arguments it takes.

Each call of the script is one atomic step on one breaker's hash (``{prefix}:breaker:{name}``):

- ``report``: add a batch of closed-state outcomes (counted under generation ``seen``; a batch from
  an earlier generation is stale and dropped) and trip if a rule is met. With a zero batch it is a
  plain read of the state.
- ``probe``: grant a half-open probe lease if fewer than ``half_open_calls`` are held or used.
- ``done``: a probe's outcome (``ok`` / ``fail`` / ``release``); closes or re-opens the breaker.
- ``open``: publish a breaker that opened locally while the store was unreachable (a breaker that
  is already open or forced in Redis keeps its state: Redis wins).
- ``force``: an operator override from the file or from ``policyengine force`` (``open`` /
  ``closed`` / ``none`` to remove), lapsing after the ttl given. Processes whose file says `force`
  renew it on every resync; one nobody renews lapses (``force_expired``), so a force removed from
  the files never lingers in Redis. Replies carry the time left until a force lapses.

Time is the server's ``TIME`` (milliseconds), so clock skew between hosts does not matter. Every
transition bumps ``gen`` and is published on ``{prefix}:events`` as a tab-separated line
``name, state, gen, remaining_ms, reopens, reason, epoch, force_left_ms``. A key is created with
``gen = epoch = now``: a reply or message of an older generation of the same epoch is stale, one of
another epoch (the key was recreated after a restart, a failover or an expiry) starts afresh.

Windows for the rate rules are ten buckets (``b0``..``b9``, each ``"index calls failures slow"``):
by time (``window_duration / 10`` each) or by calls (``window_size / 10`` each), so the shared
window spans between nine and ten tenths of the configured one. Probe leases are fields ``L<id>``
holding their expiry; an expired lease re-opens the breaker when ``half_open_max_wait`` is set (the
probe hung) and is simply freed otherwise (its process died). Keys expire after ``ttl`` ms idle,
plus any open time still to run and the lease time, so an open key outlives its open period.
"""

from __future__ import annotations

import hashlib
import math
from urllib.parse import quote

from .._config.models import BreakerOptions

__all__ = ["LUA", "LUA_SHA", "NEUTRAL_ARGS", "Arg", "breaker_key", "config_args", "wire_name"]

Arg = str | int | float  # what a script argument may be

IDLE_TTL_MS = 86_400_000  # a breaker's hash is dropped after a day without any operation

LUA = r"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local key, op, channel, name = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local seen = tonumber(ARGV[4])
local trip_after, fail_rate, slow_rate = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local min_calls, wkind, wsize = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local open_ms, mult, max_open = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local k, max_wait = tonumber(ARGV[14]), tonumber(ARGV[15])
local lease_ms, ttl = tonumber(ARGV[16]), tonumber(ARGV[17])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local h, put, drop = {}, {}, {}
local flat = redis.call('HGETALL', key)
for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
local function set(f, v) h[f] = v; put[f] = v; drop[f] = nil end
local function del(f) if h[f] ~= nil then h[f] = nil; put[f] = nil; drop[f] = true end end
local function num(f) return tonumber(h[f] or '0') end
if h.st == nil then set('st', 'closed'); set('gen', now); set('ep', now) end
local st, gen, moved = h.st, num('gen'), nil
local lease, wait, calls, fails, slows = 0, 0, 0, 0, 0

local function leases()
  local out = {}
  for f in pairs(h) do if string.sub(f, 1, 1) == 'L' then out[#out + 1] = f end end
  return out
end
local function enter(new, reason)
  st = new; gen = gen + 1; moved = reason
  set('st', st); set('gen', gen); set('psucc', 0); set('pslow', 0)
  for _, f in ipairs(leases()) do del(f) end
end
local function reset_counts()
  set('consec', 0); set('seq', 0); set('reopens', 0)
  for i = 0, 9 do del('b' .. i) end
end
local function open(reason)
  local r, d = num('reopens'), open_ms
  if r > 0 and mult ~= 1 then d = math.max(open_ms, math.min(max_open, open_ms * mult ^ r)) end
  set('until', now + math.floor(d)); enter('open', reason)
end
local function trip(reason) set('reopens', 0); open(reason) end
local function reopen(reason) set('reopens', num('reopens') + 1); open(reason) end

-- the window: bucket index of `at` (a time or a call number) and how many buckets it spans
local function bucket(at)
  if wkind == 'time' then return math.floor(at / math.max(wsize / 10, 1)), 10 end
  local n = math.min(10, wsize)
  return math.floor(at / math.ceil(wsize / n)), n
end
local function window_now()
  if wkind == 'time' then return bucket(now) end
  return bucket(math.max(num('seq') - 1, 0))
end
local function totals()
  if wkind == 'none' then return end
  local cur, n = window_now()
  for i = 0, n - 1 do
    local b = h['b' .. i]
    if b then
      local idx, c, f, s = string.match(b, '(%S+) (%S+) (%S+) (%S+)')
      if tonumber(idx) > cur - n and tonumber(idx) <= cur then
        calls = calls + tonumber(c); fails = fails + tonumber(f); slows = slows + tonumber(s)
      end
    end
  end
end
local function record(c, f, s)
  if wkind == 'none' or c == 0 then return end
  local at = now
  if wkind == 'count' then at = num('seq'); set('seq', at + c) end
  local cur, n = bucket(at)
  local field, c0, f0, s0 = 'b' .. (cur % n), 0, 0, 0
  local b = h[field]
  if b then
    local idx, bc, bf, bs = string.match(b, '(%S+) (%S+) (%S+) (%S+)')
    if tonumber(idx) == cur then c0, f0, s0 = tonumber(bc), tonumber(bf), tonumber(bs) end
  end
  set(field, string.format('%d %d %d %d', cur, c0 + c, f0 + f, s0 + s))
end

-- lazy, clock-driven transitions: open -> half_open; an expired lease; an unrenewed force
if st == 'open' and now >= num('until') then enter('half_open', 'open_duration_elapsed') end
if h.fexp ~= nil and now >= num('fexp') then
  del('fexp')
  if st == 'forced_open' or st == 'forced_closed' then
    reset_counts(); enter('closed', 'force_expired')
  end
end
if st == 'half_open' then
  for _, f in ipairs(leases()) do
    if tonumber(h[f]) <= now then
      if max_wait > 0 then reopen('probe_timeout'); break end
      del(f)
    end
  end
end

if op == 'report' then
  local ok, bad, slow = tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20])
  local lead, run, tail = tonumber(ARGV[21]), tonumber(ARGV[22]), tonumber(ARGV[23])
  if ok + bad > 0 and seen == gen and (st == 'closed' or st == 'forced_closed') then
    local consec = num('consec')
    local longest = math.max(consec + lead, run)
    if ok > 0 then consec = tail else consec = consec + bad; longest = consec end
    set('consec', consec)
    record(ok + bad, bad, slow)
    if st == 'closed' then
      totals()
      if trip_after > 0 and longest >= trip_after then trip('consecutive_failures')
      elseif calls >= min_calls and calls > 0 then
        if fail_rate >= 0 and fails / calls >= fail_rate then trip('failure_rate')
        elseif slow_rate >= 0 and slows / calls >= slow_rate then trip('slow_call_rate') end
      end
    end
  end
elseif op == 'probe' then
  if st == 'half_open' then
    local held = leases()
    if #held + num('psucc') < k then
      lease = num('lseq') + 1
      set('lseq', lease); set('L' .. lease, now + lease_ms)
    else
      for _, f in ipairs(held) do
        local left = tonumber(h[f]) - now
        if wait == 0 or left < wait then wait = left end
      end
    end
  end
elseif op == 'done' then
  local f, outcome, slow = 'L' .. ARGV[18], ARGV[19], tonumber(ARGV[20])
  if st == 'half_open' and h[f] ~= nil then
    del(f)
    if outcome == 'ok' then
      set('psucc', num('psucc') + 1); set('pslow', num('pslow') + slow)
      if num('psucc') >= k then
        if slow_rate >= 0 and num('pslow') / num('psucc') >= slow_rate then
          reopen('slow_call_rate')
        else
          reset_counts(); enter('closed', 'probes_succeeded')
        end
      end
    elseif outcome == 'fail' then
      reopen('probe_failed')
    end
  end
elseif op == 'open' then
  if st == 'closed' or st == 'half_open' then
    set('reopens', tonumber(ARGV[19])); set('until', now + tonumber(ARGV[18]))
    enter('open', ARGV[20])
  end
elseif op == 'force' then
  local mode = ARGV[18]
  if mode == 'none' then del('fexp') else set('fexp', now + tonumber(ARGV[19])) end
  if mode == 'open' and st ~= 'forced_open' then
    enter('forced_open', 'forced')
  elseif mode == 'closed' and st ~= 'forced_closed' then
    reset_counts(); enter('forced_closed', 'forced')
  elseif mode == 'none' and (st == 'forced_open' or st == 'forced_closed') then
    reset_counts(); enter('closed', 'force_removed')
  end
end

local pairs_out, gone = {}, {}
for f, v in pairs(put) do pairs_out[#pairs_out + 1] = f; pairs_out[#pairs_out + 1] = v end
for f in pairs(drop) do gone[#gone + 1] = f end
if #pairs_out > 0 then redis.call('HSET', key, unpack(pairs_out)) end
if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
local remaining = 0
if st == 'open' then remaining = math.max(num('until') - now, 0) end
local life = ttl + remaining
if st == 'half_open' then life = life + lease_ms end
redis.call('PEXPIRE', key, math.floor(life))
if calls == 0 and wkind ~= 'none' then totals() end
local fleft = 0
if h.fexp ~= nil and (st == 'forced_open' or st == 'forced_closed') then
  fleft = math.max(num('fexp') - now, 0)
end
if moved then
  redis.call('PUBLISH', channel, table.concat(
    {name, st, string.format('%d', gen), string.format('%d', remaining), num('reopens'), moved,
     h.ep, string.format('%d', fleft)}, '\t'))
end
return {st, string.format('%d', gen), remaining, num('reopens'), lease, wait,
        num('consec'), calls, fails, slows, moved or '', h.ep, fleft}
"""

LUA_SHA = hashlib.sha1(LUA.encode()).hexdigest()


def wire_name(name: str) -> str:
    """The policy name as it appears in keys and messages: no ``:``, tab or ``%`` left in it."""
    return quote(name, safe="")


def breaker_key(prefix: str, name: str) -> str:
    """``{prefix}:breaker:{name}``; the encoded name has no ``:``, so no two pairs collide."""
    return f"{prefix}:breaker:{wire_name(name)}"


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000)) if math.isfinite(seconds) else 2**52


def config_args(o: BreakerOptions) -> tuple[Arg, ...]:
    """The breaker's rules, passed with every call: nothing of the configuration lives in Redis."""
    rates = o.failure_rate is not None or o.slow_call_rate is not None
    kind = o.window if rates else "none"
    size = o.window_size if kind != "time" else _ms(o.window_duration)
    backoff = o.open_backoff
    open_ms = _ms(o.open_duration)
    max_wait = 0 if o.half_open_max_wait is None else _ms(o.half_open_max_wait)
    return (
        o.trip_after or 0,
        -1 if o.failure_rate is None else o.failure_rate,
        -1 if o.slow_call_rate is None else o.slow_call_rate,
        o.minimum_calls,
        kind,
        size,
        open_ms,
        1.0 if backoff is None else backoff.multiplier,
        open_ms if backoff is None else _ms(backoff.max),
        o.half_open_calls,
        max_wait,
        max_wait or open_ms,
        IDLE_TTL_MS,
    )


# The rules a caller without a policy passes (``policyengine force``): no rule judges anything, an
# expired lease is only freed (no hung-probe re-open), so only the operation itself acts.
NEUTRAL_ARGS: tuple[Arg, ...] = (0, -1, -1, 0, "none", 0, 1, 1.0, 1, 1, 0, 1, IDLE_TTL_MS)
