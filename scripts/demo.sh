#!/usr/bin/env bash
# make demo: start a small Weft system in the foreground and show it working:
# weft registry; two instances each of the example services catalog and
# pricing (examples/services, built on the SDK: they register themselves and
# catalog calls pricing by name); two `weft hello` instances; weft gateway in
# front, finding catalog and pricing through the registry.
# usage: scripts/demo.sh WEFT_BIN   (env: DEMO_PORT, default 8080; the admin API is on DEMO_PORT+1)
set -euo pipefail
weft=${1:?usage: scripts/demo.sh WEFT_BIN}
port=${DEMO_PORT:-8080}
admin=$((port + 1))
h1=$((port + 11))
h2=$((port + 12))
reg=$((port + 20))
klog=$((port + 50))
bindir=$(dirname "$weft")
base="http://127.0.0.1:$port"
dir=$(mktemp -d /tmp/weft-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

cat > "$dir/gateway.yaml" <<YAML
listen: 127.0.0.1:$port
admin: 127.0.0.1:$admin
workers: 2
access_log: true
clusters:
  catalog:
    discovery: {registry: "http://127.0.0.1:$reg", service: catalog}
  pricing:
    discovery: {registry: "http://127.0.0.1:$reg", service: pricing}
  hello:
    endpoints: ["127.0.0.1:$h1", "127.0.0.1:$h2"]
    health_check: {path: /health, interval: 1s, timeout: 500ms}
routes:
  - name: catalog
    match: {prefix: /catalog/}
    strip_prefix: /catalog
    cluster: catalog
  - name: pricing
    match: {prefix: /pricing/}
    strip_prefix: /pricing
    cluster: pricing
  - name: hello
    match: {prefix: /hello}
    cluster: hello
    cache: {ttl: 5s}
    compress: true
  - name: api
    match: {prefix: /api/}
    strip_prefix: /api
    cluster: hello
    retry: {attempts: 3, on: [connect-failure, reset, gateway-error]}
    fallback: {status: 200, body: '{"msg":"degraded"}'}
  - name: limited
    match: {prefix: /limited/}
    strip_prefix: /limited
    rate_limit: {requests_per_second: 2, burst: 2}
    cluster: hello
  - name: both
    match: {path: /both}
    aggregate:
      parts:
        - {name: greeting, cluster: hello, path: "/hello?name=aggregate"}
        - {name: health, cluster: hello, path: /health}
YAML

"$weft" registry --listen "127.0.0.1:$reg" --log-level warn & pids+=($!)
"$weft" log --listen "127.0.0.1:$klog" --data "$dir/log" --log-level warn & pids+=($!)
for i in 1 2; do
  "$bindir/weft-example-pricing" --listen "127.0.0.1:$((port + 30 + i))" --registry "http://127.0.0.1:$reg" \
      --ttl 3000 --log-level warn 2>>"$dir/services.log" & pids+=($!)
  "$bindir/weft-example-catalog" --listen "127.0.0.1:$((port + 40 + i))" --registry "http://127.0.0.1:$reg" \
      --ttl 3000 --log-level warn 2>>"$dir/services.log" & pids+=($!)
done
"$weft" hello --listen "127.0.0.1:$h1" --workers 1 --log-level warn & pids+=($!)
"$weft" hello --listen "127.0.0.1:$h2" --workers 1 --log-level warn & pids+=($!)
"$weft" gateway -c "$dir/gateway.yaml" --log-format json 2>"$dir/gateway.log" & pids+=($!)

for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "a demo process failed to start (port busy? try DEMO_PORT=9080 make demo)"; cat "$dir/gateway.log"; exit 1; }
  done
  sleep 0.1
done

cat <<MSG

  Weft demo: weft gateway on $base, weft registry on http://127.0.0.1:$reg,
  two instances each of the example services catalog and pricing (found by
  the gateway and by each other through the registry), two weft hello
  services ($h1, $h2); gateway admin API on http://127.0.0.1:$admin;
  weft log (Kafka protocol) on 127.0.0.1:$klog

  Try:
    curl $base/catalog/items                 # catalog calls pricing 4x in parallel, by name
    curl -H 'X-Request-Id: demo-1' $base/catalog/items/apple   # the id reaches pricing
    curl http://127.0.0.1:$reg/v1/services   # what is registered
    curl -N 'http://127.0.0.1:$reg/v1/watch?since=0'           # every change, live (Ctrl-C)
    kill -9 \$(pgrep -f "listen 127.0.0.1:$((port + 31))")  # a pricing instance dies:
    curl $base/catalog/items                 # ...retried on the other one; gone from the
                                             # registry within its 3 s TTL
    curl -i $base/hello                      # cached (X-Cache), balanced over both services
    curl -i '$base/api/hello?name=weft'      # prefix strip, retries, fallback
    curl $base/both                          # aggregation of two upstream calls
    for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code} ' $base/limited/hello; done; echo
    curl http://127.0.0.1:$admin/admin/clusters   # health, ejections, breaker, EWMA
    curl http://127.0.0.1:$admin/metrics
    curl http://127.0.0.1:$h1/hello              # a service directly
    kill \$(pgrep -f "listen 127.0.0.1:$h1")     # then watch /admin/clusters: endpoint down
    wrk -t1 -c64 -d5s $base/api/hello
    echo '{"order":1}' | kcat -P -b 127.0.0.1:$klog -t orders     # produce to weft log
    kcat -C -b 127.0.0.1:$klog -t orders -e -f '%o %s\n'         # consume from the start
    kcat -L -b 127.0.0.1:$klog                                   # topics and partitions

  Gateway access log (JSON lines): $dir/gateway.log
  Stop with Ctrl-C (graceful drain: in-flight requests finish, then exit).

  First requests, live:
MSG
for _ in $(seq 1 100); do  # until the gateway knows catalog and catalog knows pricing
  curl -fs "$base/catalog/items/apple" 2>/dev/null | grep -q currency && break
  sleep 0.1
done
printf '    $ curl %s/catalog/items/apple\n    ' "$base"; curl -s "$base/catalog/items/apple"; echo
printf '    $ echo ... | kcat -P -b 127.0.0.1:%s -t demo; kcat -C ... -t demo -e\n' "$klog"
printf 'created %s\nshipped %s\n' "$(date -u +%T)" "$(date -u +%T)" |
  kcat -P -b "127.0.0.1:$klog" -t demo -X linger.ms=0 2>/dev/null
kcat -C -b "127.0.0.1:$klog" -t demo -e -f '    offset %o: %s\n' 2>/dev/null
printf '    $ curl %s/api/hello\n    ' "$base"; curl -s "$base/api/hello"; echo
printf '    $ curl %s/both\n    ' "$base"; curl -s "$base/both"; echo; echo
wait
