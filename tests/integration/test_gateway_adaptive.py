"""Adaptive concurrency (Gradient2) and the breaker/ejection state gauges."""
import time

from gwutil import gateway, metric, origins, parallel, wait_until  # noqa: F401


def test_adaptive_limit_sheds_with_503_instead_of_queueing(gateway, origins):  # noqa: F811
    o, = origins(1)
    o.set_mode("sleep", delay_ms=200)
    g = gateway(f"""
clusters:
  slow:
    endpoints: [{o.addr}]
    adaptive_concurrency: {{initial_limit: 4, min_limit: 2, max_limit: 8}}
    circuit_breaker: false
routes:
  - cluster: slow
    retry: false
""")
    t0 = time.monotonic()
    rs = parallel(g.port, 32, concurrency=32, target="/work")
    elapsed = time.monotonic() - t0
    ok = [r for r in rs if r.status == 200]
    shed = [r for r in rs if r.status == 503]
    assert len(ok) + len(shed) == 32, [r.status for r in rs]
    # at most the limit is admitted at once; the rest is shed, not queued
    assert 2 <= len(ok) <= 16, len(ok)
    assert len(shed) >= 16, len(shed)
    assert all(r.header("X-Weft-Overloaded") == "true" for r in shed)
    # shedding is immediate: nothing waited behind the slow upstream
    assert all(r.elapsed < 0.1 for r in shed), max(r.elapsed for r in shed)
    assert o.count() == len(ok)
    assert elapsed < 2.0
    m = g.metrics()
    assert metric(m, "weft_gateway_overload_rejections_total", cluster="slow") == len(shed)


def test_breaker_and_ejection_gauges(gateway, origins):  # noqa: F811
    bad, = origins(1)
    bad.set_mode("status", status=500)
    g = gateway(f"""
clusters:
  brk:
    endpoints: [{bad.addr}]
    circuit_breaker: {{min_requests: 5, error_percent: 50, sleep_window: 30s}}
    outlier_detection: false
  ej:
    endpoints: [{bad.addr}]
    circuit_breaker: false
    outlier_detection: {{consecutive_5xx: 3, base_ejection_time: 30s, max_ejection_percent: 100}}
    panic_threshold: 0
routes:
  - match: {{prefix: /brk}}
    cluster: brk
    retry: false
  - match: {{prefix: /ej}}
    cluster: ej
    retry: false
""")
    m = g.metrics()
    assert metric(m, "weft_gateway_breaker_open", cluster="brk") == 0
    assert metric(m, "weft_gateway_ejected_endpoints", cluster="ej") == 0
    with g.client() as c:
        for _ in range(8):
            c.get("/brk")
            c.get("/ej")
    wait_until(lambda: metric(g.metrics(), "weft_gateway_breaker_open", cluster="brk") == 1,
               what="breaker open gauge")
    wait_until(lambda: metric(g.metrics(), "weft_gateway_ejected_endpoints", cluster="ej") == 1,
               what="ejected endpoints gauge")
