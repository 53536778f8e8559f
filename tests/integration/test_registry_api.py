"""weft registry: the native HTTP/JSON API (src/registry/api.c) driven
through the real binary with real clients (requests, http.client, curl-like
raw sockets) on 127.0.0.1.

Covered: register / re-register / get / list / filters / deregister,
heartbeats and status, input validation (the server must stay unharmed),
TTL leases, Consul-style blocking queries, the SSE change stream (ordering,
filtering, resume, 410 relist, slow consumers), watcher latency,
self-preservation, /metrics and the drain on SIGTERM.

Every wait is bounded: sockets carry timeouts, polls have deadlines.
"""
import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from svcutil import Registry, stop_all, wait_until
from weftutil import LINGER_RST, SSE, Reader, connect, parse_metrics, request_bytes

STOP_TIMEOUT = 5.0
HTTP_TIMEOUT = 5.0


# ------------------------------------------------------------------ process

@pytest.fixture
def registry(tmp_path):
    """Factory: registry(config=YAML) starts a registry; teardown checks a
    clean SIGTERM exit (code 0 within 5 s, no sanitizer report)."""
    started = []

    def start(config=None, extra_args=()):
        r = Registry(tmp_path, *extra_args, config=config)
        started.append(r)
        return r

    yield start
    stop_all(started, STOP_TIMEOUT)


@pytest.fixture
def reg(registry):
    return registry()


# ------------------------------------------------------------------ clients

def api(reg, method, path, body=None, raw=None, timeout=HTTP_TIMEOUT):
    """One request with `requests`; returns the Response (json via .json())."""
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    return requests.request(method, reg.url + path, data=data, timeout=timeout,
                            headers={"Content-Type": "application/json"} if data else None)


def inst_path(svc, iid, action=None):
    return f"/v1/services/{svc}/instances/{iid}" + (f"/{action}" if action else "")


def register(reg, svc, iid, **fields):
    body = {"address": "10.0.0.1", "port": 8080}
    body.update(fields)
    r = api(reg, "PUT", inst_path(svc, iid), body)
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def status_json(reg):
    r = api(reg, "GET", "/v1/status")
    assert r.status_code == 200, r.text
    return r.json()


def wait_waiters(reg, n, timeout=3.0):
    wait_until(lambda: status_json(reg)["waiters"] == n, timeout, what=f"{n} parked queries")


def wait_watchers(reg, n, timeout=5.0):
    wait_until(lambda: status_json(reg)["watchers"] == n, timeout, what=f"{n} watchers")


def metrics(reg):
    r = api(reg, "GET", "/metrics")
    assert r.status_code == 200
    return parse_metrics(r.text)


