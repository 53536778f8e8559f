#!/usr/bin/env bash
# make bench: every side-by-side benchmark, in one run, on this machine.
# usage: bench/run.sh WEFT_BIN   (env: BENCH_ROUNDS, BENCH_SECS, BENCH_CAP)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
weft=${1:?usage: bench/run.sh WEFT_BIN}
echo "# make bench — $(date -u +%Y-%m-%dT%H:%MZ) — $(nproc) cores, $(uname -r)"
echo
python3 "$here/http_hello.py" "$weft" --rounds "${BENCH_ROUNDS:-5}" --secs "${BENCH_SECS:-5}" \
  --cap "${BENCH_CAP:-25}"
