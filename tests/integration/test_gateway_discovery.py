"""Gateway clusters discovered from weft registry: changes within 100 ms,
TTL expiry, weights, zone preference, stale on error, recovery."""
import collections
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from gwutil import WEFT_BIN, gateway, metric, origin_of, origins, wait_until  # noqa: F401


class Reg:
    def __init__(self, tmp_path, port=0):
        self.log = tmp_path / f"reg-{time.monotonic_ns()}.log"
        self.err = open(self.log, "w")
        self.proc = subprocess.Popen([WEFT_BIN, "registry", "--listen", f"127.0.0.1:{port}",
                                      "--log-level", "info"], stdout=subprocess.DEVNULL,
                                     stderr=self.err)
        self.port = None
        deadline = time.monotonic() + 10
        while self.port is None and time.monotonic() < deadline:
            for line in open(self.log):
                if "msg=listening" in line and "service=registry" in line:
                    self.port = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
            time.sleep(0.02)
        assert self.port

    def put(self, svc, iid, body):
        return self._req("PUT", f"/v1/services/{svc}/instances/{iid}", body)

    def delete(self, svc, iid):
        return self._req("DELETE", f"/v1/services/{svc}/instances/{iid}")

    def _req(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: r\r\nContent-Length: {len(data)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + data)
        resp = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            resp += d
        s.close()
        return int(resp.split(b" ")[1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        self.err.close()
        text = open(self.log).read()
        assert "Sanitizer" not in text and "runtime error" not in text, text[-3000:]
        return rc


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
        reg._req("PUT", "/v1/services/svc/instances/a/status", {"status": "DOWN"})
        reg._req("PUT", "/v1/services/svc/instances/b/status", {"status": "DOWN"})
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