def assert_error(r, status, msg=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    j = r.json()
    assert j["status"] == status, j
    assert isinstance(j["error"], str) and j["error"], j
    if msg is not None:
        assert j["error"] == msg, j
    return j


def assert_unharmed(reg, revision=None):
    """The server still answers normally (and nothing was changed)."""
    st = status_json(reg)
    if revision is not None:
        assert st["revision"] == revision, st
    assert reg.proc.poll() is None, reg.stderr


def timed_get(port, target, timeout=10.0):
    """GET on a fresh raw connection; (Response, seconds from send to full answer)."""
    s = connect(port, timeout)
    try:
        t0 = time.monotonic()
        s.sendall(request_bytes("GET", target, [("Connection", "close")]))
        r = Reader(s).read_response()
        return r, time.monotonic() - t0
    finally:
        s.close()


def get_in_background(port, target):
    """timed_get on a thread: (started thread, dict that gets "r" and "el",
    or "err")."""
    res = {}

    def client():
        try:
            res["r"], res["el"] = timed_get(port, target)
        except Exception as e:  # noqa: BLE001
            res["err"] = e

    t = threading.Thread(target=client)
    t.start()
    return t, res


def pipelined(port, reqs, timeout=10.0):
    """Send many requests back to back on one connection; read every answer."""
    s = connect(port, timeout)
    try:
        s.sendall(b"".join(reqs))
        rd = Reader(s)
        return [rd.read_response() for _ in reqs]
    finally:
        s.close()


def put_bytes(svc, iid, body):
    return request_bytes("PUT", inst_path(svc, iid), [("Content-Type", "application/json")],
                         json.dumps(body).encode())


# ------------------------------------------------------------------ register / get / list

def test_register_reregister_and_get(reg):
    body = {"address": "10.1.2.3", "port": 8080, "tags": ["primary", "v2"],
            "meta": {"az": "eu-1a"}, "zone": "eu-1", "version": "2.1.0", "weight": 5,
            "ttl": "30s"}
    r = api(reg, "PUT", inst_path("web", "web-1"), body)
    assert r.status_code == 200, r.text
    assert r.json() == {"revision": 1, "changed": True}
    assert r.headers["X-Weft-Index"] == "1"
    assert r.headers["Content-Type"] == "application/json"
    # identical re-registration: nothing changes, same revision
    r = api(reg, "PUT", inst_path("web", "web-1"), body)
    assert r.status_code == 200
    assert r.json() == {"revision": 1, "changed": False}
    assert r.headers["X-Weft-Index"] == "1"
    # GET the instance
    r = api(reg, "GET", inst_path("web", "web-1"))
    assert r.status_code == 200
    assert r.headers["X-Weft-Index"] == "1"
    j = r.json()
    lease = j.pop("lease_remaining_ms")
    assert 25000 < lease <= 30000, lease
    assert j == {"service": "web", "id": "web-1", "address": "10.1.2.3", "port": 8080,
                 "tags": ["primary", "v2"], "meta": {"az": "eu-1a"}, "weight": 5,
                 "status": "UP", "create_revision": 1, "revision": 1, "healthy": True,
                 "zone": "eu-1", "version": "2.1.0", "ttl_ms": 30000}
    # a real change bumps the revision; create_revision stays
    body["port"] = 9090
    r = api(reg, "PUT", inst_path("web", "web-1"), body)
    assert r.json() == {"revision": 2, "changed": True}
    j = api(reg, "GET", inst_path("web", "web-1")).json()
    assert (j["port"], j["create_revision"], j["revision"]) == (9090, 1, 2)
    # HEAD: same head, no body
    r = api(reg, "HEAD", inst_path("web", "web-1"))
    assert r.status_code == 200 and r.content == b""
    # unknown instance
    assert_error(api(reg, "GET", inst_path("web", "nope")), 404, "no such instance")
    assert_error(api(reg, "GET", inst_path("nosvc", "nope")), 404, "no such instance")


def test_defaults_of_a_minimal_registration(reg):
    register(reg, "api", "a1")
    j = api(reg, "GET", inst_path("api", "a1")).json()
    assert j == {"service": "api", "id": "a1", "address": "10.0.0.1", "port": 8080, "tags": [],
                 "meta": {}, "weight": 1, "status": "UP", "create_revision": 1, "revision": 1,
                 "healthy": True}
    # ttl as a number of seconds and as milliseconds
    register(reg, "api", "a2", ttl=2.5)
    assert api(reg, "GET", inst_path("api", "a2")).json()["ttl_ms"] == 2500
    register(reg, "api", "a3", ttl="1500ms")
    assert api(reg, "GET", inst_path("api", "a3")).json()["ttl_ms"] == 1500
    register(reg, "api", "a4", status="STARTING")
    j = api(reg, "GET", inst_path("api", "a4")).json()
    assert j["status"] == "STARTING" and j["healthy"] is False


def test_list_service_and_index_header(reg):
    assert register(reg, "web", "w1", zone="z1")["revision"] == 1
    assert register(reg, "web", "w2", zone="z2")["revision"] == 2
    assert register(reg, "api", "a1")["revision"] == 3
    r = api(reg, "GET", "/v1/services/web")
    assert r.status_code == 200
    j = r.json()
    # the service's revision is its last change (2), not the global one (3)
    assert j["service"] == "web" and j["revision"] == 2
    assert r.headers["X-Weft-Index"] == "2"
    assert sorted(i["id"] for i in j["instances"]) == ["w1", "w2"]
    assert all(i["service"] == "web" for i in j["instances"])
    r = api(reg, "GET", "/v1/services/api")
    assert r.headers["X-Weft-Index"] == "3" and r.json()["revision"] == 3
    # a service that does not exist: empty, revision 0
    r = api(reg, "GET", "/v1/services/ghost")
    assert r.status_code == 200
    assert r.json() == {"service": "ghost", "revision": 0, "instances": []}
    assert r.headers["X-Weft-Index"] == "0"


def test_list_services_counts(reg):
    for i in range(3):
        register(reg, "web", f"w{i}")
    register(reg, "api", "a1")
    register(reg, "api", "a2", status="OUT_OF_SERVICE")
    r = api(reg, "PUT", inst_path("web", "w0", "status"), {"status": "DOWN"})
    assert r.json() == {"revision": 6, "changed": True}
    r = api(reg, "GET", "/v1/services")
    assert r.status_code == 200
    assert r.headers["X-Weft-Index"] == "6"
    assert r.json() == {"revision": 6, "self_preservation": False, "services": {
        "web": {"instances": 3, "healthy": 2, "revision": 6},
        "api": {"instances": 2, "healthy": 1, "revision": 5}}}
    st = status_json(reg)
    assert st == {"revision": 6, "services": 2, "instances": 5, "self_preservation": False,
                  "watchers": 0, "waiters": 0}


def test_filters(reg):
    register(reg, "web", "a", tags=["blue", "canary"], zone="z1")
    register(reg, "web", "b", tags=["blue"], zone="z2")
    register(reg, "web", "c", tags=["green"], zone="z1", status="DOWN")
    register(reg, "web", "d", zone="z2")

    def ids(q):
        r = api(reg, "GET", "/v1/services/web" + q)
        assert r.status_code == 200, r.text
        assert r.headers["X-Weft-Index"] == "4"
        return sorted(i["id"] for i in r.json()["instances"])

    assert ids("") == ["a", "b", "c", "d"]
    assert ids("?healthy=true") == ["a", "b", "d"]
    assert ids("?healthy=1") == ["a", "b", "d"]
    assert ids("?passing") == ["a", "b", "d"]
    assert ids("?passing=true") == ["a", "b", "d"]
    assert ids("?healthy=false") == ["a", "b", "c", "d"]
    assert ids("?tag=blue") == ["a", "b"]
    assert ids("?tag=canary") == ["a"]
    assert ids("?tag=nope") == []
    assert ids("?zone=z1") == ["a", "c"]
    assert ids("?zone=z2&tag=blue") == ["b"]
    assert ids("?zone=z1&healthy=true") == ["a"]
    assert ids("?zone=z9") == []


def test_deregister(reg):
    register(reg, "web", "w1")
    register(reg, "web", "w2")
    register(reg, "api", "a1")
    r = api(reg, "DELETE", inst_path("web", "w1"))
    assert r.status_code == 200
    assert r.json() == {"revision": 4}
    assert r.headers["X-Weft-Index"] == "4"
    assert_error(api(reg, "GET", inst_path("web", "w1")), 404, "no such instance")
    j = api(reg, "GET", "/v1/services/web").json()
    assert j["revision"] == 4 and [i["id"] for i in j["instances"]] == ["w2"]
    # the last instance gone: the service leaves the service list
    assert api(reg, "DELETE", inst_path("api", "a1")).json() == {"revision": 5}
    assert list(api(reg, "GET", "/v1/services").json()["services"]) == ["web"]
    # unknown instance / service
    assert_error(api(reg, "DELETE", inst_path("web", "w1")), 404, "no such instance")
    assert_error(api(reg, "DELETE", inst_path("ghost", "x")), 404, "no such instance")
    assert status_json(reg)["revision"] == 5
    # re-registering after a delete gets a fresh create_revision
    assert register(reg, "web", "w1") == {"revision": 6, "changed": True}
    assert api(reg, "GET", inst_path("web", "w1")).json()["create_revision"] == 6


def test_curl_client(reg):
    def curl(*args, timeout=10):
        return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True,
                              timeout=timeout)

    p = curl("-i", "-X", "PUT", "-H", "Content-Type: application/json",
             "--data", '{"address":"10.9.9.9","port":443,"tags":["tls"]}',
             reg.url + inst_path("edge", "e1"))
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.partition("\n\n")  # text mode folds CRLF
    assert head.startswith("HTTP/1.1 200 OK") and "X-Weft-Index: 1" in head, head
    assert json.loads(body) == {"revision": 1, "changed": True}
    p = curl("-f", reg.url + "/v1/services/edge?tag=tls")
    assert p.returncode == 0 and json.loads(p.stdout)["instances"][0]["address"] == "10.9.9.9"
    # the SSE stream through curl: the one event, then curl's own time limit
    p = curl("-N", "--max-time", "1", reg.url + "/v1/watch?since=0")
    assert p.returncode == 28, (p.returncode, p.stderr)  # 28: timed out, as intended
    assert p.stdout.startswith(": weft registry watch\n\nid: 1\nevent: put\ndata: {"), p.stdout
    assert p.stdout.endswith("}\n\n")
    # a 404 fails curl -f with exit 22
    assert curl("-f", reg.url + inst_path("edge", "nope")).returncode == 22


