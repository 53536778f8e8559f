"""weft registry --store etcd://: registry state in a real 3-node etcd
cluster (etcd-server from Debian, started here on free loopback ports with
temporary data directories), served by two stateless registry nodes.

Covers: a change on one node is visible on the other (list, blocking query,
SSE watch) and read-your-writes on the node that took it; TTL expiry by
etcd leases and heartbeats through either node; an etcd member killed in
the middle of a heartbeat load loses no heartbeat and no registration; a
compacted watch re-lists; a registry restart loses nothing; sessions;
configuration errors. etcd missing is a failure, not a skip (deps.sh
installs it). Every wait is bounded.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
import requests

from svcutil import WEFT_BIN, Registry, wait_until
from weftutil import free_port, sanitizer_env

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


class Etcd:
    """A 3-member etcd cluster on loopback ports."""

    def __init__(self, tmp_path, n=3):
        assert os.access(ETCD, os.X_OK), "etcd not installed: run scripts/deps.sh"
        self.dir = tmp_path / f"etcd-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.names = [f"m{i}" for i in range(n)]
        self.client = [free_port() for _ in range(n)]
        self.peer = [free_port() for _ in range(n)]
        self.cluster = ",".join(f"{m}=http://127.0.0.1:{p}" for m, p in zip(self.names, self.peer))
        self.procs = [None] * n
        for i in range(n):
            self.start(i, new=True)
        for i in range(n):
            self.wait_healthy(i)

    def start(self, i, new=False):
        log = open(self.dir / f"{self.names[i]}.log", "a")
        argv = [ETCD, "--name", self.names[i], "--data-dir", str(self.dir / self.names[i]),
                "--listen-client-urls", f"http://127.0.0.1:{self.client[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
                "--initial-cluster", self.cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.dir.name]
        self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()

    def url(self, i):
        return f"http://127.0.0.1:{self.client[i]}"

    def post(self, i, path, body, timeout=5):
        req = urllib.request.Request(self.url(i) + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)

    def wait_healthy(self, i, timeout=20):
        def ok():
            try:
                with urllib.request.urlopen(self.url(i) + "/health", timeout=1) as r:
                    return json.load(r).get("health") == "true"
            except (OSError, ValueError):
                return False
        wait_until(ok, timeout, what=f"etcd member {i} healthy", interval=0.1)

    def leader(self):
        st = self.post(0, "/v3/maintenance/status", {})
        lead = st["leader"]
        for i in range(len(self.names)):
            if self.procs[i] and self.post(i, "/v3/maintenance/status", {})["header"]["member_id"] == lead:
                return i
        raise AssertionError("no leader found")

    def store_url(self, order, prefix):
        return "etcd://" + ",".join(f"127.0.0.1:{self.client[i]}" for i in order) + prefix

    def kill(self, i, sig=signal.SIGKILL):
        self.procs[i].send_signal(sig)
        self.procs[i].wait(timeout=10)
        self.procs[i] = None

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)


class Node(Registry):
    """A `weft registry --store etcd://...` process, started once the first
    listing from etcd is in. req answers (status, JSON, headers) on a
    keep-alive session."""

    start_timeout = 25.0
    stop_timeout = 20.0

    def __init__(self, tmp_path, store=None, config=None):
        self.http = requests.Session()
        super().__init__(tmp_path, *(["--store", store] if store else []), config=config)

    def ready(self):
        return self.get("/v1/status")[0] == 200

    def req(self, method, path, body=None, timeout=20):
        r = self.http.request(method, self.url + path,
                              data=json.dumps(body) if body is not None else None,
                              timeout=timeout)
        return r.status_code, (r.json() if r.content else None), r.headers

    def get(self, path, timeout=20):
        st, body, _ = self.req("GET", path, timeout=timeout)
        return st, body

    def ids(self, svc):
        st, d = self.get(f"/v1/services/{svc}")
        assert st == 200, d
        return {x["id"] for x in d["instances"]}

    def stop(self, timeout=None):
        self.http.close()
        return super().stop(timeout)


def inst(i, ttl=None):
    b = {"address": f"10.1.0.{i % 250}", "port": 9000 + i, "tags": ["e"]}
    if ttl:
        b["ttl"] = ttl
    return b


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Etcd(tmp_path_factory.mktemp("etcd"))
    yield c
    c.stop()


@pytest.fixture
def nodes(cluster, tmp_path, request):
    """Two registry nodes on the shared cluster, under a prefix of the test's own."""
    prefix = f"/t/{request.node.name}"
    made = []

    def make(order=(0, 1, 2)):
        n = Node(tmp_path, cluster.store_url(order, prefix))
        made.append(n)
        return n
    a, b = make((0, 1, 2)), make((1, 2, 0))
    yield a, b, make
    for n in made:
        if n.proc.poll() is None:
            assert n.stop() == 0


