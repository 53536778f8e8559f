#!/usr/bin/env bash
# Install the Debian packages Weft needs to build, test and benchmark.
# Quiet and idempotent: only packages that are missing are installed, and
# apt-get update runs only when something has to be installed.
set -euo pipefail

PKGS=(
  # build
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libyaml-dev libjansson-dev libcmocka-dev libssl-dev zlib1g-dev libpcre2-dev libc-ares-dev
  # integration tests and benchmarks
  python3 python3-pytest python3-requests python3-consul curl wrk nginx-light haproxy prometheus openssl dnsutils
  procps iproute2
  # the registry's etcd store: tests and the keepalive benchmark run their own etcd
  etcd-server etcd-client
  # weft log: real Kafka clients for the tests, librdkafka for the SDK and the
  # produce benchmark, Redis for the side-by-side benchmark
  kcat python3-kafka python3-confluent-kafka librdkafka-dev redis-server
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts nginx on install; the tests and benchmarks run their own.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true; fi
pkill -x nginx >/dev/null 2>&1 || true
# Likewise redis (the benchmark starts its own).
if [[ " ${missing[*]} " == *" redis-server "* ]]; then
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
  $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
# Likewise etcd (if its package started one): the tests start their own
# clusters on free loopback ports and never use a system etcd.
if [[ " ${missing[*]} " == *" etcd-server "* ]]; then
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true; fi
  if [ -x /etc/init.d/etcd ]; then $SUDO /etc/init.d/etcd stop >/dev/null 2>&1 || true; fi
fi
