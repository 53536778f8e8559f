"""The service SDK (include/weft/service.h, client.h) through the two
example services: catalog calls pricing by name. Real registry, real
processes, real failures (kill -9, SIGSTOP, SIGTERM)."""
import json
import signal
import threading
import time

import pytest

from svcutil import (BIN_DIR, WEFT_BIN, Proc, example, get_json, http, instances, metric,
                     registry, wait_until)


@pytest.fixture
def system(tmp_path):
    procs = []

    class S:
        def reg(self, *extra):
            p = registry(tmp_path, *extra)
            procs.append(p)
            return p

        def svc(self, name, reg, *extra):
            p = example(name, tmp_path, reg.port, *extra)
            procs.append(p)
            return p

        def add(self, p):
            procs.append(p)
            return p

    yield S()
    errors = []
    for p in reversed(procs):
        if p.alive():
            try:
                p.stop()
            except AssertionError as e:
                errors.append(str(e))
        elif not p._err.closed:
            p._err.close()
    assert not errors, "\n".join(errors)


def item(port, sku="apple", headers=None, timeout=5.0):
    st, d = get_json(port, f"/items/{sku}", headers=headers, timeout=timeout)
    assert st == 200, d
    return d


def test_services_register_and_serve_the_standard_routes(system):
    reg = system.reg()
    p1 = system.svc("pricing", reg, "--zone", "z1", "--weight", "7")
    cat = system.svc("catalog", reg)
    got = wait_until(lambda: instances(reg, "pricing"), what="pricing registered")
    (inst,) = got.values()
    assert inst["port"] == p1.port and inst["address"] == "127.0.0.1"
    assert inst["zone"] == "z1" and inst["weight"] == 7 and inst["version"] == "1.0.0"
    assert inst["id"] == f"pricing-127.0.0.1-{p1.port}" and inst["status"] == "UP"
    wait_until(lambda: instances(reg, "catalog"), what="catalog registered")
    for port in (p1.port, cat.port):
        assert get_json(port, "/health") == (200, {"status": "UP"})
        assert get_json(port, "/ready") == (200, {"ready": True})
        st, _, text = http(port, "GET", "/metrics")
        assert st == 200 and b"weft_http_requests_total" in text
    # bad requests get JSON errors, not crashes
    assert get_json(cat.port, "/items/nope")[0] == 404
    assert get_json(p1.port, "/prices/")[0] == 404


def test_call_by_name_propagates_request_id_and_deadline(system):
    reg = system.reg()
    system.svc("pricing", reg)
    cat = system.svc("catalog", reg)
    wait_until(lambda: instances(reg, "pricing"), what="pricing registered")
    d = item(cat.port, "apple", headers={"X-Request-Id": "trace-42"})
    assert d["name"] == "Apple" and "degraded" not in d
    price = d["price"]
    assert price["sku"] == "apple" and price["currency"] == "EUR"
    assert price["request_id"] == "trace-42"          # the caller's id went on
    assert 1500 < int(price["deadline_ms"]) <= 2000   # catalog's own 2 s budget
    d = item(cat.port, "bread", headers={"X-Weft-Deadline-Ms": "800"})
    assert 0 < int(d["price"]["deadline_ms"]) <= 800  # shortened to what the caller has left
    # an already expired deadline fails fast, without calling pricing
    calls = metric(cat.port, "weft_client_calls_total", service="pricing", result="ok")
    t = time.monotonic()
    d = item(cat.port, "bread", headers={"X-Weft-Deadline-Ms": "0"})
    assert d["price"] is None and d["reason"] == "timed out" and time.monotonic() - t < 0.5
    assert metric(cat.port, "weft_client_calls_total", service="pricing", result="ok") == calls
    # fan-out: four parallel calls, one request id
    st, d = get_json(cat.port, "/items", headers={"X-Request-Id": "fan-1"})
    assert st == 200 and len(d["items"]) == 4
    assert {i["price"]["request_id"] for i in d["items"]} == {"fan-1"}
    assert metric(cat.port, "weft_client_calls_total", service="pricing", result="ok") >= 6


def test_balances_over_instances_and_sees_new_ones_at_once(system):
    reg = system.reg()
    p1, p2 = system.svc("pricing", reg), system.svc("pricing", reg)
    cat = system.svc("catalog", reg)
    wait_until(lambda: len(instances(reg, "pricing")) == 2, what="two pricing instances")
    seen = {item(cat.port)["price"]["instance"] for _ in range(40)}
    assert seen == {p1.addr, p2.addr}
    p3 = system.svc("pricing", reg)
    t0 = time.monotonic()
    wait_until(lambda: any(item(cat.port)["price"]["instance"] == p3.addr for _ in range(20)),
               timeout=3, what="the new instance used")
    assert time.monotonic() - t0 < 2.0


