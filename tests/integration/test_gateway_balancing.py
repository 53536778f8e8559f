"""weft gateway traffic splitting and load balancers, counted at real
origins (one worker: balancer state is per worker)."""
import collections

from gwutil import (Client, eps_yaml, gateway, nginx_origin, origin_of, origins,  # noqa: F401
                    parallel, sequential)


def cluster_cfg(os_, lb, extra="", weights=None):
    return f"""
clusters:
  c:
    endpoints: {eps_yaml(os_, weights)}
    lb: {lb}
    outlier_detection: false
    circuit_breaker: false
{extra}
routes:
  - name: r
    cluster: c
    retry: false
"""


def counts(os_):
    return [o.count() for o in os_]


# ---------------------------------------------------------------- splits

def test_weighted_split_80_20(gateway, origins):
    stable, canary = origins(2)
    g = gateway(f"""
clusters:
  stable: {{endpoints: [{stable.addr}]}}
  canary: {{endpoints: [{canary.addr}]}}
routes:
  - name: split
    split:
      - {{cluster: stable, weight: 80}}
      - {{cluster: canary, weight: 20}}
""")
    n = 2000
    rs = parallel(g.port, n, concurrency=8, target="/s")
    assert all(r.status == 200 for r in rs)
    by = collections.Counter(origin_of(r) for r in rs)
    assert by[stable.name] + by[canary.name] == n
    assert stable.count() == by[stable.name] and canary.count() == by[canary.name]
    share = by[stable.name] / n
    assert 0.75 <= share <= 0.85, by


SPLIT_AB = """
clusters:
  stable: {{endpoints: [{S}]}}
  canary: {{endpoints: [{C}]}}
routes:
  - name: ab
    split:
      - {{cluster: canary, header: {{X-Canary: "1"}}}}
      - {{cluster: canary, cookie: {{name: canary, value: "yes"}}}}
      - {{cluster: stable, weight: 1}}
"""


def test_header_conditional_split(gateway, origins):
    stable, canary = origins(2)
    g = gateway(SPLIT_AB.format(S=stable.addr, C=canary.addr))
    rs = parallel(g.port, 200, concurrency=4, target="/ab", headers=[("X-Canary", "1")])
    assert [origin_of(r) for r in rs] == [canary.name] * 200
    rs = parallel(g.port, 100, concurrency=4, target="/ab", headers=[("X-Canary", "0")])
    assert [origin_of(r) for r in rs] == [stable.name] * 100
    rs = parallel(g.port, 100, concurrency=4, target="/ab")
    assert [origin_of(r) for r in rs] == [stable.name] * 100
    assert canary.count() == 200 and stable.count() == 200


def test_cookie_conditional_split(gateway, origins):
    stable, canary = origins(2)
    g = gateway(SPLIT_AB.format(S=stable.addr, C=canary.addr))
    cases = [("canary=yes", canary), ("a=1; canary=yes; b=2", canary), ('canary="yes"', canary),
             ("canary=no", stable), ("xcanary=yes", stable), ("canary=yess", stable)]
    with Client(g.port) as c:
        for cookie, want in cases:
            for _ in range(20):
                r = c.get("/ab", [("Cookie", cookie)])
                assert r.status == 200 and origin_of(r) == want.name, (cookie, r)


# ---------------------------------------------------------------- balancers

def test_round_robin_exactly_equal(gateway, origins):
    os_ = origins(3)
    g = gateway(cluster_cfg(os_, "round_robin"))
    rs = parallel(g.port, 1200, concurrency=16, target="/rr")
    assert all(r.status == 200 for r in rs)
    assert counts(os_) == [400, 400, 400]


def test_weighted_round_robin_exact_proportions(gateway, origins):
    os_ = origins(3)
    g = gateway(cluster_cfg(os_, "weighted_round_robin", weights=[1, 2, 3]))
    rs = parallel(g.port, 1200, concurrency=16, target="/wrr")
    assert all(r.status == 200 for r in rs)
    assert counts(os_) == [200, 400, 600]
    # smooth WRR: any window of 6 consecutive picks holds exactly 1, 2, 3
    for o in os_:
        o.clear()
    seq = [origin_of(r) for r in sequential(g.port, 60, target="/wrr")]
    for i in range(0, 60, 6):
        win = collections.Counter(seq[i:i + 6])
        assert [win[o.name] for o in os_] == [1, 2, 3], seq


