#!/usr/bin/env bash
# What one Redis sustains for the fleet's scripts: redis-benchmark with EVALSHA of the real
# scripts (extracted from src/fleet/scripts.rs by scripts.py), keys spread as a fleet spreads
# them, then the memory of a lease. Bounded: a fixed number of requests per script.
# Run from the repo root against a Redis of its own (it is flushed):
#   redis-server --port 6395 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
#   benches/fleet/throughput.sh 6395 [requests] [clients]
# See FLEET.md for the results on the project's machine.
set -euo pipefail
port=${1:?redis port}
n=${2:-200000}
c=${3:-50}
cli() { redis-cli -p "$port" "$@"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 "$(dirname "$0")/scripts.py" "$tmp" >/dev/null
declare -A sha
for f in "$tmp"/*.lua; do
    sha[$(basename "$f" .lua)]=$(cli -x SCRIPT LOAD <"$f")
done
cli FLUSHALL >/dev/null
redis-server --version
echo "requests per script: $n, clients: $c, keys spread over 10^6 random values"
bench() {
    local name=$1
    shift
    printf '%-34s ' "$name"
    redis-benchmark -p "$port" -n "$n" -c "$c" -r 1000000 -q "$@" | tr '\r' '\n' | grep 'requests per second' | tail -1
}
q='{bench:quota:sockets}'
bench "GCRA (rate limit)" EVALSHA "${sha[GCRA]}" 1 bench:rate:handshake:ip:__rand_int__ 200000 20 ""
bench "ACQUIRE (ip + identity sets)" EVALSHA "${sha[ACQUIRE]}" 2 "$q:ip:__rand_int__" "$q:id:__rand_int__" "" 30000 __rand_int__ 100 10
bench "RENEW (ip + identity sets)" EVALSHA "${sha[RENEW]}" 3 "$q:released:__rand_int__" "$q:ip:__rand_int__" "$q:id:__rand_int__" "" 30000 __rand_int__
bench "RELEASE (ip + identity sets)" EVALSHA "${sha[RELEASE]}" 3 "$q:released:__rand_int__" "$q:ip:__rand_int__" "$q:id:__rand_int__" __rand_int__ 30000
bench "GET, pipelined by 2 (revocation)" -P 2 GET bench:revoked:__rand_int__
cli FLUSHALL >/dev/null
# With a global cap: every lease also in one set (one slot), grown to 10^5 leases first.
cli EVAL "for i = 1, 100000 do redis.call('ZADD', KEYS[1], 9999999999999, 'seed' .. i) end return 0" 1 "$q:global" >/dev/null
bench "ACQUIRE (+ global set, 10^5 leases)" EVALSHA "${sha[ACQUIRE]}" 3 "$q:ip:__rand_int__" "$q:id:__rand_int__" "$q:global" "" 30000 __rand_int__ 100 10 100000000
bench "RENEW (+ global set)" EVALSHA "${sha[RENEW]}" 4 "$q:released:__rand_int__" "$q:ip:__rand_int__" "$q:id:__rand_int__" "$q:global" "" 30000 __rand_int__
cli FLUSHALL >/dev/null

# Memory of a lease: 10^5 leases (32-hex ids, as the fleet's), each from its own IP and
# identity (the worst case: no set shared), stored as ACQUIRE stores them.
lease_memory() {
    local global=$1
    cli FLUSHALL >/dev/null
    local before after
    before=$(cli INFO memory | grep '^used_memory:' | cut -d: -f2 | tr -d '\r')
    local keys=2
    [ "$global" = yes ] && keys=3
    cli EVAL "
local sha = ARGV[1]
for i = 1, 100000 do
  local id = redis.sha1hex('lease' .. i):sub(1, 32)
  local k = {'$q:ip:10.' .. i .. '/32', '$q:id:user' .. i}
  if ARGV[2] == 'yes' then k[3] = '$q:global' end
  local now = 1000
  for _, key in ipairs(k) do
    redis.call('ZADD', key, now + 30000, id)
    redis.call('PEXPIRE', key, 31000)
  end
end
return 0" 0 x "$global" >/dev/null
    after=$(cli INFO memory | grep '^used_memory:' | cut -d: -f2 | tr -d '\r')
    echo "lease memory (ip + identity sets$([ "$global" = yes ] && echo ' + global')): $(( (after - before) / 100000 )) bytes per lease"
}
lease_memory no
lease_memory yes
cli FLUSHALL >/dev/null
