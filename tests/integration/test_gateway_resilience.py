"""weft gateway resilience: active health checks (HTTP and TCP), panic
mode, passive outlier detection and the circuit breaker (with fallback).
One worker, so the per-worker state seen by /admin/clusters is the state
that served the requests."""
import concurrent.futures
import socket
import threading
import time

from gwutil import (Client, closed_port, eps_yaml, gateway, metric, origin_of,  # noqa: F401
                    origins, sequential, wait_until)


def hc_cluster(os_, hc, extra=""):
    return f"""
clusters:
  c:
    endpoints: {eps_yaml(os_)}
    lb: round_robin
    outlier_detection: false
    circuit_breaker: false
    health_check: {hc}
{extra}
routes:
  - name: r
    cluster: c
    retry: false
"""


HTTP_HC = "{path: /health, interval: 100ms, timeout: 200ms, healthy_threshold: 1, " \
          "unhealthy_threshold: 2}"


def test_http_health_check_removes_and_restores_endpoint(gateway, origins):
    a, b = origins(2)
    g = gateway(hc_cluster([a, b], HTTP_HC))
    rs = sequential(g.port, 20, target="/x")
    assert all(r.status == 200 for r in rs)
    assert (a.count(), b.count()) == (10, 10)
    wait_until(lambda: a.health_hits >= 2, 2, what="health checks reach the origin")

    a.health_status = 500
    t0 = time.monotonic()
    wait_until(lambda: not g.endpoint("c", a.addr)["healthy"], 2, what="A marked unhealthy")
    took = time.monotonic() - t0
    assert took <= 1.0, took
    ep = g.endpoint("c", a.addr)
    assert ep["active_check_healthy"] is False and ep["ejected"] is False, ep
    assert g.endpoint("c", b.addr)["healthy"] is True
    rs = sequential(g.port, 40, target="/x")
    assert all(r.status == 200 and origin_of(r) == b.name for r in rs), rs
    assert a.count() == 10
    assert metric(g.metrics(), "weft_gateway_health_check_failures_total", cluster="c") >= 2

    a.health_status = 200
    t0 = time.monotonic()
    wait_until(lambda: g.endpoint("c", a.addr)["healthy"], 2, what="A healthy again")
    assert time.monotonic() - t0 <= 1.0
    rs = sequential(g.port, 40, target="/x")
    assert all(r.status == 200 for r in rs)
    assert a.count() == 10 + 20, (a.count(), b.count())


def test_tcp_health_check_marks_stopped_origin_down(gateway, origins):
    os_ = origins(3)
    a, b, c = os_
    g = gateway(hc_cluster(os_, "{tcp: true, interval: 100ms, timeout: 200ms, "
                                "healthy_threshold: 1, unhealthy_threshold: 2}"))
    assert all(r.status == 200 for r in sequential(g.port, 30, target="/t"))
    assert c.count() == 10
    c.refuse()
    t0 = time.monotonic()
    wait_until(lambda: not g.endpoint("c", c.addr)["active_check_healthy"], 2,
               what="stopped origin marked down")
    assert time.monotonic() - t0 <= 1.0
    assert g.endpoint("c", c.addr)["healthy"] is False
    assert g.cluster("c")["panic"] is False
    rs = sequential(g.port, 40, target="/t")
    assert all(r.status == 200 for r in rs), [r.status for r in rs]
    assert {origin_of(r) for r in rs} == {a.name, b.name}
    assert (a.count(), b.count()) == (30, 30)
    c.resume()
    wait_until(lambda: g.endpoint("c", c.addr)["healthy"], 2, what="origin back up")
    rs = sequential(g.port, 30, target="/t")
    assert all(r.status == 200 for r in rs)
    assert c.count() == 10 + 10


