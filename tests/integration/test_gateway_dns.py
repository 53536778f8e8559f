"""DNS endpoint discovery (c-ares): A and SRV records from a real DNS server
on loopback (tests/integration/dnsserver.py), TTL-driven refresh, SRV
priority and weights, stale-on-error, and state carried across updates."""
import collections
import time

import pytest

from dnsserver import DnsServer
from gwutil import gateway, metric, origins, origin_of, wait_until  # noqa: F401


@pytest.fixture
def dns():
    d = DnsServer().start()
    yield d
    d.stop()


def eps(g, cluster="svc"):
    return sorted((e["address"], e["weight"]) for e in g.cluster(cluster)["endpoints"])


def spread(g, n=300, target="/x"):
    cnt = collections.Counter()
    with g.client() as c:
        for _ in range(n):
            r = c.get(target)
            assert r.status == 200, r
            cnt[origin_of(r)] += 1
    return cnt


def test_a_records_become_endpoints(gateway, origins, dns):  # noqa: F811
    o, = origins(1)
    dns.set("svc.test", "A", ["127.0.0.1"], ttl=1)
    g = gateway(f"""
clusters:
  svc:
    dns: {{name: svc.test, type: a, port: {o.port}, resolver: "127.0.0.1:{dns.port}"}}
routes:
  - cluster: svc
""")
    wait_until(lambda: eps(g) == [(f"127.0.0.1:{o.port}", 1)], what="A record resolved")
    with g.client() as c:
        r = c.get("/via-dns")
        assert r.status == 200 and origin_of(r) == o.name, r
    assert o.last().target == "/via-dns"


def test_srv_priority_weights_and_ttl_refresh(gateway, origins, dns):  # noqa: F811
    a, b, c = origins(3)
    dns.set("h.test", "A", ["127.0.0.1"], ttl=1)
    dns.set("_http._tcp.svc.test", "SRV",
            [(0, 1, a.port, "h.test"), (0, 3, b.port, "h.test"), (10, 1, c.port, "h.test")], ttl=1)
    g = gateway(f"""
clusters:
  svc:
    dns: {{name: _http._tcp.svc.test, type: srv, resolver: "127.0.0.1:{dns.port}", refresh: 30s}}
    lb: weighted_round_robin
routes:
  - cluster: svc
""")
    # the priority-10 record is a backup: not used while priority 0 answers
    wait_until(lambda: eps(g) == sorted([(f"127.0.0.1:{a.port}", 1), (f"127.0.0.1:{b.port}", 3)]),
               what="SRV lowest-priority group")
    cnt = spread(g, 400)
    assert cnt[a.name] == 100 and cnt[b.name] == 300 and cnt[c.name] == 0, cnt
    # change the records: the 1 s TTL (not the 30 s refresh) picks it up
    dns.set("_http._tcp.svc.test", "SRV", [(0, 1, c.port, "h.test")], ttl=1)
    wait_until(lambda: eps(g) == [(f"127.0.0.1:{c.port}", 1)], timeout=5,
               what="SRV change seen within the TTL")
    cnt = spread(g, 50)
    assert cnt == {c.name: 50}, cnt
    m = g.metrics()
    assert metric(m, "weft_gateway_dns_updates_total", cluster="svc") >= 2


def test_stale_endpoints_kept_when_dns_fails(gateway, origins, dns):  # noqa: F811
    o, = origins(1)
    dns.set("svc.test", "A", ["127.0.0.1"], ttl=1)
    g = gateway(f"""
clusters:
  svc:
    dns: {{name: svc.test, type: a, port: {o.port}, resolver: "127.0.0.1:{dns.port}"}}
routes:
  - cluster: svc
""")
    wait_until(lambda: len(eps(g)) == 1, what="resolved")
    dns.fail = 2  # SERVFAIL from now on
    wait_until(lambda: metric(g.metrics(), "weft_gateway_dns_failures_total", cluster="svc") >= 1,
               timeout=8, what="a failed refresh")
    assert eps(g) == [(f"127.0.0.1:{o.port}", 1)]
    with g.client() as c:
        assert c.get("/still").status == 200
    # NXDOMAIN also keeps the last endpoints
    dns.fail = None
    dns.clear("svc.test", "A")
    n0 = metric(g.metrics(), "weft_gateway_dns_failures_total", cluster="svc")
    wait_until(lambda: metric(g.metrics(), "weft_gateway_dns_failures_total", cluster="svc") > n0,
               timeout=8, what="NXDOMAIN counted")
    with g.client() as c:
        assert c.get("/still").status == 200


def test_no_endpoints_yet_is_503_not_a_crash(gateway, dns):  # noqa: F811
    g = gateway(f"""
clusters:
  svc:
    dns: {{name: nothing.test, type: a, port: 9, resolver: "127.0.0.1:{dns.port}"}}
routes:
  - cluster: svc
""")
    with g.client() as c:
        r = c.get("/x")
        assert r.status == 503, r
    assert eps(g) == []