def load(port, stop, out, sku="cheese"):
    while not stop.is_set():
        try:
            st, d = get_json(port, f"/items/{sku}", timeout=5)
            out.append((st, d))
        except OSError as e:
            out.append((0, str(e)))


def test_sigterm_deregisters_at_once_and_loses_no_request(system):
    reg = system.reg()
    p1, p2 = system.svc("pricing", reg), system.svc("pricing", reg)
    cat = system.svc("catalog", reg)
    wait_until(lambda: len(instances(reg, "pricing")) == 2, what="two pricing instances")
    item(cat.port)
    stop, out = threading.Event(), []
    ts = [threading.Thread(target=load, args=(cat.port, stop, out)) for _ in range(4)]
    for t in ts:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    p1.signal(signal.SIGTERM)
    wait_until(lambda: p1.addr not in {f"127.0.0.1:{i['port']}" for i in
                                       instances(reg, "pricing").values()},
               timeout=2, what="p1 deregistered")
    gone_after = time.monotonic() - t0
    assert p1.proc.wait(timeout=10) == 0
    time.sleep(0.3)
    stop.set()
    for t in ts:
        t.join(timeout=10)
    assert gone_after < 0.5
    assert len(out) > 20
    bad = [o for o in out if o[0] != 200 or o[1].get("degraded")]
    assert not bad, bad[:3]
    assert item(cat.port)["price"]["instance"] == p2.addr


def test_kill9_is_retried_elsewhere_and_leaves_within_its_ttl(system):
    reg = system.reg()
    p1 = system.svc("pricing", reg, "--ttl", "2000")
    p2 = system.svc("pricing", reg, "--ttl", "2000")
    cat = system.svc("catalog", reg, "--lb", "round_robin")  # so the dead one is tried
    wait_until(lambda: len(instances(reg, "pricing")) == 2, what="two pricing instances")
    for _ in range(10):
        item(cat.port)
    p1.kill()
    t0 = time.monotonic()
    answers = [item(cat.port) for _ in range(30)]
    # every call was answered by the survivor: refused connections are retried
    assert all(a["price"] and a["price"]["instance"] == p2.addr for a in answers), answers[:3]
    wait_until(lambda: len(instances(reg, "pricing")) == 1, timeout=4, what="lease expiry")
    assert time.monotonic() - t0 < 2.0 + 0.5
    assert metric(cat.port, "weft_client_retries_total", service="pricing") >= 1


def test_hung_instance_costs_one_try_timeout_then_another_instance(system):
    reg = system.reg()
    p1, p2 = system.svc("pricing", reg), system.svc("pricing", reg)
    cat = system.svc("catalog", reg)
    wait_until(lambda: len(instances(reg, "pricing")) == 2, what="two pricing instances")
    for _ in range(6):
        item(cat.port)
    p1.signal(signal.SIGSTOP)
    try:
        worst = 0.0
        for _ in range(8):
            t = time.monotonic()
            d = item(cat.port)
            worst = max(worst, time.monotonic() - t)
            assert d["price"] and d["price"]["instance"] == p2.addr, d
        assert worst < 1.2  # one 500 ms per-try timeout at most, never the 2 s deadline
    finally:
        p1.signal(signal.SIGCONT)


def test_breaker_opens_fails_fast_and_recovers(system):
    reg = system.reg()
    p1 = system.svc("pricing", reg, "--ttl", "60000")
    cat = system.svc("catalog", reg)
    wait_until(lambda: instances(reg, "pricing"), what="pricing registered")
    item(cat.port)
    p1.kill()  # its registration stays (60 s TTL): every call is refused
    reasons = [item(cat.port)["reason"] for _ in range(30)]
    assert reasons[0] == "connection refused"
    assert "circuit breaker open" in reasons
    t = time.monotonic()
    d = item(cat.port)
    assert d["reason"] == "circuit breaker open" and time.monotonic() - t < 0.1
    assert metric(cat.port, "weft_client_circuit_open", service="pricing") == 1
    assert metric(cat.port, "weft_client_calls_total", service="pricing",
                  result="circuit_open") >= 1
    # a healthy instance appears; after the 5 s sleep window one probe closes it
    system.svc("pricing", reg)
    wait_until(lambda: (item(cat.port).get("price") or {}).get("currency") == "EUR",
               timeout=8, interval=0.2, what="circuit closed again")
    assert metric(cat.port, "weft_client_circuit_open", service="pricing") == 0


