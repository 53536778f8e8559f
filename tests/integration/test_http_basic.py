"""Basic HTTP/1.x behaviour of `weft hello`, driven by curl, requests,
http.client and raw sockets."""
import email.utils
import hashlib
import http.client
import os
import socket
import struct
import re
import subprocess
import threading
import time

import requests

from weftutil import Reader, connect, exchange, expected_bytes, get, request_bytes, scrape


def curl(*args, timeout=20):
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), *args],
                           capture_output=True, timeout=timeout + 5)


def must_read(rd, sent, method="GET"):
    """Read one response; a close or a stall instead is a test failure that
    names the request."""
    rd.last_head = None
    try:
        return rd.read_response(method=method)
    except EOFError:
        raise AssertionError(f"server closed the connection without a (complete) response "
                             f"to {sent!r}; got head {rd.last_head!r} then "
                             f"{bytes(rd.buf)!r}") from None
    except socket.timeout:
        raise AssertionError(f"no complete response to {sent!r} in time; got head "
                             f"{rd.last_head!r} then {bytes(rd.buf)!r}") from None


def parse_curl_head(raw):
    """Split curl -i output into (status line, {lower name: value}, body)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return lines[0], hdrs, body


def test_curl_get_hello(shared_weft):
    p = curl("-i", f"{shared_weft.url}/hello")
    assert p.returncode == 0, p.stderr
    status, h, body = parse_curl_head(p.stdout)
    assert status == "HTTP/1.1 200 OK"
    assert body == b'{"msg":"hi"}'
    assert h["content-length"] == "12"
    assert h["content-type"] == "application/json"
    assert h["server"] == "weft"
    assert "transfer-encoding" not in h and "connection" not in h
    d = email.utils.parsedate_to_datetime(h["date"])
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", h["date"])
    assert abs(d.timestamp() - time.time()) < 5


def test_keepalive_many_requests_one_socket(shared_weft):
    s = connect(shared_weft.port)
    rd = Reader(s)
    for i in range(200):
        s.sendall(request_bytes("GET", f"/hello?name=n{i}"))
        r = rd.read_response()
        assert r.status == 200
        assert r.header("Connection") is None
        assert r.json() == {"msg": f"hi n{i}"}
    s.close()


def test_requests_session_reuses_connection(shared_weft):
    m0 = scrape(shared_weft.port)
    with requests.Session() as sess:
        for i in range(50):
            r = sess.get(f"{shared_weft.url}/hello", timeout=5)
            assert r.status_code == 200
            assert r.content == b'{"msg":"hi"}'
    m1 = scrape(shared_weft.port)
    # the session's one connection + the second scrape's connection
    key = ("weft_http_connections_total", "")
    assert m1[key] - m0[key] == 2
    k2 = ("weft_http_requests_total", '{code="2xx"}')
    assert m1[k2] - m0[k2] == 51  # 50 + the first scrape


def test_head(shared_weft):
    s = connect(shared_weft.port)
    rd = Reader(s)
    s.sendall(request_bytes("HEAD", "/hello"))
    r = rd.read_response(method="HEAD")
    assert r.status_line == "HTTP/1.1 200 OK"
    assert r.header("Content-Length") == "12"
    assert r.header("Content-Type") == "application/json"
    # no body bytes follow: the next response starts right after the head
    s.sendall(request_bytes("GET", "/health"))
    r3 = rd.read_response()
    assert r3.status == 200 and r3.body == b'{"status":"UP"}'
    s.close()
    # requests' view of HEAD
    rr = requests.head(f"{shared_weft.url}/health", timeout=5)
    assert rr.status_code == 200 and rr.content == b""
    assert rr.headers["Content-Length"] == "15"


def test_head_on_streamed_get_route(weft):
    """HEAD /bytes?n=N must answer like GET without the body: 200 with
    Content-Length: N, and the connection stays usable."""
    w = weft(workers=1)
    s = connect(w.port)
    rd = Reader(s)
    raw = request_bytes("HEAD", "/bytes?n=100000")
    s.sendall(raw)
    r = must_read(rd, raw, method="HEAD")
    assert r.status == 200 and r.header("Content-Length") == "100000"
    s.sendall(request_bytes("GET", "/health"))
    assert rd.read_response().body == b'{"status":"UP"}'
    s.close()


def test_not_found(shared_weft):
    r = requests.get(f"{shared_weft.url}/nope", timeout=5)
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": "not found", "status": 404}
    # prefix of a route is not the route
    assert requests.get(f"{shared_weft.url}/hello/x", timeout=5).status_code == 404
    assert requests.get(f"{shared_weft.url}/hell", timeout=5).status_code == 404


def test_method_not_allowed(shared_weft):
    r = requests.post(f"{shared_weft.url}/hello", timeout=5)  # Content-Length: 0
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET, HEAD"
    assert r.json() == {"error": "method not allowed", "status": 405}
    r = requests.delete(f"{shared_weft.url}/echo", timeout=5)
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST, PUT"
    r = requests.get(f"{shared_weft.url}/echo", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST, PUT"
    # without a body the connection stays usable after a 405
    s = connect(shared_weft.port)
    rd = Reader(s)
    s.sendall(request_bytes("DELETE", "/health") + request_bytes("GET", "/health"))
    r = rd.read_response()
    assert r.status == 405 and r.header("Allow") == "GET, HEAD"
    assert rd.read_response().status == 200
    s.close()


def test_405_and_404_with_request_body(weft):
    """A request with a small Content-Length body to an unrouted path or a
    wrong method must still get its 404/405 (the body is simply read and
    discarded), and the connection may continue."""
    w = weft(workers=1)
    for method, target, status in (("PATCH", "/health", 405), ("POST", "/nowhere", 404)):
        s = connect(w.port)
        rd = Reader(s)
        raw = request_bytes(method, target, body=b"abc") + request_bytes("GET", "/health")
        s.sendall(raw)
        r = must_read(rd, raw)
        assert r.status == status, r
        assert must_read(rd, raw).status == 200
        s.close()


def test_query_name(shared_weft):
    u = shared_weft.url
    assert requests.get(f"{u}/hello?name=bob", timeout=5).content == b'{"msg":"hi bob"}'
    assert requests.get(f"{u}/hello?x=1&name=al&y=2", timeout=5).json() == {"msg": "hi al"}
    assert requests.get(f"{u}/hello?name=", timeout=5).content == b'{"msg":"hi"}'
    # raw (not percent-decoded) and JSON-escaped
    r = get(shared_weft.port, '/hello?name=a%22b')
    assert r.json() == {"msg": "hi a%22b"}
    r = get(shared_weft.port, "/hello?name=" + "x" * 257)
    assert r.status == 400
    assert r.json() == {"error": "name too long", "status": 400}
    r = get(shared_weft.port, "/hello?name=" + "x" * 256)
    assert r.json() == {"msg": "hi " + "x" * 256}


def test_http_client_module(shared_weft):
    c = http.client.HTTPConnection("127.0.0.1", shared_weft.port, timeout=5)
    for path, body in (("/health", b'{"status":"UP"}'), ("/ready", b'{"ready":true}'),
                       ("/hello", b'{"msg":"hi"}')):
        c.request("GET", path)
        r = c.getresponse()
        assert r.status == 200 and r.read() == body
        assert r.getheader("Content-Type") == "application/json"
    c.request("PUT", "/echo", body=b"put-body", headers={"Content-Type": "text/x-test"})
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Type") == "text/x-test"
    assert r.getheader("Content-Length") == "8"
    assert r.read() == b"put-body"
    c.close()


def test_http10_closes_without_keepalive(shared_weft):
    s = connect(shared_weft.port)
    s.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
    rd = Reader(s)
    r = rd.read_response()
    assert r.status_line == "HTTP/1.1 200 OK"
    assert r.body == b'{"msg":"hi"}'
    assert r.header("Connection") == "close"
    assert rd.at_eof(3.0)
    s.close()


def test_http10_keepalive_stays_open(shared_weft):
    s = connect(shared_weft.port)
    rd = Reader(s)
    for i in range(3):
        s.sendall(f"GET /hello?name={i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
        r = rd.read_response()
        assert r.status == 200
        assert r.header("Connection") == "keep-alive"
        assert r.json() == {"msg": f"hi {i}"}
    # a streamed response of unknown length cannot be delimited in 1.0
    # without closing: chunked must not be used
    s.sendall(b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc")
    r = rd.read_response()
    assert r.status == 200 and r.body == b"abc"
    assert r.header("Transfer-Encoding") is None
    s.close()


def test_absolute_form_target(shared_weft):
    p = shared_weft.port
    raw = f"GET http://127.0.0.1:{p}/hello?name=abs HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n"
    r, rd = exchange(p, raw.encode())
    assert r.status == 200 and r.json() == {"msg": "hi abs"}
    rd.sock.sendall(f"GET http://127.0.0.1:{p} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    r = rd.read_response()
    assert r.status == 404  # path "/" is not routed
    rd.sock.close()


def test_curl_expect_100_continue_echo(shared_weft, tmp_path):
    body = os.urandom(300_000)
    f = tmp_path / "body.bin"
    f.write_bytes(body)
    p = curl("-v", "-H", "Expect: 100-continue", "-H", "Content-Type: application/x-test",
             "--data-binary", f"@{f}", f"{shared_weft.url}/echo")
    assert p.returncode == 0, p.stderr
    assert p.stdout == body
    err = p.stderr.decode("latin-1")
    assert "> Expect: 100-continue" in err
    assert "< HTTP/1.1 100 Continue" in err
    assert "< HTTP/1.1 200 OK" in err
    assert "< Content-Type: application/x-test" in err
    assert "< Content-Length: 300000" in err


def test_raw_expect_100_continue(shared_weft):
    s = connect(shared_weft.port)
    rd = Reader(s)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    interim = rd.read_until(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(b"hello")
    r = rd.read_response()
    assert r.status == 200 and r.body == b"hello"
    s.close()


def test_expect_continue_early_answer_closes(shared_weft):
    """A 404/405 answered before any 100 Continue: the client may then skip
    the body it announced (curl does), so the server must not read the
    client's next request as that body (a desync); it closes instead."""
    for method, target, status in (("POST", "/nowhere", 404), ("PATCH", "/health", 405)):
        s = connect(shared_weft.port)
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  "Content-Length: 5\r\n\r\n".encode())
        rd = Reader(s)
        r = rd.read_response(allow_100=True)
        assert r.status == status, r
        assert r.header("Connection") == "close", r
        s.sendall(request_bytes("GET", "/hello"))  # the body never comes
        assert rd.at_eof(3.0)
        s.close()


