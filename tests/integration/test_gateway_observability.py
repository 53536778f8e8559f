"""weft gateway observability: /metrics (promtool, exact counters) and the
JSON access log."""
import json
import re
import subprocess
import time

from gwutil import (Client, closed_port, gateway, metric, origins, parallel,  # noqa: F401
                    wait_until)


def cfg(o, dead_port, top=""):
    return f"""{top}
clusters:
  api:
    endpoints: [{o.addr}]
    outlier_detection: false
    circuit_breaker: false
  dead:
    endpoints: [127.0.0.1:{dead_port}]
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: hello
    match: {{path: /hello}}
    direct: {{status: 200, body: "hi"}}
  - name: moved
    match: {{path: /moved}}
    redirect: {{location: /hello, status: 301}}
  - name: dead
    match: {{prefix: /dead}}
    cluster: dead
    retry: false
  - name: api
    match: {{prefix: /api}}
    cluster: api
"""


def test_metrics_pass_promtool(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o, closed_port()))
    with Client(g.port) as c:
        for t in ("/api/a", "/api/b", "/hello", "/moved", "/dead/x", "/nothing"):
            c.get(t)
    body = g.admin_get("/metrics").body
    p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                       timeout=30)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 0, out
    text = body.decode()
    for name in ("weft_gateway_requests_total", "weft_gateway_request_duration_seconds",
                 "weft_gateway_upstream_responses_total", "weft_gateway_retries_total",
                 "weft_gateway_retry_budget_exhausted_total",
                 "weft_gateway_breaker_rejections_total", "weft_gateway_ejections_total",
                 "weft_gateway_overload_rejections_total",
                 "weft_gateway_health_check_failures_total"):
        assert re.search(rf"^# TYPE {name} ", text, re.M), name


def test_requests_total_counts_exactly(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o, closed_port()))
    m0 = g.metrics()
    n_api, n_dead, n_hello, n_moved = 37, 3, 4, 2
    with Client(g.port) as c:
        for i in range(n_api):
            assert c.get(f"/api/{i}").status == 200
        for _ in range(n_dead):
            assert c.get("/dead/x").status == 502
        for _ in range(n_hello):
            assert c.get("/hello").status == 200
        for _ in range(n_moved):
            assert c.get("/moved").status == 301
    m1 = g.metrics()

    def d(route, code):
        return (metric(m1, "weft_gateway_requests_total", route=route, code=code) -
                metric(m0, "weft_gateway_requests_total", route=route, code=code))

    assert d("api", "2xx") == n_api
    assert d("dead", "5xx") == n_dead
    assert d("hello", "2xx") == n_hello
    assert d("moved", "3xx") == n_moved
    for route in ("api", "dead", "hello", "moved"):
        total = sum(d(route, c) for c in ("other", "1xx", "2xx", "3xx", "4xx", "5xx"))
        assert total == {"api": n_api, "dead": n_dead, "hello": n_hello,
                         "moved": n_moved}[route], route
    hist = metric(m1, "weft_gateway_request_duration_seconds_count", route="api")
    assert hist == n_api
    assert o.count() == n_api


def test_broken_request_body_is_counted(gateway, origins):
    """A request whose chunked body breaks (a malformed chunk size) ends as
    400: it is counted in the request metrics and logged, like every
    other request."""
    o, = origins(1)
    g = gateway(cfg(o, closed_port()))
    m0 = g.metrics()
    with Client(g.port) as c:
        r = c.request("POST", "/api/x", [("Transfer-Encoding", "chunked")], b"5\r\nhello\r\nzz\r\n")
    assert r.status == 400, r

    def counted():
        m1 = g.metrics()
        return (metric(m1, "weft_gateway_requests_total", route="api", code="4xx") -
                metric(m0, "weft_gateway_requests_total", route="api", code="4xx"))
    wait_until(lambda: counted() == 1, timeout=5)


def test_upstream_responses_total(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o, closed_port()))
    with Client(g.port) as c:
        for _ in range(6):
            assert c.get("/api/ok").status == 200
        o.set_mode("status", status=503)
        for _ in range(4):
            assert c.get("/api/fail").status == 503
    m = g.metrics()
    assert metric(m, "weft_gateway_upstream_responses_total", cluster="api", code="2xx") == 6
    assert metric(m, "weft_gateway_upstream_responses_total", cluster="api", code="5xx") == 4


ACCESS_FIELDS = {"request_id", "route", "method", "path", "client", "cluster", "upstream",
                 "status", "attempts", "duration_ms", "upstream_ms", "error"}


def no_dup_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in a JSON log line: {keys}"
    return dict(pairs)


def access_lines(g):
    out = []
    for line in g.stderr.splitlines():
        if '"msg":"access"' in line:
            out.append(json.loads(line, object_pairs_hook=no_dup_keys))
    return out


