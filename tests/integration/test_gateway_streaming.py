"""weft gateway bodies and connections: a 50 MB response streamed intact
(with backpressure), chunked / close-delimited / truncated upstream bodies,
request bodies forwarded intact, HEAD, client aborts, and the upstream
keep-alive pool (reuse, max_idle, idle_timeout)."""
import hashlib
import os
import socket
import time

import weftutil
from gwutil import (Client, build_request, gateway, origin_of, origins, parallel,  # noqa: F401
                    metric, sha256, wait_until)


def cfg(o, top=""):
    return f"""{top}
clusters:
  c:
    endpoints: [{o.addr}]
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: r
    cluster: c
"""


def test_50mb_response_streams_intact_with_backpressure(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o))
    n = 50 * 1024 * 1024
    s = socket.create_connection(("127.0.0.1", g.port), timeout=20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        s.sendall(build_request("GET", f"/big?n={n}"))
        rd = weftutil.Reader(s)
        _, status, _, headers, _ = rd.read_head()
        hd = {k.lower(): v for k, v in headers}
        assert status == 200, headers
        assert hd.get("content-length") == str(n), headers
        h = hashlib.sha256()
        got = 0
        first = rd.read_exact(min(len(rd.buf), n)) if rd.buf else b""
        h.update(first)
        got += len(first)
        # read 1 MiB, then stall: the gateway must pause the upstream rather
        # than buffer the whole body
        while got < 1 << 20:
            d = s.recv(65536)
            assert d, "EOF early"
            h.update(d)
            got += len(d)
        rss0 = g.rss_kib()
        time.sleep(1.0)
        rss1 = g.rss_kib()
        assert rss1 - rss0 < 24 * 1024, (rss0, rss1)
        deadline = time.monotonic() + 60
        while got < n and time.monotonic() < deadline:
            d = s.recv(1 << 20)
            if not d:
                break
            h.update(d)
            got += len(d)
        assert got == n, got
        assert h.hexdigest() == weftutil.expected_bytes_sha256(n)
        # the connection is still usable afterwards
        s.sendall(build_request("GET", "/after"))
        r = rd.read_response()
        assert r.status == 200 and origin_of(r) == o.name
    finally:
        s.close()


def test_post_body_forwarded_intact(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o, top="http: {max_body: 4MiB}"))
    body = os.urandom(1 << 20)
    with Client(g.port, timeout=20) as c:
        r = c.request("POST", "/upload", [("Content-Type", "application/octet-stream")], body)
        assert r.status == 200, r
        assert r.json()["len"] == len(body)
        rec = o.last()
        assert rec.method == "POST" and rec.target == "/upload"
        assert sha256(rec.body) == sha256(body)
        assert rec.header("Content-Type") == "application/octet-stream"
        # a chunked upload arrives whole as well
        chunks = [os.urandom(100_000) for _ in range(3)]
        raw = b"".join(b"%x\r\n%s\r\n" % (len(ch), ch) for ch in chunks) + b"0\r\n\r\n"
        r = c.request("PUT", "/chunked", [("Transfer-Encoding", "chunked")], raw)
        assert r.status == 200, r
        assert o.last().body == b"".join(chunks)


def test_head_through_gateway(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o))
    with Client(g.port) as c:
        r = c.request("HEAD", "/big?n=12345")
        assert r.status == 200, r
        assert r.header("Content-Length") == "12345", r
        assert r.body == b""
        assert o.last().method == "HEAD"
        # the framing stayed intact: the same connection serves the next request
        r = c.get("/next")
        assert r.status == 200 and origin_of(r) == o.name, r


def test_chunked_and_close_delimited_upstream_bodies(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o))
    n = 3 * 1024 * 1024 + 17
    want = weftutil.expected_bytes_sha256(n)
    with Client(g.port, timeout=20) as c:
        r = c.get(f"/chunked?n={n}")
        assert r.status == 200 and len(r.body) == n and sha256(r.body) == want
        r = c.get(f"/eof?n={n}")
        assert r.status == 200 and len(r.body) == n and sha256(r.body) == want
        r = c.get("/after")
        assert r.status == 200 and origin_of(r) == o.name


def test_status_passthrough_no_body_statuses(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o))
    with Client(g.port) as c:
        r = c.get("/status/204")
        assert r.status == 204 and r.body == b"", r
        r = c.get("/status/304")
        assert r.status == 304 and r.body == b"", r
        r = c.get("/status/404")
        assert r.status == 404 and r.json() == {"status": 404}, r
        r = c.get("/status/201")
        assert r.status == 201 and r.json() == {"status": 201}, r
        assert c.get("/x").status == 200


