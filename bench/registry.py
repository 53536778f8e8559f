#!/usr/bin/env python3
"""weft registry: heartbeats/s and registrations/s (wrk, CPU-µs per operation
from /proc), change-to-watcher latency with 1,000 concurrent SSE watchers,
and resident memory per instance at 100,000 instances.

usage: bench/registry.py WEFT_BIN [--secs S] [--watchers N] [--instances N]
"""
import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def http(port, method, path, body=b""):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    req = (f"{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Length: {len(body)}\r\n"
           f"Connection: close\r\n\r\n").encode() + body
    s.sendall(req)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return data


def register_many(port, service, n, prefix, ttl="600s", batch=500, meta=True):
    """Pipelined registrations over one keep-alive connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    done = 0
    buf = b""
    while done < n:
        k = min(batch, n - done)
        reqs = []
        for i in range(done, done + k):
            extra = '"tags":["t1","t2"],"meta":{"team":"bench"},' if meta else ""
            body = (f'{{"address":"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}","port":8080,'
                    f'{extra}"ttl":"{ttl}"}}').encode()
            reqs.append((f"PUT /v1/services/{service}/instances/{prefix}{i} HTTP/1.1\r\nHost: b\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        s.sendall(b"".join(reqs))
        got = 0
        while got < k:
            d = s.recv(1 << 20)
            if not d:
                raise RuntimeError("registry closed the connection")
            buf += d
            got += buf.count(b"HTTP/1.1 200")
            buf = buf[buf.rfind(b"HTTP/1.1 200"):] if b"HTTP/1.1 200" in buf else buf
            # count complete responses by their status lines; keep the tail
            buf = b""
        done += k
    s.close()


def watcher_latency(port, nwatch, rounds):
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(nwatch):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /v1/watch?service=lat HTTP/1.1\r\nHost: b\r\n\r\n")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, {"buf": b""})
        socks.append(s)
    time.sleep(0.5)
    for key, _ in sel.select(timeout=1):  # drain the stream headers
        try:
            key.fileobj.recv(65536)
        except BlockingIOError:
            pass
    lat = []
    for r in range(rounds):
        marker = f"m{r}".encode()
        t0 = time.monotonic()
        http(port, "PUT", f"/v1/services/lat/instances/{marker.decode()}",
             b'{"address":"127.0.0.1","port":1}')
        seen = 0
        deadline = t0 + 5
        while seen < nwatch and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                try:
                    d = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                key.data["buf"] += d
                if marker in key.data["buf"]:
                    lat.append((time.monotonic() - t0) * 1000)
                    key.data["buf"] = b""
                    seen += 1
        if seen < nwatch:
            raise RuntimeError(f"round {r}: only {seen}/{nwatch} watchers saw the change")
        time.sleep(0.05)
    for s in socks:
        s.close()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], lat[-1]


def raise_fd_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the registry


def main():
    raise_fd_limit()
    ap = argparse.ArgumentParser()
    ap.add_argument("weft")
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=100000)
    a = ap.parse_args()
    port = B.free_port()
    srv = subprocess.Popen([a.weft, "registry", "--listen", f"127.0.0.1:{port}",
                            "--log-level", "warn"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        B.wait_port(port)
        pid = srv.pid
        n_hb = 1000
        register_many(port, "bench", n_hb, "i")
        env = dict(os.environ, WEFT_BENCH_INSTANCES=str(n_hb))
        res = {}
        for name, script, url in (("heartbeats", "heartbeat.lua", "/"),
                                  ("registrations", "register.lua", "/")):
            t0 = B.cpu_ticks(pid)
            out = subprocess.run(["wrk", "-t1", "-c32", f"-d{a.secs}s", "--latency", "-s",
                                  os.path.join(HERE, "lua", script),
                                  f"http://127.0.0.1:{port}{url}"], capture_output=True,
                                 text=True, env=env, timeout=a.secs + 30).stdout
            t1 = B.cpu_ticks(pid)
            reqs = int(out.split(" requests in")[0].split()[-1])
            non2xx = "Non-2xx" in out
            cpu_us = (t1 - t0) / B.CLK_TCK * 1e6 / max(reqs, 1)
            res[name] = (reqs / a.secs, cpu_us, non2xx)
        p50, p99, pmax = watcher_latency(port, a.watchers, 20)
        rss0 = B.rss_kb(pid)
        t0 = time.monotonic()
        register_many(port, "bare", a.instances, "b", meta=False)
        reg_secs = time.monotonic() - t0
        rss1 = B.rss_kb(pid)
        register_many(port, "mem", a.instances, "m")
        rss2 = B.rss_kb(pid)
        per_bare = (rss1 - rss0) * 1024 / a.instances
        per_inst = (rss2 - rss1) * 1024 / a.instances
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.kill()

    print(f"## Registry: weft registry (1 worker, wrk -t1 -c32 -d{a.secs}s, no CPU cap)")
    print()
    print("| measure | value | per core (1e6 / CPU-µs) |")
    print("|---|---:|---:|")
    for name in ("heartbeats", "registrations"):
        rps, cpu, bad = res[name]
        print(f"| {name}/s | {rps:.0f} | {1e6 / cpu:.0f} ({cpu:.2f} CPU-µs each)"
              f"{' NON-2xx SEEN' if bad else ''} |")
    print(f"| change → {a.watchers} SSE watchers, p50 / p99 / max (ms) | "
          f"{p50:.2f} / {p99:.2f} / {pmax:.2f} | |")
    print(f"| RSS per instance, {a.instances} without tags/meta (bytes) | {per_bare:.0f} | |")
    print(f"| RSS per instance, {a.instances} more with 2 tags + 1 meta pair (bytes) | "
          f"{per_inst:.0f} | |")
    print(f"| pipelined registration of {a.instances} instances | "
          f"{a.instances / reg_secs:.0f}/s | |")
    hb_core = 1e6 / res["heartbeats"][1]
    print()
    print(f"targets: >= 50,000 heartbeats/s on one core: {'MET' if hb_core >= 50000 else 'MISSED'} "
          f"({hb_core:.0f}); change-to-watcher p99 <= 50 ms with {a.watchers} watchers: "
          f"{'MET' if p99 <= 50 else 'MISSED'} ({p99:.1f} ms); <= 300 B per instance beyond "
          f"its metadata: {'MET' if per_bare <= 300 else 'MISSED'} ({per_bare:.0f} B without "
          f"tags/meta, history included)")


if __name__ == "__main__":
    main()
