"""Request smuggling vectors, protocol errors and limits, over raw sockets.

Every rejected request must get exactly the expected status line, a JSON
error body naming the same status, `Connection: close`, and then the server
must close the connection (FIN). A fresh connection must then still be
served (the server is unharmed).
"""
import socket
import threading
import time

import pytest

from weftutil import Reader, connect, get, request_bytes, scrape

H = b"Host: 127.0.0.1\r\n"

REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
           414: "URI Too Long", 417: "Expectation Failed",
           431: "Request Header Fields Too Large", 501: "Not Implemented",
           505: "HTTP Version Not Supported"}


def many_headers(n, size=8):
    return b"".join(b"X-H%d: %s\r\n" % (i, b"v" * size) for i in range(n))


VECTORS = [
    # --- framing / smuggling
    ("cl_and_te", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_and_cl", b"GET /hello HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"Content-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("two_differing_cl", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
     b"Content-Length: 6\r\n\r\nhello!", 400),
    ("cl_list_differing", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5, 6\r\n\r\nhello!",
     400),
    ("cl_plus", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl_hex", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("cl_empty", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\nhello", 400),
    ("cl_negative", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("cl_huge", b"POST /echo HTTP/1.1\r\n" + H
     + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("te_chunked_twice", b"POST /echo HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_chunked_two_fields", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_gzip_chunked", b"POST /echo HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te_identity", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 501),
    ("te_empty", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: \r\n\r\n", 400),
    ("te_chunked_with_param", b"POST /echo HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked;x=1\r\n\r\n0\r\n\r\n", 400),
    ("te_in_http10", b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("obs_fold", b"GET /hello HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n", 400),
    ("obs_fold_first_field", b"GET /hello HTTP/1.1\r\n Host: x\r\n\r\n", 400),
    ("bare_lf_header", b"GET /hello HTTP/1.1\r\nHost: x\nX-B: y\r\n\r\n", 400),
    ("bare_lf_end_of_head", b"GET /hello HTTP/1.1\r\nHost: x\r\n\n", 400),
    ("bare_lf_request_line", b"GET /hello HTTP/1.1\nHost: x\r\n\r\n", 400),
    ("bare_cr", b"GET /hello HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
    ("nul_in_header_value", b"GET /hello HTTP/1.1\r\n" + H + b"X-N: a\x00b\r\n\r\n", 400),
    ("ctl_in_header_value", b"GET /hello HTTP/1.1\r\n" + H + b"X-N: a\x01b\r\n\r\n", 400),
    ("nul_in_target", b"GET /hel\x00lo HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("space_before_colon", b"GET /hello HTTP/1.1\r\n" + H + b"X-S : y\r\n\r\n", 400),
    ("space_before_colon_cl", b"POST /echo HTTP/1.1\r\n" + H
     + b"Content-Length : 5\r\n\r\nhello", 400),
    ("tab_before_colon", b"GET /hello HTTP/1.1\r\n" + H + b"X-S\t: y\r\n\r\n", 400),
    ("header_without_colon", b"GET /hello HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n", 400),
    ("empty_header_name", b"GET /hello HTTP/1.1\r\n" + H + b": v\r\n\r\n", 400),
    ("no_host_http11", b"GET /hello HTTP/1.1\r\n\r\n", 400),
    ("two_hosts", b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("invalid_host", b"GET /hello HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("double_space_request_line", b"GET  /hello HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lowercase_version", b"GET /hello http/1.1\r\n" + H + b"\r\n", 400),
    ("fragment_in_target", b"GET /hello#frag HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk_without_options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("relative_target", b"GET hello HTTP/1.1\r\n" + H + b"\r\n", 400),
    # --- unsupported
    ("method_brew", b"BREW /pot HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("method_lowercase", b"get /hello HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("method_connect", b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n" + H + b"\r\n", 501),
    ("http_2_0", b"GET /hello HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("http_0_9_major", b"GET /hello HTTP/0.9\r\n" + H + b"\r\n", 505),
    ("expect_other", b"GET /hello HTTP/1.1\r\n" + H + b"Expect: something-else\r\n\r\n", 417),
    # --- limits (defaults: request line 8192, head 32768, 100 fields)
    ("uri_too_long", b"GET /hello?x=" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("head_too_large", b"GET /hello HTTP/1.1\r\n" + H + many_headers(40, 1000) + b"\r\n", 431),
    ("too_many_headers", b"GET /hello HTTP/1.1\r\n" + H + many_headers(100) + b"\r\n", 431),
    ("body_too_large", b"GET /hello HTTP/1.1\r\n" + H + b"Content-Length: 2000000\r\n\r\n"
     + b"x" * 1000, 413),
]


def assert_rejected(rd, status, vid=""):
    r = rd.read_response()
    assert r.status_line == f"HTTP/1.1 {status} {REASONS[status]}", (vid, r)
    assert r.header("Connection") == "close", (vid, r)
    assert r.header("Content-Type") == "application/json"
    j = r.json()
    assert j["status"] == status and isinstance(j["error"], str) and j["error"], j
    assert rd.at_eof(3.0), f"{vid}: server did not close after {status}"
    return r


def assert_unharmed(port):
    r = get(port, "/hello")
    assert r.status == 200 and r.body == b'{"msg":"hi"}'


@pytest.mark.parametrize("vid,raw,status", VECTORS, ids=[v[0] for v in VECTORS])
def test_rejected(shared_weft, vid, raw, status):
    s = connect(shared_weft.port)
    s.sendall(raw)
    rd = Reader(s)
    assert_rejected(rd, status, vid)
    s.close()
    assert_unharmed(shared_weft.port)


def test_te_chunked_not_final(shared_weft):
    """`Transfer-Encoding: chunked, gzip` leaves the length undeterminable:
    RFC 9112 6.3 says 400 and close; 501 for the unknown coding (RFC 9112
    6.1) also closes, so either is safe."""
    s = connect(shared_weft.port)
    s.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n"
              b"0\r\n\r\n")
    rd = Reader(s)
    r = rd.read_response()
    assert r.status in (400, 501), r
    assert r.header("Connection") == "close"
    assert rd.at_eof(3.0)
    s.close()
    assert_unharmed(shared_weft.port)


def test_smuggled_request_is_not_served(shared_weft):
    """The classic CL.TE payload: a second request hidden in the body must
    never be answered."""
    hidden = b"GET /hello?name=smuggled HTTP/1.1\r\n" + H + b"\r\n"
    body = b"0\r\n\r\n" + hidden
    raw = (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n" % len(body)
           + b"Transfer-Encoding: chunked\r\n\r\n" + body)
    s = connect(shared_weft.port)
    s.sendall(raw)
    rd = Reader(s)
    assert_rejected(rd, 400)
    assert b"smuggled" not in rd.buf
    s.close()


def test_request_line_limit_boundary(shared_weft):
    base = b"GET /hello?x= HTTP/1.1"
    ok = base.replace(b"x=", b"x=" + b"a" * (8192 - len(base)))
    assert len(ok) == 8192
    s = connect(shared_weft.port)
    s.sendall(ok + b"\r\n" + H + b"\r\n")
    rd = Reader(s)
    assert rd.read_response().status == 200
    bad = base.replace(b"x=", b"x=" + b"a" * (8193 - len(base)))
    s.sendall(bad + b"\r\n" + H + b"\r\n")
    assert_rejected(rd, 414)
    s.close()


def test_header_bytes_limit_boundary(shared_weft):
    def head_of(total):
        start = b"GET /hello HTTP/1.1\r\n" + H + b"X-Pad: "
        end = b"\r\n\r\n"
        return start + b"p" * (total - len(start) - len(end)) + end

    s = connect(shared_weft.port)
    rd = Reader(s)
    s.sendall(head_of(32768))
    assert rd.read_response().status == 200
    s.sendall(head_of(32769))
    assert_rejected(rd, 431)
    s.close()


def test_header_count_limit_boundary(shared_weft):
    s = connect(shared_weft.port)
    rd = Reader(s)
    s.sendall(b"GET /hello HTTP/1.1\r\n" + H + many_headers(99) + b"\r\n")  # 100 fields
    assert rd.read_response().status == 200
    s.sendall(b"GET /hello HTTP/1.1\r\n" + H + many_headers(100) + b"\r\n")  # 101 fields
    r = assert_rejected(rd, 431)
    assert r.json()["error"] == "too many header fields"
    s.close()


def test_body_too_large_chunked(shared_weft):
    """A chunked body on a buffered route is cut off at max_body (1 MiB)."""
    s = connect(shared_weft.port, timeout=10)
    s.sendall(b"GET /hello HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 65536 + b"z" * 65536 + b"\r\n"
    errors = []

    def writer():
        try:
            for _ in range(17):  # 1.06 MiB
                s.sendall(chunk)
        except OSError as e:  # the server may stop reading after its answer
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    rd = Reader(s)
    assert_rejected(rd, 413)
    t.join(10)
    s.close()
    assert_unharmed(shared_weft.port)


def test_body_at_limit_is_accepted(shared_weft):
    body = b"b" * (1 << 20)
    s = connect(shared_weft.port, timeout=10)
    s.sendall(b"GET /hello HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    r = Reader(s).read_response()
    assert r.status == 200 and r.body == b'{"msg":"hi"}'
    s.close()


def test_malformed_chunk_size_buffered_route(shared_weft):
    s = connect(shared_weft.port)
    s.sendall(b"GET /hello HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    rd = Reader(s)
    r = assert_rejected(rd, 400)
    assert r.json() == {"error": "missing chunk size", "status": 400}
    s.close()
    assert_unharmed(shared_weft.port)


def read_all(s, timeout=3.0):
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            d = s.recv(65536)
        except socket.timeout:
            return out, "timeout"
        except ConnectionResetError:
            return out, "reset"
        if not d:
            return out, "eof"
        out += d


def test_malformed_chunk_size_echo_same_packet(shared_weft):
    """/echo streams: its handler has started the 200 before the body is
    read. A bad chunk-size line in the same packet as the head: the server
    either answers 400 + close or closes with no complete response (it does
    the latter: nothing at all is sent). Never a complete 200."""
    s = connect(shared_weft.port)
    s.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
              b"zz\r\nhello\r\n0\r\n\r\n")
    out, how = read_all(s)
    s.close()
    assert how == "eof", (how, out)
    if out:
        assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), out
        assert b"\r\nConnection: close\r\n" in out
    assert_unharmed(shared_weft.port)


def test_malformed_chunk_size_echo_mid_stream(shared_weft):
    """After the 200 head and the first echoed chunk went out, a bad chunk
    size can only end the connection: the response stays incomplete (no
    terminating 0-chunk), so the client cannot mistake it for success."""
    s = connect(shared_weft.port)
    s.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n")
    rd = Reader(s)
    version, status, reason, headers, raw = rd.read_head()
    assert status == 200 and ("Transfer-Encoding", "chunked") in headers
    assert rd.read_until(b"hello\r\n") == b"5\r\nhello\r\n"
    s.sendall(b"5x\r\nworld\r\n0\r\n\r\n")
    out, how = read_all(s)
    s.close()
    assert how == "eof", (how, out)
    assert out == b"" and rd.buf == b"", out
    assert_unharmed(shared_weft.port)


def test_bad_request_counter(shared_weft):
    m0 = scrape(shared_weft.port)
    for raw in (b"BREW / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                b"GET /hello HTTP/1.1\r\n" + H + b"X : y\r\n\r\n"):
        s = connect(shared_weft.port)
        s.sendall(raw)
        Reader(s).read_response()
        s.close()
    m1 = scrape(shared_weft.port)
    assert m1[("weft_http_bad_requests_total", "")] - m0[("weft_http_bad_requests_total", "")] == 3
    d4 = m1[("weft_http_requests_total", '{code="4xx"}')] - m0[("weft_http_requests_total",
                                                                 '{code="4xx"}')]
    d5 = m1[("weft_http_requests_total", '{code="5xx"}')] - m0[("weft_http_requests_total",
                                                                 '{code="5xx"}')]
    assert (d4, d5) == (2, 1)


# ---------------------------------------------------------------- timeouts

TIMEOUTS = "http:\n  header_timeout: 1s\n  body_timeout: 1s\n  idle_timeout: 1s\n"


def test_header_timeout_408(weft):
    w = weft(config=TIMEOUTS)
    s = connect(w.port, timeout=5)
    t0 = time.monotonic()
    s.sendall(b"GET /hello HTTP/1.1\r\nHo")
    rd = Reader(s)
    r = assert_rejected(rd, 408)
    dt = time.monotonic() - t0
    assert r.json() == {"error": "request header timeout", "status": 408}
    assert 0.9 <= dt < 3.0, dt
    s.close()
    assert_unharmed(w.port)


def test_header_timeout_not_extended_by_trickle(weft):
    w = weft(config=TIMEOUTS)
    s = connect(w.port, timeout=5)
    t0 = time.monotonic()
    head = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    rd = Reader(s)
    s.setblocking(False)
    got = b""
    for b in head:
        try:
            s.send(bytes([b]))
        except OSError:
            break
        time.sleep(0.05)
        try:
            got += s.recv(4096)
        except BlockingIOError:
            pass
        if got or time.monotonic() - t0 > 4:
            break
    s.setblocking(True)
    s.settimeout(5)
    rd.buf += got
    assert_rejected(rd, 408)
    assert time.monotonic() - t0 < 3.0
    s.close()


def test_body_timeout_408(weft):
    w = weft(config=TIMEOUTS)
    s = connect(w.port, timeout=5)
    t0 = time.monotonic()
    s.sendall(b"GET /hello HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nabc")
    rd = Reader(s)
    r = assert_rejected(rd, 408)
    assert r.json() == {"error": "request body timeout", "status": 408}
    assert 0.9 <= time.monotonic() - t0 < 3.0
    s.close()


def test_idle_keepalive_timeout_closes_silently(weft):
    w = weft(config=TIMEOUTS)
    s = connect(w.port, timeout=5)
    s.sendall(request_bytes("GET", "/hello"))
    rd = Reader(s)
    assert rd.read_response().status == 200
    t0 = time.monotonic()
    assert rd.at_eof(4.0), "idle keep-alive connection not closed"
    assert 0.9 <= time.monotonic() - t0 < 3.0
    s.close()


def test_connection_without_bytes_times_out(weft):
    w = weft(config=TIMEOUTS)
    s = connect(w.port, timeout=5)
    t0 = time.monotonic()
    rd = Reader(s)
    assert rd.at_eof(4.0)  # closed silently: no request, no response
    assert 0.9 <= time.monotonic() - t0 < 3.0
    s.close()


def test_expect_continue_not_sent_for_oversized_body(shared_weft):
    s = connect(shared_weft.port)
    s.sendall(b"GET /hello HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\n"
              b"Content-Length: 2000000\r\n\r\n")
    rd = Reader(s)
    r = rd.read_response(allow_100=True)
    assert r.status == 413, r  # the final answer, no 100 Continue first
    assert r.header("Connection") == "close"
    assert rd.at_eof(3.0)
    s.close()
