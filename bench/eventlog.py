#!/usr/bin/env python3
"""weft log vs Redis Streams: produce throughput, fsync'd produce latency and
consume throughput, with the disk's own limits measured in the same run.

Both servers run under the same cgroup CPU cap (benchlib.CpuCap), with a
fresh data directory per measurement on the same filesystem. Load:
- weft log: bench/kprod.c (weft-bench-kprod, librdkafka), C clients, each
  its own producer instance and connection, one topic of one partition
  (fsync: always, the default). acks=all is acknowledged after fdatasync
  (group commit); acks=1 once the batch is in the page cache.
- Redis: redis-benchmark, the same C clients, each pipelining P XADDs to
  one stream (`XADD s * f <payload>`), redis-server with --appendonly yes
  and --appendfsync always (the acks=all analog) or everysec (acks=1).
- Disk: dd oflag=dsync with 4 KiB writes (flush latency) and dd bs=1M
  conv=fdatasync (sequential write MB/s) in the same directory.
- fsync'd produce latency: one client, one 100-byte record every 2 ms,
  i.e. 500 records/s, against weft log (kprod -r, linger.ms 0,
  acks=all, and acks=1 as the no-fsync baseline) and Redis (appendfsync
  always, a paced RESP client below). kprod also reports librdkafka's own
  histograms for the run (time in its producer queue, time until its broker
  thread sends, request round trip) and the broker its produce-duration
  histogram, so the delivery latency splits into client and broker shares.
  The rate is low enough that neither
  server is CPU-bound under the cap: on this VM kind one fdatasync costs
  ~100 CPU-µs, so a flush per record at 2,000/s exceeds a 25 % quota.
- Consume: kprod reading the 1 KB topic from offset 0 (weft log); for
  Redis, `XRANGE s - + COUNT 1000` over the same stream (records/s =
  replies/s x 1000).
- The acks=1 1 KB run once more without the cap, for the disk-bandwidth
  target (the cap is a device for comparing servers; it binds weft's 1 KB
  writes, which are mostly the kernel's copy into the page cache).
Rounds alternate which server goes first; medians are reported. CPU-µs
per record is the server's utime+stime (all threads, /proc) over records.

usage: bench/eventlog.py WEFT_BIN [--kprod PATH] [--rounds N] [--cap PCT]
                         [--clients C] [--pipeline P] [--dir DIR] [--quick]
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

SIZES = (100, 1024)


def kv(line):
    return {k: v for k, v in (p.split("=", 1) for p in line.split() if "=" in p)}


def num(d, keys):
    return {k: float(d[k]) for k in keys if k in d}


def run(cmd, timeout):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... exited {p.returncode}: "
                           f"{p.stderr.strip()[-400:]}")
    return p.stdout


def dd(args):
    p = subprocess.run(["dd", *args], capture_output=True, text=True, timeout=300)
    m = re.search(r"^(\d+) bytes.*copied, ([\d.]+) s", p.stderr, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"dd failed: {p.stderr.strip()}")
    return int(m.group(1)), float(m.group(2))


def disk(where, quick):
    """Flush latency (µs per 4 KiB O_DSYNC write) and sequential MB/s."""
    f = os.path.join(where, "dd.bin")
    count = 300 if quick else 1000
    _, secs = dd(["if=/dev/zero", f"of={f}", "bs=4k", f"count={count}", "oflag=dsync"])
    flush_us = secs / count * 1e6
    # dd gives the mean; the tail of the same flushes, for the p99 target
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    block, lat = b"\0" * 4096, []
    try:
        for _ in range(count):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e6)
    finally:
        os.close(fd)
    lat.sort()
    mb = 512 if quick else 1024  # smaller runs end in the host's write cache
    nbytes, secs = dd(["if=/dev/zero", f"of={f}", "bs=1M", f"count={mb}", "conv=fdatasync"])
    os.unlink(f)
    return {"flush_us": flush_us, "flush_p50_us": lat[len(lat) // 2],
            "flush_p99_us": lat[int(len(lat) * 0.99)], "seq_mbps": nbytes / secs / 1e6}


class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="weft-bench-log-", dir=a.dir)

    def fresh(self, name):
        d = os.path.join(self.tmp, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    # --- weft log -------------------------------------------------------
    def weft(self, size, acks, n, consume=False, cap=True):
        a = self.a
        port = B.free_port()
        data = self.fresh("weft")
        srv = B.Server("log", [a.weft, "log", "--listen", f"127.0.0.1:{port}", "--data", data,
                               "--log-level", "warn"], port, cap_percent=a.cap if cap else None)
        try:
            srv.start()
            boot = f"127.0.0.1:{port}"
            t0 = B.cpu_ticks(srv.pid)
            out = run([a.kprod, "produce", "-b", boot, "-t", "bench", "-n", str(n),
                       "-s", str(size), "-a", acks, "-c", str(a.clients)], timeout=300)
            t1 = B.cpu_ticks(srv.pid)
            res = num(kv(out), ("rps", "mbps", "p50_us", "p99_us", "secs"))
            res["cpu_us"] = (t1 - t0) / B.CLK_TCK * 1e6 / n
            if consume:
                t0 = B.cpu_ticks(srv.pid)
                out = run([a.kprod, "consume", "-b", boot, "-t", "bench", "-n", str(n)],
                          timeout=300)
                t1 = B.cpu_ticks(srv.pid)
                c = num(kv(out), ("rps", "mbps"))
                res["consume_rps"] = c["rps"]
                res["consume_mbps"] = c["mbps"]
                res["consume_cpu_us"] = (t1 - t0) / B.CLK_TCK * 1e6 / n
        finally:
            srv.stop()
            shutil.rmtree(data, ignore_errors=True)
        return res

    def weft_latency(self, acks, rate, secs):
        a = self.a
        port, hport = B.free_port(), B.free_port()
        data = self.fresh("weft")
        srv = B.Server("log", [a.weft, "log", "--listen", f"127.0.0.1:{port}", "--data", data,
                               "--http", f"127.0.0.1:{hport}", "--log-level", "warn"], port,
                       cap_percent=a.cap)
        try:
            srv.start()
            c0 = B.cpu_ticks(srv.pid)
            out = run([a.kprod, "produce", "-b", f"127.0.0.1:{port}", "-t", "lat",
                       "-n", str(int(rate * secs)), "-s", "100", "-a", acks, "-c", "1",
                       "-l", "0", "-r", str(rate)], timeout=300)
            cpu = (B.cpu_ticks(srv.pid) - c0) / B.CLK_TCK * 1e6 / int(rate * secs)
            broker = broker_quantiles(hport, (0.5, 0.99))
        finally:
            srv.stop()
            shutil.rmtree(data, ignore_errors=True)
        return dict(num(kv(out), ("p50_us", "p99_us", "max_us", "rps", "int_p50_us",
                                  "int_p99_us", "outbuf_p50_us", "outbuf_p99_us",
                                  "rtt_p50_us", "rtt_p99_us")), cpu_us=cpu,
                    broker_p50_us=broker[0], broker_p99_us=broker[1])

    # --- Redis ----------------------------------------------------------
    def redis_server(self, fsync):
        port = B.free_port()
        data = self.fresh("redis")
        srv = B.Server("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--dir", data, "--appendonly", "yes", "--appendfsync", fsync,
                                 "--save", "", "--daemonize", "no", "--loglevel", "warning"],
                       port, cap_percent=self.a.cap)
        srv.start()
        return srv, data

    def redis_bench(self, port, n, clients, pipeline, *cmd):
        out = run(["redis-benchmark", "-p", str(port), "-n", str(n), "-c", str(clients),
                   "-P", str(pipeline), "--precision", "3", "--csv", *cmd], timeout=300)
        rows = [r for r in out.splitlines() if r.startswith('"') and not r.startswith('"test"')]
        f = [x.strip('"') for x in rows[-1].split('","')]
        return {"rps": float(f[1]), "p50_us": float(f[4]) * 1000, "p99_us": float(f[6]) * 1000}

    def redis(self, size, fsync, n, consume=False):
        a = self.a
        srv, data = self.redis_server(fsync)
        try:
            payload = "x" * size
            t0 = B.cpu_ticks(srv.pid)
            res = self.redis_bench(srv.port, n, a.clients, a.pipeline, "XADD", "s", "*", "f",
                                   payload)
            t1 = B.cpu_ticks(srv.pid)
            res["mbps"] = res["rps"] * size / 1e6
            # redis-benchmark rounds the count up to whole pipelines
            got = int(run(["redis-cli", "-p", str(srv.port), "XLEN", "s"], timeout=30))
            if not n <= got <= n + a.clients * a.pipeline:
                raise RuntimeError(f"redis: XLEN {got}, expected {n}")
            res["cpu_us"] = (t1 - t0) / B.CLK_TCK * 1e6 / got
            if consume:
                reqs = max(n // 1000, 20)
                t0 = B.cpu_ticks(srv.pid)
                c = self.redis_bench(srv.port, reqs, 1, 1, "XRANGE", "s", "-", "+", "COUNT",
                                     "1000")
                t1 = B.cpu_ticks(srv.pid)
                res["consume_rps"] = c["rps"] * 1000
                res["consume_mbps"] = c["rps"] * 1000 * size / 1e6
                res["consume_cpu_us"] = (t1 - t0) / B.CLK_TCK * 1e6 / (reqs * 1000)
        finally:
            srv.stop()
            shutil.rmtree(data, ignore_errors=True)
        return res

    def redis_latency(self, rate, secs):
        """One connection, one XADD at a time, paced at rate (as kprod -r)."""
        srv, data = self.redis_server("always")
        try:
            cmd = resp("XADD", "s", "*", "f", "x" * 100)
            sock = socket.create_connection(("127.0.0.1", srv.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            n, lat = int(rate * secs), []
            c0 = B.cpu_ticks(srv.pid)
            t0 = time.perf_counter()
            for i in range(n):
                due = t0 + i / rate
                while (now := time.perf_counter()) < due:
                    time.sleep(due - now)
                sock.sendall(cmd)
                buf = b""
                while not reply_complete(buf):
                    d = sock.recv(4096)
                    if not d:
                        raise RuntimeError("redis closed the connection")
                    buf += d
                if not buf.startswith(b"$"):
                    raise RuntimeError(f"redis: XADD answered {buf[:80]!r}")
                lat.append((time.perf_counter() - now) * 1e6)
            cpu = (B.cpu_ticks(srv.pid) - c0) / B.CLK_TCK * 1e6 / n
            sock.close()
        finally:
            srv.stop()
            shutil.rmtree(data, ignore_errors=True)
        lat.sort()
        return {"p50_us": lat[n // 2], "p99_us": lat[int(n * 0.99)], "max_us": lat[-1],
                "cpu_us": cpu}


def broker_quantiles(http_port, qs):
    """Upper bounds (µs) of the buckets holding quantiles qs of the broker's own
    produce durations (weft_log_request_duration_seconds{api="produce"}: read to
    response complete), so client and broker time can be told apart."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    rows = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r'weft_log_request_duration_seconds_bucket\{api="produce",le="([^"+]+)"\} (\S+)', text)]
    total = float(re.search(r'weft_log_request_duration_seconds_count\{api="produce"\} (\S+)',
                            text).group(1))
    out = []
    for q in qs:
        le = next((b for b, c in rows if total and c >= q * total), float("inf"))
        out.append(le * 1e6)
    return out


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for x in args:
        b = x.encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


def reply_complete(buf):
    """A whole RESP simple/error/bulk reply (all XADD can answer)."""
    head = buf.find(b"\r\n")
    if head < 0:
        return False
    if buf[:1] != b"$":
        return True
    size = int(buf[1:head])
    return size < 0 or len(buf) >= head + 2 + size + 2


def med(rows, key):
    return B.median([r.get(key, float("nan")) for r in rows])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weft")
    ap.add_argument("--kprod", help="weft-bench-kprod (default: next to WEFT_BIN)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cap", type=float, default=25.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--pipeline", type=int, default=64)
    ap.add_argument("--dir", default=None, help="where data lives (default: the temp dir)")
    ap.add_argument("--quick", action="store_true", help="1 round, a quarter of the records")
    a = ap.parse_args()
    a.kprod = a.kprod or os.path.join(os.path.dirname(os.path.abspath(a.weft)),
                                      "weft-bench-kprod")
    if not os.access(a.kprod, os.X_OK):
        print(f"## weft log: skipped ({a.kprod} not built: librdkafka-dev missing?)")
        return
    for tool in ("redis-server", "redis-benchmark", "redis-cli", "dd"):
        if not B.have(tool):
            print(f"## weft log: skipped ({tool} not installed: run scripts/deps.sh)")
            return
    if a.quick:
        a.rounds = 1
    scale = 4 if a.quick else 1
    # records per run: 1-3 s each at the capped rates seen on 2 cores
    records = {("weft", 100): 2000000 // scale, ("weft", 1024): 500000 // scale,
               ("redis", 100): 200000 // scale, ("redis", 1024): 80000 // scale}
    # low enough that neither server is CPU-bound under the cap: on this VM kind an
    # fdatasync costs ~100 CPU-µs, so one flush per record at 2,000/s exceeds 25%
    lat_rate, lat_secs = 500, (2 if a.quick else 10)  # 5,000 records: p99 = 50th worst

    bench = Bench(a)
    cases = [(s, m) for s in SIZES for m in ("acks1", "acksall")]
    res = {(srv, s, m): [] for srv in ("weft", "redis") for s, m in cases}
    res["nocap"] = []
    disks, lat = [], {"weft1": [], "weftall": [], "redis": []}
    try:
        for r in range(a.rounds):
            disks.append(disk(bench.tmp, a.quick))
            d = disks[-1]
            print(f"  round {r + 1} disk: flush {d['flush_us']:.0f} µs (fdatasync p50/p99 "
                  f"{d['flush_p50_us']:.0f}/{d['flush_p99_us']:.0f}), sequential "
                  f"{d['seq_mbps']:.0f} MB/s", flush=True)
            order = ("weft", "redis") if r % 2 == 0 else ("redis", "weft")
            for size, mode in cases:
                consume = size == 1024 and mode == "acks1"
                for srv in order:
                    n = records[(srv, size)]
                    if srv == "weft":
                        x = bench.weft(size, "1" if mode == "acks1" else "all", n, consume)
                    else:
                        x = bench.redis(size, "everysec" if mode == "acks1" else "always", n,
                                        consume)
                    res[(srv, size, mode)].append(x)
                    print(f"  round {r + 1} {srv:5s} {size:4d} B {mode:7s}: "
                          f"{x['rps']:>9.0f} rec/s {x['mbps']:7.1f} MB/s  "
                          f"{x['cpu_us']:.2f} CPU-µs/rec  p99 {x['p99_us'] / 1000:.1f} ms"
                          + (f"  consume {x['consume_rps']:.0f} rec/s "
                             f"{x['consume_cpu_us']:.2f} CPU-µs/rec" if consume else ""),
                          flush=True)
            # the disk target again without the cap: is the write path, not the
            # quota, what limits acks=1? (kprod still shares the 2 cores)
            x = bench.weft(1024, "1", records[("weft", 1024)], cap=False)
            res["nocap"].append(x)
            print(f"  round {r + 1} weft  1024 B acks1 no cap: {x['rps']:>9.0f} rec/s "
                  f"{x['mbps']:7.1f} MB/s  {x['cpu_us']:.2f} CPU-µs/rec", flush=True)
            for srv in order:
                if srv == "weft":
                    lat["weftall"].append(bench.weft_latency("all", lat_rate, lat_secs))
                    lat["weft1"].append(bench.weft_latency("1", lat_rate, lat_secs))
                else:
                    lat["redis"].append(bench.redis_latency(lat_rate, lat_secs))
            print(f"  round {r + 1} latency p50/p99 µs: weft acks=all "
                  f"{lat['weftall'][-1]['p50_us']:.0f}/{lat['weftall'][-1]['p99_us']:.0f} "
                  f"(in the broker ≤ {lat['weftall'][-1]['broker_p50_us']:.0f}/"
                  f"{lat['weftall'][-1]['broker_p99_us']:.0f}), "
                  f"weft acks=1 {lat['weft1'][-1]['p50_us']:.0f}/"
                  f"{lat['weft1'][-1]['p99_us']:.0f}, redis always "
                  f"{lat['redis'][-1]['p50_us']:.0f}/{lat['redis'][-1]['p99_us']:.0f}",
                  flush=True)
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    report(a, disks, res, cases, lat, lat_rate)


def report(a, disks, res, cases, lat, lat_rate):
    flush_us = med(disks, "flush_us")
    seq = med(disks, "seq_mbps")
    print()
    print(f"## weft log vs Redis Streams ({a.clients} clients each, Redis pipeline "
          f"{a.pipeline}, CPU cap {a.cap:.0f}% of one core per server, "
          f"{a.rounds} round{'s' if a.rounds > 1 else ''}, medians)")
    print()
    print(f"Disk, same filesystem: flush latency {flush_us:.0f} µs per 4 KiB O_DSYNC write (dd; "
          f"fdatasync p50 {med(disks, 'flush_p50_us'):.0f} µs, p99 "
          f"{med(disks, 'flush_p99_us'):.0f} µs); sequential write {seq:.0f} MB/s (dd, 1 MiB, "
          f"fdatasync).")
    print()
    print("| produce | weft log rec/s | MB/s | CPU-µs/rec | Redis rec/s | MB/s | CPU-µs/rec "
          "| weft/Redis |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    label = {"acks1": ("acks=1", "everysec"), "acksall": ("acks=all (fsync)", "always")}
    ratio = {}
    for size, mode in cases:
        w = {k: med(res[("weft", size, mode)], k) for k in ("rps", "mbps", "cpu_us")}
        rd = {k: med(res[("redis", size, mode)], k) for k in ("rps", "mbps", "cpu_us")}
        ratio[(size, mode)] = w["rps"] / rd["rps"]
        wl, rl = label[mode]
        print(f"| {size} B, {wl} vs appendfsync {rl} | {w['rps']:.0f} | {w['mbps']:.1f} | "
              f"{w['cpu_us']:.2f} | {rd['rps']:.0f} | {rd['mbps']:.1f} | {rd['cpu_us']:.2f} | "
              f"{ratio[(size, mode)]:.2f}x |")
    nc = res["nocap"]
    print(f"| 1024 B, acks=1, weft log without the CPU cap | {med(nc, 'rps'):.0f} | "
          f"{med(nc, 'mbps'):.1f} | {med(nc, 'cpu_us'):.2f} | | | | |")
    cw = res[("weft", 1024, "acks1")]
    cr = res[("redis", 1024, "acks1")]
    print(f"| consume 1 KB from the start (Redis: XRANGE COUNT 1000) | "
          f"{med(cw, 'consume_rps'):.0f} | {med(cw, 'consume_mbps'):.1f} | "
          f"{med(cw, 'consume_cpu_us'):.2f} | {med(cr, 'consume_rps'):.0f} | "
          f"{med(cr, 'consume_mbps'):.1f} | {med(cr, 'consume_cpu_us'):.2f} | "
          f"{med(cw, 'consume_rps') / med(cr, 'consume_rps'):.2f}x |")
    print()
    print(f"| produce latency, 100 B, 1 client, one record every {1000 / lat_rate:g} ms "
          f"({lat_rate} rec/s) | p50 µs | p99 µs | max µs | server CPU-µs/rec |")
    print("|---|---:|---:|---:|---:|")
    for key, text in (("weftall", "weft log acks=all (fsync), linger.ms 0"),
                      ("weft1", "weft log acks=1 (no fsync wait), linger.ms 0"),
                      ("redis", "Redis XADD, appendfsync always")):
        print(f"| {text} | {med(lat[key], 'p50_us'):.0f} | {med(lat[key], 'p99_us'):.0f} | "
              f"{med(lat[key], 'max_us'):.0f} | {med(lat[key], 'cpu_us'):.0f} |")
        if key != "redis":  # where the time goes: librdkafka's and the broker's histograms
            print(f"| ↳ librdkafka: waiting in the producer queue (int_latency) | "
                  f"{med(lat[key], 'int_p50_us'):.0f} | {med(lat[key], 'int_p99_us'):.0f} | | |")
            print(f"| ↳ librdkafka: built, waiting for its broker thread to send "
                  f"(outbuf_latency) | {med(lat[key], 'outbuf_p50_us'):.0f} | "
                  f"{med(lat[key], 'outbuf_p99_us'):.0f} | | |")
            print(f"| ↳ librdkafka: produce request sent → response read (rtt) | "
                  f"{med(lat[key], 'rtt_p50_us'):.0f} | {med(lat[key], 'rtt_p99_us'):.0f} | | |")
            print(f"| ↳ inside the broker (read → response complete; bucket upper bounds) | "
                  f"≤ {med(lat[key], 'broker_p50_us'):.0f} | ≤ {med(lat[key], 'broker_p99_us'):.0f} "
                  f"| | |")
    for size in SIZES:
        x = res[("weft", size, "acksall")]
        print(f"| weft log acks=all under the {size} B throughput load ({a.clients} clients, "
              f"linger.ms 5; mostly time queued in the client) | {med(x, 'p50_us'):.0f} | "
              f"{med(x, 'p99_us'):.0f} | | |")
    print()
    t1 = min(ratio[(s, "acksall")] for s in SIZES)
    w1k = med(res[("weft", 1024, "acks1")], "mbps")
    w1n = med(res["nocap"], "mbps")
    wp99 = med(lat["weftall"], "p99_us")
    t3 = wp99 / flush_us

    def verdict(ok):
        return "MET" if ok else "MISSED"
    print(f"targets: acks=all (fsync) throughput >= 5x Redis appendfsync always: "
          f"{verdict(t1 >= 5)} ({ratio[(100, 'acksall')]:.1f}x at 100 B, "
          f"{ratio[(1024, 'acksall')]:.1f}x at 1 KB); acks=1 with 1 KB records >= 50% of "
          f"sequential write bandwidth: {verdict(w1n >= 0.5 * seq)} without the CPU cap "
          f"({w1n:.0f} of {seq:.0f} MB/s = {w1n / seq * 100:.0f}%; {w1k / seq * 100:.0f}% under "
          f"the {a.cap:.0f}% cap); fsync'd produce p99 <= 3 flush latencies: "
          f"{verdict(t3 <= 3)} ({wp99:.0f} µs = {t3:.1f}x the dd flush latency of "
          f"{flush_us:.0f} µs; {wp99 / med(disks, 'flush_p99_us'):.1f}x the fdatasync p99; "
          f"produce request rtt p99 {med(lat['weftall'], 'rtt_p99_us'):.0f} µs = "
          f"{med(lat['weftall'], 'rtt_p99_us') / flush_us:.1f}x)")


if __name__ == "__main__":
    main()
