"""/metrics: counters that count exactly, a consistent histogram, process
metrics, promtool's verdict, and merging across workers."""
import subprocess
import threading
import time

from weftutil import Reader, connect, get, parse_metrics, request_bytes, scrape

REQ = "weft_http_requests_total"
HIST = "weft_http_request_duration_seconds"


def code(c):
    return (REQ, f'{{code="{c}"}}')


def test_requests_total_counts_exactly(weft):
    w = weft(workers=1)
    ms = Reader(connect(w.port))  # one keep-alive connection for scrapes
    m0 = scrape(w.port, ms)
    s = connect(w.port)
    rd = Reader(s)
    n_ok, n_404, n_405 = 37, 5, 3
    for i in range(n_ok):
        s.sendall(request_bytes("GET", f"/hello?name={i}"))
        assert rd.read_response().status == 200
    for _ in range(n_404):
        s.sendall(request_bytes("GET", "/missing"))
        assert rd.read_response().status == 404
    for _ in range(n_405):
        s.sendall(request_bytes("DELETE", "/hello"))
        assert rd.read_response().status == 405
    s.close()
    m1 = scrape(w.port, ms)
    # the first scrape is counted once it has been answered, i.e. in m1
    assert m1[code("2xx")] - m0[code("2xx")] == n_ok + 1
    assert m1[code("4xx")] - m0[code("4xx")] == n_404 + n_405
    for c in ("1xx", "3xx", "5xx", "other"):
        assert m1[code(c)] == m0[code(c)]
    # idempotent: a scrape sees exactly one more 2xx (the previous scrape)
    m2 = scrape(w.port, ms)
    assert m2[code("2xx")] - m1[code("2xx")] == 1
    ms.sock.close()


def test_histogram_consistent(shared_weft):
    for i in range(25):
        get(shared_weft.port, "/hello")
    get(shared_weft.port, "/delay?ms=30")
    m = scrape(shared_weft.port)
    total = sum(v for (name, _), v in m.items() if name == REQ)
    count = m[(HIST + "_count", "")]
    assert count == total, (count, total)
    buckets = sorted(((float(lbl.split('"')[1]), v) for (name, lbl), v in m.items()
                      if name == HIST + "_bucket"), key=lambda x: x[0])
    assert buckets[-1][0] == float("inf")
    assert buckets[-1][1] == count
    vals = [v for _, v in buckets]
    assert vals == sorted(vals), "bucket counts must be cumulative"
    assert m[(HIST + "_sum", "")] >= 0.03  # includes the 30 ms /delay
    # the 30 ms /delay lands above the 25 ms bucket boundary
    le = dict(buckets)
    assert le[0.025] < count


def test_process_metrics(shared_weft):
    r = get(shared_weft.port, "/metrics")
    assert r.status == 200
    assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    text = r.body.decode()
    assert "# TYPE process_resident_memory_bytes gauge" in text
    m = parse_metrics(text)
    rss = m[("process_resident_memory_bytes", "")]
    proc_rss = shared_weft.rss_kib() * 1024
    assert rss > 1e6
    assert 0.5 < rss / proc_rss < 2.0, (rss, proc_rss)
    assert m[("process_open_fds", "")] >= 3
    start = m[("process_start_time_seconds", "")]
    assert abs(start - time.time()) < 3600
    assert m[("weft_http_connections", "")] >= 1


def test_promtool_check_metrics(shared_weft):
    for _ in range(3):
        get(shared_weft.port, "/hello")
    get(shared_weft.port, "/nope")
    body = get(shared_weft.port, "/metrics").body
    p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                       timeout=30)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 0, out
    assert "error" not in out.lower(), out


def test_workers_merge_counts(weft):
    w = weft(workers=4)
    m0 = scrape(w.port)
    n_threads, per = 8, 40
    errors = []

    def worker():
        for _ in range(per):
            try:
                r = get(w.port, "/hello")  # a new connection each time
                if r.status != 200:
                    errors.append(r)
            except OSError as e:
                errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:3]
    m1 = scrape(w.port)
    n = n_threads * per
    assert m1[code("2xx")] - m0[code("2xx")] == n + 1
    assert m1[("weft_http_connections_total", "")] - m0[("weft_http_connections_total", "")] \
        == n + 1
    assert m1[(HIST + "_count", "")] - m0[(HIST + "_count", "")] == n + 1


def test_connections_gauge(weft):
    w = weft(workers=2)
    ms = Reader(connect(w.port))
    # a fresh server: once the start-up probe's connection is gone, only
    # the scrape connection is open
    deadline = time.monotonic() + 5
    while scrape(w.port, ms)[("weft_http_connections", "")] != 1:
        assert time.monotonic() < deadline, "connections gauge never settled at 1"
        time.sleep(0.05)
    g0 = 1
    conns = []
    for _ in range(5):
        s = connect(w.port)
        s.sendall(request_bytes("GET", "/health"))
        assert Reader(s).read_response().status == 200
        conns.append(s)
    assert scrape(w.port, ms)[("weft_http_connections", "")] == g0 + 5
    for s in conns:
        s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if scrape(w.port, ms)[("weft_http_connections", "")] == g0:
            break
        time.sleep(0.05)
    assert scrape(w.port, ms)[("weft_http_connections", "")] == g0
    ms.sock.close()