def test_access_log_json_lines(gateway, origins):
    o, = origins(1)
    dead = closed_port()
    g = gateway(cfg(o, dead, top="access_log: true"), log_format="json")
    ids = []
    with Client(g.port) as c:
        for i in range(10):
            r = c.get(f"/api/item/{i}?q=1")
            assert r.status == 200
            ids.append(r.header("X-Request-Id"))
        r = c.get("/dead/x", [("X-Request-Id", "dead-req-1")])
        assert r.status == 502
        ids.append("dead-req-1")
        # lines are buffered up to one second
        wait_until(lambda: len(access_lines(g)) >= 11, 1.6, what="access log flush")
        time.sleep(0.2)
        lines = access_lines(g)
        assert len(lines) == 11, lines
        for i, ln in enumerate(lines[:10]):
            assert ACCESS_FIELDS <= set(ln), ln
            assert ln["level"] == "info"
            assert ln["request_id"] == ids[i]
            assert ln["route"] == "api" and ln["method"] == "GET"
            assert ln["path"] == f"/api/item/{i}"
            assert re.fullmatch(r"127\.0\.0\.1:\d+", ln["client"]), ln
            assert ln["cluster"] == "api" and ln["upstream"] == o.addr
            assert ln["status"] == 200 and ln["attempts"] == 1 and ln["error"] == ""
            assert 0 <= ln["upstream_ms"] <= ln["duration_ms"] < 1000
        ln = lines[10]
        assert ln["request_id"] == "dead-req-1" and ln["route"] == "dead"
        assert ln["status"] == 502 and ln["attempts"] == 1
        assert ln["upstream"] == f"127.0.0.1:{dead}" and ln["error"], ln
        # five more, then SIGTERM: the exit flushes what is buffered
        for i in range(5):
            assert c.get("/api/last").status == 200
    assert g.stop() == 0
    lines = access_lines(g)
    assert len(lines) == 16, lines
    assert [ln["path"] for ln in lines[11:]] == ["/api/last"] * 5


def test_access_log_covers_direct_and_redirect(gateway, origins):
    """"one line per request": answers from direct and redirect routes too."""
    o, = origins(1)
    g = gateway(cfg(o, closed_port(), top="access_log: true"), log_format="json")
    with Client(g.port) as c:
        assert c.get("/hello").status == 200
        assert c.get("/moved").status == 301
        assert c.get("/api/x").status == 200
    assert g.stop() == 0
    lines = access_lines(g)
    assert [(ln["route"], ln["status"]) for ln in lines] == [
        ("hello", 200), ("moved", 301), ("api", 200)], lines


def test_metrics_merge_across_workers(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o, closed_port()), workers=3)
    n = 300
    rs = parallel(g.port, n, concurrency=12, target="/api/w")
    assert all(r.status == 200 for r in rs)
    m = g.metrics()
    assert metric(m, "weft_gateway_requests_total", route="api", code="2xx") == n
    assert metric(m, "weft_gateway_request_duration_seconds_count", route="api") == n
    assert o.count() == n


def test_route_and_cluster_names_that_need_escaping_in_metrics(gateway, origins):
    """Route and cluster names are label values: a quote or backslash in one
    is escaped, a long one is kept whole, and a series the registry cannot
    take (it is full) is left out (was: their registration failed silently
    and every update for them went to series 0, weft_http_requests_total,
    through a histogram write into its neighbours' slots)."""
    o, = origins(1)
    long_name = "r" * 300
    # enough routes (each a histogram and 9 counters) to fill the registry
    filler = "".join(f"""
  - name: f{i}
    match: {{path: /f{i}}}
    direct: {{status: 204}}""" for i in range(400))
    g = gateway(f"""
clusters:
  'a"b\\c':
    endpoints: [{o.addr}]
routes:
  - name: 'q"x\\y'
    match: {{prefix: /api}}
    cluster: 'a"b\\c'
  - name: {long_name}
    match: {{path: /long}}
    direct: {{status: 200, body: "long"}}{filler}
  - name: last
    match: {{path: /last}}
    direct: {{status: 200, body: "last"}}
""")
    m0 = g.metrics()
    n = 7
    with Client(g.port) as c:
        for _ in range(n):
            assert c.get("/api/x").status == 200
            assert c.get("/long").status == 200
            assert c.get("/last").status == 200
    body = g.admin_get("/metrics").body
    p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                       timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()
    text = body.decode()
    assert f'weft_gateway_requests_total{{route="q\\"x\\\\y",code="2xx"}} {n}' in text, text
    assert f'weft_gateway_upstream_responses_total{{cluster="a\\"b\\\\c",code="2xx"}} {n}' in text
    assert f'weft_gateway_requests_total{{route="{long_name}",code="2xx"}} {n}' in text
    m1 = g.metrics()
    # the server's own counters are intact: 3n requests plus the admin
    # scrapes in between, all answered 2xx
    for code in ("other", "1xx", "2xx", "3xx", "4xx", "5xx"):
        d = (metric(m1, "weft_http_requests_total", code=code) -
             metric(m0, "weft_http_requests_total", code=code))
        assert (3 * n <= d <= 3 * n + 3) if code == "2xx" else d == 0, (code, d)
