"""The Consul-compatible subset, driven by a real Consul client: Debian's
python3-consul (python-consul 0.7)."""
import time

import consul

from test_registry_checks import Backend, wait_for
from test_registry_durability import Registry
from weftutil import Prometheus


def client(r):
    return consul.Consul(host="127.0.0.1", port=r.port)


def test_python_consul_register_discover_deregister(tmp_path):
    b = Backend()
    r = Registry(tmp_path / "d", tmp_path)
    try:
        c = client(r)
        assert c.agent.service.register(
            "web", service_id="web-1", address="127.0.0.1", port=b.port, tags=["v1", "blue"],
            check=consul.Check.http(f"http://127.0.0.1:{b.port}/health", "100ms"))
        assert c.agent.service.register("web", service_id="web-2", address="127.0.0.1", port=9,
                                        tags=["v2"], check=consul.Check.ttl("10s"))
        assert c.agent.service.register("db", service_id="db-1", address="127.0.0.2", port=5432)
        idx, svcs = c.catalog.services()
        assert int(idx) >= 3
        assert set(svcs) == {"web", "db"} and sorted(svcs["web"]) == ["blue", "v1", "v2"]
        idx, nodes = c.catalog.service("web")
        assert {n["ServiceID"]: n["ServicePort"] for n in nodes} == {"web-1": b.port, "web-2": 9}
        assert all(n["Node"] == "weft" and n["Datacenter"] == "dc1" for n in nodes)
        idx, nodes = c.catalog.service("web", tag="v2")
        assert [n["ServiceID"] for n in nodes] == ["web-2"]
        # the HTTP check starts critical, then passes
        assert wait_for(lambda: {n["Service"]["ID"] for n in
                                 c.health.service("web", passing=True)[1]} == {"web-1", "web-2"})
        idx, nodes = c.health.service("web")
        n1 = [n for n in nodes if n["Service"]["ID"] == "web-1"][0]
        assert n1["Checks"][0]["Status"] == "passing" and n1["Checks"][0]["Type"] == "http"
        assert n1["Service"]["Tags"] == ["v1", "blue"]
        # the backend fails: ?passing drops it, the plain listing marks it critical
        b.code = 503
        assert wait_for(lambda: {n["Service"]["ID"] for n in
                                 c.health.service("web", passing=True)[1]} == {"web-2"})
        idx, nodes = c.health.service("web")
        n1 = [n for n in nodes if n["Service"]["ID"] == "web-1"][0]
        assert n1["Checks"][0]["Status"] == "critical"
        # TTL checks are leases: pass renews, an unknown ID is refused
        assert c.agent.check.ttl_pass("service:web-2") is True
        assert c.agent.check.ttl_pass("service:nope") is False  # python-consul: 404 -> False
        assert r.req("PUT", "/v1/agent/check/pass/service:nope")[0] == 404
        assert c.agent.self()["Config"]["Datacenter"] == "dc1"
        assert c.agent.service.deregister("web-2") is True
        assert [n["ServiceID"] for n in c.catalog.service("web")[1]] == ["web-1"]
        assert r.req("PUT", "/v1/agent/service/deregister/web-2")[0] == 404
    finally:
        assert r.stop() == 0
        b.close()


def test_consul_deregister_critical_service_after(tmp_path):
    r = Registry(tmp_path / "d", tmp_path)
    try:
        c = client(r)
        # port 9 on loopback: nothing listens, every probe fails
        assert c.agent.service.register(
            "gone", service_id="g1", address="127.0.0.1", port=9,
            check=consul.Check.tcp("127.0.0.1", 9, "100ms", deregister="1s"))
        assert c.catalog.service("gone")[1][0]["ServiceID"] == "g1"
        t0 = time.monotonic()
        assert wait_for(lambda: c.catalog.service("gone")[1] == [], 5)
        assert time.monotonic() - t0 >= 0.8
    finally:
        assert r.stop() == 0