def test_endpoint_state_survives_a_dns_update(gateway, origins, dns):  # noqa: F811
    """An endpoint that stays in the answer keeps its ejection across updates."""
    bad, good = origins(2)
    bad.set_mode("status", status=500)
    dns.set("h.test", "A", ["127.0.0.1"], ttl=1)
    dns.set("_s._tcp.svc.test", "SRV", [(0, 1, bad.port, "h.test"), (0, 1, good.port, "h.test")],
            ttl=1)
    g = gateway(f"""
clusters:
  svc:
    dns: {{name: _s._tcp.svc.test, type: srv, resolver: "127.0.0.1:{dns.port}"}}
    lb: round_robin
    outlier_detection: {{consecutive_5xx: 3, base_ejection_time: 30s, max_ejection_percent: 50}}
routes:
  - cluster: svc
    retry: false
""")
    wait_until(lambda: len(eps(g)) == 2, what="resolved")
    with g.client() as c:
        for _ in range(10):
            c.get("/x")
    bad_id = f"127.0.0.1:{bad.port}"
    wait_until(lambda: g.endpoint("svc", bad_id)["ejected"], what="ejected")
    # a new answer (an extra endpoint) replaces the set; the ejection stays
    third, = origins(1)
    dns.set("_s._tcp.svc.test", "SRV", [(0, 1, bad.port, "h.test"), (0, 1, good.port, "h.test"),
                                        (0, 1, third.port, "h.test")], ttl=1)
    wait_until(lambda: len(eps(g)) == 3, timeout=5, what="updated")
    assert g.endpoint("svc", bad_id)["ejected"]
    n = bad.count()
    cnt = spread(g, 60)
    assert bad.count() == n and cnt[bad.name] == 0, cnt


def test_reload_keeps_serving_the_resolved_endpoints(gateway, origins, dns):  # noqa: F811
    """A reload builds the cluster anew; its endpoints must not go back to
    empty until DNS answers again (was: every request between a reload and
    the next answer got 503, for as long as the resolver took)."""
    o, = origins(1)
    dns.set("svc.test", "A", ["127.0.0.1"], ttl=30)

    def conf(timeout):
        return f"""
clusters:
  svc:
    dns: {{name: svc.test, type: a, port: {o.port}, resolver: "127.0.0.1:{dns.port}"}}
routes:
  - cluster: svc
    timeout: {timeout}
"""
    g = gateway(conf("5s"), workers=2)
    wait_until(lambda: eps(g) == [(f"127.0.0.1:{o.port}", 1)], what="A record resolved")
    dns.delay = 1.5  # the next answers come slowly
    g.write_config(conf("6s"))
    assert g.reload().status == 200
    statuses = collections.Counter()
    with g.client() as c:
        for i in range(40):  # about 0.4 s, well inside the resolver's delay
            statuses[c.get(f"/after-reload/{i}").status] += 1
            time.sleep(0.01)
    assert statuses == {200: 40}, statuses
    assert eps(g) == [(f"127.0.0.1:{o.port}", 1)]
    # a changed dns: block is a different source: it starts from its own answer
    dns.delay = 0
    dns.set("other.test", "A", ["127.0.0.2"], ttl=30)
    g.write_config(conf("6s").replace("svc.test", "other.test"))
    assert g.reload().status == 200
    wait_until(lambda: eps(g) == [(f"127.0.0.2:{o.port}", 1)], what="new name resolved")


def test_srv_target_failing_for_now_keeps_its_endpoints(gateway, origins, dns):  # noqa: F811
    """One SRV target whose address lookup fails for now (SERVFAIL) is a
    failed refresh — its endpoints stay, the failure is counted — not an
    answer without it (the set would flap with every resolver hiccup); a
    target that no longer exists (NXDOMAIN) does take its endpoints away."""
    a, b = origins(2)
    dns.set("h1.test", "A", ["127.0.0.1"], ttl=1)
    dns.set("h2.test", "A", ["127.0.0.1"], ttl=1)
    dns.set("_http._tcp.svc.test", "SRV", [(0, 1, a.port, "h1.test"), (0, 1, b.port, "h2.test")],
            ttl=1)
    g = gateway(f"""
clusters:
  svc:
    dns: {{name: _http._tcp.svc.test, type: srv, resolver: "127.0.0.1:{dns.port}", refresh: 30s}}
routes:
  - cluster: svc
""")
    both = sorted([(f"127.0.0.1:{a.port}", 1), (f"127.0.0.1:{b.port}", 1)])
    wait_until(lambda: eps(g) == both, what="both SRV targets resolved")
    dns.fail_names["h2.test"] = 2  # SERVFAIL for one target only
    n0 = metric(g.metrics(), "weft_gateway_dns_failures_total", cluster="svc")
    wait_until(lambda: metric(g.metrics(), "weft_gateway_dns_failures_total", cluster="svc")
               >= n0 + 2, timeout=10, what="refreshes with one target failing")
    assert eps(g) == both
    del dns.fail_names["h2.test"]
    dns.clear("h2.test", "A")  # the target is gone: NXDOMAIN
    wait_until(lambda: eps(g) == [(f"127.0.0.1:{a.port}", 1)], timeout=10,
               what="the vanished target's endpoint dropped")
