"""Every Lua script offload runs, and the one way to call them (by SHA, loaded once).

Each state change of a job is one script, so a transition is atomic and costs one round
trip. Scripts receive the keys they start from in KEYS and derive the per-job keys from the
queue's base name (ARGV or a KEYS entry); every derived key carries the queue's hash tag, so
it lives in the same cluster slot as the declared ones.

The ``counts`` hash always holds the number of jobs in each status; every script that moves
a job moves its count with it, which is what keeps ``accepted = sum of statuses`` true.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis

# Helpers shared by the scripts below. Lua has no modules in EVAL, so the prelude is
# prepended to each script's body.
# Helpers shared by the scripts below. EVAL has no modules, so each script is sent with the
# helpers it calls (and the ones those call) prepended, in this order; a script that needs
# none pays for none, since Redis runs the whole source on every call.
_HELPERS: dict[str, str] = {
    "bump": r"""
local function bump(counts, from, to)
  if from and from ~= '' then redis.call('HINCRBY', counts, from, -1) end
  if to and to ~= '' then redis.call('HINCRBY', counts, to, 1) end
end
""",
    "add_history": r"""
local function add_history(jobkey, entry)
  local raw = redis.call('HGET', jobkey, 'history')
  if not raw then
    redis.call('HSET', jobkey, 'history', '[' .. entry .. ']')
  elseif #raw < 32768 then
    redis.call('HSET', jobkey, 'history', string.sub(raw, 1, -2) .. ',' .. entry .. ']')
  end
end
""",
    "expire_job": r"""
local function expire_job(base, id, ttl)
  if tonumber(ttl) > 0 then
    redis.call('EXPIRE', base .. ':job:' .. id, ttl)
    redis.call('EXPIRE', base .. ':slices:' .. id, ttl)
  end
end
""",
    "to_dead": r"""
local function to_dead(base, counts, id, from, reason, now, ttl)
  local jobkey = base .. ':job:' .. id
  redis.call('HSET', jobkey, 'status', 'dead', 'error', reason, 'finished_ms', now, 'updated_ms', now)
  redis.call('LPUSH', base .. ':dead', id)
  bump(counts, from, 'dead')
  expire_job(base, id, ttl)
end
""",
    "wake_workers": r"""
-- Workers block on the batch list; work that arrives elsewhere (an interactive job, a
-- slice ready to dispatch) leaves a marker there so that a blocked worker wakes at once.
-- At most one marker waits at a time, and the take script drops it.
local function wake_workers(base)
  if redis.call('LLEN', base .. ':queued') == 0 then redis.call('LPUSH', base .. ':queued', '~') end
end
""",
    "push_job": r"""
-- Put a job on the list of its class; 'front' means it is taken next. A caller that knows
-- the job's priority passes it, saving the read.
local function push_job(base, id, front, priority)
  local list = base .. ':queued'
  priority = priority or redis.call('HGET', base .. ':job:' .. id, 'priority')
  if priority == 'interactive' then
    list = base .. ':queued:interactive'
    wake_workers(base)
  end
  if front then redis.call('RPUSH', list, id) else redis.call('LPUSH', list, id) end
end
""",
    "ready_slice": r"""
-- Make a slice ready for dispatch on its tenant's list, and the tenant part of the ring.
local function ready_slice(base, id, n, front)
  local tenant = redis.call('HGET', base .. ':job:' .. id, 'tenant') or ''
  local ready = base .. ':ready:' .. tenant
  redis.call('HSET', base .. ':slices:' .. id, n .. ':st', 'ready')
  if front then redis.call('RPUSH', ready, id .. '/' .. n) else redis.call('LPUSH', ready, id .. '/' .. n) end
  if not redis.call('LPOS', base .. ':tenants', tenant) then redis.call('RPUSH', base .. ':tenants', tenant) end
  wake_workers(base)
end
""",
    "end_dispatch": r"""
