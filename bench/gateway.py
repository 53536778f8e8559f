#!/usr/bin/env python3
"""weft gateway vs nginx proxy_pass vs HAProxy, proxying to the same origin.

The origin is nginx `return 200` (1 worker, uncapped, shared by all three).
Each proxy runs 1 worker/thread under the same cgroup CPU cap; wrk drives
keep-alive load with 64 connections; rounds alternate, medians are reported.
A second weft configuration enables retries, the circuit breaker, outlier
detection, metrics and the JSON access log (to a file), to price the
features against the bare run.

usage: bench/gateway.py WEFT_BIN [--rounds N] [--secs S] [--cap PCT]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

ORIGIN = """
worker_processes 1;
daemon off;
pid {dir}/origin.pid;
error_log {dir}/origin.err error;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 100000000;
  server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ default_type text/plain; return 200 'hello world!'; }} }} }}
"""

NGINX = """
worker_processes 1;
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy.err error;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 100000000;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 256; keepalive_requests 100000000; }}
  server {{ listen 127.0.0.1:{port} reuseport;
    location / {{ proxy_pass http://origin; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }} }}
"""

HAPROXY = """
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  server o 127.0.0.1:{origin}
"""

WEFT_BARE = """
workers: 1
access_log: false
clusters:
  origin:
    endpoints: ["127.0.0.1:{origin}"]
    circuit_breaker: false
    outlier_detection: false
routes:
  - match: {{prefix: /}}
    cluster: origin
    retry: false
"""

WEFT_FULL = """
workers: 1
access_log: true
clusters:
  origin:
    endpoints: ["127.0.0.1:{origin}"]
    circuit_breaker: {{window: 10s, min_requests: 20, error_percent: 50, sleep_window: 5s}}
    outlier_detection: {{consecutive_5xx: 5}}
routes:
  - match: {{prefix: /}}
    cluster: origin
    retry: {{attempts: 3, on: [connect-failure, reset, gateway-error]}}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weft")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--cap", type=float, default=25.0)
    ap.add_argument("--conns", type=int, default=64)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="weft-gwbench-")
    oport = B.free_port()
    ports = {k: B.free_port() for k in ("weft", "weft+features", "nginx", "haproxy")}

    def write(name, text):
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    write("origin.conf", ORIGIN.format(dir=tmp, port=oport))
    write("nginx.conf", NGINX.format(dir=tmp, port=ports["nginx"], origin=oport))
    write("haproxy.cfg", HAPROXY.format(port=ports["haproxy"], origin=oport))
    wb = write("weft.yaml", WEFT_BARE.format(origin=oport))
    wf = write("weft-full.yaml", WEFT_FULL.format(origin=oport))

    origin = subprocess.Popen(["nginx", "-c", os.path.join(tmp, "origin.conf"), "-p", tmp],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    B.wait_port(oport)
    for pid in B.pids_in_session(origin.pid):
        B.pin(pid, B.LOAD_CPUS)
    servers = {}
    try:
        servers["weft"] = B.Server("weft", [a.weft, "gateway", "-c", wb, "--listen",
                                            f"127.0.0.1:{ports['weft']}", "--admin",
                                            f"127.0.0.1:{B.free_port()}", "--log-level", "warn"],
                                   ports["weft"], cap_percent=a.cap).start()
        full_log = open(os.path.join(tmp, "access.log"), "w")
        sf = B.Server("weft+features", [a.weft, "gateway", "-c", wf, "--listen",
                                        f"127.0.0.1:{ports['weft+features']}", "--admin",
                                        f"127.0.0.1:{B.free_port()}", "--log-level", "info",
                                        "--log-format", "json"],
                      ports["weft+features"], cap_percent=a.cap)
        sf.proc = subprocess.Popen(sf.argv, stdout=subprocess.DEVNULL, stderr=full_log,
                                   start_new_session=True)
        B.wait_port(sf.port)
        time.sleep(0.3)
        sf.pid = sf.proc.pid
        sf.cap and sf.cap.add(sf.pid)
        servers["weft+features"] = sf
        ng = B.Server("nginx", None, ports["nginx"], cap_percent=a.cap)
        ng.proc = subprocess.Popen(["nginx", "-c", os.path.join(tmp, "nginx.conf"), "-p", tmp],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        B.wait_port(ng.port)
        time.sleep(0.3)
        ng.pid = B.nginx_worker(ng.proc.pid)
        for pid in B.pids_in_session(ng.proc.pid):
            ng.cap and ng.cap.add(pid)
        servers["nginx"] = ng
        servers["haproxy"] = B.Server("haproxy", ["haproxy", "-db", "-f",
                                                  os.path.join(tmp, "haproxy.cfg")],
                                      ports["haproxy"], cap_percent=a.cap).start()
        idle = {k: B.rss_kb(s.pid) for k, s in servers.items()}
        urls = {k: f"http://127.0.0.1:{ports[k]}/bench" for k in servers}
        for k, u in urls.items():
            body = subprocess.run(["curl", "-s", u], capture_output=True, text=True).stdout
            if body != "hello world!":
                sys.exit(f"{k} returned {body!r}")
        for k, u in urls.items():
            B.run_wrk(u, conns=a.conns, secs=1)
        res = {k: [] for k in servers}
        order = list(servers)
        for r in range(a.rounds):
            for k in (order if r % 2 == 0 else order[::-1]):
                x = B.measure(servers[k], urls[k], a.conns, a.secs)
                res[k].append(x)
                print(f"  round {r+1} {k:14s}: {x['rps']:>9.0f} req/s  p50 {x['p50']:.3f} ms  "
                      f"p99 {x['p99']:.3f} ms  {x['cpu_us_per_req']:.2f} CPU-us/req  "
                      f"cpu {x['cpu_util']*100:.0f}%  errors {x['errors']} non2xx {x['non2xx']}",
                      flush=True)
    finally:
        for s in servers.values():
            s.stop()
        origin.terminate()
        try:
            origin.wait(timeout=5)
        except subprocess.TimeoutExpired:
            origin.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(k, key):
        return B.median([x[key] for x in res[k]])

    best = max(("nginx", "haproxy"), key=lambda k: med(k, "rps"))
    print()
    print(f"## Gateway: weft vs nginx proxy_pass vs HAProxy (1 worker each, wrk -t1 -c{a.conns} "
          f"-d{a.secs}s, CPU cap {a.cap:.0f}% of one core per proxy, median of {a.rounds} rounds)")
    print()
    print("| metric | weft | weft+features | nginx | haproxy | weft / best other |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, label, fmt in (("rps", "requests/s", "{:.0f}"), ("p50", "p50 (ms)", "{:.3f}"),
                            ("p99", "p99 (ms)", "{:.3f}"),
                            ("cpu_us_per_req", "CPU-us per request", "{:.2f}"),
                            ("rss_kb", "RSS under load (KiB)", "{:.0f}")):
        vals = {k: med(k, key) for k in servers}
        if key == "rps":
            other = max(vals["nginx"], vals["haproxy"])
        elif key in ("cpu_us_per_req", "rss_kb"):
            other = min(vals["nginx"], vals["haproxy"])
        else:
            other = vals[best]
        print(f"| {label} | " + " | ".join(fmt.format(vals[k]) for k in
                                          ("weft", "weft+features", "nginx", "haproxy")) +
              f" | {vals['weft'] / other:.2f}x |")
    print(f"| idle RSS (KiB) | {idle['weft']} | {idle['weft+features']} | {idle['nginx']} | "
          f"{idle['haproxy']} | |")
    rps_ratio = med("weft", "rps") / max(med("nginx", "rps"), med("haproxy", "rps"))
    cpu_ratio = med("weft", "cpu_us_per_req") / min(med("nginx", "cpu_us_per_req"),
                                                    med("haproxy", "cpu_us_per_req"))
    feat = med("weft+features", "rps") / med("weft", "rps")
    print()
    print(f"targets: req/s >= 1.3x best other: {'MET' if rps_ratio >= 1.3 else 'MISSED'} "
          f"({rps_ratio:.2f}x); CPU/req <= 0.75x: {'MET' if cpu_ratio <= 0.75 else 'MISSED'} "
          f"({cpu_ratio:.2f}x); all-features within 15% of bare: "
          f"{'MET' if feat >= 0.85 else 'MISSED'} ({feat:.2f}x); RSS <= 8 MB: "
          f"{'MET' if med('weft', 'rss_kb') <= 8192 else 'MISSED'}")


if __name__ == "__main__":
    main()