def test_consul_blocking_query_wakes_on_change(tmp_path):
    r = Registry(tmp_path / "d", tmp_path)
    try:
        c = client(r)
        assert c.agent.service.register("api", service_id="a1", address="127.0.0.1", port=81)
        idx, _ = c.health.service("api")
        # no change: the query waits out its wait time and returns the same index
        t0 = time.monotonic()
        idx2, _ = c.health.service("api", index=idx, wait="500ms")
        assert time.monotonic() - t0 >= 0.45 and idx2 == idx
        # a change in another service does not wake it; one in this service does
        import threading
        got = {}

        def block():
            t = time.monotonic()
            got["idx"], got["nodes"] = c.health.service("api", index=idx, wait="10s")
            got["t"] = time.monotonic() - t

        th = threading.Thread(target=block)
        th.start()
        time.sleep(0.3)
        assert c.agent.service.register("other", service_id="o1", address="127.0.0.1", port=82)
        time.sleep(0.3)
        assert "idx" not in got
        assert c.agent.service.register("api", service_id="a2", address="127.0.0.1", port=83)
        th.join(5)
        assert int(got["idx"]) > int(idx) and got["t"] < 2
        assert {n["Service"]["ID"] for n in got["nodes"]} == {"a1", "a2"}
        # catalog/services blocks on the whole registry
        idx, _ = c.catalog.services()
        t0 = time.monotonic()
        idx3, svcs = c.catalog.services(index=idx, wait="300ms")
        assert idx3 == idx and time.monotonic() - t0 >= 0.25
    finally:
        assert r.stop() == 0


def test_consul_registration_errors_are_400(tmp_path):
    r = Registry(tmp_path / "d", tmp_path)
    bad = [
        ({"ID": "x", "Port": 1}, "Name:"),
        ({"Name": "a b", "Port": 1}, "Name:"),
        ({"Name": "s", "Port": 1, "Bogus": 1}, "Bogus: not supported"),
        ({"Name": "s", "Port": 0}, "port:"),
        ({"Name": "s", "Port": 1, "Check": {"HTTP": "/h", "TCP": "1.2.3.4:5"}}, "Check:"),
        ({"Name": "s", "Port": 1, "Check": {"Args": ["/bin/true"], "Interval": "1s"}},
         "Check.Args: not supported"),
        ({"Name": "s", "Port": 1, "Check": {"TTL": "5s", "DeregisterCriticalServiceAfter": "1m"}},
         "Check.DeregisterCriticalServiceAfter: only with HTTP or TCP"),
        ({"Name": "s", "Port": 1, "Checks": [{"HTTP": "/a"}, {"TCP": ":1"}]}, "Check:"),
        ({"Name": "s", "Port": 1, "Kind": "connect-proxy"}, "Kind:"),
        ({"Name": "s", "Port": 1, "Address": 5}, "Address:"),  # was taken as 127.0.0.1
    ]
    try:
        for body, msg in bad:
            st, d = r.req("PUT", "/v1/agent/service/register", body)
            assert st == 400, (body, d)
            assert d["error"].startswith(msg), (body, d)
        st, d = r.req("GET", "/v1/agent/service/register")
        assert st == 405
        st, d = r.req("GET", "/v1/catalog/services")
        assert st == 200 and d == {}
        # keys are case-insensitive, as in Consul; an ID moved to another service moves
        assert r.req("PUT", "/v1/agent/service/register",
                     {"name": "s1", "id": "i", "port": 7, "check": {"tcp": "127.0.0.1:7",
                                                                    "interval": "1s"}})[0] == 200
        assert r.req("PUT", "/v1/agent/service/register",
                     {"Name": "s2", "ID": "i", "Port": 7})[0] == 200
        st, d = r.req("GET", "/v1/catalog/services")
        assert d == {"s2": []}
    finally:
        assert r.stop() == 0


# Prometheus's consul_sd_configs cannot be exercised here: Debian 12's prometheus
# 2.42 package is built without the Consul discovery plugin (loading such a
# config fails with "field consul_sd_configs not found in type
# config.ScrapeConfig"). Its request sequence (agent/self, catalog/services,
# health/service with index/wait) is what the tests above cover.