def test_random_balancer_within_5_percent(gateway, origins):
    os_ = origins(3)
    g = gateway(cluster_cfg(os_, "random"))
    n = 1500
    rs = parallel(g.port, n, concurrency=16, target="/rand")
    assert all(r.status == 200 for r in rs)
    c = counts(os_)
    assert sum(c) == n
    for k in c:
        assert abs(k / n - 1 / 3) <= 0.05, c


def test_ring_hash_header_sticky_and_spread(gateway, origins):
    os_ = origins(3)
    g = gateway(cluster_cfg(os_, "ring_hash", extra="    hash: {header: X-User}"))
    users = [f"user-{i}" for i in range(50)]
    rs = parallel(g.port, 500, concurrency=16, target="/rh",
                  headers=lambda i: [("X-User", users[i % 50])])
    seen = collections.defaultdict(set)
    # parallel() returns responses in request order (executor.map)
    for i, r in enumerate(rs):
        assert r.status == 200
        seen[users[i % 50]].add(origin_of(r))
    assert all(len(v) == 1 for v in seen.values()), dict(seen)
    owners = collections.Counter(next(iter(v)) for v in seen.values())
    assert set(owners) == {o.name for o in os_}, owners
    assert sum(counts(os_)) == 500


def test_maglev_header_sticky(gateway, origins):
    os_ = origins(3)
    g = gateway(cluster_cfg(os_, "maglev", extra="    hash: {header: X-User}"))
    seen = collections.defaultdict(set)
    with Client(g.port) as c:
        for rnd in range(5):
            for u in range(40):
                r = c.get("/mg", [("X-User", f"u{u}")])
                assert r.status == 200
                seen[u].add(origin_of(r))
    assert all(len(v) == 1 for v in seen.values()), dict(seen)
    assert len({next(iter(v)) for v in seen.values()}) == 3


def test_source_ip_hash_sticky(gateway, origins):
    os_ = origins(3)
    g = gateway(cluster_cfg(os_, "ring_hash", extra="    hash: {source_ip: true}"))
    owner = {}
    for k in range(1, 31):
        ip = f"127.0.0.{k}"
        got = set()
        # a new connection (new source port) per request: only the IP may count
        for _ in range(5):
            with Client(g.port, source_ip=ip) as c:
                r = c.get("/ip")
            assert r.status == 200
            got.add(origin_of(r))
        assert len(got) == 1, (ip, got)
        owner[ip] = got.pop()
    assert len(set(owner.values())) >= 2, owner
    # the gateway saw the real source address
    for o in os_:
        for rec in o.recs():
            assert rec.header("X-Forwarded-For").startswith("127.0.0."), rec


def _slow_one_avoided(gateway, origins, lb):
    os_ = origins(3)
    slow = os_[2]
    slow.set_mode("sleep", delay_ms=200)
    g = gateway(cluster_cfg(os_, lb))
    n = 200
    rs = parallel(g.port, n, concurrency=16, target="/lat")
    assert all(r.status == 200 for r in rs)
    c = counts(os_)
    assert sum(c) == n
    assert slow.count() < 0.10 * n, (lb, c)
    assert os_[0].count() > 0 and os_[1].count() > 0, c


def test_least_request_avoids_slow_origin(gateway, origins):
    _slow_one_avoided(gateway, origins, "least_request")


def test_p2c_ewma_avoids_slow_origin(gateway, origins):
    _slow_one_avoided(gateway, origins, "p2c_ewma")


def test_real_nginx_origin_behind_round_robin(gateway, origins, nginx_origin):
    ngx = nginx_origin("nginx-ok\n")
    py, = origins(1)
    g = gateway(f"""
clusters:
  mixed:
    endpoints: [{ngx.addr}, {py.addr}]
    lb: round_robin
routes:
  - name: r
    cluster: mixed
""")
    rs = parallel(g.port, 1000, concurrency=16, target="/n")
    assert all(r.status == 200 for r in rs)
    from_nginx = [r for r in rs if r.body == b"nginx-ok\n"]
    assert len(from_nginx) == 500 and py.count() == 500
    r = from_nginx[0]
    assert r.header("Content-Type") == "text/plain"
    # the gateway answers as itself: one Server header, its own
    assert r.header_all("Server") == ["weft"], r