-- A dispatched slice attempt is over (called back, failed, timed out or lost): its tenant
-- has one slice fewer in flight, so one of its waiting slices may go. A caller that has
-- read the job's tenant passes it.
local function end_dispatch(base, id, tenant)
  tenant = tenant or redis.call('HGET', base .. ':job:' .. id, 'tenant') or ''
  if redis.call('HINCRBY', base .. ':inflight', tenant, -1) <= 0 then
    redis.call('HDEL', base .. ':inflight', tenant)
  end
  if redis.call('LLEN', base .. ':ready:' .. tenant) > 0 then wake_workers(base) end
end
""",
    "fail_slice": r"""
-- A slice failed (callback, Lambda failure record, missed deadline or failed dispatch).
-- Returns 'retrying' or 'dead'. The caller has checked the job is waiting and the attempt
-- is the slice's current one, and has ended its dispatch.
local function fail_slice(base, counts, id, n, attempt, reason, retryable, now, backoff_ms, dead_ttl)
  local jobkey = base .. ':job:' .. id
  local slices = base .. ':slices:' .. id
  local failures = redis.call('HINCRBY', slices, n .. ':f', 1)
  redis.call('HINCRBY', counts, 'slices_failed', 1)
  local max_tries = tonumber(redis.call('HGET', jobkey, 'max_tries') or '1')
  add_history(jobkey, cjson.encode({slice = tonumber(n), attempt = tonumber(attempt),
                                    error = reason, at_ms = tonumber(now)}))
  if retryable == '1' and failures < max_tries then
    redis.call('HSET', slices, n .. ':st', 'retrying', n .. ':err', reason)
    redis.call('ZADD', base .. ':delayed', tonumber(now) + tonumber(backoff_ms), id .. '/' .. n)
    redis.call('HINCRBY', counts, 'slice_retried', 1)
    return 'retrying'
  end
  redis.call('HSET', slices, n .. ':st', 'failed', n .. ':err', reason)
  redis.call('HINCRBY', jobkey, 'slices_failed', 1)
  to_dead(base, counts, id, 'waiting', 'slice ' .. n .. ': ' .. reason, now, dead_ttl)
  return 'dead'
end
""",
    "job_row": r"""
-- What a worker needs to run a job it holds.
local function job_row(base, id)
  local f = redis.call('HMGET', base .. ':job:' .. id, 'type', 'tenant', 'payload', 'attempts', 'max_tries',
                       'failures', 'trace', 'created_ms')
  return {id, f[1], f[2], f[3], f[4] or '1', f[5] or '1', f[6] or '0', f[7] or '', f[8] or ''}
end
""",
    "start_job": r"""
-- Mark a job the worker now holds as running; returns the fields the worker needs, or
-- nil for an entry that is no job to run (a wake-up marker, or a job that is not queued).
local function start_job(base, counts, id, now)
  local jobkey = base .. ':job:' .. id
  if redis.call('HGET', jobkey, 'status') ~= 'queued' then return nil end
  redis.call('HSET', jobkey, 'status', 'running', 'started_ms', now, 'updated_ms', now)
  redis.call('HINCRBY', jobkey, 'attempts', 1)
  bump(counts, 'queued', 'running')
  return job_row(base, id)
end
""",
}


# KEYS: job, queued, counts, idempotency (the queue's base key when there is none), queued_interactive
# ARGV: job_id, max_backlog, idempotency digest ('' = none), idempotency ttl_s, base, priority,
#       type, tenant, payload, max_tries, created_ms, trace ('' = none)
# Returns 'accepted' (for this call's job id), else {verdict, job id or backlog depth}: the
# common answer is the shortest one.
ENQUEUE = r"""
-- The same call sent again (redis-py resends after a lost reply) finds its job already
-- there, and must change nothing: by then a worker may have taken it, or finished it.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'accepted' end
if ARGV[3] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local sep = string.find(seen, ' ', 1, true)
    local job_id = string.sub(seen, 1, sep - 1)
    if string.sub(seen, sep + 1) == ARGV[3] then return {'duplicate', job_id} end
    return {'conflict', job_id}
  end