def test_registry_restart_services_register_again(system, tmp_path):
    reg = system.reg()
    port = reg.port
    system.svc("pricing", reg, "--ttl", "1500")
    cat = system.svc("catalog", reg, "--ttl", "1500")
    wait_until(lambda: instances(reg, "pricing") and instances(reg, "catalog"),
               what="both registered")
    reg.stop()
    # a registry without --data comes back empty on the same port
    reg2 = system.add(Proc([WEFT_BIN, "registry", "--listen", f"127.0.0.1:{port}"], tmp_path,
                           "registry", name="registry2"))
    wait_until(lambda: instances(reg2, "pricing") and instances(reg2, "catalog"), timeout=5,
               what="registrations restored by the services")
    # and the client's watch found the new registry too
    wait_until(lambda: item(cat.port).get("price"), timeout=5, what="calls work again")


def test_no_registry_no_instance_and_bad_arguments(system, tmp_path):
    reg = system.reg()
    cat = system.svc("catalog", reg)
    d = item(cat.port)
    assert d["price"] is None and d["reason"] == "no healthy instance"
    from svcutil import BIN_DIR
    import subprocess
    for args, msg in ((["--weight", "0"], "--weight"), (["--bogus", "1"], "unknown option"),
                      (["--listen", "127.0.0.1:0"], "--registry is required"),
                      (["--registry", "ftp://x", "--listen", "127.0.0.1:0"], "bad registry URL")):
        r = subprocess.run([BIN_DIR / "weft-example-catalog", *args], capture_output=True,
                           text=True, timeout=10)
        assert r.returncode in (1, 2) and msg in r.stderr, (args, r.returncode, r.stderr)


def test_gateway_in_front_routes_by_discovery(system, tmp_path):
    reg = system.reg()
    system.svc("pricing", reg)
    system.svc("catalog", reg)
    system.svc("catalog", reg)
    wait_until(lambda: len(instances(reg, "catalog")) == 2, what="two catalog instances")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
clusters:
  catalog:
    discovery: {{registry: "http://127.0.0.1:{reg.port}", service: catalog}}
routes:
  - match: {{prefix: /catalog/}}
    strip_prefix: /catalog
    cluster: catalog
""")
    gw = system.add(Proc([WEFT_BIN, "gateway", "-c", cfg, "--listen", "127.0.0.1:0",
                          "--admin", "127.0.0.1:0"], tmp_path, "gateway"))
    def ok():
        st, _, b = http(gw.port, "GET", "/catalog/items/dates")
        return st == 200 and json.loads(b)
    d = wait_until(ok, what="gateway serving catalog")
    assert d["price"]["sku"] == "dates"
    # the gateway's request id reaches pricing, two hops away
    st, hdrs, b = http(gw.port, "GET", "/catalog/items/dates", headers={"X-Request-Id": "e2e-7"})
    assert st == 200 and json.loads(b)["price"]["request_id"] == "e2e-7"


def test_prometheus_discovers_and_scrapes_the_services(system, tmp_path):
    """A real Prometheus finds the SDK services through the registry's
    Eureka API and its HTTP service discovery, and scrapes their /metrics."""
    from weftutil import Prometheus
    reg = system.reg()
    p1 = system.svc("pricing", reg)
    cat = system.svc("catalog", reg)
    wait_until(lambda: len(instances(reg, "pricing")) + len(instances(reg, "catalog")) == 2,
               what="both registered")
    prom = Prometheus(tmp_path, f"""
  - job_name: eureka
    eureka_sd_configs:
      - server: http://127.0.0.1:{reg.port}/eureka/v2
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_eureka_app_name]
        target_label: app
  - job_name: weft
    http_sd_configs:
      - url: http://127.0.0.1:{reg.port}/v1/prometheus/targets
        refresh_interval: 1s
