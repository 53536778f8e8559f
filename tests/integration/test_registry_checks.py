"""Active health checks run by the registry: HTTP (2xx passes) and TCP
(connect passes) probes against real listeners on loopback; thresholds;
only state flips are changes (revision, watchers, journal); definitions
and state survive a restart; bad definitions are 400 with the field."""
import http.server
import socket
import threading
import time

from test_registry_durability import Registry


class Backend:
    """An HTTP server whose every path answers `self.code` with `body` (by
    default "ok" or "no"); counts requests."""

    def __init__(self, body=None):
        self.code = 200
        self.hits = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.hits += 1
                text = body if body is not None else b"ok" if outer.code < 300 else b"no"
                self.send_response(outer.code)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def inst(r, svc, iid):
    st, d = r.req("GET", f"/v1/services/{svc}/instances/{iid}")
    assert st == 200, d
    return d


def wait_for(pred, timeout=5.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def healthy_ids(r, svc):
    st, d = r.req("GET", f"/v1/services/{svc}?healthy=true")
    assert st == 200
    return {x["id"] for x in d["instances"]}


def test_http_check_flips_health_and_only_flips_are_changes(tmp_path):
    b = Backend()
    r = Registry(tmp_path / "d", tmp_path)
    try:
        st, _ = r.req("PUT", "/v1/services/api/instances/a",
                      {"address": "127.0.0.1", "port": b.port,
                       "check": {"http": "/health", "interval": "200ms", "timeout": "150ms"}})
        assert st == 200
        d = inst(r, "api", "a")
        # a new check starts critical (Consul's default) until a probe passes
        assert d["check"]["http"] == "/health" and d["check"]["interval"] == "200ms"
        assert wait_for(lambda: inst(r, "api", "a")["check"]["status"] == "passing")
        assert inst(r, "api", "a")["healthy"] is True
        assert healthy_ids(r, "api") == {"a"}
        # steady passing results change nothing: the revision stays put
        rev = inst(r, "api", "a")["revision"]
        hits = b.hits
        time.sleep(1.0)
        assert b.hits >= hits + 3, "the check is not being repeated"
        assert inst(r, "api", "a")["revision"] == rev
        # the backend fails: critical, unhealthy, a new revision
        b.code = 503
        assert wait_for(lambda: inst(r, "api", "a")["check"]["status"] == "critical")
        d = inst(r, "api", "a")
        assert d["healthy"] is False and d["revision"] > rev
        assert healthy_ids(r, "api") == set()
        # and recovers
        b.code = 200
        assert wait_for(lambda: healthy_ids(r, "api") == {"a"})
    finally:
        assert r.stop() == 0
        b.close()


def test_failure_threshold_needs_consecutive_failures(tmp_path):
    b = Backend()
    r = Registry(tmp_path / "d", tmp_path)
    try:
        assert r.req("PUT", "/v1/services/api/instances/a",
                     {"address": "127.0.0.1", "port": b.port,
                      "check": {"http": f"http://127.0.0.1:{b.port}/health", "interval": "100ms",
                                "failures": 4, "successes": 2, "status": "passing"}})[0] == 200
        # "status": "passing" starts healthy without waiting for a probe
        assert inst(r, "api", "a")["healthy"] is True
        time.sleep(0.3)
        b.code = 500
        start = b.hits
        assert wait_for(lambda: inst(r, "api", "a")["check"]["status"] == "critical")
        # at least 4 failing probes were needed (one may have been in flight at the switch)
        assert b.hits - start >= 4, b.hits - start
        b.code = 200
        start = b.hits
        assert wait_for(lambda: inst(r, "api", "a")["check"]["status"] == "passing")
        assert b.hits - start >= 2
    finally:
        assert r.stop() == 0
        b.close()


def test_tcp_check_follows_the_listener(tmp_path):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    port = ls.getsockname()[1]
    r = Registry(tmp_path / "d", tmp_path)
    try:
        assert r.req("PUT", "/v1/services/db/instances/p",
                     {"address": "127.0.0.1", "port": port,
                      "check": {"tcp": "", "interval": "100ms"}})[0] == 200
        assert r.req("PUT", "/v1/services/db/instances/q",
                     {"address": "127.0.0.1", "port": 9,
                      "check": {"tcp": f"127.0.0.1:{port}", "interval": "100ms"}})[0] == 200
        assert wait_for(lambda: healthy_ids(r, "db") == {"p", "q"})
        ls.close()  # nothing listens there any more: connects are refused
        assert wait_for(lambda: healthy_ids(r, "db") == set())
        st, m = r.req("GET", "/v1/services/db/instances/p")
        assert m["check"]["status"] == "critical" and m["check"]["tcp"] == ""
    finally:
        assert r.stop() == 0


def test_check_that_never_answers_times_out(tmp_path):
    # a listener that accepts (kernel backlog) but never answers HTTP
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    port = ls.getsockname()[1]
    r = Registry(tmp_path / "d", tmp_path)
    try:
        assert r.req("PUT", "/v1/services/s/instances/a",
                     {"address": "127.0.0.1", "port": port,
                      "check": {"http": "/", "interval": "300ms", "timeout": "200ms",
                                "status": "passing"}})[0] == 200
        assert wait_for(lambda: inst(r, "s", "a")["check"]["status"] == "critical", 5)
    finally:
        assert r.stop() == 0
        ls.close()


def test_check_definition_and_state_survive_restart(tmp_path):
    b = Backend()
    data = tmp_path / "d"
    r = Registry(data, tmp_path)
    try:
        assert r.req("PUT", "/v1/services/api/instances/a",
                     {"address": "127.0.0.1", "port": b.port, "ttl": "30s",
                      "check": {"http": "/health", "interval": "150ms"}})[0] == 200
        assert wait_for(lambda: inst(r, "api", "a")["check"]["status"] == "passing")
        time.sleep(0.3)  # the flip is journaled by the group commit
    finally:
        r.kill9()
    r = Registry(data, tmp_path)
    try:
        d = inst(r, "api", "a")
        assert d["check"]["http"] == "/health" and d["check"]["interval"] == "150ms"
        assert d["check"]["status"] == "passing"
        b.code = 503
        assert wait_for(lambda: inst(r, "api", "a")["check"]["status"] == "critical")
        time.sleep(0.3)
    finally:
        assert r.stop() == 0
    r = Registry(data, tmp_path)
    try:
        # the critical state was written: no healthy window after a restart
        assert inst(r, "api", "a")["check"]["status"] == "critical"
        assert healthy_ids(r, "api") == set()
        # re-registering without the check removes it: healthy again at once
        assert r.req("PUT", "/v1/services/api/instances/a",
                     {"address": "127.0.0.1", "port": b.port, "ttl": "30s"})[0] == 200
        d = inst(r, "api", "a")
        assert "check" not in d and d["healthy"] is True
    finally:
        assert r.stop() == 0
        b.close()


def test_deregister_after_removes_only_long_critical_instances(tmp_path):
    b = Backend()
    r = Registry(tmp_path / "d", tmp_path)
    try:
        chk = {"http": "/health", "interval": "100ms", "deregister_after": "1s"}
        # the flapping one gets 2 s so that the sleeps below leave a wide margin
        assert r.req("PUT", "/v1/services/s/instances/ok",
                     {"address": "127.0.0.1", "port": b.port,
                      "check": dict(chk, deregister_after="2s")})[0] == 200
        assert r.req("PUT", "/v1/services/s/instances/dead",
                     {"address": "127.0.0.1", "port": 9, "check": chk})[0] == 200
        assert inst(r, "s", "dead")["check"]["deregister_after"] == "1000ms"
        t0 = time.monotonic()
        assert wait_for(lambda: r.req("GET", "/v1/services/s/instances/dead")[0] == 404, 5)
        assert time.monotonic() - t0 >= 0.8
        # a flapping instance is not removed: passing resets the clock
        b.code = 503
        assert wait_for(lambda: inst(r, "s", "ok")["check"]["status"] == "critical")
        time.sleep(0.5)
        b.code = 200
        assert wait_for(lambda: inst(r, "s", "ok")["check"]["status"] == "passing")
        b.code = 503
        time.sleep(0.7)
        assert r.req("GET", "/v1/services/s/instances/ok")[0] == 200
        assert wait_for(lambda: r.req("GET", "/v1/services/s/instances/ok")[0] == 404, 5)
    finally:
        assert r.stop() == 0
        b.close()


def test_deregistering_during_a_probe_is_safe(tmp_path):
    b = Backend()
    r = Registry(tmp_path / "d", tmp_path)
    try:
        for round_ in range(20):
            assert r.req("PUT", "/v1/services/x/instances/a",
                         {"address": "127.0.0.1", "port": b.port,
                          "check": {"http": "/health", "interval": "50ms"}})[0] == 200
            time.sleep(0.06)
            assert r.req("DELETE", "/v1/services/x/instances/a")[0] == 200
        st, d = r.req("GET", "/v1/services/x")
        assert st == 200 and d["instances"] == []
    finally:
        assert r.stop() == 0
        b.close()


def test_bad_check_definitions_are_400(tmp_path):
    r = Registry(tmp_path / "d", tmp_path)
    bad = [
        ({"interval": "1s"}, "check"),
        ({"http": "/h", "tcp": ""}, "check"),
        ({"http": "ftp://x/"}, "check.http"),
        ({"http": "http://:80/"}, "check.http"),
        ({"http": "http://h:99999/"}, "check.http"),
        ({"http": "/a b"}, "check.http"),
        ({"tcp": "127.0.0.1"}, "check.tcp"),
        ({"tcp": 5}, "check.tcp"),
        ({"http": "/h", "interval": "10ms"}, "check.interval"),
        ({"http": "/h", "interval": "1s", "timeout": "2s"}, "check.timeout"),
        ({"http": "/h", "failures": 0}, "check.failures"),
        ({"http": "/h", "status": "warning"}, "check.status"),
        ({"http": "/h", "script": "rm -rf /"}, "check.script"),
        ({"http": "/h", "deregister_after": "10ms"}, "check.deregister_after"),
    ]
    try:
        for chk, field in bad:
            st, d = r.req("PUT", "/v1/services/s/instances/a",
                          {"address": "127.0.0.1", "port": 80, "check": chk})
            assert st == 400, (chk, d)
            assert d["error"].startswith(field + ":"), (chk, d)
        st, d = r.req("PUT", "/v1/services/s/instances/a",
                      {"address": "127.0.0.1", "port": 80, "check": "yes"})
        assert st == 400 and d["error"].startswith("check:")
        st, d = r.req("GET", "/v1/services/s")
        assert d["instances"] == []
    finally:
        assert r.stop() == 0
