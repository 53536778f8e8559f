"""Gateway clusters discovered from weft registry: changes within 100 ms,
TTL expiry, weights, zone preference, stale on error, recovery."""
import collections
import concurrent.futures
import time

from gwutil import WEFT_BIN, gateway, metric, origin_of, origins, wait_until  # noqa: F401
from svcutil import Registry


def Reg(tmp_path, port=0):  # noqa: N802
    return Registry(tmp_path, "--log-level", "info", port=port)


def cfg(reg, extra=""):
    return f"""
clusters:
  svc:
    discovery: {{registry: "http://127.0.0.1:{reg.port}", service: svc{extra}}}
    lb: round_robin
    outlier_detection: false
routes:
  - cluster: svc
    retry: false
"""


def eps(g):
    return sorted(e["address"] for e in g.cluster("svc")["endpoints"])


def spread(g, n):
    cnt = collections.Counter()
    with g.client() as c:
        for _ in range(n):
            r = c.get("/x")
            cnt[origin_of(r) if r.status == 200 else r.status] += 1
    return cnt


def test_changes_reach_the_gateway_within_100ms(gateway, origins, tmp_path):  # noqa: F811
    a, b = origins(2)
    reg = Reg(tmp_path)
    try:
        g = gateway(cfg(reg))
        with g.client() as c:
            assert c.get("/x").status == 503  # nothing registered yet
        assert reg.put("svc", "a", {"address": "127.0.0.1", "port": a.port}) == 200
        wait_until(lambda: eps(g) == [a.addr], timeout=2, what="first registration")
        t0 = time.monotonic()
        assert reg.put("svc", "b", {"address": "127.0.0.1", "port": b.port}) == 200
        wait_until(lambda: eps(g) == sorted([a.addr, b.addr]), timeout=2, interval=0.002,
                   what="second registration")
        assert time.monotonic() - t0 < 0.1, "a registration took longer than 100 ms to arrive"
        cnt = spread(g, 40)
        assert cnt[a.name] == 20 and cnt[b.name] == 20, cnt
        t0 = time.monotonic()
        assert reg.delete("svc", "a") == 200
        wait_until(lambda: eps(g) == [b.addr], timeout=2, interval=0.002, what="deregistration")
        assert time.monotonic() - t0 < 0.1
        assert spread(g, 10) == {b.name: 10}
    finally:
        assert reg.stop() == 0


def test_expired_lease_leaves_the_gateway(gateway, origins, tmp_path):  # noqa: F811
    a, b = origins(2)
    reg = Reg(tmp_path)
    try:
        g = gateway(cfg(reg))
        reg.put("svc", "a", {"address": "127.0.0.1", "port": a.port})
        reg.put("svc", "b", {"address": "127.0.0.1", "port": b.port, "ttl": "1s"})
        wait_until(lambda: len(eps(g)) == 2, timeout=2, what="both registered")
        t0 = time.monotonic()
        wait_until(lambda: eps(g) == [a.addr], timeout=3, what="lease expiry")  # no heartbeats
        assert time.monotonic() - t0 < 1.5
    finally:
        assert reg.stop() == 0


def test_weights_and_zone_preference(gateway, origins, tmp_path):  # noqa: F811
    a, b, c = origins(3)
    reg = Reg(tmp_path)
    try:
        g = gateway(cfg(reg, ", zone: z1").replace("round_robin", "weighted_round_robin"))
        reg.put("svc", "a", {"address": "127.0.0.1", "port": a.port, "zone": "z1", "weight": 1})
        reg.put("svc", "b", {"address": "127.0.0.1", "port": b.port, "zone": "z1", "weight": 3})
        reg.put("svc", "c", {"address": "127.0.0.1", "port": c.port, "zone": "z2", "weight": 5})
        wait_until(lambda: eps(g) == sorted([a.addr, b.addr]), timeout=2, what="zone z1 only")
        cnt = spread(g, 40)
        assert cnt[a.name] == 10 and cnt[b.name] == 30 and cnt[c.name] == 0, cnt
        # no healthy instance left in z1: fall back to every zone
        reg.req("PUT", "/v1/services/svc/instances/a/status", {"status": "DOWN"})
        reg.req("PUT", "/v1/services/svc/instances/b/status", {"status": "DOWN"})
        wait_until(lambda: eps(g) == [c.addr], timeout=2, what="fallback to other zones")
    finally:
        assert reg.stop() == 0