""")
    try:
        want = sorted([p1.addr, cat.addr])
        for job in ("eureka", "weft"):
            def up():
                ts = prom.targets(job) or []
                return (sorted(t["discoveredLabels"]["__address__"] for t in ts) == want and
                        all(t["health"] == "up" for t in ts)) and ts
            ts = wait_until(up, timeout=60, interval=0.5, what=f"{job} targets up")
            if job == "eureka":
                assert sorted(t["labels"]["app"] for t in ts) == ["CATALOG", "PRICING"]
        # the scraped series are the services' own
        item(cat.port)

        def scraped():
            d = prom.api('query?query=weft_client_calls_total{job="weft",result="ok"}')
            return d and d["result"] and float(d["result"][0]["value"][1]) >= 1
        wait_until(scraped, timeout=30, interval=0.5, what="client metrics scraped")
    finally:
        prom.stop()


def test_watch_of_an_unknown_service_does_not_spin(system):
    """A service nobody registered has revision 0 in the registry, which
    cannot park a query on index 0: the client's watch must not re-ask in a
    tight loop (it used to, burning a core in both processes)."""
    reg = system.reg()
    cat = system.svc("catalog", reg)
    assert item(cat.port)["reason"] == "no healthy instance"   # the watch is running
    before = metric(reg.port, "weft_http_requests_total")
    time.sleep(1.0)
    asked = metric(reg.port, "weft_http_requests_total") - before
    assert asked < 20, f"{asked} registry requests in 1 s"
    # and once pricing registers, calls find it within milliseconds
    system.svc("pricing", reg)
    wait_until(lambda: instances(reg, "pricing"), what="pricing registered")
    t0 = time.monotonic()
    wait_until(lambda: item(cat.port).get("price"), timeout=5, what="pricing found")
    assert time.monotonic() - t0 < 1.5


def test_last_instance_deregistered_leaves_no_instance(system):
    """When the last instance of a service leaves, the watch answers with an
    empty list and the client must drop the old one: calls fail at once
    with "no healthy instance" instead of still being sent to the departed
    address (the balancer cannot be built over zero endpoints, and the
    update used to be dropped)."""
    reg = system.reg()
    p1 = system.svc("pricing", reg)
    cat = system.svc("catalog", reg)
    wait_until(lambda: instances(reg, "pricing"), what="pricing registered")
    assert item(cat.port)["price"]["instance"] == p1.addr
    p1.signal(signal.SIGTERM)
    assert p1.proc.wait(timeout=10) == 0
    assert not instances(reg, "pricing")
    reasons = [item(cat.port)["reason"] for _ in range(5)]
    assert reasons == ["no healthy instance"] * 5, reasons
    assert metric(cat.port, "weft_client_calls_total", service="pricing",
                  result="no_instance") >= 5


class JsonServer:
    """A plain HTTP server on 127.0.0.1 whose answers come from
    answer(method, path, headers, body) -> (status, body bytes), sent as
    JSON."""

    def __init__(self, answer):
        import http.server as hs

        class H(hs.BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                st, out = answer(self.command, self.path, dict(self.headers.items()),
                                 self.rfile.read(n) if n else b"")
                self.send_response(st)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *a):
                pass

        self.srv = hs.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class Upstream(JsonServer):
    """Registered in the registry as `service`; records each request's
    method, headers and body and answers with the statuses in `script`
    (the last one repeats)."""

    def __init__(self, reg, service, script=(200,)):
        self.seen, self.script = [], list(script)
        super().__init__(self._answer)
        st, _, _ = http(reg.port, "PUT", f"/v1/services/{service}/instances/up-{self.port}",
                        body={"address": "127.0.0.1", "port": self.port, "ttl": 60})
        assert st == 200

    def _answer(self, method, path, headers, body):
        self.seen.append((method, headers, body))
        st = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return st, b'{"ok":true}'


CLIENT_PROBE = BIN_DIR / "weft-test-client-probe"  # tests/sdk/client_probe.c


def probe(reg, service, method, path, *args, many=False):
    """Run one client_probe (one or, with -n, several weft_client calls);
    its results, parsed."""
    import subprocess
    if not CLIENT_PROBE.exists():
        pytest.skip("weft-test-client-probe is built with the tests (make asan)")
    r = subprocess.run([str(CLIENT_PROBE), f"http://127.0.0.1:{reg.port}", service, method, path,
                        *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "Sanitizer" not in r.stderr and "runtime error:" not in r.stderr, r.stderr[-4000:]
    got = [json.loads(ln) for ln in r.stdout.splitlines()]
    return got if many else got[0]


def test_large_headers_are_sent_whole(system):
    """Headers are all sent, with the deadline, however large the block
    (a big bearer token): the request head was built in a fixed 4 KiB
    buffer and everything was silently dropped when it did not fit."""
    reg = system.reg()
    up = Upstream(reg, "echo")
    try:
        token = "Bearer " + "x" * 6000
        r = probe(reg, "echo", "GET", "/h", "-H", f"Authorization: {token}",
                  "-H", "X-Small: 1")
        assert r["err"] == 0 and r["status"] == 200, r
        (_, hdrs, _), = up.seen
        assert hdrs.get("Authorization") == token
        assert hdrs.get("X-Small") == "1"
        assert hdrs.get("Host") == "echo"
        assert 0 < int(hdrs.get("X-Weft-Deadline-Ms", "0")) <= 5000
    finally:
        up.close()


def test_long_content_type_keeps_the_next_header(system):
    """A long Content-Type is sent whole on its own line: it was formatted
    into a 512-byte line, lost its CRLF and swallowed the header after it."""
    reg = system.reg()
    up = Upstream(reg, "echo")
    try:
        ct = "application/x." + "a" * 600
        r = probe(reg, "echo", "POST", "/p", "-d", "{}", "-t", ct, "-H", "X-After: 1")
        assert r["err"] == 0 and r["status"] == 200, r
        (_, hdrs, body), = up.seen
        assert hdrs.get("Content-Type") == ct and hdrs.get("X-After") == "1" and body == b"{}"
    finally:
        up.close()


def test_post_lost_on_a_reused_connection_is_not_sent_again(system):
    """A POST that reached the server on a pooled connection, which then
    died without answering, may have been processed: it must not be sent
    again (the HTTP client resends such requests on a fresh connection
    unless told not to). The call fails; the server saw it once."""
    import socket
    reg = system.reg()
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(8)
    lsn.settimeout(10)
    port = lsn.getsockname()[1]
    st, _, _ = http(reg.port, "PUT", f"/v1/services/orders/instances/o-{port}",
                    body={"address": "127.0.0.1", "port": port, "ttl": 60})
    assert st == 200
    posts = []

    def read_request(c):
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                return None
            data += d
        head, _, body = data.partition(b"\r\n\r\n")
        n = 0
        for ln in head.split(b"\r\n"):
            if ln.lower().startswith(b"content-length:"):
                n = int(ln.split(b":")[1])
        while len(body) < n:
            body += c.recv(65536)
        return head.split(b" ")[0]

    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"

    def serve():
        try:
            for conn_no in range(3):  # bounded: a third connection is already a failure
                c, _ = lsn.accept()
                c.settimeout(10)
                with c:
                    first = True
                    while True:
                        m = read_request(c)
                        if m is None:
                            break
                        posts.append(m)
                        if conn_no == 0 and not first:
                            break  # processed, then died before answering
                        c.sendall(ok)
                        first = False
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        got = probe(reg, "orders", "POST", "/orders", "-d", '{"n":1}', "-n", "2", many=True)
        assert got[0]["err"] == 0 and got[0]["status"] == 200, got
        assert posts == [b"POST", b"POST"], posts  # the second one reached the server once
        assert got[1]["err"] != 0, got  # and failed instead of running twice
    finally:
        try:
            lsn.shutdown(socket.SHUT_RDWR)  # wakes the accept() in serve()
        except OSError:
            pass
        lsn.close()
        t.join(timeout=5)


class FlakyRegistry(JsonServer):
    """A pass-through proxy in front of the real registry that answers the
    first `fail_deletes` DELETEs with 503 itself."""

    def __init__(self, reg, fail_deletes):
        self.reg, self.methods, self.fail_deletes = reg, [], fail_deletes
        super().__init__(self._answer)

    def _answer(self, method, path, headers, body):
        import http.client
        self.methods.append(method)
        if method == "DELETE" and self.fail_deletes > 0:
            self.fail_deletes -= 1
            return 503, b'{"error":"try again"}'
        c = http.client.HTTPConnection("127.0.0.1", self.reg.port, timeout=5)
        try:
            c.request(method, path, body=body or None,
                      headers={"Content-Type": "application/json"} if body else {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def test_failed_deregistration_is_sent_again(system):
    """The DELETE sent at SIGTERM is sent again when it fails (here a 503),
    so watchers drop the instance at once instead of when its 10 s TTL
    runs out."""
    reg = system.reg()
    prox = FlakyRegistry(reg, fail_deletes=1)
    try:
        p1 = system.svc("pricing", prox)
        wait_until(lambda: instances(reg, "pricing"), what="pricing registered")
        t0 = time.monotonic()
        assert p1.stop() == 0
        wait_until(lambda: not instances(reg, "pricing"), timeout=2.0,
                   what="pricing deregistered")
        assert time.monotonic() - t0 < 3.0
        assert prox.methods.count("DELETE") == 2, prox.methods
    finally:
        prox.close()