def test_upstream_truncated_body_is_not_passed_as_complete(gateway, origins):
    o, = origins(1)
    g = gateway(cfg(o))
    n, cut = 1_000_000, 300_000
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    try:
        s.sendall(build_request("GET", f"/trunc?n={n}&cut={cut}"))
        rd = weftutil.Reader(s)
        _, status, _, headers, _ = rd.read_head()
        assert status == 200
        hd = {k.lower(): v for k, v in headers}
        body = rd.read_to_eof()
        if "content-length" in hd:
            # announced length: the connection must close short of it
            assert int(hd["content-length"]) == n
            assert len(body) < n
        else:
            # chunked: the terminating chunk must be missing
            assert not body.endswith(b"0\r\n\r\n")
    finally:
        s.close()
    assert g.get("/ok").status == 200


def test_client_aborts_are_harmless(gateway, origins):
    o, slow = origins(2)
    slow.set_mode("sleep", delay_ms=400)
    g = gateway(f"""
clusters:
  fast:
    endpoints: [{o.addr}]
  slow:
    endpoints: [{slow.addr}]
routes:
  - name: slow
    match: {{prefix: /slow}}
    cluster: slow
  - name: fast
    cluster: fast
""")
    # 1) mid-stream: read a little of a 50 MB body, then vanish
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        s.sendall(build_request("GET", f"/big?n={50 << 20}"))
        assert s.recv(65536)
        s.close()
    # 2) while the upstream is still working on it
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        s.sendall(build_request("GET", "/slow/x"))
        time.sleep(0.05)
        s.close()
    time.sleep(0.6)
    assert slow.count() == 3
    with Client(g.port) as c:
        for _ in range(5):
            assert c.get("/x").status == 200
        assert c.get("/slow/y").status == 200


def pool_cfg(o, extra=""):
    return f"""
clusters:
  c:
    endpoints: [{o.addr}]
{extra}
routes:
  - name: r
    cluster: c
"""


def test_upstream_keepalive_pool_reuses_connections(gateway, origins):
    o, = origins(1)
    g = gateway(pool_cfg(o))
    with Client(g.port) as c:
        for i in range(50):
            assert c.get(f"/k/{i}").status == 200
    assert len(set(o.conn_ids())) == 1, o.conn_ids()


def test_upstream_pool_max_idle_bounds_idle_connections(gateway, origins):
    o, = origins(1)
    o.set_mode("sleep", delay_ms=300)
    g = gateway(pool_cfg(o, "    max_idle: 1"))
    rs = parallel(g.port, 4, concurrency=4, target="/k")
    assert all(r.status == 200 for r in rs)
    assert len(set(o.conn_ids())) == 4  # four requests at once: four connections
    # afterwards at most max_idle (1) of them may stay pooled
    wait_until(lambda: o.open_connections() <= 1, 2,
               what=f"idle upstream connections <= max_idle (open: {o.open_connections()})")


def test_upstream_pool_idle_timeout_closes_idle_connections(gateway, origins):
    o, = origins(1)
    g = gateway(pool_cfg(o, "    idle_timeout: 300ms"))
    assert g.get("/k").status == 200
    assert o.open_connections() == 1
    t0 = time.monotonic()
    wait_until(lambda: o.open_connections() == 0, 3, what="gateway closing its idle connection")
    assert time.monotonic() - t0 < 1.0


def test_streamed_request_waiting_for_a_connection_gets_one_when_it_goes_idle(gateway, origins):
    """With max_connections, a streamed (chunked) request that waits for a
    slot must get one when the busy connection returns to the pool: it may
    not take a pooled connection (a streamed body cannot be resent on a
    stale one), so the idle one is closed for it, not waited behind."""
    o, = origins(1)
    o.set_mode("sleep", delay_ms=400)
    g = gateway(pool_cfg(o, "    max_connections: 1"))
    slow = Client(g.port)
    slow.sock = None
    slow._connect()
    slow.sock.sendall(build_request("GET", "/first"))  # holds the only connection
    wait_until(lambda: o.count(path="/first") == 1, 3, what="the first request at the origin")
    with Client(g.port, timeout=5) as c:
        body = b"5\r\nhello\r\n0\r\n\r\n"
        r = c.request("POST", "/streamed", headers={"Transfer-Encoding": "chunked"}, body=body)
        assert r.status == 200, r
    assert slow.rd.read_response(method="GET").status == 200
    slow.close()
    assert [x.body for x in o.recs() if x.path == "/streamed"] == [b"hello"]
    # the worker is still serving
    assert g.get("/after", timeout=5).status == 200


