"""Connection-bound leases: GET .../session keeps an instance alive while
the connection is open; when the client's connection drops (crash, close),
the instance is deregistered at once; a registry shutdown does not."""
import json
import os
import socket
import time

from test_registry_durability import Registry


def open_session(port, svc, iid):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET /v1/services/{svc}/instances/{iid}/session HTTP/1.1\r\nHost: r\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(4096)
        assert d, "session closed before its head"
        head += d
    return s, head


def ids(r, svc):
    return {x["id"] for x in r.instances(svc)["instances"]}


def test_session_keeps_lease_and_drop_deregisters(tmp_path):
    r = Registry(tmp_path / "d", tmp_path)
    try:
        assert r.req("PUT", "/v1/services/s/instances/a",
                     {"address": "127.0.0.1", "port": 1, "ttl": "1s"})[0] == 200
        s, head = open_session(r.port, "s", "a")
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        time.sleep(2.0)  # twice the TTL, no heartbeats: the open session is the heartbeat
        assert ids(r, "s") == {"a"}
        # a second session for the same instance is refused
        s2, head2 = open_session(r.port, "s", "a")
        assert head2.startswith(b"HTTP/1.1 409")
        s2.close()
        t0 = time.monotonic()
        s.close()  # the client goes away (FIN)
        while "a" in ids(r, "s") and time.monotonic() - t0 < 3:
            time.sleep(0.01)
        assert "a" not in ids(r, "s")
        assert time.monotonic() - t0 < 0.5, "the dropped session took too long to notice"
    finally:
        assert r.stop() == 0


def test_session_for_unknown_instance_is_404(tmp_path):
    r = Registry(tmp_path / "d", tmp_path)
    try:
        s, head = open_session(r.port, "s", "ghost")
        assert head.startswith(b"HTTP/1.1 404")
        s.close()
    finally:
        assert r.stop() == 0


def test_registry_shutdown_keeps_session_instances(tmp_path):
    data = tmp_path / "d"
    r = Registry(data, tmp_path)
    assert r.req("PUT", "/v1/services/s/instances/a", {"address": "127.0.0.1", "port": 1})[0] == 200
    s, _ = open_session(r.port, "s", "a")
    assert r.stop() == 0  # drain ends the session stream cleanly
    s.settimeout(2)
    rest = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        rest += d
    s.close()
    assert rest.endswith(b"0\r\n\r\n"), rest[-40:]  # a complete chunked end, not a reset
    r = Registry(data, tmp_path)
    try:
        assert ids(r, "s") == {"a"}  # the registry stopping is not the client crashing
    finally:
        assert r.stop() == 0
