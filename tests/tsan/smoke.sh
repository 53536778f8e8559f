#!/usr/bin/env bash
# ThreadSanitizer smoke test: weft hello and weft gateway with 2 workers each
# under wrk load while the gateway is reloaded (SIGHUP and POST /admin/reload),
# scraped and queried. Any ThreadSanitizer report fails the run. This build
# uses the release allocator paths (free lists, recycled buffers), which the
# ASan build deliberately bypasses.
# usage: tests/tsan/smoke.sh BUILD_DIR
set -euo pipefail
weft="$1/weft"
dir=$(mktemp -d /tmp/weft-tsan.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
h1=$(free_port); h2=$(free_port); gp=$(free_port); ap=$(free_port)
cat > "$dir/gw.yaml" <<YAML
workers: 2
access_log: true
clusters:
  h:
    endpoints: ["127.0.0.1:$h1", "127.0.0.1:$h2"]
    health_check: {path: /health, interval: 100ms}
routes:
  - {name: rl, match: {prefix: /rl/}, strip_prefix: /rl, rate_limit: {requests_per_second: 1000, burst: 100}, cluster: h}
  - {name: c, match: {prefix: /c/}, strip_prefix: /c, cache: {ttl: 1s}, cluster: h}
  - {name: d, match: {prefix: /d/}, strip_prefix: /d, cluster: h, retry: false}
  - cluster: h
YAML
export TSAN_OPTIONS="halt_on_error=0 exitcode=66"
"$weft" hello --listen "127.0.0.1:$h1" --workers 2 --log-level warn 2>"$dir/h1.log" & pids+=($!)
"$weft" hello --listen "127.0.0.1:$h2" --workers 2 --log-level warn 2>"$dir/h2.log" & pids+=($!)
"$weft" gateway -c "$dir/gw.yaml" --listen "127.0.0.1:$gp" --admin "127.0.0.1:$ap" --log-level warn 2>"$dir/gw.log" & gw=$!; pids+=($gw)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$ap/ready" >/dev/null 2>&1 && break; sleep 0.1; done
wrk -t2 -c16 -d4s "http://127.0.0.1:$gp/hello" >/dev/null &
wrk -t1 -c4 -d4s "http://127.0.0.1:$gp/rl/hello" >/dev/null &
wrk -t1 -c4 -d4s "http://127.0.0.1:$gp/c/hello" >/dev/null &
# slow requests in flight across reloads: old generations end inside callbacks
for i in 1 2 3 4; do curl -s -o /dev/null "http://127.0.0.1:$gp/d/delay?ms=700" & done
for i in 1 2 3; do
  sleep 0.8
  curl -s -o /dev/null -X POST "http://127.0.0.1:$ap/admin/reload"
  curl -s -o /dev/null "http://127.0.0.1:$ap/metrics"
  curl -s -o /dev/null "http://127.0.0.1:$ap/admin/clusters"
  kill -HUP "$gw"
done
wait $(jobs -p | grep -v -e "^${pids[0]}$" -e "^${pids[1]}$" -e "^$gw$") 2>/dev/null || true
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
reports=$(cat "$dir"/*.log | grep -c "WARNING: ThreadSanitizer" || true)
if [ "$reports" -ne 0 ]; then
  grep -A 30 "WARNING: ThreadSanitizer" "$dir"/*.log | head -120
  echo "tsan: 0 passed, 1 failed ($reports reports)"
  exit 1
fi
if [ "$rc" -ne 0 ]; then echo "tsan: a process exited with $rc"; cat "$dir"/*.log | tail -20; echo "tsan: 0 passed, 1 failed"; exit 1; fi
echo "tsan: 1 passed, 0 failed (hello x2 and gateway, 2 workers each, load + reloads)"