def test_stale_on_error_and_recovery(gateway, origins, tmp_path):  # noqa: F811
    a, = origins(1)
    reg = Reg(tmp_path)
    g = gateway(cfg(reg))
    reg.put("svc", "a", {"address": "127.0.0.1", "port": a.port})
    wait_until(lambda: eps(g) == [a.addr], timeout=2, what="registered")
    port = reg.port
    assert reg.stop() == 0
    wait_until(lambda: metric(g.metrics(), "weft_gateway_discovery_stale", cluster="svc") == 1,
               timeout=5, what="stale gauge")
    assert metric(g.metrics(), "weft_gateway_discovery_failures_total", cluster="svc") >= 1
    assert eps(g) == [a.addr]
    with g.client() as c:
        assert c.get("/still").status == 200  # the last known endpoints keep serving
    reg = Reg(tmp_path, port=port)  # a fresh (empty) registry on the same port
    try:
        reg.put("svc", "a", {"address": "127.0.0.1", "port": a.port})
        wait_until(lambda: metric(g.metrics(), "weft_gateway_discovery_stale", cluster="svc") == 0,
                   timeout=5, what="recovered")
        assert eps(g) == [a.addr]
    finally:
        assert reg.stop() == 0


def test_reload_keeps_the_discovered_endpoints(gateway, origins, tmp_path):  # noqa: F811
    """A reload rebuilds the cluster; it starts from the endpoints last
    discovered, not from none (was: 503 for every request until the registry
    answered the new watch, and for good while the registry was down)."""
    a, = origins(1)
    reg = Reg(tmp_path)
    g = gateway(cfg(reg))
    reg.put("svc", "a", {"address": "127.0.0.1", "port": a.port})
    wait_until(lambda: eps(g) == [a.addr], timeout=2, what="registered")
    assert reg.stop() == 0
    g.write_config(cfg(reg).replace("retry: false", "retry: false\n    timeout: 7s"))
    assert g.reload().status == 200
    wait_until(lambda: g.admin_get("/admin/config").json()["reloads"] == 1, what="reloaded")
    time.sleep(0.1)  # the workers have installed the new generation
    with g.client() as c:
        for i in range(10):
            r = c.get(f"/after/{i}")
            assert r.status == 200 and origin_of(r) == a.name, r
    assert eps(g) == [a.addr]


def test_inflight_carried_to_a_new_set_is_released(gateway, origins, tmp_path):  # noqa: F811
    """An endpoint set built while a request to A is in flight carries A's
    in-flight count over; when that request ends (accounted against the old
    set) the count must drop in the current set too. Was: it stayed there
    for good, and least_request never chose A again while B was idle."""
    a, b = origins(2)
    reg = Reg(tmp_path)
    try:
        g = gateway(cfg(reg).replace("round_robin", "least_request"))
        reg.put("svc", "a", {"address": "127.0.0.1", "port": a.port})
        wait_until(lambda: eps(g) == [a.addr], timeout=2, what="A registered")
        a.set_mode("sleep", delay_ms=1000)
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            slow = ex.submit(g.get, "/slow")
            wait_until(lambda: a.count() == 1, timeout=2, what="the slow request reached A")
            reg.put("svc", "b", {"address": "127.0.0.1", "port": b.port})
            wait_until(lambda: eps(g) == sorted([a.addr, b.addr]), timeout=2, what="B registered")
            assert g.endpoint("svc", a.addr)["inflight"] == 1
            assert slow.result(timeout=10).status == 200
        a.set_mode("ok")
        assert g.endpoint("svc", a.addr)["inflight"] == 0
        cnt = spread(g, 20)
        assert cnt[a.name] > 0 and cnt[b.name] > 0, cnt
    finally:
        assert reg.stop() == 0


def test_an_instance_moving_to_a_taken_address_is_a_change(gateway, origins, tmp_path):  # noqa: F811
    """{a, b} becoming {a, a} (instance b moves to a's address) is a change:
    b's old address must go."""
    a, b = origins(2)
    reg = Reg(tmp_path)
    try:
        g = gateway(cfg(reg))
        reg.put("svc", "a1", {"address": "127.0.0.1", "port": a.port})
        reg.put("svc", "b", {"address": "127.0.0.1", "port": b.port})
        wait_until(lambda: eps(g) == sorted([a.addr, b.addr]), timeout=2, what="a and b")
        assert reg.put("svc", "b", {"address": "127.0.0.1", "port": a.port}) == 200
        wait_until(lambda: b.addr not in eps(g), timeout=2, what="b removed")
        assert spread(g, 10) == {a.name: 10}
    finally:
        assert reg.stop() == 0