end
local max_backlog = tonumber(ARGV[2])
if max_backlog > 0 then
  local depth = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[5])
  if depth >= max_backlog then
    redis.call('HINCRBY', KEYS[3], 'shed', 1)
    return {'shed', tostring(depth)}
  end
end
-- optional fields only when set: a small hash stays a listpack (memory per job)
local job = {'type', ARGV[7], 'tenant', ARGV[8], 'status', 'queued', 'payload', ARGV[9],
             'max_tries', ARGV[10], 'created_ms', ARGV[11]}
if ARGV[12] ~= '' then job[#job + 1] = 'trace'; job[#job + 1] = ARGV[12] end
if ARGV[6] == 'interactive' then job[#job + 1] = 'priority'; job[#job + 1] = 'interactive' end
redis.call('HSET', KEYS[1], unpack(job))
push_job(ARGV[5], ARGV[1], false, ARGV[6])
redis.call('HINCRBY', KEYS[3], 'accepted', 1)
redis.call('HINCRBY', KEYS[3], 'queued', 1)
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[3], 'EX', ARGV[4])
end
return 'accepted'
"""


# Taking also renews the worker's lease, so a processing list never exists without one.
# Three take slots in four prefer interactive jobs; the fourth prefers batch, so neither
# class starves the other. Either class fills a slot the other leaves empty.
# KEYS: queued, processing, counts, workers, queued_interactive, picks
# ARGV: base, max_jobs, now_ms, id already moved by BLMOVE ('' = none), worker_id, lease_until_ms
# Returns a list of jobs, each as the list start_job builds.
TAKE = r"""
local base, max_jobs, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
local taken = {}
if ARGV[4] ~= '' then
  local job = start_job(base, KEYS[3], ARGV[4], now)
  if job then
    taken[#taken + 1] = job
  elseif redis.call('HGET', base .. ':job:' .. ARGV[4], 'status') == 'running'
         and redis.call('LPOS', KEYS[2], ARGV[4]) then
    -- this very call, sent again after its reply was lost: the job is ours already
    taken[#taken + 1] = job_row(base, ARGV[4])
  else
    redis.call('LREM', KEYS[2], 1, ARGV[4])
  end
end
if #taken >= max_jobs then return taken end
local slot = redis.call('INCRBY', KEYS[6], max_jobs) - max_jobs
local misses = 0
while #taken < max_jobs and misses < 2 do
  slot = slot + 1
  local first, second = KEYS[5], KEYS[1]
  if slot % 4 == 0 then first, second = KEYS[1], KEYS[5] end
  local id = redis.call('LMOVE', first, KEYS[2], 'RIGHT', 'LEFT')
  if not id then id = redis.call('LMOVE', second, KEYS[2], 'RIGHT', 'LEFT') end
  if not id then break end
  local job = start_job(base, KEYS[3], id, now)
  if job then
    taken[#taken + 1] = job
    misses = 0
  else
    redis.call('LREM', KEYS[2], 1, id)
  end
end
return taken
"""

# KEYS: processing, counts
# ARGV: base, job_id, result_json, now_ms, ttl_s
FINISH = r"""
local base, id, now = ARGV[1], ARGV[2], ARGV[4]
if redis.call('LREM', KEYS[1], 1, id) == 0 then return 'lost' end
local jobkey = base .. ':job:' .. id
redis.call('HSET', jobkey, 'status', 'succeeded', 'result', ARGV[3], 'finished_ms', now, 'updated_ms', now)
redis.call('HDEL', jobkey, 'error')  -- earlier attempts' reasons stay in the history
bump(KEYS[2], 'running', 'succeeded')
expire_job(base, id, ARGV[5])
return 'succeeded'
"""

# KEYS: processing, counts
# ARGV: base, job_id, reason, retryable '1'|'0', now_ms, backoff_ms, dead_ttl_s, history entry json
FAIL = r"""
local base, id, reason, now = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
if redis.call('LREM', KEYS[1], 1, id) == 0 then return 'lost' end
local jobkey = base .. ':job:' .. id
add_history(jobkey, ARGV[8])
local failures = redis.call('HINCRBY', jobkey, 'failures', 1)
local max_tries = tonumber(redis.call('HGET', jobkey, 'max_tries') or '1')
if ARGV[4] == '1' and failures < max_tries then
  redis.call('HSET', jobkey, 'status', 'retrying', 'error', reason, 'updated_ms', now)
  redis.call('ZADD', base .. ':delayed', tonumber(now) + tonumber(ARGV[6]), id)
  bump(KEYS[2], 'running', 'retrying')
  redis.call('HINCRBY', KEYS[2], 'retried', 1)
  return 'retrying'
end
to_dead(base, KEYS[2], id, 'running', reason, now, ARGV[7])
return 'dead'
"""

# An attempt cut short by a shutdown goes back to the head of its queue without spending
# the retry budget (the attempt counter still grows, so attempts stay unique).
# KEYS: processing, counts
# ARGV: base, job_id, now_ms
REQUEUE = r"""
local base, id = ARGV[1], ARGV[2]
if redis.call('LREM', KEYS[1], 1, id) == 0 then return 'lost' end
redis.call('HSET', base .. ':job:' .. id, 'status', 'queued', 'updated_ms', ARGV[3])
push_job(base, id, true)
bump(KEYS[2], 'running', 'queued')
return 'queued'
"""

# A fan-out job leaves the worker: its slices become ready for dispatch.
# Slice attempt counters survive a replay, so a callback from before the replay stays fenced.
# KEYS: processing, counts
# ARGV: base, job_id, now_ms, slice input json, ...
FAN_OUT = r"""
local base, id, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('LREM', KEYS[1], 1, id) == 0 then return 'lost' end
local jobkey = base .. ':job:' .. id
local slices = base .. ':slices:' .. id
local total = #ARGV - 3
for i = 0, total - 1 do
  local n = tostring(i)
  redis.call('HSET', slices, n .. ':in', ARGV[4 + i], n .. ':f', 0)
  redis.call('HSETNX', slices, n .. ':a', 0)
  redis.call('HDEL', slices, n .. ':out', n .. ':err')
  ready_slice(base, id, n, false)
end
redis.call('HSET', jobkey, 'status', 'waiting', 'slices_total', total, 'slices_succeeded', 0,
           'slices_failed', 0, 'updated_ms', now)
bump(KEYS[2], 'running', 'waiting')
return 'waiting'
"""

# Take slices to dispatch, one per tenant in turn (the ring rotates), skipping tenants at
# their in-flight cap; each slice gets a new attempt number and a deadline.
# KEYS: tenants, processing, deadlines, inflight
# ARGV: base, max_slices, now_ms, slice_timeout_ms, tenant_cap (0 = none)
# Returns a list of {job_id, slice, attempt, input, type, tenant, trace}.
TAKE_SLICES = r"""
local base, max_slices, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cap = tonumber(ARGV[5])
local taken = {}
local tenants = redis.call('LLEN', KEYS[1])
local idle = 0
while #taken < max_slices and tenants > 0 and idle < tenants do
  local tenant = redis.call('LMOVE', KEYS[1], KEYS[1], 'LEFT', 'RIGHT')
  local ready = base .. ':ready:' .. tenant
  local got = false
  if cap == 0 or tonumber(redis.call('HGET', KEYS[4], tenant) or '0') < cap then
    while not got do
      local ref = redis.call('LMOVE', ready, KEYS[2], 'RIGHT', 'LEFT')
      if not ref then break end
      local sep = string.find(ref, '/', 1, true)
      local id, n = string.sub(ref, 1, sep - 1), string.sub(ref, sep + 1)
      local slices = base .. ':slices:' .. id
      local job = redis.call('HMGET', base .. ':job:' .. id, 'status', 'type', 'trace')
      if job[1] == 'waiting' and redis.call('HGET', slices, n .. ':st') == 'ready' then
        local attempt = redis.call('HINCRBY', slices, n .. ':a', 1)
        redis.call('HSET', slices, n .. ':st', 'dispatched')
        redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ref .. '/' .. attempt)
        redis.call('HINCRBY', KEYS[4], tenant, 1)
        taken[#taken + 1] = {id, n, tostring(attempt), redis.call('HGET', slices, n .. ':in'),
                             job[2], tenant, job[3] or ''}
        got = true
      else
        -- a stale reference: the job ended or was replayed, or the slice was taken already
        redis.call('LREM', KEYS[2], 1, ref)
      end
    end
    if redis.call('LLEN', ready) == 0 then
      redis.call('LREM', KEYS[1], 1, tenant)
      tenants = tenants - 1
    end
  end
  if got then idle = 0 else idle = idle + 1 end
end
return taken
"""

# The worker has handed these slices to the compute function.
# KEYS: processing
# ARGV: ref, ...
RELEASE = r"""
for i = 1, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return #ARGV
"""

# Apply one slice outcome. The only writer of a dispatched job's state.
# KEYS: counts, deadlines
# ARGV: base, job_id, slice, attempt, 'succeeded'|'failed', result json | reason,
#       retryable '1'|'0', now_ms, backoff_ms, ttl_s, dead_ttl_s
# Returns {verdict, job status}. Verdicts: applied, completed, retrying, dead, duplicate,
# stale, inactive, unknown.
APPLY_OUTCOME = r"""
local base, id, n, attempt, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[8]
local jobkey = base .. ':job:' .. id
local slices = base .. ':slices:' .. id
local job = redis.call('HMGET', jobkey, 'status', 'type', 'tenant', 'created_ms', 'slices_total', 'error')
local status = job[1]
if not status then return {'unknown', '', '', '', ''} end
local function answer(verdict, now_status) return {verdict, now_status, job[2], job[3], job[4] or ''} end
local s = redis.call('HMGET', slices, n .. ':a', n .. ':st')
if not s[1] then return answer('unknown', status) end
if s[1] ~= attempt then return answer('stale', status) end
if s[2] ~= 'dispatched' then return answer('duplicate', status) end
redis.call('ZREM', KEYS[2], id .. '/' .. n .. '/' .. attempt)
end_dispatch(base, id, job[3] or '')
if status ~= 'waiting' then
  redis.call('HSET', slices, n .. ':st', 'abandoned')
  return answer('inactive', status)
end
if ARGV[5] == 'failed' then
  local verdict = fail_slice(base, KEYS[1], id, n, attempt, ARGV[6], ARGV[7], now, ARGV[9], ARGV[11])
  return answer(verdict, verdict == 'dead' and 'dead' or 'waiting')
end
redis.call('HSET', slices, n .. ':st', 'succeeded', n .. ':out', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'slices_succeeded', 1)
local done = redis.call('HINCRBY', jobkey, 'slices_succeeded', 1)
local total = tonumber(job[5])
if done < total then
  redis.call('HSET', jobkey, 'updated_ms', now)
  return answer('applied', 'waiting')
end
-- the slices' outputs in order, read a thousand at a time (unpack has a limit)
local outs = {}
for first = 0, total - 1, 1000 do
  local fields = {}
  for i = first, math.min(first + 999, total - 1) do fields[#fields + 1] = i .. ':out' end
  local chunk = redis.call('HMGET', slices, unpack(fields))
  for i = 1, #fields do outs[#outs + 1] = chunk[i] end
end
redis.call('HSET', jobkey, 'status', 'succeeded', 'result', '[' .. table.concat(outs, ',') .. ']',
           'finished_ms', now, 'updated_ms', now)
if job[6] then redis.call('HDEL', jobkey, 'error') end
bump(KEYS[1], 'waiting', 'succeeded')
expire_job(base, id, ARGV[10])
return answer('completed', 'succeeded')
"""

# Dead job back onto its queue, keeping id and history; the retry budget starts afresh.
# KEYS: dead, counts
# ARGV: base, job_id, now_ms
REPLAY = r"""
local base, id = ARGV[1], ARGV[2]
if redis.call('LREM', KEYS[1], 0, id) == 0 then return 'not-dead' end
local jobkey = base .. ':job:' .. id
if redis.call('HGET', jobkey, 'status') ~= 'dead' then return 'not-dead' end
redis.call('PERSIST', jobkey)
redis.call('PERSIST', base .. ':slices:' .. id)
redis.call('HSET', jobkey, 'status', 'queued', 'failures', 0, 'stalls', 0, 'updated_ms', ARGV[3])
redis.call('HDEL', jobkey, 'finished_ms', 'result', 'error')
add_history(jobkey, cjson.encode({event = 'replayed', at_ms = tonumber(ARGV[3])}))
push_job(base, id, false)
bump(KEYS[2], 'dead', 'queued')
redis.call('HINCRBY', KEYS[2], 'replayed', 1)
return 'queued'
"""

# Heartbeat: extend this worker's lease. Returns 0 if the lease had been lost (reaped).
# KEYS: workers
# ARGV: worker_id, lease_until_ms, now_ms
HEARTBEAT = r"""
local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if until_ms and tonumber(until_ms) >= tonumber(ARGV[3]) then return 1 end
return 0
"""

# Housekeeping that any worker may run at any time, atomically:
#  1. jobs and slices held by workers whose lease ran out go back to their lists;
#  2. dispatched slices past their deadline fail with "no callback";
#  3. retries whose backoff is over become ready again;
#  4. the dead-letter list lets go of jobs whose records expired.
# KEYS: workers, counts, deadlines, delayed
# ARGV: base, now_ms, max_stalls, limit, backoff_ms, dead_ttl_s
# Returns {jobs recovered, slices recovered, jobs lost for good, slices timed out, promoted}.
REAP = r"""
local base, now, max_stalls, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local recovered, slices_recovered, lost, timed_out, promoted = 0, 0, 0, 0, 0

for _, wid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
  local processing = base .. ':processing:' .. wid
  for _, item in ipairs(redis.call('LRANGE', processing, 0, -1)) do
    local sep = string.find(item, '/', 1, true)
    if sep then
      local id, n = string.sub(item, 1, sep - 1), string.sub(item, sep + 1)
      if redis.call('HGET', base .. ':slices:' .. id, n .. ':st') == 'dispatched' then
        -- the next dispatch gets a new attempt, which fences a late callback of this one
        end_dispatch(base, id)
        ready_slice(base, id, n, true)
        slices_recovered = slices_recovered + 1
      end
    else
      local jobkey = base .. ':job:' .. item
      local status = redis.call('HGET', jobkey, 'status')
      if status == 'queued' then
        -- moved by BLMOVE, but the worker died before the take script started it
        push_job(base, item, true)
        recovered = recovered + 1
      elseif status == 'running' then
        local stalls = redis.call('HINCRBY', jobkey, 'stalls', 1)
        redis.call('HINCRBY', KEYS[2], 'stalled', 1)
        add_history(jobkey, cjson.encode({event = 'stalled', error = 'worker lost', worker = wid, at_ms = now}))
        if stalls > max_stalls then
          to_dead(base, KEYS[2], item, 'running', 'worker lost', now, ARGV[6])
          lost = lost + 1
        else
          redis.call('HSET', jobkey, 'status', 'queued', 'updated_ms', now)
          push_job(base, item, true)
          bump(KEYS[2], 'running', 'queued')
          recovered = recovered + 1
        end
      end
    end
  end
  redis.call('DEL', processing)
  redis.call('ZREM', KEYS[1], wid)
end

for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[3], member)
  local a = string.find(member, '/', 1, true)
  local b = string.find(member, '/', a + 1, true)
  local id, n, attempt = string.sub(member, 1, a - 1), string.sub(member, a + 1, b - 1), string.sub(member, b + 1)
  local slices = base .. ':slices:' .. id
  local s = redis.call('HMGET', slices, n .. ':a', n .. ':st')
  if s[1] == attempt and s[2] == 'dispatched' then
    end_dispatch(base, id)
    if redis.call('HGET', base .. ':job:' .. id, 'status') == 'waiting' then
      fail_slice(base, KEYS[2], id, n, attempt, 'no callback before the deadline', '1', now, ARGV[5], ARGV[6])
      timed_out = timed_out + 1
    else
      redis.call('HSET', slices, n .. ':st', 'abandoned')
    end
  end
end

for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[4], member)
  local sep = string.find(member, '/', 1, true)
  if sep then
    local id, n = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    if redis.call('HGET', base .. ':slices:' .. id, n .. ':st') == 'retrying'
       and redis.call('HGET', base .. ':job:' .. id, 'status') == 'waiting' then
      ready_slice(base, id, n, true)
      promoted = promoted + 1
    end
  else
    local jobkey = base .. ':job:' .. member
    if redis.call('HGET', jobkey, 'status') == 'retrying' then
      redis.call('HSET', jobkey, 'status', 'queued', 'updated_ms', now)
      push_job(base, member, false)
      bump(KEYS[2], 'retrying', 'queued')
      promoted = promoted + 1
    end
  end
end
-- ids of dead jobs whose records have expired leave the dead-letter list (oldest first)
local dead = base .. ':dead'
for _, id in ipairs(redis.call('LRANGE', dead, -100, -1)) do
  if redis.call('EXISTS', base .. ':job:' .. id) == 0 then redis.call('LREM', dead, 0, id) end
end
return {recovered, slices_recovered, lost, timed_out, promoted}
"""

_SOURCES = {
    "enqueue": ENQUEUE,
    "take": TAKE,
    "finish": FINISH,
    "fail": FAIL,
    "requeue": REQUEUE,
    "fan_out": FAN_OUT,
    "take_slices": TAKE_SLICES,
    "release": RELEASE,
    "apply_outcome": APPLY_OUTCOME,
    "replay": REPLAY,
    "heartbeat": HEARTBEAT,
    "reap": REAP,
}


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _helpers_for(body: str) -> list[str]:
    needed: set[str] = set()
    pending = [body]
    while pending:
        text = pending.pop()
        for helper, source in _HELPERS.items():
            if helper not in needed and f"{helper}(" in text:
                needed.add(helper)
                pending.append(source)
    return [helper for helper in _HELPERS if helper in needed]


def _compile(name: str, body: str) -> Script:
    source = "".join(_HELPERS[h] for h in _helpers_for(body)) + body
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


SCRIPTS: dict[str, Script] = {name: _compile(name, body) for name, body in _SOURCES.items()}


class ScriptCall(NamedTuple):
    """One script invocation, ready to send alone or inside a pipeline (a NamedTuple: one
    is made per call, and a frozen dataclass costs four times as much to make)."""

    script: Script
    keys: Sequence[str]
    args: Sequence[Any]


def call(name: str, keys: Sequence[str], args: Sequence[Any]) -> ScriptCall:
    return ScriptCall(SCRIPTS[name], keys, args)


def run(client: redis.Redis, script_call: ScriptCall) -> Any:
    """EVALSHA, loading the script on NOSCRIPT (once per server, or after a failover)."""
    c = script_call
    try:
        return client.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
    except redis.exceptions.NoScriptError:
        client.script_load(c.script.source)
        return client.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)


def run_all(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Send several script calls in one round trip (a pipeline without MULTI).

    redis-py's own Script objects check SCRIPT EXISTS before every pipeline, which would
    double the round trips; here a NOSCRIPT answer loads the refused scripts and re-sends
    only the refused calls (the others have run already).
    """
    results = _send(client, calls)
    refused = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if refused:
        for name in {calls[i].script.name for i in refused}:
            client.script_load(SCRIPTS[name].source)
        for i, r in zip(refused, _send(client, [calls[i] for i in refused]), strict=True):
            results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def _send(client: redis.Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for c in calls:
        pipe.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
    return list(pipe.execute(raise_on_error=False))