def test_prometheus_http_sd_discovers_and_scrapes(tmp_path):
    """A real Prometheus server discovers instances through
    GET /v1/prometheus/targets (http_sd_configs), keeps the healthy ones by
    relabelling, scrapes them, and drops one that goes DOWN."""
    r = Registry(tmp_path / "d", tmp_path)
    prom = Prometheus(tmp_path, f"""
  - job_name: weft
    http_sd_configs:
      - url: http://127.0.0.1:{r.port}/v1/prometheus/targets
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_weft_healthy]
        regex: "true"
        action: keep
      - source_labels: [__meta_weft_service]
        target_label: service
      - source_labels: [__meta_weft_meta_team]
        target_label: team
""")

    def targets():
        return prom.targets("weft")

    try:
        # the registry itself (it serves /metrics) and a DOWN instance on a dead port
        assert r.req("PUT", "/v1/services/weft-registry/instances/a",
                     {"address": "127.0.0.1", "port": r.port, "tags": ["metrics"],
                      "meta": {"team": "core"}})[0] == 200
        assert r.req("PUT", "/v1/services/weft-registry/instances/b",
                     {"address": "127.0.0.1", "port": 9, "status": "DOWN"})[0] == 200
        st, groups = r.req("GET", "/v1/prometheus/targets")
        assert st == 200 and len(groups) == 2
        ga = [g for g in groups if g["labels"]["__meta_weft_id"] == "a"][0]
        assert ga["targets"] == [f"127.0.0.1:{r.port}"]
        assert ga["labels"]["__meta_weft_tags"] == ",metrics,"
        assert ga["labels"]["__meta_weft_meta_team"] == "core"
        ok = wait_for(lambda: [(t["labels"]["instance"], t["health"]) for t in (targets() or [])]
                      == [(f"127.0.0.1:{r.port}", "up")], 30)
        assert ok, (targets(), prom.log_tail())
        t = targets()[0]
        assert t["labels"]["team"] == "core" and t["labels"]["service"] == "weft-registry"
        # the instance goes DOWN: Prometheus drops the target on its next refresh
        assert r.req("PUT", "/v1/services/weft-registry/instances/a/status",
                     {"status": "DOWN"})[0] == 200
        assert wait_for(lambda: targets() == [], 30), targets()
    finally:
        prom.stop()
        assert r.stop() == 0


def test_consul_refused_move_to_another_service_keeps_the_instance(tmp_path):
    """Re-registering an ID under another Name moves it, but only once the
    new registration is valid: a refused one (400) leaves the old intact."""
    r = Registry(tmp_path / "d", tmp_path)
    try:
        c = client(r)
        assert c.agent.service.register("a", service_id="x", address="127.0.0.1", port=7)
        idx, _ = c.catalog.service("a")
        st, d = r.req("PUT", "/v1/agent/service/register",
                      {"Name": "b", "ID": "x", "Port": "seven"})
        assert st == 400 and d["error"].startswith("port:"), d
        assert [n["ServiceID"] for n in c.catalog.service("a")[1]] == ["x"]
        assert c.catalog.service("b")[1] == []
        assert c.catalog.service("a")[0] == idx  # nothing changed
    finally:
        assert r.stop() == 0


def test_consul_ttl_check_ids(tmp_path):
    """A TTL check is the instance's lease and is passed by the names
    Consul's agent gives it: "service:ID", or "service:ID:N" when the
    service has several checks. A CheckID of its own is refused at
    registration: every pass by that name would be a 404 and the lease
    would run out while the client heartbeats."""
    r = Registry(tmp_path / "d", tmp_path)
    try:
        st, d = r.req("PUT", "/v1/agent/service/register",
                      {"Name": "web", "ID": "w1", "Port": 80,
                       "Check": {"TTL": "10s", "CheckID": "my-ttl"}})
        assert st == 400 and d["error"].startswith("Check.CheckID:"), d
        assert r.req("GET", "/v1/catalog/services")[1] == {}
        # the names Consul itself would give are accepted
        for cid in ("service:w1", "w1"):
            assert r.req("PUT", "/v1/agent/service/register",
                         {"Name": "web", "ID": "w1", "Port": 80,
                          "Check": {"TTL": "10s", "CheckID": cid}})[0] == 200
        # two checks: the TTL one is the second, "service:w2:2"
        assert r.req("PUT", "/v1/agent/service/register",
                     {"Name": "web", "ID": "w2", "Port": 81,
                      "Checks": [{"TCP": "127.0.0.1:9", "Interval": "10s"},
                                 {"TTL": "10s", "CheckID": "service:w2:2"}]})[0] == 200
        assert r.req("PUT", "/v1/agent/check/pass/service:w2:2")[0] == 200
        assert r.req("PUT", "/v1/agent/check/pass/service:w1")[0] == 200
        assert r.req("PUT", "/v1/agent/check/pass/service:w3:2")[0] == 404
        assert r.req("PUT", "/v1/agent/check/pass/service:w2:x")[0] == 404
    finally:
        assert r.stop() == 0
