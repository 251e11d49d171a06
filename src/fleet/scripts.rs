//! The Lua scripts that make each fleet decision atomic in Redis.
//!
//! Times are the Redis server's (`TIME`), so instances with skewed clocks agree; every
//! script also takes an explicit "now" argument, used by the unit tests instead of sleeping.
//!
//! Redis Cluster: every key a script touches is declared in `KEYS`, and the keys of one
//! call share a hash tag (one slot): a quota's sets and release markers are all
//! `{<prefix>:quota:<name>}:…`. Channels are not keys (`PUBLISH` from a script is allowed
//! in a cluster and reaches every node). See FLEET.md.

use std::sync::LazyLock;

use redis::{ErrorKind, RedisError, Script, Value};

/// The error for a reply outside a script's contract: it decides nothing, and the fleet
/// reports it as [`FleetError::Redis`](super::FleetError::Redis) (a bug or a misconfigured
/// server), so the failure policy applies. The detail names the script and the reply's
/// shape, cut short.
pub(crate) fn unexpected_reply(script: &'static str, reply: &Value) -> RedisError {
    let mut shape = format!("{reply:?}");
    if shape.len() > 64 {
        let mut end = 64;
        while !shape.is_char_boundary(end) {
            end -= 1;
        }
        shape.truncate(end);
        shape.push('…');
    }
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "unexpected reply of a fleet script",
        format!("{script}: {shape}"),
    ))
}

/// An integer reply, the only kind of number the scripts return (Redis turns a Lua number
/// into one).
pub(crate) fn int_reply(reply: &Value) -> Option<i64> {
    match reply {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// GCRA (generic cell rate algorithm) in microseconds.
///
/// `KEYS[1]`: the key's theoretical arrival time (TAT). `ARGV[1]`: emission interval (µs),
/// `ARGV[2]`: burst, `ARGV[3]`: now in µs or `""` for the server's clock.
/// Returns `{1, remaining}` when allowed, `{0, wait_us}` when not.
pub(crate) static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] ~= nil and ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tolerance = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, math.floor((now + tolerance - tat) / interval)}
"#,
    )
});

/// Common prelude of the lease scripts: `now` in ms from `ARGV[1]` or the server's clock,
/// and a helper that makes a lease set outlive its latest lease by a second.
const LEASE_PRELUDE: &str = r#"
local now
if ARGV[1] ~= nil and ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function keep(key)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] ~= nil then
    redis.call('PEXPIRE', key, math.max(1, math.ceil(tonumber(top[2]) - now) + 1000))
  end
end
"#;

/// Takes a lease in every set of `KEYS` if none is full.
///
/// `ARGV[1]`: now (ms) or `""`, `ARGV[2]`: TTL (ms), `ARGV[3]`: lease id, `ARGV[3 + i]`: the
/// cap of `KEYS[i]`. Expired leases are dropped first. Returns 0 when taken, else the
/// 1-based index of the first full set.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{LEASE_PRELUDE}
local ttl = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZSCORE', key, ARGV[3]) == false and redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[3])
  keep(key)
end
return 0
"#
    ))
});

/// Renews (or re-creates, after Redis lost it) a lease in every set of `KEYS[2..]`, without
/// a cap check: the socket is open. `KEYS[1]`: the lease's release marker; a released lease
/// is not brought back by a renewal that was already on its way. `ARGV` as for [`ACQUIRE`]
/// without the caps. Returns 1 if the lease was released.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{LEASE_PRELUDE}
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 1
end
local ttl = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[3])
  keep(KEYS[i])
end
return 0
"#
    ))
});

/// Releases a lease from every set of `KEYS[2..]` and sets its release marker `KEYS[1]`.
/// `ARGV[1]`: lease id, `ARGV[2]`: how long to keep the marker (ms; the lease TTL).
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for i = 2, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
return 0
"#,
    )
});

/// The number of unexpired leases in `KEYS[1]`. `ARGV[1]`: now (ms) or `""`.
pub(crate) static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{LEASE_PRELUDE}
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"#
    ))
});

/// Revokes a subject's credentials issued before a time and announces it, in constant
/// time whatever the number of the subject's tokens: one marker holding the latest cutoff.
///
/// `KEYS[1]`: the subject's marker. `ARGV[1]`: the cutoff (ms since the epoch), `ARGV[2]`:
/// marker TTL (ms), `ARGV[3]`: channel, `ARGV[4]`: the subject. Publishes
/// `before:<cutoff>:<subject>` with the marker's (latest) cutoff. Returns 1.
pub(crate) static REVOKE_BEFORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local before = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= nil and current > before then
  before = current
end
local text = string.format('%.0f', before)
redis.call('SET', KEYS[1], text, 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], 'before:' .. text .. ':' .. ARGV[4])
return 1
"#,
    )
});

/// Revokes one token and announces it. `KEYS[1]`: its marker. `ARGV[1]`: marker TTL (ms),
/// `ARGV[2]`: channel, `ARGV[3]`: message.
pub(crate) static REVOKE_TOKEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#,
    )
});
