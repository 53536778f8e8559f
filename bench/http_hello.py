#!/usr/bin/env python3
"""weft hello vs nginx `return 200`: a fixed 12-byte JSON body, 1 worker each.

Same wrk load (keep-alive, 64 connections), same cgroup CPU cap for both
servers, rounds alternated, medians reported. Prints requests/s, p50/p99,
CPU-microseconds per request, RSS, and the weft/nginx ratios.

usage: bench/http_hello.py WEFT_BIN [--rounds N] [--secs S] [--cap PCT]
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

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ default_type application/json; return 200 '{{"msg":"hi"}}'; }}
  }}
}}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weft")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--cap", type=float, default=25.0, help="CPU quota %% of one core per server")
    ap.add_argument("--conns", type=int, default=64)
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="weft-bench-")
    wport, nport = B.free_port(), B.free_port()
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(dir=tmp, port=nport))

    weft = B.Server("weft", [a.weft, "hello", "--listen", f"127.0.0.1:{wport}", "--workers", "1",
                             "--log-level", "warn"], wport, cap_percent=a.cap)
    weft.start()
    weft_idle_rss = B.rss_kb(weft.pid)
    ng = subprocess.Popen(["nginx", "-c", os.path.join(tmp, "nginx.conf"), "-p", tmp],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    nginx = B.Server("nginx", None, nport, cap_percent=a.cap)
    nginx.proc = ng
    B.wait_port(nport)
    time.sleep(0.3)
    nginx.pid = B.nginx_worker(ng.pid)
    for pid in B.pids_in_session(ng.pid):
        nginx.cap and nginx.cap.add(pid)
    nginx_idle_rss = B.rss_kb(nginx.pid)

    urls = {"weft": f"http://127.0.0.1:{wport}/hello", "nginx": f"http://127.0.0.1:{nport}/hello"}
    servers = {"weft": weft, "nginx": nginx}
    # sanity: identical bodies
    for name, url in urls.items():
        body = subprocess.run(["curl", "-s", url], capture_output=True, text=True).stdout
        if body != '{"msg":"hi"}':
            sys.exit(f"{name} returned {body!r}, expected the 12-byte body")
    results = {"weft": [], "nginx": []}
    try:
        for name in urls:  # warm-up
            B.run_wrk(urls[name], conns=a.conns, secs=1)
        for r in range(a.rounds):
            for name in (("weft", "nginx") if r % 2 == 0 else ("nginx", "weft")):
                res = B.measure(servers[name], urls[name], a.conns, a.secs)
                results[name].append(res)
                print(f"  round {r+1} {name:5s}: {res['rps']:>10.0f} req/s  "
                      f"p50 {res['p50']:.3f} ms  p99 {res['p99']:.3f} ms  "
                      f"{res['cpu_us_per_req']:.2f} CPU-us/req  cpu {res['cpu_util']*100:.0f}%  "
                      f"errors {res['errors']} non2xx {res['non2xx']}", flush=True)
    finally:
        weft.stop()
        nginx.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name, key):
        return B.median([x[key] for x in results[name]])

    rows = []
    for key, label, fmt in (("rps", "requests/s", "{:.0f}"), ("p50", "p50 latency (ms)", "{:.3f}"),
                            ("p99", "p99 latency (ms)", "{:.3f}"),
                            ("cpu_us_per_req", "CPU-us per request", "{:.2f}"),
                            ("rss_kb", "RSS under load (KiB)", "{:.0f}")):
        w, n = med("weft", key), med("nginx", key)
        rows.append((label, fmt.format(w), fmt.format(n), f"{w / n:.2f}x" if n else "-"))
    rows.append(("idle RSS (KiB)", str(weft_idle_rss), str(nginx_idle_rss),
                 f"{weft_idle_rss / nginx_idle_rss:.2f}x" if nginx_idle_rss else "-"))
    cap = f"{a.cap:.0f}% of one core each" if weft.cap and weft.cap.path else "none"
    print()
    print(f"## HTTP hello: weft vs nginx (1 worker each, wrk -t1 -c{a.conns} -d{a.secs}s, "
          f"CPU cap {cap}, median of {a.rounds} rounds)")
    print()
    print("| metric | weft | nginx | weft/nginx |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    rps_ratio = med("weft", "rps") / med("nginx", "rps")
    cpu_ratio = med("weft", "cpu_us_per_req") / med("nginx", "cpu_us_per_req")
    print()
    print(f"targets: requests/s >= 1.10x nginx: {'MET' if rps_ratio >= 1.1 else 'MISSED'} "
          f"({rps_ratio:.2f}x); CPU/request <= 0.90x nginx: "
          f"{'MET' if cpu_ratio <= 0.9 else 'MISSED'} ({cpu_ratio:.2f}x); idle RSS <= 4 MB: "
          f"{'MET' if weft_idle_rss <= 4096 else 'MISSED'} ({weft_idle_rss} KiB)")


if __name__ == "__main__":
    main()
