"""weft gateway retries, retry budget and timeouts against misbehaving
origins (connection resets, closes without an answer, 503s, slow and hung
upstreams, refused connects)."""
import time

import pytest

from gwutil import (Client, blackhole, closed_port, eps_yaml, gateway, metric,  # noqa: F401
                    origin_of, origins, sequential)


def cfg(os_, route_extra="", top="", name="r", match=""):
    return f"""{top}
clusters:
  c:
    endpoints: {eps_yaml(os_)}
    lb: round_robin
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: {name}
    cluster: c
{match}{route_extra}
"""


@pytest.mark.parametrize("mode", ["reset", "close"])
def test_get_retried_on_other_endpoint(gateway, origins, mode):
    a, b = origins(2)
    a.set_mode(mode)
    g = gateway(cfg([a, b], top="access_log: true"), log_format="json")
    with Client(g.port) as c:
        for i in range(20):
            r = c.get(f"/r/{i}")
            assert r.status == 200 and origin_of(r) == b.name, (i, r)
    # round robin puts A first every time; each request tried A, then B
    assert a.count() == 20 and b.count() == 20
    assert [x.target for x in b.recs()] == [f"/r/{i}" for i in range(20)]
    assert g.stop() == 0
    lines = g.json_lines("access")
    assert len(lines) == 20, g.stderr[-3000:]
    for ln in lines:
        assert ln["status"] == 200 and ln["attempts"] == 2, ln
        assert ln["upstream"] == b.addr and ln["cluster"] == "c", ln


def test_post_not_retried_unless_all_methods(gateway, origins):
    a, b = origins(2)
    a.set_mode("reset")
    g = gateway(f"""
clusters:
  c:
    endpoints: {eps_yaml([a, b])}
    lb: round_robin
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: plain
    match: {{prefix: /plain}}
    cluster: c
  - name: all
    match: {{prefix: /all}}
    cluster: c
    retry: {{all_methods: true}}
""")
    with Client(g.port) as c:
        st = []
        for i in range(10):
            st.append(c.request("POST", "/plain", body=b"p%d" % i).status)
        # alternating A (reset: 502, not retried) and B (200)
        assert st == [502, 200] * 5, st
        assert a.count(method="POST") == 5 and b.count(method="POST") == 5
        for i in range(10):
            r = c.request("POST", "/all", body=b"payload-%d" % i)
            assert r.status == 200 and origin_of(r) == b.name, r
        assert a.count(method="POST") == 15 and b.count(method="POST") == 15
        # the retried POST carried its body to the second endpoint
        assert [x.body for x in b.recs()[5:]] == [b"payload-%d" % i for i in range(10)]
    m = g.metrics()
    assert metric(m, "weft_gateway_retries_total", route="plain") == 0
    assert metric(m, "weft_gateway_retries_total", route="all") == 10


def test_retry_on_gateway_error_status(gateway, origins):
    a, b = origins(2)
    a.set_mode("status", status=503)
    g = gateway(f"""
clusters:
  c:
    endpoints: {eps_yaml([a, b])}
    lb: round_robin
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: gw-err
    match: {{prefix: /retry}}
    cluster: c
    retry: {{attempts: 2, on: [gateway-error]}}
  - name: default
    cluster: c
""")
    rs = sequential(g.port, 20, target="/retry")
    assert all(r.status == 200 and origin_of(r) == b.name for r in rs), rs
    assert a.count() == 20 and b.count() == 20
    # default conditions (connect-failure, reset) do not include 503
    rs = sequential(g.port, 10, target="/plain")
    assert [r.status for r in rs] == [503, 200] * 5
    m = g.metrics()
    assert metric(m, "weft_gateway_retries_total", route="gw-err") == 20
    assert metric(m, "weft_gateway_retries_total", route="default") == 0


def test_per_try_timeout_then_fast_endpoint(gateway, origins):
    a, b = origins(2)
    a.set_mode("sleep", delay_ms=1500)
    g = gateway(cfg([a, b], route_extra="""    timeout: 3s
    per_try_timeout: 300ms
    retry: {attempts: 2, on: [timeout]}
"""))
    with Client(g.port) as c:
        for _ in range(3):
            r = c.get("/slow")
            assert r.status == 200 and origin_of(r) == b.name, r
            assert 0.29 <= r.elapsed < 0.8, r.elapsed
    assert a.count() == 3 and b.count() == 3