def test_panic_mode_uses_all_endpoints(gateway, origins):
    os_ = origins(3)
    a, b, c = os_
    b.health_status = 500
    c.health_status = 500
    g = gateway(hc_cluster(os_, HTTP_HC))
    wait_until(lambda: not g.endpoint("c", b.addr)["active_check_healthy"] and
               not g.endpoint("c", c.addr)["active_check_healthy"], 2,
               what="two of three endpoints failing checks")
    assert g.endpoint("c", a.addr)["active_check_healthy"] is True
    rs = sequential(g.port, 300, target="/p")
    assert all(r.status == 200 for r in rs)
    # 1 of 3 healthy (33 % < panic_threshold 50 %): balance over all three
    assert [o.count() for o in os_] == [100, 100, 100]
    cl = g.cluster("c")
    assert cl["panic"] is True, cl
    # one endpoint recovers: 2 of 3 healthy, no panic, the failing one is skipped
    b.health_status = 200
    wait_until(lambda: g.endpoint("c", b.addr)["healthy"], 2, what="B healthy")
    for o in os_:
        o.clear()
    rs = sequential(g.port, 100, target="/p")
    assert all(r.status == 200 for r in rs)
    assert c.count() == 0 and a.count() == 50 and b.count() == 50
    assert g.cluster("c")["panic"] is False


# ---------------------------------------------------------------- outliers

def test_outlier_ejection_and_return(gateway, origins):
    os_ = origins(3)
    a, b, c = os_
    a.set_mode("status", status=500)
    g = gateway(f"""
clusters:
  c:
    endpoints: {eps_yaml(os_)}
    lb: round_robin
    circuit_breaker: false
    outlier_detection: {{consecutive_5xx: 5, base_ejection_time: 2s, max_ejection_percent: 50}}
routes:
  - name: r
    cluster: c
    retry: false
""")
    with Client(g.port) as cl:
        st = [cl.get("/o").status for _ in range(15)]
        t_eject = time.monotonic()
        # round robin: A answered requests 1, 4, 7, 10, 13 -> 5 consecutive 5xx
        assert st == [500, 200, 200] * 5, st
        assert a.count() == 5
        ep = g.endpoint("c", a.addr)
        assert ep["ejected"] is True and ep["healthy"] is False, ep
        assert ep["times_ejected"] == 1 and 0 < ep["ejected_for_ms"] <= 2000, ep
        assert g.cluster("c")["ejections"] == 1
        assert metric(g.metrics(), "weft_gateway_ejections_total", cluster="c") == 1
        # while ejected A gets nothing
        st = [cl.get("/o").status for _ in range(30)]
        assert time.monotonic() - t_eject < 1.5, "ejection window check took too long"
        assert st == [200] * 30
        assert a.count() == 5
        assert (b.count(), c.count()) == (20, 20)
        # the ejection ends after base_ejection_time (2 s x 1)
        # (un-ejection is applied to the balancer by a 100 ms tick: wait for
        # the effective health, not just for the ejection deadline)
        wait_until(lambda: g.endpoint("c", a.addr)["healthy"], 4, interval=0.05,
                   what="ejection to end")
        assert g.endpoint("c", a.addr)["ejected"] is False
        assert time.monotonic() - t_eject >= 1.8
        st = [cl.get("/o").status for _ in range(30)]
        # A is back: it fails 5 more times (streaks restart) and is ejected again
        assert a.count() == 10, a.count()
        assert st.count(500) == 5
        ep = g.endpoint("c", a.addr)
        assert ep["ejected"] is True and ep["times_ejected"] == 2, ep
        assert 2000 < ep["ejected_for_ms"] <= 4000, ep  # 2 s x 2
        assert metric(g.metrics(), "weft_gateway_ejections_total", cluster="c") == 2


# ---------------------------------------------------------------- reloads