# ------------------------------------------------------------------ heartbeat / status

def test_heartbeat(reg):
    register(reg, "web", "w1", ttl="10s")
    register(reg, "web", "w2")
    time.sleep(0.2)
    before = api(reg, "GET", inst_path("web", "w1")).json()["lease_remaining_ms"]
    r = api(reg, "PUT", inst_path("web", "w1", "heartbeat"))
    assert r.status_code == 200
    assert r.json() == {"ttl_ms": 10000}
    after = api(reg, "GET", inst_path("web", "w1")).json()["lease_remaining_ms"]
    assert after > before and after > 9800, (before, after)
    # no lease: still accepted
    assert api(reg, "PUT", inst_path("web", "w2", "heartbeat")).json() == {"ttl_ms": 0}
    # heartbeats change nothing visible: no revision bump
    assert status_json(reg)["revision"] == 2
    # unknown instance: 404 telling the client to register again
    assert_error(api(reg, "PUT", inst_path("web", "ghost", "heartbeat")), 404,
                 "no such instance: register again")
    assert_error(api(reg, "PUT", inst_path("ghost", "w1", "heartbeat")), 404,
                 "no such instance: register again")


def test_status_changes_health(reg):
    register(reg, "web", "w1")
    register(reg, "web", "w2")
    r = api(reg, "PUT", inst_path("web", "w1", "status"), {"status": "DOWN"})
    assert r.status_code == 200
    assert r.json() == {"revision": 3, "changed": True}
    assert r.headers["X-Weft-Index"] == "3"
    j = api(reg, "GET", "/v1/services/web").json()
    by_id = {i["id"]: i for i in j["instances"]}
    assert (by_id["w1"]["status"], by_id["w1"]["healthy"]) == ("DOWN", False)
    assert (by_id["w2"]["status"], by_id["w2"]["healthy"]) == ("UP", True)
    assert [i["id"] for i in api(reg, "GET", "/v1/services/web?healthy=true")
            .json()["instances"]] == ["w2"]
    assert api(reg, "GET", "/v1/services").json()["services"]["web"]["healthy"] == 1
    # the same status again: unchanged
    r = api(reg, "PUT", inst_path("web", "w1", "status"), {"status": "DOWN"})
    assert r.json() == {"revision": 3, "changed": False}
    # back UP
    assert api(reg, "PUT", inst_path("web", "w1", "status"),
               {"status": "UP"}).json() == {"revision": 4, "changed": True}
    assert api(reg, "GET", inst_path("web", "w1")).json()["healthy"] is True
    # unknown instance
    assert_error(api(reg, "PUT", inst_path("web", "ghost", "status"), {"status": "DOWN"}),
                 404, "no such instance")


@pytest.mark.parametrize("raw", [
    b'{"status": "SICK"}', b'{"status": "down"}', b'{}', b'{"status": 1}', b'not json',
    b'', b'{"status": "DOWN", "extra": 1}', b'["DOWN"]', b'"DOWN"'])
def test_status_bad_body(reg, raw):
    register(reg, "web", "w1")
    j = assert_error(api(reg, "PUT", inst_path("web", "w1", "status"), raw=raw), 400)
    assert "UP|DOWN|OUT_OF_SERVICE|STARTING" in j["error"], j
    assert api(reg, "GET", inst_path("web", "w1")).json()["status"] == "UP"
    assert_unharmed(reg, revision=1)


# ------------------------------------------------------------------ bad input

def test_malformed_json_names_line_and_column(reg):
    raw = b'{\n  "address": "10.0.0.1",\n  "port": 80,\n}'
    j = assert_error(api(reg, "PUT", inst_path("web", "w1"), raw=raw), 400)
    assert re.match(r"invalid JSON at line 4 column 1: ", j["error"]), j
    j = assert_error(api(reg, "PUT", inst_path("web", "w1"), raw=b'{"address": "x", '), 400)
    assert re.match(r"invalid JSON at line 1 column \d+: ", j["error"]), j
    j = assert_error(api(reg, "PUT", inst_path("web", "w1"), raw=b''), 400)
    assert j["error"].startswith("invalid JSON at line "), j
    assert_unharmed(reg, revision=0)
    assert register(reg, "web", "w1") == {"revision": 1, "changed": True}


@pytest.mark.parametrize("body,msg", [
    ({"address": "h", "port": 80, "bogus": 1}, "bogus: unknown field"),
    ({"address": "h", "port": 0}, "port: expected an integer 1-65535"),
    ({"address": "h", "port": 65536}, "port: expected an integer 1-65535"),
    ({"address": "h", "port": -1}, "port: expected an integer 1-65535"),
    ({"address": "h", "port": "80"}, "port: expected an integer 1-65535"),
    ({"address": "h", "port": 80.5}, "port: expected an integer 1-65535"),
    ({"address": "h"}, "port: expected an integer 1-65535"),
    ({"port": 80}, "address: expected a host name or IP address"),
    ({"address": "", "port": 80}, "address: expected a host name or IP address"),
    ({"address": 10, "port": 80}, "address: expected a host name or IP address"),
    ({"address": "a b", "port": 80}, "address: invalid character"),
    ({"address": "h", "port": 80, "weight": 0}, "weight: expected an integer 1-1000"),
    ({"address": "h", "port": 80, "weight": 1001}, "weight: expected an integer 1-1000"),
    ({"address": "h", "port": 80, "status": "ALIVE"},
     "status: expected UP, DOWN, OUT_OF_SERVICE or STARTING"),
    ({"address": "h", "port": 80, "ttl": "5x"},
     "ttl: expected seconds (0.1-86400) or a duration like \"10s\""),
    ({"address": "h", "port": 80, "ttl": 0.05},
     "ttl: expected seconds (0.1-86400) or a duration like \"10s\""),
    ({"address": "h", "port": 80, "tags": "blue"},
     "tags: expected an array of at most 64 strings"),
    ({"address": "h", "port": 80, "tags": ["ok", 3]},
     "tags[1]: expected a string of at most 200 bytes"),
    ({"address": "h", "port": 80, "meta": {"k": 1}}, "meta.k: expected a string (at most 1 KiB)"),
    ({"address": "h", "port": 80, "meta": ["x"]},
     "meta: expected an object of at most 64 string values"),
    ({"address": "h", "port": 80, "zone": 5}, "zone: expected a string of at most 200 bytes"),
    ([1, 2], "body: expected a JSON object"),
])
def test_invalid_registration(reg, body, msg):
    assert_error(api(reg, "PUT", inst_path("web", "w1"), body), 400, msg)
    assert_error(api(reg, "GET", inst_path("web", "w1")), 404)
    assert_unharmed(reg, revision=0)