def test_echo_chunked_request(shared_weft):
    s = connect(shared_weft.port)
    rd = Reader(s)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n")
    r = rd.read_response()
    assert r.status == 200
    assert r.header("Transfer-Encoding") == "chunked"
    assert r.header("Content-Length") is None
    assert r.header("Content-Type") == "application/octet-stream"
    assert r.body == b"hello world!"
    # keep-alive survives a chunked exchange
    s.sendall(request_bytes("POST", "/echo", [("Content-Length", "0")]))
    r = rd.read_response()
    assert r.status == 200 and r.body == b"" and r.header("Content-Length") == "0"
    s.sendall(request_bytes("GET", "/health"))
    assert rd.read_response().status == 200
    s.close()


def test_echo_without_body(weft):
    """POST /echo with neither Content-Length nor Transfer-Encoding has an
    empty body (RFC 9112 6.3): the echo must be a complete empty 200."""
    w = weft(workers=1, config="http:\n  drain_timeout: 2s\n")
    s = connect(w.port, timeout=3)
    rd = Reader(s)
    raw = b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n"
    s.sendall(raw)
    r = must_read(rd, raw)
    assert r.status == 200 and r.body == b""
    s.close()


def test_echo_content_length_list(shared_weft):
    """RFC 9110 8.6 lets a recipient accept `Content-Length: 5, 5` as 5; the
    parser does. The echo must then announce 5, not a garbled length."""
    raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello"
    s = connect(shared_weft.port)
    s.sendall(raw)
    rd = Reader(s)
    try:
        version, status, reason, headers, head = rd.read_head()
    except EOFError:
        raise AssertionError(f"connection closed with no response to {raw!r}") from None
    if status == 400:
        return  # rejecting the list outright would also be correct
    assert status == 200, head
    hd = {k.lower(): v for k, v in headers}
    assert hd.get("content-length") == "5", f"echo announced {hd.get('content-length')!r}: {head!r}"
    assert rd.read_exact(5) == b"hello"
    s.close()