def reload_cluster(os_, tag, hc=None, outlier="false"):
    """One cluster c plus a direct route /<tag> answering <tag>: reloading
    with another tag changes only that unrelated route."""
    return f"""
clusters:
  c:
    endpoints: {eps_yaml(os_)}
    lb: round_robin
    outlier_detection: {outlier}
    circuit_breaker: false
{f"    health_check: {hc}" if hc else ""}
routes:
  - name: {tag}
    match: {{prefix: /{tag}}}
    direct: {{status: 200, body: "{tag}"}}
  - name: r
    cluster: c
    retry: false
"""


def reload_to(g, text, tag):
    """Reload with `text` and wait until the (one) worker serves it."""
    g.write_config(text)
    assert g.reload().status == 200
    wait_until(lambda: g.get(f"/{tag}").body == tag.encode(), 3, interval=0.005,
               what="the new generation installed")


# slow enough that a verdict rebuilt from scratch would take > 1 s
SLOW_HC = "{path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 1, " \
          "unhealthy_threshold: 2}"


def test_reload_keeps_health_verdict_of_unchanged_cluster(gateway, origins):
    a, b = origins(2)
    g = gateway(reload_cluster([a, b], "v1", SLOW_HC))
    a.health_status = 500
    wait_until(lambda: not g.endpoint("c", a.addr)["healthy"], 4, what="A marked down")
    fails = metric(g.metrics(), "weft_gateway_health_check_failures_total", cluster="c")

    reload_to(g, reload_cluster([a, b], "v2", SLOW_HC), "v2")
    ep = g.endpoint("c", a.addr)
    assert ep["healthy"] is False and ep["active_check_healthy"] is False, ep
    n = a.count()
    rs = sequential(g.port, 30, target="/x")
    assert all(r.status == 200 and origin_of(r) == b.name for r in rs), rs
    assert a.count() == n
    # the carried-over endpoint is next checked a full interval (0.9-1.1 s)
    # after the reload, not at once as a fresh one would be
    time.sleep(0.5)
    assert metric(g.metrics(), "weft_gateway_health_check_failures_total",
                  cluster="c") == fails
    assert g.endpoint("c", a.addr)["healthy"] is False
    # and the verdict still follows the checks after the reload
    a.health_status = 200
    wait_until(lambda: g.endpoint("c", a.addr)["healthy"], 3, what="A healthy again")


def test_reload_with_changed_health_check_starts_fresh(gateway, origins):
    a, b = origins(2)
    g = gateway(reload_cluster([a, b], "v1", SLOW_HC))
    a.health_status = 500
    wait_until(lambda: not g.endpoint("c", a.addr)["healthy"], 4, what="A marked down")

    # another path: the old verdict says nothing about it, so the endpoint
    # starts healthy as at start-up (/healthz answers 200 on the origin)
    reload_to(g, reload_cluster([a, b], "v2", SLOW_HC.replace("/health", "/healthz")), "v2")
    ep = g.endpoint("c", a.addr)
    assert ep["healthy"] is True and ep["active_check_healthy"] is True, ep
    n = a.count(path="/x")
    rs = sequential(g.port, 10, target="/x")
    assert all(r.status == 200 for r in rs), rs
    assert a.count(path="/x") == n + 5
    # a changed check is verified soon, as at start-up: it passes here
    wait_until(lambda: a.count(path="/healthz") >= 1, 2, what="the new check runs")
    assert g.endpoint("c", a.addr)["healthy"] is True


def test_reload_keeps_outlier_ejection(gateway, origins):
    a, b = origins(2)
    a.set_mode("status", status=500)
    od = "{consecutive_5xx: 3, base_ejection_time: 10s, max_ejection_percent: 50}"
    g = gateway(reload_cluster([a, b], "v1", outlier=od))
    st = [r.status for r in sequential(g.port, 6, target="/x")]
    assert st == [500, 200] * 3, st
    ep = g.endpoint("c", a.addr)
    assert ep["ejected"] is True and ep["times_ejected"] == 1, ep

    reload_to(g, reload_cluster([a, b], "v2", outlier=od), "v2")
    ep = g.endpoint("c", a.addr)
    assert ep["ejected"] is True and ep["healthy"] is False, ep
    assert ep["times_ejected"] == 1 and 8000 < ep["ejected_for_ms"] <= 10000, ep
    rs = sequential(g.port, 30, target="/x")
    assert all(r.status == 200 and origin_of(r) == b.name for r in rs), rs
    assert a.count() == 3

    # outlier detection turned off: nothing to carry, A serves again
    reload_to(g, reload_cluster([a, b], "v3"), "v3")
    assert g.endpoint("c", a.addr)["ejected"] is False


