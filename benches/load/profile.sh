#!/usr/bin/env bash
# Where the stock ticker's time goes per delivered fan-out message: runs the load harness's
# fan-out scenario against the ticker alone (CLIENTS sockets, HZ updates/s), attaches to the
# ticker process during the 10 updates/s window and prints, per delivered message, syscalls
# (strace -c -f), context switches and CPU time (perf stat, software events).
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
sleep 1.5 # inside the warm-up + measured window of the 10 Hz run
timeout -s INT "$secs" strace -c -f -p "$pid" -o "$out/strace.txt" || true
sleep 0.5
timeout -s INT "$secs" perf stat -e task-clock,context-switches,cpu-migrations,page-faults \
  -p "$pid" -o "$out/perf.txt" || true
wait "$harness" || true
delivered=$((clients * 10 * secs))
echo "delivered messages per window: $delivered ($clients clients x 10/s x $secs s)"
awk -v d="$delivered" '/^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ && $NF != "total" {
    printf "  %-16s %8d calls  %.4f per delivered message\n", $NF, $4, $4 / d }
  $NF == "total" { printf "  %-16s %8d calls  %.4f per delivered message\n", "total", $3, $3 / d }' \
  "$out/strace.txt" | sort -k2 -n -r | head -12
awk -v d="$delivered" '/task-clock/ { gsub(",", "", $1); printf "  cpu %.2f us per delivered message\n", $1 * 1000 / d }
  /context-switches/ { gsub(",", "", $1); printf "  context switches %.4f per delivered message\n", $1 / d }' \
  "$out/perf.txt"
grep -E "Hz:" "$out/harness.log" || true
