#!/usr/bin/env bash
# make demo: start what Weft has so far, in the foreground, and show it working.
# usage: scripts/demo.sh WEFT_BIN   (env: DEMO_PORT, default 8080)
set -euo pipefail
weft=${1:?usage: scripts/demo.sh WEFT_BIN}
port=${DEMO_PORT:-8080}
base="http://127.0.0.1:$port"

"$weft" hello --listen "127.0.0.1:$port" --workers 2 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; exit 0' INT TERM

for _ in $(seq 1 100); do
  curl -fs "$base/health" >/dev/null 2>&1 && break
  if ! kill -0 $pid 2>/dev/null; then echo "weft hello failed to start (port $port busy? try DEMO_PORT=8081 make demo)"; exit 1; fi
  sleep 0.1
done

cat <<MSG

  Weft demo — weft hello is serving on $base (2 workers)

  Try:
    curl $base/hello
    curl '$base/hello?name=weft'
    curl $base/health
    curl $base/metrics
    curl --data-binary @README.md $base/echo
    curl -s '$base/bytes?n=1000000' | wc -c
    curl '$base/delay?ms=250'
    wrk -t1 -c64 -d5s $base/hello

  Stop with Ctrl-C (graceful drain: in-flight requests finish, then exit 0).

  First request, live:
MSG
printf '    $ curl %s/hello\n    ' "$base"; curl -s "$base/hello"; echo; echo
wait $pid