# ---------------------------------------------------------------- breaker

def breaker_cfg(o, fallback=""):
    return f"""
clusters:
  c:
    endpoints: [{o.addr}]
    outlier_detection: false
    circuit_breaker: {{min_requests: 10, error_percent: 50, sleep_window: 1s}}
routes:
  - name: cb
    cluster: c
    retry: false
{fallback}
"""


def trip(g, o, cl):
    """Send 10 failing requests; returns the monotonic time of the trip."""
    for i in range(10):
        r = cl.get("/cb")
        assert r.status == 500 and origin_of(r) == o.name, (i, r)
    t = time.monotonic()
    assert o.count() == 10
    return t


def test_circuit_breaker_opens_fast_fails_and_closes(gateway, origins):
    o, = origins(1)
    o.set_mode("status", status=500)
    g = gateway(breaker_cfg(o))
    with Client(g.port) as cl:
        t_open = trip(g, o, cl)
        times = []
        for _ in range(20):
            r = cl.get("/cb")
            assert r.status == 503, r
            assert r.header("X-Weft-Circuit") == "open", r
            times.append(r.elapsed)
        assert o.count() == 10, "an open breaker must not touch the upstream"
        assert max(times) < 0.005, times
        b = g.cluster("c")["breaker"]
        assert b["state"] == "open", b
        assert metric(g.metrics(), "weft_gateway_breaker_rejections_total", cluster="c") == 20
        # still open just before the sleep window ends
        time.sleep(max(0.0, t_open + 0.8 - time.monotonic()))
        assert cl.get("/cb").status == 503
        assert o.count() == 10
        # the upstream recovers; after the sleep window one probe goes through
        o.set_mode("ok")
        time.sleep(max(0.0, t_open + 1.1 - time.monotonic()))
        r = cl.get("/cb")
        assert r.status == 200 and r.header("X-Weft-Circuit") is None, r
        assert o.count() == 11
        rs = [cl.get("/cb") for _ in range(20)]
        assert [r.status for r in rs] == [200] * 20
        assert o.count() == 31
        assert g.cluster("c")["breaker"]["state"] == "closed"


def test_circuit_breaker_reopens_when_probe_fails(gateway, origins):
    o, = origins(1)
    o.set_mode("status", status=500)
    g = gateway(breaker_cfg(o))
    with Client(g.port) as cl:
        t_open = trip(g, o, cl)
        assert cl.get("/cb").status == 503
        time.sleep(max(0.0, t_open + 1.1 - time.monotonic()))
        r = cl.get("/cb")  # the half-open probe reaches the still-broken upstream
        t_reopen = time.monotonic()
        assert r.status == 500 and origin_of(r) == o.name, r
        assert o.count() == 11
        rs = [cl.get("/cb") for _ in range(10)]
        assert all(r.status == 503 and r.header("X-Weft-Circuit") == "open" for r in rs), rs
        assert o.count() == 11
        assert g.cluster("c")["breaker"]["state"] == "open"
        # a new sleep window started at the failed probe
        time.sleep(max(0.0, t_reopen + 1.1 - time.monotonic()))
        assert cl.get("/cb").status == 500
        assert o.count() == 12