def test_bad_service_and_id_names(reg):
    svc_msg = "service: 1-200 characters of letters, digits, '.', '_', '-', ':'"
    id_msg = "id: 1-200 characters of letters, digits, '.', '_', '-', ':'"
    body = {"address": "h", "port": 80}
    for bad in ("we%20b", "we$b", "w%C3%A9b", "a*", "x" * 201):
        assert_error(api(reg, "PUT", inst_path(bad, "i1"), body), 400, svc_msg)
        assert_error(api(reg, "GET", f"/v1/services/{bad}"), 400, svc_msg)
    for bad in ("i%201", "i!", "i%22", "y" * 201):
        assert_error(api(reg, "PUT", inst_path("web", bad), body), 400, id_msg)
        assert_error(api(reg, "PUT", inst_path("web", bad, "heartbeat")), 400, id_msg)
    assert_unharmed(reg, revision=0)
    # the edges of the allowed set
    assert register(reg, "a.b_c-D:9", "Z.y_x-1:2")["changed"] is True
    assert register(reg, "s" * 200, "i" * 200)["changed"] is True
    assert api(reg, "GET", inst_path("s" * 200, "i" * 200)).status_code == 200


def test_body_over_64k_is_413(reg):
    big = json.dumps({"address": "h", "port": 80, "meta": {
        f"k{i}": "v" * 1024 for i in range(64)}}).encode()
    assert len(big) > 64 * 1024
    r = api(reg, "PUT", inst_path("web", "w1"), raw=big)
    assert_error(r, 413)
    # a body just under the limit is accepted (64 meta values close to 1 KiB)
    ok = {"address": "h", "port": 80, "meta": {f"k{i:02d}": "v" * 990 for i in range(64)}}
    assert len(json.dumps(ok)) < 64 * 1024
    assert register(reg, "web", "w1", meta=ok["meta"]) == {"revision": 1, "changed": True}
    assert_unharmed(reg, revision=1)


