#!/usr/bin/env bash
# make bench: every side-by-side benchmark, in one run, on this machine.
# usage: bench/run.sh WEFT_BIN   (env: BENCH_ROUNDS, BENCH_SECS, BENCH_CAP,
#                                 BENCH_PIN=1, BENCH_LOG_ROUNDS, BENCH_QUICK=1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
weft=${1:?usage: bench/run.sh WEFT_BIN}
rounds=${BENCH_ROUNDS:-5}
secs=${BENCH_SECS:-5}
cap=${BENCH_CAP:-25}
echo "# make bench — $(date -u +%Y-%m-%dT%H:%MZ) — $(nproc) cores, $(uname -r)"
echo
echo "Each server under test runs in its own cgroup with a ${cap}% CPU quota of one core"
echo "(CFS period 10 ms), so requests/s is server-bound; CPU-us per request is measured"
echo "from /proc/PID/stat around each run. Rounds alternate between servers; medians."
echo
python3 "$here/http_hello.py" "$weft" --rounds "$rounds" --secs "$secs" --cap "$cap"
echo
python3 "$here/gateway.py" "$weft" --rounds "$rounds" --secs "$secs" --cap "$cap"
echo
python3 "$here/registry.py" "$weft" --secs "$secs" --rounds "$rounds" --cap "$cap"
echo
# weft log vs Redis Streams: ~1 minute a round (BENCH_QUICK=1: one short round)
log_args=(--rounds "${BENCH_LOG_ROUNDS:-3}" --cap "$cap")
[ "${BENCH_QUICK:-0}" = 1 ] && log_args+=(--quick)
python3 "$here/eventlog.py" "$weft" "${log_args[@]}"
