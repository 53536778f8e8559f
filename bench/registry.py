#!/usr/bin/env python3
"""weft registry: heartbeats/s and registrations/s (wrk, CPU-µs per operation
from /proc), change-to-watcher latency with 1,000 concurrent SSE watchers,
and resident memory per instance at 100,000 instances; then, side by side
under the same CPU cap and wrk load, weft heartbeats vs etcd lease
keepalives (and weft with --store etcd://).

usage: bench/registry.py WEFT_BIN [--secs S] [--watchers N] [--instances N]
                         [--rounds N] [--cap PERCENT] [--only etcd]
"""
import argparse
import json
import os
import shutil
import tempfile
import urllib.request
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


def etcd_post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wrk_cpu(pids, script, port, secs, conns=32):
    """One wrk run; CPU-µs per request summed over pids."""
    t0 = [B.cpu_ticks(p) for p in pids]
    res = B.run_wrk(f"http://127.0.0.1:{port}/", conns=conns, secs=secs,
                    script=os.path.join(HERE, "lua", script))
    t1 = [B.cpu_ticks(p) for p in pids]
    cpu_s = sum(b - a for a, b in zip(t0, t1)) / B.CLK_TCK
    res["cpu_us"] = cpu_s * 1e6 / res["requests"] if res["requests"] else float("nan")
    return res


def etcd_side_by_side(weft, secs, rounds, cap, n=1000):
    """weft heartbeats vs etcd lease keepalives, same cap, same wrk load.

    etcd is a single member (etcd-server from Debian) with a temporary data
    directory; its keepalives go through etcd's own JSON gateway, the same
    HTTP/1.1 + JSON path weft's etcd store uses. Each server runs in its own
    cgroup with the same CPU quota; rounds alternate; medians."""
    etcd_bin = shutil.which("etcd")
    if not etcd_bin:
        raise RuntimeError("etcd not installed: run scripts/deps.sh")
    tmp = tempfile.mkdtemp(prefix="weft-bench-etcd-")
    cport, pport, wport, xport = (B.free_port() for _ in range(4))
    etcd = B.Server("etcd", [etcd_bin, "--name", "b", "--data-dir", os.path.join(tmp, "d"),
                             "--listen-client-urls", f"http://127.0.0.1:{cport}",
                             "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-cluster", f"b=http://127.0.0.1:{pport}",
                             "--log-level", "error"], cport, cap_percent=cap)
    mem = B.Server("weft-mem", [weft, "registry", "--listen", f"127.0.0.1:{wport}",
                                "--log-level", "warn"], wport, cap_percent=cap)
    viaetcd = B.Server("weft-etcd", [weft, "registry", "--listen", f"127.0.0.1:{xport}",
                                     "--store", f"etcd://127.0.0.1:{cport}/bench",
                                     "--log-level", "warn"], xport, cap_percent=cap)
    res = {"weft": [], "etcd": [], "weft+etcd": []}
    try:
        etcd.start()
        mem.start()
        viaetcd.start()
        register_many(wport, "bench", n, "i")
        leases = os.path.join(tmp, "leases")
        with open(leases, "w") as f:
            for _ in range(n):
                f.write(etcd_post(cport, "/v3/lease/grant", {"TTL": 600})["ID"] + "\n")
        os.environ["WEFT_BENCH_LEASES"] = leases
        os.environ["WEFT_BENCH_INSTANCES"] = str(n)
        deadline = time.monotonic() + 30
        while http(xport, "GET", "/v1/status").split(b" ")[1] != b"200":
            if time.monotonic() > deadline:
                raise RuntimeError("weft --store etcd:// did not load")
            time.sleep(0.1)
        register_many(xport, "bench", n, "i", meta=False)
        for _ in range(rounds):
            res["weft"].append(wrk_cpu([mem.pid], "heartbeat.lua", wport, secs))
            res["etcd"].append(wrk_cpu([etcd.pid], "etcd_keepalive.lua", cport, secs))
            res["weft+etcd"].append(wrk_cpu([viaetcd.pid, etcd.pid], "heartbeat.lua", xport, secs))
    finally:
        for srv in (viaetcd, mem, etcd):
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"## Registry heartbeats vs etcd lease keepalives ({cap}% CPU cap each, "
          f"wrk -t1 -c32 -d{secs}s, {rounds} rounds, medians)")
    print()
    print("| server | operations/s | p50 ms | p99 ms | CPU-µs per op | non-2xx / errors |")
    print("|---|---:|---:|---:|---:|---:|")
    med = {}
    for name, label in (("weft", "weft registry heartbeat (in memory)"),
                        ("etcd", "etcd 3.4 lease keepalive (its JSON gateway)"),
                        ("weft+etcd", "weft registry --store etcd:// heartbeat "
                                      "(CPU: weft + etcd)")):
        rs = res[name]
        med[name] = {k: B.median([r[k] for r in rs]) for k in ("rps", "p50", "p99", "cpu_us")}
        bad = sum(r["non2xx"] + r["errors"] for r in rs)
        m = med[name]
        print(f"| {label} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | "
              f"{m['cpu_us']:.1f} | {bad} |")
    print()
    print(f"ratio weft / etcd: {med['weft']['rps'] / med['etcd']['rps']:.1f}x operations/s, "
          f"{med['etcd']['cpu_us'] / med['weft']['cpu_us']:.1f}x less CPU per operation; "
          f"weft --store etcd:// / etcd: {med['weft+etcd']['rps'] / med['etcd']['rps']:.2f}x")


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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cap", type=int, default=25)
    ap.add_argument("--only", choices=["etcd"], help="only the etcd side-by-side part")
    a = ap.parse_args()
    if a.only == "etcd":
        etcd_side_by_side(a.weft, a.secs, a.rounds, a.cap)
        return
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
    print()
    etcd_side_by_side(a.weft, a.secs, a.rounds, a.cap)


if __name__ == "__main__":
    main()