def test_circuit_breaker_fallback(gateway, origins):
    o, = origins(1)
    o.set_mode("status", status=500)
    dead = closed_port()
    g = gateway(breaker_cfg(o, fallback="""    fallback:
      status: 200
      content_type: application/json
      body: '{"items": [], "degraded": true}'
  - name: dead
    match: {prefix: /dead}
    cluster: gone
    retry: false
    fallback: {status: 203, body: "cached", content_type: text/plain}
""").replace("routes:", f"""  gone:
    endpoints: [127.0.0.1:{dead}]
    outlier_detection: false
routes:""").replace("    cluster: c\n    retry: false\n", "    match: {prefix: /cb}\n"
                                                           "    cluster: c\n    retry: false\n"))
    with Client(g.port) as cl:
        trip(g, o, cl)
        for _ in range(5):
            r = cl.get("/cb")
            assert r.status == 200, r
            assert r.body == b'{"items": [], "degraded": true}'
            assert r.header("Content-Type") == "application/json"
            assert r.header("X-Weft-Fallback") == "true"
        assert o.count() == 10
        # the upstream failed (connection refused): fallback instead of 502
        r = cl.get("/dead/x")
        assert r.status == 203 and r.body == b"cached", r
        assert r.header("X-Weft-Fallback") == "true"


def test_max_requests_sheds_with_503_overloaded(gateway, origins):
    o, = origins(1)
    o.set_mode("sleep", delay_ms=400)
    g = gateway(f"""
clusters:
  c:
    endpoints: [{o.addr}]
    max_requests: 2
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: r
    cluster: c
""")
    barrier = threading.Barrier(6)

    def one(i):
        with Client(g.port) as c:
            c._connect()
            barrier.wait(timeout=5)
            return c.get(f"/ov/{i}")

    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(one, range(6)))
    ok = [r for r in rs if r.status == 200]
    shed = [r for r in rs if r.status == 503]
    assert len(ok) == 2 and len(shed) == 4, [r.status for r in rs]
    assert all(r.header("X-Weft-Overloaded") == "true" for r in shed), shed
    assert all(r.elapsed < 0.2 for r in shed), [r.elapsed for r in shed]
    assert o.count() == 2
    assert metric(g.metrics(), "weft_gateway_overload_rejections_total", cluster="c") == 4
    # capacity is released when requests finish
    assert all(r.status == 200 for r in sequential(g.port, 3, target="/after"))


def test_slow_calls_open_the_breaker(gateway, origins):
    o, = origins(1)
    o.set_mode("sleep", delay_ms=150)
    g = gateway(f"""
clusters:
  c:
    endpoints: [{o.addr}]
    outlier_detection: false
    circuit_breaker: {{min_requests: 5, error_percent: 50, sleep_window: 5s, slow_call: 50ms}}
routes:
  - name: r
    cluster: c
    retry: false
""")
    with Client(g.port) as cl:
        st = [cl.get("/slow").status for _ in range(5)]
        assert st == [200] * 5  # slow, but answered
        r = cl.get("/slow")
        assert r.status == 503 and r.header("X-Weft-Circuit") == "open", r
    assert o.count() == 5


def test_no_healthy_endpoint_503_and_fallback(gateway, origins):
    o, = origins(1)
    o.health_status = 500
    g = gateway(f"""
clusters:
  c:
    endpoints: [{o.addr}]
    panic_threshold: 0
    outlier_detection: false
    circuit_breaker: false
    health_check: {HTTP_HC}
routes:
  - name: fb
    match: {{prefix: /fb}}
    cluster: c
    fallback: {{status: 200, body: "stale", content_type: text/plain}}
  - name: plain
    cluster: c
""")
    wait_until(lambda: not g.endpoint("c", o.addr)["healthy"], 2, what="endpoint down")
    with Client(g.port) as cl:
        r = cl.get("/plain")
        assert r.status == 503, r
        assert r.header("X-Request-Id")
        r = cl.get("/fb")
        assert r.status == 200 and r.body == b"stale", r
        assert r.header("Content-Type") == "text/plain"
        assert r.header("X-Weft-Fallback") == "true"
    assert o.count() == 0