@pytest.mark.parametrize("method,path,allow", [
    ("POST", "/v1/services/web/instances/w1", "GET, HEAD, PUT, DELETE"),
    ("PATCH", "/v1/services/web/instances/w1", "GET, HEAD, PUT, DELETE"),
    ("GET", "/v1/services/web/instances/w1/heartbeat", "PUT"),
    ("POST", "/v1/services/web/instances/w1/status", "PUT"),
    ("PUT", "/v1/services", "GET, HEAD"),
    ("POST", "/v1/services/web", "GET, HEAD"),
    ("DELETE", "/v1/watch", "GET, HEAD"),
    ("POST", "/v1/status", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(reg, method, path, allow):
    register(reg, "web", "w1")
    r = api(reg, method, path, raw=b"{}")
    assert_error(r, 405, "method not allowed")
    assert r.headers.get("Allow") == allow, dict(r.headers)
    assert_unharmed(reg, revision=1)


@pytest.mark.parametrize("method,path,msg", [
    ("GET", "/v1/nope", "not found"),
    ("GET", "/v1", None),
    ("GET", "/v1/services/web/other/w1", "not found"),
    ("GET", "/v1/services/web/instances", "not found"),
    ("PUT", "/v1/services/web/instances/w1/bogus", "unknown action"),
    ("PUT", "/v1/services/web/instances/w1/heartbeat/extra", "not found"),
    ("GET", "/nothing", None),
])
def test_unknown_path_is_404(reg, method, path, msg):
    register(reg, "web", "w1")
    assert_error(api(reg, method, path), 404, msg)
    assert_unharmed(reg, revision=1)


# 2^64 and 2^64 + 3 once wrapped around to 0 and 3 (index 0: answered at once)
@pytest.mark.parametrize("q", ["abc", "-1", "1.5", "", "99999999999999999999999", "0x10",
                               "18446744073709551616", "18446744073709551619"])
def test_index_not_a_number_is_400(reg, q):
    register(reg, "web", "w1")
    for path in ("/v1/services", "/v1/services/web"):
        assert_error(api(reg, "GET", f"{path}?index={q}&wait=1s"), 400,
                     "index: expected a revision number")
    assert_error(api(reg, "GET", f"/v1/watch?since={q}"), 400,
                 "since: expected a revision number")
    assert_unharmed(reg, revision=1)


@pytest.mark.parametrize("w", ["xx", "5h", "-1s", "s", "10sec", "1s5"])
def test_wait_malformed_is_400(reg, w):
    register(reg, "web", "w1")
    for path in ("/v1/services", "/v1/services/web"):
        r, el = timed_get(reg.port, f"{path}?index=1&wait={w}")
        assert r.status == 400, r
        assert r.json() == {"error": "wait: expected a duration like 30s or 500ms",
                            "status": 400}
        assert el < 1.0
    assert_unharmed(reg, revision=1)
    assert status_json(reg)["waiters"] == 0


# ------------------------------------------------------------------ TTL leases

def test_ttl_expiry_without_heartbeats(reg):
    w = SSE(reg.port, "/v1/watch?since=0")
    w.read_greeting()
    register(reg, "web", "forever")  # no ttl: never expires
    t0 = time.monotonic()
    r = api(reg, "PUT", inst_path("web", "short"), {"address": "h", "port": 1, "ttl": "1s"})
    assert r.json() == {"revision": 2, "changed": True}

    def gone():
        return api(reg, "GET", inst_path("web", "short")).status_code == 404

    wait_until(gone, 3.0, interval=0.01, what="the lease to expire")
    el = time.monotonic() - t0
    assert 0.95 <= el <= 1.3, f"expired after {el:.3f}s (ttl 1s, sweep 100 ms)"
    evs = w.events(3)
    assert [(e["id"], e["event"]) for e in evs] == [(1, "put"), (2, "put"), (3, "delete")]
    assert evs[2]["json"] == {"service": "web", "id": "short"}
    w.close()
    time.sleep(0.3)
    assert api(reg, "GET", inst_path("web", "forever")).status_code == 200
    m = metrics(reg)
    assert m[("weft_registry_expirations_total", "")] == 1
    assert m[("weft_registry_instances", "")] == 1
    # heartbeating an expired instance: it must register again
    assert_error(api(reg, "PUT", inst_path("web", "short", "heartbeat")), 404)


def test_ttl_heartbeats_keep_the_lease(reg):
    register(reg, "web", "forever")
    register(reg, "web", "hb", ttl="1s")
    s = requests.Session()
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:
        r = s.put(reg.url + inst_path("web", "hb", "heartbeat"), timeout=HTTP_TIMEOUT)
        assert r.status_code == 200 and r.json() == {"ttl_ms": 1000}
        j = s.get(reg.url + inst_path("web", "hb"), timeout=HTTP_TIMEOUT).json()
        assert j["healthy"] is True and "expired" not in j
        time.sleep(0.3)
    assert status_json(reg)["revision"] == 2  # heartbeats bump nothing
    t0 = time.monotonic()
    wait_until(lambda: s.get(reg.url + inst_path("web", "hb"),
                             timeout=HTTP_TIMEOUT).status_code == 404,
               3.0, what="expiry once heartbeats stop")
    assert time.monotonic() - t0 <= 1.3
    # the lease-less instance outlived it all (> 3 s)
    assert s.get(reg.url + inst_path("web", "forever"), timeout=HTTP_TIMEOUT).status_code == 200
    s.close()


# ------------------------------------------------------------------ blocking queries

def test_blocking_query_wakes_on_change(reg):
    register(reg, "web", "w1")
    res = {}

    def client():
        try:
            res["r"], res["el"] = timed_get(reg.port, "/v1/services/web?index=1&wait=5s")
            res["t"] = time.monotonic()
        except Exception as e:  # noqa: BLE001
            res["err"] = e

    t = threading.Thread(target=client)
    t.start()
    wait_waiters(reg, 1)
    t0 = time.monotonic()
    s = connect(reg.port)
    s.sendall(put_bytes("web", "w2", {"address": "h", "port": 2}))
    assert Reader(s).read_response().status == 200
    s.close()
    t.join(6.0)
    assert not t.is_alive(), "blocking query not answered"
    assert "err" not in res, res
    r = res["r"]
    assert r.status == 200
    lat = res["t"] - t0
    assert lat < 0.3, f"answered {lat:.3f}s after the change"
    assert int(r.header("X-Weft-Index")) == 2 > 1
    j = r.json()
    assert j["revision"] == 2
    assert sorted(i["id"] for i in j["instances"]) == ["w1", "w2"]
    assert status_json(reg)["waiters"] == 0


def test_blocking_query_times_out_with_same_index(reg):
    register(reg, "web", "w1")
    r, el = timed_get(reg.port, "/v1/services/web?index=1&wait=1s")
    assert r.status == 200
    assert 1.0 <= el <= 1.2, f"wait=1s answered after {el:.3f}s (jitter <= 62 ms)"
    assert r.header("X-Weft-Index") == "1"
    assert r.json()["revision"] == 1 and len(r.json()["instances"]) == 1
    # milliseconds form, through http.client on a keep-alive connection
    c = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=5.0)
    try:
        t0 = time.monotonic()
        c.request("GET", "/v1/services/web?index=1&wait=300ms")
        resp = c.getresponse()
        body = json.loads(resp.read())
        el = time.monotonic() - t0
        assert resp.status == 200 and resp.getheader("X-Weft-Index") == "1"
        assert body["revision"] == 1
        assert 0.3 <= el <= 0.45, el
        # the connection stays usable after a parked answer
        c.request("GET", "/v1/services/web?index=0")
        resp = c.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["revision"] == 1
    finally:
        c.close()


def test_blocking_query_returns_at_once(reg):
    register(reg, "web", "w1")
    register(reg, "web", "w2")
    for q in ("index=0&wait=5s", "index=1&wait=5s", "wait=5s"):
        r, el = timed_get(reg.port, f"/v1/services/web?{q}")
        assert r.status == 200 and r.header("X-Weft-Index") == "2"
        assert el < 0.3, (q, el)
    r, el = timed_get(reg.port, "/v1/services?index=0&wait=5s")
    assert r.status == 200 and r.header("X-Weft-Index") == "2" and el < 0.3


def test_blocking_query_ignores_other_services(reg):
    register(reg, "web", "w1")  # rev 1
    res = {}

    def client():
        res["r"], res["el"] = timed_get(reg.port, "/v1/services/web?index=1&wait=1s")

    t = threading.Thread(target=client)
    t.start()
    wait_waiters(reg, 1)
    time.sleep(0.1)
    register(reg, "api", "a1")  # rev 2, another service
    register(reg, "api", "a2")  # rev 3
    t.join(3.0)
    assert not t.is_alive()
    r = res["r"]
    assert r.status == 200 and r.header("X-Weft-Index") == "1"
    assert res["el"] >= 1.0, f"woken by another service after {res['el']:.3f}s"


def test_blocking_service_list_wakes_on_any_change(reg):
    register(reg, "web", "w1")
    res = {}

    def client():
        res["r"], _ = timed_get(reg.port, "/v1/services?index=1&wait=5s")
        res["t"] = time.monotonic()

    t = threading.Thread(target=client)
    t.start()
    wait_waiters(reg, 1)
    t0 = time.monotonic()
    register(reg, "other", "o1")
    t.join(6.0)
    assert not t.is_alive()
    r = res["r"]
    assert res["t"] - t0 < 0.3, res["t"] - t0
    assert r.status == 200 and r.header("X-Weft-Index") == "2"
    assert sorted(r.json()["services"]) == ["other", "web"]


def test_blocking_query_client_disconnects(reg):
    register(reg, "web", "w1")
    socks = []
    for path in ("/v1/services/web?index=1&wait=30s", "/v1/services?index=1&wait=30s"):
        s = connect(reg.port)
        s.sendall(request_bytes("GET", path))
        socks.append(s)
    wait_waiters(reg, 2)
    assert metrics(reg)[("weft_registry_blocking_queries", "")] == 2
    # a plain close (FIN) cannot be told from a half-close by the server, so
    # the waiters may stay parked until answered: the change answers them
    # into closed sockets, which must not harm the server
    for s in socks:
        s.close()
    time.sleep(0.1)
    assert register(reg, "web", "w2") == {"revision": 2, "changed": True}
    wait_waiters(reg, 0)
    assert metrics(reg)[("weft_registry_blocking_queries", "")] == 0
    r = api(reg, "GET", "/v1/services/web")
    assert r.status_code == 200 and len(r.json()["instances"]) == 2
    # an abrupt reset while parked as well
    s = connect(reg.port)
    s.sendall(request_bytes("GET", "/v1/services/web?index=2&wait=30s"))
    wait_waiters(reg, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    s.close()
    wait_waiters(reg, 0)
    register(reg, "web", "w3")
    assert_unharmed(reg, revision=3)


# ------------------------------------------------------------------ watch (SSE)

def test_watch_streams_every_change_in_order(reg):
    w = SSE(reg.port, "/v1/watch?since=0")
    assert w.status == 200
    assert w.resp.header("Content-Type") == "text/event-stream"
    assert w.resp.header("Cache-Control") == "no-cache"
    assert w.resp.header("X-Weft-Index") == "0"
    w.read_greeting()
    s = requests.Session()
    expect = []
    for i in range(50):
        svc = "alpha" if i % 2 == 0 else "beta"
        r = s.put(reg.url + inst_path(svc, f"i{i}"), timeout=HTTP_TIMEOUT,
                  data=json.dumps({"address": "10.0.0.1", "port": 1000 + i}))
        assert r.status_code == 200
        expect.append(("put", svc, f"i{i}"))
    for i in range(10):
        svc = "alpha" if i % 2 == 0 else "beta"
        assert s.delete(reg.url + inst_path(svc, f"i{i}"), timeout=HTTP_TIMEOUT).status_code \
            == 200
        expect.append(("delete", svc, f"i{i}"))
    for i in range(10, 15):
        svc = "alpha" if i % 2 == 0 else "beta"
        r = s.put(reg.url + inst_path(svc, f"i{i}", "status"), timeout=HTTP_TIMEOUT,
                  data=json.dumps({"status": "DOWN"}))
        assert r.json()["changed"] is True
        expect.append(("put", svc, f"i{i}"))
    s.close()
    evs = w.events(65)
    assert [e["id"] for e in evs] == list(range(1, 66))
    assert [(e["event"], e["json"]["service"], e["json"]["id"]) for e in evs] == expect
    assert evs[0]["json"]["port"] == 1000 and evs[0]["json"]["revision"] == 1
    assert evs[50]["json"] == {"service": "alpha", "id": "i0"}
    assert all(e["json"]["status"] == "DOWN" and e["json"]["healthy"] is False
               for e in evs[60:])
    # a watcher that starts late is served the same sequence from the history
    w2 = SSE(reg.port, "/v1/watch?since=0")
    assert w2.resp.header("X-Weft-Index") == "65"
    evs2 = w2.events(65)
    assert [(e["id"], e["event"], e["data"]) for e in evs2] == \
           [(e["id"], e["event"], e["data"]) for e in evs]
    # nothing more is pending: no event arrives within 0.3 s
    w.settimeout(0.3)
    with pytest.raises(socket.timeout):
        w.next_event()
    w.reset()
    w2.reset()
    wait_watchers(reg, 0)


def test_watch_service_filter(reg):
    w = SSE(reg.port, "/v1/watch?since=0&service=beta")
    w.read_greeting()
    for i in range(20):
        register(reg, "alpha" if i % 3 else "beta", f"i{i}")
    api(reg, "DELETE", inst_path("beta", "i3"))  # rev 21
    betas = [i for i in range(20) if i % 3 == 0]
    evs = w.events(len(betas) + 1)
    assert [e["id"] for e in evs] == [i + 1 for i in betas] + [21]
    assert all(e["json"]["service"] == "beta" for e in evs)
    assert [e["event"] for e in evs] == ["put"] * len(betas) + ["delete"]
    ids = [e["id"] for e in evs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    w.settimeout(0.3)
    with pytest.raises(socket.timeout):
        w.next_event()
    w.close()


def test_watch_resume_from_last_id(reg):
    for i in range(10):
        register(reg, "web", f"i{i}")
    w = SSE(reg.port, "/v1/watch?since=0")
    first = w.events(6)
    last = first[-1]["id"]
    assert last == 6
    w.close()
    for i in range(10, 15):
        register(reg, "web", f"i{i}")
    w = SSE(reg.port, f"/v1/watch?since={last}")
    assert w.resp.header("X-Weft-Index") == "15"
    evs = w.events(9)
    assert [e["id"] for e in evs] == list(range(7, 16))
    assert [e["json"]["id"] for e in evs] == [f"i{i}" for i in range(6, 15)]
    w.settimeout(0.3)
    with pytest.raises(socket.timeout):
        w.next_event()
    w.close()
    # without since: only changes from now on
    w = SSE(reg.port, "/v1/watch")
    w.read_greeting()
    register(reg, "web", "later")
    ev = w.next_event()
    assert ev["id"] == 16 and ev["json"]["id"] == "later"
    w.close()
    # since in the future: nothing until the registry gets there
    w = SSE(reg.port, "/v1/watch?since=17")
    w.read_greeting()
    register(reg, "web", "x17")
    register(reg, "web", "x18")
    ev = w.next_event()
    assert ev["id"] == 18 and ev["json"]["id"] == "x18"
    w.close()


def test_departed_watchers_are_released(reg):
    register(reg, "web", "w0")
    a = SSE(reg.port, "/v1/watch")
    a.read_greeting()
    b = SSE(reg.port, "/v1/watch?service=web")
    b.read_greeting()
    wait_watchers(reg, 2)
    a.reset()  # RST: noticed at once
    wait_watchers(reg, 1)
    b.close()  # FIN: noticed when the next events fail to be written
    time.sleep(0.1)
    for i in range(1, 6):
        register(reg, "web", f"w{i}")
        time.sleep(0.05)
        if status_json(reg)["watchers"] == 0:
            break
    wait_watchers(reg, 0, timeout=2.0)
    assert metrics(reg)[("weft_registry_watchers", "")] == 0
    # a new watcher is served normally from the history
    c = SSE(reg.port, "/v1/watch?since=0")
    assert [e["id"] for e in c.events(status_json(reg)["revision"])] == \
        list(range(1, status_json(reg)["revision"] + 1))
    c.reset()


def test_watch_older_than_history_is_410_relist(registry):
    reg = registry(config="registry:\n  history: 16\n")
    for i in range(40):
        register(reg, "web", f"i{i}")
    for since in (0, 1, 23):
        w = SSE(reg.port, f"/v1/watch?since={since}")
        assert w.status == 410, (since, w.resp)
        assert w.resp.header("X-Weft-Index") == "40"
        j = json.loads(w.resp.body)
        assert j["error"] == "relist" and j["revision"] == 40, j
        assert isinstance(j.get("detail"), str)
        w.close()
    # the oldest retained change is 25: since=24 is served exactly
    w = SSE(reg.port, "/v1/watch?since=24")
    assert w.status == 200
    evs = w.events(16)
    assert [e["id"] for e in evs] == list(range(25, 41))
    w.close()
    assert_unharmed(reg, revision=40)


def _slow_watcher_run(reg, n_changes, meta_values):
    w = SSE(reg.port, "/v1/watch?since=0", timeout=15.0, rcvbuf=4096)
    w.read_greeting()
    meta_base = {f"m{k}": chr(ord("a") + k) * 1000 for k in range(meta_values)}
    batch = []
    t0 = time.monotonic()
    for i in range(n_changes):
        meta = dict(meta_base, seq=str(i))
        batch.append(put_bytes("big", f"i{i % 100}", {"address": "h", "port": 1 + i % 60000,
                                                       "meta": meta}))
        if len(batch) == 100 or i == n_changes - 1:
            for r in pipelined(reg.port, batch, timeout=15.0):
                assert r.status == 200 and r.json()["changed"] is True, r
            batch = []
    # the registry stays responsive while the watcher is stalled
    r, el = timed_get(reg.port, "/v1/status")
    assert r.status == 200 and r.json()["revision"] == n_changes and el < 1.0
    write_s = time.monotonic() - t0
    # now read everything
    got = []
    relist = None
    while len(got) < n_changes:
        ev = w.next_event()
        assert ev is not None, f"stream ended after {len(got)} events without relist"
        if ev["event"] == "relist":
            relist = ev
            break
        assert ev["id"] == len(got) + 1, f"gap: expected id {len(got) + 1}, got {ev['id']}"
        assert ev["json"]["meta"]["seq"] == str(ev["id"] - 1)
        got.append(ev["id"])
    w.settimeout(3.0)
    return w, got, relist, write_s


def test_watch_slow_consumer_gets_everything(registry):
    reg = registry(config="registry:\n  history: 100000\n")
    w, got, relist, write_s = _slow_watcher_run(reg, 2000, 3)
    print(f"\nslow watcher: 2000 changes of ~3 KiB written in {write_s:.2f}s")
    assert relist is None, f"relist after {len(got)} events although the history holds all"
    assert got == list(range(1, 2001))
    w.close()


def test_watch_slow_consumer_overwritten_history_relists(registry):
    reg = registry(config="registry:\n  history: 16\n")
    w, got, relist, _ = _slow_watcher_run(reg, 2000, 4)
    print(f"\nslow watcher, history 16: {len(got)} events then "
          f"{'relist ' + relist['data'] if relist else 'no relist'}")
    assert got == list(range(1, len(got) + 1))
    if relist is not None:
        assert relist["json"] == {"revision": 2000}
        assert "id" not in relist
        # the stream ends cleanly after the relist event
        assert w.next_event() is None and w.ended
    else:
        assert len(got) == 2000
    w.close()
    # the client is gone: the server must let go of the connection (else it
    # lingers in CLOSE-WAIT and holds up the drain until its deadline)
    conns = ("weft_http_connections", "")
    wait_until(lambda: metrics(reg)[conns] == 1, 2.0, interval=0.05,
               what="the closed watch connection to be released "
                    f"(weft_http_connections stays {metrics(reg)[conns]:.0f}, want 1: "
                    "the scrape itself)")


def test_watch_latency_50_watchers(reg):
    n = 50
    ready = threading.Barrier(n + 1, timeout=15.0)
    got = [None] * n
    errs = []

    def watcher(k):
        try:
            w = SSE(reg.port, "/v1/watch", timeout=10.0)
            w.read_greeting()
            ready.wait()
            ev = w.next_event()
            got[k] = (time.monotonic(), ev)
            w.reset()
        except Exception as e:  # noqa: BLE001
            errs.append(e)
            try:
                ready.abort()
            except threading.BrokenBarrierError:
                pass

    ts = [threading.Thread(target=watcher, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    ready.wait()
    wait_watchers(reg, n)
    s = connect(reg.port)
    t0 = time.monotonic()
    s.sendall(put_bytes("web", "w1", {"address": "h", "port": 1}))
    assert Reader(s).read_response().status == 200
    s.close()
    for t in ts:
        t.join(10.0)
    assert not errs, errs
    assert all(g is not None for g in got), "some watchers saw nothing"
    assert all(g[1]["id"] == 1 and g[1]["json"]["id"] == "w1" for g in got)
    lat = [g[0] - t0 for g in got]
    mx = max(lat)
    print(f"\nchange-to-watcher latency over {n} SSE watchers: max {mx * 1000:.1f} ms, "
          f"median {sorted(lat)[n // 2] * 1000:.1f} ms")
    assert mx < 0.5, mx


# ------------------------------------------------------------------ self-preservation

class Heartbeater(threading.Thread):
    """Heartbeats a set of instances every 300 ms, each round as one
    pipelined burst (so their leases end together)."""

    def __init__(self, reg, svc, ids):
        super().__init__(daemon=True)
        self.reg, self.svc = reg, svc
        self.active = set(ids)
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.errors = []

    def set_active(self, ids):
        with self.lock:
            self.active = set(ids)

    def run(self):
        while not self.stop_ev.is_set():
            with self.lock:
                ids = sorted(self.active)
            if ids:
                try:
                    rs = pipelined(self.reg.port, [
                        request_bytes("PUT", inst_path(self.svc, i, "heartbeat"))
                        for i in ids])
                    bad = [r for r in rs if r.status != 200]
                    if bad:
                        self.errors.append(bad)
                except Exception as e:  # noqa: BLE001
                    self.errors.append(e)
            self.stop_ev.wait(0.3)

    def stop(self):
        self.stop_ev.set()
        self.join(5.0)


def test_self_preservation(registry):
    reg = registry(config="registry:\n  self_preservation_min: 10\n"
                          "  self_preservation_threshold: 15\n")
    ids = [f"n{i:02d}" for i in range(20)]
    for i in ids:
        register(reg, "fleet", i, ttl="1s")
    hb = Heartbeater(reg, "fleet", ids)
    hb.start()
    try:
        time.sleep(0.5)
        cut = ids[:10]
        hb.set_active(ids[10:])  # 10 of 20 (50 % > 15 %) stop at once
        time.sleep(1.6)
        j = api(reg, "GET", "/v1/services/fleet").json()
        by_id = {i["id"]: i for i in j["instances"]}
        assert sorted(by_id) == ids, "instances were evicted during self-preservation"
        for i in cut:
            assert by_id[i]["healthy"] is False and by_id[i].get("expired") is True, by_id[i]
        for i in ids[10:]:
            assert by_id[i]["healthy"] is True and "expired" not in by_id[i], by_id[i]
        st = status_json(reg)
        assert st["self_preservation"] is True and st["instances"] == 20, st
        assert api(reg, "GET", "/v1/services").json()["self_preservation"] is True
        m = metrics(reg)
        assert m[("weft_registry_self_preservation", "")] == 1
        assert m[("weft_registry_expirations_total", "")] == 0
        healthy_ids = sorted(i["id"] for i in api(reg, "GET", "/v1/services/fleet?healthy=true")
                             .json()["instances"])
        assert healthy_ids == ids[10:]
        # heartbeats return: healthy again, self-preservation off
        hb.set_active(ids)

        def recovered():
            js = api(reg, "GET", "/v1/services/fleet").json()["instances"]
            return (len(js) == 20 and all(x["healthy"] and "expired" not in x for x in js)
                    and status_json(reg)["self_preservation"] is False)

        wait_until(recovered, 3.0, interval=0.05, what="recovery from self-preservation")
        assert metrics(reg)[("weft_registry_self_preservation", "")] == 0
        time.sleep(0.5)
        # a single lost lease (1 of 20 <= 15 %) is evicted normally
        hb.set_active(ids[1:])
        t0 = time.monotonic()
        wait_until(lambda: api(reg, "GET", inst_path("fleet", ids[0])).status_code == 404,
                   3.0, interval=0.05, what="eviction of the one silent instance")
        assert time.monotonic() - t0 < 1.6
        st = status_json(reg)
        assert st["self_preservation"] is False and st["instances"] == 19, st
        assert metrics(reg)[("weft_registry_expirations_total", "")] == 1
    finally:
        hb.stop()
    assert not hb.errors, hb.errors[:3]


# ------------------------------------------------------------------ metrics

def test_metrics_count_exact_deltas(reg):
    m0 = metrics(reg)
    regs = ("weft_registry_registrations_total", "")
    beats = ("weft_registry_heartbeats_total", "")
    deregs = ("weft_registry_deregistrations_total", "")
    register(reg, "web", "w1", ttl="60s")
    register(reg, "web", "w1", ttl="60s")  # unchanged, still a register call
    register(reg, "web", "w2")
    api(reg, "PUT", inst_path("web", "w3"), {"address": "h"})  # rejected: not counted
    for _ in range(7):
        assert api(reg, "PUT", inst_path("web", "w1", "heartbeat")).status_code == 200
    assert api(reg, "PUT", inst_path("web", "nope", "heartbeat")).status_code == 404
    assert api(reg, "DELETE", inst_path("web", "w2")).status_code == 200
    assert api(reg, "DELETE", inst_path("web", "w2")).status_code == 404
    m1 = metrics(reg)
    assert m1[regs] - m0[regs] == 3
    assert m1[beats] - m0[beats] == 7
    assert m1[deregs] - m0[deregs] == 1
    assert m1[("weft_registry_instances", "")] == 1
    assert m1[("weft_registry_revision", "")] == 3
    assert m1[("weft_registry_self_preservation", "")] == 0
    assert m1[("weft_registry_watchers", "")] == 0
    w = SSE(reg.port, "/v1/watch")
    w.read_greeting()
    assert metrics(reg)[("weft_registry_watchers", "")] == 1
    w.reset()
    wait_until(lambda: metrics(reg)[("weft_registry_watchers", "")] == 0, 3.0,
               what="watcher gauge back to 0")


def test_metrics_pass_promtool(reg):
    register(reg, "web", "w1", ttl="5s")
    api(reg, "PUT", inst_path("web", "w1", "heartbeat"))
    body = api(reg, "GET", "/metrics").content
    assert b"weft_registry_registrations_total" in body
    p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                       timeout=20)
    assert p.returncode == 0, (p.stdout, p.stderr)


# ------------------------------------------------------------------ drain

def test_sigterm_drains_watchers_and_blocking_queries(reg):
    register(reg, "web", "w1")
    w = SSE(reg.port, "/v1/watch?since=0", timeout=5.0)
    w.read_greeting()
    assert w.next_event()["id"] == 1
    t, res = get_in_background(reg.port, "/v1/services/web?index=1&wait=60s")
    wait_waiters(reg, 1)
    wait_watchers(reg, 1)
    t0 = time.monotonic()
    reg.signal(signal.SIGTERM)
    rc = reg.wait(2.0)
    el = time.monotonic() - t0
    assert rc is not None, f"registry still running 2 s after SIGTERM:\n{reg.stderr[-3000:]}"
    assert rc == 0, reg.stderr[-3000:]
    t.join(3.0)
    assert not t.is_alive()
    assert "err" not in res, res
    r = res["r"]
    assert r.status == 200 and r.header("X-Weft-Index") == "1", r
    assert r.json()["revision"] == 1
    # the stream: complete events, then the terminal chunk, then EOF
    assert w.next_event() is None
    assert w.ended, "stream cut without the terminal chunk"
    assert w.rd.at_eof(2.0)
    w.close()
    print(f"\nexit {el:.3f}s after SIGTERM")
    assert reg.sanitizer_report() is None, reg.sanitizer_report()[-4000:]



def test_index_uint64_max_is_a_number(reg):
    register(reg, "web", "w1")
    r, el = timed_get(reg.port, "/v1/services/web?index=18446744073709551615&wait=200ms")
    assert r.status == 200 and el >= 0.18, (r, el)
    assert_unharmed(reg, revision=1)


def test_watch_resumes_from_last_event_id(reg):
    # an EventSource reconnects to the same URL with the last id it got:
    # resume after it, no gap (the URL has no since) and no repeat (since=0)
    for i in range(1, 5):
        register(reg, "web", f"i{i}")
    for target in ("/v1/watch", "/v1/watch?since=0"):
        w = SSE(reg.port, target, headers={"Last-Event-ID": "2"})
        assert w.status == 200, w.resp
        assert [e["id"] for e in w.events(2)] == [3, 4]
        w.close()
    w = SSE(reg.port, "/v1/watch", headers={"Last-Event-ID": "x"})
    assert w.status == 400 and b"Last-Event-ID" in w.resp.body, w.resp
    w.close()
    assert_unharmed(reg, revision=4)


def test_wait_zero_means_the_default_wait(reg):
    """wait=0 is Consul's default wait (5 min), not an instant answer: a
    watch loop passing wait=0s would otherwise poll flat out."""
    register(reg, "web", "w1")
    t, res = get_in_background(reg.port, "/v1/services/web?index=1&wait=0s")
    wait_waiters(reg, 1)
    time.sleep(1.0)
    assert t.is_alive(), f"wait=0s answered at once: {res}"
    assert status_json(reg)["waiters"] == 1
    register(reg, "web", "w2")
    t.join(5.0)
    assert not t.is_alive(), "parked query not woken by the change"
    assert "err" not in res, res
    assert res["r"].status == 200 and int(res["r"].header("X-Weft-Index")) == 2