def test_bytes_small(shared_weft):
    for n in (0, 1, 26, 16127, 16128, 16129, 100_000):
        r = requests.get(f"{shared_weft.url}/bytes?n={n}", timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(n)
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.content == expected_bytes(n), n
    r = requests.get(f"{shared_weft.url}/bytes?n=abc", timeout=5)
    assert r.status_code == 400
    assert requests.get(f"{shared_weft.url}/bytes", timeout=5).status_code == 400


def test_delay_async(weft):
    w = weft(workers=1)
    t0 = time.monotonic()
    r = requests.get(f"{w.url}/delay?ms=300", timeout=5)
    dt = time.monotonic() - t0
    assert r.status_code == 200 and r.content == b'{"delayed_ms":300}'
    assert 0.29 <= dt < 2.0
    assert requests.get(f"{w.url}/delay?ms=60001", timeout=5).status_code == 400
    # one worker serves 20 concurrent 500 ms delays and other traffic at once:
    # the handler does not block the loop
    results = [None] * 20

    def one(i):
        results[i] = requests.get(f"{w.url}/delay?ms=500", timeout=10)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.1)
    t1 = time.monotonic()
    assert requests.get(f"{w.url}/hello", timeout=5).status_code == 200
    assert time.monotonic() - t1 < 0.5
    for t in threads:
        t.join(10)
    dt = time.monotonic() - t0
    assert all(r is not None and r.status_code == 200 and r.json() == {"delayed_ms": 500}
               for r in results)
    assert dt < 2.0, f"20 x 500 ms took {dt:.2f}s: delays are serialised"