def test_hung_upstream_per_try_timeout_retries_to_healthy(gateway, origins):
    a, b = origins(2)
    a.set_mode("hang")
    g = gateway(cfg([a, b], route_extra="""    per_try_timeout: 300ms
    retry: {on: [timeout]}
"""))
    with Client(g.port) as c:
        for _ in range(3):
            r = c.get("/hang")
            assert r.status == 200 and origin_of(r) == b.name, r
            assert 0.29 <= r.elapsed < 0.8, r.elapsed
    assert a.count() == 3 and b.count() == 3


def test_route_timeout_504_when_all_slow(gateway, origins):
    a, b = origins(2)
    a.set_mode("sleep", delay_ms=1500)
    b.set_mode("sleep", delay_ms=1500)
    g = gateway(cfg([a, b], route_extra="""    timeout: 500ms
    retry: {attempts: 3, on: [timeout, connect-failure, reset]}
"""))
    with Client(g.port) as c:
        r = c.get("/t")
        assert r.status == 504, r
        assert 0.45 <= r.elapsed < 0.9, r.elapsed
        assert r.header("X-Request-Id")
    # no retry could have finished before the deadline: none was started
    assert a.count() + b.count() == 1
    m = g.metrics()
    assert metric(m, "weft_gateway_requests_total", route="r", code="5xx") == 1


def test_connect_refused_is_502_fast(gateway):
    dead = closed_port()
    g = gateway(f"""
clusters:
  c:
    endpoints: [127.0.0.1:{dead}]
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: r
    cluster: c
""")
    with Client(g.port) as c:
        for _ in range(5):
            r = c.get("/x")
            assert r.status == 502, r
            assert r.elapsed < 0.5, r.elapsed


def test_retry_budget_caps_retries_in_outage(gateway, origins):
    a, b = origins(2)
    a.set_mode("status", status=503)
    b.set_mode("status", status=503)
    g = gateway(cfg([a, b], route_extra="""    retry:
      attempts: 5
      on: [gateway-error]
      backoff: {base: 1ms, max: 2ms}
      budget: {percent: 20, min_retries_per_sec: 0, ttl: 10s}
"""))
    n = 200
    t0 = time.monotonic()
    rs = sequential(g.port, n, target="/outage")
    took = time.monotonic() - t0
    assert took < 8, "the 10 s budget window must hold every request"
    assert all(r.status == 503 for r in rs)
    total = a.count() + b.count()
    retries = total - n
    # balance = 0.2 x requests started - retries taken; a retry needs >= 1,
    # and each request deposits before its first attempt: after the k-th
    # request at most floor(0.2 k) retries -> floor(0.2 x 200) = 40
    assert retries <= 40, (total, a.count(), b.count())
    assert retries >= 30, "the budget should allow about 20 % retries"
    m = g.metrics()
    assert metric(m, "weft_gateway_retries_total", route="r") == retries
    assert metric(m, "weft_gateway_retry_budget_exhausted_total", route="r") > 0


def test_connect_timeout_to_blackholed_address(gateway, origins, blackhole):
    ok, = origins(1)
    g = gateway(f"""
clusters:
  hole:
    endpoints: [{blackhole.addr}]
    connect_timeout: 200ms
    outlier_detection: false
    circuit_breaker: false
  mixed:
    endpoints: [{blackhole.addr}, {ok.addr}]
    lb: round_robin
    connect_timeout: 200ms
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: hole
    match: {{prefix: /hole}}
    cluster: hole
    timeout: 5s
    retry: false
  - name: mixed
    cluster: mixed
    timeout: 5s
""")
    with Client(g.port) as c:
        r = c.get("/hole")
        assert r.status in (502, 504), r
        assert r.elapsed < 1.0, f"connect_timeout 200ms, answered after {r.elapsed:.2f}s"
        # a connect timeout is a connect failure: retried (default conditions)
        # on the other endpoint well within the route timeout
        r = c.get("/mixed")
        assert r.status == 200 and origin_of(r) == ok.name, r
        assert r.elapsed < 1.0, f"connect_timeout 200ms, answered after {r.elapsed:.2f}s"


