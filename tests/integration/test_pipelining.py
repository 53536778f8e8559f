"""HTTP/1.1 pipelining: many requests in one write, answered in order."""
import os

from weftutil import Reader, connect, expected_bytes, request_bytes


def test_50_pipelined_gets_in_order(shared_weft):
    s = connect(shared_weft.port)
    s.sendall(b"".join(request_bytes("GET", f"/hello?name=p{i}") for i in range(50)))
    rd = Reader(s)
    for i in range(50):
        r = rd.read_response()
        assert r.status == 200
        assert r.json() == {"msg": f"hi p{i}"}, (i, r)
    # nothing extra, and the connection is still open and usable
    assert not rd.at_eof(0.3)
    s.sendall(request_bytes("GET", "/hello"))
    assert rd.read_response().body == b'{"msg":"hi"}'
    s.close()


def test_pipelined_byte_by_byte_split(shared_weft):
    """The same pipeline delivered in awkward pieces gives the same answers."""
    s = connect(shared_weft.port)
    data = b"".join(request_bytes("GET", f"/hello?name=s{i}") for i in range(5))
    for i in range(0, len(data), 7):
        s.sendall(data[i:i + 7])
    rd = Reader(s)
    for i in range(5):
        assert rd.read_response().json() == {"msg": f"hi s{i}"}
    s.close()


def test_pipelined_mixed_with_echo_bodies(shared_weft):
    body1 = os.urandom(1000)
    body2 = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"  # a body that looks like a request
    chunked = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n\r\n")
    reqs = [
        request_bytes("GET", "/hello?name=a"),
        request_bytes("POST", "/echo", body=body1),
        request_bytes("GET", "/hello?name=b"),
        request_bytes("PUT", "/echo", body=body2),
        chunked,
        request_bytes("HEAD", "/hello"),
        request_bytes("GET", "/delay?ms=150"),  # async handler mid-pipeline
        request_bytes("GET", "/hello?name=c"),
        request_bytes("GET", "/nope"),
        request_bytes("GET", "/health"),
    ]
    s = connect(shared_weft.port)
    s.sendall(b"".join(reqs))
    rd = Reader(s)
    r = rd.read_response()
    assert r.json() == {"msg": "hi a"}
    r = rd.read_response()
    assert r.status == 200 and r.body == body1 and r.header("Content-Length") == "1000"
    assert rd.read_response().json() == {"msg": "hi b"}
    r = rd.read_response()
    assert r.status == 200 and r.body == body2
    r = rd.read_response()
    assert r.status == 200 and r.body == b"abc" and r.header("Transfer-Encoding") == "chunked"
    r = rd.read_response(method="HEAD")
    assert r.status == 200 and r.header("Content-Length") == "12"
    assert rd.read_response().body == b'{"delayed_ms":150}'
    assert rd.read_response().json() == {"msg": "hi c"}
    assert rd.read_response().status == 404
    assert rd.read_response().body == b'{"status":"UP"}'
    assert not rd.at_eof(0.3)
    s.close()


def test_pipelined_then_malformed(shared_weft):
    s = connect(shared_weft.port)
    s.sendall(request_bytes("GET", "/hello?name=ok") + request_bytes("GET", "/health")
              + b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n"
              + request_bytes("GET", "/hello?name=never"))
    rd = Reader(s)
    r = rd.read_response()
    assert r.status == 200 and r.json() == {"msg": "hi ok"}
    assert r.header("Connection") is None
    assert rd.read_response().status == 200
    r = rd.read_response()
    assert r.status_line == "HTTP/1.1 400 Bad Request"
    assert r.header("Connection") == "close"
    assert r.json() == {"error": "whitespace before colon", "status": 400}
    assert rd.at_eof(3.0)  # the request after the bad one is never answered
    s.close()


def test_pipeline_deep_with_slow_reader(shared_weft):
    """2000 pipelined requests whose answers the client reads only after
    sending everything: output backpressure must not lose or reorder any."""
    n = 2000
    s = connect(shared_weft.port, timeout=10)
    payload = b"".join(request_bytes("GET", f"/hello?name={i}") for i in range(n))
    s.sendall(payload)
    rd = Reader(s)
    for i in range(n):
        r = rd.read_response()
        assert r.status == 200 and r.json() == {"msg": f"hi {i}"}, i
    s.close()


def test_pipelined_large_streamed_responses(shared_weft):
    """Pipelined requests behind large streamed responses wait for the
    client to read (output backpressure) and still come out whole and in
    order."""
    sizes = [1_000_000, 3, 2_500_000, 0, 700_001]
    s = connect(shared_weft.port, timeout=10)
    s.sendall(b"".join(request_bytes("GET", f"/bytes?n={n}") for n in sizes)
              + request_bytes("GET", "/hello?name=last"))
    rd = Reader(s)
    for n in sizes:
        r = rd.read_response()
        assert r.status == 200 and r.header("Content-Length") == str(n)
        assert r.body == expected_bytes(n), n
    assert rd.read_response().json() == {"msg": "hi last"}
    s.close()