def read_sse_until(sock, needle, timeout):
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in the stream: {buf[-500:]!r}"
        sock.settimeout(left)
        d = sock.recv(65536)
        assert d, f"stream closed before {needle!r}: {buf[-500:]!r}"
        buf += d
    return buf


def open_sse(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: r\r\n\r\n".encode())
    read_sse_until(s, b"weft registry watch", 5)
    return s


def test_change_on_one_node_reaches_the_other(nodes):
    a, b, _ = nodes
    # a blocking query and an SSE watch parked on B before the change
    st, d = b.get("/v1/services/cat")
    idx = d["revision"]
    result = {}

    def block():
        result["q"] = b.get(f"/v1/services/cat?index={max(idx, 1)}&wait=20s", timeout=30)
    t = threading.Thread(target=block)
    t.start()
    sse = open_sse(b.port, "/v1/watch?service=cat")
    time.sleep(0.2)
    t0 = time.monotonic()
    st, d, h = a.req("PUT", "/v1/services/cat/instances/c1", inst(1, ttl="30s"))
    assert st == 200 and d["changed"], d
    rev = d["revision"]
    assert int(h["X-Weft-Index"]) == rev
    # read-your-writes on the node that took the write: no polling
    assert a.ids("cat") == {"c1"}
    got = read_sse_until(sse, b"\"id\":\"c1\"", 5)
    assert f"id: {rev}\nevent: put".encode() in got, got
    t.join(10)
    assert not t.is_alive()
    st, q = result["q"]
    assert st == 200 and [x["id"] for x in q["instances"]] == ["c1"]
    assert time.monotonic() - t0 < 2, "the change took too long to reach node B"
    # both nodes report etcd's revisions
    assert b.get("/v1/services/cat/instances/c1")[1]["revision"] == rev
    assert a.get("/v1/services/cat")[1]["revision"] == b.get("/v1/services/cat")[1]["revision"]
    # an identical re-registration changes nothing (the lease is renewed)
    st, d, _ = b.req("PUT", "/v1/services/cat/instances/c1", inst(1, ttl="30s"))
    assert st == 200 and d["changed"] is False, d
    # status through B, seen on A; a no-op status is not a change
    st, d, _ = b.req("PUT", "/v1/services/cat/instances/c1/status", {"status": "DOWN"})
    assert st == 200 and d["changed"], d
    wait_until(lambda: a.get("/v1/services/cat/instances/c1")[1]["status"] == "DOWN", 2,
               what="the status on A")
    assert a.get("/v1/services/cat?healthy=true")[1]["instances"] == []
    st, d, _ = a.req("PUT", "/v1/services/cat/instances/c1/status", {"status": "DOWN"})
    assert st == 200 and d["changed"] is False
    # deregister on B: gone on A
    st, d, _ = b.req("DELETE", "/v1/services/cat/instances/c1")
    assert st == 200, d
    assert "c1" not in b.ids("cat")
    wait_until(lambda: "c1" not in a.ids("cat"), 2, what="the deregistration on A")
    got = read_sse_until(sse, b"event: delete", 5)
    sse.close()
    assert b.req("DELETE", "/v1/services/cat/instances/c1")[0] == 404
    assert b.req("PUT", "/v1/services/cat/instances/c1/status", {"status": "UP"})[0] == 404
    # Consul's view over the same mirror
    assert a.req("PUT", "/v1/agent/service/register",
                 {"Name": "cs", "ID": "cs1", "Port": 80})[0] == 200
    wait_until(lambda: b.get("/v1/catalog/service/cs")[1] != [], 2, what="the Consul catalog on B")


def test_ttl_expiry_by_etcd_and_heartbeats_through_either_node(nodes):
    a, b, _ = nodes
    assert a.req("PUT", "/v1/services/ttl/instances/dead", inst(1, ttl="2s"))[0] == 200
    assert a.req("PUT", "/v1/services/ttl/instances/live", inst(2, ttl="2s"))[0] == 200
    wait_until(lambda: b.ids("ttl") == {"dead", "live"}, 2, what="both on B")
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < 6:
        node = (a, b)[k % 2]
        st, d, _ = node.req("PUT", "/v1/services/ttl/instances/live/heartbeat")
        assert st == 200 and d["ttl_ms"] >= 2000, d
        k += 1
        time.sleep(0.4)
    # the silent one is gone from both (expired by etcd), the live one stays
    assert a.ids("ttl") == {"live"} and b.ids("ttl") == {"live"}
    gone_at = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:
        if "live" not in a.ids("ttl") and "live" not in b.ids("ttl"):
            gone_at = time.monotonic() - t0
            break
        time.sleep(0.1)
    assert gone_at is not None and gone_at < 6, "an expired lease was not removed in time"
    st, d, _ = b.req("PUT", "/v1/services/ttl/instances/live/heartbeat")
    assert st == 404 and "register again" in d["error"]


def test_sessions_and_checks(nodes):
    a, b, _ = nodes
    st, d, _ = a.req("PUT", "/v1/services/chk/instances/x",
                     {"address": "127.0.0.1", "port": 1, "check": {"tcp": ""}})
    assert st == 400 and "not supported with the etcd store" in d["error"], d
    assert a.req("PUT", "/v1/services/ses/instances/s1", inst(3, ttl="2s"))[0] == 200
    s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
    s.sendall(b"GET /v1/services/ses/instances/s1/session HTTP/1.1\r\nHost: r\r\n\r\n")
    assert read_sse_until(s, b"session open", 5).startswith(b"HTTP/1.1 200")
    time.sleep(5)  # well past the TTL: the session renews the lease
    assert b.ids("ses") == {"s1"}
    t0 = time.monotonic()
    s.close()
    wait_until(lambda: "s1" not in b.ids("ses"), 3, what="the session's instance gone on B")
    assert time.monotonic() - t0 < 1.5


def test_registry_restart_loses_nothing_and_config_store_key(nodes, cluster, tmp_path):
    a, b, _ = nodes
    for i in range(50):
        assert a.req("PUT", f"/v1/services/rs/instances/i{i}", inst(i))[0] == 200
    rev = a.get("/v1/services/rs")[1]["revision"]
    assert a.stop() == 0
    url = cluster.store_url((2, 0, 1), "/t/" + "test_registry_restart_loses_nothing_and_config_store_key")
    a2 = Node(tmp_path, config=f"store: \"{url}\"\n")
    try:
        assert a2.ids("rs") == {f"i{i}" for i in range(50)}
        assert a2.get("/v1/services/rs")[1]["revision"] >= rev
        assert a2.get("/v1/services/rs/instances/i7")[1]["revision"] == \
            b.get("/v1/services/rs/instances/i7")[1]["revision"]
    finally:
        assert a2.stop() == 0


def test_config_errors_exit_2(tmp_path):
    def run(*args):
        return subprocess.run([WEFT_BIN, "registry", "--listen", "127.0.0.1:0", *args],
                              capture_output=True, text=True, timeout=10, env=sanitizer_env())
    p = run("--store", "etcd://127.0.0.1:2379", "--data", str(tmp_path / "d"))
    assert p.returncode == 2 and "--data and --store are exclusive" in p.stderr, p.stderr
    for bad, why in (("http://127.0.0.1:2379", "expected etcd://"),
                     ("etcd://", "no endpoint"),
                     ("etcd://127.0.0.1:99999", "port must be 1-65535"),
                     ("etcd://127.0.0.1:2379,", "empty endpoint")):
        p = run("--store", bad)
        assert p.returncode == 2, (bad, p.stderr)
        assert f"bad store URL '{bad}'" in p.stderr and why in p.stderr, p.stderr
    cfg = tmp_path / "r.yaml"
    cfg.write_text("store: \"etcd://127.0.0.1:1\"\ndata: /tmp/nowhere\n")
    p = run("-c", str(cfg))
    assert p.returncode == 2 and "exclusive" in p.stderr, p.stderr


def test_compacted_watch_relists(cluster, tmp_path):
    prefix = "/t/relist"
    a = Node(tmp_path, cluster.store_url((0, 1, 2), prefix))
    # B's watch lives on member 2, which we restart under it
    b = Node(tmp_path, cluster.store_url((2, 0, 1), prefix))
    try:
        for i in range(5):
            assert a.req("PUT", f"/v1/services/rl/instances/old{i}", inst(i))[0] == 200
        wait_until(lambda: len(b.ids("rl")) == 5, 2, what="B's mirror")
        sse = open_sse(b.port, "/v1/watch")
        b.proc.send_signal(signal.SIGSTOP)
        try:
            cluster.kill(2)  # B's watch stream is gone with it
            for i in range(3):
                assert a.req("DELETE", f"/v1/services/rl/instances/old{i}")[0] == 200
            for i in range(4):
                assert a.req("PUT", f"/v1/services/rl/instances/new{i}", inst(i))[0] == 200
            rev = a.get("/v1/services/rl")[1]["revision"]
            cluster.post(0, "/v3/kv/compaction", {"revision": str(rev), "physical": True})
        finally:
            b.proc.send_signal(signal.SIGCONT)
        want = {"old3", "old4", "new0", "new1", "new2", "new3"}
        wait_until(lambda: b.ids("rl") == want, 10, what="B re-listed")
        assert "re-listing" in b.text()
        read_sse_until(sse, b"event: relist", 5)
        sse.close()
    finally:
        cluster.start(2)
        cluster.wait_healthy(2)
        assert a.stop() == 0 and b.stop() == 0


def test_etcd_member_killed_during_heartbeat_load(tmp_path):
    c = Etcd(tmp_path)
    nodes = []
    try:
        lead = c.leader()
        others = [i for i in range(3) if i != lead]
        # both registry nodes start on the leader: killing it takes away the
        # endpoint they use and forces an election at the same time
        a = Node(tmp_path, c.store_url([lead] + others, "/load"))
        b = Node(tmp_path, c.store_url([lead] + others[::-1], "/load"))
        nodes += [a, b]
        ninst = 8
        for i in range(ninst):
            assert (a, b)[i % 2].req("PUT", f"/v1/services/hb/instances/h{i}",
                                      inst(i, ttl="5s"))[0] == 200
        wait_until(lambda: len(a.ids("hb")) == ninst and len(b.ids("hb")) == ninst, 3,
                   what="all registered on both nodes")
        per_thread, threads = 400, 6
        bad, done, slowest = [], [], [0.0]
        killed = threading.Event()

        def beat(t):
            node = (a, b)[t % 2]
            s = requests.Session()
            for k in range(per_thread):
                i = (t + k * threads) % ninst
                try:
                    t0 = time.monotonic()
                    r = s.put(f"{node.url}/v1/services/hb/instances/h{i}/heartbeat", timeout=30)
                    slowest[0] = max(slowest[0], time.monotonic() - t0)
                    if r.status_code != 200:
                        bad.append((t, k, r.status_code, r.text))
                except requests.RequestException as e:
                    bad.append((t, k, "exception", str(e)))
                done.append(1)
                if killed.is_set() or k < per_thread // 3:
                    time.sleep(0.002)
            s.close()
        ts = [threading.Thread(target=beat, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        wait_until(lambda: len(done) >= threads * per_thread // 4, 60, what="heartbeats under way")
        c.kill(lead)
        killed.set()
        for t in ts:
            t.join(120)
        assert not any(t.is_alive() for t in ts)
        assert len(done) == threads * per_thread
        assert not bad, f"{len(bad)} heartbeats failed, e.g. {bad[:3]}"
        print(f"slowest heartbeat across the leader's death: {slowest[0]:.2f} s")
        assert slowest[0] < 15
        want = {f"h{i}" for i in range(ninst)}
        assert a.ids("hb") == want and b.ids("hb") == want
        # 2 of 3 members: registering works and reaches the other node (its
        # watch moved to a live member)
        assert b.req("PUT", "/v1/services/hb/instances/after", inst(99, ttl="5s"))[0] == 200
        wait_until(lambda: "after" in a.ids("hb"), 3, what="the new registration on A")
        assert "etcd endpoint failed" in a.text() + b.text()
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                assert n.stop() == 0
        c.stop()


def test_several_events_at_one_revision_all_reach_the_mirror(nodes, cluster, request):
    """A range delete (or a txn) changes several keys at one etcd revision,
    and the watch delivers them as several events with the same
    mod_revision: every one of them is applied, not just the first."""
    import base64
    a, b, _ = nodes
    for i in range(4):
        assert a.req("PUT", f"/v1/services/multi/instances/m{i}", inst(i))[0] == 200
    assert a.req("PUT", "/v1/services/keep/instances/k0", inst(9))[0] == 200
    wait_until(lambda: len(a.ids("multi")) == 4 and len(b.ids("multi")) == 4, 3,
               what="all registered on both nodes")
    key = f"/t/{request.node.name}/instances/multi/".encode()
    end = key[:-1] + bytes([key[-1] + 1])
    r = cluster.post(0, "/v3/kv/deleterange", {"key": base64.b64encode(key).decode(),
                                               "range_end": base64.b64encode(end).decode()})
    assert r.get("deleted") == "4", r

    def gone():
        return a.get("/v1/services/multi")[0] == 404 or not a.ids("multi")
    def gone_b():
        return b.get("/v1/services/multi")[0] == 404 or not b.ids("multi")
    wait_until(lambda: gone() and gone_b(), 3, what="all four deletes applied on both nodes")
    assert a.ids("keep") == {"k0"} and b.ids("keep") == {"k0"}


def test_watch_on_a_frozen_member_moves_to_another(cluster, tmp_path):
    """The member holding a node's watch stops answering with its
    connection left open (SIGSTOP: a partition looks the same): the node's
    liveness probe notices, the watch resumes on another member with
    nothing lost, and writes through the node are answered without waiting
    out the mirror's 3 s bound. Then the same with a write through the node
    right after the freeze: the write's failed call moves the watch."""
    import base64
    lead = cluster.leader()
    w = next(i for i in range(3) if i != lead)  # a follower: no election in the way
    others = [i for i in range(3) if i != w]
    prefix = "/t/frozen"
    n = Node(tmp_path, cluster.store_url([w] + others, prefix))  # its watch is on member w
    try:
        assert n.req("PUT", "/v1/services/fz/instances/f0", inst(1))[0] == 200
        assert n.ids("fz") == {"f0"}
        cluster.procs[w].send_signal(signal.SIGSTOP)
        try:
            # written in etcd through another member, not through the node:
            # no call of the node's fails, only the probe can notice
            key = base64.b64encode(f"{prefix}/instances/fz/f1".encode()).decode()
            val = base64.b64encode(json.dumps(inst(2)).encode()).decode()
            cluster.post(others[0], "/v3/kv/put", {"key": key, "value": val})
            t0 = time.monotonic()
            wait_until(lambda: n.ids("fz") == {"f0", "f1"}, 10, what="the change on the node",
                       interval=0.1)
            print(f"the watch moved off the frozen member in {time.monotonic() - t0:.1f} s")
            assert "etcd: watch interrupted" in n.text()
            for i in range(3):
                t0 = time.monotonic()
                st, d, _ = n.req("PUT", f"/v1/services/fz/instances/g{i}", inst(10 + i))
                took = time.monotonic() - t0
                assert st == 200 and d["changed"], d
                assert took < 2, f"a write took {took:.1f} s"
                assert f"g{i}" in n.ids("fz")  # read-your-writes, not a timed-out wait
            t0 = time.monotonic()
            assert n.req("DELETE", "/v1/services/fz/instances/f0")[0] == 200
            assert time.monotonic() - t0 < 2
            assert n.ids("fz") == {"f1", "g0", "g1", "g2"}
            assert "answering a write before this node's mirror has it" not in n.text()
        finally:
            cluster.procs[w].send_signal(signal.SIGCONT)
        cluster.wait_healthy(w)
        # a write through a node whose watch is on the member frozen just
        # now: the write's call fails over after its 2 s attempt, and that
        # failure moves the watch too (before the probe would)
        n2 = Node(tmp_path, cluster.store_url([w] + others, prefix))
        try:
            assert n2.ids("fz") == {"f1", "g0", "g1", "g2"}
            assert n2.req("PUT", "/v1/services/fz/instances/h0", inst(20))[0] == 200
            cluster.procs[w].send_signal(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                st, d, _ = n2.req("PUT", "/v1/services/fz/instances/h1", inst(21))
                took = time.monotonic() - t0
                assert st == 200 and d["changed"], d
                assert took < 3.5, f"the write took {took:.1f} s"
                assert "h1" in n2.ids("fz")
                assert "answering a write before this node's mirror has it" not in n2.text()
            finally:
                cluster.procs[w].send_signal(signal.SIGCONT)
        finally:
            assert n2.stop() == 0
    finally:
        assert n.stop() == 0