def test_max_ejection_percent_limits_ejections(gateway, origins):
    os_ = origins(3)
    a, b, c = os_
    a.set_mode("status", status=500)
    b.set_mode("status", status=500)
    g = gateway(f"""
clusters:
  c:
    endpoints: {eps_yaml(os_)}
    lb: round_robin
    circuit_breaker: false
    outlier_detection: {{consecutive_5xx: 3, base_ejection_time: 10s, max_ejection_percent: 50}}
routes:
  - name: r
    cluster: c
    retry: false
""")
    sequential(g.port, 30, target="/e")
    eps = {e["address"]: e for e in g.cluster("c")["endpoints"]}
    ejected = [addr for addr, e in eps.items() if e["ejected"]]
    # floor(3 x 50 %) = 1: only one of the two failing endpoints may be out
    assert len(ejected) == 1 and ejected[0] in (a.addr, b.addr), eps
    assert eps[c.addr]["ejected"] is False
    assert metric(g.metrics(), "weft_gateway_ejections_total", cluster="c") == 1


class _TrickleHealth:
    """An endpoint whose /health answers 200 at once and then sends its
    chunked body a byte every 50 ms, never ending it (a check of it can
    only end by its timeout)."""

    def __init__(self):
        self.hits = 0
        self.stop = threading.Event()
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.ls.settimeout(0.05)
        self.addr = "127.0.0.1:%d" % self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            try:
                c.settimeout(5)
                if b"\r\n\r\n" not in c.recv(65536):
                    return
                self.hits += 1
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                while not self.stop.is_set():
                    c.sendall(b"1\r\nx\r\n")
                    time.sleep(0.05)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.ls.close()


def test_http_health_check_times_out_a_never_ending_answer(gateway):  # noqa: F811
    """timeout bounds the whole HTTP check, as in Envoy and HAProxy. Was: it
    bounded the wait for the head and then each body read, so an answer
    that kept trickling hung the check for good: no verdict, no further
    checks, the endpoint stayed healthy whatever it did."""
    t = _TrickleHealth()
    try:
        g = gateway(hc_cluster([t.addr], "{path: /health, interval: 100ms, "
                                                 "timeout: 200ms, healthy_threshold: 1, "
                                                 "unhealthy_threshold: 2}"))
        wait_until(lambda: not g.endpoint("c", t.addr)["active_check_healthy"], 3,
                   what="never-ending check counted as failed")
        assert t.hits >= 2
        assert metric(g.metrics(), "weft_gateway_health_check_failures_total", cluster="c") >= 2
    finally:
        t.close()


def test_replaced_generations_stop_their_health_checks(gateway, origins):
    """A reload's old generation lives on while its requests finish, but it
    serves no new request: its health checks must stop with the swap. Was:
    they ran until its last request ended, so every reload made while a long
    request was open added one more full round of checks per interval."""
    a, = origins(1)
    hc = "{path: /health, interval: 100ms, timeout: 200ms}"
    g = gateway(hc_cluster([a], hc))
    a.set_mode("sleep", delay_ms=4000)
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        slow = []
        for i in range(3):
            slow.append(ex.submit(g.get, f"/slow/{i}"))
            wait_until(lambda: a.count() == i + 1, 2, what="a slow request in flight")
            g.write_config(hc_cluster([a], hc).replace("retry: false",
                                                       f"retry: false\n    timeout: {10 + i}s"))
            assert g.reload().status == 200
            wait_until(lambda: g.admin_get("/admin/config").json()["reloads"] == i + 1,
                       what="reloaded")
        time.sleep(0.3)  # the last generation's first checks are out
        h0 = a.health_hits
        time.sleep(1.0)
        hits = a.health_hits - h0
        assert hits <= 14, f"{hits} checks in 1 s at a 100 ms interval: old generations still check"
        assert all(f.result(timeout=10).status == 200 for f in slow)