def test_request_id_and_large_header_ok(shared_weft):
    # a large but in-limit head is fine
    r = requests.get(f"{shared_weft.url}/hello", headers={"X-Big": "v" * 20000}, timeout=5)
    assert r.status_code == 200


def test_echo_large_content_length_body(shared_weft):
    body = os.urandom(3 * 1024 * 1024 + 17)  # above max_body: /echo streams
    r = requests.post(f"{shared_weft.url}/echo", data=body, timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(len(body))
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(body).digest()


def test_non_utf8_name(shared_weft):
    r = get(shared_weft.port, "/hello?name=%ff")
    assert r.json() == {"msg": "hi %ff"}  # not decoded: plain ASCII
    s = connect(shared_weft.port)
    s.sendall(b"GET /hello?name=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n")
    r = Reader(s).read_response()
    s.close()
    # raw bytes >= 0x80 in the target are rejected by the parser already
    assert r.status == 400


def test_half_close_after_request(shared_weft):
    """send, shutdown(SHUT_WR), read: the request is still answered."""
    s = connect(shared_weft.port)
    s.sendall(request_bytes("GET", "/hello?name=half"))
    s.shutdown(socket.SHUT_WR)
    rd = Reader(s)
    r = rd.read_response()
    assert r.status == 200 and r.json() == {"msg": "hi half"}
    assert rd.at_eof(3.0)
    s.close()
    # also for a delayed (asynchronous) answer
    s = connect(shared_weft.port)
    s.sendall(request_bytes("GET", "/delay?ms=200"))
    s.shutdown(socket.SHUT_WR)
    rd = Reader(s)
    r = rd.read_response()
    assert r.status == 200 and r.body == b'{"delayed_ms":200}'
    assert rd.at_eof(3.0)
    s.close()


def test_half_close_with_responses_still_queued(shared_weft):
    """Pipelined requests, shutdown(SHUT_WR), read later: answers that are
    still queued on the server (the client is not reading yet, the socket
    buffers are full) and the requests waiting behind them must not be
    dropped when the server then reads the client's end-of-file."""
    n, count = 200_000, 40  # 8 MB: more than the socket buffers hold
    s = connect(shared_weft.port, timeout=10.0)
    raw = request_bytes("GET", f"/bytes?n={n}") * count
    s.sendall(raw)
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.5)  # the server has filled the socket and is waiting for us
    rd = Reader(s)
    want = expected_bytes(n)
    for i in range(count):
        r = must_read(rd, f"{count} x /bytes?n={n}, response {i}")
        assert r.status == 200 and r.body == want
    assert rd.at_eof(3.0)
    s.close()


def test_half_close_after_pipelined_requests(shared_weft):
    """Requests pipelined behind an asynchronous one and then a half-close:
    every request that arrived before the end-of-file is answered."""
    s = connect(shared_weft.port)
    raw = (request_bytes("GET", "/delay?ms=300") + request_bytes("GET", "/hello?name=a")
           + request_bytes("GET", "/hello?name=b"))
    s.sendall(raw)
    s.shutdown(socket.SHUT_WR)
    rd = Reader(s)
    assert must_read(rd, raw).body == b'{"delayed_ms":300}'
    assert must_read(rd, raw).json() == {"msg": "hi a"}
    assert must_read(rd, raw).json() == {"msg": "hi b"}
    assert rd.at_eof(3.0)
    s.close()
    # a head cut off by the half-close is not waited for (nor answered)
    s = connect(shared_weft.port)
    s.sendall(request_bytes("GET", "/hello") + b"GET /hello HTTP/1.1\r\nHo")
    s.shutdown(socket.SHUT_WR)
    rd = Reader(s)
    assert must_read(rd, "GET /hello + a partial head").status == 200
    assert rd.at_eof(3.0)
    s.close()


