#!/usr/bin/env bash
# Run every libFuzzer harness for a bounded time on a scratch copy of its
# seed corpus (the committed corpus is never modified by a run).
# usage: tests/fuzz/run.sh BUILD_DIR SECONDS
set -euo pipefail
build=$1
secs=${2:-30}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/weft-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0
n=0
for bin in "$build"/fuzz_*; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin")
  corpus=${name#fuzz_}
  mkdir -p "$work/$corpus"
  if [ -d "$here/corpus/$corpus" ]; then cp -r "$here/corpus/$corpus/." "$work/$corpus/"; fi
  dict=()
  for d in "$here/${corpus}.dict" "$here/http.dict"; do
    if [ -f "$d" ]; then dict=(-dict="$d"); break; fi
  done
  if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
       -artifact_prefix="$work/" "${dict[@]}" "$work/$corpus" >"$work/$name.log" 2>&1; then
    runs=$(grep -Eo '^#[0-9]+' "$work/$name.log" | tail -1 || true)
    echo "fuzz $name: ok (${secs}s, ${runs:-?} execs)"
    n=$((n+1))
  else
    echo "fuzz $name: FAILED"; tail -40 "$work/$name.log"; ls "$work" | grep -E '^(crash|leak|timeout|oom)' || true
    status=1
  fi
done
if [ "$n" -eq 0 ] && [ "$status" -eq 0 ]; then echo "fuzz: no harness found in $build"; exit 1; fi
failed=$(( status ? 1 : 0 ))
echo "fuzz: $n passed, $failed failed"
exit $status