def test_chunked_upload_over_max_body_is_cut_even_after_the_answer_began(gateway):
    """http.max_body limits every request body. An upstream that starts its
    answer before reading the upload (an echo, a progress stream) must not
    lift the limit: past it the gateway ends both sides (the answer cannot
    become a 413 any more) instead of streaming on without bound."""
    import threading
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    ls.settimeout(10)
    received = [0]
    done = threading.Event()

    def origin():
        try:
            c, _ = ls.accept()
        except OSError:
            return
        c.settimeout(10)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += c.recv(65536)
            # answer at once, then read the upload until the gateway stops
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nack\n\r\n")
            received[0] = len(buf.split(b"\r\n\r\n", 1)[1])
            while True:
                d = c.recv(65536)
                if not d:
                    break
                received[0] += len(d)
        except OSError:
            pass
        finally:
            c.close()
            done.set()

    t = threading.Thread(target=origin, daemon=True)
    t.start()
    port = ls.getsockname()[1]
    g = gateway(f"""
http: {{max_body: 256KiB}}
clusters:
  c:
    endpoints: [127.0.0.1:{port}]
    outlier_detection: false
    circuit_breaker: false
routes:
  - name: r
    cluster: c
""")
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    rd = weftutil.Reader(s)
    head = rd.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    chunk = b"%x\r\n" % 65536 + b"u" * 65536 + b"\r\n"
    sent = 0
    cut = False
    deadline = time.monotonic() + 10
    while sent < 8 * 1024 * 1024 and time.monotonic() < deadline:  # 32x the limit at most
        try:
            s.sendall(chunk)
        except OSError:
            cut = True
            break
        sent += 65536
    s.close()
    assert done.wait(10), "the gateway kept the upstream request open"
    ls.close()
    assert received[0] <= 512 * 1024 + 65536 * 4, (received[0], sent)
    assert cut or sent < 8 * 1024 * 1024


def test_timeout_waiting_for_a_connection_slot_is_not_the_endpoints_fault(gateway, origins):
    """A request that times out waiting for one of max_connections is local
    overload: it is answered (504 at the route's deadline) without being
    recorded as the endpoint failing, so the circuit breaker (here: open
    after one failure) stays closed and the next request goes through."""
    o, = origins(1)
    o.set_mode("sleep", delay_ms=800)
    g = gateway(f"""
clusters:
  c:
    endpoints: [{o.addr}]
    max_connections: 1
    outlier_detection: false
    circuit_breaker: {{window: 10s, min_requests: 1, error_percent: 1, sleep_window: 30s}}
routes:
  - name: slow
    match: {{prefix: /slow}}
    cluster: c
    timeout: 5s
    retry: false
  - name: fast
    match: {{prefix: /fast}}
    cluster: c
    timeout: 300ms
    retry: false
""")
    slow = Client(g.port)
    slow.sock = None
    slow._connect()
    slow.sock.sendall(build_request("GET", "/slow"))  # holds the only connection
    wait_until(lambda: o.count(path="/slow") == 1, 3, what="the slow request at the origin")
    r = g.get("/fast/1", timeout=5)
    assert r.status == 504, r
    o.set_mode("ok")
    assert slow.rd.read_response(method="GET").status == 200
    slow.close()
    r = g.get("/fast/2", timeout=5)
    assert r.status == 200 and "X-Weft-Circuit" not in r.headers, r
    m = g.metrics()
    assert metric(m, "weft_gateway_overload_rejections_total", cluster="c") == 1


def test_client_body_timeout_ends_the_proxied_request(gateway, origins):
    """A client that stops sending its request body gets 408 from the
    server's body timeout. The proxy handler is told (its on_end gets the
    error) and lets go of the request: before, it kept a pointer to the
    request the server had already finished and recycled, and used it when
    the upstream attempt ended (the sanitizers report it at teardown) or
    leaked it (buffered body)."""
    o, = origins(1)
    g = gateway(cfg(o, top="http:\n  body_timeout: 1s\n").replace(
        "cluster: c\n", "cluster: c\n    timeout: 2s\n"))
    for clen in (10, 900_000):  # buffered, then streamed to the upstream
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        s.sendall(f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {clen}\r\n\r\n".encode()
                  + b"abc")
        rd = weftutil.Reader(s)
        r = rd.read_response()
        assert r.status == 408, r
        assert rd.at_eof(3.0)
        s.close()
    time.sleep(2.5)  # past the route timeout of the streamed attempt
    c = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    c.sendall(build_request("GET", "/ok"))
    assert weftutil.Reader(c).read_response().status == 200
    c.close()
    # both ended requests are counted, as the 4xx the client got
    assert metric(g.metrics(), "weft_gateway_requests_total", code="4xx") == 2
