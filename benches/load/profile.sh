#!/usr/bin/env bash
# Where the stock ticker's time goes per delivered fan-out message: runs the load harness's
# fan-out scenario against the ticker alone (CLIENTS sockets, HZ updates/s), attaches to the
# ticker process during the 10 updates/s window and prints, per delivered message, syscalls
# (perf stat on the syscall tracepoints), context switches and CPU time, then the top symbols
# of a sampling profile (perf record).
#
#   benches/load/profile.sh [TICKER_BINARY] [CLIENTS] [SECS]
#
# Delivered messages in the window are CLIENTS × 10 × SECS (at 10 updates/s every server of
# the harness delivers all it is offered; the harness's own line for the window confirms it).
# Bounded: the harness run ends by itself; the tracers stop after SECS.
set -euo pipefail
cd "$(dirname "$0")/../.."
ticker=${1:-target/release/stock-ticker}
clients=${2:-5000}
secs=${3:-3}
out=${OUT:-target/bench/profile}
mkdir -p "$out"
load=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
"$load" --only fanout --fanout-servers ticker --clients "$clients" --rounds 1 \
  --saturate-hz 10 --ticker "$ticker" --out "$out" >"$out/harness.log" 2>&1 &
harness=$!
# The ticker is the harness's child; wait until its sockets are open and updates flow.
pid=
for _ in $(seq 1 600); do
  pid=$(pgrep -P "$harness" -f stock-ticker || true)
  [ -n "$pid" ] && grep -q "sockets open" "$out/harness.log" && break
  sleep 0.1
done
[ -n "$pid" ] || { echo "no ticker"; kill "$harness"; exit 1; }
sleep 1 # inside the warm-up + measured window of the 10 Hz run
events=task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter
for call in sendto writev write recvfrom epoll_wait futex sched_yield; do
  events="$events,syscalls:sys_enter_$call"
done
# Allocations: a uprobe on libc's malloc (the ticker uses the system allocator), removed after.
perf probe -q -x "$(ldd "$ticker" | awk '/libc.so/ { print $3 }')" malloc 2>/dev/null || true
perf probe -l 2>/dev/null | grep -q probe_libc:malloc && events="$events,probe_libc:malloc"
timeout -s INT "$secs" perf stat -e "$events" -p "$pid" -o "$out/perf-stat.txt" || true
perf probe -q -d probe_libc:malloc 2>/dev/null || true
timeout -s INT "$secs" perf record -F 499 -g -p "$pid" -o "$out/perf.data" >/dev/null 2>&1 || true
wait "$harness" || true
delivered=$((clients * 10 * secs))
echo "delivered messages per window: $delivered ($clients clients x 10/s x $secs s)"
awk -v d="$delivered" '$3 == "task-clock" { gsub(",", "", $1); $2 = "cpu-us"; $1 = $1 * 1000 }
  $2 ~ /cpu-us|context-switches|cpu-migrations|sys_enter|malloc/ {
    gsub(",", "", $1); v = $1
    printf "  %-36s %12.0f  %.4f per delivered message\n", $2, v, v / d }' "$out/perf-stat.txt"
perf report -i "$out/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | head -25 >"$out/perf-top.txt" || true
echo "top symbols (self time, perf record -F 499 -g):"
cat "$out/perf-top.txt"
grep -E "Hz:" "$out/harness.log" || true