def rst_close(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_clients_vanishing_mid_request(weft):
    """Clients that reset or close mid-/delay, mid-/echo and mid-/bytes must
    not hurt the server (the sanitizers check the teardown)."""
    w = weft(workers=2)
    socks = []
    for i in range(20):
        s = connect(w.port)
        s.sendall(request_bytes("GET", "/delay?ms=300"))
        socks.append(s)
    time.sleep(0.05)
    for i, s in enumerate(socks):
        rst_close(s) if i % 2 else s.close()
    for i in range(10):
        s = connect(w.port)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
                  + b"e" * 200_000)
        time.sleep(0.01)
        rst_close(s) if i % 2 else s.close()
    for i in range(10):
        s = connect(w.port)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"10000\r\n" + b"c" * 30000)
        time.sleep(0.01)
        rst_close(s) if i % 2 else s.close()
    for i in range(10):
        s = connect(w.port)
        s.sendall(request_bytes("GET", "/bytes?n=100000000"))
        s.recv(1000)
        rst_close(s) if i % 2 else s.close()
    time.sleep(0.6)  # let the delays fire
    r = get(w.port, "/hello")
    assert r.status == 200
    # every one of those connections is gone (only the scrape is open)
    deadline = time.monotonic() + 5
    while True:
        g = scrape(w.port)[("weft_http_connections", "")]
        if g == 1:
            break
        assert time.monotonic() < deadline, f"{g - 1} abandoned connections still open"
        time.sleep(0.1)


def test_server_name_and_small_limits(weft):
    w = weft(workers=1, config=("http:\n  server_name: \"acme/1\"\n  max_body: 1k\n"
                                "  max_request_line: 256\n  max_headers: 5\n"))
    r = get(w.port, "/hello")
    assert r.header("Server") == "acme/1"
    # max_body 1k = 1024 bytes on a buffered route
    r, rd = exchange(w.port, request_bytes("GET", "/hello", body=b"x" * 1024))
    assert r.status == 200
    rd.sock.close()
    r, rd = exchange(w.port, request_bytes("GET", "/hello", body=b"x" * 1025))
    assert r.status == 413 and r.header("Connection") == "close"
    rd.sock.close()
    r, rd = exchange(w.port, request_bytes("GET", "/hello?x=" + "a" * 300))
    assert r.status == 414
    rd.sock.close()
    r, rd = exchange(w.port, request_bytes("GET", "/hello", [(f"X-{i}", "v") for i in range(4)]))
    assert r.status == 200  # Host + 4 = 5 fields
    rd.sock.close()
    r, rd = exchange(w.port, request_bytes("GET", "/hello", [(f"X-{i}", "v") for i in range(5)]))
    assert r.status == 431
    rd.sock.close()


def test_no_server_header_when_name_empty(weft):
    w = weft(workers=1, config='http:\n  server_name: ""\n')
    r = get(w.port, "/hello")
    assert r.status == 200 and r.header("Server") is None


def test_max_connections(weft):
    w = weft(workers=1, config="http:\n  max_connections: 5\n")
    held = []
    for _ in range(5):
        s = connect(w.port)
        s.sendall(request_bytes("GET", "/health"))
        rd = Reader(s)
        assert rd.read_response().status == 200
        held.append((s, rd))
    # the 6th is accepted and closed at once, without an answer
    s6 = connect(w.port)
    s6.sendall(request_bytes("GET", "/health"))
    try:
        data = s6.recv(100)
    except ConnectionResetError:
        data = b""
    assert data == b""
    s6.close()
    # existing ones still work; after one closes a new one is served
    held[0][0].sendall(request_bytes("GET", "/hello"))
    assert held[0][1].read_response().status == 200
    held.pop()[0].close()
    deadline = time.monotonic() + 5
    while True:
        try:
            r = get(w.port, "/hello", timeout=2)
            if r.status == 200:
                break
        except (OSError, EOFError):
            pass
        assert time.monotonic() < deadline, "no slot freed after a close"
        time.sleep(0.05)
    for s, _ in held:
        s.close()