def test_retries_never_repeat_an_endpoint(gateway, origins):
    a, b, ok = origins(3)
    a.set_mode("reset")
    b.set_mode("reset")
    g = gateway(cfg([a, b, ok], top="access_log: true", route_extra="""    retry:
      attempts: 3
      budget: false
""").replace("lb: round_robin", "lb: random"), log_format="json")
    n = 100
    rs = sequential(g.port, n, target="/nr")
    assert all(r.status == 200 and origin_of(r) == ok.name for r in rs), \
        [r.status for r in rs]
    assert ok.count() == n
    assert g.stop() == 0
    lines = g.json_lines("access")
    assert len(lines) == n
    # each request tried each failing endpoint at most once
    assert sum(ln["attempts"] - 1 for ln in lines) == a.count() + b.count()
    assert all(1 <= ln["attempts"] <= 3 for ln in lines), lines
    assert a.count() > 0 and b.count() > 0


def test_retry_on_retriable_status(gateway, origins):
    a, b = origins(2)
    a.set_mode("status", status=429)
    g = gateway(cfg([a, b], route_extra="""    retry: {attempts: 2, on: [retriable-status], statuses: [429]}
"""))
    rs = sequential(g.port, 10, target="/rs")
    assert all(r.status == 200 and origin_of(r) == b.name for r in rs), rs
    assert a.count() == 10 and b.count() == 10


def test_post_on_a_pooled_connection_closed_without_answer_is_not_resent(gateway, origins):
    """An upstream that reads a POST on a kept-alive connection and closes
    without answering may have acted on it: the gateway must not send it
    again on a fresh connection (RFC 9110 9.2.2), whatever the pool's
    stale-connection retry does for idempotent requests. A GET is resent."""
    o, = origins(1)
    g = gateway(cfg([o]))
    with Client(g.port) as c:
        assert c.get("/warm").status == 200  # leaves a pooled connection
        o.set_mode("close")
        r = c.request("POST", "/pay", body=b"charge=1")
        assert r.status == 502, r
        assert o.count(path="/pay", method="POST") == 1, o.recs()
        o.set_mode("ok")
        assert c.get("/warm").status == 200
        o.set_mode("close")
        c.close()
        # an idempotent request may be resent (stale-connection retry and
        # the route's reset retry): it reached the origin more than once
        r = c.get("/read")
        assert r.status == 502, r
        assert o.count(path="/read") >= 2, o.recs()


def test_route_timeout_bounds_a_hanging_connect(gateway, blackhole):
    """The route timeout covers the whole request: a connect that hangs
    (cluster connect_timeout left at its 2 s default) is given up when the
    route's 300 ms run out, and that is a gateway timeout (504)."""
    g = gateway(f"""
clusters:
  hole:
    endpoints: [{blackhole.addr}]
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: hole
    cluster: hole
    timeout: 300ms
""")
    with Client(g.port) as c:
        r = c.get("/hole")
        assert r.status == 504, r
        assert 0.25 <= r.elapsed < 0.8, f"route timeout 300ms, answered after {r.elapsed:.2f}s"


def test_route_timeout_counts_a_slow_connect(gateway, blackhole):
    """A connect that succeeds late (the SYN is dropped once, the kernel
    resends it a second later) uses up part of the route timeout: the
    response head must still come within the route's 1.5 s, so an upstream
    that answers 1.5 s after the connect gets 504 at the deadline, not 200
    a second past it."""
    import threading
    stop = threading.Event()

    def handle(c):
        c.settimeout(3)
        try:
            if c.recv(65536):  # the gateway's request (the fillers send nothing)
                time.sleep(1.5)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                c.recv(1)
        except OSError:
            pass
        finally:
            c.close()

    def serve():
        time.sleep(0.3)  # after the gateway's first SYN was dropped
        blackhole.ls.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = blackhole.ls.accept()
            except OSError:
                continue
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    g = gateway(f"""
clusters:
  late:
    endpoints: [{blackhole.addr}]
    connect_timeout: 3s
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: late
    cluster: late
    timeout: 1500ms
    retry: false
""")
    t = threading.Thread(target=serve, daemon=True)
    try:
        with Client(g.port, timeout=10) as c:
            t.start()
            r = c.get("/late")
            assert r.status == 504, r
            assert 1.3 <= r.elapsed < 2.2, f"route timeout 1.5s, answered after {r.elapsed:.2f}s"
    finally:
        stop.set()
        t.join(timeout=5)
